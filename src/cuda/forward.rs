//! The fused forward kernels (kernels/forward_sm90.cu, kernels/forward_tc.cu,
//! kernels/forward_f32.cu): one launch computes `Y = dropout_p(act(X·Wᵀ + b))` for X `[m, k]`,
//! W `[n, k]` (the `nn.Linear` layout), optional b `[n]` and Y `[m, n]`, all row-major, with the
//! mask of the mask contract.
//!
//! Which kernel runs:
//! - f16 and bf16 on compute capability 9.0 (H100, H200), when TMA can read X and W (both
//!   16-byte aligned, `k` a multiple of 8) and the Hopper module was built (`FUSEDROP_CUDA_ARCHS`
//!   lists 90): the warp-specialised wgmma/TMA kernel, persistent (one block per
//!   multiprocessor), with split-K over thread block clusters when the output has too few tiles
//!   to fill the GPU, [`choose_hopper_config`];
//! - other f16 and bf16 calls on compute capability 8.0 and newer: the mma.sync kernel,
//!   [`choose_config`] (each configuration's variant for 16-byte aligned X and W with `k` a
//!   multiple of 8 when they are, the one for any operands otherwise);
//! - f32 on compute capability 7.5 and newer: the true-fp32 SIMT kernel, [`choose_config`].
//!
//! [`LayerKernels::forward_config_for`] says which configuration a call takes;
//! [`ForwardOptions::config`] forces one.
//!
//! The (seed, subsequence) pair: take a fresh one per call from a
//! [`DropoutGenerator`](crate::DropoutGenerator) so that no two calls share a mask by accident;
//! pass an explicit [`DropoutSpec`](crate::DropoutSpec) to recompute a mask used before; or read it
//! from a device buffer at launch time with [`SeedSource::Device`] (CUDA-graph replay), in
//! [`ForwardOptions::seed`].
//!
//! ```no_run
//! # fn main() -> fusedrop::Result<()> {
//! use fusedrop::cuda::{self, forward::ForwardOptions, LayerKernels};
//! use fusedrop::{DropoutGenerator, LayerSpec, LinearShape, Nonlinearity};
//! use half::bf16;
//!
//! let ctx = cuda::open_device(0)?;
//! let kernels = LayerKernels::new(ctx.default_stream())?;
//! let stream = kernels.stream();
//! let (m, n, k) = (64, 256, 128);
//! let x = stream.clone_htod(&vec![bf16::from_f32(0.5); m * k])?;
//! let w = stream.clone_htod(&vec![bf16::from_f32(0.25); n * k])?;
//! let b = stream.clone_htod(&vec![bf16::from_f32(0.1); n])?;
//! let mut y = stream.alloc_zeros::<bf16>(m * n)?;
//!
//! let mut generator = DropoutGenerator::new(1234);
//! let spec = LayerSpec::new(LinearShape::new(m, n, k), Nonlinearity::Relu, generator.next(0.1));
//! kernels.forward(&spec, &x, &w, Some(&b.as_view()), &mut y, ForwardOptions::default())?;
//! // Asynchronous: the result is ready once the stream is (the copy below waits for it).
//! let y_host = stream.clone_dtoh(&y)?;
//! # let _ = y_host;
//! # Ok(()) }
//! ```

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig,
    SyncOnDrop,
};

use crate::cuda::launch_plan::{KernelArg, LaunchPlan, Operand, OperandAddresses};
use crate::cuda::launch_table::LaunchNumbers;
use crate::cuda::tensor_map;
use crate::cuda::{
    launch_table, ClusterProbe, GpuFacts, LayerKernels, MaskParams, ResidentClusters, SeedSource,
};
use crate::element::Element;
use crate::error::{invalid, Error, Result};
use crate::layer::{LayerSpec, LinearShape, Nonlinearity};
use crate::validate::{self, ForwardLens};

/// A compiled tile configuration of the forward kernels: the threadblock tile, its thread count
/// and its dynamic shared memory. These numbers (src/cuda/launch_table.rs) are those of the
/// config structs of kernels/forward_tc.cu, kernels/forward_f32.cu and kernels/forward_sm90.cu,
/// which `static_assert` them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardConfig {
    /// Tensor cores, 128 x 256 tile, 8 warps of 64 x 64, 4-stage cp.async pipeline (k slice 32).
    Tc128x256,
    /// Tensor cores, 128 x 128 tile, 4 warps of 64 x 64, 4 stages.
    Tc128x128,
    /// Tensor cores, 64 x 128 tile, 4 warps of 32 x 64, 4 stages.
    Tc64x128,
    /// Tensor cores, 64 x 64 tile, 4 warps of 32 x 32, 5 stages.
    Tc64x64,
    /// Tensor cores, 64 x 32 tile, 4 warps of 16 x 32, 6 stages: the most tiles for small m.
    Tc64x32,
    /// f32 SIMT, 128 x 128 tile, 256 threads of 8 x 8 outputs, k slice 8, double-buffered.
    Simt128x128,
    /// f32 SIMT, 64 x 64 tile, 256 threads of 4 x 4 outputs, k slice 16, double-buffered.
    Simt64x64,
    /// f32 SIMT, 64 x 32 tile, 128 threads of 4 x 4 outputs, k slice 16, double-buffered: the
    /// most tiles for small m.
    Simt64x32,
    /// Hopper (sm_90a) wgmma + TMA, 128 x 256 tile: two consumer warpgroups of 64 x 256, a
    /// 4-stage ring of 64-deep k-blocks, persistent grid.
    Wg128x256,
    /// Hopper, 128 x 128 tile: two consumer warpgroups of 64 x 128, 6 stages.
    Wg128x128,
    /// Hopper, 64 x 128 tile: two consumer warpgroups of 64 x 64 side by side, 8 stages.
    Wg64x128,
    /// [`ForwardConfig::Wg64x128`] with split-K over clusters of 2 blocks: each block of a
    /// cluster accumulates half of k and the halves are summed, in a fixed order, in distributed
    /// shared memory (kernels/gemm/sm90/split_k.cuh). Needs k >= 2 x 64.
    Wg64x128S2,
    /// [`ForwardConfig::Wg64x128`] split over clusters of 4 blocks. Needs k >= 4 x 64.
    Wg64x128S4,
    /// [`ForwardConfig::Wg128x128`] split over clusters of 2 blocks (5 stages: the partial
    /// sums take 64 KiB of shared memory). Needs k >= 2 x 64.
    Wg128x128S2,
    /// [`ForwardConfig::Wg128x128`] split over clusters of 4 blocks. Needs k >= 4 x 64.
    Wg128x128S4,
}

impl ForwardConfig {
    /// The tensor-core configurations (f16, bf16), largest tile first.
    pub const TENSOR_CORE: [ForwardConfig; 5] = [
        ForwardConfig::Tc128x256,
        ForwardConfig::Tc128x128,
        ForwardConfig::Tc64x128,
        ForwardConfig::Tc64x64,
        ForwardConfig::Tc64x32,
    ];

    /// The f32 SIMT configurations, largest tile first.
    pub const SIMT: [ForwardConfig; 3] = [
        ForwardConfig::Simt128x128,
        ForwardConfig::Simt64x64,
        ForwardConfig::Simt64x32,
    ];

    /// The Hopper (sm_90a, f16 and bf16) configurations, largest tile first, then the split-K
    /// ones.
    pub const HOPPER: [ForwardConfig; 7] = [
        ForwardConfig::Wg128x256,
        ForwardConfig::Wg128x128,
        ForwardConfig::Wg64x128,
        ForwardConfig::Wg128x128S4,
        ForwardConfig::Wg64x128S4,
        ForwardConfig::Wg128x128S2,
        ForwardConfig::Wg64x128S2,
    ];

    /// The Hopper configurations without split-K, largest tile first.
    const HOPPER_WHOLE_K: [ForwardConfig; 3] = [
        ForwardConfig::Wg128x256,
        ForwardConfig::Wg128x128,
        ForwardConfig::Wg64x128,
    ];

    /// The split-K configurations, in the heuristic's order of preference among equals.
    const HOPPER_SPLIT_K: [ForwardConfig; 4] = [
        ForwardConfig::Wg128x128S4,
        ForwardConfig::Wg64x128S4,
        ForwardConfig::Wg128x128S2,
        ForwardConfig::Wg64x128S2,
    ];

