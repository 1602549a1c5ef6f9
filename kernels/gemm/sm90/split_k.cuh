// Split-K across a thread block cluster (sm_90a): for outputs with fewer tiles than
// multiprocessors (an inference batch, a narrow product), the kSplits blocks of a cluster
// (__cluster_dims__(kSplits, 1, 1)) share each output tile, block `rank` accumulating the k-blocks
// [rank * K / kSplits, (rank + 1) * K / kSplits) of it. The partial sums meet in distributed
// shared memory, with no global workspace and no atomics:
//
//   rank r > 0, each consumer thread: writes its accumulator fragment to its own block's
//       `partial` area, then arrives (release, cluster scope) on the leader's full[warpgroup];
//   rank 0 (the leader), each consumer thread: waits for full[warpgroup] (acquire, cluster
//       scope), reads the fragment of the same thread of ranks 1, 2, ... in that order from their
//       shared memory (ld.shared::cluster) and adds it to a copy of its own, then arrives on each
//       rank's free[warpgroup]; it alone runs the epilogue, on the sums. (The sums go to a
//       separate array: with non-wgmma instructions defining the accumulator registers, ptxas
//       serializes the next tile's wgmmas of the register-A main loop, its C7515.)
//
// The sum is acc(rank 0) + acc(rank 1) + ... + acc(rank kSplits - 1) in that fixed order, so the
// result is bit-identical from run to run and for any grid size (it depends on kSplits, which
// the host chooses from the shape and the multiprocessor count). A block writes the next tile's
// fragment only after the leader freed the area (free[warpgroup], one phase per tile), and waits
// for the last tile's release before it exits (a block's shared memory must outlive every access
// from the cluster).
//
// Layout of `partial`: float4 number (warpgroup, q, t) at ((warpgroup * kAccumulators / 4 + q) *
// 128 + t), q = accumulator registers 4q .. 4q + 3 of warpgroup thread t: consecutive threads
// touch consecutive 16-byte words, for the local stores and for the remote loads alike. With
// kExtra, one more float per thread (`extra`, after `partial`) travels and is summed the same
// way: the backward's db column sums.
#pragma once

#include <stdint.h>

#include "../../ptx.cuh"
#include "mainloop.cuh"

namespace fusedrop {
namespace gemm {
namespace sm90 {

// The k-blocks of every tile that a block accumulates, [first, first + count), and its rank in
// its cluster (0 without split-K).
struct KShare {
    int rank;
    int first;
    int count;
};

// A kernel without split-K: no split area, and each tile's result goes to the epilogue as it is.
// (The interface every kernel calls, whichever split it was built with.)
struct NoSplit {
    static constexpr int kSplits = 1;
    static constexpr uint32_t kBytes = 0;

    // Every k-block.
    __device__ __forceinline__ static KShare share(int k_blocks) { return KShare{0, 0, k_blocks}; }

    template <int kAccumulators, class Epilogue>
    __device__ __forceinline__ static void finish_tile(unsigned char*,
                                                       const float (&acc)[kAccumulators],
                                                       float extra, int, int,
                                                       Epilogue&& epilogue) {
        epilogue(acc, extra);
    }

    __device__ __forceinline__ static void finish(unsigned char*, int, int) {}
};

// Where the split area starts in a kernel's dynamic shared memory: after the main loop's.
template <class Mainloop>
constexpr uint32_t kSplitOffset = ((uint32_t)Mainloop::kSmemBytes + 15u) & ~15u;

template <int kAccumulators, int kSplitsArg, bool kExtra = false>
struct ClusterSplitK {
    static constexpr int kSplits = kSplitsArg;
    static_assert(kSplits >= 2 && kSplits <= 8, "a portable cluster has at most 8 blocks");
    static_assert(kAccumulators % 4 == 0, "fragments move as float4");
    static constexpr int kQuads = kAccumulators / 4;
    static constexpr uint32_t kPartialBytes =
        (uint32_t)kConsumerWarpgroups * kAccumulators * kWarpgroupThreads * 4u;
    static constexpr uint32_t kExtraBytes =
        kExtra ? (uint32_t)kConsumerWarpgroups * kWarpgroupThreads * 4u : 0u;
    // The partial area, the extra floats, then full[] and free[], one per consumer warpgroup.
    static constexpr uint32_t kBytes = kPartialBytes + kExtraBytes + 2u * kConsumerWarpgroups * 8u;

    struct Storage {
        float* partial;  // 16-byte aligned
        float* extra;
        uint64_t* full;
        uint64_t* free;
    };

    // The split area at `base` (16-byte aligned, kSplitOffset into the shared memory).
    __device__ __forceinline__ static Storage storage(unsigned char* base) {
        Storage s;
        s.partial = reinterpret_cast<float*>(base);
        s.extra = reinterpret_cast<float*>(base + kPartialBytes);
        s.full = reinterpret_cast<uint64_t*>(base + kPartialBytes + kExtraBytes);
        s.free = s.full + kConsumerWarpgroups;
        return s;
    }

