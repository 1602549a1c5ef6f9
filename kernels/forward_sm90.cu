// Fused forward on Hopper (sm_90a only; f16 and bf16, f32 accumulate):
// Y = dropout_p(act(X·Wᵀ + b)) in one persistent, warp-specialised launch.
//
//   X [m, k], W [n, k] (nn.Linear layout), b [n] or null, Y [m, n], all row-major.
//   X and W arrive as TMA tensor maps (built by src/cuda/tensor_map.rs): 2-D, inner dimension
//   k, 128-byte swizzle, boxes of 64 x kBlockM (X) and 64 x kBlockN (W) elements, zero fill out
//   of bounds (so M, N and K tails need no predicates). That needs k % 8 == 0 and 16-byte
//   aligned X and W (TMA's stride and address rules); other calls take kernels/forward_tc.cu.
//
// Levels: scheduler (gemm/tile_scheduler.cuh, PersistentTileScheduler: grid = (blocks, 1, 1),
// any blocks >= 1, one per multiprocessor in practice), main loop (gemm/sm90/mainloop.cuh: a
// producer warpgroup whose first thread issues TMA into a kStages ring, two consumer
// warpgroups issuing wgmma), epilogue (gemm/sm90/epilogue.cuh, from the accumulator fragment;
// the Philox words are drawn while the tensor cores run the main loop).
//
// Registers: 384 threads at one block per multiprocessor leave 168 per thread at launch; the
// producer warpgroup gives registers back (setmaxnreg 40) and the consumers take them
// (setmaxnreg 232): 40 + 2 x 232 = 504 <= 512 per 128-thread slice of the register file.
//
// Entry points: fusedrop_forward_<config>_<f16|bf16>, config in wg128x256, wg128x128,
// wg64x128 (struct names below); block = 384 threads, dynamic shared memory = kSmemBytes.
#include <type_traits>

#include "element.cuh"
#include "gemm/epilogue.cuh"
#include "gemm/sm90/epilogue.cuh"
#include "gemm/sm90/mainloop.cuh"
#include "gemm/sm90/split_k.cuh"
#include "gemm/tile_scheduler.cuh"
#include "mask.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace forward {

constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
// Row tiles per group of the tile order (L2 reuse of W across consecutive tiles).
constexpr int kGroupRows = 8;

using gemm::sm90::kSplitOffset;

