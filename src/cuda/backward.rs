//! The backward pass of `Y = dropout_p(act(X·Wᵀ + b))`: dX, dW and db from dY, without a stored
//! mask (kernels/backward_sm90.cu for f16/bf16 on Hopper with wgmma and TMA,
//! kernels/backward_tc.cu for f16/bf16 on mma.sync tensor cores, kernels/backward_simt.cu for
//! every dtype on CUDA cores; design in docs/BACKWARD.md).
//!
//! `dZ = dY * 1/(1-p) * active` is formed while the kernels load tiles of dY and never goes to
//! memory. `active` is `[Y > 0]` for ReLU, read from the saved forward output, and the dropout
//! mask `keep(i)` redrawn from (seed, subsequence) for the identity activation (or, with
//! [`BackwardOptions::workspace`], applied to dY once by a pre-pass that writes `dY * keep` there
//! for both products to read). Then `dX = dZ·W`,
//! `dW = dZᵀ·X` and `db` = the column sums of dZ, each accumulated in f32, each output element
//! reduced in a fixed order (by one thread, or for the Hopper split-K configs by the blocks of a
//! cluster whose partial sums are added in rank order): the same inputs give bit-identical
//! outputs.

use cudarc::driver::{
    CudaFunction, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use crate::cuda::forward::hopper_unavailable;
use crate::cuda::launch_table::{self, LaunchNumbers};
use crate::cuda::tensor_map::{self, TensorMap};
use crate::cuda::{check_seed_source, LayerKernels, MaskParams, SeedSource};
use crate::element::Element;
use crate::error::{invalid, Error, Result};
use crate::layer::{LayerSpec, LinearShape, Nonlinearity};
use crate::validate::{self, BackwardLens};

/// One compiled backward tile configuration: where it lives and its launch numbers, from
/// src/cuda/launch_table.rs, which the config structs of kernels/backward_simt.cu and
/// kernels/backward_tc.cu are checked against at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    module: &'static str,
    /// The `<config>` part of `fusedrop_backward_{dx,dw}_<config>_<dtype>`.
    name: &'static str,
    block_m: u64,
    block_n: u64,
    threads: u32,
    smem_bytes: u32,
    /// Blocks per output tile: the split-K cluster size of the Hopper split configs, else 1.
    splits: u64,
    /// Whether the config also has `fusedrop_backward_{dx,dw}_<config>_aligned_<dtype>`, for
    /// operands the host found 16-byte aligned with n and k multiples of 8 (the mma.sync
    /// configs: cp.async only, no element-load path or run-time branch in the main loop).
    has_aligned: bool,
}

/// Grid-stride cap of every backward kernel (`kMaxBlocks`).
const MAX_BLOCKS: u64 = launch_table::BACKWARD_MAX_BLOCKS as u64;

const SIMT: Config = Config::new("backward_simt", "simt", launch_table::BACKWARD_SIMT);
const TC128X128: Config =
    Config::new("backward_tc", "tc128x128", launch_table::BACKWARD_TC128X128).with_aligned();
const TC64X64: Config =
    Config::new("backward_tc", "tc64x64", launch_table::BACKWARD_TC64X64).with_aligned();
const TC64X32: Config =
    Config::new("backward_tc", "tc64x32", launch_table::BACKWARD_TC64X32).with_aligned();
const WG128X256: Config = Config::new(
    "backward_sm90",
    "wg128x256",
    launch_table::BACKWARD_WG128X256,
);
const WG128X128: Config = Config::new(
    "backward_sm90",
    "wg128x128",
    launch_table::BACKWARD_WG128X128,
);
/// The split-K configurations (clusters of 2, 4, 8 blocks per 128 x 128 tile), for narrow
/// products: few output tiles over a long reduction (small's dX, wide's dW).
const WG128X128_SPLIT: [Config; 3] = [
    Config::new(
        "backward_sm90",
        "wg128x128s8",
        launch_table::BACKWARD_WG128X128S8,
    ),
    Config::new(
        "backward_sm90",
        "wg128x128s4",
        launch_table::BACKWARD_WG128X128S4,
    ),
    Config::new(
        "backward_sm90",
        "wg128x128s2",
        launch_table::BACKWARD_WG128X128S2,
    ),
];
/// The Hopper kernels' boxes (kernels/backward_sm90.cu): K-major dY boxes for dX are
/// `64 x block_m`, every other box `64 x 64`.
const HOPPER_BOX: u32 = 64;

impl Config {
    const fn new(module: &'static str, name: &'static str, n: LaunchNumbers) -> Config {
        Config {
            module,
            name,
            block_m: n.block_m as u64,
            block_n: n.block_n as u64,
            threads: n.threads,
            smem_bytes: n.smem_bytes,
            splits: n.cluster as u64,
            has_aligned: false,
        }
    }

