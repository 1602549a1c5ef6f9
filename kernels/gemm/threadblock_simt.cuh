// Threadblock level of the f32 SIMT GEMM (true fp32 FMA, no TF32): C[BM x BN] = A[BM x red] ·
// B[red x BN], each thread accumulating a TM x TN register block over BK-deep slices that are
// double-buffered in shared memory (the next slice is read from global memory into registers
// while the current one is multiplied). The forward's X·Wᵀ (both operands K-major) and the
// backward's dZ·W and dZᵀ·X (B MN-major; A K-major for dX, MN-major for dW, formed from dY as it
// is read) are this one main loop with other operand sources and layouts.
//
// Shared memory holds both slices transposed, k-major: As[k][BM + 4] and Bs[k][BN + 4], so a
// thread reads its TM rows (and TN columns) as float4s. A thread's rows are split into groups of
// 4 that lie BM / (TM / 4) apart (likewise its columns), so with 16 threads per row of register
// blocks (BN / TN = 16) a half-warp reads 16 consecutive float4s of Bs (no bank conflicts) and
// one address of As (broadcast), a warp two (the 64 x 32 tiles, 8 per row: 8 float4s and two
// addresses per half-warp).
//
// Global loads: each thread reads the same number of runs of 4 consecutive elements of each
// operand's row-major global matrix per slice (one each at 128 x 128 x 8, two at 128 x 128 x 16),
// from an operand source that returns them as floats, zero outside the matrix (GlobalRows below:
// a float4 load when the f32 matrix allows it, else four bounded element loads; the backward's
// dZ source forms dZ from dY and Y there). A K-major run is 4 reduction indices of one output row
// or column, stored transposed (four scalar stores); an MN-major run is 4 output rows or columns
// at one reduction index, stored as one float4.
//
// Register fragments (kFragBuffers): 1 reads each k step's TM + TN values from shared memory and
// then issues its FMAs; 2 keeps two sets and reads step kk + 1's before issuing step kk's FMAs,
// so that shared-memory latency overlaps the FMAs (within a slice: the next slice's first step
// is read after the slice's barrier). The FMA sequence of every output, and so every bit, is the
// same either way, and does not depend on the operand layouts.
#pragma once

#include "../element.cuh"
#include "epilogue.cuh"
#include "layout.cuh"

namespace fusedrop {
namespace gemm {

// A row-major [rows, cols] matrix of T in global memory as a SIMT operand source: load4 reads
// elements (row, col .. col + 3) as floats, zero outside the matrix. vec: one float4 load (T is
// float, the base 16-byte aligned and cols a multiple of 4, so that a run starting at a multiple
// of 4 lies wholly inside a row or wholly outside it).
template <typename T>
struct GlobalRows {
    const T* data;
    long long rows;
    long long cols;
    bool vec;

    __device__ __forceinline__ void load4(float (&r)[4], long long row, long long col) const {
        if constexpr (sizeof(T) == sizeof(float)) {
            if (vec) {
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (row < rows && col < cols)
                    v = *reinterpret_cast<const float4*>(data + row * cols + col);
                r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
                return;
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            r[j] = row < rows && col + j < cols ? Element<T>::to_float(data[row * cols + col + j])
                                                : 0.0f;
        }
    }
};

template <typename T>
__device__ __forceinline__ GlobalRows<T> global_rows(const T* data, long long rows,
                                                     long long cols) {
    return GlobalRows<T>{data, rows, cols,
                         sizeof(T) == sizeof(float) &&
                             reinterpret_cast<uintptr_t>(data) % 16 == 0 && cols % 4 == 0};
}

template <int BM, int BN, int BK, int TM, int TN, int kFragBuffers = 1,
          Major kMajorA = Major::K, Major kMajorB = Major::K>
struct ThreadblockSimt {
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kBlockK = BK;
    // A thread's register block: kThreadRows x kThreadCols outputs (row_of, col_of).
    static constexpr int kThreadRows = TM;
    static constexpr int kThreadCols = TN;
    static constexpr int kThreadsN = BN / TN;
    static constexpr int kThreads = (BM / TM) * kThreadsN;
    static constexpr int kStrideA = BM + 4;
    static constexpr int kStrideB = BN + 4;
    static constexpr int kStageFloats = BK * (kStrideA + kStrideB);
    static constexpr int kPipeBytes = 2 * kStageFloats * (int)sizeof(float);
    static constexpr int kRowGroupStride = BM / (TM / 4);
    static constexpr int kColGroupStride = BN / (TN / 4);
    // Rows staged per epilogue pass: each thread owns a run of 16 columns.
    static constexpr int kEpiRows = 16 * kThreads / BN < BM ? 16 * kThreads / BN : BM;
    static constexpr int kPasses = BM / kEpiRows;
    using Epilogue = DropoutEpilogue<float, kEpiRows, BN, kThreads>;
    static constexpr int kSmemBytes =
        kPipeBytes > Epilogue::kSmemBytes ? kPipeBytes : Epilogue::kSmemBytes;

