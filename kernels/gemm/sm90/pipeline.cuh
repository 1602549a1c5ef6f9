// Hopper (sm_90a) main-loop pipeline: a ring of kStages shared-memory stages between one
// producer thread (TMA loads) and the consumer warpgroups (wgmma). Each stage has two mbarriers:
//   full[s]  completes when the producer's expect_tx arrival is in and the stage's TMA bytes
//            landed (1 arrival per phase);
//   empty[s] completes when every consumer warpgroup that reads the stage has finished with it:
//            one arrival per such warpgroup per phase, in every block that reads the stage
//            (Mainloop::kEmptyArrivals: both warpgroups of the tile, or the one of a ping-pong
//            tile, times the blocks of a multicast cluster).
// A PipelineState walks the ring: the stage index and the parity of the phase that the next
// wait on that stage expects. The ring persists across the tiles of a persistent block, so the
// producer runs ahead into the next tile while the consumers finish the previous one.
#pragma once

#include <stdint.h>

#include "../../ptx.cuh"

namespace fusedrop {
namespace gemm {
namespace sm90 {

template <int kStages>
struct PipelineState {
    int stage = 0;
    uint32_t phase = 0;

    __device__ __forceinline__ void advance() {
        if (++stage == kStages) {
            stage = 0;
            phase ^= 1u;
        }
    }
};

template <int kStages>
struct StageBarriers {
    uint64_t full[kStages];
    uint64_t empty[kStages];

    // Called by one thread, before the __syncthreads that publishes the barriers.
    __device__ __forceinline__ void init(uint32_t empty_arrivals) {
        for (int s = 0; s < kStages; ++s) {
            ptx::mbarrier_init(&full[s], 1);
            ptx::mbarrier_init(&empty[s], empty_arrivals);
        }
        ptx::fence_mbarrier_init();
    }

    // Producer side: waits until the consumers released the state's stage. On the first pass
    // over the ring the wait is for the phase before phase 0, which counts as complete. With
    // `cluster_scope` (multicast: consumers of other blocks release the stage with
    // `.release.cluster` arrivals) the wait acquires at cluster scope, so that it synchronises
    // with those releases under the PTX memory model, not only with this block's.
    __device__ __forceinline__ void producer_acquire(const PipelineState<kStages>& st,
                                                     bool cluster_scope = false) {
        if (cluster_scope)
            ptx::mbarrier_wait_cluster(&empty[st.stage], st.phase ^ 1u);
        else
            ptx::mbarrier_wait(&empty[st.stage], st.phase ^ 1u);
    }

    // Consumer side: waits until the state's stage holds its TMA bytes.
    __device__ __forceinline__ void consumer_wait(const PipelineState<kStages>& st) {
        ptx::mbarrier_wait(&full[st.stage], st.phase);
    }

    // Consumer side, one thread per warpgroup, after the warpgroup's wgmmas reading the stage
    // have retired (wgmma_wait_group).
    __device__ __forceinline__ void consumer_release(const PipelineState<kStages>& st) {
        ptx::mbarrier_arrive(&empty[st.stage]);
    }
};

// A ring whose A operand is transformed in place between the load and the MMA by warps of their
// own (transform warps: the backward's dZᵀ for dW, formed from dY in the landed stage). A third
// barrier per stage sits between `full` and the consumers:
//   formed[s] completes when every one of the kTransformThreads transform threads has formed its
//             part of the stage, published its stores to the async proxy (fence.proxy.async) and
//             arrived (1 arrival per transform thread per phase: each thread's arrival releases
//             its own stores, so none depends on another's).
// The transform threads wait on `full` (transform_wait) as the consumers would; the consumers wait
// on `formed` instead (consumer_wait hides StageBarriers'), so the main loops run unchanged.
// `formed` needs no release of its own: the transform threads reach round r + 1 of a stage only
// through its `full`, which needs the producer's acquire of `empty` round r, which needs the
// consumers to have passed their wait on `formed` round r.
template <int kStages, int kTransformThreads>
struct FormedStageBarriers : StageBarriers<kStages> {
    uint64_t formed[kStages];

    __device__ __forceinline__ void init(uint32_t empty_arrivals) {
        for (int s = 0; s < kStages; ++s) ptx::mbarrier_init(&formed[s], kTransformThreads);
        StageBarriers<kStages>::init(empty_arrivals);
    }

    // Transform side: waits until the state's stage holds its TMA bytes.
    __device__ __forceinline__ void transform_wait(const PipelineState<kStages>& st) {
        ptx::mbarrier_wait(&this->full[st.stage], st.phase);
    }

    // Transform side, every transform thread, after its fence.proxy.async.
    __device__ __forceinline__ void transform_done(const PipelineState<kStages>& st) {
        ptx::mbarrier_arrive(&formed[st.stage]);
    }

    // Consumer side: waits until the state's stage is formed. It also waits on `full` itself
    // (complete by then: a try_wait that succeeds at once; the phase cannot have moved on, as
    // the stage is not yet released), so that the TMA bytes the transform threads did not write
    // (B, for one) reach the consumers' wgmmas through the barrier the TMA completed rather than
    // through the transform threads' arrivals alone.
    __device__ __forceinline__ void consumer_wait(const PipelineState<kStages>& st) {
        ptx::mbarrier_wait(&formed[st.stage], st.phase);
        StageBarriers<kStages>::consumer_wait(st);
    }
};

// Ping-pong consumers (each tile one consumer warpgroup's, the two taking alternate tiles): the
// order in which their main loops run. Warpgroup c's j-th tile may start its main loop once
// turn[c] completed phase j; warpgroup c passes the turn (one arrival on turn[1 - c]) when its
// main loop is done. So the main loops alternate (one warpgroup's epilogue runs while the other
// multiplies), and it is also what makes skipping the other warpgroup's stages safe: a parity
// wait tells only two consecutive phases apart, so a warpgroup may wait for round r of a stage
// only once round r - 1 has completed, and round r - 1 belongs to a tile whose main loop (whose
// waits) finished before this warpgroup's turn came.
struct ConsumerOrder {
    uint64_t turn[2];

    // Called by one thread, with the ring's barriers: warpgroup 0 has the first turn.
    __device__ __forceinline__ void init() {
        ptx::mbarrier_init(&turn[0], 1);
        ptx::mbarrier_init(&turn[1], 1);
        ptx::mbarrier_arrive(&turn[0]);
    }

    // Warpgroup `consumer` (all threads), before the main loop of its j-th tile.
    __device__ __forceinline__ void wait(int consumer, int j) {
        ptx::mbarrier_wait(&turn[consumer], (uint32_t)j & 1u);
    }

    // Warpgroup `consumer`, after the main loop of a tile (its wgmmas retired): the first thread
    // hands the turn to the other warpgroup.
    __device__ __forceinline__ void pass(int consumer) {
        if (threadIdx.x % 128 == 0) ptx::mbarrier_arrive(&turn[1 - consumer]);
    }
};

}  // namespace sm90
}  // namespace gemm
}  // namespace fusedrop
