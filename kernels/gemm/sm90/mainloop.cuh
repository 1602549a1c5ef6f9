// Hopper (sm_90a) GEMM main loop: TMA loads into a multistage shared-memory ring
// (pipeline.cuh), wgmma m64nNk16 on f32 accumulators, warp-specialised. The block computes
// C[BM x BN] = A[BM x K] · B[K x BN], one k-block of kBlockK = 64 elements (one 128-byte swizzle
// row of halves) per stage.
//
// Operand layouts (the template's kMajorA / kMajorB). Every operand box is written by TMA with
// 128-byte swizzle: box row r at byte 128 r, its 16-byte chunks permuted within each 1024-byte
// group of 8 rows; wgmma descriptors with 128-byte swizzle read that layout directly.
//   K-major  (the matrix is [rows, K] row-major, e.g. the forward's X and W): one box of
//            rows x 64 at (k, row) coordinates; descriptor stride byte offset 1024 (8 rows),
//            leading byte offset unused by this mode (16 is written), k16 step ks at 32 ks bytes.
//   MN-major (the matrix is [K, rows] row-major, e.g. the backward's W for dX and X for dW):
//            rows / 64 boxes of 64 (inner, along the operand's M or N) x 64 (K rows), each
//            8192 bytes; descriptor leading byte offset 8192 (the next 64 M/N), stride byte
//            offset 1024 (8 K rows), k16 step ks at 2048 ks bytes; wgmma's transpose bit set.
// In both layouts the sub-block of an operand that starts at M/N index `first` (a multiple of
// 64) lies 128 first bytes into the box.
//
// A side operand (kSideA): a second matrix with A's shape and layout, loaded beside A in every
// stage but not multiplied (the backward's saved output Y, from which dZ is formed in place).
//
// B multicast (kMulticast > 1, K-major B only): the kernel runs in clusters of kMulticast
// blocks (consecutive along x) whose tiles share B's columns and differ in A's rows. Block
// `rank` of the cluster loads rows [rank, rank + 1) x BN / kMulticast of each stage's B box and
// multicasts them to every block of the cluster (B's tensor map has boxes of BN / kMulticast
// rows), so each block reads 1 / kMulticast of B from L2. A block's stage is therefore written
// by every block of the cluster: it goes back to the producers only when the consumers of every
// block have released it (each consumer warpgroup arrives on the `empty` barrier of every block,
// kConsumerWarpgroups x kMulticast arrivals per phase, which the producer acquires at cluster
// scope), and its `full` barrier expects the whole stage's bytes from the block's own expect_tx.
// A block must not exit while another may still arrive on its barriers: the producer drains the
// ring (`drain`) before it returns.
//
// Consumer warpgroups: two. Cooperative (kConsumersPerTile = 2, the default): both work on every
// tile; with BM = 128 each takes 64 rows and all BN columns, with BM = 64 both take the 64 rows
// and BN / 2 columns each. Ping-pong (kConsumersPerTile = 1, BM = 64 or 128): each tile is one
// warpgroup's, all of it; the kernel hands the warpgroups alternate tiles, and a warpgroup skips
// the stages of the other's tiles (skip_tile), so one warpgroup's epilogue runs while the other's
// main loop keeps the tensor cores busy. Each issues wgmma m64n(kWgN)k16, once per k16 step for
// each of its kWgRowBlocks blocks of 64 rows (two for a ping-pong warpgroup's 128-row tile, whose
// accumulators are the two blocks' fragments one after the other: row_block).
//
// Transform threads (kTransformThreads > 0): threads of the producer warpgroup other than the
// TMA thread transform A in each landed stage before the consumers read it (`transform`; the
// backward's dZᵀ for dW). The consumers then wait on the stage's `formed` barrier instead of
// `full` (pipeline.cuh, FormedStageBarriers); their main loops are otherwise the same.
#pragma once

#include <stdint.h>

#include <type_traits>

#include "../../ptx.cuh"
#include "../layout.cuh"
#include "pipeline.cuh"