    /// The config with its aligned-operand kernels (`has_aligned`).
    const fn with_aligned(self) -> Config {
        Config {
            has_aligned: true,
            ..self
        }
    }

    /// Output tiles of a product with `rows` x `cols` outputs.
    fn tiles(self, rows: usize, cols: usize) -> u64 {
        (rows as u64).div_ceil(self.block_m) * (cols as u64).div_ceil(self.block_n)
    }

    /// The launch over `tiles` output tiles (grid-stride beyond `MAX_BLOCKS`).
    fn launch_config(self, tiles: u64) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (tiles.clamp(1, MAX_BLOCKS) as u32, 1, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.smem_bytes,
        }
    }

    /// The Hopper tile for a product with `rows` x `cols` outputs and a reduction of
    /// `reduction`: 128 x 256 when that still gives every multiprocessor a tile, else 128 x 128
    /// when that gives at least half of them one; below, the split-K config with the most
    /// blocks (tiles x splits) that fit in one wave while each block keeps at least 4 k-blocks
    /// of the reduction; `None` when there is none (a short reduction: the mma.sync kernels'
    /// smaller tiles spread wider).
    fn hopper_for(rows: usize, cols: usize, reduction: usize, sm_count: usize) -> Option<Config> {
        let wave = sm_count.max(1) as u64;
        if WG128X256.tiles(rows, cols) >= wave {
            return Some(WG128X256);
        }
        if 2 * WG128X128.tiles(rows, cols) >= wave {
            return Some(WG128X128);
        }
        let k_blocks = reduction.div_ceil(64) as u64;
        WG128X128_SPLIT
            .into_iter()
            .filter(|c| c.tiles(rows, cols) * c.splits <= wave && k_blocks >= 4 * c.splits)
            .max_by_key(|c| c.tiles(rows, cols) * c.splits)
    }

    /// The Hopper kernels' persistent launch: one block per multiprocessor at most; for a
    /// split-K config, min(tiles, SMs / splits) clusters of `splits` blocks.
    fn persistent_launch_config(self, tiles: u64, sm_count: usize) -> LaunchConfig {
        let clusters = tiles.clamp(1, (sm_count as u64 / self.splits).max(1));
        LaunchConfig {
            grid_dim: ((clusters * self.splits) as u32, 1, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.smem_bytes,
        }
    }

    /// The tensor-core tile for a product with `rows` x `cols` outputs: the largest tile that
    /// still gives every multiprocessor a block, else the smallest (more, smaller blocks beat
    /// idle multiprocessors: a narrow product, such as `wide`'s dW or `small`'s dX, gets twice
    /// the blocks of 64 x 64).
    fn tensor_core_for(rows: usize, cols: usize, sm_count: usize) -> Config {
        [TC128X128, TC64X64]
            .into_iter()
            .find(|c| c.tiles(rows, cols) >= sm_count as u64)
            .unwrap_or(TC64X32)
    }
}

/// The kernel `fusedrop_backward_<what>_<config>_<dtype>` (with `aligned`,
/// `..._<config>_aligned_<dtype>`), with its shared memory limit raised when the config needs
/// more than the default.
fn load<T: Element>(
    kernels: &LayerKernels,
    config: Config,
    what: &str,
    aligned: bool,
) -> Result<CudaFunction> {
    let variant = if aligned { "_aligned" } else { "" };
    let name = format!(
        "fusedrop_backward_{what}_{}{variant}_{}",
        config.name,
        T::NAME
    );
    kernels.function(config.module, &name, config.smem_bytes)
}

/// Which kernel runs one of the two products.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// kernels/backward_sm90.cu with this tile.
    Hopper(Config),
    /// kernels/backward_simt.cu or kernels/backward_tc.cu with this tile.
    Classic(Config),
}

impl Path {
    /// The config's name (`wg128x256`, `tc64x64`, `simt`, ...).
    fn name(self) -> &'static str {
        match self {
            Path::Hopper(config) | Path::Classic(config) => config.name,
        }
    }
}

/// How a backward call picks each product's kernel: shared by [`LayerKernels::backward`] and
/// [`LayerKernels::backward_kernels_for`].
struct Chooser<'a> {
    kernels: &'a LayerKernels,
    /// The family asked for, with `Auto` resolved to `Simt` for f32.
    family: BackwardKernel,
    /// Whether the Hopper kernels can run at all (GPU, dtype, build).
    hopper_possible: bool,
    shape: LinearShape,
    dtype: &'static str,
}

