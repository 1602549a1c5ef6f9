//! The backward pass of `Y = dropout_p(act(X·Wᵀ + b))`: dX, dW and db from dY, without a stored
//! mask (kernels/backward_sm90.cu for f16/bf16 on Hopper with wgmma and TMA,
//! kernels/backward_tc.cu for f16/bf16 on mma.sync tensor cores, kernels/backward_simt.cu for
//! every dtype on CUDA cores; design in docs/BACKWARD.md).
//!
//! `dZ = dY * 1/(1-p) * active` is formed while the kernels load tiles of dY and never goes to
//! memory (except with [`BackwardKernel::HopperDzFromDx`], whose dX launch writes dZ / scale to
//! the workspace for dW's). `active` is `[Y > 0]` for ReLU, read from the saved forward output, and the dropout
//! mask `keep(i)` redrawn from (seed, subsequence) for the identity activation (or, with
//! [`BackwardOptions::workspace`], applied to dY once by a pre-pass that writes `dY * keep` there
//! for both products to read). Then `dX = dZ·W`,
//! `dW = dZᵀ·X` and `db` = the column sums of dZ, each accumulated in f32, each output element
//! reduced in a fixed order (by one thread; for the Hopper split-K configs by the blocks of a
//! cluster whose partial sums are added in rank order; for the mma.sync and SIMT split-K by
//! blocks whose partial sums, kept in the caller's workspace, a sum kernel adds in share order): the same
//! inputs give bit-identical outputs.

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig,
    SyncOnDrop,
};

use crate::cuda::dropout;
use crate::cuda::forward::hopper_unavailable_on;
use crate::cuda::launch_plan::{KernelArg, LaunchPlan, Operand};
use crate::cuda::launch_table::{self, LaunchNumbers};
use crate::cuda::tensor_map;
use crate::cuda::{ClusterProbe, GpuFacts, LayerKernels, MaskParams, ResidentClusters, SeedSource};
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
    /// Blocks per output tile: the split-K cluster size of the Hopper split configs; for the
    /// classic configs (mma.sync, SIMT), the split-K shares the wrapper chose
    /// (`classic_split_for`), else 1.
    splits: u64,
    /// Whether this is an mma.sync config (kernels/backward_tc.cu), whose kernels come with a
    /// second entry point `fusedrop_backward_{dx,dw}_<config>_aligned_<dtype>`, for operands the
    /// host found 16-byte aligned with n and k multiples of 8 (cp.async only, no element-load
    /// path or run-time branch in the main loop).
    mma_sync: bool,
    /// Whether the wrapper lets the kernels split (the 64 x 64 and 64 x 32 tiles: a product too
    /// narrow for a wave of 128 x 128 tiles gets more blocks from the smaller ones; the mma.sync
    /// 128 x 128 kernels are also compiled without it, `kSplitK`). Every classic kernel takes
    /// the split-K pair (`float* partial, int splits`) after its MaskParams.
    can_split: bool,
    /// Whether the kernels store their gradient by TMA (the Hopper `*_tmastore` kernels: they
    /// take the gradient's tensor map after the operands').
    tma_store: bool,
}

/// Grid-stride cap of every backward kernel (`kMaxBlocks`).
const MAX_BLOCKS: u64 = launch_table::BACKWARD_MAX_BLOCKS as u64;

const SIMT128X128: Config = Config::new(
    "backward_simt",
    "simt128x128",
    launch_table::BACKWARD_SIMT128X128,
);
const SIMT64X64: Config = Config::new(
    "backward_simt",
    "simt64x64",
    launch_table::BACKWARD_SIMT64X64,
)
.with_split_k();
const SIMT64X32: Config = Config::new(
    "backward_simt",
    "simt64x32",
    launch_table::BACKWARD_SIMT64X32,
)
.with_split_k();
/// The SIMT configs (every dtype; the only f32 backward), largest tile first.
const SIMT: [Config; 3] = [SIMT128X128, SIMT64X64, SIMT64X32];
const TC128X128: Config =
    Config::new("backward_tc", "tc128x128", launch_table::BACKWARD_TC128X128).with_mma_sync(false);
const TC64X64: Config =
    Config::new("backward_tc", "tc64x64", launch_table::BACKWARD_TC64X64).with_mma_sync(true);
const TC64X32: Config =
    Config::new("backward_tc", "tc64x32", launch_table::BACKWARD_TC64X32).with_mma_sync(true);
/// The mma.sync configs, largest tile first.
const TENSOR_CORE: [Config; 3] = [TC128X128, TC64X64, TC64X32];
/// Most shares one output tile's reduction is split into on the classic kernels.
const MAX_CLASSIC_SPLITS: u64 = 4;
/// Fewest reduction indices a classic split-K share gets (8 slices of the mma.sync kernels'
/// 32, so that its main loop still fills its 3-stage pipeline many times over; 16 of the SIMT
/// 64 x 64 and 64 x 32 kernels' 16).
const MIN_REDUCTION_PER_SPLIT: u64 = 256;
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
/// `WG128X256` and `WG128X128` with the gradient staged in shared memory and stored by TMA
/// ([`BackwardKernel::HopperTmaStore`]).
const WG128X256_TMA_STORE: Config = Config::new(
    "backward_sm90",
    "wg128x256_tmastore",
    launch_table::BACKWARD_WG128X256_TMASTORE,
);
const WG128X128_TMA_STORE: Config = Config::new(
    "backward_sm90",
    "wg128x128_tmastore",
    launch_table::BACKWARD_WG128X128_TMASTORE,
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
            mma_sync: false,
            can_split: false,
            tma_store: n.tma_store,
        }
    }

    /// An mma.sync config (kernels/backward_tc.cu): aligned-operand kernels, and whether it
    /// splits.
    const fn with_mma_sync(self, can_split: bool) -> Config {
        Config {
            mma_sync: true,
            can_split,
            ..self
        }
    }

    /// A config whose kernels split when asked.
    const fn with_split_k(self) -> Config {
        Config {
            can_split: true,
            ..self
        }
    }

    /// The same tile with the gradient stored by TMA, for an unsplit Hopper config; any other
    /// config unchanged (split-K stores directly).
    fn tma_stored(self) -> Config {
        if self == WG128X256 {
            WG128X256_TMA_STORE
        } else if self == WG128X128 {
            WG128X128_TMA_STORE
        } else {
            self
        }
    }

    /// Output tiles of a product with `rows` x `cols` outputs.
    fn tiles(self, rows: usize, cols: usize) -> u64 {
        (rows as u64)
            .div_ceil(self.block_m)
            .saturating_mul((cols as u64).div_ceil(self.block_n))
    }

    /// The launch over `tiles` output tiles, `splits` blocks each (grid-stride beyond
    /// `MAX_BLOCKS`).
    fn launch_config(self, tiles: u64) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                tiles.saturating_mul(self.splits).clamp(1, MAX_BLOCKS) as u32,
                1,
                1,
            ),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: self.smem_bytes,
        }
    }

    /// The Hopper tile for a product with `rows` x `cols` outputs and a reduction of
    /// `reduction` on a GPU that runs `resident` clusters at once: 128 x 256 when that still
    /// gives every multiprocessor a tile, else 128 x 128 when that gives at least half of them
    /// one; below, the split-K config with the most blocks (tiles x splits) whose clusters (one
    /// per tile) all run at once ([`ResidentClusters::can_place`] them at all) while each block
    /// keeps at least 4 k-blocks of the reduction;
    /// `None` when there is none (a short reduction: the mma.sync kernels' smaller tiles
    /// spread wider).
    fn hopper_for(
        rows: usize,
        cols: usize,
        reduction: usize,
        resident: ResidentClusters,
    ) -> Option<Config> {
        let wave = resident.sm_count() as u64;
        if WG128X256.tiles(rows, cols) >= wave {
            return Some(WG128X256);
        }
        if 2 * WG128X128.tiles(rows, cols) >= wave {
            return Some(WG128X128);
        }
        let k_blocks = reduction.div_ceil(64) as u64;
        WG128X128_SPLIT
            .into_iter()
            .filter(|c| {
                resident.can_place(c.splits as u32)
                    && c.tiles(rows, cols) <= resident.of(c.splits as u32)
                    && k_blocks >= 4 * c.splits
            })
            .max_by_key(|c| c.tiles(rows, cols) * c.splits)
    }

    /// The Hopper kernels' persistent launch: one block per multiprocessor at most; for a
    /// split-K config, min(tiles, the clusters of `splits` blocks that run at once) clusters.
    fn persistent_launch_config(self, tiles: u64, resident: ResidentClusters) -> LaunchConfig {
        resident.persistent_launch(tiles, self.splits as u32, self.threads, self.smem_bytes)
    }

    /// The classic tile (`family`: the mma.sync or the SIMT configs, largest tile first) for a
    /// product with `rows` x `cols` outputs: the largest tile that still gives every
    /// multiprocessor a block, else the smallest (more, smaller blocks beat idle
    /// multiprocessors: a narrow product, such as `wide`'s dW or `small`'s dX, gets the most
    /// blocks the family has).
    fn classic_for(family: &[Config], rows: usize, cols: usize, sm_count: usize) -> Config {
        family
            .iter()
            .copied()
            .find(|c| c.tiles(rows, cols) >= sm_count as u64)
            .unwrap_or(family[family.len() - 1])
    }

    /// The classic tile and split-K shares for a product with `rows` x `cols` outputs over a
    /// reduction of `reduction`, when the call has a workspace for the partial sums: as
    /// `classic_for` while that fills the GPU; below, among the family's tiles that split, each
    /// split into as many shares as fit in one wave (at most `MAX_CLASSIC_SPLITS`, each of at
    /// least `MIN_REDUCTION_PER_SPLIT` reduction indices), the most blocks, then the least
    /// padding (tile area beyond the product), then the larger tile (more reuse per block).
    /// wide's dW on 132 multiprocessors: 64 tiles of 64 x 64 in 2 shares (128 blocks, each over
    /// 16384 rows) rather than 128 unsplit tiles of 64 x 32.
    fn classic_split_for(
        family: &[Config],
        rows: usize,
        cols: usize,
        reduction: usize,
        sm_count: usize,
    ) -> Config {
        let unsplit = Config::classic_for(family, rows, cols, sm_count);
        let wave = sm_count.max(1) as u64;
        if unsplit.tiles(rows, cols) >= wave {
            return unsplit;
        }
        let most = reduction as u64 / MIN_REDUCTION_PER_SPLIT;
        family
            .iter()
            .filter(|c| c.can_split)
            .map(|&c| Config {
                splits: (wave / c.tiles(rows, cols).max(1))
                    .min(MAX_CLASSIC_SPLITS)
                    .min(most)
                    .max(1),
                ..c
            })
            .max_by_key(|c| {
                let tiles = c.tiles(rows, cols);
                (
                    tiles * c.splits,
                    std::cmp::Reverse(tiles * c.block_m * c.block_n),
                    c.block_m * c.block_n,
                )
            })
            .unwrap_or(unsplit)
    }

    /// The f32 workspace bytes of this config's split-K partial sums for a product with
    /// `rows` x `cols` outputs (plus `db` column sums for dW with db): none when unsplit.
    fn partial_bytes(self, rows: usize, cols: usize, db: usize) -> usize {
        if self.splits <= 1 || !self.can_split {
            return 0;
        }
        (self.splits as usize)
            .saturating_mul(rows.saturating_mul(cols).saturating_add(db))
            .saturating_mul(std::mem::size_of::<f32>())
    }
}

/// Where the split-K partial sums start in the workspace: after dY times the mask (when the call
/// writes it there), at a 256-byte boundary. Saturates, as [`workspace_bytes`] does, where a
/// shape's byte counts pass `usize::MAX` (no workspace of that size can exist, so such a call
/// fails at its length check).
fn partial_offset(mask_bytes: usize) -> usize {
    mask_bytes
        .checked_next_multiple_of(256)
        .unwrap_or(usize::MAX)
}

/// The entry point of product `what` ("dx" or "dw") of `config` for `T`; `variant`: "", or
/// "_aligned" (the mma.sync kernels' entry point for 16-byte aligned operands) or "_transform"
/// (the Hopper dW kernel with transform warps).
fn function_name<T: Element>(config: Config, what: &str, variant: &str) -> String {
    format!(
        "fusedrop_backward_{what}_{}{variant}_{}",
        config.name,
        T::NAME
    )
}

/// The f16 dX kernel of the clusters of 8 blocks, for the driver's count of such clusters that
/// run at once (`LayerKernels::new`; no forward kernel has clusters of 8).
pub(crate) fn cluster_of_8_probe() -> ClusterProbe {
    let config = WG128X128_SPLIT[0];
    ClusterProbe {
        module: config.module,
        function: function_name::<half::f16>(config, "dx", ""),
        threads: config.threads,
        smem_bytes: config.smem_bytes,
        cluster: config.splits as u32,
    }
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
    /// The config.
    fn config(self) -> Config {
        match self {
            Path::Hopper(config) | Path::Classic(config) => config,
        }
    }
}

/// The tile of the launch that runs both products ([`BackwardKernel::HopperOneLaunch`]), when
/// both products' paths allow it: both on the Hopper kernels, unsplit (a split product keeps its
/// cluster launch: in one launch its few long tiles would set the pace alone), their tiles
/// together within the kernels' 32-bit tile indices. 128 x 256 where both products have it,
/// else 128 x 128.
fn one_launch_config(dx: Path, dw: Path, shape: LinearShape) -> Option<Config> {
    let (Path::Hopper(dx), Path::Hopper(dw)) = (dx, dw) else {
        return None;
    };
    if dx.splits != 1 || dw.splits != 1 {
        return None;
    }
    let config = if dx == WG128X256 && dw == WG128X256 {
        WG128X256
    } else {
        WG128X128
    };
    let LinearShape { m, n, k } = shape;
    let tiles = config.tiles(m, k).saturating_add(config.tiles(n, k));
    (tiles <= i32::MAX as u64).then_some(config)
}