    /// The portable configurations compiled for element type `T` (mma.sync for halves, SIMT for
    /// f32), largest tile first. Halves also have the [`ForwardConfig::HOPPER`] ones.
    pub fn all_for<T: Element>() -> &'static [ForwardConfig] {
        if T::NEEDS_SM80 {
            &Self::TENSOR_CORE
        } else {
            &Self::SIMT
        }
    }

    /// The configuration's name, as in the kernel entry point `fusedrop_forward_<name>_<dtype>`.
    pub const fn name(self) -> &'static str {
        match self {
            ForwardConfig::Tc128x256 => "tc128x256",
            ForwardConfig::Tc128x128 => "tc128x128",
            ForwardConfig::Tc64x128 => "tc64x128",
            ForwardConfig::Tc64x64 => "tc64x64",
            ForwardConfig::Tc64x32 => "tc64x32",
            ForwardConfig::Simt128x128 => "simt128x128",
            ForwardConfig::Simt64x64 => "simt64x64",
            ForwardConfig::Simt64x32 => "simt64x32",
            ForwardConfig::Wg128x256 => "wg128x256",
            ForwardConfig::Wg128x128 => "wg128x128",
            ForwardConfig::Wg64x128 => "wg64x128",
            ForwardConfig::Wg64x128S2 => "wg64x128s2",
            ForwardConfig::Wg64x128S4 => "wg64x128s4",
            ForwardConfig::Wg128x128S2 => "wg128x128s2",
            ForwardConfig::Wg128x128S4 => "wg128x128s4",
        }
    }

    /// Whether this is a Hopper (wgmma + TMA, compute capability 9.0 only) configuration.
    pub const fn is_hopper(self) -> bool {
        matches!(
            self,
            ForwardConfig::Wg128x256
                | ForwardConfig::Wg128x128
                | ForwardConfig::Wg64x128
                | ForwardConfig::Wg64x128S2
                | ForwardConfig::Wg64x128S4
                | ForwardConfig::Wg128x128S2
                | ForwardConfig::Wg128x128S4
        )
    }

    /// Blocks per output tile: the split-K factor (the cluster size of the kernel), 1 for the
    /// configurations without split-K.
    pub const fn splits(self) -> u32 {
        self.launch_numbers().cluster
    }

    /// The smallest `k` the configuration takes: one 64-deep k-block for every block of a
    /// split-K cluster, and 1 otherwise.
    pub const fn min_k(self) -> usize {
        if self.splits() > 1 {
            64 * self.splits() as usize
        } else {
            1
        }
    }

    /// An error unless the configuration takes a reduction of `k` ([`min_k`](Self::min_k)).
    fn check_k(self, k: usize) -> Result<()> {
        if k < self.min_k() {
            return Err(invalid!(
                "forward config {} splits k over {} blocks of at least 64: k = {k} is too short; \
                 expected k >= {}",
                self.name(),
                self.splits(),
                self.min_k()
            ));
        }
        Ok(())
    }

    /// Whether this configuration is compiled for element type `T`.
    pub fn runs_on<T: Element>(self) -> bool {
        Self::all_for::<T>().contains(&self) || (T::NEEDS_SM80 && self.is_hopper())
    }

    /// An error unless this configuration is compiled for element type `T`
    /// ([`runs_on`](Self::runs_on)), naming the ones that are.
    fn check_compiled_for<T: Element>(self) -> Result<()> {
        if self.runs_on::<T>() {
            return Ok(());
        }
        let mut expected = Self::all_for::<T>().to_vec();
        if T::NEEDS_SM80 {
            expected.extend(Self::HOPPER);
        }
        Err(invalid!(
            "forward config {} is not compiled for {}; expected one of {expected:?}",
            self.name(),
            T::NAME,
        ))
    }

    /// Whether this configuration runs on tensor cores (f16/bf16) rather than f32 SIMT.
    pub const fn uses_tensor_cores(self) -> bool {
        !matches!(
            self,
            ForwardConfig::Simt128x128 | ForwardConfig::Simt64x64 | ForwardConfig::Simt64x32
        )
    }

    /// The kernel module (a `kernels/<module>.cu` file) holding this configuration.
    const fn module(self) -> &'static str {
        if self.is_hopper() {
            "forward_sm90"
        } else if self.uses_tensor_cores() {
            "forward_tc"
        } else {
            "forward_f32"
        }
    }

    /// Rows of Y per threadblock tile.
    pub const fn block_m(self) -> usize {
        self.numbers().0 as usize
    }

    /// Columns of Y per threadblock tile.
    pub const fn block_n(self) -> usize {
        self.numbers().1 as usize
    }

    /// Threads per block.
    pub const fn threads(self) -> u32 {
        self.numbers().2
    }

    /// Dynamic shared memory per block in bytes: the larger of the main loop's buffers and the
    /// epilogue's staging slab.
    pub const fn smem_bytes(self) -> u32 {
        self.numbers().3
    }

    /// (block_m, block_n, threads, dynamic shared memory bytes), from the launch table that the
    /// kernels' config structs are checked against at build time.
    const fn numbers(self) -> (u32, u32, u32, u32) {
        let n = self.launch_numbers();
        (n.block_m, n.block_n, n.threads, n.smem_bytes)
    }

    const fn launch_numbers(self) -> launch_table::LaunchNumbers {
        match self {
            ForwardConfig::Tc128x256 => launch_table::FORWARD_TC128X256,
            ForwardConfig::Tc128x128 => launch_table::FORWARD_TC128X128,
            ForwardConfig::Tc64x128 => launch_table::FORWARD_TC64X128,
            ForwardConfig::Tc64x64 => launch_table::FORWARD_TC64X64,
            ForwardConfig::Tc64x32 => launch_table::FORWARD_TC64X32,
            ForwardConfig::Simt128x128 => launch_table::FORWARD_SIMT128X128,
            ForwardConfig::Simt64x64 => launch_table::FORWARD_SIMT64X64,
            ForwardConfig::Simt64x32 => launch_table::FORWARD_SIMT64X32,
            ForwardConfig::Wg128x256 => launch_table::FORWARD_WG128X256,
            ForwardConfig::Wg128x128 => launch_table::FORWARD_WG128X128,
            ForwardConfig::Wg64x128 => launch_table::FORWARD_WG64X128,
            ForwardConfig::Wg64x128S2 => launch_table::FORWARD_WG64X128S2,
            ForwardConfig::Wg64x128S4 => launch_table::FORWARD_WG64X128S4,
            ForwardConfig::Wg128x128S2 => launch_table::FORWARD_WG128X128S2,
            ForwardConfig::Wg128x128S4 => launch_table::FORWARD_WG128X128S4,
        }
    }

    /// The f16 entry point of this (clustered) configuration, for the driver's count of its
    /// clusters that run at once (`LayerKernels::new`).
    pub(crate) fn cluster_probe(self) -> ClusterProbe {
        ClusterProbe {
            module: self.module(),
            function: function_name::<half::f16>(self, false),
            threads: self.threads(),
            smem_bytes: self.smem_bytes(),
            cluster: self.splits(),
        }
    }

    /// Output tiles of `shape` under this configuration (saturating at `u64::MAX`, beyond any
    /// count a launch accepts, for shapes no call would pass validation with).
    pub fn tiles(self, shape: LinearShape) -> u64 {
        (shape.m as u64)
            .div_ceil(self.block_m() as u64)
            .saturating_mul((shape.n as u64).div_ceil(self.block_n() as u64))
    }

    /// The launch of `shape` on a GPU that runs `resident` clusters at once
    /// ([`LayerKernels::resident_clusters`]; [`ResidentClusters::uniform`] of its multiprocessor
    /// count where the driver was not asked).
    ///
    /// Hopper configurations: a persistent grid of min(tiles, sm_count) blocks, each walking the
    /// tiles `blockIdx.x + i * gridDim.x`; split-K ones: min(tiles, `resident.of(splits)`)
    /// clusters of [`splits`](Self::splits) blocks, each cluster walking the tiles
    /// `blockIdx.x / splits + i * gridDim.x / splits`. The tile count must fit an `i32`, and a
    /// split-K configuration needs `k >=` [`min_k`](Self::min_k). The others: grid
    /// (ceil(n / block_n), min(ceil(m / block_m), 65535), 1), the kernel looping over the row
    /// tiles beyond 65535 (kernels/gemm/tile_scheduler.cuh).
    pub fn launch_config(
        self,
        shape: LinearShape,
        resident: ResidentClusters,
    ) -> Result<LaunchConfig> {
        if self.is_hopper() {
            let tiles = self.tiles(shape);
            if tiles > i32::MAX as u64 {
                return Err(invalid!(
                    "{} x {} needs {tiles} tiles of {} x {}; expected at most 2^31-1",
                    shape.m,
                    shape.n,
                    self.block_m(),
                    self.block_n()
                ));
            }
            self.check_k(shape.k)?;
            return Ok(resident.persistent_launch(
                tiles,
                self.splits(),
                self.threads(),
                self.smem_bytes(),
            ));
        }
        let (block_m, block_n, threads, smem_bytes) = self.numbers();
        folded_launch(shape, block_m, block_n, threads, smem_bytes)
    }

    /// What [`LayerKernels::forward`] launches with this configuration for `spec`, with the
    /// operands at `addresses` (the alignment of X and W decides whether TMA can read them, and
    /// picks between an mma.sync configuration's two entry points; a bias when `addresses.b` is
    /// given), on a GPU that runs `resident` clusters at once: the entry point, the grid of
    /// [`launch_config`](Self::launch_config), and the arguments (X and W as pointers, or for a
    /// Hopper configuration as TMA maps in boxes of 64 x `block_m` and 64 x `block_n`; then b or
    /// null, y, m, n, k, relu, the mask parameters).
    ///
    /// Errors: the configuration is not compiled for `T`; a Hopper configuration with operands
    /// TMA cannot read ([`hopper_operands_fit`]); the grid's limits (see `launch_config`).
    pub fn launch_plan<T: Element>(
        self,
        spec: &LayerSpec,
        addresses: &OperandAddresses,
        resident: ResidentClusters,
    ) -> Result<LaunchPlan> {
        self.check_compiled_for::<T>()?;
        let shape = spec.shape;
        let (x_addr, w_addr) = (addresses.x, addresses.w);
        let operands_fit = hopper_operands_fit(shape, x_addr, w_addr);
        if self.is_hopper() && !operands_fit {
            return Err(invalid!(
                "forward config {} reads X and W by TMA: they must start 16-byte aligned (x at \
                 {x_addr:#x}, w at {w_addr:#x}), k = {} must be a positive multiple of 8, and m = \
                 {}, n = {} and k must be positive and below 2^31",
                self.name(),
                shape.k,
                shape.m,
                shape.n
            ));
        }
        let launch = self.launch_config(shape, resident)?;
        let operands = if self.is_hopper() {
            operand_maps(shape, self.block_m() as u32, self.block_n() as u32)
        } else {
            OPERAND_POINTERS
        };
        // An mma.sync configuration has a second entry point for X and W that start 16-byte
        // aligned with k a multiple of 8: no element-load path in its main loop.
        let aligned = self.uses_tensor_cores()
            && !self.is_hopper()
            && x_addr % 16 == 0
            && w_addr % 16 == 0
            && shape.k % 8 == 0;
        Ok(LaunchPlan {
            module: self.module(),
            function: function_name::<T>(self, aligned),
            grid: launch.grid_dim,
            threads: self.threads(),
            smem_bytes: self.smem_bytes(),
            cluster: self.splits(),
            args: forward_args(&operands, spec, addresses.b.is_some()),
        })
    }
}

