//! The launch numbers of every kernel configuration, written once.
//!
//! The Rust launch code (src/cuda/forward.rs, src/cuda/backward.rs) reads this table, and build.rs
//! turns it into the header `fusedrop_launch_table.h`, against which every kernel file
//! `static_assert`s its config structs (`kBlockM`, `kBlockN`, `kThreads`, `kSmemBytes`). A
//! number edited here and not in the kernel, or the other way round, fails the nvcc build and the
//! CPU harness build. Clustered kernels (split-K, W multicast) also check their cluster size
//! (`kClusterBlocks`) against `cluster`. This file is also compiled into build.rs, so it uses nothing but `core`.

/// One kernel configuration's launch numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchNumbers {
    /// The constant's name in the generated header (`fusedrop::launch::<name>`).
    pub name: &'static str,
    /// Output rows per tile.
    pub block_m: u32,
    /// Output columns per tile.
    pub block_n: u32,
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory per block, in bytes.
    pub smem_bytes: u32,
    /// Blocks per cluster along x (the kernel's `__cluster_dims__`; the grid's x is a multiple
    /// of it): the split-K factor of the Hopper split-K kernels, the multicast factor of the
    /// Hopper multicast variants, 1 for every other kernel.
    pub cluster: u32,
    /// Whether the kernel stores its output through shared memory and TMA (the Hopper forward
    /// sweep's `*_tmastore` variants: it then takes Y's tensor map, which needs Y 16-byte aligned
    /// and n a multiple of 8; the Hopper backward's `*_tmastore`: the gradient's, which
    /// needs it 16-byte aligned and k a multiple of 8). Checked at build time against the
    /// config's `kTmaStore` where it has one (every Hopper forward config, production and sweep,
    /// and the backward's TMA-store configs).
    pub tma_store: bool,
    /// Whether the kernel shares the last tiles' k-blocks out over its persistent grid
    /// (stream-K, the Hopper forward sweep's `*_sk`: it then takes a workspace after its other
    /// arguments, `forward::sweep_workspace_bytes`). Checked at build time against the config's
    /// `kStreamK` where it has one (every Hopper forward config; no backward config has one).
    pub stream_k: bool,
}

const fn numbers(
    name: &'static str,
    block_m: u32,
    block_n: u32,
    threads: u32,
    smem_bytes: u32,
) -> LaunchNumbers {
    LaunchNumbers {
        name,
        block_m,
        block_n,
        threads,
        smem_bytes,
        cluster: 1,
        tma_store: false,
        stream_k: false,
    }
}

/// The same numbers for a kernel that runs in clusters of `cluster` blocks.
const fn clustered(numbers: LaunchNumbers, cluster: u32) -> LaunchNumbers {
    LaunchNumbers { cluster, ..numbers }
}

/// The same numbers for a kernel that stores its output by TMA (`tma_store`).
const fn tma_stored(numbers: LaunchNumbers) -> LaunchNumbers {
    LaunchNumbers {
        tma_store: true,
        ..numbers
    }
}

/// The same numbers for a stream-K kernel (`stream_k`).
const fn stream_k(numbers: LaunchNumbers) -> LaunchNumbers {
    LaunchNumbers {
        stream_k: true,
        ..numbers
    }
}

/// kernels/forward_tc.cu, `Tc128x256`.
pub const FORWARD_TC128X256: LaunchNumbers = numbers("forward_tc128x256", 128, 256, 256, 98_304);
/// kernels/forward_tc.cu, `Tc128x128`.
pub const FORWARD_TC128X128: LaunchNumbers = numbers("forward_tc128x128", 128, 128, 128, 65_536);
/// kernels/forward_tc.cu, `Tc64x128`.
pub const FORWARD_TC64X128: LaunchNumbers = numbers("forward_tc64x128", 64, 128, 128, 49_152);
/// kernels/forward_tc.cu, `Tc64x64`.
pub const FORWARD_TC64X64: LaunchNumbers = numbers("forward_tc64x64", 64, 64, 128, 40_960);
/// kernels/forward_tc.cu, `Tc64x32`.
pub const FORWARD_TC64X32: LaunchNumbers = numbers("forward_tc64x32", 64, 32, 128, 36_864);
/// kernels/forward_f32.cu, `Simt128x128`.
pub const FORWARD_SIMT128X128: LaunchNumbers =
    numbers("forward_simt128x128", 128, 128, 256, 16_896);
