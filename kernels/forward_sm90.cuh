// Fused forward on Hopper (sm_90a only; f16 and bf16, f32 accumulate), kernel level:
// Y = dropout_p(act(X·Wᵀ + b)) in one persistent, warp-specialised launch. The entry points are
// in forward_sm90.cu (production configs) and forward_sm90_sweep.cu (tuning variants).
//
//   X [m, k], W [n, k] (nn.Linear layout), b [n] or null, Y [m, n], all row-major.
//   X and W arrive as TMA tensor maps (built by src/cuda/tensor_map.rs): 2-D, inner dimension
//   k, 128-byte swizzle, boxes of 64 x kBlockM (X) and 64 x kBlockN / kMulticast (W) elements,
//   zero fill out of bounds (so M, N and K tails need no predicates). That needs k % 8 == 0 and
//   16-byte aligned X and W (TMA's stride and address rules); other calls take
//   kernels/forward_tc.cu. A config with kTmaStore also takes Y's map (64 x 64 boxes, 128-byte
//   swizzle: n % 8 == 0 and Y 16-byte aligned).
//
// Levels: scheduler (gemm/tile_scheduler.cuh, PersistentTileScheduler: grid = (blocks, 1, 1),
// any blocks >= 1 (a multiple of the cluster size), one per multiprocessor in practice), main
// loop (gemm/sm90/mainloop.cuh: a producer warpgroup whose first thread issues TMA into a
// kStages ring, two consumer warpgroups issuing wgmma), epilogue (gemm/sm90/epilogue.cuh, from
// the accumulator fragment; the Philox words are drawn while the tensor cores run the main
// loop).
//
// Consumers: cooperative (both warpgroups on every tile), or ping-pong (PING_PONG: 64- or 128-row
// tiles, each one warpgroup's, the two taking the block's tiles in turn, so that one's epilogue
// overlaps the other's main loop; a 128-row tile is two blocks of 64 rows to its warpgroup, each
// with its own mask and epilogue).
//
// Clusters (the entry point's __cluster_dims__(kClusterBlocks, 1, 1)): split-K (Split, each
// block of a cluster accumulates its share of k, gemm/sm90/split_k.cuh), or B multicast
// (kMulticast: the blocks of a cluster take consecutive row tiles of one column tile and share
// each stage's W box, gemm/sm90/mainloop.cuh), not both.
//
// Stream-K (kStreamK, a sweep variant): the last tiles' k-blocks shared out evenly over the
// grid, the partial sums handed over through the caller's workspace (gemm/sm90/stream_k.cuh).
//
// Registers: 384 threads at one block per multiprocessor leave 168 per thread at launch; the
// producer warpgroup gives registers back (setmaxnreg 40) and the consumers take them
// (setmaxnreg 232): 40 + 2 x 232 = 504 <= 512 per 128-thread slice of the register file.
#pragma once

#include <type_traits>

#include "element.cuh"
#include "gemm/epilogue.cuh"
#include "gemm/sm90/epilogue.cuh"
#include "gemm/sm90/mainloop.cuh"
#include "gemm/sm90/split_k.cuh"
#include "gemm/sm90/stream_k.cuh"
#include "gemm/tile_scheduler.cuh"
#include "mask.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace forward {

// Row tiles per group of the tile order (L2 reuse of W across consecutive tiles) unless a config
// says otherwise (WgConfig's GROUP_ROWS); with B multicast, GROUP_ROWS / kMulticast cluster tiles.
constexpr int kGroupRows = 8;

using gemm::sm90::kSplitOffset;

