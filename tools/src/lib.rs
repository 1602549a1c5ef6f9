//! # fusedrop-tools
//!
//! What the `fusedrop` command-line tool and the criterion benchmarks share, kept out of the
//! layer library so that its users compile none of it: the benchmark machinery ([`bench`](mod@bench)) and
//! the cuBLASLt baselines it compares with ([`baseline`]), the forward's tuning sweep
//! ([`sweep`]), and the performance issues' goals checked on a run's CSVs ([`goals`]).
#![warn(missing_docs)]

pub mod baseline;
pub mod bench;
pub mod goals;
pub mod sweep;

/// Builds a [`fusedrop::Error::InvalidArgument`] from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => {
        fusedrop::Error::InvalidArgument(format!($($arg)*))
    };
}
pub(crate) use invalid;