namespace fusedrop {
namespace gemm {
namespace sm90 {

constexpr int kConsumerWarpgroups = 2;
constexpr int kWarpgroupThreads = 128;
// One producer warpgroup (one thread of it issues the TMA loads) and the consumers.
constexpr int kThreads = (1 + kConsumerWarpgroups) * kWarpgroupThreads;

// The registers per thread that setmaxnreg gives each warpgroup once the kernel has started: the
// producer, which only issues TMA, gives back what the consumers' accumulators take.
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
// What a kernel of kThreads threads built with __launch_bounds__(kThreads, 1) has per thread at
// entry: the 64 Ki registers of a multiprocessor shared out, in ptxas's units of 8 (168 for 384
// threads, as the -Xptxas -v report says). setmaxnreg.inc waits until the block's pool holds the
// registers it asks for (PTX ISA, "setmaxnreg"), so a split that needs more than the pool would
// hang the consumers at their first instruction rather than fail: a build error instead.
constexpr int kEntryRegisters = 65536 / kThreads / 8 * 8;
static_assert(kWarpgroupThreads * (kProducerRegisters + kConsumerWarpgroups * kConsumerRegisters) <=
                  kEntryRegisters * kThreads,
              "the setmaxnreg split asks for more registers than the block has at entry");

// The operand orientations of gemm/layout.cuh, named here as the kernels name them.
using Major = gemm::Major;

// One operand's box(es) in a stage: kRows along M (A) or N (B), 64 along K.
template <int kRows, Major kMajor>
struct OperandTile {
    static_assert(kRows % 64 == 0 || kMajor == Major::K, "MN-major boxes are 64 wide");
    static constexpr uint32_t kBytes = kRows * 128;
    static constexpr int kTranspose = kMajor == Major::MN ? 1 : 0;

    // Queues the TMA load(s) of k-block kb of the operand rows from `first` on, into dst.
    __device__ __forceinline__ static void load(unsigned char* dst, const CUtensorMap* map,
                                                uint64_t* full, int32_t first, int kb) {
        if (kMajor == Major::K) {
            ptx::tma_load_2d(dst, map, full, kb * 64, first);
        } else {
#pragma unroll
            for (int j = 0; j < kRows / 64; ++j)
                ptx::tma_load_2d(dst + 8192 * j, map, full, first + 64 * j, kb * 64);
        }
    }

    // The wgmma descriptor of the k16 step ks of the sub-block at byte `offset` (128 x its
    // first row) of the box at `box`.
    __device__ __forceinline__ static uint64_t descriptor(const unsigned char* box,
                                                          uint32_t offset, int ks) {
        return kMajor == Major::K
                   ? ptx::make_smem_desc(box + offset + 32 * ks, 128, 16, 1024)
                   : ptx::make_smem_desc(box + offset + 2048 * ks, 128, 8192, 1024);
    }
};

template <typename T, int BM, int BN, int kStagesArg, Major kMajorA = Major::K,
          Major kMajorB = Major::K, bool kSideA = false, int kMulticastArg = 1,
          int kConsumersPerTileArg = kConsumerWarpgroups, int kTransformThreadsArg = 0>
struct Mainloop {
    static_assert(sizeof(T) == 2, "the wgmma main loop takes f16 or bf16 operands");
    static_assert(BM == 64 || BM == 128, "BM is one or two consumer warpgroups of 64 rows");
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kStages = kStagesArg;
    static constexpr int kBlockK = 128 / (int)sizeof(T);
    static constexpr int kConsumersPerTile = kConsumersPerTileArg;
    static_assert(kConsumersPerTile == kConsumerWarpgroups || kConsumersPerTile == 1,
                  "cooperative consumers, or ping-pong consumers");
    // Blocks of 64 rows in a consumer warpgroup's part of the tile: its whole 128-row tile for a
    // ping-pong warpgroup at BM = 128, else one.
    static constexpr int kWgRowBlocks = kConsumersPerTile == 1 ? BM / 64 : 1;
    // Consumer warpgroups' parts along the rows of the tile.
    static constexpr int kWgRows = BM / 64 / kWgRowBlocks;
    static constexpr int kWgCols = kConsumersPerTile / kWgRows;
    static constexpr int kWgN = BN / kWgCols;  // the wgmma N of each consumer warpgroup
    static_assert(kWgN % 8 == 0 && kWgN >= 8 && kWgN <= 256, "wgmma N is 8 .. 256");
    static_assert(BN <= 256, "a TMA box row count is at most 256");
    static_assert(kMajorB == Major::K || kWgN % 64 == 0,
                  "an MN-major B sub-block starts on a 64-column box");
    static constexpr int kAccumulators = kWgRowBlocks * kWgN / 2;

