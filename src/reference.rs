//! The CPU reference implementation: plain, obviously correct, the oracle every kernel is
//! compared with.
//!
//! Every product is accumulated in f64, in the same order for every element (sequentially over
//! the reduced dimension), and rounded once into the output type at the very end. Because each
//! element's sum depends only on its own row and column, never on how the work is split, a
//! column or row shard computed with the matching [`Geometry`] reproduces the unsharded result
//! bit for bit. The work is spread over the machine's cores by blocks of rows.
//!
//! ```
//! use fusedrop::{reference, DropoutSpec, LayerSpec, LinearShape, Nonlinearity};
//! let dropout = DropoutSpec::new(0.5, 42, 0);
//! let spec = LayerSpec::new(LinearShape::new(2, 3, 4), Nonlinearity::Relu, dropout);
//! let x = vec![0.5f32; 2 * 4];
//! let w = vec![0.25f32; 3 * 4];
//! let y = reference::forward(&spec, &x, &w, None)?;
//! // Every element is relu(0.5) = 0.5 before dropout: kept ones become 0.5 / (1 - 0.5) = 1.
//! assert!(y.iter().all(|&v| v == 0.0 || v == 1.0));
//! # Ok::<(), fusedrop::Error>(())
//! ```

use std::thread;

use crate::element::Element;
use crate::error::{invalid, Result};
use crate::layer::{DropoutSpec, Geometry, LayerSpec, LinearShape, Nonlinearity};
use crate::mask;
use crate::validate::{self, BackwardLens, ForwardLens};

/// The standalone dropout kernel's reference: `y = y * (keep(i) ? scale : 0)` ([`apply_keep`]),
/// with the product taken in f32 and rounded once into `T`, exactly as the kernel does. A dropped
/// NaN or infinity becomes NaN. Checks its arguments as the kernel's wrapper does (p, `y.len()
/// == m * n`, the geometry), so a bad call is an error, not a panic.
pub fn dropout_in_place<T: Element>(
    y: &mut [T],
    m: usize,
    n: usize,
    dropout: &DropoutSpec,
    geometry: &Geometry,
) -> Result<()> {
    validate::check_probability(dropout.p)?;
    let elements = validate::product(m, n, "m*n")?;
    validate::check_len("Y", y.len(), elements as usize, &format!("m*n = {m}*{n}"))?;
    validate::check_geometry(geometry, m, n)?;
    let scale = mask::scale(dropout.p);
    for r in 0..m {
        for c in 0..n {
            let index = geometry.linear_index(n, r, c);
            let v = &mut y[r * n + c];
            let kept = mask::keep(dropout.seed, dropout.subsequence, dropout.p, index);
            *v = T::from_f32(v.to_f32() * if kept { scale } else { 0.0 });
        }
    }
    Ok(())
}

/// ReLU as PyTorch computes it, with its non-finite behaviour (docs/mask-contract.md,
/// "Non-finite values"): `z <= 0 ? 0 : z`, so `relu(NaN) = NaN`, `relu(-inf) = 0`,
/// `relu(+inf) = +inf`. (`f64::max(z, 0.0)` would turn NaN into 0.) The kernels' counterpart is
/// `fusedrop::activate` in kernels/mask.cuh.
pub fn relu(z: f64) -> f64 {
    if z <= 0.0 {
        0.0
    } else {
        z
    }
}

/// One element's dropout: `a * (keep ? scale : 0)`, a multiplication, so a dropped NaN or
/// infinity becomes NaN as in PyTorch (whose dropout multiplies by the mask). The kernels'
/// counterpart is `fusedrop::apply_keep` in kernels/mask.cuh.
pub fn apply_keep(a: f64, keep: bool, scale: f64) -> f64 {
    a * if keep { scale } else { 0.0 }
}

/// Widens every element to f64 (exact for all three element types).
pub fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|e| e.to_f64()).collect()
}

