//! The dropout mask contract, v1 (docs/mask-contract.md): a keep/drop decision that is a pure
//! function of (seed, subsequence, p, linear element index), identical on every backend.
//!
//! The same arithmetic is written for the GPU in `kernels/mask.cuh`.

use crate::philox::philox4x32_10;

/// The version of the mask contract this crate implements.
pub const CONTRACT_VERSION: u32 = 1;

/// The Philox key for a seed: its low and high 32-bit halves.
pub fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The Philox counter that decides linear indices `4q .. 4q+3`.
pub fn counter(q: u64, subsequence: u64) -> [u32; 4] {
    [
        q as u32,
        (q >> 32) as u32,
        subsequence as u32,
        (subsequence >> 32) as u32,
    ]
}

/// The random word that decides element `index`: word `index & 3` of the Philox call for
/// counter `index >> 2`.
pub fn word(seed: u64, subsequence: u64, index: u64) -> u32 {
    philox4x32_10(counter(index >> 2, subsequence), key(seed))[(index & 3) as usize]
}

/// The drop threshold `floor(p * 2^32)`, in `[0, 2^32]`: an element is kept when its word is at
/// least this. `p` must already be validated to lie in `[0, 1]`.
pub fn threshold(p: f32) -> u64 {
    (f64::from(p) * 4_294_967_296.0).floor() as u64
}

/// The factor kept elements are multiplied by: `1 / (1 - p)`, and 0 when `p == 1` (every element
/// is dropped, so nothing is scaled).
pub fn scale(p: f32) -> f32 {
    if p >= 1.0 {
        0.0
    } else {
        1.0 / (1.0 - p)
    }
}

/// Whether element `index` is kept under dropout probability `p` for this (seed, subsequence).
///
/// `p` is the probability of dropping, in `[0, 1]`; values outside that range are clamped here,
/// and a NaN `p` counts as 0 (everything kept; the cast of NaN to an integer is 0). The public
/// layer entry points reject both with an error before anything runs.
///
/// ```
/// // p = 0 keeps everything, p = 1 drops everything.
/// assert!(fusedrop::mask::keep(42, 7, 0.0, 123));
/// assert!(!fusedrop::mask::keep(42, 7, 1.0, 123));
/// ```
pub fn keep(seed: u64, subsequence: u64, p: f32, index: u64) -> bool {
    let t = threshold(p.clamp(0.0, 1.0));
    t == 0 || u64::from(word(seed, subsequence, index)) >= t
}

/// The keep decisions of the consecutive linear indices `first .. first + keep.len()`, written
/// into `keep`: the same decisions as [`keep`], drawing each Philox call once for its four
/// indices instead of once per index.
///
/// ```
/// let mut run = [false; 10];
/// fusedrop::mask::keep_run(42, 7, 0.5, 3, &mut run);
/// for (j, &kept) in run.iter().enumerate() {
///     assert_eq!(kept, fusedrop::mask::keep(42, 7, 0.5, 3 + j as u64));
/// }
/// ```
pub fn keep_run(seed: u64, subsequence: u64, p: f32, first: u64, keep: &mut [bool]) {
    let t = threshold(p.clamp(0.0, 1.0));
    if t == 0 {
        keep.fill(true);
        return;
    }
    let mut cached: Option<(u64, [u32; 4])> = None;
    for (j, kept) in keep.iter_mut().enumerate() {
        let index = first.wrapping_add(j as u64);
        let q = index >> 2;
        let words = match cached {
            Some((cq, words)) if cq == q => words,
            _ => {
                let words = philox4x32_10(counter(q, subsequence), key(seed));
                cached = Some((q, words));
                words
            }
        };
        *kept = u64::from(words[(index & 3) as usize]) >= t;
    }
}