    static_assert(TM % 4 == 0 && TN % 4 == 0, "register blocks are whole float4s");
    static_assert(BM % kEpiRows == 0, "passes divide the tile");
    static_assert(kFragBuffers == 1 || kFragBuffers == 2, "one or two fragment sets");

    struct Acc {
        float v[TM][TN];
    };

    // Tile row of register row i (0 .. TM-1) and tile column of register column j.
    __device__ __forceinline__ static int row_of(int ty, int i) {
        return (i / 4) * kRowGroupStride + ty * 4 + i % 4;
    }
    __device__ __forceinline__ static int col_of(int tx, int j) {
        return (j / 4) * kColGroupStride + tx * 4 + j % 4;
    }

    // One operand's part of a slice: kRows output rows (A) or columns (B) by BK reduction
    // indices, read from its global matrix in runs of 4 consecutive elements (along the
    // reduction when K-major, along M or N when MN-major), run threadIdx.x + i · kThreads of
    // the slice for a thread's run i, and stored k-major at `dst` (row stride kRows + 4).
    template <int kRows, Major kMajor>
    struct OperandSlice {
        static constexpr int kStride = kRows + 4;
        // Runs per line of the global block: a row of it (K-major) or a reduction index (MN).
        static constexpr int kRunsPerLine = (kMajor == Major::K ? BK : kRows) / 4;
        static constexpr int kLoads = kRows * BK / 4 / kThreads;
        static_assert(kRows * BK / 4 % kThreads == 0,
                      "every thread loads the same number of runs of the operand per slice");
        static_assert(kThreads % kRunsPerLine == 0, "a thread's runs share a column");

        __device__ __forceinline__ static int line(int i) {
            return ((int)threadIdx.x + i * kThreads) / kRunsPerLine;
        }
        __device__ __forceinline__ static int run_col() {
            return ((int)threadIdx.x % kRunsPerLine) * 4;
        }

        // This thread's runs of the block at output rows/columns mn0.., reduction indices k0...
        template <class Source>
        __device__ __forceinline__ static void load(float (&r)[kLoads][4], const Source& src,
                                                    long long mn0, long long k0) {
#pragma unroll
            for (int i = 0; i < kLoads; ++i) {
                if constexpr (kMajor == Major::K) {
                    src.load4(r[i], mn0 + line(i), k0 + run_col());
                } else {
                    src.load4(r[i], k0 + line(i), mn0 + run_col());
                }
            }
        }

        __device__ __forceinline__ static void store(float* dst, const float (&r)[kLoads][4]) {
#pragma unroll
            for (int i = 0; i < kLoads; ++i) {
                if constexpr (kMajor == Major::K) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) dst[(run_col() + j) * kStride + line(i)] = r[i][j];
                } else {
                    *reinterpret_cast<float4*>(dst + line(i) * kStride + run_col()) =
                        make_float4(r[i][0], r[i][1], r[i][2], r[i][3]);
                }
            }
        }
    };
    using SliceA = OperandSlice<BM, kMajorA>;
    using SliceB = OperandSlice<BN, kMajorB>;
    static_assert(SliceA::kStride == kStrideA && SliceB::kStride == kStrideB, "one layout");