/// How a backward call picks each product's kernel: shared by [`LayerKernels::backward`] and
/// [`LayerKernels::backward_kernels_for`].
struct Chooser {
    gpu: GpuFacts,
    /// The family asked for, with `Auto` resolved to `Simt` for f32 and the other Hopper
    /// families (a forced tile, dZ from dX, transform warps, one launch, the TMA store) to
    /// `Hopper`.
    family: BackwardKernel,
    /// The tile of every Hopper product, where the family forces one (unsplit).
    forced_hopper_tile: Option<Config>,
    /// Whether unsplit Hopper products store their gradient by TMA
    /// ([`BackwardKernel::HopperTmaStore`]).
    tma_store: bool,
    /// Whether the Hopper kernels can run at all (GPU, dtype, build).
    hopper_possible: bool,
    shape: LinearShape,
    dtype: &'static str,
    /// Whether the classic kernels (mma.sync, SIMT) may split narrow products' reductions (the
    /// call has a workspace for the partial sums).
    split_k: bool,
}

impl Chooser {
    /// Resolves the family; errors (before anything is queued) when `kernel` cannot run `T` on
    /// the GPU and build `gpu` describes.
    fn new<T: Element>(gpu: GpuFacts, kernel: BackwardKernel, shape: LinearShape) -> Result<Self> {
        let family = match kernel {
            BackwardKernel::Simt => BackwardKernel::Simt,
            BackwardKernel::Auto if !T::NEEDS_SM80 => BackwardKernel::Simt,
            BackwardKernel::TensorCore
            | BackwardKernel::Hopper
            | BackwardKernel::HopperWg128x256
            | BackwardKernel::HopperWg128x128
            | BackwardKernel::HopperDzFromDx
            | BackwardKernel::HopperTransformWarps
            | BackwardKernel::HopperOneLaunch
            | BackwardKernel::HopperTmaStore
                if !T::NEEDS_SM80 =>
            {
                return Err(invalid!(
                    "BackwardKernel::{kernel:?} was requested for {}; expected f16 or bf16 (f32 \
                     runs BackwardKernel::Simt or Auto)",
                    T::NAME
                ))
            }
            BackwardKernel::HopperWg128x256
            | BackwardKernel::HopperWg128x128
            | BackwardKernel::HopperDzFromDx
            | BackwardKernel::HopperTransformWarps
            | BackwardKernel::HopperOneLaunch
            | BackwardKernel::HopperTmaStore => BackwardKernel::Hopper,
            other => other,
        };
        let hopper_unavailable =
            hopper_unavailable_on::<T>(gpu.compute_capability, gpu.backward_sm90_loaded);
        if family == BackwardKernel::Hopper {
            if let Some(why) = &hopper_unavailable {
                return Err(Error::UnsupportedDevice(format!(
                    "BackwardKernel::{kernel:?}: {why}"
                )));
            }
        }
        let hopper_possible = match family {
            BackwardKernel::Auto => hopper_unavailable.is_none(),
            BackwardKernel::Hopper => true,
            _ => false,
        };
        Ok(Chooser {
            gpu,
            family,
            forced_hopper_tile: kernel.forced_hopper_tile(),
            tma_store: kernel == BackwardKernel::HopperTmaStore,
            hopper_possible,
            shape,
            dtype: T::NAME,
            split_k: true,
        })
    }

    /// The mma.sync or SIMT kernel's tile for a product with `rows` x `cols` outputs over a
    /// reduction of `reduction` (split when `split`).
    fn classic(&self, rows: usize, cols: usize, reduction: usize, split: bool) -> Result<Config> {
        let family: &[Config] = if self.family == BackwardKernel::Simt {
            &SIMT
        } else {
            self.gpu.require_compute_capability(
                (8, 0),
                &format!(
                    "the {} backward kernels (mma.sync tensor cores)",
                    self.dtype
                ),
            )?;
            &TENSOR_CORE
        };
        let sm_count = self.gpu.resident.sm_count();
        Ok(if split {
            Config::classic_split_for(family, rows, cols, reduction, sm_count)
        } else {
            Config::classic_for(family, rows, cols, sm_count)
        })
    }

    /// The kernel for a product with `rows` x k outputs (the gradient at `out_ptr`) whose operands
    /// besides dY (at `dy_ptr`) and Y (at `y_ptr`, when read) are `operand` = (what, pointer,
    /// rows, cols).
    fn choose(
        &self,
        product: &str,
        rows: usize,
        out_ptr: u64,
        operand: (&str, u64, usize, usize),
        dy_ptr: u64,
        y_ptr: Option<u64>,
    ) -> Result<Path> {
        let LinearShape { m, n, k } = self.shape;
        // The other operand's rows are the product's reduction (n for dX, m for dW).
        let (what, ptr, op_rows, op_cols) = operand;
        // An empty dY (an empty reduction for one of the products) leaves nothing to multiply:
        // the classic kernels' empty reductions zero-fill the gradients (or leave them, when
        // accumulating), whatever the kernel family asked for.
        if !self.hopper_possible || m == 0 || n == 0 {
            return Ok(Path::Classic(self.classic(
                rows,
                k,
                op_rows,
                self.split_k,
            )?));
        }
        let fits = tensor_map::operand_fits(dy_ptr, m, n)
            && y_ptr.is_none_or(|y| tensor_map::operand_fits(y, m, n))
            && tensor_map::operand_fits(ptr, op_rows, op_cols)
            && WG128X128.tiles(rows, k) <= i32::MAX as u64;
        let chosen = Config::hopper_for(rows, k, op_rows, self.gpu.resident);
        if self.family == BackwardKernel::Hopper {
            if !fits {
                return Err(invalid!(
                    "the Hopper backward kernels read dY, Y and {what} by TMA for {product}: \
                     they must start 16-byte aligned (dY at {dy_ptr:#x}, Y at {:#x}, {what} at \
                     {ptr:#x}), n = {n} and k = {k} must be positive multiples of 8, and m = \
                     {m}, n and k below 2^31",
                    y_ptr.unwrap_or(0)
                ));
            }
            let mut config = self.forced_hopper_tile.or(chosen).unwrap_or(WG128X128);
            if self.tma_store {
                config = config.tma_stored();
            }
            if config.tma_store && out_ptr % 16 != 0 {
                return Err(invalid!(
                    "the {} kernels store {product} by TMA: it must start 16-byte aligned \
                     ({product} at {out_ptr:#x})",
                    config.name
                ));
            }
            return Ok(Path::Hopper(config));
        }
        match chosen.filter(|_| fits) {
            Some(config) => Ok(Path::Hopper(config)),
            None => Ok(Path::Classic(self.classic(
                rows,
                k,
                op_rows,
                self.split_k,
            )?)),
        }
    }
}

/// The kernels a backward call runs for each product, by configuration name (`wg128x256`,
/// `wg128x128`, `wg128x128s2` ...: kernels/backward_sm90.cu; `tc128x128`, `tc64x64`,
/// `tc64x32`: kernels/backward_tc.cu; `simt128x128`, `simt64x64`, `simt64x32`:
/// kernels/backward_simt.cu), and
/// the blocks each output tile's reduction is split over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardChoice {
    /// The dX product's kernel.
    pub dx: &'static str,
    /// The dW (and db) product's kernel.
    pub dw: &'static str,
    /// Split-K of dX: 1 (none), the cluster size of a Hopper split config (`wg128x128s4`: 4),
    /// or the shares of a split mma.sync or SIMT product (only with a workspace:
    /// [`LayerKernels::backward_kernels_with_workspace_for`]).
    pub dx_splits: u32,
    /// Split-K of dW and db, as `dx_splits`.
    pub dw_splits: u32,
    /// Whether dX, dW and db run in one launch ([`BackwardKernel::HopperOneLaunch`]; `dx` and
    /// `dw` then name its configuration).
    pub one_launch: bool,
}

impl std::fmt::Display for BackwardChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let split = |splits: u32| match splits {
            1 => String::new(),
            s => format!(" (k split {s})"),
        };
        if self.one_launch {
            return write!(f, "dX and dW {} in one launch", self.dx);
        }
        write!(
            f,
            "dX {}{}, dW {}{}",
            self.dx,
            split(self.dx_splits),
            self.dw,
            split(self.dw_splits)
        )
    }
}

/// Which kernel family runs the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackwardKernel {
    /// The best kernel this build has for the dtype and GPU. For f16/bf16 below compute
    /// capability 8.0 that is an [`Error::UnsupportedDevice`]
    /// (the mma.sync kernels need 8.0); [`BackwardKernel::Simt`] runs every dtype from 7.5.
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
    /// [`BackwardKernel::Hopper`] with both products on the 128 x 256 tile, unsplit, whatever
    /// the wave: for measuring the choice above (`fusedrop bench`'s `fused_hop256` rows). db
    /// without dW and an empty dY run [`BackwardKernel::TensorCore`], as for `Hopper`.
    HopperWg128x256,
    /// [`BackwardKernel::Hopper`] with both products on the 128 x 128 tile, unsplit, whatever
    /// the wave (`fusedrop bench`'s `fused_hop128` rows).
    HopperWg128x128,
    /// [`BackwardKernel::Hopper`] with dZ written once by the dX launch and read by the dW
    /// launch, for measuring that against forming it in dW's pipeline stages (`fusedrop bench`'s
    /// `fused_hop_dz` rows; issue 11 leaves the choice to measurement). The blocks computing
    /// dX's first column tile write dZ / scale (dY times the keep mask and ReLU's derivative,
    /// unscaled) into the first [`backward_workspace_bytes`](LayerKernels::backward_workspace_bytes)
    /// = `m * n * size_of::<T>()` bytes of [`BackwardOptions::workspace`] (an error if it is
    /// absent or shorter), and dW and db multiply it as a plain operand: no Y, no mask, no
    /// forming. The gradients are bit-identical to `Hopper`'s. Where dZ is dY (the identity with
    /// p = 0), or the call asks for no dX or no dW, it runs as `Hopper` (and needs no workspace).
    HopperDzFromDx,
    /// [`BackwardKernel::Hopper`] with dW's dZᵀ formed by transform warps: three warps of the
    /// producer warpgroup, idle otherwise, form it in each landed pipeline stage while the
    /// consumer warpgroups multiply the previous stage, instead of the consumers forming their
    /// own boxes between two k-blocks' wgmmas (issue 11 leaves the choice between these and
    /// [`BackwardKernel::HopperDzFromDx`] to measurement: `fusedrop bench`'s `fused_hop_tw`
    /// rows). The gradients are bit-identical to `Hopper`'s; it needs no workspace of its own.
    /// Where dW has nothing to form (dZ is dY: the identity with p = 0; or the identity with a
    /// workspace, whose pre-pass applies the mask to dY), or dW runs on the mma.sync kernels,
    /// it runs as `Hopper`.
    HopperTransformWarps,
    /// [`BackwardKernel::Hopper`] with dX, dW and db in one persistent launch: one sequence of
    /// both products' tiles, the product with the longer reduction first (dW's over m when
    /// m > n, else dX's over n), on one pipeline ring (the `fusedrop_backward_dxdw_<config>_<dtype>`
    /// entry points), so that one product's last wave does not leave multiprocessors idle before
    /// the other starts, and one launch is saved (issue 11 leaves it to measurement:
    /// `fusedrop bench`'s `fused_hop_1l` rows). The tile is 128 x 256 where `Hopper` would give
    /// both products 128 x 256, else 128 x 128. The gradients are bit-identical to those of the
    /// two launches on that tile (to `Hopper`'s wherever it gives both products that tile).
    /// Where `Hopper` would split a product's reduction over a cluster (a narrow product), or
    /// the call asks for no dX or no dW, it runs as `Hopper` (two launches).
    HopperOneLaunch,
    /// [`BackwardKernel::Hopper`] (its tiles, splits and errors) with the gradient of each product
    /// it runs unsplit written through shared memory by TMA stores that drain while the block's
    /// next tile runs its main loop, instead of stores from the accumulator registers (the
    /// `fusedrop_backward_{dx,dw}_{wg128x256,wg128x128}_tmastore_<dtype>` entry points; issue 11
    /// leaves it to measurement: `fusedrop bench`'s `fused_hop_ts` rows, beside `fused_hopper`).
    /// The gradients are bit-identical to `Hopper`'s, accumulating or not. It needs those
    /// products' gradients (dX, dW) 16-byte aligned too (a call that asks for one at another
    /// address is an error); db, and the split products, are stored as before.
    HopperTmaStore,
}

