// Threadblock level of the tensor-core GEMM: C[BM x BN] = A[BM x red] · B[red x BN], computed by
// (BM / WM) x (BN / WN) warps over a STAGES-deep cp.async pipeline of BK-wide reduction slices.
// The forward's X·Wᵀ and the backward's dZ·W and dZᵀ·X are this one main loop with other
// operand layouts (kMajorA, kMajorB; OperandTile in warp_tc.cuh) and, for the backward, a side
// operand and two hooks: one on the landed stage before the warps read it, one on each warp's A
// fragments before its mmas (where the backward forms dZ).
//
// Shared memory per stage: A's tile, the side operand's (kSideA), B's; each a block of its
// row-major global matrix, unpadded, with the 16-byte chunks of each row XOR-swizzled
// (SmemTile) so that the eight rows of every ldmatrix fall into distinct banks. No padding means
// 4 stages of 128 x 256 fit in the 99 KiB an sm_86 / sm_89 block may use.
//
// Global loads: 16-byte cp.async (zero-filled outside the matrix) when the matrix's base is
// 16-byte aligned and its rows are a multiple of 8 elements; otherwise plain element loads,
// zero-filled, stored as 16 bytes (slower, but any shape and any alignment work). kAligned = true
// makes the first a compile-time promise of the caller (the host checked every operand): the
// kernel then has no element path and no run-time branch between the two.
//
// Warp fragments (kFragBuffers): 1 loads the fragments of each k16 step just before its mmas;
// 2 keeps two sets, loading step s + 1's (the next slice's first, across the slice's barrier)
// before issuing step s's mmas, so that ldmatrix latency overlaps the tensor cores.
//
// Copies (kSpreadCopies): false issues all of a slice's refill (slice kt + STAGES - 1, into the
// stage slice kt - 1 freed) after slice kt's barrier, before any of its mmas; true spreads them
// over the slice's k16 steps, a share before each step's mmas, and commits them as one group
// after the last share (before the next slice's wait counts groups), so that a warp's copies
// interleave with its tensor-core work instead of preceding it (with one fragment set).
// The mma sequence, and so every output bit, is the same for every choice.
#pragma once

#include <stdint.h>
#include <string.h>

#include "../ptx.cuh"
#include "epilogue.cuh"
#include "warp_tc.cuh"

namespace fusedrop {
namespace gemm {

// A row-major [rows, cols] operand in global memory. vec: 16-byte cp.async may be used (the base
// is 16-byte aligned and cols a multiple of 8). data = nullptr: an absent operand.
template <typename T>
struct GlobalMatrix {
    const T* data;
    long long rows;
    long long cols;
    bool vec;
};

template <typename T>
__device__ __forceinline__ GlobalMatrix<T> global_matrix(const T* data, long long rows,
                                                         long long cols) {
    return GlobalMatrix<T>{data, rows, cols,
                           reinterpret_cast<uintptr_t>(data) % 16 == 0 && cols % 8 == 0};
}

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES,
          Major kMajorA = Major::K, Major kMajorB = Major::K, bool kSideA = false,
          int kFragBuffers = 1, bool kAligned = false, bool kSpreadCopies = false>
struct ThreadblockTc {
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kBlockK = BK;
    static constexpr int kWarpsM = BM / WM;
    static constexpr int kWarpsN = BN / WN;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    using OperandA = OperandTile<BM, BK, kMajorA>;
    using OperandB = OperandTile<BN, BK, kMajorB>;
    // A stage: A's tile, the side operand's (kSideA), B's.
    static constexpr int kOffsetSide = OperandA::Tile::kElems;
    static constexpr int kOffsetB = OperandA::Tile::kElems * (kSideA ? 2 : 1);
    static constexpr int kStageElems = kOffsetB + OperandB::Tile::kElems;
    static constexpr int kPipeBytes = STAGES * kStageElems * (int)sizeof(T);
    // Rows of the accumulator tile staged per epilogue pass: enough for every thread to own a
    // run of 32 columns, at most the whole tile.
    static constexpr int kEpiRows = 32 * kThreads / BN < BM ? 32 * kThreads / BN : BM;
    static constexpr int kPasses = BM / kEpiRows;
    using Warp = WarpMmaTc<T, WM, WN, OperandA, OperandB>;
    using Epilogue = DropoutEpilogue<T, kEpiRows, BN, kThreads>;
    static constexpr int kSmemBytes =
        kPipeBytes > Epilogue::kSmemBytes ? kPipeBytes : Epilogue::kSmemBytes;