/// Rounds every element once from f64 into `T` (round to nearest even).
pub fn from_f64<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&e| T::from_f64(e)).collect()
}

/// The pre-activation `z = x·wᵀ + b` in f64: `[m, n]` row-major, from X `[m, k]`, W `[n, k]`
/// and the optional bias b `[n]`.
///
/// An empty output (`m == 0` or `n == 0`) gives an empty vector; `k == 0` and wrong buffer
/// lengths are errors (see [`validate`]).
pub fn preactivation_f64<T: Element>(
    shape: LinearShape,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Result<Vec<f64>> {
    let sizes = validate::check_shape(shape)?;
    let lens = ForwardLens {
        x: x.len(),
        w: w.len(),
        b: b.map(<[T]>::len),
        y: sizes.y,
    };
    if !validate::check_forward(shape, 0.0, &Geometry::UNSHARDED, lens)? {
        return Ok(Vec::new());
    }
    let bias = b.map(to_f64);
    layer_forward(shape, x, w, bias.as_deref(), |_, _| {})
}

/// The forward pass in f64, unrounded: `y = act(z) * (keep(i) ? scale : 0)` ([`relu`],
/// [`apply_keep`]) with `z = x·wᵀ + b`, `scale = mask::scale(p)` (as f64) and `i` the element's
/// linear index under the spec's geometry. NaN and infinities follow PyTorch
/// (docs/mask-contract.md, "Non-finite values").
///
/// An empty output gives an empty vector. Every input is validated with
/// [`validate::check_forward`]; a result larger than this host can allocate is an error too.
pub fn forward_f64<T: Element>(
    spec: &LayerSpec,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Result<Vec<f64>> {
    let shape = spec.shape;
    let sizes = validate::check_shape(shape)?;
    let lens = ForwardLens {
        x: x.len(),
        w: w.len(),
        b: b.map(<[T]>::len),
        y: sizes.y,
    };
    if !validate::check_forward(shape, spec.dropout.p, &spec.geometry, lens)? {
        return Ok(Vec::new());
    }
    let bias = b.map(to_f64);
    let relu = spec.nonlinearity == Nonlinearity::Relu;
    let mut row_mask = RowMask::new(spec);
    layer_forward(shape, x, w, bias.as_deref(), move |r, row| {
        row_mask.apply(r, row, |z| if relu { self::relu(z) } else { z });
    })
}

/// The dropout of one row at a time, for the forward epilogue and the identity backward: row `r`
/// of an `[m, n]` matrix becomes `f(v) * (keep(i) ? scale : 0)` element by element
/// ([`apply_keep`]), with `i` the element's linear index under the spec's geometry. The row's
/// keep bits come from [`mask::keep_run`], one Philox call per four elements.
#[derive(Clone)]
struct RowMask<'a> {
    spec: &'a LayerSpec,
    scale: f64,
    keep: Vec<bool>,
}

impl<'a> RowMask<'a> {
    fn new(spec: &'a LayerSpec) -> Self {
        RowMask {
            spec,
            scale: f64::from(mask::scale(spec.dropout.p)),
            keep: Vec::new(),
        }
    }

    fn apply(&mut self, r: usize, row: &mut [f64], f: impl Fn(f64) -> f64) {
        let n = self.spec.shape.n;
        let dropout = self.spec.dropout;
        self.keep.resize(n, false);
        let first = self.spec.geometry.linear_index(n, r, 0);
        mask::keep_run(
            dropout.seed,
            dropout.subsequence,
            dropout.p,
            first,
            &mut self.keep,
        );
        for (v, &kept) in row.iter_mut().zip(&self.keep) {
            *v = apply_keep(f(*v), kept, self.scale);
        }
    }
}

/// The forward pass rounded once into `T`: [`forward_f64`], then each element rounded to
/// nearest. This is the value a kernel must match within `T::REL_L2_TOLERANCE`.
pub fn forward<T: Element>(spec: &LayerSpec, x: &[T], w: &[T], b: Option<&[T]>) -> Result<Vec<T>> {
    Ok(from_f64(&forward_f64(spec, x, w, b)?))
}

/// The three gradients of one layer call.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T> {
    /// dL/dX, `[m, k]` row-major.
    pub dx: Vec<T>,
    /// dL/dW, `[n, k]` row-major (the layout of W).
    pub dw: Vec<T>,
    /// dL/db, `[n]`.
    pub db: Vec<T>,
}

