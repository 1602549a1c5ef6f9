//! The element types the layer runs in: `f32`, `half::f16` and `half::bf16`.

use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type of X, W, b and Y. Sealed: implemented for `f32`, `f16` and `bf16` only.
///
/// It carries what differs between the types: the kernel name suffix, the conversions the CPU
/// reference uses, and the accuracy a kernel must reach against an f64 reference.
pub trait Element:
    sealed::Sealed
    + Copy
    + Default
    + Send
    + Sync
    + PartialEq
    + std::fmt::Debug
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + 'static
{
    /// The suffix of this type's kernel entry points (`fusedrop_forward_tc64x64_bf16`, ...).
    const NAME: &'static str;
    /// The relative L2 error, against an f64 reference, that a result in this type must stay
    /// under: f32 1e-5, f16 2e-3, bf16 1e-2.
    const REL_L2_TOLERANCE: f64;
    /// Whether this type's kernels use tensor cores (mma.sync), which need compute capability 8.0.
    const NEEDS_SM80: bool;
    /// Round an f64 to this type (round to nearest even).
    fn from_f64(v: f64) -> Self;
    /// Widen to f64 (exact).
    fn to_f64(self) -> f64;
    /// Round an f32 to this type.
    fn from_f32(v: f32) -> Self;
    /// Convert to f32 (exact for f16 and bf16).
    fn to_f32(self) -> f32;
}

/// `v` rounded to f32 with round-to-odd: toward zero, then the last bit set when anything was
/// cut off. Rounding that once more, to nearest even, into a type with at least 2 bits fewer
/// (f16: 11, bf16: 8 against f32's 24) gives `v` rounded once to nearest even, which double
/// rounding through round-to-nearest f32 would not always give. It is how f16 and bf16 round
/// from f64 here: half 2.7's `f64` conversions drop the low 32 bits of the f64 before rounding,
/// so a value just above a midpoint by less than those bits can round down (found by
/// tests/reference.rs: 0.2465820430079475 gave bf16 0.24609375, not 0.2470703125).
fn f32_rounded_to_odd(v: f64) -> f32 {
    let nearest = v as f32;
    if !nearest.is_finite() || f64::from(nearest) == v {
        return nearest;
    }
    // Toward zero: one step back in magnitude where rounding went past v (same sign).
    let mut bits = nearest.to_bits();
    if f64::from(nearest).abs() > v.abs() {
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const REL_L2_TOLERANCE: f64 = 1e-5;
    const NEEDS_SM80: bool = false;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    const REL_L2_TOLERANCE: f64 = 2e-3;
    const NEEDS_SM80: bool = true;
    fn from_f64(v: f64) -> Self {
        f16::from_f32(f32_rounded_to_odd(v))
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    const REL_L2_TOLERANCE: f64 = 1e-2;
    const NEEDS_SM80: bool = true;
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(f32_rounded_to_odd(v))
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of T nearest to `v` (ties to the even bit pattern), found by comparing the
    /// neighbours of a first guess in exact f64 arithmetic: independent of the rounding code.
    fn nearest_by_search(v: f64, to_bits: fn(f64) -> u16, from_bits: fn(u16) -> f64) -> u16 {
        let guess = to_bits(v);
        let candidates = [guess.wrapping_sub(1), guess, guess.wrapping_add(1)];
        let distance = |b: u16| (from_bits(b) - v).abs();
        candidates
            .into_iter()
            .filter(|&b| from_bits(b).is_finite() && from_bits(b).signum() == v.signum())
            .min_by(|&a, &b| {
                distance(a)
                    .total_cmp(&distance(b))
                    .then((a & 1).cmp(&(b & 1)))
            })
            .unwrap()
    }

    #[test]
    fn f16_and_bf16_round_from_f64_to_nearest_even_once() {
        // The value that half 2.7's own conversion rounds the wrong way (just above the
        // midpoint 0.24658203125 between bf16 0.24609375 and 0.2470703125).
        assert_eq!(bf16::from_f64(0.2465820430079475).to_f64(), 0.24609375);
        assert_eq!(
            <bf16 as Element>::from_f64(0.2465820430079475).to_f64(),
            0.2470703125
        );
        // Exact midpoints go to even, in both types; so does a midpoint plus or minus 2^-40
        // (the bits half's conversion drops) to the nearer side.
        let bf16_mid = 0.24658203125;
        assert_eq!(<bf16 as Element>::from_f64(bf16_mid).to_f64(), 0.24609375);
        let above = bf16_mid + f64::powi(2.0, -40);
        assert_eq!(<bf16 as Element>::from_f64(above).to_f64(), 0.2470703125);
        let below = bf16_mid - f64::powi(2.0, -40);
        assert_eq!(<bf16 as Element>::from_f64(below).to_f64(), 0.24609375);
        let f16_mid = 1.0 + f64::powi(2.0, -11);
        assert_eq!(<f16 as Element>::from_f64(f16_mid).to_f64(), 1.0);
        let above = f16_mid + f64::powi(2.0, -40);
        assert_eq!(
            <f16 as Element>::from_f64(above).to_f64(),
            1.0 + f64::powi(2.0, -10)
        );
        // Many values near midpoints, subnormals and the largest finite values included,
        // against the search.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let r = next();
            let exponent = (r % 60) as i32 - 40;
            let mantissa = 1.0 + (next() >> 11) as f64 / f64::powi(2.0, 53);
            let sign = if r & (1 << 40) != 0 { -1.0 } else { 1.0 };
            let v = sign * mantissa * f64::powi(2.0, exponent);
            if v.abs() < 60000.0 {
                let want = nearest_by_search(
                    v,
                    |v| f16::from_f32(v as f32).to_bits(),
                    |b| f16::from_bits(b).to_f64(),
                );
                assert_eq!(<f16 as Element>::from_f64(v).to_bits(), want, "f16 {v:e}");
            }
            let want = nearest_by_search(
                v,
                |v| bf16::from_f32(v as f32).to_bits(),
                |b| bf16::from_bits(b).to_f64(),
            );
            assert_eq!(<bf16 as Element>::from_f64(v).to_bits(), want, "bf16 {v:e}");
        }
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e300,
        ] {
            let (h, b) = (
                <f16 as Element>::from_f64(v),
                <bf16 as Element>::from_f64(v),
            );
            assert_eq!(h.to_f64().is_nan(), v.is_nan(), "{v}");
            assert_eq!(b.to_f64().is_nan(), v.is_nan(), "{v}");
            if !v.is_nan() {
                assert_eq!(h.to_f64(), f16::from_f64(v).to_f64(), "{v}");
                assert_eq!(b.to_f64(), bf16::from_f64(v).to_f64(), "{v}");
            }
        }
    }
}
