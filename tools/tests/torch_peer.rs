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

/// Runs the peer with `args` and `--csv` into a temporary file; its exit code, stdout and the
/// CSV's text (empty when it wrote none).
fn peer_csv(args: &[&str], name: &str) -> (Option<i32>, String, String) {
    let csv = std::env::temp_dir().join(format!(
        "fusedrop-torch-peer-{}-{name}.csv",
        std::process::id()
    ));
    let csv_arg = csv.to_str().expect("a UTF-8 temporary path");
    let output = peer(&[args, &["--csv", csv_arg]].concat(), false);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(&csv).unwrap_or_default();
    let _ = std::fs::remove_file(&csv);
    (output.status.code(), format!("{stdout}\n{stderr}"), text)
}

#[test]
fn the_peer_measures_every_figure_asked_for_and_writes_what_goals_reads() {
    let args = [
        "--shapes",
        "odd,small",
        "--dtypes",
        "bf16,f32",
        "--p",
        "0.1,0",
    ];
    let (code, log, text) = peer_csv(&args, "all");
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("NOT MEASURED"), "{log}");
    let mut rows = goals::read_csv(text.as_bytes()).expect("goals reads the peer's CSV");
    // Two shapes, two dtypes, two passes: the floor, and eager and compile at each of two p.
    assert_eq!(rows.len(), 2 * 2 * 2 * (1 + 2 * 2));
    // Every row's range holds its median: fastest <= median <= slowest.
    let mut csv = csv::Reader::from_reader(text.as_bytes());
    let header = csv.headers().expect("a header").clone();
    let column = |name: &str| header.iter().position(|c| c == name).expect(name);
    let (median, fastest, slowest) = (
        column("time_us"),
        column("fastest_us"),
        column("slowest_us"),
    );
    for record in csv.records() {
        let record = record.expect("a well-formed row");
        let value = |at: usize| -> f64 { record[at].parse().expect("a number") };
        assert!(
            0.0 < value(fastest)
                && value(fastest) <= value(median)
                && value(median) <= value(slowest),
            "{record:?}"
        );
    }
    // The stand-in's repetitions differ, so the range is not a copy of the median.
    assert!(rows
        .iter()
        .any(|r| r.fastest_us.is_some_and(|f| f < r.time_us)));
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
    // Beside a fused row of ours, the goals compare with the peer's fastest repetition.
    let eager = rows
        .iter()
        .find(|r| {
            (
                r.shape.as_str(),
                r.dtype.as_str(),
                r.p,
                r.pass.as_str(),
                r.impl_name.as_str(),
            ) == ("odd", "bf16", Some(0.1), "forward", "eager")
        })
        .expect("the odd bf16 p=0.1 forward eager row")
        .clone();
    rows.push(goals::Measurement {
        source: "fusedrop".into(),
        impl_name: "fused".into(),
        time_us: 1.0,
        fastest_us: Some(0.5),
        ..eager.clone()
    });
    let checked = goals::check(&rows).expect("one GPU, one driver");
    let faster = checked
        .iter()
        .flat_map(|g| &g.instances)
        .find(|i| i.label == "odd bf16 p=0.1 vs torch eager")
        .expect("the forward's comparison with eager on odd bf16");
    assert_eq!(faster.value, Some(1.0 / eager.fastest_us.expect("a range")));
}

#[test]
fn compile_rows_are_left_out_when_asked_and_reported_when_the_budget_is_spent() {
    let args = ["--shapes", "odd", "--dtypes", "bf16", "--p", "0.1"];
    let (code, log, text) = peer_csv(&[&args[..], &["--no-compile"]].concat(), "no-compile");
    assert_eq!(code, Some(0), "{log}");
    let rows = goals::read_csv(text.as_bytes()).expect("goals reads the peer's CSV");
    assert_eq!(
        rows.len(),
        2 * 2,
        "the floor and eager, in each pass: {log}"
    );
    assert!(rows.iter().all(|r| r.impl_name != "compile"));

    let (code, log, text) = peer_csv(&[&args[..], &["--budget-s", "0"]].concat(), "budget");
    assert_eq!(code, Some(1), "a figure not measured: {log}");
    assert!(
        log.contains("NOT MEASURED: odd bf16 forward compile p=0.1: skipped, --budget-s 0 s spent"),
        "{log}"
    );
    let rows = goals::read_csv(text.as_bytes()).expect("goals reads the peer's CSV");
    assert_eq!(
        rows.len(),
        2 * 2,
        "the floor and eager, in each pass: {log}"
    );
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

#[test]
fn bad_arguments_are_refused_before_measuring() {
    for (args, expected) in [
        (
            &["--p", "0.1,0.1"][..],
            "--p names a value twice; expected each at most once",
        ),
        (
            &["--dtypes", "bf16,f16,bf16"],
            "--dtypes names a value twice",
        ),
        (&["--shapes", "odd,sq,odd"], "--shapes names a value twice"),
        (&["--shapes", "huge"], "unknown shape 'huge'"),
        (&["--dtypes", "f64"], "unknown dtype 'f64'"),
        (&["--p", "1.5"], "--p values must lie in [0, 1]"),
    ] {
        let output = peer(args, false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