impl<'a> Chooser<'a> {
    /// Resolves the family; errors (before anything is queued) when `kernel` cannot run `T` on
    /// this GPU and build.
    fn new<T: Element>(
        kernels: &'a LayerKernels,
        kernel: BackwardKernel,
        shape: LinearShape,
    ) -> Result<Self> {
        let family = match kernel {
            BackwardKernel::Simt => BackwardKernel::Simt,
            BackwardKernel::Auto if !T::NEEDS_SM80 => BackwardKernel::Simt,
            BackwardKernel::TensorCore | BackwardKernel::Hopper if !T::NEEDS_SM80 => {
                return Err(invalid!(
                    "BackwardKernel::{kernel:?} was requested for {}; expected f16 or bf16 (f32 \
                     runs BackwardKernel::Simt or Auto)",
                    T::NAME
                ))
            }
            other => other,
        };
        if family == BackwardKernel::Hopper {
            if let Some(why) = hopper_unavailable::<T>(kernels, "backward_sm90") {
                return Err(Error::UnsupportedDevice(format!(
                    "BackwardKernel::Hopper: {why}"
                )));
            }
        }
        let hopper_possible = match family {
            BackwardKernel::Auto => hopper_unavailable::<T>(kernels, "backward_sm90").is_none(),
            BackwardKernel::Hopper => true,
            _ => false,
        };
        Ok(Chooser {
            kernels,
            family,
            hopper_possible,
            shape,
            dtype: T::NAME,
        })
    }

    /// The mma.sync or SIMT kernel's tile for a product with `rows` x `cols` outputs.
    fn classic(&self, rows: usize, cols: usize) -> Result<Config> {
        if self.family == BackwardKernel::Simt {
            return Ok(SIMT);
        }
        self.kernels.require_compute_capability(
            (8, 0),
            &format!(
                "the {} backward kernels (mma.sync tensor cores)",
                self.dtype
            ),
        )?;
        Ok(Config::tensor_core_for(rows, cols, self.kernels.sm_count()))
    }

    /// The kernel for a product with `rows` x k outputs whose operands besides dY (at `dy_ptr`)
    /// and Y (at `y_ptr`, when read) are `operand` = (what, pointer, rows, cols).
    fn choose(
        &self,
        product: &str,
        rows: usize,
        operand: (&str, u64, usize, usize),
        dy_ptr: u64,
        y_ptr: Option<u64>,
    ) -> Result<Path> {
        let LinearShape { m, n, k } = self.shape;
        // An empty dY (an empty reduction for one of the products) leaves nothing to multiply:
        // the classic kernels' empty reductions zero-fill the gradients (or leave them, when
        // accumulating), whatever the kernel family asked for.
        if !self.hopper_possible || m == 0 || n == 0 {
            return Ok(Path::Classic(self.classic(rows, k)?));
        }
        let (what, ptr, op_rows, op_cols) = operand;
        let fits = tensor_map::operand_fits(dy_ptr, m, n)
            && y_ptr.is_none_or(|y| tensor_map::operand_fits(y, m, n))
            && tensor_map::operand_fits(ptr, op_rows, op_cols)
            && WG128X128.tiles(rows, k) <= i32::MAX as u64;
        // The other operand's rows are the product's reduction (n for dX, m for dW).
        let chosen = Config::hopper_for(rows, k, op_rows, self.kernels.sm_count());
        if self.family == BackwardKernel::Hopper {
            if !fits {
                return Err(invalid!(
                    "BackwardKernel::Hopper reads dY, Y and {what} by TMA for {product}: they must \
                     start 16-byte aligned (dY at {dy_ptr:#x}, Y at {:#x}, {what} at {ptr:#x}), \
                     n = {n} and k = {k} must be positive multiples of 8",
                    y_ptr.unwrap_or(0)
                ));
            }
            return Ok(Path::Hopper(chosen.unwrap_or(WG128X128)));
        }
        match chosen.filter(|_| fits) {
            Some(config) => Ok(Path::Hopper(config)),
            None => Ok(Path::Classic(self.classic(rows, k)?)),
        }
    }
}

/// The kernels a backward call runs for each product, by configuration name (`wg128x256`,
/// `wg128x128`, `wg128x128s2` ...: kernels/backward_sm90.cu; `tc128x128`, `tc64x64`,
/// `tc64x32`: kernels/backward_tc.cu; `simt`: kernels/backward_simt.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardChoice {
    /// The dX product's kernel.
    pub dx: &'static str,
    /// The dW (and db) product's kernel.
    pub dw: &'static str,
}

impl std::fmt::Display for BackwardChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dX {}, dW {}", self.dx, self.dw)
    }
}

