// The second half of split-K on the classic backward kernels (mma.sync: backward_tc.cu; SIMT:
// backward_simt.cu): S blocks each reduced a fixed share of an output tile's reduction into an
// f32 workspace, partial[s][i]; this adds the shares in order, scales and rounds them.
#pragma once

#include "element.cuh"
#include "fusedrop_launch_table.h"

namespace fusedrop {
namespace backward {

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
        const float old = accumulate ? Element<T>::to_float(out[i]) : 0.0f;
        out[i] = Element<T>::from_float(old + sum * scale);
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
