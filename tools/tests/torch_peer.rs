//! The PyTorch peer (tools/benches/peers/torch_peer.py) end to end without a GPU: run on a
//! stand-in for PyTorch (tools/tests/fake_torch), it must measure every figure it is asked for,
//! write the columns `fusedrop goals` reads with each figure's range, and exit 3 where PyTorch
//! sees no GPU. The peer runs for real only on a GPU host; a mistake in it would otherwise first
//! show there, in a lease's minutes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fusedrop_tools::goals;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn peer(args: &[&str], no_gpu: bool) -> Output {
    let mut command = Command::new("python3");
    command
        .arg("tools/benches/peers/torch_peer.py")
        .args(args)
        .current_dir(root())
        .env("PYTHONPATH", "tools/tests/fake_torch")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if no_gpu {
        command.env("FAKE_TORCH_NO_GPU", "1");
    }
    command
        .output()
        .expect("python3 runs (the test command installs nvcc with it, so CI has it)")
}

#[test]
fn the_peer_measures_every_figure_asked_for_and_writes_what_goals_reads() {
    let csv = std::env::temp_dir().join(format!("fusedrop-torch-peer-{}.csv", std::process::id()));
    let csv_arg = csv.to_str().expect("a UTF-8 temporary path");
    let output = peer(
        &[
            "--shapes",
            "odd,small",
            "--dtypes",
            "bf16,f32",
            "--p",
            "0.1,0",
            "--csv",
            csv_arg,
        ],
        false,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("NOT MEASURED"), "{stdout}");
    let rows = goals::read_csv(std::fs::File::open(&csv).expect("the CSV was written"))
        .expect("goals reads the peer's CSV");
    std::fs::remove_file(&csv).expect("the CSV is removed");
    // Two shapes, two dtypes, two passes: the floor, and eager and compile at each of two p.
    assert_eq!(rows.len(), 2 * 2 * 2 * (1 + 2 * 2));
    for row in &rows {
        assert_eq!(row.source, "torch");
        let fastest = row
            .fastest_us
            .expect("every row has its fastest repetition");
        assert!(
            fastest > 0.0 && fastest <= row.time_us,
            "{} {} {} {}: fastest {fastest} us, median {} us",
            row.shape,
            row.dtype,
            row.pass,
            row.impl_name,
            row.time_us
        );
    }
    // The stand-in's repetitions differ, so the range is not a copy of the median.
    assert!(rows.iter().any(|r| r.fastest_us < Some(r.time_us)));
    for (pass, impl_name) in [("forward", "eager"), ("forward+backward", "compile")] {
        assert!(
            rows.iter().any(|r| r.shape == "odd"
                && r.dtype == "f32"
                && r.p == Some(0.0)
                && r.pass == pass
                && r.impl_name == impl_name),
            "no odd f32 p=0 {pass} {impl_name} row"
        );
    }
    let checked = goals::check(&rows).expect("one GPU, one driver");
    assert!(!checked.is_empty());
}

#[test]
fn the_peer_exits_3_where_pytorch_sees_no_gpu() {
    let output = peer(&["--quick"], true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("no CUDA GPU visible to PyTorch"),
        "{stderr}"
    );
}