/// Which kernel family runs the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackwardKernel {
    /// The best kernel this build has for the dtype and GPU.
    #[default]
    Auto,
    /// The tiled CUDA-core kernel (every dtype). The plainest GPU implementation, which the
    /// others are checked against; the only one for f32 (true fp32, no TF32).
    Simt,
    /// The tensor-core kernels (mma.sync; f16 and bf16 only, compute capability 8.0 or newer).
    /// What [`BackwardKernel::Auto`] picks for f16 and bf16 off Hopper, and on Hopper for the
    /// products the Hopper kernels cannot take.
    TensorCore,
    /// The Hopper kernels (wgmma and TMA, warp-specialised and persistent; f16 and bf16 on
    /// compute capability 9.0 with the sm_90a module built). They need dY, the saved Y (ReLU),
    /// W (for dX) and X (for dW) 16-byte aligned with n and k multiples of 8; a call that asks
    /// for them with other operands is an error. db without dW, and an empty dY (m or n = 0),
    /// run [`BackwardKernel::TensorCore`]. [`BackwardKernel::Auto`] picks them on Hopper whenever the
    /// operands fit and the product has at least half a wave of 128 x 128 tiles (128 x 256 tiles
    /// when those make a full wave), or, with fewer tiles, a reduction long enough to split over
    /// a cluster of 2, 4 or 8 blocks per tile (split-K, summed in a fixed order: still
    /// bit-identical run to run).
    Hopper,
}

/// Options of one backward call. `Default` overwrites the gradients with the automatic kernel
/// and the host's (seed, subsequence) from the spec, with no workspace.
#[derive(Debug, Default)]
pub struct BackwardOptions<'a> {
    /// `false`: the gradients are overwritten (`beta = 0`). `true`: the new gradients are added
    /// to the values already in the buffers (`beta = 1`), for accumulation across
    /// micro-batches; the sum is taken in f32 and rounded once. It applies to every output the
    /// call writes. To accumulate dW and db while overwriting dX (the usual micro-batch step),
    /// make two calls, one with only `dx` and one with `dw`/`db` and `accumulate: true`: a call
    /// queues one launch for dX and one for dW and db, so the pair costs the same as one call.
    pub accumulate: bool,
    /// The kernel family; [`BackwardKernel::Auto`] unless a test or benchmark wants one.
    /// [`BackwardKernel::TensorCore`] with f32 is an error.
    pub kernel: BackwardKernel,
    /// Where the mask's (seed, subsequence) comes from: it must name the pair the forward call
    /// used. [`SeedSource::Host`] takes `spec.dropout`'s; [`SeedSource::Device`] a device buffer
    /// (the forward's `record` buffer when it used [`SeedSource::DeviceRecorded`], which the
    /// backward rejects).
    pub seed: SeedSource<'a>,
    /// Scratch device memory for the identity activation with dropout, at least
    /// [`workspace_bytes`] long and 16-byte aligned (as every cudarc allocation is). With it the
    /// call first writes `dY * keep` once into the workspace (kernels/dropout.cu with scale 1)
    /// and both products read that, instead of each redrawing the mask from Philox once per
    /// column tile. The gradients are bit-identical either way; which is faster depends on the
    /// shape (docs/BACKWARD.md). Ignored when [`workspace_bytes`] is 0 (ReLU, or p = 0), where
    /// no mask is drawn for the products to share.
    pub workspace: Option<CudaViewMut<'a, u8>>,
}

/// The bytes of [`BackwardOptions::workspace`] a backward call of `spec` with element type `T`
/// can use: `m * n * size_of::<T>()` for the identity activation with p > 0 (room for dY times
/// the mask), 0 otherwise (the workspace would be ignored).
pub fn workspace_bytes<T: Element>(spec: &LayerSpec) -> usize {
    let LinearShape { m, n, .. } = spec.shape;
    if spec.nonlinearity == Nonlinearity::Identity && crate::mask::threshold(spec.dropout.p) != 0 {
        m.saturating_mul(n).saturating_mul(std::mem::size_of::<T>())
    } else {
        0
    }
}

/// The gradient buffers of one backward call. `None` skips that output.
///
/// - `dx`: `[m, k]`; skip it for the first layer of a network.
/// - `dw`: `[n, k]`; skip it (and `db`) for frozen weights.
/// - `db`: `[n]`. It is reduced alongside dW by the same kernel; asking for `db` without `dw`
///   is allowed and runs that kernel with the product switched off (one block per row tile of
///   dW, each summing its columns of dZ).
#[derive(Debug)]
pub struct GradientsMut<'a, T> {
    /// Gradient with respect to X, `[m, k]`.
    pub dx: Option<CudaViewMut<'a, T>>,
    /// Gradient with respect to W, `[n, k]` (the `nn.Linear` layout).
    pub dw: Option<CudaViewMut<'a, T>>,
    /// Gradient with respect to b, `[n]`.
    pub db: Option<CudaViewMut<'a, T>>,
}

/// The first three arguments of a backward kernel: dY's, Y's and B's tensor maps (Hopper) or
/// their pointers (classic kernels; Y's is 0 when not read).
// At most two live on the stack for the length of one call; boxing the maps would allocate on
// every call.
#[allow(clippy::large_enum_variant)]
enum ProductOperands {
    Maps([TensorMap; 3]),
    Pointers([u64; 3]),
}