// Config: a WgConfig (below). Its Split is gemm::sm90::NoSplit or gemm::sm90::ClusterSplitK (the
// kernel then runs in clusters of Split::kSplits blocks, each accumulating its share of k; see
// gemm/sm90/split_k.cuh); its Mainloop's kMulticast > 1 runs clusters of that many blocks that
// share W's stages; kTmaStore stages Y through shared memory and stores it with TMA (map_y, null
// otherwise); kStreamK hands partial tiles over through `workspace` (null otherwise).
template <typename T, class Config>
__device__ __forceinline__ void forward_sm90(const CUtensorMap* map_x, const CUtensorMap* map_w,
                                             const CUtensorMap* map_y,
                                             const T* __restrict__ b, T* __restrict__ y,
                                             long long m, long long n, long long k, int relu,
                                             MaskParams mp,
                                             unsigned char* workspace = nullptr) {
    using Mainloop = typename Config::template Mainloop<T>;
    using Split = typename Config::Split;
    constexpr bool kSplitK = Split::kSplits > 1;
    constexpr int kMulticast = Mainloop::kMulticast;
    static_assert(!kSplitK || kMulticast == 1, "split-K and B multicast do not combine");
    static_assert(!kSplitK || !Config::kTmaStore, "the split-K epilogue stores directly");
    // Ping-pong consumers: each tile is one warpgroup's, the two take alternate tiles.
    constexpr bool kPingPong = Mainloop::kConsumersPerTile == 1;
    static_assert(!kPingPong || (!kSplitK && kMulticast == 1),
                  "ping-pong consumers run without clusters");
    static_assert(!Config::kStreamK || (!kSplitK && kMulticast == 1 && !kPingPong &&
                                        !Config::kTmaStore),
                  "stream-K runs cooperative consumers, without clusters, storing directly");
    // Blocks of 64 rows per warpgroup tile (Mainloop::row_block).
    constexpr int kRowBlocks = Mainloop::kWgRowBlocks;
    constexpr int kClusterBlocks = kSplitK ? Split::kSplits : kMulticast;
    // The rows of a cluster's tile: the multicast blocks' row tiles one after another.
    constexpr int kClusterRows = Mainloop::kBlockM * kMulticast;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    const typename Mainloop::Storage storage = Mainloop::storage(smem);
    const int warpgroup = (int)(threadIdx.x / gemm::sm90::kWarpgroupThreads);
    // Ping-pong: the consumers' turns, right after the ring's barriers.
    gemm::sm90::ConsumerOrder* const order =
        reinterpret_cast<gemm::sm90::ConsumerOrder*>(storage.barriers + 1);
    if (threadIdx.x == 0) {
        if constexpr (kSplitK) Split::init(Split::storage(smem + kSplitOffset<Mainloop>));
        if constexpr (kPingPong) order->init();
        storage.barriers->init(Mainloop::kEmptyArrivals);
    }
    if constexpr (kClusterBlocks > 1) {
        // Every block's barriers initialised before any block arrives on another's or
        // multicasts into it.
        ptx::cluster_sync();
    } else {
        __syncthreads();
    }

    static_assert(Config::kGroupRows % kMulticast == 0, "a group holds whole cluster tiles");
    const gemm::PersistentTileScheduler<Config::kGroupRows / kMulticast, kClusterBlocks> scheduler(
        m, n, kClusterRows, Mainloop::kBlockN);
    // The first row of this block's share of a cluster tile.
    const int row_in_cluster = Mainloop::row_in_cluster();
    // This block's k-blocks of every tile: all of them, or its rank's share.
    const gemm::sm90::KShare share =
        Split::share((int)((k + Mainloop::kBlockK - 1) / Mainloop::kBlockK));
    typename Mainloop::State state;

    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<gemm::sm90::kProducerRegisters>();
        if (threadIdx.x == 0) {
            if constexpr (Config::kStreamK) {
                Mainloop::produce_pieces(gemm::sm90::StreamKWork(scheduler.tiles(), share.count),
                                         scheduler, map_x, map_w, storage);
            } else {
                Mainloop::produce(scheduler, map_x, map_w, nullptr, storage, share.first,
                                  share.count);
            }
        }
        return;
    }

    ptx::setmaxnreg_inc<gemm::sm90::kConsumerRegisters>();
    const int consumer = warpgroup - 1;
    // Registers are the limit here (the main loop keeps kAccumulators f32 per thread and ptxas
    // allocates at most 168): only the Philox key of the resolved (seed, subsequence), the mask
    // state and the tile index stay live across the main loop; the epilogue's arguments are
    // rebuilt from the kernel parameters after it.
    const MaskParams resolved = resolve_seed(mp);
    record_seed(resolved, blockIdx.x == 0 && threadIdx.x == gemm::sm90::kWarpgroupThreads);
    const gemm::sm90::MaskKey key = gemm::sm90::MaskKey::from(resolved, Config::kPairedDraws);
    // Only the block that runs the epilogue (rank 0 of a split-K cluster) draws the mask.
    const bool dropout = dropout_enabled(mp) && mp.threshold <= 0xffffffffull && share.rank == 0;
    const int t = (int)(threadIdx.x % gemm::sm90::kWarpgroupThreads);
    // The warpgroup's part of each tile it takes: all of it with ping-pong consumers.
    const int part = kPingPong ? 0 : consumer;
    const int wg_row = (part % Mainloop::kWgRows) * 64 * kRowBlocks + row_in_cluster;
    const int wg_col = (part / Mainloop::kWgRows) * Mainloop::kWgN;
    float acc[Mainloop::kAccumulators];
    using FragmentMask = gemm::sm90::FragmentMask<Mainloop::kWgN>;
    // One mask per row block, drawn one after the other.
    FragmentMask mask[kRowBlocks];
    // Mask groups drawn per k-block: all of a tile's groups within its main loop, spread evenly,
    // so that a short reduction (wide, k = 256: 4 k-blocks for 32 groups at 128 x 256) leaves
    // none for the epilogue, where the warpgroup would draw them while its tensor cores idle.
    const auto draws_per_k_block = [](int k_blocks) {
        return (kRowBlocks * FragmentMask::kGroups + k_blocks - 1) / k_blocks;
    };
    const auto reset_masks = [&](int linear) {
        const gemm::TileCoordOf<int> tile = scheduler.tile(linear);
#pragma unroll
        for (int block = 0; block < kRowBlocks; ++block) {
            mask[block].reset(mp,
                              (uint64_t)tile.tm * kClusterRows + wg_row + 64 * block +
                                  16 * (t / 32) + (t % 32) / 4,
                              (uint64_t)tile.tn * Mainloop::kBlockN + wg_col + 2 * (t % 4));
        }
    };
    const auto draw = [&](int groups) {
        for (int d = 0; d < groups; ++d) {
            // The warp's lanes have drawn alike, so the choice is the same for all (the paired
            // draws shuffle).
            if (kRowBlocks == 1 || mask[0].drawn < FragmentMask::kGroups) {
                mask[0].draw_next(key);
            } else {
                mask[kRowBlocks - 1].draw_next(key);
            }
        }
    };
    const auto epilogue = [&](const float (&result)[Mainloop::kAccumulators], int linear) {
        const gemm::TileCoordOf<int> tile = scheduler.tile(linear);
        const gemm::EpilogueArgs<T> epi = gemm::make_epilogue_args(b, y, m, n, relu, mp);
        const long long tile_row = (long long)tile.tm * kClusterRows + wg_row;
        const long long tile_col = (long long)tile.tn * Mainloop::kBlockN + wg_col;
#pragma unroll
        for (int block = 0; block < kRowBlocks; ++block) {
            if constexpr (Config::kTmaStore) {
                gemm::sm90::stage_fragment<T, Mainloop::kWgN>(
                    Mainloop::row_block(result, block), mask[block], epi,
                    storage.stages + Config::kStagingOffset +
                        consumer * Config::kStagingBytesPerWarpgroup,
                    map_y, consumer, tile_row + 64 * block, tile_col, block);
            } else {
                gemm::sm90::store_fragment<T, Mainloop::kWgN>(
                    Mainloop::row_block(result, block), mask[block], epi, tile_row + 64 * block,
                    tile_col);
            }
        }
    };
    if constexpr (Config::kStreamK) {
        // Each piece's own k-blocks; only a piece that finishes its tile draws the mask and
        // runs the epilogue, after adding the other pieces' partials (gemm/sm90/stream_k.cuh).
        const gemm::sm90::StreamKWork work(scheduler.tiles(), share.count);
        using Fixup = gemm::sm90::StreamKFixup<Mainloop::kAccumulators>;
        for (int i = 0; i < work.pieces(); ++i) {
            const gemm::sm90::StreamKPiece piece = work.piece(i);
            const bool draws = dropout && piece.finishes;
            if (draws) reset_masks(piece.linear);
            const int groups = draws_per_k_block(piece.k_blocks);
            Mainloop::mma_tile(acc, storage, state, piece.k_blocks, part, [&](int) {
                if (draws) draw(groups);
            });
            if (piece.finishes) {
                Fixup::add_partials(workspace, acc, consumer, piece.first_block);
                epilogue(acc, piece.linear);
            } else {
                Fixup::contribute(workspace, acc, consumer);
            }
        }
        return;
    }
    const int groups = draws_per_k_block(share.count);
    int done = 0;  // the block's tiles before this one (both warpgroups')
    for (int linear = scheduler.first(); linear < scheduler.tiles();
         linear = scheduler.next(linear), ++done) {
        if constexpr (kPingPong) {
            if (done % 2 != consumer) {
                Mainloop::skip_tile(state, share.count);
                continue;
            }
            order->wait(consumer, done / 2);
        }
        if (dropout) reset_masks(linear);
        Mainloop::mma_tile(acc, storage, state, share.count, part, [&](int) {
            if (dropout) draw(groups);
        });
        if constexpr (kPingPong) order->pass(consumer);
        // Split-K: only rank 0 runs the epilogue, on the cluster's sums.
        Split::finish_tile(smem + kSplitOffset<Mainloop>, acc, 0.0f, consumer, done,
                           [&](const float (&result)[Mainloop::kAccumulators], float) {
                               epilogue(result, linear);
                           });
    }
    Split::finish(smem + kSplitOffset<Mainloop>, consumer, done);
    if constexpr (Config::kTmaStore) gemm::sm90::finish_tma_stores();
}