impl BackwardKernel {
    /// The Hopper tile this family forces, if it forces one.
    fn forced_hopper_tile(self) -> Option<Config> {
        match self {
            BackwardKernel::HopperWg128x256 => Some(WG128X256),
            BackwardKernel::HopperWg128x128 => Some(WG128X128),
            _ => None,
        }
    }
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
    /// queues one product launch for dX and one for dW and db (with a workspace, also the
    /// identity's pre-pass and the split-K sums of what it splits), so the pair costs the same
    /// as one call.
    pub accumulate: bool,
    /// The kernel family; [`BackwardKernel::Auto`] unless a test or benchmark wants one.
    /// [`BackwardKernel::TensorCore`], [`BackwardKernel::Hopper`] or another Hopper family (a
    /// forced tile, [`BackwardKernel::HopperDzFromDx`], [`BackwardKernel::HopperTransformWarps`],
    /// [`BackwardKernel::HopperOneLaunch`], [`BackwardKernel::HopperTmaStore`]) with f32 is an
    /// error.
    pub kernel: BackwardKernel,
    /// Where the mask's (seed, subsequence) comes from: it must name the pair the forward call
    /// used. [`SeedSource::Host`] takes `spec.dropout`'s; [`SeedSource::Device`] a device buffer
    /// (the forward's `record` buffer when it used [`SeedSource::DeviceRecorded`], which the
    /// backward rejects).
    pub seed: SeedSource<'a>,
    /// Scratch device memory, 16-byte aligned (as every cudarc allocation is);
    /// [`LayerKernels::backward_workspace_bytes`] says how much a call can use. What it holds
    /// before the call does not matter (the call writes every byte it reads), so it need not be
    /// zero-filled, and the gradients need not be either unless `accumulate` adds to them.
    ///
    /// - For the identity activation with dropout, its first [`workspace_bytes`] (an error if
    ///   shorter): the call first writes `dY * keep` there once (kernels/dropout.cu with scale 1)
    ///   and both products read that, instead of each redrawing the mask from Philox once per
    ///   column tile. The gradients are bit-identical either way; which is faster depends on the
    ///   shape (docs/BACKWARD.md).
    /// - With [`BackwardKernel::HopperDzFromDx`], its first `m * n * size_of::<T>()` bytes
    ///   instead (an error if absent or shorter, where that family writes dZ): the dX launch
    ///   writes dZ / scale there and the dW launch reads it (no pre-pass).
    /// - After that (from the next multiple of 256 bytes), the f32 partial sums of the narrow
    ///   products the mma.sync and SIMT kernels split over several blocks per output tile (split-K, summed
    ///   in a fixed order: bit-identical run to run, though not to the unsplit kernels). A
    ///   workspace too short for them runs those products unsplit.
    pub workspace: Option<CudaViewMut<'a, u8>>,
}

/// The bytes of [`BackwardOptions::workspace`] that hold dY times the mask for a backward call of
/// `spec` with element type `T`: `m * n * size_of::<T>()` for the identity activation with
/// p > 0, 0 otherwise. The whole workspace a call can use, split-K's partial sums and
/// [`BackwardKernel::HopperDzFromDx`]'s dZ included, is
/// [`LayerKernels::backward_workspace_bytes`].
pub fn workspace_bytes<T: Element>(spec: &LayerSpec) -> usize {
    let LinearShape { m, n, .. } = spec.shape;
    if spec.nonlinearity == Nonlinearity::Identity && crate::mask::threshold(spec.dropout.p) != 0 {
        m.saturating_mul(n).saturating_mul(std::mem::size_of::<T>())
    } else {
        0
    }
}

/// The bytes of the workspace that hold dZ / scale with [`BackwardKernel::HopperDzFromDx`]:
/// `m * n * size_of::<T>()` where dZ differs from dY (ReLU, or the identity with p > 0) and dY
/// is not empty, 0 otherwise and for every other family.
fn dz_from_dx_bytes<T: Element>(spec: &LayerSpec, kernel: BackwardKernel) -> usize {
    let LinearShape { m, n, .. } = spec.shape;
    if kernel == BackwardKernel::HopperDzFromDx && dz_differs_from_dy(spec) && m > 0 && n > 0 {
        m.saturating_mul(n).saturating_mul(std::mem::size_of::<T>())
    } else {
        0
    }
}

/// Whether dZ / scale differs from dY: ReLU, or the identity with p > 0.
fn dz_differs_from_dy(spec: &LayerSpec) -> bool {
    spec.nonlinearity == Nonlinearity::Relu || crate::mask::threshold(spec.dropout.p) != 0
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

/// The split sum's launch over `count` elements: one per thread, grid-stride beyond
/// `MAX_BLOCKS` blocks.
fn split_sum_launch(count: usize) -> LaunchConfig {
    let threads = launch_table::SPLIT_SUM_THREADS;
    LaunchConfig {
        grid_dim: (
            (count as u64).div_ceil(threads as u64).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One of the backward's two products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackwardProduct {
    /// `dX = dZ·W`, `[m, k]`.
    Dx,
    /// `dW = dZᵀ·X`, `[n, k]`, and db (the column sums of dZ) beside it.
    Dw,
}

impl BackwardProduct {
    /// "dx" or "dw", as in the entry points' names.
    const fn name(self) -> &'static str {
        match self {
            BackwardProduct::Dx => "dx",
            BackwardProduct::Dw => "dw",
        }
    }
}

/// What one backward product reads and writes, for its launch plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductOperands {
    /// Where it reads dY: [`Operand::DY`], or [`Operand::Workspace`] when a pre-pass wrote dY
    /// times the mask there (the identity with dropout and a workspace), or dX's launch wrote dZ
    /// / scale there (dW with [`BackwardKernel::HopperDzFromDx`]).
    pub dy: Operand,
    /// Whether it reads the saved Y: ReLU's derivative is still to be applied (the kernel's
    /// `relu` argument). False for the identity and for dZ read from the workspace.
    pub y: bool,
    /// dX on the Hopper kernels: whether it writes dZ / scale to the workspace's first
    /// `m * n` elements for the dW launch ([`BackwardKernel::HopperDzFromDx`]).
    pub dz: bool,
    /// dW on the Hopper kernels: whether transform warps form dZᵀ in its stages, the `_transform`
    /// entry point ([`BackwardKernel::HopperTransformWarps`]).
    pub transform_warps: bool,
    /// dX: always; dW: whether the call asks for dW (db alone runs the dW kernel with the
    /// product switched off).
    pub out: bool,
    /// dW: whether the call asks for db.
    pub db: bool,
    /// Whether dY (or the workspace), Y when read, and W (dX) or X (dW) start 16-byte aligned,
    /// which the mma.sync kernels' aligned entry points need (with n and k multiples of 8).
    pub aligned: bool,
    /// Where in the workspace the split-K partial sums start, in bytes (used by a split
    /// mma.sync or SIMT product only).
    pub partial_at: u64,
}

impl LayerKernels {
    /// The kernels [`LayerKernels::backward`] would run for a layer of `shape` and
    /// `nonlinearity` with `kernel` and no workspace, on this GPU, for buffers that start 16-byte
    /// aligned (as every cudarc allocation does) and with dX, dW and db requested. Errors as the
    /// backward does for a bad shape or a family that cannot run.
    pub fn backward_kernels_for<T: Element>(
        &self,
        shape: LinearShape,
        nonlinearity: Nonlinearity,
        kernel: BackwardKernel,
    ) -> Result<BackwardChoice> {
        self.backward_choice::<T>(shape, nonlinearity, kernel, false)
    }

    /// [`LayerKernels::backward_kernels_for`] for a call with a workspace of
    /// [`LayerKernels::backward_workspace_bytes`], where narrow mma.sync and SIMT products split their
    /// reduction (`dx_splits`, `dw_splits`).
    pub fn backward_kernels_with_workspace_for<T: Element>(
        &self,
        shape: LinearShape,
        nonlinearity: Nonlinearity,
        kernel: BackwardKernel,
    ) -> Result<BackwardChoice> {
        self.backward_choice::<T>(shape, nonlinearity, kernel, true)
    }

    fn backward_choice<T: Element>(
        &self,
        shape: LinearShape,
        nonlinearity: Nonlinearity,
        kernel: BackwardKernel,
        split_k: bool,
    ) -> Result<BackwardChoice> {
        let (dx, dw) = self.backward_paths::<T>(shape, nonlinearity, kernel, split_k)?;
        let one_launch = if kernel == BackwardKernel::HopperOneLaunch {
            one_launch_config(dx, dw, shape)
        } else {
            None
        };
        let (dx, dw) = match one_launch {
            Some(config) => (config, config),
            None => (dx.config(), dw.config()),
        };
        Ok(BackwardChoice {
            dx: dx.name,
            dw: dw.name,
            dx_splits: dx.splits as u32,
            dw_splits: dw.splits as u32,
            one_launch: one_launch.is_some(),
        })
    }

    /// The bytes of [`BackwardOptions::workspace`] a backward call of `spec` with element type
    /// `T` and `kernel` can use on this GPU (for buffers that start 16-byte aligned, with dX, dW
    /// and db requested): [`workspace_bytes`] for dY times the mask (the identity activation with
    /// p > 0), or with [`BackwardKernel::HopperDzFromDx`] `m * n * size_of::<T>()` for dZ (ReLU,
    /// or the identity with p > 0), then, from the next multiple of 256 bytes, the f32 partial
    /// sums of the products
    /// the mma.sync and SIMT kernels split (narrow products with fewer tiles than the GPU has
    /// multiprocessors; docs/BACKWARD.md, "Split-K on the classic kernels"); 0 when neither
    /// applies. The activation comes from `spec` (ReLU's saved Y plays no part in the size).
    /// Errors as the backward does for a bad shape, probability or a family that cannot run.
    pub fn backward_workspace_bytes<T: Element>(
        &self,
        spec: &LayerSpec,
        kernel: BackwardKernel,
    ) -> Result<usize> {
        let LinearShape { m, n, k } = spec.shape;
        validate::check_probability(spec.dropout.p)?;
        let (dx, dw) = self.backward_paths::<T>(spec.shape, spec.nonlinearity, kernel, true)?;
        let mask = workspace_bytes::<T>(spec).max(dz_from_dx_bytes::<T>(spec, kernel));
        let partial = dx
            .config()
            .partial_bytes(m, k, 0)
            .max(dw.config().partial_bytes(n, k, n));
        Ok(if partial == 0 {
            mask
        } else {
            partial_offset(mask).saturating_add(partial)
        })
    }

    /// Both products' paths for 16-byte aligned buffers, the classic ones split where
    /// `split_k` (a workspace for the partial sums) allows.
    fn backward_paths<T: Element>(
        &self,
        shape: LinearShape,
        nonlinearity: Nonlinearity,
        kernel: BackwardKernel,
        split_k: bool,
    ) -> Result<(Path, Path)> {
        // The planning queries are public: a shape the backward would refuse is refused here too.
        validate::check_shape(shape)?;
        let mut chooser = Chooser::new::<T>(self.gpu_facts(), kernel, shape)?;
        chooser.split_k = split_k;
        let y = (nonlinearity == Nonlinearity::Relu).then_some(0);
        let LinearShape { m, n, k } = shape;
        let dx = chooser.choose("dX", m, 0, ("W", 0, n, k), 0, y)?;
        let dw = chooser.choose("dW", n, 0, ("X", 0, m, k), 0, y)?;
        Ok((dx, dw))
    }

    /// Queues the backward pass of the layer `spec` on the handle's stream.
    ///
    /// - `x`: the forward input `[m, k]` (read only when `dw` is requested);
    /// - `w`: the weights `[n, k]` (read only when `dx` is requested);
    /// - `dy`: the gradient of the loss with respect to the forward output, `[m, n]`;
    /// - `y_saved`: the forward output `[m, n]`, required for [`Nonlinearity::Relu`] (its sign
    ///   carries both ReLU's derivative and the mask); not read for
    ///   [`Nonlinearity::Identity`] (a buffer given there must still have m*n elements of the
    ///   handle's context), whose mask is redrawn from `spec.dropout`'s (seed, subsequence) or from
    ///   `options.seed` when that is a device buffer;
    /// - `options`: overwrite or accumulate, the kernel family, the (seed, subsequence) source,
    ///   which must name the pair the forward call used, and an optional workspace (the
    ///   identity's masked dY, split-K's partial sums, [`BackwardKernel::HopperDzFromDx`]'s dZ:
    ///   [`BackwardOptions`]).
    ///
    /// Asynchronous: returns once the launches are queued, without synchronising. Errors
    /// (before anything is queued) on a bad shape, probability, geometry or buffer length, on
    /// ReLU without `y_saved`, on a workspace too short or misaligned (or absent where
    /// [`BackwardKernel::HopperDzFromDx`] writes dZ), on a seed buffer of the
    /// wrong length, on a buffer (seed buffers included) of another CUDA context than the
    /// handle's, and on a kernel family that cannot take the operands.
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
        let LinearShape { m, n, .. } = spec.shape;
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
        validate::check_gradients(
            spec.shape,
            validate::GradientLens {
                dx: dx.as_ref().map(|v| v.len()),
                dw: dw.as_ref().map(|v| v.len()),
                db: db.as_ref().map(|v| v.len()),
            },
        )?;
        for (name, stream) in [
            ("X", Some(x.stream())),
            ("W", Some(w.stream())),
            ("dY", Some(dy.stream())),
            ("y_saved", y_saved.map(|v| v.stream())),
            ("dX", dx.as_ref().map(|v| v.stream())),
            ("dW", dw.as_ref().map(|v| v.stream())),
            ("db", db.as_ref().map(|v| v.stream())),
            ("the workspace", workspace.as_ref().map(|v| v.stream())),
        ] {
            if let Some(stream) = stream {
                self.check_context(name, stream)?;
            }
        }
        self.check_seed_source(&seed)?;
        if matches!(seed, SeedSource::DeviceRecorded { .. }) {
            return Err(invalid!(
            "SeedSource::DeviceRecorded was passed to the backward; expected SeedSource::Device \
             with the record buffer the forward wrote (the backward reads a pair, it records none)"
        ));
        }
        let relu = spec.nonlinearity == Nonlinearity::Relu;
        let gpu = self.gpu_facts();
        // A family that cannot run fails before any buffer is recorded as used on the stream
        // (`backward_plan` checks it again, for its own callers).
        Chooser::new::<T>(gpu, kernel, spec.shape)?;
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
        let (workspace, _workspace_guard) = match workspace.as_mut().filter(|_| want_dx || want_dw)
        {
            Some(ws) => {
                let len = ws.len();
                let (ptr, guard) = ws.device_ptr_mut(stream);
                (Some((ptr, len)), Some(guard))
            }
            None => (None, None),
        };
        // W is read only for dX and X only for dW: a buffer the call does not read is not
        // recorded as used on the stream (cudarc's event tracking would otherwise order other
        // streams' writes to it after this call).
        let (w_ptr, _w_guard) = if want_dx {
            let (ptr, guard) = w.device_ptr(stream);
            (Some(ptr), Some(guard))
        } else {
            (None, None)
        };
        let (x_ptr, _x_guard) = if want_dw && have_dw {
            let (ptr, guard) = x.device_ptr(stream);
            (Some(ptr), Some(guard))
        } else {
            (None, None)
        };
        let (dx_ptr, _dx_guard) = gradient_address(dx.as_mut(), stream);
        let (dw_ptr, _dw_guard) = gradient_address(dw.as_mut(), stream);
        let (db_ptr, _db_guard) = gradient_address(db.as_mut(), stream);
        let buffers = BackwardBuffers {
            dy: dy_ptr,
            y: y_ptr,
            w: w_ptr,
            x: x_ptr,
            dx: dx_ptr,
            dw: dw_ptr,
            db: db_ptr,
            workspace,
        };
        let plans = backward_plan::<T>(spec, accumulate, kernel, &gpu, &buffers)?;
        // The pre-pass applies the mask at scale 1; the products reading its output keep
        // everything (threshold 0, no seed buffer) and scale.
        let mut prepass_params = params;
        prepass_params.scale_bits = 1.0f32.to_bits();
        let mut premasked_params = params;
        premasked_params.threshold = 0;
        premasked_params.seed_subsequence = 0;
        // Every function loaded and every tensor map encoded before anything is queued.
        let prepared = plans
            .iter()
            .map(|(plan, mask)| {
                let params = match mask {
                    BackwardMask::PrePass => &prepass_params,
                    BackwardMask::Redrawn => &params,
                    BackwardMask::Premasked => &premasked_params,
                };
                Ok((self.prepare_plan::<T>(plan, &|op| buffers.of(op))?, params))
            })
            .collect::<Result<Vec<_>>>()?;
        for (launch, params) in &prepared {
            // SAFETY: the plans are the library's for this call (`backward_plan`), so each
            // function's parameters are its plan's arguments: the products'
            //   dX: (A0, A1, A2, T* dx, [T* dz,] long long m, n, k, int relu, int accumulate,
            //        MaskParams [, float* partial, int splits])
            //   dW: (A0, A1, A2, T* dw, T* db, long long m, n, k, int relu, int accumulate,
            //        MaskParams [, float* partial, int splits])
            // with (A0, A1, A2) the tensor maps of dY (or the workspace), Y (or dY's again) and
            // W or X and dz (null, or the workspace) for kernels/backward_sm90.cu, else their
            // pointers and the split-K pair (kernels/backward_tc.cu,
            // kernels/backward_simt.cu); the split sums'
            // (const float* partial, T* out, long long count, int splits, float scale, int
            // accumulate); the pre-pass's (const T* x, T* y, long long m, long long n,
            // MaskParams). The CPU harness runs the same plans against those signatures. The
            // buffers hold m*n (dY, Y), n*k (W), m*k (X), m*k (dx), n*k (dw) and n (db)
            // elements, all checked above, and `backward_plan` checked that the workspace holds
            // the mask area (dZ's m*n elements where dX writes it) and the partial sums it plans
            // there; each split product writes its partial area whole before its sums read it,
            // and dX its dZ before dW reads it, on the same stream; the workspace is a
            // separate allocation from dY (borrowed mutably while dY is borrowed shared). A seed
            // pointer (if any) holds two u64 (checked). The guards keep every buffer alive until
            // the launches are queued.
            unsafe { self.queue_prepared(launch, params) }?;
        }
        Ok(())
    }
}

