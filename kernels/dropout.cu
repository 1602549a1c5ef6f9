// Standalone dropout: applies the mask contract to a row-major [m, n] buffer,
// y = x * (keep(i) ? scale : 0) (so a dropped NaN or infinity becomes NaN, as in PyTorch), in
// place when x == y. It is the dropout half of the unfused baseline the benchmarks compare with,
// a direct GPU check of the Philox the fused kernels share, and, with scale 1, the identity
// backward's optional pre-pass (dY times the bare mask, written once into the caller's workspace
// so that the two products need not redraw it: src/cuda/backward.rs).
//
// Each thread owns one Philox call (four consecutive linear indices 4q .. 4q+3), so every call is
// computed once. Two paths, chosen per launch (the same for every thread):
//   - whole rows (the launch is unsharded, or its shard holds whole rows: col_offset 0 and a row
//     as long as the layer's): element e of the buffer has linear index base + e, so a call's
//     four indices are four consecutive elements, found with no row arithmetic; when base is a
//     multiple of 4 and both buffers are aligned to four elements, each call's four elements are
//     read and written as one access (16 bytes of f32, 8 of a 16-bit type);
//   - any other shard: a row may start at any linear index and a row spans at most n/4 + 2
//     calls; each thread finds its row and call by division, and accesses one element at a time.
#include "element.cuh"
#include "mask.cuh"

namespace fusedrop {

// Four consecutive elements, aligned so that a copy of one is a single memory access.
template <typename T>
struct alignas(4 * sizeof(T)) FourElements {
    T v[4];
};

// Element e of the output from element e of the input and the word that decides it.
template <typename T>
__device__ __forceinline__ void dropout_element(const T* x, T* y, long long e, uint32_t word,
                                                const MaskParams& mp) {
    y[e] = Element<T>::from_float(
        apply_keep(Element<T>::to_float(x[e]), keep_word(mp, word), mp.scale));
}

template <typename T>
__device__ void dropout_whole_rows(const T* x, T* y, long long total, const MaskParams& mp) {
    const uint64_t base = mp.row_offset * mp.n_global;
    const uint64_t first_call = base / 4;
    const uint64_t calls = (base + (uint64_t)total - 1) / 4 - first_call + 1;
    const size_t four_bytes = sizeof(FourElements<T>);
    const bool four_at_once = base % 4 == 0 && reinterpret_cast<uintptr_t>(x) % four_bytes == 0 &&
                              reinterpret_cast<uintptr_t>(y) % four_bytes == 0;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < calls;
         t += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t q = first_call + t;
        const Philox4 words = mask_words(mp, q);
        // The element of linear index 4q (negative when the buffer starts within this call).
        const long long e = (long long)(4 * q - base);
        if (four_at_once && e + 4 <= total) {
            FourElements<T> four = *reinterpret_cast<const FourElements<T>*>(x + e);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                four.v[j] = Element<T>::from_float(apply_keep(
                    Element<T>::to_float(four.v[j]), keep_word(mp, words.w[j]), mp.scale));
            }
            *reinterpret_cast<FourElements<T>*>(y + e) = four;
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (e + j >= 0 && e + j < total) dropout_element(x, y, e + j, words.w[j], mp);
        }
    }
}

template <typename T>
__device__ void dropout_any_shard(const T* x, T* y, long long m, long long n,
                                  const MaskParams& mp) {
    const long long calls_per_row = n / 4 + 2;
    const long long total = m * calls_per_row;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / calls_per_row;
        const uint64_t row_start = mask_index(mp, r, 0);
        const uint64_t q = (row_start >> 2) + (uint64_t)(t % calls_per_row);
        if (4 * q >= row_start + (uint64_t)n) continue;
        const Philox4 words = mask_words(mp, q);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long c = (long long)(4 * q + j) - (long long)row_start;
            if (c < 0 || c >= n) continue;
            dropout_element(x, y, r * n + c, words.w[j], mp);
        }
    }
}

template <typename T>
__device__ void dropout_apply(const T* x, T* y, long long m, long long n, MaskParams mp) {
    mp = resolve_seed(mp);
    record_seed(mp, blockIdx.x == 0 && threadIdx.x == 0);
    if (m * n == 0) return;
    if (mp.col_offset == 0 && mp.n_global == (uint64_t)n) {
        dropout_whole_rows(x, y, m * n, mp);
    } else {
        dropout_any_shard(x, y, m, n, mp);
    }
}

}  // namespace fusedrop

// x and y may be the same buffer (in place), so neither is __restrict__.
#define FUSEDROP_DROPOUT_KERNEL(SUFFIX, T)                                                   \
    extern "C" __global__ void __launch_bounds__(256) fusedrop_dropout_##SUFFIX(             \
        const T* x, T* y, long long m, long long n, fusedrop::MaskParams mp) {               \
        fusedrop::dropout_apply<T>(x, y, m, n, mp);                                          \
    }

FUSEDROP_DROPOUT_KERNEL(f32, float)
FUSEDROP_DROPOUT_KERNEL(f16, __half)
FUSEDROP_DROPOUT_KERNEL(bf16, __nv_bfloat16)
