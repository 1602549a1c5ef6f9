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

/// `--device`'s and `--gpu`'s parser: a GPU ordinal, whose error says what one is (a negative
/// value reaches it: the flags allow negative numbers).
pub fn gpu_ordinal(text: &str) -> std::result::Result<usize, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected a GPU ordinal: a whole number, 0 for the first GPU".to_string())
}

/// What a command-line flag's error says: an invalid argument's message alone (clap already
/// names the flag and the value), anything else as it displays.
pub fn flag_message(error: fusedrop::Error) -> String {
    match error {
        fusedrop::Error::InvalidArgument(message) => message,
        other => other.to_string(),
    }
}

/// The first item of `items` that an earlier one equals: what the command line's list flags
/// (`--shapes`, `--dtypes`, `--p`, `--family`) refuse, since a repeated item measures a row twice.
pub fn first_repeated<T: PartialEq>(items: &[T]) -> Option<&T> {
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| items[..i].contains(item).then_some(item))
}