/// A gradient's address and the guard that keeps it borrowed until the launches are queued,
/// when the call asks for it.
fn gradient_address<'a, T>(
    view: Option<&'a mut CudaViewMut<'_, T>>,
    stream: &'a CudaStream,
) -> (Option<u64>, Option<SyncOnDrop<'a>>) {
    match view {
        Some(view) => {
            let (ptr, guard) = view.device_ptr_mut(stream);
            (Some(ptr), Some(guard))
        }
        None => (None, None),
    }
}

/// The device addresses of one backward call's buffers, for [`backward_plan`]; `None` where the
/// call does not read or write that buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardBuffers {
    /// dY.
    pub dy: u64,
    /// The saved Y (read for ReLU only).
    pub y: Option<u64>,
    /// W (read for dX).
    pub w: Option<u64>,
    /// X (read for dW).
    pub x: Option<u64>,
    /// dX, when asked for.
    pub dx: Option<u64>,
    /// dW, when asked for.
    pub dw: Option<u64>,
    /// db, when asked for.
    pub db: Option<u64>,
    /// The workspace's address and length in bytes ([`BackwardOptions::workspace`]).
    pub workspace: Option<(u64, usize)>,
}

impl BackwardBuffers {
    /// The address of `operand`, `None` where the call has no such buffer.
    fn of(&self, operand: Operand) -> Option<u64> {
        match operand {
            Operand::DY => Some(self.dy),
            Operand::Y => self.y,
            Operand::W => self.w,
            Operand::X => self.x,
            Operand::DX => self.dx,
            Operand::DW => self.dw,
            Operand::DB => self.db,
            Operand::Workspace => self.workspace.map(|(ptr, _)| ptr),
            Operand::B => None,
        }
    }
}

/// Which mask parameters a planned backward launch takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackwardMask {
    /// The identity's pre-pass: the call's mask at scale 1 (it writes dY times the mask).
    PrePass,
    /// The call's mask and scale (the products redraw the mask, or read it from Y's sign).
    Redrawn,
    /// The call's scale and no mask (threshold 0, no seed buffer): the products reading the
    /// pre-pass's output, and dW reading the dZ that dX wrote
    /// ([`BackwardKernel::HopperDzFromDx`]).
    Premasked,
}

/// Everything [`LayerKernels::backward`] queues for a call of `spec` (whose buffers' lengths it
/// has checked) with `accumulate` and `kernel`, on a GPU and build that `gpu` describes
/// ([`LayerKernels::gpu_facts`]), for buffers at `buffers`: in order, the identity's pre-pass
/// when the workspace takes it, then dX's product and its split sums, then dW's (and db's),
/// each with the mask parameters it takes. A pure function of its inputs, so that the CPU
/// harness runs exactly what the wrapper would queue.
///
/// The workspace: dY times the mask for the identity with p > 0 (the products then read it
/// with the mask switched off; the scale stays), or with [`BackwardKernel::HopperDzFromDx`] the
/// dZ / scale that dX's launch writes and dW's reads the same way; after it, from the next
/// multiple of 256 bytes, the split-K partial sums of narrow mma.sync and SIMT products when it
/// holds them (else they run unsplit).
///
/// Errors, before anything is planned: the family cannot run `T` on this GPU and build; ReLU
/// without the saved Y's address; the
/// workspace shorter than dY times the mask or dZ where that is needed (absent, for dZ), or not
/// 16-byte aligned; a family that cannot take the operands (Hopper with operands TMA cannot
/// read).
pub fn backward_plan<T: Element>(
    spec: &LayerSpec,
    accumulate: bool,
    kernel: BackwardKernel,
    gpu: &GpuFacts,
    buffers: &BackwardBuffers,
) -> Result<Vec<(LaunchPlan, BackwardMask)>> {
    let LinearShape { m, n, k } = spec.shape;
    let mut chooser = Chooser::new::<T>(*gpu, kernel, spec.shape)?;
    if spec.nonlinearity == Nonlinearity::Relu && buffers.y.is_none() {
        return Err(invalid!(
            "the ReLU backward was planned without the saved Y; expected its address (the sign \
             of Y carries ReLU's derivative and the mask)"
        ));
    }
    let have_dw = buffers.dw.is_some();
    let want_dx = buffers.dx.is_some() && m > 0;
    let want_dw = (have_dw || buffers.db.is_some()) && n > 0;
    let dz_bytes = dz_from_dx_bytes::<T>(spec, kernel);
    let dz_from_dx = dz_bytes > 0 && want_dx && have_dw && want_dw;
    let (needed, holds) = if dz_from_dx {
        (
            dz_bytes,
            "dZ, which the dX launch writes for the dW launch with BackwardKernel::HopperDzFromDx",
        )
    } else {
        (
            workspace_bytes::<T>(spec),
            "dY times the mask, workspace_bytes",
        )
    };
    let premask = !dz_from_dx && needed > 0 && m > 0 && n > 0 && (want_dx || want_dw);
    let workspace = buffers.workspace.filter(|_| want_dx || want_dw);
    if dz_from_dx && workspace.is_none() {
        return Err(invalid!(
            "BackwardKernel::HopperDzFromDx was given no workspace; expected one of at least \
             {needed} bytes (m*n*{} = {m}*{n}*{}: {holds}; LayerKernels::backward_workspace_bytes)",
            std::mem::size_of::<T>(),
            std::mem::size_of::<T>()
        ));
    }
    if let Some((ptr, len)) = workspace {
        if (premask || dz_from_dx) && len < needed {
            return Err(invalid!(
                "the backward workspace has {len} bytes; expected at least {needed} (m*n*{} = \
                 {m}*{n}*{}: {holds})",
                std::mem::size_of::<T>(),
                std::mem::size_of::<T>()
            ));
        }
        if ptr % 16 != 0 {
            return Err(invalid!(
                "the backward workspace starts at {ptr:#x}; expected a 16-byte aligned address \
                 (a cudarc allocation, or a view of one at a multiple of 16 bytes)"
            ));
        }
    }
    let workspace_len = workspace.map_or(0, |(_, len)| len);
    let premasked = premask && workspace.is_some();
    let workspace_ptr = workspace.map_or(0, |(ptr, _)| ptr);
    let mask_bytes = if premasked || dz_from_dx { needed } else { 0 };
    let y_ptr = buffers
        .y
        .filter(|_| spec.nonlinearity == Nonlinearity::Relu);
    // Whether a product reads the workspace: after the pre-pass (both) or after dX wrote dZ
    // (dW). It then takes neither Y nor the mask.
    let from_workspace =
        |product: BackwardProduct| premasked || (dz_from_dx && product == BackwardProduct::Dw);
    // What each product reads as dY, and the saved Y where ReLU's derivative is still to apply.
    let reads = |product: BackwardProduct| {
        if from_workspace(product) {
            (Operand::Workspace, workspace_ptr, None)
        } else {
            (Operand::DY, buffers.dy, y_ptr)
        }
    };
    let (w_ptr, x_ptr) = (buffers.w.unwrap_or(0), buffers.x.unwrap_or(0));
    // The products' kernels, split where the workspace holds the partial sums (else both
    // unsplit). db alone runs the classic kernel with the product switched off, one column tile
    // per row tile, unsplit.
    chooser.split_k = workspace.is_some();
    let choose_paths = |chooser: &Chooser| -> Result<(Option<Path>, Option<Path>)> {
        let dx_path = if want_dx {
            let (_, dy_ptr, y_ptr) = reads(BackwardProduct::Dx);
            let dx_ptr = buffers.dx.unwrap_or(0);
            Some(chooser.choose("dX", m, dx_ptr, ("W", w_ptr, n, k), dy_ptr, y_ptr)?)
        } else {
            None
        };
        let (_, dy_ptr, y_ptr) = reads(BackwardProduct::Dw);
        let dw_path = match (want_dw, have_dw) {
            (false, _) => None,
            (true, true) => {
                let dw_ptr = buffers.dw.unwrap_or(0);
                Some(chooser.choose("dW", n, dw_ptr, ("X", x_ptr, m, k), dy_ptr, y_ptr)?)
            }
            (true, false) => Some(Path::Classic(chooser.classic(n, 1, m, false)?)),
        };
        Ok((dx_path, dw_path))
    };
    let (mut dx_path, mut dw_path) = choose_paths(&chooser)?;
    let db_len = if buffers.db.is_some() { n } else { 0 };
    let partial_bytes = |dx_path: Option<Path>, dw_path: Option<Path>| {
        let dx = dx_path.map_or(0, |p| p.config().partial_bytes(m, k, 0));
        let dw = dw_path.map_or(0, |p| p.config().partial_bytes(n, k, db_len));
        dx.max(dw)
    };
    let partial_at = partial_offset(mask_bytes);
    let partials = partial_bytes(dx_path, dw_path);
    if partials > 0 && workspace_len < partial_at.saturating_add(partials) {
        chooser.split_k = false;
        (dx_path, dw_path) = choose_paths(&chooser)?;
    }
    let operands = |product: BackwardProduct| {
        let b_ptr = match product {
            BackwardProduct::Dx => w_ptr,
            BackwardProduct::Dw => x_ptr,
        };
        let (dy, dy_ptr, y_ptr) = reads(product);
        ProductOperands {
            dy,
            y: y_ptr.is_some(),
            dz: dz_from_dx && product == BackwardProduct::Dx,
            transform_warps: false,
            out: product == BackwardProduct::Dx || have_dw,
            db: product == BackwardProduct::Dw && buffers.db.is_some(),
            aligned: dy_ptr % 16 == 0 && y_ptr.is_none_or(|y| y % 16 == 0) && b_ptr % 16 == 0,
            partial_at: partial_at as u64,
        }
    };
    let mut plans = Vec::with_capacity(6);
    if premasked {
        plans.push((
            dropout::dropout_plan::<T>(Operand::DY, Operand::Workspace, m, n),
            BackwardMask::PrePass,
        ));
    }
    // Both products in one launch, where the family asks for it and their paths allow it (both
    // read dY alike here: from the workspace after the pre-pass, or redrawing the mask).
    let one_launch = match (dx_path, dw_path) {
        (Some(dx), Some(dw)) if kernel == BackwardKernel::HopperOneLaunch && have_dw => {
            one_launch_config(dx, dw, spec.shape)
        }
        _ => None,
    };
    if let Some(config) = one_launch {
        let mask = if premasked {
            BackwardMask::Premasked
        } else {
            BackwardMask::Redrawn
        };
        plans.push((
            both_products_plan::<T>(
                config,
                spec,
                operands(BackwardProduct::Dw),
                accumulate,
                gpu.resident,
            ),
            mask,
        ));
        return Ok(plans);
    }
    for (product, path) in [
        (BackwardProduct::Dx, dx_path),
        (BackwardProduct::Dw, dw_path),
    ] {
        let product_mask = if from_workspace(product) {
            BackwardMask::Premasked
        } else {
            BackwardMask::Redrawn
        };
        if let Some(path) = path {
            let operands = ProductOperands {
                // Only on the Hopper dW kernel, and where there is something to form: dZ is not
                // dY and not read ready-made from the workspace.
                transform_warps: kernel == BackwardKernel::HopperTransformWarps
                    && product == BackwardProduct::Dw
                    && matches!(path, Path::Hopper(_))
                    && dz_differs_from_dy(spec)
                    && !from_workspace(product),
                ..operands(product)
            };
            let launches =
                product_plans::<T>(path, product, spec, operands, accumulate, gpu.resident);
            plans.extend(launches.into_iter().map(|plan| (plan, product_mask)));
        }
    }
    Ok(plans)
}

