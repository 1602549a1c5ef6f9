// How the classic backward kernels (mma.sync: backward_tc.cu; SIMT: backward_simt.cu) write their
// gradients, and the second half of their split-K: S blocks each reduced a fixed share of an
// output tile's reduction into an f32 workspace, partial[s][i]; split_sum adds the shares in
// order, scales and rounds them.
#pragma once

#include "backward.cuh"
#include "fusedrop_launch_table.h"

namespace fusedrop {
namespace backward {

// One element of a classic kernel's gradient: under split-K (`split`) its share's unscaled f32 sum
// goes to partial[slot], for split_sum to add; otherwise write_gradient to out[index].
template <typename T>
__device__ __forceinline__ void store_gradient(T* __restrict__ out, long long index,
                                               float* __restrict__ partial, long long slot,
                                               bool split, float sum, float scale,
                                               bool accumulate) {
    if (split)
        partial[slot] = sum;
    else
        write_gradient(out + index, sum, scale, accumulate);
}

// The split-K gradients: out[i] = round(old + (partial[0][i] + ... + partial[S-1][i]) * scale)
// for i < count (old: out[i] when accumulating, else 0), the shares added in order, so the result
// is the same on every run and for every grid. Any 1-D grid (grid-stride).
template <typename T>
__device__ __forceinline__ void split_sum(const float* __restrict__ partial, T* __restrict__ out,
                                          long long count, int splits, float scale,
                                          int accumulate) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (long long)gridDim.x * blockDim.x) {
        float sum = partial[i];
        for (int s = 1; s < splits; ++s) sum += partial[s * count + i];
        write_gradient(out + i, sum, scale, accumulate);
    }
}

}  // namespace backward
}  // namespace fusedrop

// The entry point fusedrop_backward_split_sum_<SUFFIX> (one per module that splits).
#define FUSEDROP_BACKWARD_SPLIT_SUM(SUFFIX, T)                                                  \
    extern "C" __global__ void __launch_bounds__(fusedrop::launch::split_sum_threads)           \
        fusedrop_backward_split_sum_##SUFFIX(const float* __restrict__ partial,                 \
                                             T* __restrict__ out, long long count, int splits,  \
                                             float scale, int accumulate) {                     \
        fusedrop::backward::split_sum<T>(partial, out, count, splits, scale, accumulate);       \
    }