// Split is gemm::sm90::NoSplit, or gemm::sm90::ClusterSplitK (the kernel then runs in clusters of
// Split::kSplits blocks, each accumulating its share of k; see gemm/sm90/split_k.cuh).
template <typename T, class Mainloop, class Split>
__device__ __forceinline__ void forward_sm90(const CUtensorMap* map_x, const CUtensorMap* map_w,
                                             const T* __restrict__ b, T* __restrict__ y,
                                             long long m, long long n, long long k, int relu,
                                             MaskParams mp) {
    constexpr bool kSplitK = Split::kSplits > 1;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    const typename Mainloop::Storage storage = Mainloop::storage(smem);
    const int warpgroup = (int)(threadIdx.x / gemm::sm90::kWarpgroupThreads);
    if constexpr (kSplitK) {
        const typename Split::Storage split = Split::storage(smem + kSplitOffset<Mainloop>);
        if (threadIdx.x == 0) {
            Split::init(split);
            storage.barriers->init(gemm::sm90::kConsumerWarpgroups);
        }
        // Every block's barriers initialised before any block arrives on another's.
        ptx::cluster_sync();
    } else {
        if (threadIdx.x == 0) storage.barriers->init(gemm::sm90::kConsumerWarpgroups);
        __syncthreads();
    }

    const gemm::PersistentTileScheduler<kGroupRows, Split::kSplits> scheduler(
        m, n, Mainloop::kBlockM, Mainloop::kBlockN);
    // This block's k-blocks of every tile: all of them, or its rank's share.
    int k_first = 0;
    int k_blocks = (int)((k + Mainloop::kBlockK - 1) / Mainloop::kBlockK);
    int rank = 0;
    if constexpr (kSplitK) {
        rank = Split::rank();
        Split::k_range(k_blocks, rank, k_first, k_blocks);
    }
    typename Mainloop::State state;

    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<kProducerRegisters>();
        if (threadIdx.x == 0) {
            ptx::prefetch_tensormap(map_x);
            ptx::prefetch_tensormap(map_w);
            for (int t = scheduler.first(); t < scheduler.tiles(); t = scheduler.next(t)) {
                const gemm::TileCoordOf<int> tile = scheduler.tile(t);
                Mainloop::load_tile(map_x, map_w, storage, state, tile.tm * Mainloop::kBlockM,
                                    tile.tn * Mainloop::kBlockN, k_first, k_blocks);
            }
        }
        return;
    }

    ptx::setmaxnreg_inc<kConsumerRegisters>();
    const int consumer = warpgroup - 1;
    // Registers are the limit here (the main loop keeps kAccumulators f32 per thread and ptxas
    // allocates at most 168): only the Philox key of the resolved (seed, subsequence), the mask
    // state and the tile index stay live across the main loop; the epilogue's arguments are
    // rebuilt from the kernel parameters after it.
    const MaskParams resolved = resolve_seed(mp);
    record_seed(resolved, blockIdx.x == 0 && threadIdx.x == gemm::sm90::kWarpgroupThreads);
    const gemm::sm90::MaskKey key = gemm::sm90::MaskKey::from(resolved);
    // Only the block that runs the epilogue (rank 0 of a split-K cluster) draws the mask.
    const bool dropout = dropout_enabled(mp) && mp.threshold <= 0xffffffffull && rank == 0;
    const int t = (int)(threadIdx.x % gemm::sm90::kWarpgroupThreads);
    const int wg_row = (consumer % Mainloop::kWgRows) * 64;
    const int wg_col = (consumer / Mainloop::kWgRows) * Mainloop::kWgN;
    float acc[Mainloop::kAccumulators];
    gemm::sm90::FragmentMask<Mainloop::kWgN> mask;
    int done = 0;  // tiles this block has finished
    for (int linear = scheduler.first(); linear < scheduler.tiles();
         linear = scheduler.next(linear), ++done) {
        if (dropout) {
            const gemm::TileCoordOf<int> tile = scheduler.tile(linear);
            mask.reset(mp,
                       (uint64_t)tile.tm * Mainloop::kBlockM + wg_row + 16 * (t / 32) + (t % 32) / 4,
                       (uint64_t)tile.tn * Mainloop::kBlockN + wg_col + 2 * (t % 4));
        }
        Mainloop::mma_tile(acc, storage, state, k_blocks, consumer, [&](int) {
            if (dropout) mask.draw_next(key);
        });
        const auto epilogue = [&](const float (&result)[Mainloop::kAccumulators]) {
            if (dropout) mask.draw_rest(key);
            const gemm::TileCoordOf<int> tile = scheduler.tile(linear);
            const gemm::EpilogueArgs<T> epi = gemm::make_epilogue_args(b, y, m, n, relu, mp);
            gemm::sm90::store_fragment<T, Mainloop::kWgN>(
                result, mask, epi, (long long)tile.tm * Mainloop::kBlockM + wg_row,
                (long long)tile.tn * Mainloop::kBlockN + wg_col);
        };
        if constexpr (kSplitK) {
            const typename Split::Storage split = Split::storage(smem + kSplitOffset<Mainloop>);
            if (rank != 0) {
                Split::give(split, acc, consumer, done);
                continue;
            }
            float sum[Mainloop::kAccumulators];
            Split::gather(split, acc, sum, consumer, done);
            epilogue(sum);
        } else {
            epilogue(acc);
        }
    }
    if constexpr (kSplitK) {
        if (rank != 0)
            Split::last_release(Split::storage(smem + kSplitOffset<Mainloop>), consumer, done);
    }
}

