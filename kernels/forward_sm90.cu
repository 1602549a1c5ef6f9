// Fused forward on Hopper (sm_90a only; f16 and bf16): the production entry points of the
// kernel in forward_sm90.cuh (which documents it).
//
// Entry points: fusedrop_forward_<config>_<f16|bf16>, config in wg128x256, wg128x128,
// wg64x128 and the split-K configs wg64x128s2, wg64x128s4, wg128x128s2, wg128x128s4 (struct
// names in forward_sm90.cuh); block = 384 threads, dynamic shared memory = kSmemBytes,
// grid = (blocks, 1, 1) with blocks a multiple of kClusterBlocks.
#include "forward_sm90.cuh"

// CLUSTER: nothing, or the split-K kernels' __cluster_dims__: with the cluster shape part of the
// kernel, a plain launch with gridDim.x a multiple of kSplits runs it in clusters.
#define FUSEDROP_FORWARD_SM90(CONFIG, NAME, SUFFIX, T, CLUSTER)                                 \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads, 1)        \
        CLUSTER fusedrop_forward_##NAME##_##SUFFIX(                                                     \
            const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w, \
            const T* __restrict__ b, T* __restrict__ y, long long m, long long n, long long k,   \
            int relu, fusedrop::MaskParams mp) {                                                \
        fusedrop::forward::forward_sm90<T, fusedrop::forward::CONFIG>(&map_x, &map_w, nullptr, b, \
                                                                     y, m, n, k, relu, mp);    \
    }

#define FUSEDROP_FORWARD_SM90_TYPES(CONFIG, NAME)        \
    FUSEDROP_FORWARD_SM90(CONFIG, NAME, f16, __half, )   \
    FUSEDROP_FORWARD_SM90(CONFIG, NAME, bf16, __nv_bfloat16, )

#define FUSEDROP_FORWARD_SM90_SPLIT_TYPES(CONFIG, NAME)                                   \
    FUSEDROP_FORWARD_SM90(CONFIG, NAME, f16, __half,                                      \
                          __cluster_dims__(fusedrop::forward::CONFIG::kSplits, 1, 1))    \
    FUSEDROP_FORWARD_SM90(CONFIG, NAME, bf16, __nv_bfloat16,                              \
                          __cluster_dims__(fusedrop::forward::CONFIG::kSplits, 1, 1))

FUSEDROP_FORWARD_SM90_TYPES(Wg128x256, wg128x256)
FUSEDROP_FORWARD_SM90_TYPES(Wg128x128, wg128x128)
FUSEDROP_FORWARD_SM90_TYPES(Wg64x128, wg64x128)
FUSEDROP_FORWARD_SM90_SPLIT_TYPES(Wg64x128Split2, wg64x128s2)
FUSEDROP_FORWARD_SM90_SPLIT_TYPES(Wg64x128Split4, wg64x128s4)
FUSEDROP_FORWARD_SM90_SPLIT_TYPES(Wg128x128Split2, wg128x128s2)
FUSEDROP_FORWARD_SM90_SPLIT_TYPES(Wg128x128Split4, wg128x128s4)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg128x256>(fusedrop::launch::forward_wg128x256),
              "Wg128x256 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg128x128>(fusedrop::launch::forward_wg128x128),
              "Wg128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg64x128>(fusedrop::launch::forward_wg64x128),
              "Wg64x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg64x128Split2>(fusedrop::launch::forward_wg64x128s2),
              "Wg64x128Split2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg64x128Split4>(fusedrop::launch::forward_wg64x128s4),
              "Wg64x128Split4 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg128x128Split2>(fusedrop::launch::forward_wg128x128s2),
              "Wg128x128Split2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_schedule<fusedrop::forward::Wg128x128Split4>(fusedrop::launch::forward_wg128x128s4),
              "Wg128x128Split4 disagrees with src/cuda/launch_table.rs");