// Tile BM x BN, pipeline depth STAGES (as deep as 227 KiB of shared memory allows), SPLITS
// blocks per tile (split-K clusters) or 1, MULTICAST blocks per cluster sharing W's stages or 1,
// TMA_STORE: Y through shared memory and TMA stores (needs Y's tensor map), PING_PONG: each
// tile (64 or 128 rows) is one consumer warpgroup's, the two alternating (cooperative otherwise),
// GROUP_ROWS: row tiles per group of the tile order (gemm/tile_scheduler.cuh), STREAM_K: the
// last tiles' k-blocks shared out over the grid (gemm/sm90/stream_k.cuh; needs a workspace).
template <int BM, int BN, int STAGES, int SPLITS = 1, int MULTICAST = 1, bool TMA_STORE = false,
          bool PING_PONG = false, int GROUP_ROWS = kGroupRows, bool STREAM_K = false>
struct WgConfig {
    template <typename T>
    using Mainloop = gemm::sm90::Mainloop<T, BM, BN, STAGES, gemm::sm90::Major::K,
                                          gemm::sm90::Major::K, false, MULTICAST,
                                          PING_PONG ? 1 : gemm::sm90::kConsumerWarpgroups>;
    using Split = std::conditional_t<
        SPLITS == 1, gemm::sm90::NoSplit,
        gemm::sm90::ClusterSplitK<Mainloop<__half>::kAccumulators, SPLITS>>;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kSplits = SPLITS;
    static constexpr int kClusterBlocks = SPLITS > 1 ? SPLITS : MULTICAST;
    static constexpr bool kTmaStore = TMA_STORE;
    static constexpr int kGroupRows = GROUP_ROWS;
    static constexpr bool kStreamK = STREAM_K;
    // Lane pairs share their Philox calls where the columns allow (gemm/sm90/epilogue.cuh); a
    // sweep variant turns it off to measure it.
    static constexpr bool kPairedDraws = true;
    static constexpr int kThreads = gemm::sm90::kThreads;
    // The staging areas of the TMA-store epilogue, one per consumer warpgroup (64 rows of its
    // tile per row block), 1024-byte aligned after the ring (whose barriers take the first bytes
    // of the 1024 in between).
    static constexpr uint32_t kStagingOffset =
        (uint32_t)STAGES * Mainloop<__half>::kStageBytes + 1024u;
    static constexpr uint32_t kStagingBytesPerWarpgroup =
        128u * Mainloop<__half>::kWgN * Mainloop<__half>::kWgRowBlocks;
    // Ping-pong consumers' turns (ConsumerOrder) follow the ring's barriers.
    static constexpr int kOrderBytes = PING_PONG ? (int)sizeof(gemm::sm90::ConsumerOrder) : 0;
    static_assert(sizeof(typename Mainloop<__half>::Barriers) + kOrderBytes <= 1024,
                  "the ring's barriers and the consumers' turns fit below the staging area");
    static constexpr int kSmemBytes =
        TMA_STORE ? (int)(1024u + kStagingOffset +
                          gemm::sm90::kConsumerWarpgroups * kStagingBytesPerWarpgroup)
        : SPLITS == 1 ? Mainloop<__half>::kSmemBytes + kOrderBytes
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
