// Threadblock level of the f32 SIMT GEMM (true fp32 FMA, no TF32): a BM x BN output tile, each
// thread accumulating a TM x TN register block over BK-deep slices that are double-buffered in
// shared memory (the next slice is read from global memory into registers while the current
// one is multiplied).
//
// Shared memory holds both slices transposed, k-major: As[k][BM + 4] and Bs[k][BN + 4], so a
// thread reads its TM rows (and TN columns) as float4s. A thread's rows are split into groups of
// 4 that lie BM / (TM / 4) apart (likewise its columns), so the 16 threads of a half-warp read 16
// consecutive float4s of Bs (no bank conflicts) and two addresses of As (broadcast).
//
// Global loads: float4s of X and of W (BM · BK / 4 / threads and BN · BK / 4 / threads per thread
// and slice: one each at 128 x 128 x 8, two at 128 x 128 x 16) when the operand is 16-byte
// aligned and k is a multiple of 4; otherwise four bounded scalar loads per float4.
//
// Register fragments (kFragBuffers): 1 reads each k step's TM + TN values from shared memory and
// then issues its FMAs; 2 keeps two sets and reads step kk + 1's before issuing step kk's FMAs,
// so that shared-memory latency overlaps the FMAs (within a slice: the next slice's first step
// is read after the slice's barrier). The FMA sequence of every output, and so every bit, is the
// same either way.
#pragma once

#include "epilogue.cuh"

namespace fusedrop {
namespace gemm {

template <int BM, int BN, int BK, int TM, int TN, int kFragBuffers = 1>
struct ThreadblockSimt {
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
    static_assert(BM * BK / 4 % kThreads == 0 && BN * BK / 4 % kThreads == 0,
                  "every thread loads the same number of float4s of X, and of W, per slice");
    static_assert(kThreads % (BK / 4) == 0, "a thread's float4s share a column");
    // float4s of X and of W that each thread copies per slice.
    static constexpr int kLoadsA = BM * BK / 4 / kThreads;
    static constexpr int kLoadsB = BN * BK / 4 / kThreads;
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

    // Slice position of float4 `i` of this thread: float4 threadIdx.x + i · kThreads of the
    // slice, whose rows hold BK / 4 float4s.
    __device__ __forceinline__ static int load_row(int i) {
        return ((int)threadIdx.x + i * kThreads) / (BK / 4);
    }
    __device__ __forceinline__ static int load_col() { return ((int)threadIdx.x % (BK / 4)) * 4; }

    // Reads this thread's float4 `i` of rows row0.., columns k0.. of the row-major [rows, k] src.
    __device__ __forceinline__ static void load_global(float (&r)[4], const float* src,
                                                       long long rows, long long k,
                                                       long long row0, long long k0, int i,
                                                       bool vec) {
        const int row = load_row(i);
        const int col = load_col();
        const long long gr = row0 + row;
        const long long gc = k0 + col;
        if (vec) {
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (gr < rows && gc < k) v = *reinterpret_cast<const float4*>(src + gr * k + gc);
            r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) r[j] = (gr < rows && gc + j < k) ? src[gr * k + gc + j] : 0.0f;
        }
    }

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

    // Reads this thread's float4s of a slice: X's (rows m0..) and W's (rows n0..), columns k0...
    __device__ __forceinline__ static void load_slice(float (&ra)[kLoadsA][4],
                                                      float (&rb)[kLoadsB][4], const float* x,
                                                      const float* w, long long m, long long n,
                                                      long long k, long long m0, long long n0,
                                                      long long k0, bool vec_x, bool vec_w) {
#pragma unroll
        for (int i = 0; i < kLoadsA; ++i) load_global(ra[i], x, m, k, m0, k0, i, vec_x);
#pragma unroll
        for (int i = 0; i < kLoadsB; ++i) load_global(rb[i], w, n, k, n0, k0, i, vec_w);
    }

    // Stores the float4s read by load_slice transposed into the k-major slice at `dst` (X's,
    // then W's).
    __device__ __forceinline__ static void store_slice(float* dst, const float (&ra)[kLoadsA][4],
                                                       const float (&rb)[kLoadsB][4]) {
        const int col = load_col();
#pragma unroll
        for (int i = 0; i < kLoadsA; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) dst[(col + j) * kStrideA + load_row(i)] = ra[i][j];
        float* bs = dst + BK * kStrideA;
#pragma unroll
        for (int i = 0; i < kLoadsB; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) bs[(col + j) * kStrideB + load_row(i)] = rb[i][j];
    }

    // acc = X[m0.., :] · W[n0.., :]ᵀ. Leaves every thread past its last read of shared memory.
    __device__ __forceinline__ static void mainloop(Acc& acc, float* smem, const float* x,
                                                    const float* w, long long m, long long n,
                                                    long long k, long long m0, long long n0,
                                                    bool vec_x, bool vec_w) {
        const int tx = (int)threadIdx.x % kThreadsN;
        const int ty = (int)threadIdx.x / kThreadsN;
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc.v[i][j] = 0.0f;
        const long long k_tiles = (k + BK - 1) / BK;
        float ra[kLoadsA][4], rb[kLoadsB][4];
        load_slice(ra, rb, x, w, m, n, k, m0, n0, 0, vec_x, vec_w);
        store_slice(smem, ra, rb);
        __syncthreads();
        for (long long kt = 0; kt < k_tiles; ++kt) {
            const bool more = kt + 1 < k_tiles;
            if (more) load_slice(ra, rb, x, w, m, n, k, m0, n0, (kt + 1) * BK, vec_x, vec_w);
            const float* as = smem + (kt & 1) * kStageFloats;
            const float* bs = as + BK * kStrideA;
            if constexpr (kFragBuffers == 1) {
#pragma unroll
                for (int kk = 0; kk < BK; ++kk) {
                    float a[TM], b[TN];
                    load_fragments(a, b, as, bs, kk, tx, ty);
                    fma_step(acc, a, b);
                }
            } else {
                // Set kk % 2 holds step kk.
                float a[2][TM], b[2][TN];
                load_fragments(a[0], b[0], as, bs, 0, tx, ty);
#pragma unroll
                for (int kk = 0; kk < BK; ++kk) {
                    if (kk + 1 < BK) {
                        load_fragments(a[(kk + 1) % 2], b[(kk + 1) % 2], as, bs, kk + 1, tx, ty);
                    }
                    fma_step(acc, a[kk % 2], b[kk % 2]);
                }
            }
            if (more) store_slice(smem + ((kt + 1) & 1) * kStageFloats, ra, rb);
            // One barrier per slice: the next slice is visible, and nobody still reads the
            // buffer the slice after it will overwrite.
            __syncthreads();
        }
    }

    // Writes the accumulator rows of epilogue pass `pass` into the staging slab.
    __device__ __forceinline__ static void stage_accumulators(const Acc& acc, float* stage,
                                                              int pass) {
        const int tx = (int)threadIdx.x % kThreadsN;
        const int ty = (int)threadIdx.x / kThreadsN;
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
