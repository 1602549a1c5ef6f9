//! The checks every backend runs before it touches a buffer: one place, one set of messages.
//!
//! Decisions (documented in the README too):
//! - An empty output (`m == 0` or `n == 0`) is valid: the forward then does nothing, and the
//!   backward zero-fills the gradients that still have elements (or leaves them as they are when
//!   accumulating), as the gradient of an empty sum.
//! - `k == 0` is an error: a linear layer with no input features is almost surely a bug.
//! - Every element count (`m*k`, `n*k`, `m*n`) and every mask index must fit in 63 bits, the
//!   kernels' signed 64-bit index arithmetic.
//! - `p` must be a number in `[0, 1]`.

use crate::error::{invalid, Result};
use crate::layer::{Geometry, LayerSpec, LinearShape, Nonlinearity};

/// The largest element count or mask index the kernels' 64-bit signed arithmetic handles.
pub const MAX_INDEX: u64 = i64::MAX as u64;

/// Checks a dropout probability: finite and in `[0, 1]`.
pub fn check_probability(p: f32) -> Result<()> {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return Err(invalid!(
            "dropout probability p = {p} is outside [0, 1]; expected 0 <= p <= 1 (0 disables \
             dropout, 1 drops everything)"
        ));
    }
    Ok(())
}

/// `a * b` as an element count, or an error naming `what` when it passes [`MAX_INDEX`].
pub(crate) fn product(a: usize, b: usize, what: &str) -> Result<u64> {
    (a as u64)
        .checked_mul(b as u64)
        .filter(|&v| v <= MAX_INDEX)
        .ok_or_else(|| {
            invalid!("{what} = {a} x {b} overflows 64-bit index arithmetic; expected at most 2^63-1 elements")
        })
}

/// Element counts of the three matrices of a shape, checked against overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeSizes {
    /// `m * k`: elements of X (and dX).
    pub x: usize,
    /// `n * k`: elements of W (and dW).
    pub w: usize,
    /// `m * n`: elements of Y (and dY).
    pub y: usize,
}

/// Checks a shape: `k >= 1`, no element count overflows. Returns the element counts.
pub fn check_shape(shape: LinearShape) -> Result<ShapeSizes> {
    if shape.k == 0 {
        return Err(invalid!(
            "k = 0 input features (shape m={}, n={}, k=0); expected k >= 1",
            shape.m,
            shape.n
        ));
    }
    Ok(ShapeSizes {
        x: product(shape.m, shape.k, "m*k (elements of X)")? as usize,
        w: product(shape.n, shape.k, "n*k (elements of W)")? as usize,
        y: product(shape.m, shape.n, "m*n (elements of Y)")? as usize,
    })
}

/// Checks that the shard described by `geometry` fits its logical output and that every mask
/// index of a call with `m` rows and `n` columns fits in 63 bits.
pub fn check_geometry(geometry: &Geometry, m: usize, n: usize) -> Result<()> {
    let n_global = geometry.n_global_for(n);
    let col_end = geometry.col_offset.checked_add(n as u64);
    if col_end.is_none_or(|end| end > n_global) {
        return Err(invalid!(
            "geometry: col_offset {} + n {} exceeds n_global {}; expected the shard's columns \
             to lie inside the logical output",
            geometry.col_offset,
            n,
            n_global
        ));
    }
    let row_end = geometry.row_offset.checked_add(m as u64);
    let last_index = row_end.and_then(|rows| rows.checked_mul(n_global));
    if last_index.is_none_or(|v| v > MAX_INDEX) {
        return Err(invalid!(
            "geometry: (row_offset {} + m {}) x n_global {} overflows the 63-bit mask index; \
             expected a logical output of at most 2^63-1 elements",
            geometry.row_offset,
            m,
            n_global
        ));
    }
    Ok(())
}

/// Checks one buffer's length against what the shape needs.
pub fn check_len(name: &str, len: usize, expected: usize, what: &str) -> Result<()> {
    if len != expected {
        return Err(invalid!(
            "{name} has {len} elements; expected {expected} ({what})"
        ));
    }
    Ok(())
}