    static_assert(BM % WM == 0 && BN % WN == 0 && BK % 16 == 0, "tiles divide evenly");
    static_assert(STAGES >= 3, "the pipeline keeps at least two slices in flight");
    static_assert(kFragBuffers == 1 || (kFragBuffers == 2 && BK / 16 % 2 == 0),
                  "two fragment sets alternate over an even number of k16 steps per slice, so "
                  "that step s of every slice uses set s % 2");
    static_assert(!kSpreadCopies || kFragBuffers == 1,
                  "spread copies are built with one fragment set (the second set's prefetch "
                  "begins the next slice inside the last step)");
    static_assert(BM * BK % (8 * kThreads) == 0 && BN * BK % (8 * kThreads) == 0,
                  "every thread copies the same number of 16-byte chunks");
    static_assert(BM % kEpiRows == 0 && kEpiRows % 16 == 0, "passes hold whole m16 tiles");

    // Copies the block of src that the operand's tile holds for output rows (A) or columns (B)
    // mn0 .. and reduction indices k0 .. (rows mn0.., columns k0.. of a K-major operand; rows
    // k0.., columns mn0.. of an MN-major one) into dst, zero outside the matrix: share `part` of
    // `parts` of the thread's chunks (chunk i when i % parts == part; parts = 1: all of them).
    template <class Operand>
    __device__ __forceinline__ static void load_operand(T* dst, const GlobalMatrix<T>& src,
                                                        long long mn0, long long k0, int part = 0,
                                                        int parts = 1) {
        using Tile = typename Operand::Tile;
        constexpr int kChunks = Tile::kElems / 8 / kThreads;
        // Chunk i of a thread is chunk threadIdx.x + i * kThreads of the tile: every chunk of a
        // thread lies in the same column, kRowStep rows below the previous one. The column's
        // values are computed once, so that no per-chunk copy of them stays live through the
        // main loop (for an MN-major operand they do not change from one slice to the next).
        static_assert(kThreads % Tile::kChunksPerRow == 0, "a thread's chunks share a column");
        constexpr int kRowStep = kThreads / Tile::kChunksPerRow;
        const int first_row = (int)threadIdx.x / Tile::kChunksPerRow;
        const int col = ((int)threadIdx.x % Tile::kChunksPerRow) * 8;
        const long long gr0 = (Operand::kMajor == Major::K ? mn0 : k0) + first_row;
        const long long gc = (Operand::kMajor == Major::K ? k0 : mn0) + col;
        if constexpr (kAligned) {
            // Rows a whole number of chunks: a chunk is in the matrix or out of it. One address
            // per operand and slice, stepped by kRowStep rows per chunk (no per-chunk 64-bit
            // multiply); a chunk's row is in the matrix when its offset from the first is below
            // the rows left.
            const long long rows_left = src.rows - gr0;
            const bool in_cols = gc < src.cols;
            const long long row_step = (long long)kRowStep * src.cols;
            const T* p = src.data + gr0 * src.cols + gc;
#pragma unroll
            for (int i = 0; i < kChunks; ++i) {
                if (i % parts == part) {
                    const bool valid = in_cols && i * kRowStep < rows_left;
                    ptx::cp_async_16(dst + Tile::offset(first_row + i * kRowStep, col),
                                     valid ? p : src.data, valid);
                }
                p += row_step;
            }
            return;
        }
        // Elements of the chunk inside the matrix's row: 8, fewer at its end, none past it.
        const long long left = src.cols - gc;
        const int in_row = left >= 8 ? 8 : left > 0 ? (int)left : 0;
#pragma unroll
        for (int i = 0; i < kChunks; ++i) {
            if (i % parts != part) continue;
            const long long gr = gr0 + i * kRowStep;
            T* d = dst + Tile::offset(first_row + i * kRowStep, col);
            if (src.vec) {
                const bool valid = gr < src.rows && gc < src.cols;
                ptx::cp_async_16(d, valid ? src.data + gr * src.cols + gc : src.data, valid);
            } else {
                uint16_t e[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    T v = Element<T>::from_float(0.0f);
                    if (gr < src.rows && j < in_row) v = src.data[gr * src.cols + gc + j];
                    e[j] = bits16(v);
                }
                *reinterpret_cast<uint4*>(d) =
                    make_uint4((uint32_t)e[0] | ((uint32_t)e[1] << 16),
                               (uint32_t)e[2] | ((uint32_t)e[3] << 16),
                               (uint32_t)e[4] | ((uint32_t)e[5] << 16),
                               (uint32_t)e[6] | ((uint32_t)e[7] << 16));
            }
        }
    }

