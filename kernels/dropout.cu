// Standalone dropout: applies the mask contract to a row-major [m, n] buffer,
// y = x * (keep(i) ? scale : 0) (so a dropped NaN or infinity becomes NaN, as in PyTorch), in
// place when x == y. It is the dropout half of the unfused baseline the benchmarks compare with,
// a direct GPU check of the Philox the fused kernels share, and, with scale 1, the identity
// backward's optional pre-pass (dY times the bare mask, written once into the caller's workspace
// so that the two products need not redraw it: src/cuda/backward.rs).
//
// Each thread owns one Philox call (four consecutive linear indices 4q .. 4q+3) of one row, so
// every call is computed once. A row of the shard may start at any linear index, so a row spans
// at most n/4 + 2 calls.
#include "element.cuh"
#include "mask.cuh"

namespace fusedrop {

template <typename T>
__device__ void dropout_apply(const T* x, T* y, long long m, long long n, MaskParams mp) {
    mp = resolve_seed(mp);
    record_seed(mp, blockIdx.x == 0 && threadIdx.x == 0);
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
            const long long at = r * n + c;
            y[at] = Element<T>::from_float(
                apply_keep(Element<T>::to_float(x[at]), keep_word(mp, words.w[j]), mp.scale));
        }
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
