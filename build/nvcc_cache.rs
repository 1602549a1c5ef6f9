//! A cache of nvcc's outputs keyed by everything that decides them, for builds that compile the
//! same kernels again under another profile, feature set or target directory (scripts/test.sh
//! builds them for clippy, for the release tests and for the candle-cuda check). Opt-in: build.rs
//! uses it only where `FUSEDROP_NVCC_CACHE` names a directory. Kept apart from build.rs so that
//! tests/build_nvcc_cache.rs can check it.
//!
//! An entry is a directory named by the key, holding the fatbin and ptxas's report; it is written
//! under a temporary name and renamed into place, so a reader never sees half an entry. The
//! report is stored because build.rs checks it (spills, serialized wgmmas) on a hit as on a miss.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::Hasher;
use std::io;
use std::path::{Path, PathBuf};

/// The environment variable that names the cache directory.
pub const NVCC_CACHE_VAR: &str = "FUSEDROP_NVCC_CACHE";

/// The files in an entry.
const FATBIN: &str = "module.fatbin";
const REPORT: &str = "ptxas.txt";

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

/// The cache directory.
pub struct NvccCache {
    dir: PathBuf,
}

impl NvccCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// On a hit, copies the entry's fatbin to `fatbin` and returns ptxas's report.
    pub fn fetch(&self, key: &str, fatbin: &Path) -> Option<String> {
        let entry = self.dir.join(key);
        let report = fs::read_to_string(entry.join(REPORT)).ok()?;
        fs::copy(entry.join(FATBIN), fatbin).ok()?;
        Some(report)
    }

    /// Stores a successful compilation. Errors are returned for the caller to report; a cache
    /// that cannot be written only costs the next build a compilation.
    pub fn store(&self, key: &str, fatbin: &Path, report: &str) -> io::Result<()> {
        let entry = self.dir.join(key);
        if entry.is_dir() {
            return Ok(());
        }
        let staging = self
            .dir
            .join(format!(".{key}.{}.partial", std::process::id()));
        fs::create_dir_all(&staging)?;
        fs::copy(fatbin, staging.join(FATBIN))?;
        fs::write(staging.join(REPORT), report)?;
        match fs::rename(&staging, &entry) {
            Ok(()) => Ok(()),
            // Another build stored the same key first: its entry is as good as ours.
            Err(_) if entry.is_dir() => fs::remove_dir_all(&staging),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }
}