    // Reduction slice k0.. of the tile at (a0, b0): A, the side operand (kSideA, when given), and
    // B when `multiply`; share `part` of `parts` of each (load_operand).
    __device__ __forceinline__ static void load_stage(T* stage, const GlobalMatrix<T>& a,
                                                      const GlobalMatrix<T>& side,
                                                      const GlobalMatrix<T>& b, long long a0,
                                                      long long b0, long long k0, bool multiply,
                                                      int part = 0, int parts = 1) {
        load_operand<OperandA>(stage, a, a0, k0, part, parts);
        if (kSideA && side.data != nullptr) {
            load_operand<OperandA>(stage + kOffsetSide, side, a0, k0, part, parts);
        }
        if (multiply) load_operand<OperandB>(stage + kOffsetB, b, b0, k0, part, parts);
    }

    // warp.acc += A[a0.., red] · B[red, b0..] for this warp's part of the tile, over the
    // reduction indices red of `slices` (a's columns if K-major, its rows if MN-major; the whole
    // reduction, or a split-K share of it). Leaves every copy complete and every warp past its
    // last read of the pipeline (shared memory is free).
    // `prepare(kt, stage)` runs on every thread once slice kt has landed in `stage` and is
    // visible to the block, before any warp reads it (the backward forms dZ there, or sums db);
    // whatever it writes it must publish with __syncthreads itself.
    // `transform_a(a, stage, k0, red0)` runs on each warp's A fragments of every k16 step
    // between their ldmatrix and their mmas (a: Warp::Fragments::a; k0, red0: the step's first
    // reduction index in the stage and in the whole product; the backward forms ReLU's dZ there,
    // in registers). multiply = false loads and runs no B and no
    // mma (the backward's db-only pass); `side` is loaded beside A when kSideA.
    template <class Prepare, class TransformA>
    __device__ __forceinline__ static void mainloop(Warp& warp, T* smem, const GlobalMatrix<T>& a,
                                                    const GlobalMatrix<T>& side,
                                                    const GlobalMatrix<T>& b, long long a0,
                                                    long long b0, bool multiply,
                                                    Slices slices, Prepare&& prepare,
                                                    TransformA&& transform_a) {
        const int warp_id = (int)threadIdx.x / 32;
        const int lane = (int)threadIdx.x % 32;
        const int warp_m = warp_id / kWarpsN;
        const int warp_n = warp_id % kWarpsN;
        const long long first = slices.begin, end = slices.end;

#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (first + s < end) {
                load_stage(smem + s * kStageElems, a, side, b, a0, b0, (first + s) * BK,
                           multiply);
            }
            ptx::cp_async_commit();
        }
        int read_stage = 0;
        int write_stage = STAGES - 1;
        constexpr int kSteps = BK / 16;
        // The refill the current slice issues: slice `refill_slice` into `refill`, none past the
        // last slice.
        T* refill = smem;
        long long refill_slice = 0;
        // Issues share `part` of the current slice's refill (kSpreadCopies, with the mmas of
        // step `part`), committing the group after the last share.
        auto refill_share = [&](int part) {
            if (refill_slice < end) {
                load_stage(refill, a, side, b, a0, b0, refill_slice * BK, multiply, part, kSteps);
            }
            if (part == kSteps - 1) ptx::cp_async_commit();
        };
        // Whether the copies are spread over the k16 steps: there are no steps without mmas.
        const bool spread = kSpreadCopies && multiply;
        // Starts slice kt: returns its stage once it has landed, is visible to the block and has
        // been prepared, after refilling the stage of slice kt - 1 with slice kt + STAGES - 1
        // (or, when spread, before that refill, which the slice's steps then issue).
        auto begin_slice = [&](long long kt) -> const T* {
            // Slice kt has landed for this thread; the barrier makes it visible to all and
            // guarantees every warp is done with the stage about to be overwritten (every
            // fragment of slice kt - 1 was loaded before it).
            ptx::cp_async_wait<STAGES - 2>();
            __syncthreads();
            refill = smem + write_stage * kStageElems;
            refill_slice = kt + STAGES - 1;
            if (!spread) {
                if (refill_slice < end) {
                    load_stage(refill, a, side, b, a0, b0, refill_slice * BK, multiply);
                }
                ptx::cp_async_commit();
            }
            T* stage = smem + read_stage * kStageElems;
            prepare(kt, stage);
            read_stage = read_stage + 1 == STAGES ? 0 : read_stage + 1;
            write_stage = write_stage + 1 == STAGES ? 0 : write_stage + 1;
            return stage;
        };
        const int a_first = warp_m * WM;
        const int b_first = warp_n * WN;
        // The fragments of step k16 of slice kt, A's transformed.
        auto load_step = [&](typename Warp::Fragments& frag, const T* stage, long long kt,
                             int k16) {
            Warp::load(frag, stage, stage + kOffsetB, a_first, b_first, k16 * 16, lane);
            transform_a(frag.a, stage, k16 * 16, kt * BK + k16 * 16);
        };
        if constexpr (kFragBuffers == 1) {
            for (long long kt = first; kt < end; ++kt) {
                const T* stage = begin_slice(kt);
                if (multiply) {
#pragma unroll
                    for (int k16 = 0; k16 < kSteps; ++k16) {
                        typename Warp::Fragments frag;
                        load_step(frag, stage, kt, k16);
                        // Issued while the fragments' ldmatrix are in flight.
                        if (spread) refill_share(k16);
                        warp.mma(frag);
                    }
                }
            }
        } else {
            // frag[s % 2] holds step s of the current slice; step kSteps - 1 prefetches step 0 of
            // the next slice into frag[0] once that slice has begun.
            typename Warp::Fragments frag[2];
            const T* stage = nullptr;
            if (first < end) {
                stage = begin_slice(first);
                if (multiply) load_step(frag[0], stage, first, 0);
            }
            for (long long kt = first; kt < end; ++kt) {
#pragma unroll
                for (int k16 = 0; k16 < kSteps; ++k16) {
                    if (k16 + 1 < kSteps) {
                        if (multiply) load_step(frag[(k16 + 1) % 2], stage, kt, k16 + 1);
                    } else if (kt + 1 < end) {
                        stage = begin_slice(kt + 1);
                        if (multiply) load_step(frag[0], stage, kt + 1, 0);
                    }
                    if (multiply) warp.mma(frag[k16 % 2]);
                }
            }
        }
        ptx::cp_async_wait<0>();
        __syncthreads();
    }

