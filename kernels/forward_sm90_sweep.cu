// Tuning variants of the Hopper forward (not used by the library's calls): the kernel of
// forward_sm90.cuh instantiated with the choices issue 10 leaves to measurement, so that one
// `fusedrop sweep` run on an H100 / H200 times each against the production configs:
//   - pipeline depth: wg128x256 with 3 stages instead of 4 (what the TMA-store variant keeps);
//   - the TMA-store epilogue (kTmaStore): Y staged in shared memory (128-byte swizzle) and
//     written by TMA stores that drain while the warpgroup starts its next tile, instead of
//     4-byte stores straight from the fragment;
//   - W multicast over clusters of 2 blocks (kMulticast = 2): the two blocks take consecutive
//     row tiles of a column tile, and each loads half of every W box for both, halving W's L2
//     traffic (the 2-CTA cluster of pranjalssh/fast.cu's fastest kernel);
//   - both together, at 128 x 256 (fast.cu's final configuration has 3 stages, a cluster of 2 and
//     TMA stores), and the 128 x 128 tile with each;
//   - ping-pong consumers (CUTLASS's KernelTmaWarpSpecializedPingpong): tiles of 64 x 256, each
//     one consumer warpgroup's, the two taking alternate tiles, so that one warpgroup's epilogue
//     (bias, Philox, stores) runs while the other's main loop keeps the tensor cores busy; with
//     direct stores (5 stages) and with TMA stores (4 stages); and tiles of 128 x 128, each one
//     consumer warpgroup's as two blocks of 64 rows (CUTLASS's ping-pong tile: 1.33 times the
//     L2 traffic of 128 x 256 per FLOP where 64 x 256 reads 1.67 times), with direct stores (6
//     stages) and with TMA stores (5 stages);
//   - the tile order's group (GROUP_ROWS, gemm/tile_scheduler.cuh): 4 or 16 row tiles per group
//     instead of 8 at 128 x 256, 16 at 128 x 128. The 132 tiles one wave of an H100/H200 holds
//     read the fewest distinct rows of X and columns of W when the wave's footprint is square:
//     for 128 x 256 tiles about 16 row tiles by 8 column tiles, rather than 8 by 16.5;
//   - unpaired mask draws (kPairedDraws false, gemm/sm90/epilogue.cuh): wg128x256 with every
//     lane drawing the Philox calls of both its rows itself, as before the lanes of a pair
//     shared them, so the sweep shows what sharing buys (or costs: one shuffle per group);
//   - stream-K (kStreamK, gemm/sm90/stream_k.cuh): wg128x256 and wg128x128 with the last G + R
//     tiles' k-blocks shared out evenly over the G blocks, so that the last partial wave of
//     tiles leaves no multiprocessor idle (on 132 multiprocessors about 3 % of up, sq and down
//     at 128 x 256; at 128 x 128, 1.5 % of up and 3 % of sq and down).
// Every variant but stream-K computes each output element with the same wgmma sequence (the
// same k-blocks in the same order, wgmma m64n(N)k16 with the N of the production config of its
// column tile: wg128x256 for BN = 256, wg128x128 for BN = 128) and the same epilogue arithmetic,
// so their outputs are bit-identical to that config's. Stream-K sums a tile's pieces in another
// order: its output matches the reference, and is bit-identical to itself from run to run.
//
// Entry points: fusedrop_forward_sweep_<variant>_<f16|bf16>(map_x, map_w, map_y, b, y, m, n, k,
// relu, mp): X's map with 64 x kBlockM boxes, W's with 64 x kBlockN / kMulticast boxes, Y's (the
// TMA-store variants only; ignored by the others) with 64 x 64 boxes, all 128-byte swizzle;
// block = 384 threads, dynamic shared memory = kSmemBytes, grid = (blocks, 1, 1) with blocks a
// multiple of kClusterBlocks; numbers in src/cuda/launch_table.rs (FORWARD_SM90_SWEEP), which
// the static_asserts below check. The stream-K variants take one more argument, the workspace
// (gemm/sm90/stream_k.cuh: 16-byte aligned, its flags zero).
#include "forward_sm90.cuh"