    // This thread's TM values of A and TN of B at step kk of the slice at `as` / `bs`.
    __device__ __forceinline__ static void load_fragments(float (&a)[TM], float (&b)[TN],
                                                          const float* as, const float* bs,
                                                          int kk, int tx, int ty) {
#pragma unroll
        for (int i = 0; i < TM; i += 4) {
            const float4 v = *reinterpret_cast<const float4*>(as + kk * kStrideA + row_of(ty, i));
            a[i] = v.x, a[i + 1] = v.y, a[i + 2] = v.z, a[i + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < TN; j += 4) {
            const float4 v = *reinterpret_cast<const float4*>(bs + kk * kStrideB + col_of(tx, j));
            b[j] = v.x, b[j + 1] = v.y, b[j + 2] = v.z, b[j + 3] = v.w;
        }
    }

    __device__ __forceinline__ static void fma_step(Acc& acc, const float (&a)[TM],
                                                    const float (&b)[TN]) {
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc.v[i][j] = fmaf(a[i], b[j], acc.v[i][j]);
    }

    // This thread's column and row of register blocks (row_of, col_of).
    __device__ __forceinline__ static int thread_col() { return (int)threadIdx.x % kThreadsN; }
    __device__ __forceinline__ static int thread_row() { return (int)threadIdx.x / kThreadsN; }

    // acc = A[a0.., red] · B[red, b0..] over the reduction slices of `slices` (the whole
    // reduction, or a split-K share of it; a share of no slice gives zeros), A and B read from
    // the operand sources `a` and `b` (load4, as GlobalRows) in the layouts kMajorA, kMajorB.
    // `on_slice(kt, as)` runs on every thread while slice kt is in shared memory and visible to
    // the block (as: A's part, As[k][kStrideA]; read only: the backward sums db there).
    // multiply = false reads no B and issues no FMA (the backward's db-only pass). Leaves every
    // thread past its last read of shared memory.
    template <class SourceA, class SourceB, class OnSlice>
    __device__ __forceinline__ static void mainloop(Acc& acc, float* smem, const SourceA& a,
                                                    const SourceB& b, long long a0, long long b0,
                                                    Slices slices, bool multiply,
                                                    OnSlice&& on_slice) {
        const int tx = thread_col();
        const int ty = thread_row();
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc.v[i][j] = 0.0f;
        if (slices.begin >= slices.end) return;
        float ra[SliceA::kLoads][4], rb[SliceB::kLoads][4];
        SliceA::load(ra, a, a0, slices.begin * BK);
        if (multiply) SliceB::load(rb, b, b0, slices.begin * BK);
        SliceA::store(smem, ra);
        if (multiply) SliceB::store(smem + BK * kStrideA, rb);
        __syncthreads();
        for (long long kt = slices.begin; kt < slices.end; ++kt) {
            const bool more = kt + 1 < slices.end;
            if (more) {
                SliceA::load(ra, a, a0, (kt + 1) * BK);
                if (multiply) SliceB::load(rb, b, b0, (kt + 1) * BK);
            }
            const float* as = smem + ((kt - slices.begin) & 1) * kStageFloats;
            const float* bs = as + BK * kStrideA;
            on_slice(kt, as);
            if (multiply) {
                if constexpr (kFragBuffers == 1) {
#pragma unroll
                    for (int kk = 0; kk < BK; ++kk) {
                        float fa[TM], fb[TN];
                        load_fragments(fa, fb, as, bs, kk, tx, ty);
                        fma_step(acc, fa, fb);
                    }
                } else {
                    // Set kk % 2 holds step kk.
                    float fa[2][TM], fb[2][TN];
                    load_fragments(fa[0], fb[0], as, bs, 0, tx, ty);
#pragma unroll
                    for (int kk = 0; kk < BK; ++kk) {
                        if (kk + 1 < BK) {
                            load_fragments(fa[(kk + 1) % 2], fb[(kk + 1) % 2], as, bs, kk + 1,
                                           tx, ty);
                        }
                        fma_step(acc, fa[kk % 2], fb[kk % 2]);
                    }
                }
            }
            if (more) {
                float* next = smem + ((kt + 1 - slices.begin) & 1) * kStageFloats;
                SliceA::store(next, ra);
                if (multiply) SliceB::store(next + BK * kStrideA, rb);
            }
            // One barrier per slice: the next slice is visible, and nobody still reads the
            // buffer the slice after it will overwrite.
            __syncthreads();
        }
    }

    // Writes the accumulator rows of epilogue pass `pass` into the staging slab.
    __device__ __forceinline__ static void stage_accumulators(const Acc& acc, float* stage,
                                                              int pass) {
        const int tx = thread_col();
        const int ty = thread_row();
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = row_of(ty, i) - pass * kEpiRows;
            if (row < 0 || row >= kEpiRows) continue;
#pragma unroll
            for (int j = 0; j < TN; j += 4) {
                *reinterpret_cast<float4*>(stage + row * Epilogue::kStride + col_of(tx, j)) =
                    make_float4(acc.v[i][j], acc.v[i][j + 1], acc.v[i][j + 2], acc.v[i][j + 3]);
            }
        }
    }
};

}  // namespace gemm
}  // namespace fusedrop