    // The fragment of row block `block` (wgmma_ss's accumulator layout) within a warpgroup's
    // accumulators.
    __device__ __forceinline__ static float (&row_block(float (&acc)[kAccumulators],
                                                        int block))[kWgN / 2] {
        return *reinterpret_cast<float(*)[kWgN / 2]>(acc + block * (kWgN / 2));
    }
    __device__ __forceinline__ static const float (&row_block(
        const float (&acc)[kAccumulators], int block))[kWgN / 2] {
        return *reinterpret_cast<const float(*)[kWgN / 2]>(acc + block * (kWgN / 2));
    }
    static constexpr int kMulticast = kMulticastArg;
    static_assert(kMulticast == 1 || kMulticast == 2 || kMulticast == 4,
                  "B is multicast over clusters of 1, 2 or 4 blocks");
    static_assert(kMulticast == 1 || kMajorB == Major::K, "a multicast B slice is K-major");
    static_assert(BN % (8 * kMulticast) == 0,
                  "each block's B slice keeps the next on a 1024-byte swizzle boundary");
    // Arrivals that release a stage: every consumer warpgroup of the tile in every block of the
    // cluster.
    static constexpr uint32_t kEmptyArrivals = (uint32_t)kConsumersPerTile * kMulticast;
    using TileA = OperandTile<BM, kMajorA>;
    using TileB = OperandTile<BN, kMajorB>;
    // The rows of B one block loads (and multicasts): all of them without multicast.
    using SliceB = OperandTile<BN / kMulticast, kMajorB>;
    static constexpr uint32_t kBytesA = TileA::kBytes;
    static constexpr uint32_t kBytesSide = kSideA ? TileA::kBytes : 0;
    static constexpr uint32_t kBytesB = TileB::kBytes;
    // A stage: A's box(es), the side operand's, B's.
    static constexpr uint32_t kOffsetSide = kBytesA;
    static constexpr uint32_t kOffsetB = kBytesA + kBytesSide;
    static constexpr uint32_t kStageBytes = kBytesA + kBytesSide + kBytesB;
    static_assert(kBytesA % 1024 == 0 && kBytesB % 1024 == 0,
                  "each box keeps the next one on a 1024-byte swizzle boundary");
    // Transform threads (pipeline.cuh's FormedStageBarriers: the consumers wait until they have
    // formed A in each landed stage), or 0: the consumers take the stages as they land.
    static constexpr int kTransformThreads = kTransformThreadsArg;
    static_assert(kTransformThreads == 0 || kMulticast == 1,
                  "transform threads form their own block's stages only");

    using State = PipelineState<kStages>;
    using Barriers = std::conditional_t<kTransformThreads == 0, StageBarriers<kStages>,
                                        FormedStageBarriers<kStages, kTransformThreads>>;

    // Dynamic shared memory: up to 1023 bytes to round the base up to the 1024-byte boundary
    // the 128-byte swizzle needs, the stages, then the barriers.
    static constexpr int kSmemBytes =
        1024 + kStages * (int)kStageBytes + (int)sizeof(Barriers);


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

    // Producer (one thread): queues the k_blocks k-blocks from k-block k_first on of the tile
    // whose A rows start at a0 and B rows (columns of C) at b0, each into the next stage of the
    // ring once the consumers released it. `side` (kSideA only; null: not loaded) is read at A's
    // coordinates. A split-K block loads its own range of k-blocks; the consumers count k-blocks
    // from 0 within it.
    __device__ __forceinline__ static void load_tile(const CUtensorMap* map_a,
                                                     const CUtensorMap* map_b,
                                                     const CUtensorMap* side, const Storage& s,
                                                     State& state, int32_t a0, int32_t b0,
                                                     int k_first, int k_blocks) {
        const uint32_t bytes = kStageBytes - (side != nullptr ? 0u : kBytesSide);
        for (int kb = k_first; kb < k_first + k_blocks; ++kb) {
            s.barriers->producer_acquire(state, kMulticast > 1);
            unsigned char* stage = s.stages + state.stage * kStageBytes;
            uint64_t* full = &s.barriers->full[state.stage];
            ptx::mbarrier_arrive_expect_tx(full, bytes);
            TileA::load(stage, map_a, full, a0, kb);
            if (kSideA && side != nullptr) TileA::load(stage + kOffsetSide, side, full, a0, kb);
            if constexpr (kMulticast == 1) {
                TileB::load(stage + kOffsetB, map_b, full, b0, kb);
            } else {
                const int rank = (int)ptx::cluster_ctarank();
                ptx::tma_load_2d_multicast(stage + kOffsetB + rank * SliceB::kBytes, map_b, full,
                                           kb * 64, b0 + rank * (BN / kMulticast),
                                           (uint16_t)((1u << kMulticast) - 1u));
            }
            state.advance();
        }
    }