/// kernels/forward_f32.cu, `Simt64x64`.
pub const FORWARD_SIMT64X64: LaunchNumbers = numbers("forward_simt64x64", 64, 64, 256, 17_408);
/// kernels/forward_f32.cu, `Simt64x32`.
pub const FORWARD_SIMT64X32: LaunchNumbers = numbers("forward_simt64x32", 64, 32, 128, 13_312);
/// kernels/forward_sm90.cu, `Wg128x256` (Hopper; persistent grid, so no grid rule here).
pub const FORWARD_WG128X256: LaunchNumbers = numbers("forward_wg128x256", 128, 256, 384, 197_696);
/// kernels/forward_sm90.cu, `Wg128x128`.
pub const FORWARD_WG128X128: LaunchNumbers = numbers("forward_wg128x128", 128, 128, 384, 197_728);
/// kernels/forward_sm90.cu, `Wg64x128`.
pub const FORWARD_WG64X128: LaunchNumbers = numbers("forward_wg64x128", 64, 128, 384, 197_760);
/// kernels/forward_sm90.cu, `Wg64x128Split2` (split-K over clusters of 2 blocks).
pub const FORWARD_WG64X128S2: LaunchNumbers =
    clustered(numbers("forward_wg64x128s2", 64, 128, 384, 230_560), 2);
/// kernels/forward_sm90.cu, `Wg64x128Split4`.
pub const FORWARD_WG64X128S4: LaunchNumbers =
    clustered(numbers("forward_wg64x128s4", 64, 128, 384, 230_560), 4);
/// kernels/forward_sm90.cu, `Wg128x128Split2`.
pub const FORWARD_WG128X128S2: LaunchNumbers =
    clustered(numbers("forward_wg128x128s2", 128, 128, 384, 230_512), 2);
/// kernels/forward_sm90.cu, `Wg128x128Split4`.
pub const FORWARD_WG128X128S4: LaunchNumbers =
    clustered(numbers("forward_wg128x128s4", 128, 128, 384, 230_512), 4);
/// kernels/backward_simt.cu, `Simt128x128`.
pub const BACKWARD_SIMT128X128: LaunchNumbers =
    numbers("backward_simt128x128", 128, 128, 256, 16_896);
/// kernels/backward_simt.cu, `Simt64x64`.
pub const BACKWARD_SIMT64X64: LaunchNumbers = numbers("backward_simt64x64", 64, 64, 256, 17_408);
/// kernels/backward_simt.cu, `Simt64x32`.
pub const BACKWARD_SIMT64X32: LaunchNumbers = numbers("backward_simt64x32", 64, 32, 128, 13_312);
/// kernels/backward_tc.cu, `Tc128x128`.
pub const BACKWARD_TC128X128: LaunchNumbers = numbers("backward_tc128x128", 128, 128, 128, 73_728);
/// kernels/backward_tc.cu, `Tc64x64`.
pub const BACKWARD_TC64X64: LaunchNumbers = numbers("backward_tc64x64", 64, 64, 128, 36_864);
/// kernels/backward_tc.cu, `Tc64x32`.
pub const BACKWARD_TC64X32: LaunchNumbers = numbers("backward_tc64x32", 64, 32, 128, 30_720);
/// kernels/backward_sm90.cu, `Wg128x128` (Hopper; persistent grid).
pub const BACKWARD_WG128X128: LaunchNumbers = numbers("backward_wg128x128", 128, 128, 384, 197_728);
/// kernels/backward_sm90.cu, `Wg128x256`.
pub const BACKWARD_WG128X256: LaunchNumbers = numbers("backward_wg128x256", 128, 256, 384, 197_704);
/// kernels/backward_sm90.cu, `Wg128x128TmaStore` (the gradient stored by TMA).
pub const BACKWARD_WG128X128_TMASTORE: LaunchNumbers = tma_stored(numbers(
    "backward_wg128x128_tmastore",
    128,
    128,
    384,
    231_424,
));
/// kernels/backward_sm90.cu, `Wg128x256TmaStore`.
pub const BACKWARD_WG128X256_TMASTORE: LaunchNumbers = tma_stored(numbers(
    "backward_wg128x256_tmastore",
    128,
    256,
    384,
    231_424,
));
/// kernels/backward_sm90.cu, `Wg128x128Split2` (split-K over clusters of 2 blocks).
pub const BACKWARD_WG128X128S2: LaunchNumbers =
    clustered(numbers("backward_wg128x128s2", 128, 128, 384, 215_152), 2);
