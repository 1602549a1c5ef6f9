//! Bit-for-bit comparison of two results with a failure message that says where they differ
//! (`reference::describe_differences`), not a dump of both vectors: shared by the GPU test crates.

use fusedrop::reference::{describe_differences, to_f64};
use fusedrop::Element;

/// Panics, saying which elements differ, unless the `rows x cols` results `got` and `want` are
/// identical bit for bit.
pub fn assert_same_bits<T: Element>(what: &str, rows: usize, cols: usize, got: &[T], want: &[T]) {
    let (got, want) = (to_f64(got), to_f64(want));
    let differs = |i: usize| got[i].to_bits() != want[i].to_bits();
    assert!(
        got.len() == want.len() && !(0..got.len()).any(differs),
        "{what}: {}",
        describe_differences(rows, cols, &got, &want, differs)
    );
}