namespace fusedrop {
namespace forward {

struct Sweep128x256Stages3 : WgConfig<128, 256, 3> {};
struct Sweep128x256TmaStore : WgConfig<128, 256, 3, 1, 1, true> {};
struct Sweep128x256Multicast2 : WgConfig<128, 256, 4, 1, 2> {};
struct Sweep128x256Multicast2TmaStore : WgConfig<128, 256, 3, 1, 2, true> {};
struct Sweep128x128TmaStore : WgConfig<128, 128, 5, 1, 1, true> {};
struct Sweep128x128Multicast2 : WgConfig<128, 128, 6, 1, 2> {};
struct Sweep64x256PingPong : WgConfig<64, 256, 5, 1, 1, false, true> {};
struct Sweep64x256PingPongTmaStore : WgConfig<64, 256, 4, 1, 1, true, true> {};
struct Sweep128x128PingPong : WgConfig<128, 128, 6, 1, 1, false, true> {};
struct Sweep128x128PingPongTmaStore : WgConfig<128, 128, 5, 1, 1, true, true> {};
struct Sweep128x256Group4 : WgConfig<128, 256, 4, 1, 1, false, false, 4> {};
struct Sweep128x256Group16 : WgConfig<128, 256, 4, 1, 1, false, false, 16> {};
struct Sweep128x128Group16 : WgConfig<128, 128, 6, 1, 1, false, false, 16> {};
struct Sweep128x256Unpaired : Wg128x256 {
    static constexpr bool kPairedDraws = false;
};
struct Sweep128x256StreamK : WgConfig<128, 256, 4, 1, 1, false, false, kGroupRows, true> {};
struct Sweep128x128StreamK : WgConfig<128, 128, 6, 1, 1, false, false, kGroupRows, true> {};

}  // namespace forward
}  // namespace fusedrop

// CLUSTER: nothing, or the multicast variants' __cluster_dims__ (a plain launch with gridDim.x a
// multiple of kClusterBlocks then runs them in clusters).
#define FUSEDROP_FORWARD_SM90_SWEEP(CONFIG, NAME, SUFFIX, T, CLUSTER)                           \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads, 1)        \
        CLUSTER fusedrop_forward_sweep_##NAME##_##SUFFIX(                                       \
            const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w, \
            const __grid_constant__ CUtensorMap map_y, const T* __restrict__ b,                 \
            T* __restrict__ y, long long m, long long n, long long k, int relu,                 \
            fusedrop::MaskParams mp) {                                                          \
        fusedrop::forward::forward_sm90<T, fusedrop::forward::CONFIG>(&map_x, &map_w, &map_y, b, \
                                                                     y, m, n, k, relu, mp);    \
    }

#define FUSEDROP_FORWARD_SM90_SWEEP_TYPES(CONFIG, NAME)               \
    FUSEDROP_FORWARD_SM90_SWEEP(CONFIG, NAME, f16, __half, )          \
    FUSEDROP_FORWARD_SM90_SWEEP(CONFIG, NAME, bf16, __nv_bfloat16, )

#define FUSEDROP_FORWARD_SM90_SWEEP_CLUSTER_TYPES(CONFIG, NAME)                           \
    FUSEDROP_FORWARD_SM90_SWEEP(CONFIG, NAME, f16, __half,                                \
                                __cluster_dims__(fusedrop::forward::CONFIG::kClusterBlocks, 1, 1)) \
    FUSEDROP_FORWARD_SM90_SWEEP(CONFIG, NAME, bf16, __nv_bfloat16,                        \
                                __cluster_dims__(fusedrop::forward::CONFIG::kClusterBlocks, 1, 1))

FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Stages3, wg128x256_st3)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x256TmaStore, wg128x256_tmastore)
FUSEDROP_FORWARD_SM90_SWEEP_CLUSTER_TYPES(Sweep128x256Multicast2, wg128x256_mc2)
FUSEDROP_FORWARD_SM90_SWEEP_CLUSTER_TYPES(Sweep128x256Multicast2TmaStore, wg128x256_mc2_tmastore)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x128TmaStore, wg128x128_tmastore)
FUSEDROP_FORWARD_SM90_SWEEP_CLUSTER_TYPES(Sweep128x128Multicast2, wg128x128_mc2)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep64x256PingPong, wg64x256_pp)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep64x256PingPongTmaStore, wg64x256_pp_tmastore)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x128PingPong, wg128x128_pp)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x128PingPongTmaStore, wg128x128_pp_tmastore)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Group4, wg128x256_g4)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Group16, wg128x256_g16)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x128Group16, wg128x128_g16)
FUSEDROP_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Unpaired, wg128x256_unpaired)