/// kernels/backward_sm90.cu, `Wg128x128Split4`.
pub const BACKWARD_WG128X128S4: LaunchNumbers =
    clustered(numbers("backward_wg128x128s4", 128, 128, 384, 215_152), 4);
/// kernels/backward_sm90.cu, `Wg128x128Split8`.
pub const BACKWARD_WG128X128S8: LaunchNumbers =
    clustered(numbers("backward_wg128x128s8", 128, 128, 384, 215_152), 8);

/// kernels/forward_tc_sweep.cu: the tuning variants of the mma.sync forward that `fusedrop sweep`
/// times (tile, k slice BK, sets of warp fragments, copies spread over the k16 steps, the
/// epilogue's interleaved stores), in the order it prints them.
pub const FORWARD_SWEEP: [LaunchNumbers; 13] = [
    numbers("forward_sweep_tc128x128_bk32_f1", 128, 128, 128, 65_536),
    numbers("forward_sweep_tc128x128_bk32_f2", 128, 128, 128, 65_536),
    numbers("forward_sweep_tc128x128_bk64_f1", 128, 128, 128, 131_072),
    numbers("forward_sweep_tc128x128_bk64_f2", 128, 128, 128, 131_072),
    numbers("forward_sweep_tc128x256_bk32_f1", 128, 256, 256, 98_304),
    numbers("forward_sweep_tc128x256_bk64_f1", 128, 256, 256, 147_456),
    numbers("forward_sweep_tc128x256_bk64_f2", 128, 256, 256, 147_456),
    numbers(
        "forward_sweep_tc128x128_bk32_f1_spread",
        128,
        128,
        128,
        65_536,
    ),
    numbers(
        "forward_sweep_tc128x128_bk64_f1_spread",
        128,
        128,
        128,
        131_072,
    ),
    numbers(
        "forward_sweep_tc128x256_bk32_f1_spread",
        128,
        256,
        256,
        98_304,
    ),
    numbers(
        "forward_sweep_tc128x256_bk64_f1_spread",
        128,
        256,
        256,
        147_456,
    ),
    numbers(
        "forward_sweep_tc128x128_bk32_f1_interleaved",
        128,
        128,
        128,
        65_536,
    ),
    numbers(
        "forward_sweep_tc128x256_bk32_f1_interleaved",
        128,
        256,
        256,
        98_304,
    ),
];

/// kernels/forward_f32_sweep.cu: the tuning variants of the f32 forward that `fusedrop sweep`
/// times (two sets of register fragments at each production tile; 16-deep slices at 128 x 128),
/// in the order it prints them.
pub const FORWARD_F32_SWEEP: [LaunchNumbers; 4] = [
    numbers("forward_sweep_simt128x128_f2", 128, 128, 256, 16_896),
    numbers("forward_sweep_simt64x64_f2", 64, 64, 256, 17_408),
    numbers("forward_sweep_simt128x128_bk16", 128, 128, 256, 33_792),
    numbers("forward_sweep_simt128x128_bk16_f2", 128, 128, 256, 33_792),
];

/// kernels/forward_sm90_sweep.cu: the tuning variants of the Hopper forward that `fusedrop sweep`
/// times (stages, TMA-store epilogue, W multicast over clusters of 2, ping-pong consumers, the
/// tile order's group, per-lane mask draws, stream-K), in the order it prints them. `block_m` is
/// one block's rows; a multicast variant's cluster takes `cluster` row tiles.
pub const FORWARD_SM90_SWEEP: [LaunchNumbers; 16] = [
    numbers("forward_sweep_wg128x256_st3", 128, 256, 384, 148_528),
    tma_stored(numbers(
        "forward_sweep_wg128x256_tmastore",
        128,
        256,
        384,
        215_040,
    )),
    clustered(
        numbers("forward_sweep_wg128x256_mc2", 128, 256, 384, 197_696),
        2,
    ),
    tma_stored(clustered(
        numbers(
            "forward_sweep_wg128x256_mc2_tmastore",
            128,
            256,
            384,
            215_040,
        ),
        2,
    )),
    tma_stored(numbers(
        "forward_sweep_wg128x128_tmastore",
        128,
        128,
        384,
        198_656,
    )),
    clustered(
        numbers("forward_sweep_wg128x128_mc2", 128, 128, 384, 197_728),
        2,
    ),
    numbers("forward_sweep_wg64x256_pp", 64, 256, 384, 205_920),
    tma_stored(numbers(
        "forward_sweep_wg64x256_pp_tmastore",
        64,
        256,
        384,
        231_424,
    )),
    numbers("forward_sweep_wg128x128_pp", 128, 128, 384, 197_744),
    tma_stored(numbers(
        "forward_sweep_wg128x128_pp_tmastore",
        128,
        128,
        384,
        231_424,
    )),
    numbers("forward_sweep_wg128x256_g4", 128, 256, 384, 197_696),
    numbers("forward_sweep_wg128x256_g16", 128, 256, 384, 197_696),
    numbers("forward_sweep_wg128x128_g16", 128, 128, 384, 197_728),
    numbers("forward_sweep_wg128x256_unpaired", 128, 256, 384, 197_696),
    stream_k(numbers(
        "forward_sweep_wg128x256_sk",
        128,
        256,
        384,
        197_696,
    )),
    stream_k(numbers(
        "forward_sweep_wg128x128_sk",
        128,
        128,
        384,
        197_728,
    )),
];