/// The checks a forward and a backward call share: p, the shape, the shard geometry, and the
/// lengths of X and W (`x`, `w` elements).
fn check_operands(
    shape: LinearShape,
    p: f32,
    geometry: &Geometry,
    x: usize,
    w: usize,
) -> Result<ShapeSizes> {
    check_probability(p)?;
    let sizes = check_shape(shape)?;
    check_geometry(geometry, shape.m, shape.n)?;
    let LinearShape { m, n, k } = shape;
    check_len("X", x, sizes.x, &format!("m*k = {m}*{k}"))?;
    check_len(
        "W",
        w,
        sizes.w,
        &format!("n*k = {n}*{k}, the nn.Linear [out, in] layout"),
    )?;
    Ok(sizes)
}

/// Buffer lengths of a forward call, as the caller handed them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLens {
    /// Elements of X.
    pub x: usize,
    /// Elements of W.
    pub w: usize,
    /// Elements of b, when a bias is given.
    pub b: Option<usize>,
    /// Elements of Y.
    pub y: usize,
}

/// Every check of a forward call. `Ok(false)` means the output is empty and there is nothing
/// to do; `Ok(true)` means the call may run.
pub fn check_forward(
    shape: LinearShape,
    p: f32,
    geometry: &Geometry,
    lens: ForwardLens,
) -> Result<bool> {
    let sizes = check_operands(shape, p, geometry, lens.x, lens.w)?;
    let LinearShape { m, n, .. } = shape;
    if let Some(b) = lens.b {
        check_len("b", b, n, &format!("n = {n}, one bias per output feature"))?;
    }
    check_len("Y", lens.y, sizes.y, &format!("m*n = {m}*{n}"))?;
    Ok(sizes.y > 0)
}

/// Buffer lengths of a backward call, as the caller handed them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardLens {
    /// Elements of X (the forward input; dX has the same length).
    pub x: usize,
    /// Elements of W (dW has the same length).
    pub w: usize,
    /// Elements of dY, the gradient of the layer's output.
    pub dy: usize,
    /// Elements of the saved forward output Y, when one is given. ReLU backward requires it;
    /// identity backward does not read it, but a buffer that is given must still have m*n
    /// elements.
    pub y_saved: Option<usize>,
}

/// Every check of a backward call (see docs/mask-contract.md, "Backward without a mask").
///
/// `Ok(false)` means dY is empty (`m == 0` or `n == 0`): no product has to be computed, but
/// the gradients are still defined, as zeros (dX is `[m, k]`, dW is `[n, k]`, db is `[n]`, and
/// whichever of them is non-empty must be zero-filled by the backend). `Ok(true)` means the call
/// may run.
pub fn check_backward(spec: &LayerSpec, lens: BackwardLens) -> Result<bool> {
    let shape = spec.shape;
    let sizes = check_operands(shape, spec.dropout.p, &spec.geometry, lens.x, lens.w)?;
    let LinearShape { m, n, .. } = shape;
    check_len("dY", lens.dy, sizes.y, &format!("m*n = {m}*{n}"))?;
    match (spec.nonlinearity, lens.y_saved) {
        (Nonlinearity::Relu, None) => {
            return Err(invalid!(
                "ReLU backward needs y_saved, the saved forward output Y (m*n = {m}*{n} \
                 elements), to know which elements were kept and active; got none"
            ));
        }
        (_, Some(len)) => check_len(
            "y_saved",
            len,
            sizes.y,
            &format!("m*n = {m}*{n}, the saved forward output Y"),
        )?,
        (Nonlinearity::Identity, None) => {}
    }
    Ok(sizes.y > 0)
}

/// Lengths of the gradient buffers a backward call writes, `None` for one not asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradientLens {
    /// Elements of dX.
    pub dx: Option<usize>,
    /// Elements of dW.
    pub dw: Option<usize>,
    /// Elements of db.
    pub db: Option<usize>,
}

/// The gradient buffers' lengths for `shape`: dX `m*k`, dW `n*k`, db `n` (the shape itself
/// checked as by [`check_shape`]).
pub fn check_gradients(shape: LinearShape, lens: GradientLens) -> Result<()> {
    let LinearShape { m, n, k } = shape;
    let sizes = check_shape(shape)?;
    if let Some(dx) = lens.dx {
        check_len("dX", dx, sizes.x, &format!("m*k = {m}*{k}"))?;
    }
    if let Some(dw) = lens.dw {
        check_len("dW", dw, sizes.w, &format!("n*k = {n}*{k}"))?;
    }
    if let Some(db) = lens.db {
        check_len("db", db, n, &format!("n = {n}, one per output feature"))?;
    }
    Ok(())
}
