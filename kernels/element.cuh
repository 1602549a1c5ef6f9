// The element types of the layer and their conversions to and from f32, for every kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fusedrop {

template <typename T>
struct Element;

template <>
struct Element<float> {
    static __host__ __device__ __forceinline__ float to_float(float v) { return v; }
    static __host__ __device__ __forceinline__ float from_float(float v) { return v; }
};

template <>
struct Element<__half> {
    static __host__ __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
    static __host__ __device__ __forceinline__ __half from_float(float v) {
        return __float2half_rn(v);
    }
};

template <>
struct Element<__nv_bfloat16> {
    static __host__ __device__ __forceinline__ float to_float(__nv_bfloat16 v) {
        return __bfloat162float(v);
    }
    static __host__ __device__ __forceinline__ __nv_bfloat16 from_float(float v) {
        return __float2bfloat16_rn(v);
    }
};

}  // namespace fusedrop
