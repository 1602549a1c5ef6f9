// Every inline-PTX instruction and warp intrinsic the kernels use, in one place.
//
// Each wrapper has two bodies:
// - the device body (nvcc device pass, __CUDA_ARCH__ defined): the PTX instruction itself;
// - the host body (plain host C++ compiler, no __CUDACC__): a call into the CPU harness
//   (kernels/host/cuda_host.h), which follows the PTX ISA definition of the instruction exactly,
//   including its per-lane fragment layout, so the kernels' own source runs on the CPU in
//   tests/kernels_on_cpu.rs.
// In nvcc's host pass (__CUDACC__ without __CUDA_ARCH__) device functions are never called, so
// the bodies there only have to compile.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4 and t = lane % 4, and each uint32_t packing two 16-bit elements, the lower-indexed
// element in the low half:
//   A (16x16, row-major): a[0] = A[g][2t..2t+1],   a[1] = A[g+8][2t..2t+1],
//                         a[2] = A[g][2t+8..+9],   a[3] = A[g+8][2t+8..+9]
//   B (16x8, "col"):      b[0] = B[2t..2t+1][g],   b[1] = B[2t+8..2t+9][g]
//   C, D (16x8, f32):     c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// ldmatrix.m8n8 (x1/x2/x4): lanes 8j..8j+7 give the row addresses of matrix j (16 contiguous
// bytes each); r[j] of lane l holds row l/4, columns 2(l%4)..2(l%4)+1 of matrix j, or with .trans
// the elements (row 2(l%4), column l/4) and (row 2(l%4)+1, column l/4).
#pragma once

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if !defined(__CUDACC__)
#include "host/cuda_host.h"
#endif

// Dynamic shared memory: `FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);` declares `smem` as a
// pointer to the block's dynamic shared memory (128-byte aligned).
#if defined(__CUDACC__)
#define FUSEDROP_DYNAMIC_SMEM(TYPE, NAME) extern __shared__ __align__(128) TYPE NAME[]
#else
#define FUSEDROP_DYNAMIC_SMEM(TYPE, NAME) \
    TYPE* NAME = reinterpret_cast<TYPE*>(::fusedrop::host::dynamic_smem())
#endif

#if defined(__CUDACC__)
#define FUSEDROP_PTX_DEVICE __device__ __forceinline__
#else
#define FUSEDROP_PTX_DEVICE inline
#endif

namespace fusedrop {
namespace ptx {

// The shared-window address of a generic pointer into shared memory. On the host it is the low
// 32 bits of the pointer, which keeps its alignment (the only property host code may rely on).
FUSEDROP_PTX_DEVICE uint32_t smem_u32(const void* p) {
#if defined(__CUDA_ARCH__)
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p));
#endif
}

template <typename T>
struct MmaType;
template <>
struct MmaType<__half> {
    static constexpr int kind = 0;
};
template <>
struct MmaType<__nv_bfloat16> {
    static constexpr int kind = 1;
};

// D = A·B + C, mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32 (T = __half or __nv_bfloat16).
template <typename T>
FUSEDROP_PTX_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                      const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
    if constexpr (MmaType<T>::kind == 0) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
              "f"(c[1]), "f"(c[2]), "f"(c[3]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
              "f"(c[1]), "f"(c[2]), "f"(c[3]));
    }
#elif defined(__CUDACC__)
    (void)a, (void)b;
    for (int i = 0; i < 4; ++i) d[i] = c[i];
#else
    ::fusedrop::host::mma_m16n8k16(MmaType<T>::kind, d, a, b, c);
#endif
}

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16. Each lane passes the shared
// address of the row it supplies (lanes 0-7 matrix 0, 8-15 matrix 1, ...); lanes beyond the
// matrices loaded pass any address (ignored).
FUSEDROP_PTX_DEVICE void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_u32(smem_row)));
#elif defined(__CUDACC__)
    (void)smem_row;
    r[0] = 0;
#else
    ::fusedrop::host::ldmatrix(1, false, r, smem_row);
#endif
}

FUSEDROP_PTX_DEVICE void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem_row)));
#elif defined(__CUDACC__)
    (void)smem_row;
    r[0] = r[1] = 0;
#else
    ::fusedrop::host::ldmatrix(2, false, r, smem_row);
#endif
}

FUSEDROP_PTX_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem_row)));
#elif defined(__CUDACC__)
    (void)smem_row;
    r[0] = r[1] = r[2] = r[3] = 0;
#else
    ::fusedrop::host::ldmatrix(4, false, r, smem_row);
#endif
}

FUSEDROP_PTX_DEVICE void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem_row)));
#elif defined(__CUDACC__)
    (void)smem_row;
    r[0] = r[1] = 0;
#else
    ::fusedrop::host::ldmatrix(2, true, r, smem_row);