/// The folded grid of the mma.sync and SIMT kernels (kernels/gemm/tile_scheduler.cuh): (ceil(n /
/// block_n), min(ceil(m / block_m), 65535), 1).
fn folded_launch(
    shape: LinearShape,
    block_m: u32,
    block_n: u32,
    threads: u32,
    smem_bytes: u32,
) -> Result<LaunchConfig> {
    let n_tiles = (shape.n as u64).div_ceil(u64::from(block_n));
    let m_tiles = (shape.m as u64).div_ceil(u64::from(block_m));
    let grid_x = u32::try_from(n_tiles)
        .ok()
        .filter(|&x| x <= i32::MAX as u32)
        .ok_or_else(|| {
            invalid!(
                "n = {} needs {n_tiles} column tiles of {block_n}; expected at most 2^31-1 (the \
                 CUDA grid limit)",
                shape.n
            )
        })?;
    Ok(LaunchConfig {
        grid_dim: (grid_x, m_tiles.clamp(1, 65_535) as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem_bytes,
    })
}

/// At or below this many input features, the half-type heuristic starts from the 64 x 64 tile.
pub const SHORT_K: usize = 512;

/// The portable (mma.sync or SIMT) configuration for `shape` with element type `T` on a GPU with
/// `sm_count` multiprocessors: the one [`LayerKernels::forward`] uses wherever the Hopper kernels
/// do not take the call.
///
/// Heuristic: the largest tile that still yields at least one full wave of tiles (one per
/// multiprocessor); larger tiles reuse each loaded element of X and W for more outputs, but a
/// grid smaller than a wave leaves multiprocessors idle, which costs more. When no tile
/// yields a full wave, the smallest tile (the most tiles) is used. For f16/bf16 with
/// `k <= SHORT_K` the walk starts at the 64 x 64 tile: the main loop is then short, and the
/// per-tile fixed costs (filling the pipeline, the epilogue) are better overlapped by many small
/// blocks per multiprocessor (measured on an H200: 32768 x 1024 x 256 bf16 at p = 0.1 takes
/// 182 us with 64 x 64 tiles, 223 us with 128 x 256).
///
/// ```
/// use fusedrop::cuda::forward::{choose_config, ForwardConfig};
/// use fusedrop::LinearShape;
/// use half::bf16;
/// // An 8192 x 16384 output on a 132-SM H100: 4096 tiles of 128 x 256.
/// let big = LinearShape::new(8192, 16384, 4096);
/// assert_eq!(choose_config::<bf16>(big, 132), ForwardConfig::Tc128x256);
/// // An inference batch of 64 rows: 64 x 32 tiles give 128 tiles instead of 32.
/// let small = LinearShape::new(64, 4096, 4096);
/// assert_eq!(choose_config::<bf16>(small, 132), ForwardConfig::Tc64x32);
/// // A short reduction: small tiles.
/// let wide = LinearShape::new(32768, 1024, 256);
/// assert_eq!(choose_config::<bf16>(wide, 132), ForwardConfig::Tc64x64);
/// ```
pub fn choose_config<T: Element>(shape: LinearShape, sm_count: usize) -> ForwardConfig {
    let configs = ForwardConfig::all_for::<T>();
    let start = if T::NEEDS_SM80 && shape.k <= SHORT_K {
        configs
            .iter()
            .position(|&c| c == ForwardConfig::Tc64x64)
            .unwrap_or(0)
    } else {
        0
    };
    let candidates = &configs[start..];
    candidates
        .iter()
        .copied()
        .find(|c| c.tiles(shape) >= sm_count as u64)
        .unwrap_or(candidates[candidates.len() - 1])
}

/// The Hopper configuration for `shape` on a GPU that runs `resident` clusters at once (its
/// multiprocessor count for single blocks; [`LayerKernels::resident_clusters`]), or `None` when
/// the mma.sync kernel should run instead.
///
/// Heuristic (provisional: not yet measured on a GPU, see docs/KERNELS.md): the largest tile
/// that yields a full wave of tiles (one per multiprocessor; the grid is persistent, so more
/// tiles only lengthen each block's walk); failing that the smallest tile, as long as it yields
/// at least half a wave. Shapes with fewer tiles (an inference batch of 64 rows and a few
/// thousand columns) take split-K: of the split configurations whose clusters (one per tile)
/// all run at once (none where the driver counted no such cluster) and whose blocks get at
/// least 4 k-blocks each, the one with the most blocks,
/// then the least padding of m, then the larger tile. Without one (a short k), `None`: the
/// mma.sync kernel's small tiles.
///
/// ```
/// use fusedrop::cuda::forward::{choose_hopper_config, ForwardConfig};
/// use fusedrop::cuda::ResidentClusters;
/// use fusedrop::LinearShape;
/// let h100 = ResidentClusters::uniform(132);
/// let sq = LinearShape::new(4096, 4096, 4096);
/// assert_eq!(choose_hopper_config(sq, h100), Some(ForwardConfig::Wg128x256));
/// let mid = LinearShape::new(1024, 2560, 1024);
/// assert_eq!(choose_hopper_config(mid, h100), Some(ForwardConfig::Wg128x128));
/// // An inference batch: 32 tiles of 64 x 128, each split over a cluster of 4 blocks.
/// let small = LinearShape::new(64, 4096, 4096);
/// assert_eq!(choose_hopper_config(small, h100), Some(ForwardConfig::Wg64x128S4));
/// // A GPU that runs only 30 clusters of 4 at once: clusters of 2 instead of a second wave.
/// let fewer = ResidentClusters::new(132, [Some(66), Some(30), Some(16)]);
/// assert_eq!(choose_hopper_config(small, fewer), Some(ForwardConfig::Wg64x128S2));
/// // A GPU where no cluster of 2 or 4 can be placed: the mma.sync kernel.
/// let none = ResidentClusters::new(132, [Some(0), Some(0), Some(0)]);
/// assert_eq!(choose_hopper_config(small, none), None);
/// // Too short a reduction to split: the mma.sync kernel.
/// assert_eq!(choose_hopper_config(LinearShape::new(64, 4096, 256), h100), None);
/// ```
pub fn choose_hopper_config(
    shape: LinearShape,
    resident: ResidentClusters,
) -> Option<ForwardConfig> {
    let wave = resident.sm_count() as u64;
    if let Some(config) = ForwardConfig::HOPPER_WHOLE_K
        .iter()
        .copied()
        .find(|c| c.tiles(shape) >= wave)
    {
        return Some(config);
    }
    let smallest = ForwardConfig::Wg64x128;
    if 2 * smallest.tiles(shape) >= wave {
        return Some(smallest);
    }
    let k_blocks = shape.k.div_ceil(64) as u64;
    ForwardConfig::HOPPER_SPLIT_K
        .iter()
        .copied()
        .filter(|c| {
            resident.can_place(c.splits())
                && c.tiles(shape) <= resident.of(c.splits())
                && k_blocks >= 4 * u64::from(c.splits())
        })
        // max_by_key keeps the last of equals: reverse the order of preference.
        .rev()
        .max_by_key(|c| {
            let padded_m = shape.m.div_ceil(c.block_m()).saturating_mul(c.block_m());
            (
                c.tiles(shape) * u64::from(c.splits()),
                std::cmp::Reverse(padded_m),
                c.block_m(),
            )
        })
}

/// Why the Hopper kernels of `module` (forward_sm90, backward_sm90) cannot take a call for
/// element type `T` on the handle's GPU and build, or `None` when they can. The operands'
/// alignment is checked separately.
pub(crate) fn hopper_unavailable<T: Element>(
    kernels: &LayerKernels,
    module: &str,
) -> Option<String> {
    hopper_unavailable_on::<T>(kernels.compute_capability(), kernels.module_loaded(module))
}

/// Why the Hopper kernels cannot take a call for element type `T` on a GPU of compute
/// capability `cc` (`loaded`: whether their module was built and loaded for it), or `None`.
pub(crate) fn hopper_unavailable_on<T: Element>(cc: (i32, i32), loaded: bool) -> Option<String> {
    if !T::NEEDS_SM80 {
        return Some(format!("it runs f16 and bf16, not {}", T::NAME));
    }
    if cc != (9, 0) {
        return Some(format!(
            "it is built for compute capability 9.0 (sm_90a) only; this GPU has {}.{}",
            cc.0, cc.1
        ));
    }
    if !loaded {
        return Some(
            "the sm_90a modules are not loaded (this build's FUSEDROP_CUDA_ARCHS did not list \
             90, or the handle was made with LoadOptions { hopper: false })"
                .into(),
        );
    }
    None
}

/// Whether TMA can read X `[m, k]` at `x_ptr` and W `[n, k]` at `w_ptr`: both 16-byte aligned,
/// `k` a positive multiple of 8 (row strides of whole 16-byte units), m and n positive, and m,
/// n and k at most 2^31 - 1 (a tensor map's dimensions are 32-bit).
pub fn hopper_operands_fit(shape: LinearShape, x_ptr: u64, w_ptr: u64) -> bool {
    tensor_map::operand_fits(x_ptr, shape.m, shape.k)
        && tensor_map::operand_fits(w_ptr, shape.n, shape.k)
}

/// The configuration the forward takes for `shape` on a GPU and build that `gpu` describes,
/// with X and W that TMA can read when `operands_fit`: the Hopper heuristic's on compute
/// capability 9.0 with the sm_90a module (when it has one), else the portable one's.
fn choose_forward<T: Element>(
    gpu: &GpuFacts,
    shape: LinearShape,
    operands_fit: bool,
) -> ForwardConfig {
    let hopper = hopper_unavailable_on::<T>(gpu.compute_capability, gpu.forward_sm90_loaded);
    if operands_fit && hopper.is_none() {
        if let Some(config) = choose_hopper_config(shape, gpu.resident) {
            return config;
        }
    }
    choose_config::<T>(shape, gpu.resident.sm_count())
}

/// The configuration the forward takes for `shape` on a GPU and build that `gpu` describes, with
/// X and W 16-byte aligned ([`LayerKernels::forward_config_for`]).
fn aligned_forward_config<T: Element>(gpu: &GpuFacts, shape: LinearShape) -> ForwardConfig {
    choose_forward::<T>(gpu, shape, hopper_operands_fit(shape, 0, 0))
}

/// What [`LayerKernels::forward`] queues for `spec` (whose buffers' lengths it has checked) with
/// `config` (`None`: the heuristic's), on a GPU and build that `gpu` describes
/// ([`LayerKernels::gpu_facts`]), for operands at `addresses`: the configuration's
/// [`launch_plan`](ForwardConfig::launch_plan). A pure function of its inputs, so that the CPU
/// harness runs exactly what the wrapper would queue.
///
/// Errors: `config` not compiled for `T`; f16/bf16 below compute capability 8.0; a Hopper
/// `config` on a GPU or build without the Hopper kernels, or with operands TMA cannot read; the
/// grid's limits.
pub fn forward_plan<T: Element>(
    spec: &LayerSpec,
    config: Option<ForwardConfig>,
    gpu: &GpuFacts,
    addresses: &OperandAddresses,
) -> Result<LaunchPlan> {
    let shape = spec.shape;
    check_runs_here::<T>(config, shape.k, gpu)?;
    let config = match config {
        Some(config) => config,
        None => {
            let operands_fit = hopper_operands_fit(shape, addresses.x, addresses.w);
            choose_forward::<T>(gpu, shape, operands_fit)
        }
    };
    config.launch_plan::<T>(spec, addresses, gpu.resident)
}

/// The checks of [`forward_plan`] that depend on the element type, the configuration asked for,
/// `k` and the GPU, not on m, n or the buffers: `config` compiled for `T` and taking `k`;
/// f16/bf16 need compute capability 8.0, f32 7.5; a Hopper `config` needs the Hopper kernels on
/// this GPU and build. [`LayerKernels::forward`] makes them for an empty output too, so whether a
/// call is refused does not depend on m or n being 0.
fn check_runs_here<T: Element>(
    config: Option<ForwardConfig>,
    k: usize,
    gpu: &GpuFacts,
) -> Result<()> {
    if let Some(config) = config {
        config.check_compiled_for::<T>()?;
        config.check_k(k)?;
    }
    let (needed, what) = if T::NEEDS_SM80 {
        ((8, 0), "mma.sync tensor cores")
    } else {
        ((7, 5), "SIMT")
    };
    gpu.require_compute_capability(needed, &format!("the {} forward kernel ({what})", T::NAME))?;
    if let Some(config) = config.filter(|c| c.is_hopper()) {
        let loaded = gpu.forward_sm90_loaded;
        if let Some(why) = hopper_unavailable_on::<T>(gpu.compute_capability, loaded) {
            return Err(Error::UnsupportedDevice(format!(
                "forward config {}: {why}",
                config.name()
            )));
        }
    }
    Ok(())
}

/// Options of one forward call. `Default` takes the heuristic's configuration and the host's
/// (seed, subsequence) from the spec.
#[derive(Debug, Default)]
pub struct ForwardOptions<'a> {
    /// `None`: the configuration [`LayerKernels::forward_config_for`] picks (the heuristic).
    /// `Some`: this one (for tests, benchmarks and tuning); it must run on the element type
    /// ([`ForwardConfig::runs_on`]), and a Hopper configuration also needs compute capability
    /// 9.0, the sm_90a module and operands TMA can read ([`hopper_operands_fit`]), or the call
    /// returns an error saying which is missing.
    pub config: Option<ForwardConfig>,
    /// Where the kernel takes (seed, subsequence) from: [`SeedSource::Host`] uses
    /// `spec.dropout`'s; [`SeedSource::Device`] reads `[seed, subsequence]` from a device buffer
    /// when the kernel runs.
    pub seed: SeedSource<'a>,
}

