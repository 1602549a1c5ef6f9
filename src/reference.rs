//! The CPU reference implementation: plain, obviously correct, the oracle every kernel is
//! compared with.

use crate::element::Element;
use crate::layer::{Dropout, Geometry};
use crate::mask;

/// The standalone dropout kernel's reference: `y = keep(i) ? y * scale : 0`, with the product
/// taken in f32 and rounded once into `T`, exactly as the kernel does.
pub fn dropout_in_place<T: Element>(
    y: &mut [T],
    m: usize,
    n: usize,
    dropout: &Dropout,
    geometry: &Geometry,
) {
    let scale = mask::scale(dropout.p);
    for r in 0..m {
        for c in 0..n {
            let index = geometry.linear_index(n, r, c);
            let v = &mut y[r * n + c];
            *v = if mask::keep(dropout.seed, dropout.stream, dropout.p, index) {
                T::from_f32(v.to_f32() * scale)
            } else {
                T::from_f32(0.0)
            };
        }
    }
}