/// One product of a backward call, chosen, loaded and with its operands encoded: queuing it can
/// no longer fail on a check.
struct Product {
    function: CudaFunction,
    operands: ProductOperands,
    /// dX or dW (null when only db is asked for).
    out: u64,
    /// dW's kernel takes db (null when not asked for) after dW; dX's kernel has no such argument.
    db: Option<u64>,
    launch: LaunchConfig,
}

/// The pointers one backward product reads, besides the mask parameters.
#[derive(Clone, Copy)]
struct ProductInputs {
    /// dY, or the workspace holding dY times the mask.
    dy: u64,
    /// The saved Y, when the kernel reads it (ReLU).
    y: Option<u64>,
    /// W (dX) or X (dW), `[b_rows, k]`.
    b: u64,
    b_rows: usize,
}

impl LayerKernels {
    /// The kernels [`LayerKernels::backward`] would run for a layer of `shape` and
    /// `nonlinearity` with `kernel`, on this GPU, for buffers that start 16-byte aligned (as
    /// every cudarc allocation does) and with dX, dW and db requested. Errors as the backward
    /// does for a family that cannot run.
    pub fn backward_kernels_for<T: Element>(
        &self,
        shape: LinearShape,
        nonlinearity: Nonlinearity,
        kernel: BackwardKernel,
    ) -> Result<BackwardChoice> {
        let chooser = Chooser::new::<T>(self, kernel, shape)?;
        let y = (nonlinearity == Nonlinearity::Relu).then_some(0);
        let LinearShape { m, n, k } = shape;
        let dx = chooser.choose("dX", m, ("W", 0, n, k), 0, y)?;
        let dw = chooser.choose("dW", n, ("X", 0, m, k), 0, y)?;
        Ok(BackwardChoice {
            dx: dx.name(),
            dw: dw.name(),
        })
    }

