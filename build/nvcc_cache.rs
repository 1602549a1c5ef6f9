//! A cache of nvcc's outputs keyed by everything that decides them, for builds that compile the
//! same kernels again under another profile, feature set or target directory (scripts/test.sh
//! builds them for clippy, for the release tests and for the candle-cuda check). Opt-in: build.rs
//! uses it only where `FUSEDROP_NVCC_CACHE` names a directory. Kept apart from build.rs so that
//! tests/build_nvcc_cache.rs can check it.
//!
//! An entry is a directory named by the key, holding the fatbin and ptxas's report; it is written
//! under a temporary name and renamed into place, so a reader never sees half an entry. The
//! report is stored because build.rs checks it (spills, serialized wgmmas) on a hit as on a miss.
//! The keys are build/source_digest.rs's digests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The environment variable that names the cache directory.
pub const NVCC_CACHE_VAR: &str = "FUSEDROP_NVCC_CACHE";

/// The files in an entry.
const FATBIN: &str = "module.fatbin";
const REPORT: &str = "ptxas.txt";

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
