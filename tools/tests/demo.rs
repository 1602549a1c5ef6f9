//! Runs `fusedrop demo` on the CPU with a few epochs and checks what it produces: finite losses,
//! accuracy well above chance, the plot, the per-epoch CSV and the JSON summary; the same seed
//! gives the same numbers; bad flags exit with code 2 and a message, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value};

const EPOCHS: usize = 6;

fn fusedrop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusedrop"))
        .args(args)
        .output()
        .expect("the fusedrop binary runs")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A short CPU run: small enough for a test, long enough to learn the digits well past chance.
fn short_run(dir: &Path, seed: &str) -> (Output, PathBuf) {
    let json = dir.join("summary.json");
    let epochs = EPOCHS.to_string();
    let output = fusedrop(&[
        "demo",
        "--device",
        "cpu",
        "--epochs",
        &epochs,
        "--hidden",
        "128",
        "--p",
        "0.5",
        "--train",
        "200",
        "--val",
        "200",
        "--batch",
        "20",
        "--lr",
        "3e-3",
        "--seed",
        seed,
        "--out",
        dir.to_str().expect("a UTF-8 temporary path"),
        "--summary-json",
        json.to_str().expect("a UTF-8 temporary path"),
    ]);
    (output, json)
}

fn number(row: &Map<String, Value>, key: &str) -> f64 {
    row.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("field {key}: expected a number in {row:?}"))
}

fn summary_rows(json_path: &Path) -> Vec<Map<String, Value>> {
    let text = std::fs::read_to_string(json_path).expect("the summary JSON was written");
    let rows: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e} in:\n{text}"));
    let Value::Array(rows) = rows else {
        panic!("the summary is not a JSON list:\n{text}");
    };
    rows.into_iter()
        .map(|row| match row {
            Value::Object(fields) => fields,
            other => panic!("a summary row is not an object: {other:?}"),
        })
        .collect()
}

#[test]
fn demo_on_cpu_learns_and_writes_plot_csv_and_summary() {
    let dir = out_dir("demo-short-run");
    let (output, json) = short_run(&dir, "3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("CPU reference"),
        "the demo must say which backend it uses:\n{stdout}"
    );
    assert!(
        stderr.contains("epochs"),
        "no progress bar on stderr:\n{stderr}"
    );

    let rows = summary_rows(&json);
    assert_eq!(rows.len(), 2, "one summary row per model");
    let names: Vec<String> = rows
        .iter()
        .map(|r| match r.get("model") {
            Some(Value::String(name)) => name.clone(),
            other => panic!("model: expected a string, found {other:?}"),
        })
        .collect();
    assert!(names.iter().any(|n| n.contains("plain")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("dropout")), "{names:?}");
    for (row, name) in rows.iter().zip(&names) {
        for key in ["train_loss", "val_loss"] {
            let loss = number(row, key);
            assert!(loss.is_finite() && loss > 0.0, "{name} {key} = {loss}");
            assert!(
                loss < 2.3,
                "{name} {key} = {loss}: no better than uniform guessing"
            );
        }
        for key in ["train_acc", "val_acc"] {
            let accuracy = number(row, key);
            assert!(
                accuracy > 0.5 && accuracy <= 1.0,
                "{name} {key} = {accuracy}: expected well above chance (0.1)"
            );
        }
    }

    let plot_path = dir.join("demo-loss.svg");
    assert!(
        stdout.contains(&plot_path.display().to_string()),
        "the demo must print the plot's path:\n{stdout}"
    );
    let svg = std::fs::read_to_string(&plot_path).expect("the plot was written");
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    let curves: Vec<&str> = svg
        .split("<polyline")
        .skip(1)
        .map(|rest| rest.split("</polyline>").next().unwrap_or(""))
        .collect();
    assert_eq!(
        curves.len(),
        4,
        "four loss curves: train and validation for both models"
    );
    for curve in &curves {
        let points = curve
            .split("points=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a polyline has points");
        let coordinates: Vec<f64> = points
            .split([' ', ','])
            .map(|v| v.parse().expect("numeric coordinates"))
            .collect();
        assert_eq!(
            coordinates.len(),
            2 * EPOCHS,
            "one point per epoch: {points}"
        );
        assert!(coordinates.iter().all(|v| v.is_finite()));
    }
    for label in ["plain", "dropout", "validation", "training"] {
        assert!(svg.contains(label), "the legend lacks '{label}'");
    }

    let csv = std::fs::read_to_string(dir.join("demo-history.csv")).expect("the CSV was written");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "model,p,epoch,train_loss,train_acc,val_loss,val_acc"
    );
    assert_eq!(lines.len(), 1 + 2 * EPOCHS, "one line per model and epoch");
}

#[test]
fn demo_same_seed_gives_same_numbers() {
    let (first, first_json) = short_run(&out_dir("demo-seed-a"), "11");
    let (second, second_json) = short_run(&out_dir("demo-seed-b"), "11");
    assert!(first.status.success() && second.status.success());
    let a = std::fs::read_to_string(first_json).expect("first summary");
    let b = std::fs::read_to_string(second_json).expect("second summary");
    assert_eq!(a, b, "two runs with the same seed on the CPU differ");
}

#[test]
fn demo_rejects_bad_flags_with_code_2_and_a_message() {
    // Each mistake, and what the message must say about it.
    let cases: &[(&[&str], &str)] = &[
        (&["--epochs", "many"], "'many' for '--epochs <N>'"),
        (
            &["--epochs", "0"],
            "expected a whole number from 1 to 100000",
        ),
        (&["--epochs"], "a value is required for '--epochs <N>'"),
        (
            &["--hidden", "-3"],
            "expected a whole number from 1 to 16384",
        ),
        (&["--p", "1"], "expected a number with 0 <= p < 1"),
        (&["--p", "nan"], "expected a number with 0 <= p < 1"),
        (&["--device", "tpu"], "[possible values: auto, cpu, cuda]"),
        (&["--lr", "0"], "expected a number in (0, 1]"),
        (
            &["--train", "1500", "--val", "1000"],
            "expected at most 1797 together",
        ),
        (&["--frobnicate"], "unexpected argument '--frobnicate'"),
        (&["stray"], "unexpected argument 'stray'"),
        (&["--help=yes"], "unexpected value 'yes' for '--help'"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["demo"];
        full.extend_from_slice(args);
        let output = fusedrop(&full);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: expected exit code 2\nstderr: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_lists_every_command() {
    let output = fusedrop(&["help"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for command in ["demo", "selftest", "bench", "help"] {
        assert!(stdout.contains(command), "help lacks {command}:\n{stdout}");
    }
    let output = fusedrop(&["demo", "--help"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--epochs",
        "--hidden",
        "--p",
        "--seed",
        "--device",
        "--out",
        "--summary-json",
    ] {
        assert!(stdout.contains(flag), "demo --help lacks {flag}:\n{stdout}");
    }
    let output = fusedrop(&["no-such-command"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'no-such-command'"),
        "{stderr}"
    );
}