    // The plain product (the forward): no side operand, nothing done to the stage or the
    // fragments.
    __device__ __forceinline__ static void mainloop(Warp& warp, T* smem, const GlobalMatrix<T>& a,
                                                    const GlobalMatrix<T>& b, long long a0,
                                                    long long b0) {
        mainloop(warp, smem, a, GlobalMatrix<T>{nullptr, 0, 0, false}, b, a0, b0, true,
                 Slices{0, ((kMajorA == Major::K ? a.cols : a.rows) + BK - 1) / BK},
                 [](long long, T*) {},
                 [](uint32_t(&)[Warp::kMTiles][4], const T*, int, long long) {});
    }

    // Writes the accumulator rows of epilogue pass `pass` (tile rows pass * kEpiRows ..) into
    // the staging slab (Epilogue::kStride floats per row).
    __device__ __forceinline__ static void stage_accumulators(const Warp& warp, float* stage,
                                                              int pass) {
        const int warp_id = (int)threadIdx.x / 32;
        const int lane = (int)threadIdx.x % 32;
        const int warp_m = warp_id / kWarpsN;
        const int warp_n = warp_id % kWarpsN;
        const int g = lane / 4;
        const int t = lane % 4;
#pragma unroll
        for (int mt = 0; mt < Warp::kMTiles; ++mt) {
            const int row = warp_m * WM + 16 * mt - pass * kEpiRows;
            if (row < 0 || row >= kEpiRows) continue;
#pragma unroll
            for (int nt = 0; nt < Warp::kNTiles; ++nt) {
                const int col = warp_n * WN + 8 * nt + 2 * t;
                float* top = stage + (row + g) * Epilogue::kStride + col;
                float* bottom = top + 8 * Epilogue::kStride;
                *reinterpret_cast<float2*>(top) =
                    make_float2(warp.acc[mt][nt][0], warp.acc[mt][nt][1]);
                *reinterpret_cast<float2*>(bottom) =
                    make_float2(warp.acc[mt][nt][2], warp.acc[mt][nt][3]);
            }
        }
    }
};

}  // namespace gemm
}  // namespace fusedrop
