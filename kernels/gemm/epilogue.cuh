// Epilogue level of the forward GEMMs: bias, activation, the Philox dropout mask, the scale,
// conversion to the output type and the store. The main loops (threadblock_tc.cuh,
// threadblock_simt.cuh) know nothing of dropout: they stage a slab of their f32 accumulator
// tile in shared memory and hand it to `DropoutEpilogue::apply`.
//
// Why stage through shared memory: in registers, an mma.sync accumulator fragment gives each
// lane two consecutive columns, so the four consecutive linear indices of one Philox call would
// be spread over two lanes and each call would be computed twice or exchanged by shuffles. From
// the staged slab every thread instead takes a run of kRunCols consecutive columns of one row
// (kRunCols a multiple of 8), computes each Philox call of the run once, and writes 8 outputs at
// a time (one 16-byte store for halves, two for f32).
//
// Shard geometry: the linear index of the run's first element may sit at any word s = idx & 3
// of its Philox call. For s = 0 every chunk of 8 is covered by two calls. For s != 0 a chunk
// needs three calls; the last one is also the first of the next chunk, so it is carried in
// registers and each call is still computed once within the run (plus one call at the start of
// the run, shared in the mask with the neighbouring run).
//
// kInterleaved (a tuning variant, issue 12 (e)): a thread's chunks are not one run but every
// kRunsPerRow-th chunk of its row, so the threads of a row store neighbouring 16-byte pieces at
// once (whole 32-byte sectors, whole 128-byte lines) instead of pieces a run apart. A chunk then
// has no neighbour to share a call with: with s != 0 it computes its three calls itself (s is
// the same for every chunk of a row; with n_global and the shard's column offset multiples of 4
// it is 0 and the count of calls is the same as in runs).
#pragma once

#include <stdint.h>
#include <string.h>

#include "../element.cuh"
#include "../mask.cuh"
#include "../ptx.cuh"