/// The backward pass in f64, unrounded, from dY and (for ReLU) the saved forward output.
///
/// The gradient through activation and dropout is recovered without the mask for ReLU and
/// regenerated from (seed, subsequence, p) for identity (docs/mask-contract.md, "Backward without a
/// mask"):
///
/// - ReLU (`y_saved` is required): `dz = dy * scale` where `y_saved > 0`;
///   `dz = dy * (keep(i) ? scale : 0)` where `y_saved` is NaN (ReLU passed a NaN or +inf, so the
///   mask is redrawn for that element); `dz = 0` elsewhere.
/// - Identity: `dz = dy * (keep(i) ? scale : 0)`; `y_saved` is not read.
///
/// A NaN or infinity in dY thus reaches dZ wherever the element's factor is a multiplication
/// (docs/BACKWARD.md lists where this differs from PyTorch's autograd).
///
/// Then `dX = dz·W`, `dW = dzᵀ·X`, `db = Σ_rows dz`. With an empty dY (`m == 0` or `n == 0`)
/// the gradients are zeros of their shapes. Inputs are validated with
/// [`validate::check_backward`].
pub fn backward_f64<T: Element>(
    spec: &LayerSpec,
    x: &[T],
    w: &[T],
    dy: &[T],
    y_saved: Option<&[T]>,
) -> Result<Gradients<f64>> {
    let lens = BackwardLens {
        x: x.len(),
        w: w.len(),
        dy: dy.len(),
        y_saved: y_saved.map(<[T]>::len),
    };
    validate::check_backward(spec, lens)?;
    let LinearShape { m, n, k } = spec.shape;
    let dropout = spec.dropout;
    let scale = f64::from(mask::scale(dropout.p));

    // dz[r, c]: the gradient of the pre-activation.
    let mut dz = to_f64(dy);
    match (spec.nonlinearity, y_saved) {
        (Nonlinearity::Relu, Some(y)) => {
            for (i, (g, y)) in dz.iter_mut().zip(y).enumerate() {
                let y = y.to_f64();
                *g = if y > 0.0 {
                    *g * scale
                } else if y.is_nan() {
                    let index = spec.geometry.linear_index(n, i / n, i % n);
                    let kept = mask::keep(dropout.seed, dropout.subsequence, dropout.p, index);
                    apply_keep(*g, kept, scale)
                } else {
                    0.0
                };
            }
        }
        _ => {
            let mut row_mask = RowMask::new(spec);
            for (r, row) in dz.chunks_exact_mut(n.max(1)).enumerate().take(m) {
                row_mask.apply(r, row, |g| g);
            }
        }
    }

    // dX [m, k] = dz [m, n] · W [n, k], written as dz · (Wᵀ [k, n])ᵀ.
    let w_t = transpose(&to_f64(w), n, k);
    let dx = matmul_abt(&dz, &w_t, m, k, n, |_, _| {})?;
    // dW [n, k] = dzᵀ [n, m] · X [m, k], written as dzᵀ · (Xᵀ [k, m])ᵀ.
    let dz_t = transpose(&dz, m, n);
    let x_t = transpose(&to_f64(x), m, k);
    let dw = matmul_abt(&dz_t, &x_t, n, k, m, |_, _| {})?;
    // db [n]: each column of dz summed over the rows, in row order.
    let db = if m == 0 {
        vec![0.0; n]
    } else {
        dz_t.chunks_exact(m).map(|col| col.iter().sum()).collect()
    };
    Ok(Gradients { dx, dw, db })
}