impl LayerKernels {
    /// Whether the Hopper kernels (forward and backward) can run for element type `T` on this
    /// GPU: compute capability 9.0, f16 or bf16, the sm_90a modules built and loaded (not with
    /// `LoadOptions { hopper: false }`). Each call also needs
    /// operands TMA can read ([`hopper_operands_fit`]; for the backward see
    /// [`BackwardKernel::Hopper`](crate::cuda::backward::BackwardKernel::Hopper)).
    pub fn hopper_available<T: Element>(&self) -> bool {
        hopper_unavailable::<T>(self, "forward_sm90").is_none()
            && hopper_unavailable::<T>(self, "backward_sm90").is_none()
    }

    /// The configuration [`LayerKernels::forward`] picks for `shape` on this GPU, for X and W
    /// that start 16-byte aligned (as every cudarc allocation does; a view at an odd offset may
    /// take the mma.sync kernel instead, see [`hopper_operands_fit`]). Where TMA cannot read
    /// the operands whatever their addresses (`k` not a multiple of 8), it is the configuration
    /// the portable kernels take, as in the call.
    pub fn forward_config_for<T: Element>(&self, shape: LinearShape) -> ForwardConfig {
        aligned_forward_config::<T>(&self.gpu_facts(), shape)
    }

    /// Queues `Y = dropout_p(act(X·Wᵀ + b))` on the handle's stream, in one kernel launch.
    ///
    /// - `x`: `[m, k]`, `w`: `[n, k]` (the `nn.Linear` layout), `b`: `[n]` or `None`, `y`:
    ///   `[m, n]`, all row-major; shape, nonlinearity, dropout and shard geometry come from
    ///   `spec`.
    /// - `options`: the configuration (the heuristic's by default) and where (seed,
    ///   subsequence) comes from ([`ForwardOptions`]).
    ///
    /// Every argument is checked before anything is launched; an empty output (`m == 0` or
    /// `n == 0`) launches nothing, after the same checks (what is wrong for this GPU, element
    /// type, configuration, `k`, CUDA context or seed buffer is an error whatever m and n are;
    /// only the operands' alignment, which decides how they are read, is not checked when
    /// nothing is read). Every buffer must belong to the handle's CUDA context. f16 and bf16 need
    /// compute capability 8.0 or newer ([`Error::UnsupportedDevice`] otherwise), f32 7.5 or
    /// newer. Asynchronous: nothing
    /// waits for the kernel. See the module documentation for an example.
    pub fn forward<T: Element>(
        &self,
        spec: &LayerSpec,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        b: Option<&CudaView<'_, T>>,
        y: &mut impl DevicePtrMut<T>,
        options: ForwardOptions<'_>,
    ) -> Result<()> {
        let ForwardOptions { config, seed } = options;
        let stream = self.stream();
        let shape = spec.shape;
        let nonempty =
            validate::check_forward(shape, spec.dropout.p, &spec.geometry, lens(x, w, b, y))?;
        self.check_operand_contexts(x, w, b, y)?;
        self.check_seed_source(&seed)?;
        if !nonempty {
            // What `forward_plan` checks of this GPU, element type and configuration is wrong
            // for an empty output too.
            return check_runs_here::<T>(config, shape.k, &self.gpu_facts());
        }
        // Taken once: the addresses decide the path (TMA alignment), and the guards keep the
        // buffers borrowed until the launch is queued.
        let (x_ptr, _x_guard) = x.device_ptr(stream);
        let (w_ptr, _w_guard) = w.device_ptr(stream);
        let (addresses, _guards) = operand_addresses(stream, (x_ptr, w_ptr), b, y);
        let plan = forward_plan::<T>(spec, config, &self.gpu_facts(), &addresses)?;
        let mut params = MaskParams::new(&spec.dropout, &spec.geometry, shape.n);
        let _seed_guards = params.read_seed_from(seed, stream);
        // SAFETY: the plan is the library's (`forward_plan`), for these addresses; x holds m*k,
        // w n*k, b (when given) n and y m*n elements of T, and the seed buffer (when given) two
        // u64, all checked above, each borrowed by its guard until the launch is queued.
        unsafe { self.queue_plan::<T>(&plan, &|op| addresses.of(op), &params) }
    }
}

impl LayerKernels {
    /// An error unless X, W, b and Y belong to this handle's CUDA context.
    fn check_operand_contexts<T>(
        &self,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        b: Option<&CudaView<'_, T>>,
        y: &impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check_context("X", x.stream())?;
        self.check_context("W", w.stream())?;
        if let Some(b) = b {
            self.check_context("b", b.stream())?;
        }
        self.check_context("Y", y.stream())
    }
}

/// The entry point of `config` for `T` (`aligned`: the mma.sync kernel for operands that start
/// 16-byte aligned with k a multiple of 8).
fn function_name<T: Element>(config: ForwardConfig, aligned: bool) -> String {
    let variant = if aligned { "_aligned" } else { "" };
    format!("fusedrop_forward_{}{variant}_{}", config.name(), T::NAME)
}

/// The forward kernels' arguments: X and W as `operands` gives them (pointers, or TMA maps
/// followed for the Hopper sweep variants by Y's), then (b or null, y, m, n, k, relu, mask
/// parameters), as every forward entry point declares them (kernels/forward_tc.cuh,
/// forward_f32.cuh, forward_sm90.cuh, forward_sm90_sweep.cu).
fn forward_args(operands: &[KernelArg], spec: &LayerSpec, bias: bool) -> Vec<KernelArg> {
    let LinearShape { m, n, k } = spec.shape;
    let mut args = operands.to_vec();
    args.extend([
        if bias {
            KernelArg::Pointer(Operand::B)
        } else {
            KernelArg::Null
        },
        KernelArg::Pointer(Operand::Y),
        KernelArg::I64(m as i64),
        KernelArg::I64(n as i64),
        KernelArg::I64(k as i64),
        KernelArg::I32(i32::from(spec.nonlinearity == Nonlinearity::Relu)),
        KernelArg::MaskParams,
    ]);
    args
}

/// The TMA maps of X `[m, k]` and W `[n, k]`, in boxes of `box_m` and `box_n` rows.
fn operand_maps(shape: LinearShape, box_m: u32, box_n: u32) -> [KernelArg; 2] {
    [
        KernelArg::TensorMap {
            operand: Operand::X,
            rows: shape.m,
            cols: shape.k,
            box_rows: box_m,
        },
        KernelArg::TensorMap {
            operand: Operand::W,
            rows: shape.n,
            cols: shape.k,
            box_rows: box_n,
        },
    ]
}

const OPERAND_POINTERS: [KernelArg; 2] = [
    KernelArg::Pointer(Operand::X),
    KernelArg::Pointer(Operand::W),
];

/// The persistent launch of Hopper sweep variant `variant` on `shape`: a multicast variant's
/// cluster of `variant.cluster` blocks takes that many consecutive row tiles of one column tile
/// (each block loading `block_n / cluster` rows of every W box), so its tiles are
/// `cluster · block_m` x `block_n`; the tile count must fit an `i32`. The grid: min(tiles, the
/// clusters of that size `resident` says run at once) clusters.
pub fn sm90_sweep_launch(
    variant: &LaunchNumbers,
    shape: LinearShape,
    resident: ResidentClusters,
) -> Result<LaunchConfig> {
    if variant.block_m == 0 || variant.block_n == 0 || variant.cluster == 0 {
        return Err(invalid!(
            "sweep variant {} has a {} x {} tile in clusters of {}; expected every side and the \
             cluster at least 1 (a variant of launch_table::FORWARD_SM90_SWEEP)",
            variant.name,
            variant.block_m,
            variant.block_n,
            variant.cluster
        ));
    }
    let cluster_rows = u64::from(variant.block_m) * u64::from(variant.cluster);
    let tiles = (shape.m as u64)
        .div_ceil(cluster_rows)
        .saturating_mul((shape.n as u64).div_ceil(u64::from(variant.block_n)));
    if tiles > i32::MAX as u64 {
        return Err(invalid!(
            "{} x {} needs {tiles} tiles of {cluster_rows} x {}; expected at most 2^31-1",
            shape.m,
            shape.n,
            variant.block_n
        ));
    }
    Ok(resident.persistent_launch(tiles, variant.cluster, variant.threads, variant.smem_bytes))
}

/// The k-blocks of 64 that a stream-K variant shares out over its grid of `blocks` blocks for
/// `tiles` tiles of `k_blocks` each (kernels/gemm/sm90/stream_k.cuh, `StreamKWork`): none where
/// the tiles fill whole waves, else those of the last `blocks` + (tiles mod `blocks`) tiles (all
/// of them with fewer tiles than blocks).
fn stream_k_blocks(tiles: u64, blocks: u64, k_blocks: u64) -> u64 {
    let (waves, rest) = (tiles / blocks, tiles % blocks);
    let shared_tiles = match (waves, rest) {
        (_, 0) => 0,
        (0, _) => tiles,
        _ => blocks + rest,
    };
    shared_tiles * k_blocks
}

