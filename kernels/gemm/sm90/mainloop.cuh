// Hopper (sm_90a) GEMM main loop: TMA loads into a multistage shared-memory ring
// (pipeline.cuh), wgmma m64nNk16 on f32 accumulators, warp-specialised.
//
// Operands (this is the forward's "TN" GEMM, both operands K-major):
//   A = X [m, k] row-major, B = W [n, k] row-major; the block computes C[BM x BN] = A·Bᵀ.
// Per stage and k-block of kBlockK = 64 elements (one 128-byte swizzle row of halves), TMA
// writes A's BM x 64 box and B's BN x 64 box with 128-byte swizzle: row r of a box at byte
// 128 r, its 16-byte chunks permuted within each 1024-byte group of 8 rows. A wgmma K-major
// descriptor with 128-byte swizzle reads that layout directly: stride byte offset 1024 (8 rows),
// leading byte offset unused by the hardware for this mode (16 is written), and the k16 step
// ks of the k-block starts 32 ks bytes into the row.
//
// Consumer warpgroups: two. With BM = 128 each takes 64 rows and all BN columns; with BM = 64
// both take the 64 rows and BN / 2 columns each. Each issues wgmma m64n(kWgN)k16.
#pragma once

#include <stdint.h>

#include "../../ptx.cuh"
#include "pipeline.cuh"

namespace fusedrop {
namespace gemm {
namespace sm90 {

constexpr int kConsumerWarpgroups = 2;
constexpr int kWarpgroupThreads = 128;
// One producer warpgroup (one thread of it issues the TMA loads) and the consumers.
constexpr int kThreads = (1 + kConsumerWarpgroups) * kWarpgroupThreads;

template <typename T, int BM, int BN, int kStagesArg>
struct Mainloop {
    static_assert(sizeof(T) == 2, "the wgmma main loop takes f16 or bf16 operands");
    static_assert(BM == 64 || BM == 128, "BM is one or two consumer warpgroups of 64 rows");
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kStages = kStagesArg;
    static constexpr int kBlockK = 128 / (int)sizeof(T);
    static constexpr int kWgRows = BM / 64;
    static constexpr int kWgCols = kConsumerWarpgroups / kWgRows;
    static constexpr int kWgN = BN / kWgCols;  // the wgmma N of each consumer warpgroup
    static_assert(kWgN % 8 == 0 && kWgN >= 8 && kWgN <= 256, "wgmma N is 8 .. 256");
    static_assert(BN <= 256, "a TMA box row count is at most 256");
    static constexpr int kAccumulators = kWgN / 2;
    static constexpr uint32_t kBytesA = BM * 128;
    static constexpr uint32_t kBytesB = BN * 128;
    static constexpr uint32_t kStageBytes = kBytesA + kBytesB;
    static_assert(kBytesA % 1024 == 0 && kBytesB % 1024 == 0,
                  "each box keeps the next one on a 1024-byte swizzle boundary");
    // Dynamic shared memory: up to 1023 bytes to round the base up to the 1024-byte boundary
    // the 128-byte swizzle needs, the stages, then the barriers.
    static constexpr int kSmemBytes =
        1024 + kStages * (int)kStageBytes + (int)sizeof(StageBarriers<kStages>);

    using State = PipelineState<kStages>;
    using Barriers = StageBarriers<kStages>;

    struct Storage {
        unsigned char* stages;  // 1024-byte aligned
        Barriers* barriers;
    };

    __device__ __forceinline__ static Storage storage(unsigned char* dynamic_smem) {
        const uint32_t window = ptx::smem_u32(dynamic_smem);
        unsigned char* base = dynamic_smem + ((1024u - (window & 1023u)) & 1023u);
        Storage s;
        s.stages = base;
        s.barriers = reinterpret_cast<Barriers*>(base + kStages * kStageBytes);
        return s;
    }

    // Producer (one thread): queues the k_blocks k-blocks of the tile at rows m0 of X and n0 of
    // W, each into the next stage of the ring once the consumers released it.
    __device__ __forceinline__ static void load_tile(const CUtensorMap* map_x,
                                                     const CUtensorMap* map_w, const Storage& s,
                                                     State& state, int32_t m0, int32_t n0,
                                                     int k_blocks) {
        for (int kb = 0; kb < k_blocks; ++kb) {
            s.barriers->producer_acquire(state);
            unsigned char* stage = s.stages + state.stage * kStageBytes;
            uint64_t* full = &s.barriers->full[state.stage];
            ptx::mbarrier_arrive_expect_tx(full, kStageBytes);
            ptx::tma_load_2d(stage, map_x, full, kb * kBlockK, m0);
            ptx::tma_load_2d(stage + kBytesA, map_w, full, kb * kBlockK, n0);
            state.advance();
        }
    }

    // Consumer warpgroup `consumer` (all 128 threads): accumulates the tile into acc, reading
    // k_blocks >= 1 stages from the ring and releasing each once its wgmmas retired. (k = 0 is
    // not this kernel's: a branch that zeroes acc instead costs the 128 x 256 tile its spill-free
    // register allocation.)
    // `between(kb)` runs while the tensor cores work on k-block kb (after its wgmmas were
    // committed, before waiting for them): the epilogue's Philox draws go there. It must not
    // touch acc.
    template <class Between>
    __device__ __forceinline__ static void mma_tile(float (&acc)[kAccumulators], const Storage& s,
                                                    State& state, int k_blocks, int consumer,
                                                    Between&& between) {
        const uint32_t a_offset = (uint32_t)(consumer % kWgRows) * 64u * 128u;
        const uint32_t b_offset = kBytesA + (uint32_t)(consumer / kWgRows) * kWgN * 128u;
        const bool leader = threadIdx.x % kWarpgroupThreads == 0;
        State release = state;
        for (int kb = 0; kb < k_blocks; ++kb) {
            s.barriers->consumer_wait(state);
            const unsigned char* stage = s.stages + state.stage * kStageBytes;
            ptx::fence_registers(acc);
            ptx::wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kBlockK / 16; ++ks) {
                const uint64_t desc_a = ptx::make_smem_desc(stage + a_offset + 32 * ks, 128, 16,
                                                            1024);
                const uint64_t desc_b = ptx::make_smem_desc(stage + b_offset + 32 * ks, 128, 16,
                                                            1024);
                ptx::wgmma_ss<T, kWgN>(acc, desc_a, desc_b, kb > 0 || ks > 0);
            }
            ptx::wgmma_commit_group();
            between(kb);
            // Leaves this k-block's group in flight; the previous one has retired, so its stage
            // can go back to the producer.
            ptx::wgmma_wait_group<1>();
            ptx::fence_registers(acc);
            if (kb > 0) {
                if (leader) s.barriers->consumer_release(release);
                release.advance();
            }
            state.advance();
        }
        ptx::wgmma_wait_group<0>();
        ptx::fence_registers(acc);
        if (leader) s.barriers->consumer_release(release);
    }
};

}  // namespace sm90
}  // namespace gemm
}  // namespace fusedrop
