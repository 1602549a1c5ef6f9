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
    /// The suffix of this type's kernel entry points (`fusedrop_forward_bf16`, ...).
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
        f16::from_f64(v)
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
        bf16::from_f64(v)
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
