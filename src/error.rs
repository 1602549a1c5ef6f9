//! The one error type of the crate: every message says what was wrong and what was expected.

use std::fmt;

/// Everything that can go wrong before or during a launch.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A caller-supplied argument is invalid (shape, length, probability, geometry ...).
    /// The message names the argument, the value received and what was expected.
    InvalidArgument(String),
    /// The CUDA kernels were not compiled into this build (no nvcc was found by build.rs).
    KernelsNotBuilt,
    /// No usable CUDA driver: libcuda could not be loaded or initialised, or the requested GPU
    /// ordinal does not exist.
    DriverUnavailable(String),
    /// The GPU or the build cannot run the requested kernel: compute capability too old (or, for
    /// the sm_90a kernels, not 9.0), a module the build left out, or one the handle was told not
    /// to load (`LoadOptions`).
    UnsupportedDevice(String),
    /// A CUDA driver or library call failed.
    Cuda(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::KernelsNotBuilt => write!(
                f,
                "the CUDA kernels were not built: build.rs found no nvcc (set NVCC or CUDA_HOME, \
                 or put nvcc on PATH, and rebuild)"
            ),
            Error::DriverUnavailable(msg) => write!(f, "no usable CUDA driver: {msg}"),
            Error::UnsupportedDevice(msg) => write!(f, "unsupported GPU: {msg}"),
            Error::Cuda(msg) => write!(f, "CUDA error: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error::InvalidArgument`] from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => {
        $crate::error::Error::InvalidArgument(format!($($arg)*))
    };
}
pub(crate) use invalid;