/// The tensor-map argument of a Hopper launch for `operand`, `[rows, cols]` row-major, in boxes
/// of 64 x `box_rows`.
fn operand_map(operand: Operand, rows: usize, cols: usize, box_rows: u32) -> KernelArg {
    KernelArg::TensorMap {
        operand,
        rows,
        cols,
        box_rows,
    }
}

/// The one launch of both products of a backward call of `spec` on the Hopper configuration
/// `config` (unsplit: [`BackwardKernel::HopperOneLaunch`]), reading dY as `operands` (dW's)
/// say; the arguments are listed under [`one_launch_plan`]. The persistent grid covers both
/// products' tiles.
fn both_products_plan<T: Element>(
    config: Config,
    spec: &LayerSpec,
    operands: ProductOperands,
    accumulate: bool,
    resident: ResidentClusters,
) -> LaunchPlan {
    let LinearShape { m, n, k } = spec.shape;
    let y = if operands.y { Operand::Y } else { operands.dy };
    let dx_box = config.block_m as u32;
    let tiles = config.tiles(m, k).saturating_add(config.tiles(n, k));
    let launch = config.persistent_launch_config(tiles, resident);
    LaunchPlan {
        module: config.module,
        function: function_name::<T>(config, "dxdw", ""),
        grid: launch.grid_dim,
        threads: config.threads,
        smem_bytes: config.smem_bytes,
        cluster: 1,
        args: vec![
            operand_map(operands.dy, m, n, dx_box),
            operand_map(y, m, n, dx_box),
            operand_map(Operand::W, n, k, HOPPER_BOX),
            operand_map(operands.dy, m, n, HOPPER_BOX),
            operand_map(y, m, n, HOPPER_BOX),
            operand_map(Operand::X, m, k, HOPPER_BOX),
            KernelArg::Pointer(Operand::DX),
            KernelArg::Pointer(Operand::DW),
            if operands.db {
                KernelArg::Pointer(Operand::DB)
            } else {
                KernelArg::Null
            },
            KernelArg::I64(m as i64),
            KernelArg::I64(n as i64),
            KernelArg::I64(k as i64),
            KernelArg::I32(i32::from(operands.y)),
            KernelArg::I32(i32::from(accumulate)),
            KernelArg::MaskParams,
        ],
    }
}

/// The launches of one product of a backward call of `spec` through `path`: the product, then
/// for a split mma.sync or SIMT product the split sums that add its shares into each gradient
/// it writes. `operands` says what it reads and writes, `accumulate` whether it adds to the
/// gradients, `resident` the clusters that run at once (the Hopper kernels' persistent grids).
/// The arguments are listed under [`product_plan`].
fn product_plans<T: Element>(
    path: Path,
    product: BackwardProduct,
    spec: &LayerSpec,
    operands: ProductOperands,
    accumulate: bool,
    resident: ResidentClusters,
) -> Vec<LaunchPlan> {
    let LinearShape { m, n, k } = spec.shape;
    let (rows, cols, b_operand, b_rows, out) = match product {
        BackwardProduct::Dx => (m, k, Operand::W, n, Operand::DX),
        BackwardProduct::Dw => (
            n,
            if operands.out { k } else { 1 },
            Operand::X,
            m,
            Operand::DW,
        ),
    };
    let pointer_or_null = |given: bool, operand: Operand| {
        if given {
            KernelArg::Pointer(operand)
        } else {
            KernelArg::Null
        }
    };
    let mut args = Vec::with_capacity(14);
    let config = path.config();
    let (launch, function, split) = match path {
        Path::Hopper(config) => {
            let box_rows = match product {
                BackwardProduct::Dx => config.block_m as u32,
                BackwardProduct::Dw => HOPPER_BOX,
            };
            let y = if operands.y { Operand::Y } else { operands.dy };
            args.extend([
                operand_map(operands.dy, m, n, box_rows),
                operand_map(y, m, n, box_rows),
                operand_map(b_operand, b_rows, k, HOPPER_BOX),
            ]);
            if config.tma_store {
                args.push(operand_map(out, rows, k, HOPPER_BOX));
            }
            let launch = config.persistent_launch_config(config.tiles(rows, cols), resident);
            (
                launch,
                function_name::<T>(
                    config,
                    product.name(),
                    if operands.transform_warps {
                        "_transform"
                    } else {
                        ""
                    },
                ),
                false,
            )
        }
        Path::Classic(config) => {
            // Every operand the kernel may read by 16-byte cp.async: the aligned kernel
            // promises it at compile time.
            let aligned = config.mma_sync && n % 8 == 0 && k % 8 == 0 && operands.aligned;
            // db alone reads no X.
            args.extend([
                KernelArg::Pointer(operands.dy),
                pointer_or_null(operands.y, Operand::Y),
                pointer_or_null(operands.out, b_operand),
            ]);
            let split = config.can_split && config.splits > 1;
            let launch = Config {
                splits: if split { config.splits } else { 1 },
                ..config
            }
            .launch_config(config.tiles(rows, cols));
            (
                launch,
                function_name::<T>(
                    config,
                    product.name(),
                    if aligned { "_aligned" } else { "" },
                ),
                split,
            )
        }
    };
    args.push(pointer_or_null(operands.out, out));
    match (product, path) {
        (BackwardProduct::Dw, _) => args.push(pointer_or_null(operands.db, Operand::DB)),
        (BackwardProduct::Dx, Path::Hopper(_)) => {
            args.push(pointer_or_null(operands.dz, Operand::Workspace))
        }
        (BackwardProduct::Dx, Path::Classic(_)) => {}
    }
    args.extend([
        KernelArg::I64(m as i64),
        KernelArg::I64(n as i64),
        KernelArg::I64(k as i64),
        KernelArg::I32(i32::from(operands.y)),
        KernelArg::I32(i32::from(accumulate)),
        KernelArg::MaskParams,
    ]);
    if let Path::Classic(_) = path {
        args.extend([
            if split {
                KernelArg::WorkspaceAt(operands.partial_at)
            } else {
                KernelArg::Null
            },
            KernelArg::I32(if split { config.splits as i32 } else { 1 }),
        ]);
    }
    let mut plans = vec![LaunchPlan {
        module: config.module,
        function,
        grid: launch.grid_dim,
        threads: config.threads,
        smem_bytes: config.smem_bytes,
        cluster: match path {
            Path::Hopper(config) => config.splits as u32,
            Path::Classic(_) => 1,
        },
        args,
    }];
    if split {
        // The shares of dX or dW, then (dW with db) db's after them.
        let mut sums = Vec::with_capacity(2);
        if operands.out {
            sums.push((out, operands.partial_at, rows * k));
        }
        if product == BackwardProduct::Dw && operands.db {
            let after = (config.splits * 4).saturating_mul((rows as u64).saturating_mul(k as u64));
            sums.push((Operand::DB, operands.partial_at.saturating_add(after), rows));
        }
        for (gradient, shares, count) in sums {
            let launch = split_sum_launch(count);
            plans.push(LaunchPlan {
                module: config.module,
                function: format!("fusedrop_backward_split_sum_{}", T::NAME),
                grid: launch.grid_dim,
                threads: launch.block_dim.0,
                smem_bytes: 0,
                cluster: 1,
                args: vec![
                    KernelArg::WorkspaceAt(shares),
                    KernelArg::Pointer(gradient),
                    KernelArg::I64(count as i64),
                    KernelArg::I32(config.splits as i32),
                    KernelArg::F32(crate::mask::scale(spec.dropout.p)),
                    KernelArg::I32(i32::from(accumulate)),
                ],
            });
        }
    }
    plans
}

/// The launches of product `product` of a backward call of `spec` on the configuration named
/// `config`, as [`LayerKernels::backward`] plans them when it takes that kernel (the product,
/// then for a split mma.sync or SIMT product its split sums): a Hopper configuration (`wg128x256`,
/// `wg128x128`, `wg128x256_tmastore`, `wg128x128_tmastore`, `wg128x128s2`, `wg128x128s4`,
/// `wg128x128s8`) on a GPU that runs `resident`
/// clusters at once, or a classic one (`tc128x128`, `tc64x64`, `tc64x32`, `simt128x128`,
/// `simt64x64`, `simt64x32`) split into `splits` shares per output tile (1: unsplit; the
/// mma.sync 128 x 128 kernels do not split, and the wrapper itself splits only the 64 x 64 and
/// 64 x 32 tiles). A Hopper configuration's split is its cluster size: `splits` must be 1 or
/// that. For the CPU harness, which runs these plans against the kernels' own signatures.
///
/// The product's arguments: dY's, Y's and B's (W for dX, X for dW) tensor maps for the Hopper
/// kernels (dY and Y in boxes of 64 x `block_m` for dX, every other box 64 x 64; without Y,
/// dY's map again; the `_tmastore` configurations then take the gradient's, dX's or dW's, in
/// boxes of 64 x 64), their pointers for the others (Y's null when not read); then dX, or dW and
/// db (each null when not asked for), and for the Hopper dX kernels the workspace (`dz`: dZ
/// written for dW) or null; m, n, k, relu (whether Y is read), accumulate, the mask
/// parameters; for the
/// mma.sync and SIMT kernels the split-K pair (the partial sums' address, null unless split,
/// and the shares per tile). Each split sum: (shares, gradient, count, shares per tile, scale,
/// accumulate).
pub fn product_plan<T: Element>(
    config: &str,
    splits: u32,
    product: BackwardProduct,
    spec: &LayerSpec,
    operands: ProductOperands,
    accumulate: bool,
    resident: ResidentClusters,
) -> Result<Vec<LaunchPlan>> {
    validate::check_shape(spec.shape)?;
    let hopper = [
        WG128X256,
        WG128X128,
        WG128X256_TMA_STORE,
        WG128X128_TMA_STORE,
        WG128X128_SPLIT[0],
        WG128X128_SPLIT[1],
        WG128X128_SPLIT[2],
    ];
    let all = || hopper.iter().chain(&TENSOR_CORE).chain(&SIMT);
    let Some(&found) = all().find(|c| c.name == config) else {
        let names: Vec<&str> = all().map(|c| c.name).collect();
        return Err(invalid!(
            "{config} is not a backward configuration; expected one of {names:?}"
        ));
    };
    let path = if found.module == "backward_sm90" {
        if splits != 1 && u64::from(splits) != found.splits {
            return Err(invalid!(
                "{config} splits each tile over its clusters of {}; got splits = {splits}",
                found.splits
            ));
        }
        Path::Hopper(found)
    } else {
        let kernels_split = found.can_split || found.module == "backward_simt";
        if splits == 0 || (splits > 1 && !kernels_split) || splits > i32::MAX as u32 {
            return Err(invalid!(
                "{config}'s kernels take splits = 1{}; got {splits}",
                if kernels_split {
                    " to 2^31 - 1"
                } else {
                    " only"
                }
            ));
        }
        Path::Classic(Config {
            splits: u64::from(splits),
            can_split: splits > 1,
            ..found
        })
    };
    if operands.dz && (product != BackwardProduct::Dx || !matches!(path, Path::Hopper(_))) {
        return Err(invalid!(
            "{config}'s {} kernel writes no dZ; expected dz = false (only dX on the Hopper \
             configurations writes it)",
            product.name()
        ));
    }
    if operands.transform_warps
        && (product != BackwardProduct::Dw || !matches!(path, Path::Hopper(_)) || found.tma_store)
    {
        return Err(invalid!(
            "{config}'s {} kernel has no transform warps; expected transform_warps = false \
             (only dW on the Hopper configurations without the TMA store has them)",
            product.name()
        ));
    }
    Ok(product_plans::<T>(
        path, product, spec, operands, accumulate, resident,
    ))
}