/// The backward pass rounded once into `T`: [`backward_f64`], then each gradient element
/// rounded to nearest.
pub fn backward<T: Element>(
    spec: &LayerSpec,
    x: &[T],
    w: &[T],
    dy: &[T],
    y_saved: Option<&[T]>,
) -> Result<Gradients<T>> {
    let g = backward_f64(spec, x, w, dy, y_saved)?;
    Ok(Gradients {
        dx: from_f64(&g.dx),
        dw: from_f64(&g.dw),
        db: from_f64(&g.db),
    })
}

/// The relative L2 error `‖got − want‖₂ / ‖want‖₂`, the accuracy measure of every kernel test.
///
/// Conventions, chosen so that a broken result can never pass a tolerance:
/// - a length mismatch, or any NaN or infinity in `got` or `want`, gives `+inf`;
/// - when `want` is all zeros (for example p = 1, where every element is dropped), the error is
///   0 if `got` is all zeros too and `+inf` otherwise: an exact zero must be reproduced exactly;
/// - two empty slices give 0.
pub fn relative_l2_error(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        diff += (g - w) * (g - w);
        norm += w * w;
    }
    if norm == 0.0 {
        return if diff == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (diff / norm).sqrt()
}

/// The relative L2 error of outputs that may hold NaN or infinities: `+inf` when the lengths
/// differ or any element's class differs (NaN, `+inf`, `-inf` or finite, compared element by
/// element), otherwise [`relative_l2_error`] over the elements where `want` is finite.
///
/// `want` is compared as given: when it is the unrounded f64 reference of a half-precision
/// result, the caller must keep its finite values inside the type's range.
pub fn relative_l2_error_nonfinite(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().zip(want).any(|(g, w)| !same_class(*g, *w)) {
        return f64::INFINITY;
    }
    let (got, want): (Vec<f64>, Vec<f64>) = got
        .iter()
        .zip(want)
        .filter(|(_, w)| w.is_finite())
        .map(|(g, w)| (*g, *w))
        .unzip();
    relative_l2_error(&got, &want)
}

/// Where a computed `m x n` row-major matrix differs from the expected one, in words, for a
/// failure message: how many elements differ, the rows and columns that hold them, their rows
/// and columns within 64 x 64 blocks (the Hopper kernels' TMA box edge, and an edge of most
/// tensor-core tiles), and the first
/// few with both values. `differs(i)` decides for the element at flat index `i`. A kernel bug
/// usually shows as a pattern here (one tile, eight rows of every block, a warp's columns) where
/// a count or a relative L2 error shows nothing but its size.
///
/// ```
/// use fusedrop::reference::describe_differences;
/// let want = vec![1.0; 4 * 130];
/// let mut got = want.clone();
/// got[2 * 130 + 65] = 0.0;
/// got[2 * 130 + 129] = 0.0;
/// let text = describe_differences(4, 130, &got, &want, |i| got[i] != want[i]);
/// assert_eq!(
///     text,
///     "2 of 520 elements differ, in rows 2 (1 of 4) and columns 65, 129 (2 of 130); \
///      within 64 x 64 blocks: rows 2, columns 1; first: [2, 65] is 0 (want 1), \
///      [2, 129] is 0 (want 1)"
/// );
/// ```
pub fn describe_differences(
    m: usize,
    n: usize,
    got: &[f64],
    want: &[f64],
    differs: impl Fn(usize) -> bool,
) -> String {
    const BLOCK: usize = 64;
    const EXAMPLES: usize = 4;
    let elements = m.checked_mul(n);
    if elements != Some(got.len()) || elements != Some(want.len()) {
        return format!(
            "lengths differ from {m} x {n} = {}: {} computed, {} expected",
            elements.map_or("more than usize::MAX".to_string(), |e| e.to_string()),
            got.len(),
            want.len()
        );
    }
    if got.is_empty() {
        // Before the row and column flags: one side of an empty shape may be huge.
        return format!("no element of {m} x {n} differs");
    }
    let (mut rows, mut cols) = (vec![false; m], vec![false; n]);
    let (mut block_rows, mut block_cols) = ([false; BLOCK], [false; BLOCK]);
    let mut examples = Vec::new();
    let mut count = 0usize;
    for i in (0..m * n).filter(|&i| differs(i)) {
        let (r, c) = (i / n, i % n);
        count += 1;
        rows[r] = true;
        cols[c] = true;
        block_rows[r % BLOCK] = true;
        block_cols[c % BLOCK] = true;
        if examples.len() < EXAMPLES {
            examples.push(format!("[{r}, {c}] is {} (want {})", got[i], want[i]));
        }
    }
    if count == 0 {
        return format!("no element of {m} x {n} differs");
    }
    let marked = |set: &[bool]| set.iter().filter(|&&b| b).count();
    format!(
        "{count} of {} elements differ, in rows {} ({} of {m}) and columns {} ({} of {n}); \
         within {BLOCK} x {BLOCK} blocks: rows {}, columns {}; first: {}",
        m * n,
        runs(&rows),
        marked(&rows),
        runs(&cols),
        marked(&cols),
        runs(&block_rows),
        runs(&block_cols),
        examples.join(", ")
    )
}