// Tile BM x BN, pipeline depth STAGES (as deep as 227 KiB of shared memory allows), SPLITS
// blocks per tile (split-K clusters) or 1.
template <int BM, int BN, int STAGES, int SPLITS = 1>
struct WgConfig {
    template <typename T>
    using Mainloop = gemm::sm90::Mainloop<T, BM, BN, STAGES>;
    using Split = std::conditional_t<
        SPLITS == 1, gemm::sm90::NoSplit,
        gemm::sm90::ClusterSplitK<gemm::sm90::Mainloop<__half, BM, BN, STAGES>::kAccumulators,
                                  SPLITS>>;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kStages = STAGES;
    static constexpr int kSplits = SPLITS;
    static constexpr int kThreads = gemm::sm90::kThreads;
    static constexpr int kSmemBytes =
        SPLITS == 1 ? Mainloop<__half>::kSmemBytes
                    : (int)(kSplitOffset<Mainloop<__half>> + Split::kBytes);
    static_assert(kSmemBytes <= 227 * 1024, "a Hopper block has at most 227 KiB of shared memory");
};

// Large outputs: two warpgroups of 64 x 256 (wgmma m64n256k16), 4 stages of 48 KiB.
struct Wg128x256 : WgConfig<128, 256, 4> {};
// Two warpgroups of 64 x 128, 6 stages of 32 KiB: twice the tiles of Wg128x256.
struct Wg128x128 : WgConfig<128, 128, 6> {};
// Few rows (inference batches): one 64-row tile, the two warpgroups side by side (64 x 64
// each), 8 stages of 24 KiB.
struct Wg64x128 : WgConfig<64, 128, 8> {};
// Split-K (gemm/sm90/split_k.cuh) for outputs with fewer tiles than multiprocessors: clusters of
// 2 or 4 blocks per tile, the fragments summed in distributed shared memory (32 KiB of partials
// for 64 x 128 tiles, 64 KiB for 128 x 128, which leaves 5 stages).
struct Wg64x128Split2 : WgConfig<64, 128, 8, 2> {};
struct Wg64x128Split4 : WgConfig<64, 128, 8, 4> {};
struct Wg128x128Split2 : WgConfig<128, 128, 5, 2> {};
struct Wg128x128Split4 : WgConfig<128, 128, 5, 4> {};

}  // namespace forward
}  // namespace fusedrop

// CLUSTER: nothing, or the split-K kernels' __cluster_dims__: with the cluster shape part of the
// kernel, a plain launch with gridDim.x a multiple of kSplits runs it in clusters.
#define FUSEDROP_FORWARD_SM90(CONFIG, NAME, SUFFIX, T, CLUSTER)                                 \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads, 1)        \
        CLUSTER fusedrop_forward_##NAME##_##SUFFIX(                                                     \
            const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w, \
            const T* __restrict__ b, T* __restrict__ y, long long m, long long n, long long k,   \
            int relu, fusedrop::MaskParams mp) {                                                \
        fusedrop::forward::forward_sm90<T, fusedrop::forward::CONFIG::Mainloop<T>,             \
                                        fusedrop::forward::CONFIG::Split>(                     \
            &map_x, &map_w, b, y, m, n, k, relu, mp);                                           \
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
static_assert(fusedrop::launch::matches<fusedrop::forward::Wg128x256>(fusedrop::launch::forward_wg128x256),
              "Wg128x256 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Wg128x128>(fusedrop::launch::forward_wg128x128),
              "Wg128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Wg64x128>(fusedrop::launch::forward_wg64x128),
              "Wg64x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::forward::Wg64x128Split2>(fusedrop::launch::forward_wg64x128s2),
              "Wg64x128Split2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::forward::Wg64x128Split4>(fusedrop::launch::forward_wg64x128s4),
              "Wg64x128Split4 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::forward::Wg128x128Split2>(fusedrop::launch::forward_wg128x128s2),
              "Wg128x128Split2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::forward::Wg128x128Split4>(fusedrop::launch::forward_wg128x128s4),
              "Wg128x128Split4 disagrees with src/cuda/launch_table.rs");