/// The one launch of both products of a backward call of `spec` on the unsplit Hopper
/// configuration named `config` (`wg128x256` or `wg128x128`), as [`LayerKernels::backward`]
/// plans it for [`BackwardKernel::HopperOneLaunch`], on a GPU that runs `resident` blocks at
/// once; `operands` are dW's (what both read as dY, whether Y and db are read and written; `out`
/// must be set: the launch writes dW). For the CPU harness. The arguments: dX's three tensor
/// maps (dY and Y in boxes of 64 x `block_m`, W), dW's (dY and Y in boxes of 64 x 64, X), as
/// each product's own kernel takes them; dX, dW, db (null when not asked for); m, n, k, relu,
/// accumulate, the mask parameters.
pub fn one_launch_plan<T: Element>(
    config: &str,
    spec: &LayerSpec,
    operands: ProductOperands,
    accumulate: bool,
    resident: ResidentClusters,
) -> Result<LaunchPlan> {
    validate::check_shape(spec.shape)?;
    let Some(&found) = [WG128X256, WG128X128].iter().find(|c| c.name == config) else {
        return Err(invalid!(
            "{config} has no launch for both products; expected wg128x256 or wg128x128"
        ));
    };
    if !operands.out || operands.dz || operands.transform_warps {
        return Err(invalid!(
            "the launch of both products writes dW, and no dZ, with no transform warps; got \
             out = {}, dz = {}, transform_warps = {}",
            operands.out,
            operands.dz,
            operands.transform_warps
        ));
    }
    Ok(both_products_plan::<T>(
        found, spec, operands, accumulate, resident,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// An H100 SXM with both sm_90a modules loaded.
    fn h100() -> GpuFacts {
        GpuFacts {
            compute_capability: (9, 0),
            resident: ResidentClusters::uniform(132),
            forward_sm90_loaded: true,
            backward_sm90_loaded: true,
        }
    }

    /// Every buffer of a backward call at distinct 16-byte aligned addresses, with `workspace`.
    fn every_buffer(workspace: Option<(u64, usize)>) -> BackwardBuffers {
        BackwardBuffers {
            dy: 0x10_0000,
            y: Some(0x20_0000),
            w: Some(0x30_0000),
            x: Some(0x40_0000),
            dx: Some(0x50_0000),
            dw: Some(0x60_0000),
            db: Some(0x70_0000),
            workspace,
        }
    }

    #[test]
    fn default_options_overwrite_with_the_automatic_kernel_and_the_host_seed() {
        let options = BackwardOptions::default();
        assert!(!options.accumulate);
        assert_eq!(options.kernel, BackwardKernel::Auto);
        assert!(matches!(options.seed, SeedSource::Host));
    }

    #[test]
    fn classic_tile_is_the_largest_that_fills_the_gpu() {
        let tc = |rows, cols, sm_count| Config::classic_for(&TENSOR_CORE, rows, cols, sm_count);
        // 108 multiprocessors (A100). up's dX: 4096 x 4096 outputs, 1024 tiles of 128 x 128.
        assert_eq!(tc(4096, 4096, 108), TC128X128);
        // 1000 x 1000: 64 tiles of 128 x 128, 256 of 64 x 64.
        assert_eq!(tc(1000, 1000, 108), TC64X64);
        // wide's dW (1024 x 256) and small's dX (64 x 4096): 64 tiles of 64 x 64, 128 of 64 x 32.
        assert_eq!(tc(1024, 256, 108), TC64X32);
        assert_eq!(tc(64, 4096, 108), TC64X32);
        assert_eq!(TC64X32.tiles(1024, 256), 128);
        // SIMT (f32), the same rule over 128 x 128, 64 x 64 and 64 x 32.
        let simt = |rows, cols, sm_count| Config::classic_for(&SIMT, rows, cols, sm_count);
        assert_eq!(simt(4096, 4096, 132), SIMT128X128);
        assert_eq!(simt(1000, 1000, 108), SIMT64X64);
        assert_eq!(simt(1024, 256, 132), SIMT64X32);
    }

    #[test]
    fn narrow_products_split_the_reduction_when_a_workspace_allows() {
        let chosen = |rows, cols, reduction, sm_count| {
            let c = Config::classic_split_for(&TENSOR_CORE, rows, cols, reduction, sm_count);
            (c.name, c.splits)
        };
        // 132 multiprocessors (H100 SXM / H200; the mma.sync kernels run there when forced or
        // when TMA cannot read the operands). wide's dW (1024 x 256 over m = 32768): 64 tiles of
        // 64 x 64 in 2 shares beat 128 unsplit tiles of 64 x 32 (same blocks, more reuse).
        assert_eq!(chosen(1024, 256, 32768, 132), ("tc64x64", 2));
        // small's dX (64 x 4096 over n = 4096), likewise.
        assert_eq!(chosen(64, 4096, 4096, 132), ("tc64x64", 2));
        // 128 x 128 outputs over 8192: 8 tiles of 64 x 32 in 4 shares (the most), 32 blocks.
        assert_eq!(chosen(128, 128, 8192, 132), ("tc64x32", 4));
        // A reduction of 256 (8 slices of 32) is too short to share: the unsplit choice.
        assert_eq!(chosen(64, 4096, 256, 132), ("tc64x32", 1));
        // On 108 multiprocessors (A100) 128 tiles of 64 x 32 fill the GPU: nothing splits.
        assert_eq!(chosen(64, 4096, 4096, 108), ("tc64x32", 1));
        // Products that fill the GPU keep the unsplit tile.
        assert_eq!(chosen(4096, 4096, 4096, 132), ("tc128x128", 1));
        assert_eq!(chosen(1000, 1000, 4096, 108), ("tc64x64", 1));
        // An empty product does not divide by zero.
        assert_eq!(chosen(0, 0, 4096, 132).1, 4);
        // The partial sums: 2 shares of 1024 x 256 floats and of db's 1024.
        let wide_dw = Config::classic_split_for(&TENSOR_CORE, 1024, 256, 32768, 132);
        assert_eq!(
            wide_dw.partial_bytes(1024, 256, 1024),
            2 * (1024 * 256 + 1024) * 4
        );
        assert_eq!(TC64X64.partial_bytes(1024, 256, 1024), 0);
        assert_eq!(partial_offset(0), 0);
        assert_eq!(partial_offset(1000), 1024);
        assert_eq!(partial_offset(usize::MAX - 3), usize::MAX, "saturates");
        // Grids cover every share of every tile.
        assert_eq!(wide_dw.launch_config(64).grid_dim, (128, 1, 1));
    }

    #[test]
    fn narrow_simt_products_split_the_reduction_when_a_workspace_allows() {
        let chosen = |rows, cols, reduction, sm_count| {
            let c = Config::classic_split_for(&SIMT, rows, cols, reduction, sm_count);
            (c.name, c.splits)
        };
        // As on the mma.sync kernels: wide's dW (1024 x 256 over m = 32768) and small's dX
        // (64 x 4096 over n = 4096) on 132 multiprocessors take 64 x 64 in 2 shares (128
        // blocks), as many as 128 unsplit tiles of 64 x 32, with more reuse.
        assert_eq!(chosen(1024, 256, 32768, 132), ("simt64x64", 2));
        assert_eq!(chosen(64, 4096, 4096, 132), ("simt64x64", 2));
        // 128 x 128 outputs over 8192: 8 tiles of 64 x 32 in 4 shares, 32 blocks.
        assert_eq!(chosen(128, 128, 8192, 132), ("simt64x32", 4));
        // A reduction of 256 is too short to share: the unsplit choice.
        assert_eq!(chosen(64, 4096, 256, 132), ("simt64x32", 1));
        // Products that fill the GPU keep the unsplit tile.
        assert_eq!(chosen(4096, 4096, 4096, 132), ("simt128x128", 1));
        assert_eq!(chosen(1024, 512, 8192, 132), ("simt64x32", 1));
        assert_eq!(SIMT128X128.partial_bytes(1024, 256, 1024), 0);
    }

    #[test]
    fn hopper_tile_follows_the_wave() {
        // 132 multiprocessors (H100 SXM / H200). up's dX: 4096 x 4096 outputs, 512 tiles of
        // 128 x 256.
        let h100 = ResidentClusters::uniform(132);
        assert_eq!(Config::hopper_for(4096, 4096, 8192, h100), Some(WG128X256));
        // 1024 x 2048: 64 tiles of 128 x 256 (under a wave), 128 of 128 x 128.
        assert_eq!(Config::hopper_for(1024, 2048, 4096, h100), Some(WG128X128));
        // 1024 x 1152: 72 tiles of 128 x 128, at least half a wave.
        assert_eq!(Config::hopper_for(1024, 1152, 4096, h100), Some(WG128X128));
        // 1024 x 1024: 64 tiles of 128 x 128, under half a wave: split over 2 blocks (128).
        assert_eq!(
            Config::hopper_for(1024, 1024, 4096, h100),
            Some(WG128X128_SPLIT[2])
        );
        // small's dX (64 x 4096 over n = 4096): 32 tiles, 4 blocks each.
        assert_eq!(
            Config::hopper_for(64, 4096, 4096, h100),
            Some(WG128X128_SPLIT[1])
        );
        // wide's dW (1024 x 256 over m = 32768): 16 tiles, 8 blocks each.
        assert_eq!(
            Config::hopper_for(1024, 256, 32768, h100),
            Some(WG128X128_SPLIT[0])
        );
        // A reduction of 256 (4 k-blocks) is too short to split.
        assert_eq!(Config::hopper_for(64, 4096, 256, h100), None);
        // A GPU that runs only 14 clusters of 8 at once: wide's dW takes clusters of 4 (16
        // tiles, 64 blocks) rather than a second wave of clusters of 8.
        let fewer = ResidentClusters::new(132, [Some(66), Some(33), Some(14)]);
        assert_eq!(
            Config::hopper_for(1024, 256, 32768, fewer),
            Some(WG128X128_SPLIT[1])
        );
        // One where the driver can place no cluster of 4 or 8: clusters of 2; of none, the
        // mma.sync kernels.
        let twos = ResidentClusters::new(132, [Some(66), Some(0), Some(0)]);
        assert_eq!(
            Config::hopper_for(1024, 256, 32768, twos),
            Some(WG128X128_SPLIT[2])
        );
        let none = ResidentClusters::new(132, [Some(0), Some(0), Some(0)]);
        assert_eq!(Config::hopper_for(1024, 256, 32768, none), None);
    }

    #[test]
    fn forced_hopper_tiles_run_both_products_unsplit() {
        let h100 = h100();
        let buffers = every_buffer(None);
        let functions = |shape: (usize, usize, usize), kernel| {
            let (m, n, k) = shape;
            let spec = LayerSpec::new(
                LinearShape::new(m, n, k),
                Nonlinearity::Relu,
                crate::DropoutSpec::new(0.1, 1, 2),
            );
            backward_plan::<f16>(&spec, false, kernel, &h100, &buffers)
                .unwrap()
                .into_iter()
                .map(|(plan, _)| (plan.function, plan.cluster))
                .collect::<Vec<_>>()
        };
        let named = |dx: &str, dw: &str, cluster_dw: u32| {
            vec![
                (format!("fusedrop_backward_dx_{dx}_f16"), 1),
                (format!("fusedrop_backward_dw_{dw}_f16"), cluster_dw),
            ]
        };
        // square: dX 4096 x 4096 (512 tiles of 128 x 256), dW 1024 x 4096 (128 of 128 x 256,
        // under a wave: 128 x 128). wide: dW (256 x 1024 over m = 32768) splits over clusters
        // of 8 unless a tile is forced.
        let (square, wide) = ((4096, 1024, 4096), (32768, 256, 1024));
        for (shape, kernel, want) in [
            (
                square,
                BackwardKernel::Auto,
                named("wg128x256", "wg128x128", 1),
            ),
            (
                square,
                BackwardKernel::HopperWg128x128,
                named("wg128x128", "wg128x128", 1),
            ),
            (
                square,
                BackwardKernel::HopperWg128x256,
                named("wg128x256", "wg128x256", 1),
            ),
            (
                wide,
                BackwardKernel::Auto,
                named("wg128x256", "wg128x128s8", 8),
            ),
            (
                wide,
                BackwardKernel::HopperWg128x128,
                named("wg128x128", "wg128x128", 1),
            ),
        ] {
            assert_eq!(functions(shape, kernel), want, "{shape:?} {kernel:?}");
        }
        // Where the Hopper kernels cannot run, a forced tile is refused as BackwardKernel::Hopper
        // is, naming the family asked for.
        let a100 = GpuFacts {
            compute_capability: (8, 0),
            ..h100
        };
        let spec = spec(Nonlinearity::Relu, 0.1);
        let err = backward_plan::<f16>(
            &spec,
            false,
            BackwardKernel::HopperWg128x256,
            &a100,
            &buffers,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedDevice(_))
                && err
                    .to_string()
                    .contains("BackwardKernel::HopperWg128x256: ")
                && err.to_string().contains("compute capability 9.0"),
            "{err}"
        );
        let err = backward_plan::<f32>(
            &spec,
            false,
            BackwardKernel::HopperWg128x128,
            &h100,
            &buffers,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("BackwardKernel::HopperWg128x128 was requested for f32"),
            "{err}"
        );
    }

    #[test]
    fn dz_from_dx_plans_write_dz_in_dx_and_read_it_in_dw() {
        let h100 = h100();
        // 300 x 200 x 96 (spec above): dZ takes 300 * 200 * 2 bytes.
        let dz_bytes = 300 * 200 * 2;
        let buffers = |dx: bool, dw: bool, workspace| {
            let all = every_buffer(workspace);
            BackwardBuffers {
                dx: all.dx.filter(|_| dx),
                dw: all.dw.filter(|_| dw),
                ..all
            }
        };
        let plan = |spec: &LayerSpec, buffers: &BackwardBuffers| {
            backward_plan::<f16>(spec, false, BackwardKernel::HopperDzFromDx, &h100, buffers)
        };
        // What each launch reads as dY, its dz and relu arguments, and its mask.
        let summary = |plans: Vec<(LaunchPlan, BackwardMask)>| {
            plans
                .into_iter()
                .map(|(plan, mask)| {
                    let dy = match plan.args[0] {
                        KernelArg::TensorMap { operand, .. } | KernelArg::Pointer(operand) => {
                            operand
                        }
                        other => panic!("{} reads dY as {other:?}", plan.function),
                    };
                    let dz = plan.function.contains("_dx_").then(|| plan.args[4]);
                    let params = plan.args.iter().position(|a| *a == KernelArg::MaskParams);
                    let relu = plan.args[params.expect("the mask parameters") - 2];
                    (dy, dz, relu, mask)
                })
                .collect::<Vec<_>>()
        };
        let workspace = Some((0x80_0000, dz_bytes));
        let (redrawn, premasked) = (BackwardMask::Redrawn, BackwardMask::Premasked);
        let writes = Some(KernelArg::Pointer(Operand::Workspace));
        let (relu_on, relu_off) = (KernelArg::I32(1), KernelArg::I32(0));
        let relu = spec(Nonlinearity::Relu, 0.1);
        let identity = spec(Nonlinearity::Identity, 0.1);
        let plain = spec(Nonlinearity::Identity, 0.0);
        // ReLU and the identity with dropout: dX forms dZ from dY (and Y) and writes it; dW reads
        // it with neither Y nor mask. No pre-pass for the identity.
        assert_eq!(
            summary(plan(&relu, &buffers(true, true, workspace)).unwrap()),
            [
                (Operand::DY, writes, relu_on, redrawn),
                (Operand::Workspace, None, relu_off, premasked)
            ]
        );
        assert_eq!(
            summary(plan(&identity, &buffers(true, true, workspace)).unwrap()),
            [
                (Operand::DY, writes, relu_off, redrawn),
                (Operand::Workspace, None, relu_off, premasked)
            ]
        );
        // dZ = dY (identity, p = 0), no dX or no dW: the plain Hopper plans, no workspace needed.
        let null = Some(KernelArg::Null);
        assert_eq!(
            summary(plan(&plain, &buffers(true, true, None)).unwrap()),
            [
                (Operand::DY, null, relu_off, redrawn),
                (Operand::DY, None, relu_off, redrawn)
            ]
        );
        assert_eq!(
            summary(plan(&relu, &buffers(false, true, None)).unwrap()),
            [(Operand::DY, None, relu_on, redrawn)]
        );
        // (db without dW runs the mma.sync kernel, with dY.)
        assert_eq!(
            summary(plan(&relu, &buffers(true, false, workspace)).unwrap()),
            [
                (Operand::DY, null, relu_on, redrawn),
                (Operand::DY, None, relu_on, redrawn)
            ]
        );
        // dZ needs its workspace.
        let err = plan(&relu, &buffers(true, true, None)).unwrap_err();
        assert!(
            err.to_string()
                .contains("HopperDzFromDx was given no workspace; expected one of at least 120000"),
            "{err}"
        );
        let err = plan(&relu, &buffers(true, true, Some((0x80_0000, dz_bytes - 1)))).unwrap_err();
        assert!(
            err.to_string().contains("expected at least 120000")
                && err.to_string().contains("dZ, which the dX launch writes"),
            "{err}"
        );
        // The size the planning query reports, and none for the other families.
        assert_eq!(
            dz_from_dx_bytes::<f16>(&relu, BackwardKernel::HopperDzFromDx),
            dz_bytes
        );
        assert_eq!(
            dz_from_dx_bytes::<f16>(&plain, BackwardKernel::HopperDzFromDx),
            0
        );
        assert_eq!(dz_from_dx_bytes::<f16>(&relu, BackwardKernel::Hopper), 0);
        // ReLU's plan needs the saved Y (whatever the family).
        let no_y = BackwardBuffers {
            y: None,
            ..buffers(true, true, workspace)
        };
        let err = plan(&relu, &no_y).unwrap_err();
        assert!(err.to_string().contains("without the saved Y"), "{err}");
        // The family's errors are the Hopper family's, naming it.
        let err = backward_plan::<f32>(
            &relu,
            false,
            BackwardKernel::HopperDzFromDx,
            &h100,
            &buffers(true, true, workspace),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("BackwardKernel::HopperDzFromDx was requested for f32"),
            "{err}"
        );
    }

    #[test]
    fn transform_warp_plans_take_the_transform_dw_kernel_where_dz_is_formed() {
        let h100 = h100();
        let buffers = every_buffer;
        let functions = |spec: &LayerSpec, buffers: &BackwardBuffers| {
            backward_plan::<f16>(
                spec,
                false,
                BackwardKernel::HopperTransformWarps,
                &h100,
                buffers,
            )
            .unwrap()
            .into_iter()
            .map(|(plan, _)| plan.function)
            .collect::<Vec<_>>()
        };
        let (relu, identity) = (
            spec(Nonlinearity::Relu, 0.1),
            spec(Nonlinearity::Identity, 0.1),
        );
        let plain = spec(Nonlinearity::Identity, 0.0);
        // 300 x 200 x 96: dX on 128 x 128 tiles, dW (2 x 1 tiles over 300 rows) too.
        for spec in [&relu, &identity] {
            assert_eq!(
                functions(spec, &buffers(None)),
                [
                    "fusedrop_backward_dx_wg128x128_f16",
                    "fusedrop_backward_dw_wg128x128_transform_f16"
                ],
                "{spec:?}"
            );
        }
        // Nothing to form: dZ is dY (the identity at p = 0), or the identity's pre-pass wrote
        // dY times the mask to the workspace.
        assert_eq!(
            functions(&plain, &buffers(None)),
            [
                "fusedrop_backward_dx_wg128x128_f16",
                "fusedrop_backward_dw_wg128x128_f16"
            ]
        );
        let premasked = functions(&identity, &buffers(Some((0x80_0000, 1 << 20))));
        assert_eq!(
            premasked[1..],
            [
                "fusedrop_backward_dx_wg128x128_f16",
                "fusedrop_backward_dw_wg128x128_f16"
            ]
        );
        // The entry point exists only for dW on the Hopper configurations.
        let transform = ProductOperands {
            transform_warps: true,
            ..ProductOperands {
                dy: Operand::DY,
                y: true,
                dz: false,
                transform_warps: false,
                out: true,
                db: true,
                aligned: true,
                partial_at: 0,
            }
        };
        let plan = |config: &str, product| {
            product_plan::<f16>(
                config,
                1,
                product,
                &relu,
                transform,
                false,
                ResidentClusters::uniform(132),
            )
        };
        assert_eq!(
            plan("wg128x128s4", BackwardProduct::Dw).unwrap()[0].function,
            "fusedrop_backward_dw_wg128x128s4_transform_f16"
        );
        for (config, product) in [
            ("wg128x128", BackwardProduct::Dx),
            ("tc64x64", BackwardProduct::Dw),
        ] {
            let err = plan(config, product).unwrap_err();
            assert!(err.to_string().contains("has no transform warps"), "{err}");
        }
        let err = backward_plan::<f32>(
            &relu,
            false,
            BackwardKernel::HopperTransformWarps,
            &h100,
            &buffers(None),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("BackwardKernel::HopperTransformWarps was requested for f32"),
            "{err}"
        );
    }

    #[test]
    fn tma_store_plans_pass_each_gradients_map_after_the_operands() {
        let h100 = h100();
        let relu = spec(Nonlinearity::Relu, 0.1);
        let LinearShape { m, n, k } = relu.shape;
        let plans = |accumulate: bool, buffers: &BackwardBuffers| {
            backward_plan::<f16>(
                &relu,
                accumulate,
                BackwardKernel::HopperTmaStore,
                &h100,
                buffers,
            )
        };
        // Overwriting and accumulating alike: the operands' maps, then the gradient's in boxes
        // of 64 x 64, then the plain kernels' arguments.
        for accumulate in [false, true] {
            let launched = plans(accumulate, &every_buffer(None)).unwrap();
            assert_eq!(launched.len(), 2);
            for ((plan, mask), (product, rows, operand, out)) in launched.iter().zip([
                ("dx", n, Operand::W, Operand::DX),
                ("dw", m, Operand::X, Operand::DW),
            ]) {
                assert_eq!(*mask, BackwardMask::Redrawn);
                assert_eq!(
                    plan.function,
                    format!("fusedrop_backward_{product}_wg128x128_tmastore_f16")
                );
                assert_eq!(
                    plan.smem_bytes,
                    launch_table::BACKWARD_WG128X128_TMASTORE.smem_bytes
                );
                let gradient_rows = if product == "dx" { m } else { n };
                assert_eq!(
                    plan.args[..5],
                    [
                        operand_map(Operand::DY, m, n, if product == "dx" { 128 } else { 64 }),
                        operand_map(Operand::Y, m, n, if product == "dx" { 128 } else { 64 }),
                        operand_map(operand, rows, k, 64),
                        operand_map(out, gradient_rows, k, 64),
                        KernelArg::Pointer(out),
                    ],
                    "{product}"
                );
                assert_eq!(plan.args.len(), 12, "{product}");
                assert_eq!(plan.args[10], KernelArg::I32(i32::from(accumulate)));
            }
        }
        // Hopper's tiles, each unsplit product's gradient stored by TMA: square's dX on
        // 128 x 256 tiles, its dW on 128 x 128; wide's dX on 128 x 256, its dW split over
        // clusters of 8 as before (stored directly, so its dW need not be 16-byte aligned).
        let wide_dw_unaligned = BackwardBuffers {
            dw: Some(0x60_0004),
            ..every_buffer(None)
        };
        for ((m, n, k), buffers, want) in [
            (
                (4096, 1024, 4096),
                every_buffer(None),
                ["dx_wg128x256_tmastore", "dw_wg128x128_tmastore"],
            ),
            (
                (32768, 256, 1024),
                wide_dw_unaligned,
                ["dx_wg128x256_tmastore", "dw_wg128x128s8"],
            ),
        ] {
            let spec = LayerSpec::new(
                LinearShape::new(m, n, k),
                Nonlinearity::Relu,
                crate::DropoutSpec::new(0.1, 1, 2),
            );
            let launched = backward_plan::<f16>(
                &spec,
                false,
                BackwardKernel::HopperTmaStore,
                &h100,
                &buffers,
            )
            .unwrap();
            let functions: Vec<&str> = launched.iter().map(|(p, _)| p.function.as_str()).collect();
            assert_eq!(
                functions,
                want.map(|w| format!("fusedrop_backward_{w}_f16")),
                "{spec:?}"
            );
            // dX's gradient map, after dY's, Y's and W's: its rows, in boxes of 64 x 64.
            assert_eq!(
                launched[0].0.args[3],
                operand_map(Operand::DX, m, k, 64),
                "{spec:?}"
            );
        }
        // A gradient TMA cannot store to: refused, naming it.
        for (dx, dw, named) in [(0x50_0008, 0x60_0000, "dX"), (0x50_0000, 0x60_0004, "dW")] {
            let buffers = BackwardBuffers {
                dx: Some(dx),
                dw: Some(dw),
                ..every_buffer(None)
            };
            let err = plans(false, &buffers).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "the wg128x128_tmastore kernels store {named} by TMA: it must start 16-byte \
                     aligned"
                )),
                "{err}"
            );
        }
        // The harness's product plans: no transform warps on the TMA-store kernels.
        let operands = ProductOperands {
            dy: Operand::DY,
            y: true,
            dz: false,
            transform_warps: true,
            out: true,
            db: true,
            aligned: true,
            partial_at: 0,
        };
        let err = product_plan::<f16>(
            "wg128x128_tmastore",
            1,
            BackwardProduct::Dw,
            &relu,
            operands,
            false,
            ResidentClusters::uniform(132),
        )
        .unwrap_err();
        assert!(err.to_string().contains("has no transform warps"), "{err}");
    }

    #[test]
    fn split_k_launches_whole_clusters() {
        let h100 = ResidentClusters::uniform(132);
        let s4 = WG128X128_SPLIT[1];
        assert_eq!(s4.splits, 4);
        assert_eq!(s4.persistent_launch_config(32, h100).grid_dim, (128, 1, 1));
        // More tiles than clusters fit: 33 clusters of 4 walk them.
        assert_eq!(s4.persistent_launch_config(100, h100).grid_dim, (132, 1, 1));
        assert_eq!(
            WG128X128.persistent_launch_config(100, h100).grid_dim,
            (100, 1, 1)
        );
        // Fewer clusters run at once than the multiprocessors would hold: the grid is those.
        let fewer = ResidentClusters::new(132, [Some(66), Some(30), Some(14)]);
        assert_eq!(
            s4.persistent_launch_config(100, fewer).grid_dim,
            (120, 1, 1)
        );
        let s8 = WG128X128_SPLIT[0];
        assert_eq!(s8.persistent_launch_config(16, fewer).grid_dim, (112, 1, 1));
    }

    #[test]
    fn one_launch_plans_run_both_products_where_neither_splits() {
        let h100 = h100();
        let plan = |spec: &LayerSpec, buffers: &BackwardBuffers| {
            backward_plan::<f16>(spec, true, BackwardKernel::HopperOneLaunch, &h100, buffers)
                .unwrap()
        };
        let functions = |plans: &[(LaunchPlan, BackwardMask)]| -> Vec<String> {
            plans
                .iter()
                .map(|(plan, _)| plan.function.clone())
                .collect()
        };
        let relu = spec(Nonlinearity::Relu, 0.1);
        // 300 x 200 x 96 (the Hopper family gives both products 128 x 128): dX's 3 tiles and
        // dW's 2 in one grid, each product's maps as its own kernel takes them.
        let one = plan(&relu, &every_buffer(None));
        assert_eq!(functions(&one), ["fusedrop_backward_dxdw_wg128x128_f16"]);
        let (launch, mask) = &one[0];
        assert_eq!(*mask, BackwardMask::Redrawn);
        assert_eq!((launch.grid, launch.cluster), ((5, 1, 1), 1));
        assert_eq!(
            launch.args[..10],
            [
                operand_map(Operand::DY, 300, 200, 128),
                operand_map(Operand::Y, 300, 200, 128),
                operand_map(Operand::W, 200, 96, 64),
                operand_map(Operand::DY, 300, 200, 64),
                operand_map(Operand::Y, 300, 200, 64),
                operand_map(Operand::X, 300, 96, 64),
                KernelArg::Pointer(Operand::DX),
                KernelArg::Pointer(Operand::DW),
                KernelArg::Pointer(Operand::DB),
                KernelArg::I64(300),
            ]
        );
        assert_eq!(
            launch.args[12..],
            [KernelArg::I32(1), KernelArg::I32(1), KernelArg::MaskParams]
        );
        // Without db, its pointer is null; the identity's pre-pass makes both read the
        // workspace, with the mask switched off.
        let no_db = plan(
            &relu,
            &BackwardBuffers {
                db: None,
                ..every_buffer(None)
            },
        );
        assert_eq!(no_db[0].0.args[8], KernelArg::Null);
        let premasked = plan(
            &spec(Nonlinearity::Identity, 0.5),
            &every_buffer(Some((0x80_0000, 1 << 20))),
        );
        assert_eq!(
            functions(&premasked),
            [
                "fusedrop_dropout_f16",
                "fusedrop_backward_dxdw_wg128x128_f16"
            ]
        );
        assert_eq!(premasked[1].1, BackwardMask::Premasked);
        assert_eq!(
            premasked[1].0.args[0],
            operand_map(Operand::Workspace, 300, 200, 128)
        );
        // A call without dX or without dW runs its one product as Hopper does.
        for (buffers, alone) in [
            (
                BackwardBuffers {
                    dx: None,
                    ..every_buffer(None)
                },
                "fusedrop_backward_dw_wg128x128_f16",
            ),
            (
                BackwardBuffers {
                    dw: None,
                    db: None,
                    ..every_buffer(None)
                },
                "fusedrop_backward_dx_wg128x128_f16",
            ),
        ] {
            assert_eq!(functions(&plan(&relu, &buffers)), [alone]);
        }
        // small (64 x 4096 x 4096): dX splits over clusters of 4, so the two products keep
        // their own launches; a large square call has 128 x 256 tiles for both.
        let shaped = |m, n, k| {
            LayerSpec::new(
                LinearShape::new(m, n, k),
                Nonlinearity::Relu,
                crate::DropoutSpec::new(0.1, 1, 2),
            )
        };
        assert_eq!(
            functions(&plan(&shaped(64, 4096, 4096), &every_buffer(None))),
            [
                "fusedrop_backward_dx_wg128x128s4_f16",
                "fusedrop_backward_dw_wg128x256_f16"
            ]
        );
        let square = plan(&shaped(4096, 4096, 4096), &every_buffer(None));
        assert_eq!(functions(&square), ["fusedrop_backward_dxdw_wg128x256_f16"]);
        assert_eq!(square[0].0.grid, (132, 1, 1));
        let err = backward_plan::<f32>(
            &relu,
            false,
            BackwardKernel::HopperOneLaunch,
            &h100,
            &every_buffer(None),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("BackwardKernel::HopperOneLaunch was requested for f32"),
            "{err}"
        );
        let choice = BackwardChoice {
            dx: "wg128x256",
            dw: "wg128x256",
            dx_splits: 1,
            dw_splits: 1,
            one_launch: true,
        };
        assert_eq!(choice.to_string(), "dX and dW wg128x256 in one launch");
    }

    fn spec(nonlinearity: Nonlinearity, p: f32) -> LayerSpec {
        LayerSpec::new(
            LinearShape::new(300, 200, 96),
            nonlinearity,
            crate::DropoutSpec::new(p, 1, 2),
        )
    }

    fn operands(dy: Operand, y: bool, out: bool, db: bool) -> ProductOperands {
        ProductOperands {
            dy,
            y,
            dz: false,
            transform_warps: false,
            out,
            db,
            aligned: true,
            partial_at: 4096,
        }
    }

    #[test]
    fn hopper_product_plans_read_every_operand_by_tensor_map() {
        let relu = spec(Nonlinearity::Relu, 0.1);
        let plan = &product_plan::<f16>(
            "wg128x128",
            1,
            BackwardProduct::Dx,
            &relu,
            operands(Operand::DY, true, true, false),
            true,
            ResidentClusters::uniform(132),
        )
        .unwrap()[0];
        assert_eq!(plan.function, "fusedrop_backward_dx_wg128x128_f16");
        assert_eq!(plan.module, "backward_sm90");
        // dX of 300 x 96: 3 x 1 tiles of 128 x 128.
        assert_eq!((plan.grid, plan.cluster), ((3, 1, 1), 1));
        assert_eq!(
            plan.args,
            vec![
                operand_map(Operand::DY, 300, 200, 128),
                operand_map(Operand::Y, 300, 200, 128),
                operand_map(Operand::W, 200, 96, 64),
                KernelArg::Pointer(Operand::DX),
                KernelArg::Null,
                KernelArg::I64(300),
                KernelArg::I64(200),
                KernelArg::I64(96),
                KernelArg::I32(1),
                KernelArg::I32(1),
                KernelArg::MaskParams,
            ]
        );
        // dX writing dZ for dW (BackwardKernel::HopperDzFromDx): the workspace after dX.
        let writes_dz = ProductOperands {
            dz: true,
            ..operands(Operand::DY, true, true, false)
        };
        let plan = &product_plan::<f16>(
            "wg128x128",
            1,
            BackwardProduct::Dx,
            &relu,
            writes_dz,
            false,
            ResidentClusters::uniform(132),
        )
        .unwrap()[0];
        assert_eq!(
            plan.args[3..5],
            [
                KernelArg::Pointer(Operand::DX),
                KernelArg::Pointer(Operand::Workspace)
            ]
        );
        // Only the Hopper dX kernels write dZ.
        for (config, product) in [
            ("wg128x128", BackwardProduct::Dw),
            ("tc64x64", BackwardProduct::Dx),
        ] {
            let err = product_plan::<f16>(
                config,
                1,
                product,
                &relu,
                writes_dz,
                false,
                ResidentClusters::uniform(132),
            )
            .unwrap_err();
            assert!(err.to_string().contains("dX on the Hopper"), "{err}");
        }
        // dW from the workspace's dY times the mask, without Y (its map is the workspace's
        // again) and without db, split over clusters of 4 that run 2 at once.
        let identity = spec(Nonlinearity::Identity, 0.5);
        let plan = &product_plan::<bf16>(
            "wg128x128s4",
            4,
            BackwardProduct::Dw,
            &identity,
            operands(Operand::Workspace, false, true, false),
            false,
            ResidentClusters::uniform(8),
        )
        .unwrap()[0];
        assert_eq!(plan.function, "fusedrop_backward_dw_wg128x128s4_bf16");
        assert_eq!((plan.grid, plan.cluster), ((8, 1, 1), 4));
        assert_eq!(
            plan.args[..6],
            [
                operand_map(Operand::Workspace, 300, 200, 64),
                operand_map(Operand::Workspace, 300, 200, 64),
                operand_map(Operand::X, 300, 96, 64),
                KernelArg::Pointer(Operand::DW),
                KernelArg::Null,
                KernelArg::I64(300),
            ]
        );
        for (config, splits, why) in [
            (
                "wg128x128s2",
                4,
                "splits each tile over its clusters of 2; got splits = 4",
            ),
            ("tc128x128", 2, "kernels take splits = 1 only; got 2"),
            ("tc64x64", 0, "kernels take splits = 1 to 2^31 - 1; got 0"),
            (
                "simt64x64",
                1 << 31,
                "kernels take splits = 1 to 2^31 - 1; got 2147483648",
            ),
            ("wg64", 1, "wg64 is not a backward configuration"),
        ] {
            let error = product_plan::<f16>(
                config,
                splits,
                BackwardProduct::Dx,
                &relu,
                operands(Operand::DY, true, true, false),
                false,
                ResidentClusters::uniform(132),
            )
            .unwrap_err();
            assert!(
                error.to_string().contains(why),
                "{config} split {splits}: {error}"
            );
        }
    }

    #[test]
    fn split_classic_products_are_followed_by_their_sums() {
        let identity = spec(Nonlinearity::Identity, 0.5);
        let split = Config {
            splits: 3,
            ..TC64X64
        };
        let plans = product_plans::<f16>(
            Path::Classic(split),
            BackwardProduct::Dw,
            &identity,
            operands(Operand::DY, false, true, true),
            true,
            ResidentClusters::uniform(132),
        );
        assert_eq!(plans.len(), 3, "the product, then dW's and db's sums");
        let product = &plans[0];
        assert_eq!(product.function, "fusedrop_backward_dw_tc64x64_aligned_f16");
        // dW of 200 x 96: 4 x 2 tiles of 64 x 64, 3 blocks each.
        assert_eq!(product.grid, (24, 1, 1));
        assert_eq!(
            product.args[..5],
            [
                KernelArg::Pointer(Operand::DY),
                KernelArg::Null,
                KernelArg::Pointer(Operand::X),
                KernelArg::Pointer(Operand::DW),
                KernelArg::Pointer(Operand::DB),
            ]
        );
        assert_eq!(
            product.args[11..],
            [KernelArg::WorkspaceAt(4096), KernelArg::I32(3)]
        );
        let sum = |plan: &LaunchPlan| plan.args.clone();
        assert_eq!(plans[1].function, "fusedrop_backward_split_sum_f16");
        assert_eq!(
            sum(&plans[1]),
            vec![
                KernelArg::WorkspaceAt(4096),
                KernelArg::Pointer(Operand::DW),
                KernelArg::I64(200 * 96),
                KernelArg::I32(3),
                KernelArg::F32(2.0),
                KernelArg::I32(1),
            ]
        );
        // db's shares after dW's: 3 shares of 200 x 96 f32.
        assert_eq!(
            sum(&plans[2])[0],
            KernelArg::WorkspaceAt(4096 + 3 * 200 * 96 * 4)
        );
        assert_eq!(sum(&plans[2])[1], KernelArg::Pointer(Operand::DB));
        assert_eq!(sum(&plans[2])[2], KernelArg::I64(200));

        // db alone: the product switched off, X not read, unsplit.
        let plans = product_plans::<f32>(
            Path::Classic(SIMT64X32),
            BackwardProduct::Dw,
            &identity,
            operands(Operand::DY, false, false, true),
            false,
            ResidentClusters::uniform(132),
        );
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].function, "fusedrop_backward_dw_simt64x32_f32");
        assert_eq!(
            plans[0].args[..5],
            [
                KernelArg::Pointer(Operand::DY),
                KernelArg::Null,
                KernelArg::Null,
                KernelArg::Null,
                KernelArg::Pointer(Operand::DB),
            ]
        );
        assert_eq!(plans[0].args[11..], [KernelArg::Null, KernelArg::I32(1)]);
    }

    #[test]
    fn backward_plans_check_the_workspace_and_mark_each_launchs_mask() {
        let a100 = GpuFacts {
            compute_capability: (8, 0),
            resident: ResidentClusters::uniform(108),
            forward_sm90_loaded: false,
            backward_sm90_loaded: false,
        };
        let identity = LayerSpec::new(
            LinearShape::new(256, 64, 64),
            Nonlinearity::Identity,
            crate::DropoutSpec::new(0.5, 1, 2),
        );
        let buffers = |workspace| BackwardBuffers {
            dy: 0x1000,
            y: None,
            w: Some(0x2000),
            x: Some(0x3000),
            dx: Some(0x4000),
            dw: Some(0x5000),
            db: Some(0x6000),
            workspace,
        };
        let plan = |workspace| {
            backward_plan::<f16>(
                &identity,
                false,
                BackwardKernel::Auto,
                &a100,
                &buffers(workspace),
            )
        };
        // dY times the mask needs 256 * 64 * 2 bytes.
        let short = plan(Some((0x7000, 32767))).unwrap_err();
        assert!(
            short.to_string().contains("expected at least 32768"),
            "{short}"
        );
        let misaligned = plan(Some((0x7008, 32768))).unwrap_err();
        assert!(misaligned.to_string().contains("16-byte"), "{misaligned}");
        let masks: Vec<BackwardMask> = plan(Some((0x7000, 32768)))
            .unwrap()
            .into_iter()
            .map(|(_, mask)| mask)
            .collect();
        assert_eq!(
            masks,
            [
                BackwardMask::PrePass,
                BackwardMask::Premasked,
                BackwardMask::Premasked
            ]
        );
        let masks: Vec<BackwardMask> = plan(None)
            .unwrap()
            .into_iter()
            .map(|(_, mask)| mask)
            .collect();
        assert_eq!(masks, [BackwardMask::Redrawn, BackwardMask::Redrawn]);
        // f32 on the tensor cores is refused before anything else.
        let err = backward_plan::<f32>(
            &identity,
            false,
            BackwardKernel::TensorCore,
            &a100,
            &buffers(None),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected f16 or bf16"), "{err}");
        // The tensor-core kernels below compute capability 8.0, and the Hopper kernels anywhere
        // but on a 9.0 GPU with the sm_90a module loaded.
        let turing = GpuFacts {
            compute_capability: (7, 5),
            ..a100
        };
        let err = backward_plan::<f16>(
            &identity,
            false,
            BackwardKernel::Auto,
            &turing,
            &buffers(None),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedDevice(_)) && err.to_string().contains("mma.sync"),
            "{err}"
        );
        let err = backward_plan::<f16>(
            &identity,
            false,
            BackwardKernel::Hopper,
            &a100,
            &buffers(None),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedDevice(_))
                && err.to_string().contains("compute capability 9.0"),
            "{err}"
        );
        // Forced Hopper with an operand TMA cannot read (X at an odd 2-byte offset).
        let h100 = h100();
        let misaligned_x = BackwardBuffers {
            x: Some(0x3002),
            ..buffers(None)
        };
        let err = backward_plan::<f16>(
            &identity,
            false,
            BackwardKernel::Hopper,
            &h100,
            &misaligned_x,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the Hopper backward kernels read dY, Y and X by TMA for dW"),
            "{err}"
        );
        // The same buffers with the automatic choice take the mma.sync kernels instead.
        assert!(
            backward_plan::<f16>(&identity, false, BackwardKernel::Auto, &h100, &misaligned_x)
                .is_ok()
        );
    }
}