/// The indices where `set` is true as runs ("0-7, 16, 24-31"), the first eight of them.
fn runs(set: &[bool]) -> String {
    const SHOWN: usize = 8;
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &b) in set.iter().chain([&false]).enumerate() {
        match (b, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push(if i - 1 == s {
                    format!("{s}")
                } else {
                    format!("{s}-{}", i - 1)
                });
                start = None;
            }
            _ => {}
        }
    }
    let more = spans.len().saturating_sub(SHOWN);
    spans.truncate(SHOWN);
    let mut text = spans.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more runs"));
    }
    text
}

/// Whether `got` is of another class than `want` (NaN, an infinity, finite; [`same_class`]) or,
/// both finite, more than `relative · |want|` away from it: the elements a failure message
/// should point at ([`describe_differences`]) when a relative L2 error is too large.
pub fn off_by_more_than(got: f64, want: f64, relative: f64) -> bool {
    !same_class(got, want) || (want.is_finite() && (got - want).abs() > relative * want.abs())
}

/// Whether `a` and `b` are both NaN, the same infinity, or both finite.
pub fn same_class(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    a.is_finite() == b.is_finite() && (a.is_finite() || a == b)
}

/// `z = x·wᵀ + b` for validated inputs, then `epilogue(row, z_row)` on each finished output row
/// (row index within this call), on the thread that computed it.
fn layer_forward<T: Element>(
    shape: LinearShape,
    x: &[T],
    w: &[T],
    bias: Option<&[f64]>,
    epilogue: impl FnMut(usize, &mut [f64]) + Clone + Send,
) -> Result<Vec<f64>> {
    let LinearShape { m, n, k } = shape;
    let x = to_f64(x);
    let w = to_f64(w);
    let mut epilogue = epilogue;
    matmul_abt(&x, &w, m, n, k, move |r, row| {
        if let Some(bias) = bias {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        epilogue(r, row);
    })
}

/// A `[rows, cols]` matrix of f64 zeros, or an error where this host cannot hold it: a valid
/// shape with a short k (X and W small) can still ask for more memory than exists, which
/// `vec!` would answer with an abort.
fn zeros_f64(rows: usize, cols: usize) -> Result<Vec<f64>> {
    let len = rows * cols;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|e| {
        invalid!(
            "the CPU reference's [{rows}, {cols}] f64 result ({} bytes) cannot be allocated \
             ({e}); expected a shape whose f64 result fits this host's memory",
            len as u128 * 8
        )
    })?;
    out.resize(len, 0.0);
    Ok(out)
}

