//! `fusedrop bench` end to end on the `small` shape in bf16: without a usable GPU it exits with
//! its own code (3); on a GPU host every figure is measured (exit 0) and the CSV has the variant
//! rows beside `fused`: `fused_identity` in every pass, `fused_graph` (graph replays) for the
//! forward and forward+backward, and on compute capability 9.0 the backward's `fused_hopper`
//! and `fused_mma_sync`.

use std::collections::HashSet;
use std::process::Command;

#[test]
fn bench_measures_the_variant_and_graph_rows_on_a_gpu_or_exits_3_without_one() {
    let dir = std::env::temp_dir().join(format!("fusedrop-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let csv_path = dir.join("bench.csv");
    let output = Command::new(env!("CARGO_BIN_EXE_fusedrop"))
        .args([
            "bench", "--quick", "--shapes", "small", "--dtypes", "bf16", "--csv",
        ])
        .arg(&csv_path)
        .output()
        .expect("the fusedrop binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "bench panicked:\n{stderr}");
    let ctx = match fusedrop::cuda::open_device(0) {
        Err(e) => {
            eprintln!("no usable GPU ({e}): checking the no-GPU exit path only");
            assert_eq!(
                output.status.code(),
                Some(3),
                "without a GPU bench must exit 3\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            assert!(
                stderr.contains("no GPU figures can be measured here"),
                "{stderr}"
            );
            return;
        }
        Ok(ctx) => ctx,
    };
    assert_eq!(
        output.status.code(),
        Some(0),
        "bench left figures unmeasured\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let csv = std::fs::read_to_string(&csv_path).expect("the CSV was written");
    let mut lines = csv.lines();
    let header: Vec<_> = lines.next().expect("a header").split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name).expect(name);
    let (pass, impl_name) = (column("pass"), column("impl"));
    let rows: HashSet<(String, String)> = lines
        .map(|line| {
            let fields: Vec<_> = line.split(',').collect();
            (fields[pass].to_string(), fields[impl_name].to_string())
        })
        .collect();
    let mut expected = vec![
        ("forward", "fused_identity"),
        ("backward", "fused_identity"),
        ("forward+backward", "fused_identity"),
        ("forward", "fused_graph"),
        ("forward+backward", "fused_graph"),
    ];
    let hopper = fusedrop::cuda::LayerKernels::new(ctx.default_stream())
        .expect("the kernels load on the GPU the bench ran on")
        .hopper_available::<half::bf16>();
    if hopper {
        // small's dW has 1024 tiles of 128 x 128: Auto takes the Hopper kernels on any H100/H200
        // (dW on 128 x 256, dX split), so both forced tiles, dZ from dX and the transform warps
        // (with ReLU and with the identity) are timed beside it at p = 0.1.
        expected.extend([
            ("backward", "fused_hopper"),
            ("backward", "fused_mma_sync"),
            ("backward", "fused_hop256"),
            ("backward", "fused_hop128"),
            ("backward", "fused_hop_dz"),
            ("backward", "fused_hop_tw"),
            ("backward", "fused_id_dz"),
            ("backward", "fused_id_tw"),
        ]);
    }
    for (p, i) in expected {
        assert!(
            rows.contains(&(p.to_string(), i.to_string())),
            "no {p} {i} row in the CSV:\n{csv}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