/// The workspace a sweep variant needs for `shape` on a GPU that runs `resident` clusters at
/// once: for a stream-K variant ([`LaunchNumbers::stream_k`], kernels/gemm/sm90/stream_k.cuh)
/// the flags of [`launch_table::STREAM_K_MAX_BLOCKS`] blocks (two u32 each, first, at the same
/// bytes whatever the shape), then one f32 partial tile (`block_m · block_n · 4` bytes) per
/// block of its grid; 0 for every other variant. The flags must be zero before the workspace's
/// first use (a zero-filled allocation), and every launch leaves them zero, so one workspace
/// serves every shape it is large enough for.
pub fn sweep_workspace_bytes(
    variant: &LaunchNumbers,
    shape: LinearShape,
    resident: ResidentClusters,
) -> Result<usize> {
    if !variant.stream_k {
        return Ok(0);
    }
    let blocks = sm90_sweep_launch(variant, shape, resident)?.grid_dim.0 as usize;
    (variant.block_m as usize)
        .checked_mul(variant.block_n as usize * 4)
        .and_then(|slot| slot.checked_mul(blocks))
        .and_then(|slots| slots.checked_add(STREAM_K_FLAG_BYTES))
        .ok_or_else(|| {
            invalid!(
                "sweep variant {}'s stream-K workspace ({blocks} blocks of {} x {} f32) \
                 overflows usize",
                variant.name,
                variant.block_m,
                variant.block_n
            )
        })
}

/// The bytes of a stream-K workspace's flags, before its partial tiles.
const STREAM_K_FLAG_BYTES: usize = launch_table::STREAM_K_MAX_BLOCKS as usize * 2 * 4;

impl LayerKernels {
    /// Queues the forward through `variant`, one of the tuning variants of the mma.sync kernel
    /// ([`launch_table::FORWARD_SWEEP`], kernels/forward_tc_sweep.cu), of the Hopper kernel
    /// ([`launch_table::FORWARD_SM90_SWEEP`], kernels/forward_sm90_sweep.cu) or of the f32 kernel
    /// ([`launch_table::FORWARD_F32_SWEEP`], kernels/forward_f32_sweep.cu), for `fusedrop
    /// sweep`: as [`forward`](Self::forward) with [`SeedSource::Host`], and the variant's shared
    /// memory within the GPU's limit. The f32 variants take f32 operands of any alignment. The
    /// others take f16 and bf16, with X and W that start 16-byte aligned and `k` a multiple of 8
    /// (they have no element-load path); the mma.sync ones need compute capability 8.0 or newer,
    /// the Hopper ones 9.0 and the sm_90a module, and the TMA-store ones
    /// ([`LaunchNumbers::tma_store`]) Y 16-byte aligned with `n` a multiple of 8. The stream-K
    /// ones ([`LaunchNumbers::stream_k`]) take `workspace`: at least [`sweep_workspace_bytes`],
    /// 16-byte aligned (as every cudarc allocation is), zero-filled before its first use (each
    /// launch leaves its flags zero again); the others ignore it. Each unmet condition is an
    /// error that says which.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_sweep_variant<T: Element>(
        &self,
        spec: &LayerSpec,
        variant: &LaunchNumbers,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        b: Option<&CudaView<'_, T>>,
        y: &mut impl DevicePtrMut<T>,
        workspace: Option<CudaViewMut<'_, u8>>,
    ) -> Result<()> {
        let family = SweepFamily::of::<T>(variant)?;
        let shape = spec.shape;
        let nonempty =
            validate::check_forward(shape, spec.dropout.p, &spec.geometry, lens(x, w, b, y))?;
        self.check_operand_contexts(x, w, b, y)?;
        let mut workspace = workspace.filter(|_| variant.stream_k);
        if let Some(ws) = &workspace {
            self.check_context("the workspace", ws.stream())?;
        }
        // What is wrong for this GPU is an error for an empty output too.
        match family {
            SweepFamily::Hopper => {
                if let Some(why) = hopper_unavailable::<T>(self, family.module()) {
                    return Err(Error::UnsupportedDevice(format!(
                        "sweep variant {}: {why}",
                        variant.name
                    )));
                }
            }
            SweepFamily::MmaSync => {
                self.require_compute_capability((8, 0), "the mma.sync sweep variants")?
            }
            SweepFamily::Simt => {}
        }
        if !nonempty {
            return Ok(());
        }
        let needs = sweep_workspace_bytes(variant, shape, self.resident_clusters())?;
        if let Some(ws) = &workspace {
            if ws.len() < needs {
                return Err(invalid!(
                    "sweep variant {} needs a workspace of {needs} bytes for {shape:?}; got {}",
                    variant.name,
                    ws.len()
                ));
            }
        }
        let stream = self.stream();
        let (x_ptr, _x_guard) = x.device_ptr(stream);
        let (w_ptr, _w_guard) = w.device_ptr(stream);
        let (workspace_ptr, _workspace_guard) = match workspace.as_mut() {
            Some(ws) => {
                let (ptr, guard) = ws.device_ptr_mut(stream);
                (Some(ptr), Some(guard))
            }
            None => (None, None),
        };
        let (addresses, _guards) = operand_addresses(stream, (x_ptr, w_ptr), b, y);
        let plan = forward_sweep_plan::<T>(
            variant,
            spec,
            &addresses,
            workspace_ptr,
            self.resident_clusters(),
        )?;
        let params = MaskParams::new(&spec.dropout, &spec.geometry, shape.n);
        let address = |op| match op {
            Operand::Workspace => workspace_ptr,
            _ => addresses.of(op),
        };
        // SAFETY: the plan is the variant's (`forward_sweep_plan`), for these addresses; x holds
        // m*k, w n*k, b (when given) n and y m*n elements of T (checked above), the workspace
        // (stream-K variants) at least `sweep_workspace_bytes` with its flags zero (the
        // caller's part of the contract above), each borrowed by its guard until the launch is
        // queued; the seed comes from the host.
        unsafe { self.queue_plan::<T>(&plan, &address, &params) }
    }
}

/// The operands' addresses: X's and W's as taken, b's and y's with the guards (cudarc's
/// stream-ordering records) that keep them borrowed until the launch is queued.
fn operand_addresses<'a, T>(
    stream: &'a CudaStream,
    (x, w): (u64, u64),
    b: Option<&'a CudaView<'_, T>>,
    y: &'a mut impl DevicePtrMut<T>,
) -> (OperandAddresses, [Option<SyncOnDrop<'a>>; 2]) {
    let (b_ptr, b_guard) = match b {
        Some(view) => {
            let (ptr, guard) = view.device_ptr(stream);
            (Some(ptr), Some(guard))
        }
        None => (None, None),
    };
    let (y_ptr, y_guard) = y.device_ptr_mut(stream);
    let addresses = OperandAddresses {
        x,
        w,
        b: b_ptr,
        y: y_ptr,
    };
    (addresses, [b_guard, Some(y_guard)])
}

/// The buffers' lengths, for validation.
fn lens<T>(
    x: &impl DevicePtr<T>,
    w: &impl DevicePtr<T>,
    b: Option<&CudaView<'_, T>>,
    y: &impl DevicePtrMut<T>,
) -> ForwardLens {
    ForwardLens {
        x: x.len(),
        w: w.len(),
        b: b.map(|b| b.len()),
        y: y.len(),
    }
}

/// Which kernel family a sweep variant belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SweepFamily {
    /// kernels/forward_tc_sweep.cu (f16, bf16).
    MmaSync,
    /// kernels/forward_sm90_sweep.cu (f16, bf16).
    Hopper,
    /// kernels/forward_f32_sweep.cu (f32).
    Simt,
}

impl SweepFamily {
    /// The family of `variant`, which must be compiled for `T`.
    fn of<T: Element>(variant: &LaunchNumbers) -> Result<Self> {
        let family = if launch_table::FORWARD_SM90_SWEEP.contains(variant) {
            SweepFamily::Hopper
        } else if launch_table::FORWARD_F32_SWEEP.contains(variant) {
            SweepFamily::Simt
        } else if launch_table::FORWARD_SWEEP.contains(variant) {
            SweepFamily::MmaSync
        } else {
            let names: Vec<&str> = launch_table::FORWARD_SWEEP
                .iter()
                .chain(&launch_table::FORWARD_SM90_SWEEP)
                .chain(&launch_table::FORWARD_F32_SWEEP)
                .map(|v| v.name)
                .collect();
            return Err(invalid!(
                "{} is not a sweep variant; expected one of {names:?}",
                variant.name
            ));
        };
        // The f32 element type is the one that needs no sm_80 (`Element::NEEDS_SM80`).
        let simt = family == SweepFamily::Simt;
        if simt == T::NEEDS_SM80 {
            return Err(invalid!(
                "sweep variant {} is compiled for {}; got {}",
                variant.name,
                if simt { "f32" } else { "f16 and bf16" },
                T::NAME
            ));
        }
        Ok(family)
    }

    const fn module(self) -> &'static str {
        match self {
            SweepFamily::MmaSync => "forward_tc_sweep",
            SweepFamily::Hopper => "forward_sm90_sweep",
            SweepFamily::Simt => "forward_f32_sweep",
        }
    }
}

/// What a stream-K variant's launch on `blocks` blocks needs beyond any variant's: a 16-byte
/// aligned workspace, at most [`launch_table::STREAM_K_MAX_BLOCKS`] blocks (the workspace's flag
/// area), and its shared k-blocks times the blocks within the kernel's 32-bit arithmetic
/// (kernels/gemm/sm90/stream_k.cuh).
fn check_stream_k(
    variant: &LaunchNumbers,
    shape: LinearShape,
    blocks: u32,
    workspace: Option<u64>,
) -> Result<()> {
    match workspace {
        None => {
            return Err(invalid!(
                "sweep variant {} is stream-K: it needs a workspace (sweep_workspace_bytes), got \
                 none",
                variant.name
            ))
        }
        Some(at) if at % 16 != 0 => {
            return Err(invalid!(
                "sweep variant {} is stream-K: its workspace must start 16-byte aligned; got \
                 {at:#x}",
                variant.name
            ))
        }
        Some(_) => {}
    }
    if blocks > launch_table::STREAM_K_MAX_BLOCKS {
        return Err(invalid!(
            "sweep variant {} runs {blocks} blocks; its workspace has flags for at most {}",
            variant.name,
            launch_table::STREAM_K_MAX_BLOCKS
        ));
    }
    let tiles = (shape.m as u64).div_ceil(u64::from(variant.block_m))
        * (shape.n as u64).div_ceil(u64::from(variant.block_n));
    let k_blocks = (shape.k as u64).div_ceil(u64::from(tensor_map::BOX_K));
    let shared = stream_k_blocks(tiles, u64::from(blocks), k_blocks);
    if shared.saturating_mul(u64::from(blocks)) > i32::MAX as u64 {
        return Err(invalid!(
            "sweep variant {} shares {shared} k-blocks of {shape:?} over {blocks} blocks; \
             expected their product below 2^31 (k at most about 2^31 / (2 * blocks^2) * 64)",
            variant.name
        ));
    }
    Ok(())
}

