//! `fusedrop selftest`: without a usable GPU it exits with its own code (3) and says why; on a
//! GPU host it runs the quick spread and every check must pass (exit 0).

use std::process::{Command, Output};

fn fusedrop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusedrop"))
        .args(args)
        .output()
        .expect("the fusedrop binary runs")
}

#[test]
fn selftest_passes_on_a_gpu_or_exits_3_without_one() {
    let output = fusedrop(&["selftest", "--quick"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "selftest panicked:\n{stderr}");
    match fusedrop::cuda::open_device(0) {
        Err(e) => {
            eprintln!("no usable GPU ({e}): checking the no-GPU exit path only");
            assert_eq!(
                output.status.code(),
                Some(3),
                "without a GPU selftest must exit 3\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            assert!(
                stdout.contains("no usable GPU") && stdout.contains("nothing was checked"),
                "selftest must say plainly why it checked nothing:\n{stdout}"
            );
        }
        Ok(_) => {
            assert_eq!(
                output.status.code(),
                Some(0),
                "selftest failed on this GPU\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            assert!(stdout.contains("selftest: PASS"), "{stdout}");
            for op in ["dropout", "forward", "backward"] {
                for dtype in ["f32", "f16", "bf16"] {
                    assert!(
                        stdout
                            .lines()
                            .any(|l| l.starts_with(op) && l.contains(dtype)),
                        "no {op} {dtype} row in the table:\n{stdout}"
                    );
                }
            }
        }
    }
}

#[test]
fn selftest_rejects_bad_flags_with_code_2() {
    for (args, expected) in [
        (&["selftest", "--fast"][..], "unexpected argument '--fast'"),
        (&["selftest", "--seed", "x"], "'x' for '--seed <S>'"),
        (
            &["selftest", "--quick=1"],
            "unexpected value '1' for '--quick'",
        ),
    ] {
        let output = fusedrop(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn selftest_help_documents_the_exit_codes() {
    let output = fusedrop(&["selftest", "--help"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("3 no usable GPU"), "{stdout}");
    assert!(stdout.contains("--quick"), "{stdout}");
}