    // The first row of this block's share of a cluster's tile: with multicast, the blocks of a
    // cluster take consecutive row tiles of one column tile; 0 otherwise.
    __device__ __forceinline__ static int row_in_cluster() {
        return kMulticast > 1 ? (int)ptx::cluster_ctarank() * BM : 0;
    }

    // The producer warpgroup's one thread, for the whole kernel: loads the stages of every tile
    // `scheduler` gives this block (or cluster), in its order, each tile's k-blocks
    // [k_first, k_first + k_blocks), with `side` as load_tile; then, with multicast, drains the
    // ring. The scheduler's row tiles are kBlockM x kMulticast rows (a cluster's).
    template <class Scheduler>
    __device__ __forceinline__ static void produce(const Scheduler& scheduler,
                                                   const CUtensorMap* map_a,
                                                   const CUtensorMap* map_b,
                                                   const CUtensorMap* side, const Storage& s,
                                                   int k_first, int k_blocks) {
        prefetch_maps(map_a, map_b, side);
        const int row0 = row_in_cluster();
        State state;
        for (int t = scheduler.first(); t < scheduler.tiles(); t = scheduler.next(t)) {
            const auto tile = scheduler.tile(t);
            load_tile(map_a, map_b, side, s, state, tile.tm * (BM * kMulticast) + row0,
                      tile.tn * BN, k_first, k_blocks);
        }
        if constexpr (kMulticast > 1) drain(s, state);
    }

    // The producer's one thread for a stream-K grid (stream_k.cuh): loads every piece `work`
    // gives this block, in its order, each its own k-blocks of the tile `scheduler` places it
    // at. No multicast, no side operand.
    template <class Work, class Scheduler>
    __device__ __forceinline__ static void produce_pieces(const Work& work,
                                                          const Scheduler& scheduler,
                                                          const CUtensorMap* map_a,
                                                          const CUtensorMap* map_b,
                                                          const Storage& s) {
        static_assert(kMulticast == 1 && !kSideA, "stream-K pieces are one block's");
        prefetch_maps(map_a, map_b, nullptr);
        State state;
        for (int i = 0; i < work.pieces(); ++i) {
            const auto piece = work.piece(i);
            const auto tile = scheduler.tile(piece.linear);
            load_tile(map_a, map_b, nullptr, s, state, tile.tm * BM, tile.tn * BN, piece.k_first,
                      piece.k_blocks);
        }
    }

    __device__ __forceinline__ static void prefetch_maps(const CUtensorMap* map_a,
                                                         const CUtensorMap* map_b,
                                                         const CUtensorMap* side) {
        ptx::prefetch_tensormap(map_a);
        ptx::prefetch_tensormap(map_b);
        if (side != nullptr) ptx::prefetch_tensormap(side);
    }

    // Producer, after its last tile: waits until every stage of the ring was released by every
    // consumer that will release it (with multicast, those of the other blocks too), so that the
    // block outlives every arrival on its barriers.
    __device__ __forceinline__ static void drain(const Storage& s, State state) {
        for (int i = 0; i < kStages; ++i) {
            s.barriers->producer_acquire(state, kMulticast > 1);
            state.advance();
        }
    }