    // One thread, before the cluster_sync that publishes the barriers to the cluster.
    __device__ __forceinline__ static void init(const Storage& s) {
        for (int g = 0; g < kConsumerWarpgroups; ++g) {
            ptx::mbarrier_init(&s.full[g], (uint32_t)(kSplits - 1) * kWarpgroupThreads);
            ptx::mbarrier_init(&s.free[g], kWarpgroupThreads);
        }
        // Other blocks of the cluster arrive on these: the initialisation is made visible to
        // them here rather than relying on a later init's fence.
        ptx::fence_mbarrier_init();
    }

    // This block's rank in its cluster of kSplits blocks.
    __device__ __forceinline__ static int rank() { return (int)ptx::cluster_ctarank(); }

    // This block's share of `k_blocks`: [rank * K / kSplits, (rank + 1) * K / kSplits).
    __device__ __forceinline__ static KShare share(int k_blocks) {
        const int r = rank();
        const int first = r * k_blocks / kSplits;
        return KShare{r, first, (r + 1) * k_blocks / kSplits - first};
    }

    // Ranks 1 .. kSplits - 1, every consumer thread, once per tile (`tile` counts the block's
    // tiles from 0): hands the fragment (and `extra`, with kExtra) to the leader.
    __device__ __forceinline__ static void give(const Storage& s, const float (&acc)[kAccumulators],
                                                float extra, int consumer, int tile) {
        const int t = (int)(threadIdx.x % kWarpgroupThreads);
        if (tile > 0) ptx::mbarrier_wait_cluster(&s.free[consumer], (uint32_t)(tile - 1) & 1u);
        float4* mine = reinterpret_cast<float4*>(s.partial) + consumer * kQuads * kWarpgroupThreads;
#pragma unroll
        for (int q = 0; q < kQuads; ++q)
            mine[q * kWarpgroupThreads + t] =
                make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
        if constexpr (kExtra) s.extra[consumer * kWarpgroupThreads + t] = extra;
        ptx::mbarrier_arrive_cluster(ptx::cluster_map(&s.full[consumer], 0));
    }

    // Rank 0, every consumer thread, once per tile: sum = acc plus the other ranks' fragments,
    // in rank order; `extra` likewise (with kExtra).
    __device__ __forceinline__ static void gather(const Storage& s,
                                                  const float (&acc)[kAccumulators],
                                                  float (&sum)[kAccumulators], float& extra,
                                                  int consumer, int tile) {
        const int t = (int)(threadIdx.x % kWarpgroupThreads);
#pragma unroll
        for (int i = 0; i < kAccumulators; ++i) sum[i] = acc[i];
        ptx::mbarrier_wait_cluster(&s.full[consumer], (uint32_t)tile & 1u);
        const float4* mine =
            reinterpret_cast<const float4*>(s.partial) + consumer * kQuads * kWarpgroupThreads + t;
#pragma unroll 1
        for (int r = 1; r < kSplits; ++r) {
            const uint32_t theirs = ptx::cluster_map(mine, (uint32_t)r);
#pragma unroll
            for (int q = 0; q < kQuads; ++q) {
                float v[4];
                ptx::cluster_load_f32x4(theirs + (uint32_t)(q * kWarpgroupThreads * 16), v);
                sum[4 * q] += v[0];
                sum[4 * q + 1] += v[1];
                sum[4 * q + 2] += v[2];
                sum[4 * q + 3] += v[3];
            }
            if constexpr (kExtra)
                extra += ptx::cluster_load_f32(
                    ptx::cluster_map(&s.extra[consumer * kWarpgroupThreads + t], (uint32_t)r));
            ptx::mbarrier_arrive_cluster(ptx::cluster_map(&s.free[consumer], (uint32_t)r));
        }
    }

    // Every consumer thread, once per tile (`tile` counts the block's tiles from 0), with the
    // split area at `area`: ranks 1 .. kSplits - 1 hand their fragment and `extra` to the
    // leader; the leader runs `epilogue(sum, extra_sum)` on the sums in rank order.
    template <class Epilogue>
    __device__ __forceinline__ static void finish_tile(unsigned char* area,
                                                       const float (&acc)[kAccumulators],
                                                       float extra, int consumer, int tile,
                                                       Epilogue&& epilogue) {
        const Storage s = storage(area);
        if (rank() != 0) {
            give(s, acc, extra, consumer, tile);
            return;
        }
        float sum[kAccumulators];
        gather(s, acc, sum, extra, consumer, tile);
        epilogue(sum, extra);
    }

    // Every consumer thread, before exiting after `tiles` tiles: on ranks 1 .. kSplits - 1,
    // waits until the leader has read the last fragment (and will not touch this block's shared
    // memory again).
    __device__ __forceinline__ static void finish(unsigned char* area, int consumer, int tiles) {
        if (rank() != 0 && tiles > 0)
            ptx::mbarrier_wait_cluster(&storage(area).free[consumer], (uint32_t)(tiles - 1) & 1u);
    }
};

}  // namespace sm90
}  // namespace gemm
}  // namespace fusedrop
