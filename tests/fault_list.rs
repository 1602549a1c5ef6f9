//! scripts/faults.tsv stays plantable: every fault names a file under kernels/, tests/harness/ or
//! src/, a build the planting script knows, and a sed script that still changes that file as it
//! is now. A kernel edit that moves or rewrites the code a fault targets fails here, in every test
//! run, instead of surfacing as "BROKEN" the next time someone runs scripts/plant-faults.sh
//! (which is too slow for the default test command: docs/HARNESS.md).

use std::path::Path;
use std::process::Command;

#[test]
fn every_planted_fault_still_changes_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = std::fs::read_to_string(root.join("scripts/faults.tsv")).expect("read faults.tsv");
    assert!(
        Command::new("sed").arg("--version").output().is_ok(),
        "no GNU sed on PATH; expected one (this test and scripts/plant-faults.sh plant the faults \
         with it)"
    );
    let mut faults = 0;
    let mut stale = Vec::new();
    for (number, line) in list.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, file, script, tests, build] = fields[..] else {
            panic!(
                "faults.tsv line {}: expected 5 tab-separated fields (name, file, sed script, \
                 tests, build), found {}",
                number + 1,
                fields.len()
            );
        };
        assert!(
            file.starts_with("kernels/")
                || file.starts_with("tests/harness/")
                || file.starts_with("src/"),
            "fault {name:?}: {file} is not under kernels/, tests/harness/ or src/"
        );
        assert!(
            matches!(build, "plain" | "address"),
            "fault {name:?}: build {build:?}, expected plain or address"
        );
        assert!(!tests.is_empty(), "fault {name:?}: no test filter");
        let path = root.join(file);
        let original = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fault {name:?}: cannot read {file}: {e}"));
        let planted = Command::new("sed")
            .arg("-e")
            .arg(script)
            .arg(&path)
            .output()
            .expect("run sed");
        assert!(
            planted.status.success(),
            "fault {name:?}: sed failed on {file}: {}",
            String::from_utf8_lossy(&planted.stderr)
        );
        if planted.stdout == original {
            stale.push(format!("{name} ({file})"));
        }
        faults += 1;
    }
    assert!(faults > 0, "faults.tsv lists no fault");
    assert!(
        stale.is_empty(),
        "{} of {faults} faults no longer change their file (re-script them to the code as it is \
         now): {stale:#?}",
        stale.len()
    );
}