/// `out [rows, cols] = a [rows, inner] · b [cols, inner]ᵀ` in f64, every element summed
/// sequentially over `inner` starting from 0, then `epilogue(row, out_row)` on each row.
///
/// Rows are split into one contiguous block per core; within a block, 4x4 tiles of the output
/// keep 16 sums in registers so each loaded element of `a` and `b` is used four times. The
/// per-element order of additions does not depend on the tiling, so the result does not either.
fn matmul_abt<F>(
    a: &[f64],
    b: &[f64],
    rows: usize,
    cols: usize,
    inner: usize,
    epilogue: F,
) -> Result<Vec<f64>>
where
    F: FnMut(usize, &mut [f64]) + Clone + Send,
{
    let mut out = zeros_f64(rows, cols)?;
    if out.is_empty() {
        return Ok(out);
    }
    // Below about a million multiply-adds a thread costs more than it saves.
    let work = rows * cols * inner.max(1);
    let threads = if work < (1 << 20) {
        1
    } else {
        thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(rows.div_ceil(TILE))
    };
    let rows_per_thread = rows.div_ceil(threads).next_multiple_of(TILE);
    thread::scope(|scope| {
        for (block, out_block) in out.chunks_mut(rows_per_thread * cols).enumerate() {
            let first_row = block * rows_per_thread;
            let block_rows = out_block.len() / cols;
            let a_block = &a[first_row * inner..(first_row + block_rows) * inner];
            let mut epilogue = epilogue.clone();
            scope.spawn(move || {
                matmul_abt_block(a_block, b, out_block, block_rows, cols, inner);
                for (r, row) in out_block.chunks_exact_mut(cols).enumerate() {
                    epilogue(first_row + r, row);
                }
            });
        }
    });
    Ok(out)
}

/// Edge of the register tile of [`matmul_abt_block`].
const TILE: usize = 4;

fn matmul_abt_block(a: &[f64], b: &[f64], out: &mut [f64], rows: usize, cols: usize, inner: usize) {
    for i0 in (0..rows).step_by(TILE) {
        for j0 in (0..cols).step_by(TILE) {
            if i0 + TILE <= rows && j0 + TILE <= cols {
                // Each row cut to exactly `inner` elements, so the loop below needs no bounds
                // checks.
                let (a0, a1, a2, a3) = (
                    row(a, i0, inner),
                    row(a, i0 + 1, inner),
                    row(a, i0 + 2, inner),
                    row(a, i0 + 3, inner),
                );
                let (b0, b1, b2, b3) = (
                    row(b, j0, inner),
                    row(b, j0 + 1, inner),
                    row(b, j0 + 2, inner),
                    row(b, j0 + 3, inner),
                );
                let mut acc = [[0.0f64; TILE]; TILE];
                for t in 0..inner {
                    let av = [a0[t], a1[t], a2[t], a3[t]];
                    let bv = [b0[t], b1[t], b2[t], b3[t]];
                    for i in 0..TILE {
                        for j in 0..TILE {
                            acc[i][j] += av[i] * bv[j];
                        }
                    }
                }
                for (i, acc_row) in acc.iter().enumerate() {
                    out[(i0 + i) * cols + j0..][..TILE].copy_from_slice(acc_row);
                }
            } else {
                for i in i0..(i0 + TILE).min(rows) {
                    for j in j0..(j0 + TILE).min(cols) {
                        let ar = &a[i * inner..(i + 1) * inner];
                        let br = &b[j * inner..(j + 1) * inner];
                        let mut acc = 0.0f64;
                        for (x, y) in ar.iter().zip(br) {
                            acc += x * y;
                        }
                        out[i * cols + j] = acc;
                    }
                }
            }
        }
    }
}

/// Row `r` of a row-major matrix with `len` columns, as a slice of exactly `len` elements.
fn row(m: &[f64], r: usize, len: usize) -> &[f64] {
    &m[r * len..][..len]
}

/// The transpose of a row-major `[rows, cols]` matrix.
fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}