/// Every configuration, for build.rs.
pub const ALL: [LaunchNumbers; 61] = [
    FORWARD_TC128X256,
    FORWARD_TC128X128,
    FORWARD_TC64X128,
    FORWARD_TC64X64,
    FORWARD_TC64X32,
    FORWARD_SIMT128X128,
    FORWARD_SIMT64X64,
    FORWARD_SIMT64X32,
    FORWARD_WG128X256,
    FORWARD_WG128X128,
    FORWARD_WG64X128,
    FORWARD_WG64X128S2,
    FORWARD_WG64X128S4,
    FORWARD_WG128X128S2,
    FORWARD_WG128X128S4,
    BACKWARD_SIMT128X128,
    BACKWARD_SIMT64X64,
    BACKWARD_SIMT64X32,
    BACKWARD_TC128X128,
    BACKWARD_TC64X64,
    BACKWARD_TC64X32,
    BACKWARD_WG128X128,
    BACKWARD_WG128X256,
    BACKWARD_WG128X128_TMASTORE,
    BACKWARD_WG128X256_TMASTORE,
    BACKWARD_WG128X128S2,
    BACKWARD_WG128X128S4,
    BACKWARD_WG128X128S8,
    FORWARD_SWEEP[0],
    FORWARD_SWEEP[1],
    FORWARD_SWEEP[2],
    FORWARD_SWEEP[3],
    FORWARD_SWEEP[4],
    FORWARD_SWEEP[5],
    FORWARD_SWEEP[6],
    FORWARD_SWEEP[7],
    FORWARD_SWEEP[8],
    FORWARD_SWEEP[9],
    FORWARD_SWEEP[10],
    FORWARD_SWEEP[11],
    FORWARD_SWEEP[12],
    FORWARD_SM90_SWEEP[0],
    FORWARD_SM90_SWEEP[1],
    FORWARD_SM90_SWEEP[2],
    FORWARD_SM90_SWEEP[3],
    FORWARD_SM90_SWEEP[4],
    FORWARD_SM90_SWEEP[5],
    FORWARD_SM90_SWEEP[6],
    FORWARD_SM90_SWEEP[7],
    FORWARD_SM90_SWEEP[8],
    FORWARD_SM90_SWEEP[9],
    FORWARD_SM90_SWEEP[10],
    FORWARD_SM90_SWEEP[11],
    FORWARD_SM90_SWEEP[12],
    FORWARD_SM90_SWEEP[13],
    FORWARD_SM90_SWEEP[14],
    FORWARD_SM90_SWEEP[15],
    FORWARD_F32_SWEEP[0],
    FORWARD_F32_SWEEP[1],
    FORWARD_F32_SWEEP[2],
    FORWARD_F32_SWEEP[3],
];

/// The largest grid of a stream-K kernel (kernels/gemm/sm90/stream_k.cuh, `kStreamKMaxBlocks`):
/// its workspace starts with the flags of this many blocks, two u32 each, at the same bytes
/// whatever the grid.
pub const STREAM_K_MAX_BLOCKS: u32 = 512;

/// Grid-stride cap of the mma.sync and SIMT backward kernels and of the split-K sums
/// (`kMaxBlocks`); the Hopper backward's grids are persistent.
pub const BACKWARD_MAX_BLOCKS: u32 = 1 << 20;

/// Threads per block of the split-K sum kernels (`fusedrop_backward_split_sum_<dtype>`,
/// kernels/backward_split_k.cuh, in the modules of backward_tc.cu and backward_simt.cu), which
/// take it as their `__launch_bounds__`.
pub const SPLIT_SUM_THREADS: u32 = 256;
