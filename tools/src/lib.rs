//! # fusedrop-tools
//!
//! What the `fusedrop` command-line tool and the criterion benchmarks share, kept out of the
//! layer library so that its users compile none of it: the benchmark machinery ([`bench`](mod@bench)) and
//! the cuBLASLt baselines it compares with ([`baseline`]), the forward's tuning sweep
//! ([`sweep`]), and the performance issues' goals (and the design targets they leave out)
//! checked on a run's CSVs ([`goals`]).
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

/// The first item of `items` that an earlier one equals: what the command line's list flags
/// (`--shapes`, `--dtypes`, `--p`, `--family`) refuse, since a repeated item measures a row twice.
pub fn first_repeated<T: PartialEq>(items: &[T]) -> Option<&T> {
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| items[..i].contains(item).then_some(item))
}