    /// Queues the backward pass of the layer `spec` on the handle's stream.
    ///
    /// - `x`: the forward input `[m, k]` (read only when `dw` is requested);
    /// - `w`: the weights `[n, k]` (read only when `dx` is requested);
    /// - `dy`: the gradient of the loss with respect to the forward output, `[m, n]`;
    /// - `y_saved`: the forward output `[m, n]`, required for [`Nonlinearity::Relu`] (its sign
    ///   carries both ReLU's derivative and the mask), ignored for [`Nonlinearity::Identity`],
    ///   whose mask is redrawn from `spec.dropout`'s (seed, subsequence) or from
    ///   `options.seed` when that is a device buffer;
    /// - `options`: overwrite or accumulate, the kernel family, the (seed, subsequence) source,
    ///   which must name the pair the forward call used, and an optional workspace for the
    ///   identity activation ([`BackwardOptions`]).
    ///
    /// Asynchronous: returns once the launches are queued, without synchronising. Errors
    /// (before anything is queued) on a bad shape, probability, geometry or buffer length, on
    /// ReLU without `y_saved`, on a workspace too short or misaligned, and on a kernel family
    /// that cannot take the operands.
    ///
    /// ```no_run
    /// # fn main() -> fusedrop::Result<()> {
    /// use fusedrop::cuda::backward::{BackwardOptions, GradientsMut};
    /// use fusedrop::cuda::{self, LayerKernels};
    /// use fusedrop::{DropoutSpec, LayerSpec, LinearShape, Nonlinearity};
    /// let ctx = cuda::open_device(0)?;
    /// let kernels = LayerKernels::new(ctx.default_stream())?;
    /// let stream = kernels.stream();
    /// let (m, n, k) = (4, 3, 2);
    /// let dropout = DropoutSpec::new(0.1, 7, 0);
    /// let spec = LayerSpec::new(LinearShape::new(m, n, k), Nonlinearity::Relu, dropout);
    /// let x = stream.clone_htod(&vec![0.5f32; m * k])?;
    /// let w = stream.clone_htod(&vec![0.25f32; n * k])?;
    /// let y = stream.clone_htod(&vec![1.0f32; m * n])?; // forward output
    /// let dy = stream.clone_htod(&vec![1.0f32; m * n])?;
    /// let mut dx = stream.alloc_zeros::<f32>(m * k)?;
    /// let mut dw = stream.alloc_zeros::<f32>(n * k)?;
    /// let mut db = stream.alloc_zeros::<f32>(n)?;
    /// let grads = GradientsMut {
    ///     dx: Some(dx.as_view_mut()),
    ///     dw: Some(dw.as_view_mut()),
    ///     db: Some(db.as_view_mut()),
    /// };
    /// let options = BackwardOptions::default();
    /// kernels.backward(&spec, &x, &w, &dy, Some(&y.as_view()), grads, options)?;
    /// # Ok(()) }
    /// ```
    // The arguments are the layer's tensors, which have no natural grouping beyond GradientsMut.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element>(
        &self,
        spec: &LayerSpec,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        y_saved: Option<&CudaView<'_, T>>,
        grads: GradientsMut<'_, T>,
        options: BackwardOptions<'_>,
    ) -> Result<()> {
        let BackwardOptions {
            accumulate,
            kernel,
            seed,
            mut workspace,
        } = options;
        let stream = self.stream();
        let LinearShape { m, n, k } = spec.shape;
        let lens = BackwardLens {
            x: x.len(),
            w: w.len(),
            dy: dy.len(),
            y_saved: y_saved.map(|y| y.len()),
        };
        // Ok(false) (an empty dY) still runs: the non-empty gradients are then zero-filled (or left
        // as they are when accumulating) by the kernels' empty reductions.
        validate::check_backward(spec, lens)?;
        let GradientsMut {
            mut dx,
            mut dw,
            mut db,
        } = grads;
        if let Some(dx) = &dx {
            validate::check_len("dX", dx.len(), m * k, &format!("m*k = {m}*{k}"))?;
        }
        if let Some(dw) = &dw {
            validate::check_len("dW", dw.len(), n * k, &format!("n*k = {n}*{k}"))?;
        }
        if let Some(db) = &db {
            validate::check_len(
                "db",
                db.len(),
                n,
                &format!("n = {n}, one per output feature"),
            )?;
        }
        check_seed_source(&seed)?;
        if matches!(seed, SeedSource::DeviceRecorded { .. }) {
            return Err(invalid!(
            "SeedSource::DeviceRecorded was passed to the backward; expected SeedSource::Device \
             with the record buffer the forward wrote (the backward reads a pair, it records none)"
        ));
        }
        let relu = spec.nonlinearity == Nonlinearity::Relu;
        let chooser = Chooser::new::<T>(self, kernel, spec.shape)?;
        let mut params = MaskParams::new(&spec.dropout, &spec.geometry, n);
        // Identity redraws the whole mask; ReLU redraws it only where the saved Y is NaN.
        let _seed_guards = params.read_seed_from(seed, stream);
        let (dy_ptr, _dy_guard) = dy.device_ptr(stream);
        let (y_ptr, _y_guard) = match y_saved.filter(|_| relu) {
            Some(y) => {
                let (ptr, guard) = y.device_ptr(stream);
                (Some(ptr), Some(guard))
            }
            None => (None, None),
        };
        let have_dw = dw.is_some();
        let want_dx = dx.is_some() && m > 0;
        let want_dw = (have_dw || db.is_some()) && n > 0;

        // The identity backward with a workspace: the products read dY * keep from it, with the
        // mask switched off in their parameters (the scale stays: it is applied as before).
        let needed = workspace_bytes::<T>(spec);
        let premask = needed > 0 && m > 0 && n > 0 && (want_dx || want_dw);
        let (workspace_ptr, _workspace_guard) = match workspace.as_mut().filter(|_| premask) {
            Some(ws) => {
                if ws.len() < needed {
                    return Err(invalid!(
                        "the backward workspace has {} bytes; expected at least {needed} \
                         (m*n*{} = {m}*{n}*{}: dY times the mask, workspace_bytes)",
                        ws.len(),
                        std::mem::size_of::<T>(),
                        std::mem::size_of::<T>()
                    ));
                }
                let (ptr, guard) = ws.device_ptr_mut(stream);
                if ptr % 16 != 0 {
                    return Err(invalid!(
                        "the backward workspace starts at {ptr:#x}; expected a 16-byte aligned \
                         address (a cudarc allocation, or a view of one at a multiple of 16 bytes)"
                    ));
                }
                (Some(ptr), Some(guard))
            }
            None => (None, None),
        };
        let mut product_params = params;
        let product_dy = match workspace_ptr {
            Some(ws) => {
                product_params.threshold = 0;
                product_params.seed_subsequence = 0;
                ws
            }
            None => dy_ptr,
        };

        // Every choice, check and tensor map before anything is queued. W is read only for dX
        // and X only for dW: a buffer the call does not read is not recorded as used on the
        // stream (cudarc's event tracking would otherwise order other streams' writes to it
        // after this call).
        let (w_ptr, _w_guard) = if want_dx {
            let (ptr, guard) = w.device_ptr(stream);
            (ptr, Some(guard))
        } else {
            (0, None)
        };
        let (x_ptr, _x_guard) = if want_dw && have_dw {
            let (ptr, guard) = x.device_ptr(stream);
            (ptr, Some(guard))
        } else {
            (0, None)
        };
        let (dx_ptr, _dx_guard) = match dx.as_mut() {
            Some(dx) => {
                let (ptr, guard) = dx.device_ptr_mut(stream);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let (dw_ptr, _dw_guard) = match dw.as_mut() {
            Some(dw) => {
                let (ptr, guard) = dw.device_ptr_mut(stream);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let (db_ptr, _db_guard) = match db.as_mut() {
            Some(db) => {
                let (ptr, guard) = db.device_ptr_mut(stream);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let dx_product = if want_dx {
            let path = chooser.choose("dX", m, ("W", w_ptr, n, k), product_dy, y_ptr)?;
            let inputs = ProductInputs {
                dy: product_dy,
                y: y_ptr,
                b: w_ptr,
                b_rows: n,
            };
            Some(self.product::<T>(path, "dx", spec.shape, inputs, (m, k), dx_ptr, None)?)
        } else {
            None
        };
        let dw_product = if want_dw {
            let path = if have_dw {
                chooser.choose("dW", n, ("X", x_ptr, m, k), product_dy, y_ptr)?
            } else {
                // db alone: the classic kernel with the product switched off, one column tile
                // per row tile.
                Path::Classic(chooser.classic(n, 1)?)
            };
            let cols = if have_dw { k } else { 1 };
            let inputs = ProductInputs {
                dy: product_dy,
                y: y_ptr,
                b: x_ptr,
                b_rows: m,
            };
            let product = self.product::<T>(
                path,
                "dw",
                spec.shape,
                inputs,
                (n, cols),
                dw_ptr,
                Some(db_ptr),
            )?;
            Some(product)
        } else {
            None
        };

        if let Some(ws) = workspace_ptr {
            let mut mask_only = params;
            mask_only.scale_bits = 1.0f32.to_bits();
            // SAFETY: dY holds m*n elements (checked by check_backward) and the workspace at
            // least m*n elements of T (checked above), a separate allocation from dY (dY is
            // borrowed shared while the workspace is borrowed mutably); m*n is within MAX_INDEX
            // (check_backward); the seed pointer (if any) holds two u64 (checked); the guards
            // keep every buffer alive until the launch is queued.
            unsafe { self.queue_dropout::<T>(dy_ptr, ws, m, n, &mask_only) }?;
        }
        let (m_arg, n_arg, k_arg) = (m as i64, n as i64, k as i64);
        let (relu_arg, accumulate_arg) = (i32::from(relu), i32::from(accumulate));
        for product in [dx_product, dw_product].into_iter().flatten() {
            let mut launch = stream.launch_builder(&product.function);
            match &product.operands {
                ProductOperands::Maps(maps) => launch.arg(&maps[0]).arg(&maps[1]).arg(&maps[2]),
                ProductOperands::Pointers(ptrs) => launch.arg(&ptrs[0]).arg(&ptrs[1]).arg(&ptrs[2]),
            };
            launch.arg(&product.out);
            if let Some(db) = &product.db {
                launch.arg(db);
            }
            launch
                .arg(&m_arg)
                .arg(&n_arg)
                .arg(&k_arg)
                .arg(&relu_arg)
                .arg(&accumulate_arg)
                .arg(&product_params);
            // SAFETY: the kernels' signatures are
            //   dX: (A0, A1, A2, T* dx, long long m, n, k, int relu, int accumulate, MaskParams)
            //   dW: (A0, A1, A2, T* dw, T* db, long long m, n, k, int relu, int accumulate,
            //        MaskParams)
            // with (A0, A1, A2) the CUtensorMaps of dY (or the workspace), Y (or dY's map again)
            // and B for kernels/backward_sm90.cu, else (const T* dy, const T* y, const T* b) with
            // y null unless relu. The maps were encoded from [m, n], [m, n] and [b_rows, k]
            // operands whose lengths and TMA constraints were checked; the pointers hold m*n
            // (dY, Y, workspace), n*k (W), m*k (X), m*k (dx), n*k (dw, or null) and n (db, or
            // null) elements, all checked; a seed pointer (if any) holds two u64 (checked). The
            // grid follows each kernel's rule (any 1-D grid; whole clusters for split-K), its
            // shared memory within the limit raised by `load`. The guards keep every buffer
            // alive until the launches are queued.
            unsafe { launch.launch(product.launch) }?;
        }
        Ok(())
    }

    /// Loads one product's kernel and encodes its operands (`what`: "dx" or "dw"), for an
    /// output of `rows` x `cols` tiles' worth (cols = 1 for db alone).
    #[allow(clippy::too_many_arguments)]
    fn product<T: Element>(
        &self,
        path: Path,
        what: &str,
        shape: LinearShape,
        inputs: ProductInputs,
        (rows, cols): (usize, usize),
        out: u64,
        db: Option<u64>,
    ) -> Result<Product> {
        let LinearShape { m, n, k } = shape;
        match path {
            Path::Hopper(config) => {
                // dX reads K-major dY boxes of 64 x block_m, dW 64 x 64 ones.
                let dy_box = if what == "dx" {
                    config.block_m as u32
                } else {
                    HOPPER_BOX
                };
                let map_dy = tensor_map::row_major::<T>(inputs.dy, m, n, dy_box)?;
                let map_y = match inputs.y {
                    Some(y) => tensor_map::row_major::<T>(y, m, n, dy_box)?,
                    None => map_dy,
                };
                let map_b = tensor_map::row_major::<T>(inputs.b, inputs.b_rows, k, HOPPER_BOX)?;
                Ok(Product {
                    function: load::<T>(self, config, what, false)?,
                    operands: ProductOperands::Maps([map_dy, map_y, map_b]),
                    out,
                    db,
                    launch: config
                        .persistent_launch_config(config.tiles(rows, cols), self.sm_count()),
                })
            }
            Path::Classic(config) => {
                // Every operand the kernel may read by 16-byte cp.async: the aligned kernel
                // promises it at compile time.
                let aligned = config.has_aligned
                    && n % 8 == 0
                    && k % 8 == 0
                    && inputs.dy % 16 == 0
                    && inputs.y.is_none_or(|y| y % 16 == 0)
                    && inputs.b % 16 == 0;
                Ok(Product {
                    function: load::<T>(self, config, what, aligned)?,
                    operands: ProductOperands::Pointers([
                        inputs.dy,
                        inputs.y.unwrap_or(0),
                        inputs.b,
                    ]),
                    out,
                    db,
                    launch: config.launch_config(config.tiles(rows, cols)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_overwrite_with_the_automatic_kernel_and_the_host_seed() {
        let options = BackwardOptions::default();
        assert!(!options.accumulate);
        assert_eq!(options.kernel, BackwardKernel::Auto);
        assert!(matches!(options.seed, SeedSource::Host));
    }

    #[test]
    fn tensor_core_tile_is_the_largest_that_fills_the_gpu() {
        // 108 multiprocessors (A100). up's dX: 4096 x 4096 outputs, 1024 tiles of 128 x 128.
        assert_eq!(Config::tensor_core_for(4096, 4096, 108), TC128X128);
        // 1000 x 1000: 64 tiles of 128 x 128, 256 of 64 x 64.
        assert_eq!(Config::tensor_core_for(1000, 1000, 108), TC64X64);
        // wide's dW (1024 x 256) and small's dX (64 x 4096): 64 tiles of 64 x 64, 128 of 64 x 32.
        assert_eq!(Config::tensor_core_for(1024, 256, 108), TC64X32);
        assert_eq!(Config::tensor_core_for(64, 4096, 108), TC64X32);
        assert_eq!(TC64X32.tiles(1024, 256), 128);
    }

    #[test]
    fn hopper_tile_follows_the_wave() {
        // 132 multiprocessors (H100 SXM / H200). up's dX: 4096 x 4096 outputs, 512 tiles of
        // 128 x 256.
        assert_eq!(Config::hopper_for(4096, 4096, 8192, 132), Some(WG128X256));
        // 1024 x 2048: 64 tiles of 128 x 256 (under a wave), 128 of 128 x 128.
        assert_eq!(Config::hopper_for(1024, 2048, 4096, 132), Some(WG128X128));
        // 1024 x 1152: 72 tiles of 128 x 128, at least half a wave.
        assert_eq!(Config::hopper_for(1024, 1152, 4096, 132), Some(WG128X128));
        // 1024 x 1024: 64 tiles of 128 x 128, under half a wave: split over 2 blocks (128).
        assert_eq!(
            Config::hopper_for(1024, 1024, 4096, 132),
            Some(WG128X128_SPLIT[2])
        );
        // small's dX (64 x 4096 over n = 4096): 32 tiles, 4 blocks each.
        assert_eq!(
            Config::hopper_for(64, 4096, 4096, 132),
            Some(WG128X128_SPLIT[1])
        );
        // wide's dW (1024 x 256 over m = 32768): 16 tiles, 8 blocks each.
        assert_eq!(
            Config::hopper_for(1024, 256, 32768, 132),
            Some(WG128X128_SPLIT[0])
        );
        // A reduction of 256 (4 k-blocks) is too short to split.
        assert_eq!(Config::hopper_for(64, 4096, 256, 132), None);
    }

    #[test]
    fn split_k_launches_whole_clusters() {
        let s4 = WG128X128_SPLIT[1];
        assert_eq!(s4.splits, 4);
        assert_eq!(s4.persistent_launch_config(32, 132).grid_dim, (128, 1, 1));
        // More tiles than clusters fit: 33 clusters of 4 walk them.
        assert_eq!(s4.persistent_launch_config(100, 132).grid_dim, (132, 1, 1));
        assert_eq!(
            WG128X128.persistent_launch_config(100, 132).grid_dim,
            (100, 1, 1)
        );
    }
}