    // The transform threads (kTransformThreads of them, each calling this with its index
    // `thread`), for the whole kernel: every k-block of every tile `scheduler` gives this block,
    // in the producer's order (k-blocks counted from 0 within a split-K block's range, as the
    // consumers count them): waits until the stage landed, calls form(tile, kb, stage, thread),
    // publishes the thread's stores to the async proxy and arrives on the stage's `formed`
    // barrier, which the consumers wait on instead of `full`.
    template <class Scheduler, class Form>
    __device__ __forceinline__ static void transform(const Scheduler& scheduler, const Storage& s,
                                                     int k_blocks, int thread, Form&& form) {
        static_assert(kTransformThreads > 0, "a main loop with transform threads");
        State state;
        for (int t = scheduler.first(); t < scheduler.tiles(); t = scheduler.next(t)) {
            const auto tile = scheduler.tile(t);
            for (int kb = 0; kb < k_blocks; ++kb) {
                s.barriers->transform_wait(state);
                form(tile, kb, s.stages + state.stage * kStageBytes, thread);
                ptx::fence_proxy_async_shared();
                s.barriers->transform_done(state);
                state.advance();
            }
        }
    }

    // A consumer warpgroup's release of the stage `st`: one arrival on its `empty` barrier, by
    // the warpgroup's first thread; with multicast, threads 0 .. kMulticast - 1 arrive on the
    // barrier of blocks 0 .. kMulticast - 1 of the cluster.
    __device__ __forceinline__ static void release_stage(const Storage& s, const State& st) {
        const uint32_t t = threadIdx.x % kWarpgroupThreads;
        if constexpr (kMulticast == 1) {
            if (t == 0) s.barriers->consumer_release(st);
        } else if (t < (uint32_t)kMulticast) {
            ptx::mbarrier_arrive_cluster(ptx::cluster_map(&s.barriers->empty[st.stage], t));
        }
    }

    // Ping-pong: the consumer warpgroup that does not take a tile passes over its k_blocks
    // stages, which the other one consumes and releases.
    __device__ __forceinline__ static void skip_tile(State& state, int k_blocks) {
        for (int kb = 0; kb < k_blocks; ++kb) state.advance();
    }

    // The byte offset of consumer `consumer`'s B columns in B's box(es).
    __device__ __forceinline__ static uint32_t b_offset_of(int consumer) {
        return (uint32_t)(consumer / kWgRows) * kWgN * 128u;
    }

    // After k-block kb's wgmmas were committed: leaves them in flight and waits for the previous
    // k-block's, whose stage then goes back to the producer (release_stage). `state` moves to
    // the next stage to consume, `release` to the next to release.
    __device__ __forceinline__ static void retire_previous(float (&acc)[kAccumulators],
                                                           const Storage& s, State& state,
                                                           State& release, int kb) {
        ptx::wgmma_wait_group<1>();
        ptx::fence_registers(acc);
        if (kb > 0) {
            release_stage(s, release);
            release.advance();
        }
        state.advance();
    }

    // After the tile's last k-block: waits for every wgmma and releases the last stage.
    __device__ __forceinline__ static void retire_last(float (&acc)[kAccumulators],
                                                       const Storage& s, const State& release) {
        ptx::wgmma_wait_group<0>();
        ptx::fence_registers(acc);
        release_stage(s, release);
    }

    // The consumer warpgroup (all 128 threads) that takes part `consumer` (0 ..
    // kConsumersPerTile - 1) of the tile: accumulates its part into acc, reading
    // k_blocks >= 1 stages from the ring and releasing each once its wgmmas retired. (k = 0 is
    // not this kernel's: a branch that zeroes acc instead costs the 128 x 256 tile its spill-free
    // register allocation.)
    // `prepare(kb, stage)` runs once k-block kb's bytes have landed (with transform threads:
    // once they have formed the stage), before its wgmmas are issued, while the previous
    // k-block's are still in flight: the backward's consumers form dZ in the stage there. Whatever it writes to shared memory it must fence (fence.proxy.async) and
    // publish to the warpgroup (warpgroup_barrier) itself.
    // `between(kb)` runs while the tensor cores work on k-block kb (after its wgmmas were
    // committed, before waiting for them): the epilogue's Philox draws go there. Neither may
    // touch acc.
    template <class Prepare, class Between>
    __device__ __forceinline__ static void mma_tile(float (&acc)[kAccumulators], const Storage& s,
                                                    State& state, int k_blocks, int consumer,
                                                    Prepare&& prepare, Between&& between) {
        const uint32_t a_offset = (uint32_t)(consumer % kWgRows) * 64u * 128u;
        const uint32_t b_offset = b_offset_of(consumer);
        State release = state;
        for (int kb = 0; kb < k_blocks; ++kb) {
            s.barriers->consumer_wait(state);
            unsigned char* stage = s.stages + state.stage * kStageBytes;
            prepare(kb, stage);
            ptx::fence_registers(acc);
            ptx::wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kBlockK / 16; ++ks) {
                const uint64_t desc_b = TileB::descriptor(stage + kOffsetB, b_offset, ks);
#pragma unroll
                for (int block = 0; block < kWgRowBlocks; ++block) {
                    const uint64_t desc_a =
                        TileA::descriptor(stage, a_offset + (uint32_t)block * 64u * 128u, ks);
                    ptx::wgmma_ss<T, kWgN, TileA::kTranspose, TileB::kTranspose>(
                        row_block(acc, block), desc_a, desc_b, kb > 0 || ks > 0);
                }
            }
            ptx::wgmma_commit_group();
            between(kb);
            retire_previous(acc, s, state, release, kb);
        }
        retire_last(acc, s, release);
    }

