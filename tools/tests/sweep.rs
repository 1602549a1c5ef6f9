//! `fusedrop sweep` end to end on its smallest family, f32 on `sq`: without a usable GPU it exits
//! with its own code (3) and says why; on a GPU host it prints the production row and every f32
//! variant, each bit-identical to production (exit 0).

use std::process::Command;

use fusedrop_tools::sweep::EXIT_NO_GPU;

#[test]
fn sweep_times_the_f32_variants_on_a_gpu_or_exits_3_without_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_fusedrop"))
        .args(["sweep", "--quick", "--family", "f32"])
        .output()
        .expect("the fusedrop binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "sweep panicked:\n{stderr}");
    if let Err(e) = fusedrop::cuda::open_device(0) {
        eprintln!("no usable GPU ({e}): checking the no-GPU exit path only");
        assert_eq!(
            output.status.code(),
            Some(EXIT_NO_GPU),
            "without a GPU sweep must exit {EXIT_NO_GPU}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(stderr.contains("nothing was measured"), "{stderr}");
        assert!(stdout.is_empty(), "no table without a GPU:\n{stdout}");
        return;
    }
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("sq ")).collect();
    let expected = 1 + fusedrop::cuda::launch_table::FORWARD_F32_SWEEP.len();
    assert_eq!(rows.len(), expected, "{stdout}");
    assert!(rows[0].contains("production"), "{stdout}");
    assert!(rows.iter().all(|r| r.contains("bit-identical")), "{stdout}");
}