/// What [`LayerKernels::forward_sweep_variant`] launches for `spec` through `variant` with the
/// operands at `addresses`, on a GPU that runs `resident` clusters at once: the Hopper variants
/// take the maps of X (boxes of 64 x `block_m`), W (64 x `block_n / cluster`: each block of a
/// multicast cluster loads its share of every W box) and Y (64 x 64 for the TMA-store variants,
/// an unused map otherwise) on [`sm90_sweep_launch`]'s grid, and the stream-K ones the
/// workspace at `workspace` last; the others X and W as pointers on the folded grid. Errors:
/// `variant` is not a sweep variant for `T`; f16/bf16 X or W not 16-byte aligned or `k` not a
/// multiple of 8; a TMA-store variant's Y not 16-byte aligned or `n` not a multiple of 8; a
/// stream-K variant without a 16-byte aligned workspace, or with more k-blocks to share than its
/// 32-bit arithmetic takes; the grid's limits.
pub fn forward_sweep_plan<T: Element>(
    variant: &LaunchNumbers,
    spec: &LayerSpec,
    addresses: &OperandAddresses,
    workspace: Option<u64>,
    resident: ResidentClusters,
) -> Result<LaunchPlan> {
    let family = SweepFamily::of::<T>(variant)?;
    let shape = spec.shape;
    let (x_addr, w_addr, y_addr) = (addresses.x, addresses.w, addresses.y);
    if family != SweepFamily::Simt && !hopper_operands_fit(shape, x_addr, w_addr) {
        return Err(invalid!(
            "sweep variant {} takes X and W that start 16-byte aligned, k a positive multiple \
             of 8, and m, n and k positive and below 2^31; got x at {x_addr:#x}, w at \
             {w_addr:#x}, m = {}, n = {}, k = {}",
            variant.name,
            shape.m,
            shape.n,
            shape.k
        ));
    }
    let (grid, args) = if family == SweepFamily::Hopper {
        if variant.tma_store && !tensor_map::operand_fits(y_addr, shape.m, shape.n) {
            return Err(invalid!(
                "sweep variant {} stores Y by TMA: Y must start 16-byte aligned and n be a \
                 multiple of 8; got y at {y_addr:#x}, n = {}",
                variant.name,
                shape.n
            ));
        }
        let [map_x, map_w] =
            operand_maps(shape, variant.block_m, variant.block_n / variant.cluster);
        let map_y = if variant.tma_store {
            KernelArg::TensorMap {
                operand: Operand::Y,
                rows: shape.m,
                cols: shape.n,
                box_rows: tensor_map::BOX_K,
            }
        } else {
            KernelArg::UnusedTensorMap
        };
        let grid = sm90_sweep_launch(variant, shape, resident)?.grid_dim;
        let mut args = forward_args(&[map_x, map_w, map_y], spec, addresses.b.is_some());
        if variant.stream_k {
            check_stream_k(variant, shape, grid.0, workspace)?;
            args.push(KernelArg::Pointer(Operand::Workspace));
        }
        (grid, args)
    } else {
        let launch = folded_launch(
            shape,
            variant.block_m,
            variant.block_n,
            variant.threads,
            variant.smem_bytes,
        )?;
        (
            launch.grid_dim,
            forward_args(&OPERAND_POINTERS, spec, addresses.b.is_some()),
        )
    };
    Ok(LaunchPlan {
        module: family.module(),
        function: format!("fusedrop_{}_{}", variant.name, T::NAME),
        grid,
        threads: variant.threads,
        smem_bytes: variant.smem_bytes,
        cluster: variant.cluster,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn default_options_take_the_heuristic_and_the_host_seed() {
        let options = ForwardOptions::default();
        assert_eq!(options.config, None);
        assert!(matches!(options.seed, SeedSource::Host));
    }

    #[test]
    fn heuristic_prefers_the_largest_tile_with_a_full_wave() {
        let sq = LinearShape::new(4096, 4096, 4096);
        assert_eq!(choose_config::<f16>(sq, 132), ForwardConfig::Tc128x256);
        let mid = LinearShape::new(1024, 2560, 1024);
        assert_eq!(choose_config::<f16>(mid, 132), ForwardConfig::Tc128x128);
        assert_eq!(choose_config::<f32>(sq, 132), ForwardConfig::Simt128x128);
        let odd = LinearShape::new(1000, 1000, 1000);
        assert_eq!(choose_config::<bf16>(odd, 132), ForwardConfig::Tc64x64);
        assert_eq!(choose_config::<f32>(odd, 132), ForwardConfig::Simt64x64);
        let wide = LinearShape::new(32768, 1024, 256);
        assert_eq!(choose_config::<bf16>(wide, 132), ForwardConfig::Tc64x64);
        assert_eq!(choose_config::<f32>(wide, 132), ForwardConfig::Simt128x128);
        let small = LinearShape::new(64, 4096, 4096);
        assert_eq!(choose_config::<f32>(small, 132), ForwardConfig::Simt64x32);
        let tiny = LinearShape::new(1, 1, 1);
        assert_eq!(choose_config::<bf16>(tiny, 108), ForwardConfig::Tc64x32);
        assert_eq!(choose_config::<f32>(tiny, 108), ForwardConfig::Simt64x32);
    }

    #[test]
    fn configs_belong_to_their_element_type() {
        assert!(ForwardConfig::all_for::<f16>()
            .iter()
            .all(|c| c.uses_tensor_cores()));
        assert!(ForwardConfig::all_for::<f32>()
            .iter()
            .all(|c| !c.uses_tensor_cores()));
    }

    #[test]
    fn grid_folds_rows_beyond_the_y_limit() {
        let shape = LinearShape::new(10_000_000, 100, 8);
        let config = ForwardConfig::Tc64x32
            .launch_config(shape, ResidentClusters::uniform(132))
            .unwrap();
        assert_eq!(config.grid_dim, (4, 65_535, 1));
        assert_eq!(config.block_dim, (128, 1, 1));
        let empty_rows = ForwardConfig::Simt64x64
            .launch_config(LinearShape::new(0, 5, 3), ResidentClusters::uniform(132))
            .unwrap();
        assert_eq!(empty_rows.grid_dim.1, 1);
        // More column tiles than a grid's x holds (2^31 - 1).
        let too_wide = LinearShape::new(1, 1 << 40, 8);
        let err = ForwardConfig::Tc64x32
            .launch_config(too_wide, ResidentClusters::uniform(132))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("column tiles of 32; expected at most 2^31-1"),
            "{err}"
        );
    }

    #[test]
    fn hopper_grids_are_persistent() {
        let sq = LinearShape::new(4096, 4096, 4096);
        let config = ForwardConfig::Wg128x256
            .launch_config(sq, ResidentClusters::uniform(132))
            .unwrap();
        assert_eq!(config.grid_dim, (132, 1, 1));
        assert_eq!(config.block_dim, (384, 1, 1));
        let few = LinearShape::new(100, 300, 64);
        let config = ForwardConfig::Wg128x128
            .launch_config(few, ResidentClusters::uniform(132))
            .unwrap();
        assert_eq!(
            config.grid_dim,
            (3, 1, 1),
            "one block per tile when tiles < SMs"
        );
        let huge = LinearShape::new(1 << 30, 1 << 20, 8);
        assert!(ForwardConfig::Wg64x128
            .launch_config(huge, ResidentClusters::uniform(132))
            .is_err());
    }

    fn addresses(x: u64, w: u64, b: Option<u64>, y: u64) -> OperandAddresses {
        OperandAddresses { x, w, b, y }
    }

    /// The arguments after X's and W's: `b` (the bias or null), y, m, n, k, relu, the mask
    /// parameters.
    fn tail(b: KernelArg, m: i64, n: i64, k: i64, relu: i32) -> [KernelArg; 7] {
        [
            b,
            KernelArg::Pointer(Operand::Y),
            KernelArg::I64(m),
            KernelArg::I64(n),
            KernelArg::I64(k),
            KernelArg::I32(relu),
            KernelArg::MaskParams,
        ]
    }

    /// A GPU of compute capability `cc` with `sm_count` multiprocessors, with or without the
    /// Hopper modules loaded.
    fn described_gpu(cc: (i32, i32), sm_count: usize, hopper_loaded: bool) -> GpuFacts {
        GpuFacts {
            compute_capability: cc,
            resident: ResidentClusters::uniform(sm_count),
            forward_sm90_loaded: hopper_loaded,
            backward_sm90_loaded: hopper_loaded,
        }
    }

    fn layer_spec(m: usize, n: usize, k: usize, nonlinearity: Nonlinearity) -> LayerSpec {
        LayerSpec::new(
            LinearShape::new(m, n, k),
            nonlinearity,
            crate::DropoutSpec::new(0.1, 1, 2),
        )
    }

    #[test]
    fn mma_sync_plans_pick_the_entry_point_by_alignment() {
        let spec = layer_spec(300, 200, 64, Nonlinearity::Relu);
        let resident = ResidentClusters::uniform(132);
        let aligned = addresses(0x1000, 0x2000, Some(0x3000), 0x4000);
        let plan = ForwardConfig::Tc64x64
            .launch_plan::<bf16>(&spec, &aligned, resident)
            .unwrap();
        assert_eq!(plan.module, "forward_tc");
        assert_eq!(plan.function, "fusedrop_forward_tc64x64_aligned_bf16");
        assert_eq!(plan.grid, (4, 5, 1));
        assert_eq!((plan.threads, plan.cluster), (128, 1));
        let mut want = vec![
            KernelArg::Pointer(Operand::X),
            KernelArg::Pointer(Operand::W),
        ];
        want.extend(tail(KernelArg::Pointer(Operand::B), 300, 200, 64, 1));
        assert_eq!(plan.args, want);
        // W two elements past a 16-byte boundary, and k not a multiple of 8: the general kernel.
        let plan = ForwardConfig::Tc64x64
            .launch_plan::<bf16>(&spec, &addresses(0x1000, 0x2004, None, 0x4000), resident)
            .unwrap();
        assert_eq!(plan.function, "fusedrop_forward_tc64x64_bf16");
        assert_eq!(plan.args[2], KernelArg::Null);
        let odd_k = layer_spec(300, 200, 60, Nonlinearity::Identity);
        let plan = ForwardConfig::Tc64x64
            .launch_plan::<f16>(&odd_k, &aligned, resident)
            .unwrap();
        assert_eq!(plan.function, "fusedrop_forward_tc64x64_f16");
        assert_eq!(plan.args[7], KernelArg::I32(0));
        // The f32 kernels have one entry point for every alignment.
        let plan = ForwardConfig::Simt64x32
            .launch_plan::<f32>(&spec, &aligned, resident)
            .unwrap();
        assert_eq!(plan.function, "fusedrop_forward_simt64x32_f32");
        assert_eq!(plan.module, "forward_f32");
    }

    #[test]
    fn hopper_plans_pass_tensor_maps_in_the_tiles_boxes() {
        let spec = layer_spec(300, 200, 320, Nonlinearity::Relu);
        let at = addresses(0x1000, 0x2000, Some(0x3002), 0x4002);
        let plan = ForwardConfig::Wg128x128S2
            .launch_plan::<f16>(&spec, &at, ResidentClusters::uniform(6))
            .unwrap();
        assert_eq!(plan.module, "forward_sm90");
        assert_eq!(plan.function, "fusedrop_forward_wg128x128s2_f16");
        // 6 tiles; 3 clusters of 2 run at once on 6 multiprocessors.
        assert_eq!((plan.grid, plan.cluster), ((6, 1, 1), 2));
        let mut want = vec![
            KernelArg::TensorMap {
                operand: Operand::X,
                rows: 300,
                cols: 320,
                box_rows: 128,
            },
            KernelArg::TensorMap {
                operand: Operand::W,
                rows: 200,
                cols: 320,
                box_rows: 128,
            },
        ];
        want.extend(tail(KernelArg::Pointer(Operand::B), 300, 200, 320, 1));
        assert_eq!(plan.args, want);
        for (x, w, k) in [(0x1008, 0x2000, 320), (0x1000, 0x2000, 324)] {
            let err = ForwardConfig::Wg64x128
                .launch_plan::<bf16>(
                    &layer_spec(300, 200, k, Nonlinearity::Relu),
                    &addresses(x, w, None, 0x4000),
                    ResidentClusters::uniform(132),
                )
                .unwrap_err();
            assert!(err.to_string().contains("by TMA"), "{err}");
        }
        let err = ForwardConfig::Wg64x128
            .launch_plan::<f32>(&spec, &at, ResidentClusters::uniform(132))
            .unwrap_err();
        assert!(err.to_string().contains("not compiled for f32"), "{err}");
    }

    #[test]
    fn hopper_sweep_plans_split_w_boxes_over_the_multicast_cluster() {
        let spec = layer_spec(520, 512, 128, Nonlinearity::Relu);
        let at = addresses(0x1000, 0x2000, None, 0x4000);
        let by_name = |name: &str| {
            *launch_table::FORWARD_SM90_SWEEP
                .iter()
                .find(|v| v.name == name)
                .unwrap()
        };
        let multicast_tma_store = by_name("forward_sweep_wg128x256_mc2_tmastore");
        let plan = forward_sweep_plan::<bf16>(
            &multicast_tma_store,
            &spec,
            &at,
            None,
            ResidentClusters::uniform(132),
        )
        .unwrap();
        assert_eq!(plan.module, "forward_sm90_sweep");
        assert_eq!(
            plan.function,
            "fusedrop_forward_sweep_wg128x256_mc2_tmastore_bf16"
        );
        // Clusters of 2 row tiles of 128: 3 x 2 cluster tiles, one cluster each.
        assert_eq!((plan.grid, plan.cluster), ((12, 1, 1), 2));
        let mut want = vec![
            KernelArg::TensorMap {
                operand: Operand::X,
                rows: 520,
                cols: 128,
                box_rows: 128,
            },
            KernelArg::TensorMap {
                operand: Operand::W,
                rows: 512,
                cols: 128,
                box_rows: 128,
            },
            KernelArg::TensorMap {
                operand: Operand::Y,
                rows: 520,
                cols: 512,
                box_rows: 64,
            },
        ];
        want.extend(tail(KernelArg::Null, 520, 512, 128, 1));
        assert_eq!(plan.args, want);
        let direct = forward_sweep_plan::<f16>(
            &by_name("forward_sweep_wg128x256_st3"),
            &spec,
            &addresses(0x1000, 0x2000, None, 0x4002),
            None,
            ResidentClusters::uniform(132),
        )
        .unwrap();
        assert_eq!(direct.args[2], KernelArg::UnusedTensorMap);
        let err = forward_sweep_plan::<f16>(
            &multicast_tma_store,
            &spec,
            &addresses(0x1000, 0x2000, None, 0x4002),
            None,
            ResidentClusters::uniform(132),
        )
        .unwrap_err();
        assert!(err.to_string().contains("stores Y by TMA"), "{err}");
        let err = forward_sweep_plan::<f32>(
            &multicast_tma_store,
            &spec,
            &at,
            None,
            ResidentClusters::uniform(132),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("compiled for f16 and bf16"),
            "{err}"
        );
        // X one element off a 16-byte boundary: TMA cannot read it.
        let err = forward_sweep_plan::<f16>(
            &multicast_tma_store,
            &spec,
            &addresses(0x1002, 0x2000, None, 0x4000),
            None,
            ResidentClusters::uniform(132),
        )
        .unwrap_err();
        assert!(err.to_string().contains("16-byte aligned"), "{err}");
        // A production configuration's numbers are not a sweep variant.
        let err = forward_sweep_plan::<f16>(
            &launch_table::FORWARD_TC64X64,
            &spec,
            &at,
            None,
            ResidentClusters::uniform(132),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not a sweep variant"), "{err}");
        // A variant of one family with the other family's element type.
        let err = SweepFamily::of::<f32>(&launch_table::FORWARD_SWEEP[0]).unwrap_err();
        assert!(
            err.to_string()
                .contains("is compiled for f16 and bf16; got f32"),
            "{err}"
        );
        let err = SweepFamily::of::<bf16>(&launch_table::FORWARD_F32_SWEEP[0]).unwrap_err();
        assert!(
            err.to_string().contains("is compiled for f32; got bf16"),
            "{err}"
        );
        assert_eq!(
            SweepFamily::of::<f16>(&launch_table::FORWARD_SM90_SWEEP[0]).unwrap(),
            SweepFamily::Hopper
        );
    }

    #[test]
    fn stream_k_plans_pass_the_workspace_last_and_size_it_per_block() {
        let sk = *launch_table::FORWARD_SM90_SWEEP
            .iter()
            .find(|v| v.stream_k)
            .unwrap();
        assert_eq!(sk.name, "forward_sweep_wg128x256_sk");
        // up on 132 multiprocessors: 4096 tiles are 31 waves and 4 tiles, so the last 136 tiles'
        // 64 k-blocks each are shared out; 4096 tiles on 128 blocks fill whole waves.
        assert_eq!(stream_k_blocks(4096, 132, 64), 136 * 64);
        assert_eq!(stream_k_blocks(4096, 128, 64), 0);
        assert_eq!(stream_k_blocks(5, 7, 3), 15);
        let spec = layer_spec(520, 512, 128, Nonlinearity::Relu);
        let at = addresses(0x1000, 0x2000, None, 0x4000);
        let resident = ResidentClusters::uniform(5);
        let plan = forward_sweep_plan::<f16>(&sk, &spec, &at, Some(0x8000), resident).unwrap();
        // 5 x 2 tiles of 128 x 256 on 5 blocks.
        assert_eq!(plan.grid, (5, 1, 1));
        assert_eq!(plan.args.len(), 11);
        assert_eq!(
            plan.args.last(),
            Some(&KernelArg::Pointer(Operand::Workspace))
        );
        assert_eq!(plan.args[2], KernelArg::UnusedTensorMap);
        assert_eq!(
            sweep_workspace_bytes(&sk, spec.shape, resident).unwrap(),
            512 * 8 + 5 * 128 * 256 * 4
        );
        // The 128 x 128 variant's slots are half as large: 5 x 4 tiles on 5 blocks.
        let sk128 = launch_table::FORWARD_SM90_SWEEP
            .iter()
            .find(|v| v.name == "forward_sweep_wg128x128_sk")
            .unwrap();
        assert!(sk128.stream_k);
        assert_eq!(
            sweep_workspace_bytes(sk128, spec.shape, resident).unwrap(),
            512 * 8 + 5 * 128 * 128 * 4
        );
        let others = &launch_table::FORWARD_SM90_SWEEP[0];
        assert_eq!(
            sweep_workspace_bytes(others, spec.shape, resident).unwrap(),
            0
        );
        // A hand-built variant whose slot would hold 2^64 bytes is refused, not wrapped.
        let huge = LaunchNumbers {
            block_m: 1 << 31,
            block_n: 1 << 31,
            ..sk
        };
        let error = sweep_workspace_bytes(&huge, spec.shape, resident).unwrap_err();
        assert!(
            error.to_string().contains(
                "stream-K workspace (1 blocks of 2147483648 x 2147483648 f32) overflows usize"
            ),
            "{error}"
        );
        let no_workspace = forward_sweep_plan::<f16>(others, &spec, &at, None, resident).unwrap();
        assert!(!no_workspace
            .args
            .contains(&KernelArg::Pointer(Operand::Workspace)));
        let err = forward_sweep_plan::<f16>(&sk, &spec, &at, None, resident).unwrap_err();
        assert!(err.to_string().contains("needs a workspace"), "{err}");
        let err = forward_sweep_plan::<f16>(&sk, &spec, &at, Some(0x8004), resident).unwrap_err();
        assert!(
            err.to_string().contains("16-byte aligned; got 0x8004"),
            "{err}"
        );
        // 133 tiles on 132 blocks share 133 tiles' k-blocks: with k = 2^20 (16 384 k-blocks)
        // that is 2 179 072 k-blocks, 287 637 504 with the blocks, within 2^31; with k = 2^23
        // it is not.
        let many = |k: usize| layer_spec(128 * 133, 256, k, Nonlinearity::Relu);
        let resident = ResidentClusters::uniform(132);
        forward_sweep_plan::<f16>(&sk, &many(1 << 20), &at, Some(0x8000), resident).unwrap();
        let err = forward_sweep_plan::<f16>(&sk, &many(1 << 23), &at, Some(0x8000), resident)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected their product below 2^31"),
            "{err}"
        );
        // 700 tiles on a GPU of 600 multiprocessors: more blocks than the workspace has flags
        // for.
        let wide = layer_spec(128 * 700, 256, 1024, Nonlinearity::Relu);
        let resident = ResidentClusters::uniform(600);
        let err = forward_sweep_plan::<f16>(&sk, &wide, &at, Some(0x8000), resident).unwrap_err();
        assert!(err.to_string().contains("flags for at most 512"), "{err}");
    }

    #[test]
    fn forward_plans_refuse_what_the_gpu_or_build_cannot_run() {
        let facts = |cc, loaded| described_gpu(cc, 132, loaded);
        let spec = layer_spec(256, 256, 256, Nonlinearity::Relu);
        let at = addresses(0x1000, 0x2000, None, 0x3000);
        let unsupported = |result: Result<LaunchPlan>| match result {
            Err(Error::UnsupportedDevice(why)) => why,
            other => panic!("expected UnsupportedDevice, got {other:?}"),
        };
        let why = unsupported(forward_plan::<f16>(&spec, None, &facts((7, 5), false), &at));
        assert!(why.contains("compute capability 8.0"), "{why}");
        let why = unsupported(forward_plan::<bf16>(
            &spec,
            Some(ForwardConfig::Wg128x128),
            &facts((8, 0), false),
            &at,
        ));
        assert!(why.contains("9.0 (sm_90a) only"), "{why}");
        let why = unsupported(forward_plan::<bf16>(
            &spec,
            Some(ForwardConfig::Wg128x128),
            &facts((9, 0), false),
            &at,
        ));
        assert!(why.contains("sm_90a modules are not loaded"), "{why}");
        // f32 needs 7.5 (the oldest architecture built), which the call says instead of
        // failing on the missing module.
        let why = unsupported(forward_plan::<f32>(&spec, None, &facts((7, 0), false), &at));
        assert!(
            why.contains("f32 forward kernel (SIMT) needs compute capability 7.5"),
            "{why}"
        );
        // f32 runs on everything newer; the heuristic keeps the portable kernels off Hopper.
        let plan = forward_plan::<f32>(&spec, None, &facts((7, 5), false), &at).unwrap();
        assert_eq!(plan.module, "forward_f32");
        let plan = forward_plan::<bf16>(&spec, None, &facts((8, 9), false), &at).unwrap();
        assert_eq!(plan.module, "forward_tc");
    }

    #[test]
    fn the_reported_configuration_is_the_one_an_aligned_call_plans() {
        // `forward_config_for` against what `forward_plan` queues for 16-byte aligned operands,
        // on a Hopper GPU and on an A100: the same kernel and grid, also where k rules TMA out.
        let hopper = described_gpu((9, 0), 132, true);
        let a100 = described_gpu((8, 0), 108, false);
        let at = addresses(0x1000, 0x2000, Some(0x3000), 0x4000);
        let mut tma = 0;
        for gpu in [hopper, a100] {
            for (m, n, k) in [
                (4096, 4096, 4096),
                (64, 4096, 4096),
                (32768, 1024, 256),
                (4096, 4096, 4100),
                (1000, 1000, 100),
                (257, 136, 7),
            ] {
                let spec = layer_spec(m, n, k, Nonlinearity::Relu);
                let reported = aligned_forward_config::<bf16>(&gpu, spec.shape);
                let planned = forward_plan::<bf16>(&spec, None, &gpu, &at).unwrap();
                let expected = reported
                    .launch_plan::<bf16>(&spec, &at, gpu.resident)
                    .unwrap();
                assert_eq!(planned, expected, "{gpu:?}, {m} x {n} x {k}");
                assert_eq!(reported.is_hopper(), gpu == hopper && k % 8 == 0);
                tma += usize::from(reported.is_hopper());
            }
        }
        assert_eq!(tma, 3, "the Hopper shapes whose k TMA takes");
    }

    #[test]
    fn what_an_empty_output_is_refused_for_does_not_depend_on_m_or_n() {
        // The checks `forward` makes for an empty output: a split-K configuration with k too
        // short is refused there as it is for m, n >= 1 (the launch's own check).
        let hopper = described_gpu((9, 0), 132, true);
        let config = Some(ForwardConfig::Wg128x128S4);
        let empty = check_runs_here::<bf16>(config, 128, &hopper).unwrap_err();
        let spec = layer_spec(64, 4096, 128, Nonlinearity::Relu);
        let at = addresses(0x1000, 0x2000, None, 0x3000);
        let launched = forward_plan::<bf16>(&spec, config, &hopper, &at).unwrap_err();
        assert_eq!(empty.to_string(), launched.to_string());
        assert!(
            empty
                .to_string()
                .contains("k = 128 is too short; expected k >= 256"),
            "{empty}"
        );
        assert!(check_runs_here::<bf16>(config, 256, &hopper).is_ok());
    }

    #[test]
    fn hopper_heuristic_keeps_small_grids_on_mma_sync() {
        let wide = LinearShape::new(32768, 1024, 256);
        assert_eq!(
            choose_hopper_config(wide, ResidentClusters::uniform(132)),
            Some(ForwardConfig::Wg128x256)
        );
        let half_wave = LinearShape::new(640, 1024, 4096);
        assert_eq!(
            choose_hopper_config(half_wave, ResidentClusters::uniform(132)),
            Some(ForwardConfig::Wg64x128)
        );
        assert_eq!(
            choose_hopper_config(LinearShape::new(1, 1, 8), ResidentClusters::uniform(132)),
            None
        );
    }

    #[test]
    fn hopper_heuristic_splits_k_for_few_tiles() {
        // small: 32 tiles of 64 x 128 (or of 128 x 128, half of each padding), 64 k-blocks.
        let small = LinearShape::new(64, 4096, 4096);
        assert_eq!(
            choose_hopper_config(small, ResidentClusters::uniform(132)),
            Some(ForwardConfig::Wg64x128S4)
        );
        // 32 tiles of 128 x 128 or 64 of 64 x 128: 128 blocks either way, the larger tile wins.
        let rows = LinearShape::new(1024, 512, 4096);
        assert_eq!(
            choose_hopper_config(rows, ResidentClusters::uniform(132)),
            Some(ForwardConfig::Wg128x128S4)
        );
        // 8 k-blocks: two per block at most for 4 splits, so 2 splits (4 k-blocks each).
        let short = LinearShape::new(64, 4096, 512);
        assert_eq!(
            choose_hopper_config(short, ResidentClusters::uniform(132)),
            Some(ForwardConfig::Wg64x128S2)
        );
        // 60 tiles of 64 x 128: only 2 splits fit in a wave of 132.
        let sixty = LinearShape::new(64, 60 * 128, 4096);
        assert_eq!(
            choose_hopper_config(sixty, ResidentClusters::uniform(132)),
            Some(ForwardConfig::Wg64x128S2)
        );
        // Fewer multiprocessors (H100 PCIe: 114): 32 x 4 = 128 blocks do not fit in a wave.
        assert_eq!(
            choose_hopper_config(small, ResidentClusters::uniform(114)),
            Some(ForwardConfig::Wg64x128S2)
        );
    }

    #[test]
    fn split_k_grids_are_whole_clusters() {
        let small = LinearShape::new(64, 4096, 4096);
        let config = ForwardConfig::Wg64x128S4
            .launch_config(small, ResidentClusters::uniform(132))
            .unwrap();
        assert_eq!(config.grid_dim, (128, 1, 1));
        // More tiles than clusters fit: 33 clusters of 4 walk them.
        let more = LinearShape::new(64, 8192, 4096);
        let config = ForwardConfig::Wg64x128S4
            .launch_config(more, ResidentClusters::uniform(132))
            .unwrap();
        assert_eq!(config.grid_dim, (132, 1, 1));
        let config = ForwardConfig::Wg128x128S2
            .launch_config(more, ResidentClusters::uniform(101))
            .unwrap();
        assert_eq!(config.grid_dim, (100, 1, 1));
        // A GPU that runs fewer clusters at once than its multiprocessors would hold: the grid
        // is what runs at once (the clusters then walk more tiles each).
        let fewer = ResidentClusters::new(132, [Some(60), Some(30), Some(14)]);
        let config = ForwardConfig::Wg64x128S4
            .launch_config(more, fewer)
            .unwrap();
        assert_eq!(config.grid_dim, (120, 1, 1));
        let config = ForwardConfig::Wg128x128S2
            .launch_config(more, fewer)
            .unwrap();
        assert_eq!(config.grid_dim, (120, 1, 1));
        // Single blocks: one per multiprocessor.
        let config = ForwardConfig::Wg128x128.launch_config(more, fewer).unwrap();
        assert_eq!(config.grid_dim, (64, 1, 1));
        // k too short for one k-block per block of the cluster.
        let err = ForwardConfig::Wg64x128S4
            .launch_config(
                LinearShape::new(64, 4096, 200),
                ResidentClusters::uniform(132),
            )
            .unwrap_err();
        assert!(err.to_string().contains("expected k >= 256"), "{err}");
    }

    #[test]
    fn hopper_sweep_grids_are_whole_clusters() {
        use launch_table::FORWARD_SM90_SWEEP;
        let sq = LinearShape::new(4096, 4096, 4096);
        let by_name = |name: &str| {
            FORWARD_SM90_SWEEP
                .iter()
                .find(|v| v.name == name)
                .copied()
                .unwrap()
        };
        let mc2 = by_name("forward_sweep_wg128x256_mc2");
        let st3 = by_name("forward_sweep_wg128x256_st3");
        // 16 x 16 cluster tiles of 256 x 256: 66 clusters of 2 on 132 multiprocessors.
        assert_eq!(
            sm90_sweep_launch(&mc2, sq, ResidentClusters::uniform(132))
                .unwrap()
                .grid_dim,
            (132, 1, 1)
        );
        assert_eq!(
            sm90_sweep_launch(&mc2, sq, ResidentClusters::uniform(133))
                .unwrap()
                .grid_dim,
            (132, 1, 1)
        );
        assert_eq!(
            sm90_sweep_launch(&st3, sq, ResidentClusters::uniform(133))
                .unwrap()
                .grid_dim,
            (133, 1, 1)
        );
        // Two cluster tiles (one row of 256 x 256 over n = 300): two clusters.
        let few = LinearShape::new(100, 300, 64);
        assert_eq!(
            sm90_sweep_launch(&mc2, few, ResidentClusters::uniform(132))
                .unwrap()
                .grid_dim,
            (4, 1, 1)
        );
        assert_eq!(
            sm90_sweep_launch(&st3, few, ResidentClusters::uniform(132))
                .unwrap()
                .grid_dim,
            (2, 1, 1)
        );
        let too_many = |shape| {
            let error = sm90_sweep_launch(&st3, shape, ResidentClusters::uniform(132)).unwrap_err();
            assert!(
                error.to_string().contains("expected at most 2^31-1"),
                "{shape:?}: {error}"
            );
        };
        too_many(LinearShape::new(1 << 30, 1 << 22, 8));
        // Tile counts past u64 saturate into the same error, not an overflow.
        let beyond = LinearShape::new(1 << 40, 1 << 40, 8);
        too_many(beyond);
        assert_eq!(ForwardConfig::Wg64x128.tiles(beyond), u64::MAX);
        // A caller-built variant with an empty tile is refused, not divided by.
        let empty = LaunchNumbers { cluster: 0, ..st3 };
        let error = sm90_sweep_launch(&empty, sq, ResidentClusters::uniform(132)).unwrap_err();
        assert!(error.to_string().contains("expected every side"), "{error}");
        for v in &FORWARD_SM90_SWEEP {
            // The names say it too (the kernels' static_asserts check the field).
            assert_eq!(v.tma_store, v.name.contains("tmastore"), "{}", v.name);
            assert_eq!(v.block_n % (8 * v.cluster), 0, "{}: W slices", v.name);
        }
    }

    #[test]
    fn hopper_configs_run_on_halves_only() {
        for config in ForwardConfig::HOPPER {
            assert!(config.runs_on::<f16>() && config.runs_on::<bf16>());
            assert!(!config.runs_on::<f32>());
            assert!(config.uses_tensor_cores() && config.is_hopper());
        }
    }
}