namespace fusedrop {
namespace gemm {

// What the epilogue needs besides the staged tile. `relu` and the four flags are uniform over
// the grid, so every branch on them is taken by all threads alike.
template <typename T>
struct EpilogueArgs {
    const T* b;  // [n] or nullptr
    T* y;        // [m, n] row-major
    long long m;
    long long n;
    bool relu;
    bool vec_store;  // y 16-byte aligned and n a multiple of 16 / sizeof(T)
    bool bias_pairs;  // b 4-byte aligned: two adjacent biases from an even column in one load
    bool dropout;    // 0 < p < 1: draw Philox words
    bool drop_all;   // p == 1: every element is dropped (x * 0), no Philox needed
    MaskParams mp;
};

template <typename T>
__device__ __forceinline__ EpilogueArgs<T> make_epilogue_args(const T* b, T* y, long long m,
                                                              long long n, int relu,
                                                              const MaskParams& mp) {
    EpilogueArgs<T> a;
    a.b = b;
    a.y = y;
    a.m = m;
    a.n = n;
    a.relu = relu != 0;
    a.vec_store = (reinterpret_cast<uintptr_t>(y) % 16 == 0) &&
                  (n % (long long)(16 / sizeof(T)) == 0);
    a.bias_pairs = reinterpret_cast<uintptr_t>(b) % 4 == 0;
    a.drop_all = mp.threshold > 0xffffffffull;
    a.dropout = dropout_enabled(mp) && !a.drop_all;
    a.mp = mp;
    return a;
}

// Word s + e of the words lo[0..3], mid[0..3], hi[0..3] laid end to end (s in 0..3, e a
// compile-time constant after unrolling, so every index below is constant and the words stay in
// registers).
__device__ __forceinline__ uint32_t shifted_word(const Philox4& lo, const Philox4& mid,
                                                 const Philox4& hi, int s, int e) {
    const uint32_t w0 = e < 4 ? lo.w[e & 3] : e < 8 ? mid.w[e & 3] : hi.w[e & 3];
    const uint32_t w1 = e + 1 < 4 ? lo.w[(e + 1) & 3] : e + 1 < 8 ? mid.w[(e + 1) & 3] : hi.w[(e + 1) & 3];
    const uint32_t w2 = e + 2 < 4 ? lo.w[(e + 2) & 3] : e + 2 < 8 ? mid.w[(e + 2) & 3] : hi.w[(e + 2) & 3];
    const uint32_t w3 = e + 3 < 4 ? lo.w[(e + 3) & 3] : e + 3 < 8 ? mid.w[(e + 3) & 3] : hi.w[(e + 3) & 3];
    return s == 0 ? w0 : s == 1 ? w1 : s == 2 ? w2 : w3;
}

template <typename T>
__device__ __forceinline__ uint16_t bits16(T v) {
    uint16_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
}

// Stores 8 consecutive outputs to a 16-byte aligned address.
__device__ __forceinline__ void store8(float* y, const float (&v)[8]) {
    reinterpret_cast<float4*>(y)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(y)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

template <typename T>
__device__ __forceinline__ void store8(T* y, const float (&v)[8]) {
    uint32_t packed[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        packed[i] = (uint32_t)bits16(Element<T>::from_float(v[2 * i])) |
                    ((uint32_t)bits16(Element<T>::from_float(v[2 * i + 1])) << 16);
    }
    *reinterpret_cast<uint4*>(y) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// A slab of kRows x kCols accumulator values staged in shared memory (row stride kStride
// floats) is turned into outputs by kThreads threads, each owning kRunCols columns of one row:
// one run of them, or (kInterleaved) every kRunsPerRow-th chunk of 8.
template <typename T, int kRows, int kCols, int kThreads, bool kInterleaved = false>
struct DropoutEpilogue {
    static constexpr int kStride = kCols + 4;  // keeps float4 alignment, spreads banks
    static constexpr int kRunCols = kRows * kCols / kThreads;
    static constexpr int kRunsPerRow = kCols / kRunCols;
    static constexpr int kChunks = kRunCols / 8;
    static constexpr int kSmemBytes = kRows * kStride * (int)sizeof(float);
    static_assert(kRunCols % 8 == 0 && kRunCols >= 8, "a run is whole chunks of 8 columns");
    static_assert(kRows * kRunsPerRow == kThreads, "every thread owns exactly one run");

    // `stage` holds rows row0 .. row0 + kRows - 1 and columns col0 .. col0 + kCols - 1 of Y.
    __device__ static void apply(const float* stage, long long row0, long long col0,
                                 const EpilogueArgs<T>& a) {
        const int t = (int)threadIdx.x;
        const int local_row = t / kRunsPerRow;
        const int local_col = (t % kRunsPerRow) * (kInterleaved ? 8 : kRunCols);
        // Chunk j's first column, from the thread's first.
        constexpr int kChunkStep = kInterleaved ? 8 * kRunsPerRow : 8;
        const long long r = row0 + local_row;
        const long long c = col0 + local_col;
        if (r >= a.m || c >= a.n) return;
        const float* src = stage + local_row * kStride + local_col;
        T* dst = a.y + r * a.n + c;

        uint64_t first = 0;
        int s = 0;
        Philox4 carry = {{0u, 0u, 0u, 0u}};
        if (a.dropout) {
            first = mask_index(a.mp, (uint64_t)r, (uint64_t)c);
            s = (int)(first & 3);
            if (s != 0) carry = mask_words(a.mp, first >> 2);
        }
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
            const long long cc = c + kChunkStep * j;
            if (cc >= a.n) break;
            float v[8];
            const float4 lo = reinterpret_cast<const float4*>(src + kChunkStep * j)[0];
            const float4 hi = reinterpret_cast<const float4*>(src + kChunkStep * j)[1];
            v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
            v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
            if (a.b != nullptr) {
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (cc + e < a.n) v[e] += Element<T>::to_float(a.b[cc + e]);
                }
            }
            if (a.relu) {
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = activate(v[e], true);
            }
            if (a.drop_all) {
#pragma unroll
                for (int e = 0; e < 8; ++e) v[e] = apply_keep(v[e], false, a.mp.scale);
            } else if (a.dropout) {
                // The chunk's indices start at word s of call q; with s != 0 the calls are
                // q (carried, or computed here when the chunks are interleaved), q + 1, q + 2,
                // otherwise q, q + 1.
                const uint64_t q = (first + (uint64_t)(kChunkStep * j)) >> 2;
                if (kInterleaved && j > 0 && s != 0) carry = mask_words(a.mp, q);
                const uint64_t q1 = q + (s != 0 ? 1 : 0);
                const Philox4 w1 = mask_words(a.mp, q1);
                const Philox4 w2 = mask_words(a.mp, q1 + 1);
                Philox4 lo_w, mid_w;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    lo_w.w[i] = s != 0 ? carry.w[i] : w1.w[i];
                    mid_w.w[i] = s != 0 ? w1.w[i] : w2.w[i];
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const uint32_t word = shifted_word(lo_w, mid_w, w2, s, e);
                    v[e] = apply_keep(v[e], keep_word(a.mp, word), a.mp.scale);
                }
                carry = w2;
            }
            if (a.vec_store && cc + 8 <= a.n) {
                store8(dst + kChunkStep * j, v);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (cc + e < a.n) dst[kChunkStep * j + e] = Element<T>::from_float(v[e]);
                }
            }
        }
    }
};

}  // namespace gemm
}  // namespace fusedrop