#define FUSEDROP_FORWARD_SM90_SWEEP_STREAM_K(CONFIG, NAME, SUFFIX, T)                          \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads, 1)        \
        fusedrop_forward_sweep_##NAME##_##SUFFIX(                                               \
            const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w, \
            const __grid_constant__ CUtensorMap map_y, const T* __restrict__ b,                 \
            T* __restrict__ y, long long m, long long n, long long k, int relu,                 \
            fusedrop::MaskParams mp, unsigned char* __restrict__ workspace) {                   \
        fusedrop::forward::forward_sm90<T, fusedrop::forward::CONFIG>(                          \
            &map_x, &map_w, &map_y, b, y, m, n, k, relu, mp, workspace);                        \
    }
FUSEDROP_FORWARD_SM90_SWEEP_STREAM_K(Sweep128x256StreamK, wg128x256_sk, f16, __half)
FUSEDROP_FORWARD_SM90_SWEEP_STREAM_K(Sweep128x256StreamK, wg128x256_sk, bf16, __nv_bfloat16)
FUSEDROP_FORWARD_SM90_SWEEP_STREAM_K(Sweep128x128StreamK, wg128x128_sk, f16, __half)
FUSEDROP_FORWARD_SM90_SWEEP_STREAM_K(Sweep128x128StreamK, wg128x128_sk, bf16, __nv_bfloat16)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
#define FUSEDROP_SM90_SWEEP_MATCHES(CONFIG, NAME)                                               \
    static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::CONFIG>(               \
                      fusedrop::launch::forward_sweep_##NAME),                                 \
                  #CONFIG " disagrees with src/cuda/launch_table.rs");
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256Stages3, wg128x256_st3)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256TmaStore, wg128x256_tmastore)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256Multicast2, wg128x256_mc2)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256Multicast2TmaStore, wg128x256_mc2_tmastore)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x128TmaStore, wg128x128_tmastore)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x128Multicast2, wg128x128_mc2)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep64x256PingPong, wg64x256_pp)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep64x256PingPongTmaStore, wg64x256_pp_tmastore)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x128PingPong, wg128x128_pp)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x128PingPongTmaStore, wg128x128_pp_tmastore)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256Group4, wg128x256_g4)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256Group16, wg128x256_g16)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x128Group16, wg128x128_g16)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256Unpaired, wg128x256_unpaired)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x256StreamK, wg128x256_sk)
FUSEDROP_SM90_SWEEP_MATCHES(Sweep128x128StreamK, wg128x128_sk)
// The stream-K workspace as src/cuda/forward.rs sizes it: a partial tile of f32 per block after
// the flags of up to STREAM_K_MAX_BLOCKS blocks.
#define FUSEDROP_SM90_STREAM_K_SLOT_MATCHES(CONFIG, NAME)                                       \
    static_assert(fusedrop::gemm::sm90::StreamKFixup<fusedrop::forward::CONFIG::Mainloop<       \
                          __half>::kAccumulators>::kSlotBytes ==                                \
                      4u * fusedrop::launch::forward_sweep_##NAME.block_m *                     \
                          fusedrop::launch::forward_sweep_##NAME.block_n,                       \
                  #CONFIG "'s slot disagrees with src/cuda/forward.rs's sweep_workspace_bytes");
FUSEDROP_SM90_STREAM_K_SLOT_MATCHES(Sweep128x256StreamK, wg128x256_sk)
FUSEDROP_SM90_STREAM_K_SLOT_MATCHES(Sweep128x128StreamK, wg128x128_sk)
static_assert(fusedrop::gemm::sm90::kStreamKMaxBlocks == fusedrop::launch::stream_k_max_blocks &&
                  fusedrop::gemm::sm90::kStreamKFlagBytes ==
                      8u * fusedrop::launch::stream_k_max_blocks,
              "the stream-K flag area disagrees with src/cuda/forward.rs (two u32 per block of "
              "STREAM_K_MAX_BLOCKS)");
