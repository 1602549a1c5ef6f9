//! Digests of byte strings and of source trees, for the keys of what is built from kernels/:
//! build.rs's nvcc cache (build/nvcc_cache.rs) and the CPU harness's host-compiled drivers
//! (tests/kernels_on_cpu/main.rs), which include this file by path.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::Hasher;
use std::io;
use std::path::{Path, PathBuf};

/// A 128-bit hex digest of `parts`, each length-prefixed so that moving bytes from one part to
/// the next changes it. Two 64-bit SipHash passes with different leading words; a collision
/// only costs a wrong cache hit if two different inputs agree on both.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut words = [0u64; 2];
    for (salt, word) in words.iter_mut().enumerate() {
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(salt as u64);
        for part in parts {
            hasher.write_u64(part.len() as u64);
            hasher.write(part);
        }
        *word = hasher.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// Every file under `dir` (recursively, in sorted order), as its path relative to `dir` and its
/// bytes, in one buffer: what a kernel unit can include from the source tree.
pub fn tree_contents(dir: &Path) -> io::Result<Vec<u8>> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut contents = Vec::new();
    for file in files {
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        let name = relative.to_string_lossy();
        let bytes = fs::read(&file)?;
        contents.extend_from_slice(&(name.len() as u64).to_le_bytes());
        contents.extend_from_slice(name.as_bytes());
        contents.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        contents.extend_from_slice(&bytes);
    }
    Ok(contents)
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
