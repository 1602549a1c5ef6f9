//! The cache of nvcc's outputs that build.rs uses under `FUSEDROP_NVCC_CACHE`
//! (build/nvcc_cache.rs, and build/source_digest.rs for its keys, included here as they are
//! there): keys that change with every input, and entries that are either whole or absent.

#[path = "../build/nvcc_cache.rs"]
mod nvcc_cache;
#[path = "../build/source_digest.rs"]
mod source_digest;

use nvcc_cache::NvccCache;
use source_digest::{digest, tree_contents};
use std::fs;
use std::path::PathBuf;

/// A fresh directory under the target's temporary directory, removed first if a previous run
/// left it.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nvcc_cache_{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn digest_changes_with_every_part_and_with_where_parts_split() {
    let base = digest(&[b"nvcc 13.0", b"forward_sm90", b"-O3"]);
    assert_eq!(base.len(), 32);
    assert_eq!(base, digest(&[b"nvcc 13.0", b"forward_sm90", b"-O3"]));
    for changed in [
        digest(&[b"nvcc 13.1", b"forward_sm90", b"-O3"]),
        digest(&[b"nvcc 13.0", b"forward_tc", b"-O3"]),
        digest(&[b"nvcc 13.0", b"forward_sm90", b"-O2"]),
        digest(&[b"nvcc 13.0", b"forward_sm9", b"0-O3"]),
        digest(&[b"nvcc 13.0", b"forward_sm90", b"-O3", b""]),
    ] {
        assert_ne!(base, changed);
    }
}

#[test]
fn tree_contents_see_nested_files_their_names_and_their_bytes() {
    let dir = scratch("tree");
    fs::create_dir_all(dir.join("gemm/sm90")).unwrap();
    fs::write(
        dir.join("forward.cu"),
        "#include \"gemm/sm90/mainloop.cuh\"\n",
    )
    .unwrap();
    fs::write(dir.join("gemm/sm90/mainloop.cuh"), "int stages = 4;\n").unwrap();
    let before = tree_contents(&dir).unwrap();
    assert_eq!(before, tree_contents(&dir).unwrap());

    fs::write(dir.join("gemm/sm90/mainloop.cuh"), "int stages = 5;\n").unwrap();
    let edited = tree_contents(&dir).unwrap();
    assert_ne!(before, edited);

    fs::rename(
        dir.join("gemm/sm90/mainloop.cuh"),
        dir.join("gemm/sm90/pipeline.cuh"),
    )
    .unwrap();
    assert_ne!(edited, tree_contents(&dir).unwrap());
}

#[test]
fn stored_entries_come_back_and_missing_or_partial_ones_miss() {
    let dir = scratch("entries");
    let cache = NvccCache::new(dir.join("cache"));
    let built = dir.join("built.fatbin");
    fs::write(&built, [0xfa, 0x7b, 0x1e, 0x00, 0x42]).unwrap();
    let report = "ptxas info    : Used 168 registers, 0 bytes spill stores\n";

    let copied = dir.join("copied.fatbin");
    assert_eq!(cache.fetch("0123", &copied), None);
    assert!(!copied.exists());

    cache.store("0123", &built, report).unwrap();
    assert_eq!(cache.fetch("0123", &copied).as_deref(), Some(report));
    assert_eq!(fs::read(&copied).unwrap(), fs::read(&built).unwrap());
    assert_eq!(cache.fetch("4567", &copied), None);
    // Storing a key that is already there keeps the first entry.
    let other = dir.join("other.fatbin");
    fs::write(&other, [1, 2, 3]).unwrap();
    cache.store("0123", &other, "another report").unwrap();
    assert_eq!(cache.fetch("0123", &copied).as_deref(), Some(report));
    assert_eq!(fs::read(&copied).unwrap(), fs::read(&built).unwrap());
    // No staging directory is left behind.
    let names: Vec<String> = fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["0123"]);

    // An entry without its fatbin (a crash between two writes of some other tool) is a miss.
    fs::create_dir_all(dir.join("cache/89ab")).unwrap();
    fs::write(dir.join("cache/89ab/ptxas.txt"), report).unwrap();
    assert_eq!(cache.fetch("89ab", &dir.join("third.fatbin")), None);
}

#[test]
fn the_test_command_compiles_the_kernels_once_through_the_cache() {
    let script = include_str!("../scripts/test.sh");
    assert!(
        script.contains(&format!("export {}=", nvcc_cache::NVCC_CACHE_VAR)),
        "scripts/test.sh does not export {}",
        nvcc_cache::NVCC_CACHE_VAR
    );
}