    // The warpgroup's A fragments of one k-block, one per k16 step (wgmma_rs's register
    // layout).
    using FragmentsA = uint32_t[kBlockK / 16][4];

    // mma_tile with A from registers: `load_a(kb, stage, a)` fills the A fragments of k-block kb
    // from its landed stage (the backward reads dY and Y there and forms dZ in the registers);
    // B comes from shared memory as in mma_tile. A wgmma reads its A registers until it retires,
    // so consecutive k-blocks use two fragment sets, and the loop takes k-blocks in pairs to
    // keep every register index a compile-time constant.
    template <class LoadA>
    __device__ __forceinline__ static void mma_tile_rs(float (&acc)[kAccumulators],
                                                       const Storage& s, State& state,
                                                       int k_blocks, int consumer,
                                                       LoadA&& load_a) {
        static_assert(kMajorA == Major::K, "register A fragments are K-major");
        static_assert(kWgRowBlocks == 1, "register A fragments are one 64-row block's");
        const uint32_t b_offset = b_offset_of(consumer);
        State release = state;
        FragmentsA even, odd;
        auto k_block = [&](int kb, FragmentsA& a) {
            s.barriers->consumer_wait(state);
            unsigned char* stage = s.stages + state.stage * kStageBytes;
            load_a(kb, stage, a);
            // The lanes of a warp may leave load_a at different points (the backward's ReLU
            // returns early where no Y is NaN); wgmma.fence and wgmma are .aligned, so the warp
            // reconverges here rather than trusting the compiler to.
            __syncwarp();
            // Every A register is final before the wgmmas start: an instruction defining one
            // inside the pipeline stage (the compiler may sink plain arithmetic past the
            // wgmma_fence) would make ptxas serialize the wgmmas.
            ptx::fence_registers(a);
            ptx::fence_registers(acc);
            ptx::wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kBlockK / 16; ++ks) {
                const uint64_t desc_b = TileB::descriptor(stage + kOffsetB, b_offset, ks);
                ptx::wgmma_rs<T, kWgN, TileB::kTranspose>(acc, a[ks], desc_b, kb > 0 || ks > 0);
            }
            ptx::wgmma_commit_group();
            // This k-block's fragment set stays untouched until the next k-block's wait retires
            // its wgmmas; the previous set is free again after this one.
            retire_previous(acc, s, state, release, kb);
        };
        // Whole pairs, then an odd k-block out: no path through the code refills a fragment set
        // whose wgmmas may still be in flight (ptxas would otherwise serialize every wgmma).
        int kb = 0;
        for (; kb + 1 < k_blocks; kb += 2) {
            k_block(kb, even);
            k_block(kb + 1, odd);
        }
        if (kb < k_blocks) k_block(kb, even);
        retire_last(acc, s, release);
    }

    template <class Between>
    __device__ __forceinline__ static void mma_tile(float (&acc)[kAccumulators], const Storage& s,
                                                    State& state, int k_blocks, int consumer,
                                                    Between&& between) {
        mma_tile(acc, s, state, k_blocks, consumer, [](int, unsigned char*) {}, between);
    }
};

}  // namespace sm90
}  // namespace gemm
}  // namespace fusedrop
