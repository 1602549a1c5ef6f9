//! Opening the GPU in the GPU test crates, and when a test may skip instead.
//!
//! Where this machine has no usable GPU, driver or compiled kernels (every CI machine), a GPU test
//! skips with a message. Any other failure to open the GPU or load its kernels (a module that does
//! not load, a CUDA error) fails the test: it is a fault on a machine that should run it. With
//! `FUSEDROP_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it on the GPU host) a skip is a failure
//! too, and so is a Hopper check's skip on a compute capability 9.0 GPU, so that a GPU run cannot
//! pass by checking nothing.
#![allow(dead_code)] // each test crate that includes this file uses the part it needs

use fusedrop::cuda::LayerKernels;
use fusedrop::Error;
use half::bf16;

/// Whether this run must not skip (`FUSEDROP_REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    std::env::var("FUSEDROP_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// What `open` returned, or `None` (with a message) where the machine cannot run `what`: no
/// driver, no GPU, a GPU too old, or a build without the kernels. Panics on any other error, and
/// on those too under `FUSEDROP_REQUIRE_GPU=1`.
pub fn open_or_skip<T>(what: &str, open: impl FnOnce() -> fusedrop::Result<T>) -> Option<T> {
    match open() {
        Ok(value) => Some(value),
        Err(
            e
            @ (Error::DriverUnavailable(_) | Error::KernelsNotBuilt | Error::UnsupportedDevice(_)),
        ) => {
            skip(what, &e);
            None
        }
        Err(e) => panic!("{what}: opening the GPU or loading its kernels failed: {e}"),
    }
}

/// Says that `what` is skipped and why; panics instead under `FUSEDROP_REQUIRE_GPU=1`.
pub fn skip(what: &str, why: &dyn std::fmt::Display) {
    assert!(
        !gpu_required(),
        "{what} would be skipped ({why}), but FUSEDROP_REQUIRE_GPU=1 requires it to run"
    );
    eprintln!("skipping {what}: {why}");
}

/// Whether `kernels` run the Hopper kernels (compute capability 9.0 and the sm_90a modules
/// loaded); where not, says that `what` is skipped. On a compute capability 9.0 GPU under
/// `FUSEDROP_REQUIRE_GPU=1`, missing Hopper modules are a failure, not a skip.
pub fn hopper_or_skip(kernels: &LayerKernels, what: &str) -> bool {
    if kernels.hopper_available::<bf16>() {
        return true;
    }
    if kernels.compute_capability() == (9, 0) {
        skip(
            what,
            &"the sm_90a modules are not loaded (a build without 90 in FUSEDROP_CUDA_ARCHS?)",
        );
    } else {
        eprintln!("skipping {what}: not a compute capability 9.0 GPU");
    }
    false
}