#endif
}

FUSEDROP_PTX_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem_row)));
#elif defined(__CUDACC__)
    (void)smem_row;
    r[0] = r[1] = r[2] = r[3] = 0;
#else
    ::fusedrop::host::ldmatrix(4, true, r, smem_row);
#endif
}

// cp.async.cg.shared.global [smem], [gmem], 16, src-size: copies 16 bytes, or writes 16 zero
// bytes without reading gmem when !valid (src-size 0). Both addresses 16-byte aligned.
FUSEDROP_PTX_DEVICE void cp_async_16(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)),
                 "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
#elif defined(__CUDACC__)
    (void)smem, (void)gmem, (void)valid;
#else
    ::fusedrop::host::cp_async(smem, gmem, 16, valid);
#endif
}

// cp.async.ca.shared.global, 8 bytes (8-byte aligned), zero-filling when !valid.
FUSEDROP_PTX_DEVICE void cp_async_8(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_u32(smem)),
                 "l"(gmem), "r"(valid ? 8 : 0)
                 : "memory");
#elif defined(__CUDACC__)
    (void)smem, (void)gmem, (void)valid;
#else
    ::fusedrop::host::cp_async(smem, gmem, 8, valid);
#endif
}

// cp.async.ca.shared.global, 4 bytes (4-byte aligned), zero-filling when !valid.
FUSEDROP_PTX_DEVICE void cp_async_4(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)),
                 "l"(gmem), "r"(valid ? 4 : 0)
                 : "memory");
#elif defined(__CUDACC__)
    (void)smem, (void)gmem, (void)valid;
#else
    ::fusedrop::host::cp_async(smem, gmem, 4, valid);
#endif
}

// cp.async.commit_group: closes the thread's pending copies into one group.
FUSEDROP_PTX_DEVICE void cp_async_commit() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
    ::fusedrop::host::cp_async_commit();
#endif
}

// cp.async.wait_group N: waits until at most N of the thread's committed groups are pending.
// Only the calling thread's copies complete; other threads see them after a barrier.
template <int N>
FUSEDROP_PTX_DEVICE void cp_async_wait() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif !defined(__CUDACC__)
    ::fusedrop::host::cp_async_wait(N);
#endif
}

// Warp shuffles over the full warp (mask 0xffffffff); every lane of the warp must call them.
FUSEDROP_PTX_DEVICE uint32_t shfl_idx(uint32_t v, int src_lane) {
#if defined(__CUDA_ARCH__)
    return __shfl_sync(0xffffffffu, v, src_lane);
#elif defined(__CUDACC__)
    (void)src_lane;
    return v;
#else
    return ::fusedrop::host::shfl(::fusedrop::host::Shfl::Idx, v, src_lane);
#endif
}

FUSEDROP_PTX_DEVICE uint32_t shfl_xor(uint32_t v, int lane_mask) {
#if defined(__CUDA_ARCH__)
    return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#elif defined(__CUDACC__)
    (void)lane_mask;
    return v;
#else
    return ::fusedrop::host::shfl(::fusedrop::host::Shfl::Xor, v, lane_mask);
#endif
}

FUSEDROP_PTX_DEVICE uint32_t shfl_down(uint32_t v, int delta) {
#if defined(__CUDA_ARCH__)
    return __shfl_down_sync(0xffffffffu, v, delta);
#elif defined(__CUDACC__)
    (void)delta;
    return v;
#else
    return ::fusedrop::host::shfl(::fusedrop::host::Shfl::Down, v, delta);
#endif
}

FUSEDROP_PTX_DEVICE float shfl_idx(float v, int src_lane) {
#if defined(__CUDA_ARCH__)
    return __shfl_sync(0xffffffffu, v, src_lane);
#elif defined(__CUDACC__)
    (void)src_lane;
    return v;
#else
    return ::fusedrop::host::bits_float(shfl_idx(::fusedrop::host::float_bits(v), src_lane));
#endif
}

FUSEDROP_PTX_DEVICE float shfl_xor(float v, int lane_mask) {
#if defined(__CUDA_ARCH__)
    return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#elif defined(__CUDACC__)
    (void)lane_mask;
    return v;
#else
    return ::fusedrop::host::bits_float(shfl_xor(::fusedrop::host::float_bits(v), lane_mask));
#endif
}

FUSEDROP_PTX_DEVICE float shfl_down(float v, int delta) {
#if defined(__CUDA_ARCH__)
    return __shfl_down_sync(0xffffffffu, v, delta);
#elif defined(__CUDACC__)
    (void)delta;
    return v;
#else
    return ::fusedrop::host::bits_float(shfl_down(::fusedrop::host::float_bits(v), delta));
#endif
}

}  // namespace ptx
}  // namespace fusedrop
