// Every inline-PTX instruction and warp intrinsic the kernels use, in one place (besides
// __syncwarp, which they call directly and the harness defines itself).
//
// Each wrapper has two bodies:
// - the device body (nvcc device pass, __CUDA_ARCH__ defined): the PTX instruction itself;
// - the host body (plain host C++ compiler, no __CUDACC__): a call into the CPU harness
//   (kernels/host/cuda_host.h), which follows the PTX ISA definition of the instruction exactly,
//   including its per-lane fragment layout, so the kernels' own source runs on the CPU in
//   tests/kernels_on_cpu/.
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
// ldmatrix.m8n8.x4: lanes 8j..8j+7 give the row addresses of matrix j (16 contiguous
// bytes each); r[j] of lane l holds row l/4, columns 2(l%4)..2(l%4)+1 of matrix j, or with .trans
// the elements (row 2(l%4), column l/4) and (row 2(l%4)+1, column l/4).
#pragma once

#include <stdint.h>

#include <cuda.h>  // CUtensorMap
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

// The shared-window address of a generic pointer into shared memory. On the host it is the
// pointer's offset in the running block's shared window (below 2^18) for the dynamic shared
// memory, and the low 32 bits of the pointer otherwise: either keeps its alignment, the only
// property host code may rely on.
FUSEDROP_PTX_DEVICE uint32_t smem_u32(const void* p) {
#if defined(__CUDA_ARCH__)
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
    return ::fusedrop::host::shared_address(p);
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

// ldmatrix.sync.aligned.m8n8.x4{,.trans}.shared.b16. Each lane passes the shared address of
// the row it supplies (lanes 0-7 matrix 0, 8-15 matrix 1, 16-23 matrix 2, 24-31 matrix 3).
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

// shfl.sync.bfly.b32 over the full warp (mask 0xffffffff): the value of lane (lane ^ lane_mask).
// Every lane of the warp must call it.
FUSEDROP_PTX_DEVICE uint32_t shfl_xor(uint32_t v, int lane_mask) {
#if defined(__CUDA_ARCH__)
    return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#elif defined(__CUDACC__)
    (void)lane_mask;
    return v;
#else
    return ::fusedrop::host::shfl_xor(v, lane_mask);
#endif
}

// ---------------------------------------------------------------------------------------------
// Hopper (sm_90a). mbarrier, TMA and the fences need sm_90, wgmma and setmaxnreg sm_90a (nvcc
// defines __CUDA_ARCH_FEAT_SM90_ALL there). In device passes for other targets the bodies trap:
// only kernels built for sm_90a alone may call them.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FUSEDROP_PTX_SM90 1
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FUSEDROP_PTX_SM90A 1
#endif

// ---- mbarrier (64-bit object in shared memory; PTX ISA "Parallel Synchronization and
// Communication Instructions: mbarrier") ----

// mbarrier.init.shared::cta.b64: phase 0, `arrival_count` (1 .. 2^20 - 1) arrivals per phase.
FUSEDROP_PTX_DEVICE void mbarrier_init(uint64_t* bar, uint32_t arrival_count) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)),
                 "r"(arrival_count)
                 : "memory");
#elif defined(__CUDA_ARCH__)
    (void)bar, (void)arrival_count;
    __trap();
#elif defined(__CUDACC__)
    (void)bar, (void)arrival_count;
#else
    ::fusedrop::host::mbarrier_init(bar, arrival_count);
#endif
}

// fence.mbarrier_init.release.cluster: makes the initialisations visible to the async proxy
// (TMA) and to other threads, before the __syncthreads that publishes the barriers.
FUSEDROP_PTX_DEVICE void fence_mbarrier_init() {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::fence_mbarrier_init();
#endif
}

// mbarrier.arrive.shared::cta.b64: one arrival of the calling thread.
FUSEDROP_PTX_DEVICE void mbarrier_arrive(uint64_t* bar) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#elif defined(__CUDA_ARCH__)
    (void)bar;
    __trap();
#elif defined(__CUDACC__)
    (void)bar;
#else
    ::fusedrop::host::mbarrier_arrive(bar, -1);
#endif
}

// mbarrier.arrive.expect_tx.shared::cta.b64: adds `bytes` to the phase's transaction count, then
// arrives. The phase completes when every arrival is in and the transactions (TMA bytes) landed.
FUSEDROP_PTX_DEVICE void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
#elif defined(__CUDA_ARCH__)
    (void)bar, (void)bytes;
    __trap();
#elif defined(__CUDACC__)
    (void)bar, (void)bytes;
#else
    ::fusedrop::host::mbarrier_arrive(bar, (int64_t)bytes);
#endif
}

// How long one wait may last before the kernel gives up: 20 s of %globaltimer, in nanoseconds.
// Every wait in these kernels is for at most one tile's main loop or epilogue of other warps:
// tens of microseconds on a GPU, so even a thousandfold slowdown (compute-sanitizer) leaves it
// far below the limit. A wait this long is for a barrier that
// will never complete (a wrong parity, a lost arrival, an expect_tx the TMA never fills): the
// waiting thread then traps, which ends the launch with an error (the driver reports an
// illegal instruction) instead of hanging the GPU, and everyone who synchronises with it,
// forever. A debugger that holds some warps at a breakpoint longer than that would make the
// others trap: build with FUSEDROP_MBARRIER_WAIT_LIMIT_NS=0 in the environment (no limit) or
// another number of nanoseconds, which build.rs passes here (build/options.rs). Not yet run on
// a GPU.
#ifndef FUSEDROP_MBARRIER_WAIT_LIMIT_NS
#define FUSEDROP_MBARRIER_WAIT_LIMIT_NS 20000000000ull
#endif

#if defined(FUSEDROP_PTX_SM90)
// The end of a wait that timed out. A function of its own, called rather than inlined: a trap
// inside the wait loop makes ptxas spill 180 - 280 bytes in the split-K kernels (nvcc 13.0),
// a call to this costs them nothing.
__device__ __noinline__ void mbarrier_wait_timed_out() { __trap(); }
#endif

// A wait that gives up after FUSEDROP_MBARRIER_WAIT_LIMIT_NS (the mbarrier waits and the
// stream-K flag wait): `TRY` is PTX that sets the predicate `done` (with the registers it needs
// declared in `DECLS`), from `ADDRESS` (an inline-asm input: constraint and expression) and
// `value` (%2). It is tried once; only if that fails is the clock read, and it is tried again
// until `done` or the limit (%3), after which the thread traps. The time-out flag is read-write
// ("+r"), set before the asm: an output the asm wrote before reading its inputs could share a
// register with one of them by the rules of inline asm.
#define FUSEDROP_TIMED_WAIT(DECLS, TRY, ADDRESS, value)                                         \
    do {                                                                                       \
        uint32_t timed_out = 0;                                                                \
        asm volatile(                                                                          \
            "{\n"                                                                              \
            ".reg .pred done, in_time;\n" DECLS                                                \
            ".reg .u64 start, waited;\n" TRY                                                   \
            "@done bra FUSEDROP_WAIT_DONE;\n"                                                  \
            "mov.u64 start, %%globaltimer;\n"                                                  \
            "FUSEDROP_WAIT_AGAIN:\n" TRY                                                       \
            "@done bra FUSEDROP_WAIT_DONE;\n"                                                  \
            "mov.u64 waited, %%globaltimer;\n"                                                 \
            "sub.u64 waited, waited, start;\n"                                                 \
            "setp.le.u64 in_time, waited, %3;\n"                                               \
            "@in_time bra FUSEDROP_WAIT_AGAIN;\n"                                              \
            "mov.u32 %0, 1;\n"                                                                 \
            "FUSEDROP_WAIT_DONE:\n"                                                            \
            "}\n"                                                                              \
            : "+r"(timed_out)                                                                  \
            : ADDRESS, "r"(value), "n"(FUSEDROP_MBARRIER_WAIT_LIMIT_NS)                        \
            : "memory");                                                                       \
        if (timed_out) mbarrier_wait_timed_out();                                              \
    } while (0)

// Blocks until the phase with parity `phase_parity` (0 or 1) has completed, i.e. while the
// barrier's current phase has that parity: mbarrier.try_wait.parity in a loop.
FUSEDROP_PTX_DEVICE void mbarrier_wait(uint64_t* bar, uint32_t phase_parity) {
#if defined(FUSEDROP_PTX_SM90)
    FUSEDROP_TIMED_WAIT("", "mbarrier.try_wait.parity.shared::cta.b64 done, [%1], %2;\n",
                        "r"(smem_u32(bar)), phase_parity);
#elif defined(__CUDA_ARCH__)
    (void)bar, (void)phase_parity;
    __trap();
#elif defined(__CUDACC__)
    (void)bar, (void)phase_parity;
#else
    ::fusedrop::host::mbarrier_wait(bar, phase_parity, false);
#endif
}

// ---- Thread block clusters (kernels declared with __cluster_dims__): the cluster barrier and
// distributed shared memory (PTX ISA "Distributed Shared Memory", mapa, mbarrier) ----

// barrier.cluster.arrive.release + barrier.cluster.wait.acquire: every thread of every block of
// the cluster (exited threads count as arrived). Orders the blocks' mbarrier initialisations
// before any remote arrival, and every remote access before a block exits.
FUSEDROP_PTX_DEVICE void cluster_sync() {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n"
        "barrier.cluster.wait.acquire.aligned;\n" ::
            : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::cluster_sync();
#endif
}

// %cluster_ctarank: this block's rank in its cluster, whatever the grid's and the cluster's shape
// (with the kernels' 1-D grids and (k, 1, 1) clusters it is blockIdx.x % k).
FUSEDROP_PTX_DEVICE uint32_t cluster_ctarank() {
#if defined(FUSEDROP_PTX_SM90)
    uint32_t rank;
    asm("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
    return rank;
#elif defined(__CUDA_ARCH__)
    __trap();
    return 0;
#elif defined(__CUDACC__)
    return 0;
#else
    return ::fusedrop::host::cluster_ctarank();
#endif
}

// mapa.shared::cluster.u32: the shared::cluster address of the object at `local` (this block's
// shared memory) in the shared memory of block `rank` of the cluster (same offset).
FUSEDROP_PTX_DEVICE uint32_t cluster_map(const void* local, uint32_t rank) {
#if defined(FUSEDROP_PTX_SM90)
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
                 : "=r"(remote)
                 : "r"(smem_u32(local)), "r"(rank));
    return remote;
#elif defined(__CUDA_ARCH__)
    (void)local, (void)rank;
    __trap();
    return 0;
#elif defined(__CUDACC__)
    (void)local, (void)rank;
    return 0;
#else
    return ::fusedrop::host::cluster_map(local, rank);
#endif
}

// ld.shared::cluster.v4.f32: four floats (16-byte aligned) at a shared::cluster address.
FUSEDROP_PTX_DEVICE void cluster_load_f32x4(uint32_t address, float (&out)[4]) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(out[0]), "=f"(out[1]), "=f"(out[2]), "=f"(out[3])
                 : "r"(address)
                 : "memory");
#elif defined(__CUDA_ARCH__)
    (void)address, (void)out;
    __trap();
#elif defined(__CUDACC__)
    (void)address, (void)out;
#else
    ::fusedrop::host::cluster_load_f32x4(address, out);
#endif
}

// ld.shared::cluster.f32: one float at a shared::cluster address.
FUSEDROP_PTX_DEVICE float cluster_load_f32(uint32_t address) {
#if defined(FUSEDROP_PTX_SM90)
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(address) : "memory");
    return v;
#elif defined(__CUDA_ARCH__)
    (void)address;
    __trap();
    return 0.0f;
#elif defined(__CUDACC__)
    (void)address;
    return 0.0f;
#else
    return ::fusedrop::host::cluster_load_f32(address);
#endif
}

// mbarrier.arrive.release.cluster.shared::cluster.b64: one arrival on the mbarrier at a
// shared::cluster address (another block's), releasing this thread's prior writes to the
// cluster (a waiter that acquires at cluster scope sees them).
FUSEDROP_PTX_DEVICE void mbarrier_arrive_cluster(uint32_t address) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(address)
                 : "memory");
#elif defined(__CUDA_ARCH__)
    (void)address;
    __trap();
#elif defined(__CUDACC__)
    (void)address;
#else
    ::fusedrop::host::mbarrier_arrive_cluster(address);
#endif
}

// mbarrier_wait with acquire at cluster scope: for phases completed by other blocks' arrivals
// (mbarrier_arrive_cluster), whose writes the waiter then sees.
FUSEDROP_PTX_DEVICE void mbarrier_wait_cluster(uint64_t* bar, uint32_t phase_parity) {
#if defined(FUSEDROP_PTX_SM90)
    FUSEDROP_TIMED_WAIT("",
                        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 "
                        "done, [%1], %2;\n",
                        "r"(smem_u32(bar)), phase_parity);
#elif defined(__CUDA_ARCH__)
    (void)bar, (void)phase_parity;
    __trap();
#elif defined(__CUDACC__)
    (void)bar, (void)phase_parity;
#else
    ::fusedrop::host::mbarrier_wait(bar, phase_parity, true);
#endif
}

// ---- TMA (2-D tiled tensor maps; pass the map as a `const __grid_constant__ CUtensorMap`
// kernel parameter). In the harness, maps come from fusedrop::host::encode_tensor_map_2d. ----

// cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes: loads the
// map's box at (c0 = innermost coordinate in elements, c1 = row) into `smem_dst` in the map's
// swizzle layout, zero-filling elements outside the tensor, and performs complete-tx of the full
// box bytes on `bar`. `smem_dst` is 128-byte aligned, or aligned to the swizzle pattern's repeat
// (256, 512, 1024 bytes for 32-, 64-, 128-byte swizzle).
FUSEDROP_PTX_DEVICE void tma_load_2d(void* smem_dst, const CUtensorMap* map, uint64_t* bar,
                                     int32_t c0, int32_t c1) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%3, %4}], [%2];\n" ::"r"(smem_u32(smem_dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
#elif defined(__CUDA_ARCH__)
    (void)smem_dst, (void)map, (void)bar, (void)c0, (void)c1;
    __trap();
#elif defined(__CUDACC__)
    (void)smem_dst, (void)map, (void)bar, (void)c0, (void)c1;
#else
    ::fusedrop::host::tma_load_2d(smem_dst, map, bar, c0, c1);
#endif
}

// The same load multicast to the blocks of the cluster whose rank bit is set in `cta_mask`
// (.multicast::cluster): the box lands at `smem_dst`'s offset in each of their shared memories
// and performs complete-tx on the mbarrier at `bar`'s offset in each.
FUSEDROP_PTX_DEVICE void tma_load_2d_multicast(void* smem_dst, const CUtensorMap* map,
                                               uint64_t* bar, int32_t c0, int32_t c1,
                                               uint16_t cta_mask) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        ".multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(smem_u32(smem_dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1),
        "h"(cta_mask)
        : "memory");
#elif defined(__CUDA_ARCH__)
    (void)smem_dst, (void)map, (void)bar, (void)c0, (void)c1, (void)cta_mask;
    __trap();
#elif defined(__CUDACC__)
    (void)smem_dst, (void)map, (void)bar, (void)c0, (void)c1, (void)cta_mask;
#else
    ::fusedrop::host::tma_load_2d_multicast(smem_dst, map, bar, c0, c1, cta_mask);
#endif
}

// prefetch.tensormap: brings the map into the cache ahead of its first use.
FUSEDROP_PTX_DEVICE void prefetch_tensormap(const CUtensorMap* map) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#elif defined(__CUDA_ARCH__)
    (void)map;
    __trap();
#elif defined(__CUDACC__)
    (void)map;
#else
    ::fusedrop::host::prefetch_tensormap(map);
#endif
}

// stmatrix.sync.aligned.m8n8.x4.shared.b16 (sm_90): the mirror of ldmatrix_x4. Each lane passes
// the shared address of the row it receives (lanes 0-7 matrix 0, 8-15 matrix 1, ...); r[j] of
// lane l is row l/4, columns 2(l%4)..2(l%4)+1 of matrix j, which is the layout of an mma or
// wgmma accumulator fragment's column pair packed to 16 bits. One instruction writes 16 bytes
// of four rows per lane where 4-byte stores would take four.
FUSEDROP_PTX_DEVICE void stmatrix_x4(void* smem_row, const uint32_t (&r)[4]) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(
                     smem_u32(smem_row)),
                 "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
#elif defined(__CUDA_ARCH__)
    (void)smem_row, (void)r;
    __trap();
#elif defined(__CUDACC__)
    (void)smem_row, (void)r;
#else
    ::fusedrop::host::stmatrix(4, r, smem_row);
#endif
}

// cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group: stores the box at `smem_src`
// (laid out in the map's swizzle) to the map's tensor at (c0, c1); elements outside the tensor
// are not written. `smem_src` may be overwritten only after tma_store_wait_read retires the
// store's group.
FUSEDROP_PTX_DEVICE void tma_store_2d(const CUtensorMap* map, const void* smem_src, int32_t c0,
                                      int32_t c1) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile(
        "cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
            reinterpret_cast<uint64_t>(map)),
        "r"(smem_u32(smem_src)), "r"(c0), "r"(c1)
        : "memory");
#elif defined(__CUDA_ARCH__)
    (void)map, (void)smem_src, (void)c0, (void)c1;
    __trap();
#elif defined(__CUDACC__)
    (void)map, (void)smem_src, (void)c0, (void)c1;
#else
    ::fusedrop::host::tma_store_2d(map, smem_src, c0, c1);
#endif
}

// cp.async.bulk.commit_group: closes the thread's pending TMA stores into one bulk group.
FUSEDROP_PTX_DEVICE void tma_store_commit() {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::tma_store_commit();
#endif
}

// cp.async.bulk.wait_group.read N: waits until at most N of the thread's bulk groups have not
// finished reading their shared-memory sources.
template <int N>
FUSEDROP_PTX_DEVICE void tma_store_wait_read() {
    static_assert(N >= 0 && N <= 63, "cp.async.bulk.wait_group takes 0 .. 63");
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::tma_store_wait_read(N);
#endif
}

// fence.proxy.async.shared::cta: orders the thread's generic-proxy shared-memory writes before
// later async-proxy accesses (a TMA store of data the threads wrote, a wgmma reading it).
FUSEDROP_PTX_DEVICE void fence_proxy_async_shared() {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::fence_proxy_async();
#endif
}

// bar.sync id, 128: a barrier over the 128 threads of one warpgroup (named barrier `id`, 1 ..
// 15; 0 is __syncthreads'). It orders the warpgroup's shared-memory writes before its reads, as
// __syncthreads does for the block, without waiting for the other warpgroups (which run other
// stages of the pipeline).
template <int kId>
FUSEDROP_PTX_DEVICE void warpgroup_barrier() {
    static_assert(kId >= 1 && kId <= 15, "named barriers 1 .. 15 (0 is __syncthreads')");
#if defined(__CUDA_ARCH__)
    asm volatile("bar.sync %0, 128;\n" ::"n"(kId) : "memory");
#elif !defined(__CUDACC__)
    ::fusedrop::host::warpgroup_barrier(kId);
#endif
}

// ---- Flags in global memory between the blocks of one grid (the stream-K forward's partial
// tiles, gemm/sm90/stream_k.cuh) ----
//
// One thread publishes what its block wrote to global memory by storing a flag with release
// semantics at GPU scope, after a barrier that orders the other writers' stores before it (the
// release is cumulative: PTX ISA, "Memory Consistency Model"; CUTLASS's generic barrier does the
// same); a thread of another block waits for the flag with acquire loads, then a barrier passes
// what it acquired on to its warpgroup. Waiting on another block is safe only where that block
// is running or will run without waiting for the waiter: the stream-K grid waits only on
// lower-numbered blocks, which the GPU has started by the time a higher one runs.

// st.release.gpu.global.u32: stores `value` at `flag` (global memory).
FUSEDROP_PTX_DEVICE void flag_store_release(uint32_t* flag, uint32_t value) {
#if defined(FUSEDROP_PTX_SM90)
    asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
#elif defined(__CUDA_ARCH__)
    (void)flag, (void)value;
    __trap();
#elif defined(__CUDACC__)
    (void)flag, (void)value;
#else
    ::fusedrop::host::flag_store_release(flag, value);
#endif
}

// ld.acquire.gpu.global.u32 in a loop until `flag` holds `value`, giving up (trap) after
// FUSEDROP_MBARRIER_WAIT_LIMIT_NS as an mbarrier wait does; the clock is read only once the
// first load found another value.
FUSEDROP_PTX_DEVICE void flag_wait_acquire(const uint32_t* flag, uint32_t value) {
#if defined(FUSEDROP_PTX_SM90)
    FUSEDROP_TIMED_WAIT(".reg .u32 seen;\n",
                        "ld.acquire.gpu.global.u32 seen, [%1];\n"
                        "setp.eq.u32 done, seen, %2;\n",
                        "l"(flag), value);
#elif defined(__CUDA_ARCH__)
    (void)flag, (void)value;
    __trap();
#elif defined(__CUDACC__)
    (void)flag, (void)value;
#else
    ::fusedrop::host::flag_wait_acquire(flag, value);
#endif
}

// ---- wgmma (a warpgroup is 4 consecutive warps starting at a warp index that is a multiple
// of 4; every instruction below is executed by all 128 threads of the warpgroup) ----

// wgmma.fence.sync.aligned: before the first wgmma and after any access of the accumulator or
// A-fragment registers (here: required again after every wgmma_wait_group).
FUSEDROP_PTX_DEVICE void wgmma_fence() {
#if defined(FUSEDROP_PTX_SM90A)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::wgmma_fence();
#endif
}

// wgmma.commit_group.sync.aligned: closes the warpgroup's pending wgmmas into one group.
FUSEDROP_PTX_DEVICE void wgmma_commit_group() {
#if defined(FUSEDROP_PTX_SM90A)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::wgmma_commit_group();
#endif
}

// wgmma.wait_group.sync.aligned N: waits until at most N wgmma groups are pending; only then
// are the accumulators of the retired groups defined.
template <int N>
FUSEDROP_PTX_DEVICE void wgmma_wait_group() {
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0 .. 7");
#if defined(FUSEDROP_PTX_SM90A)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::wgmma_wait_group(N);
#endif
}

// The shared-memory matrix descriptor of a wgmma operand (PTX ISA "Matrix Descriptor Format"):
// bits 0-13 start address >> 4, 16-29 leading dimension byte offset >> 4, 32-45 stride
// dimension byte offset >> 4, 49-51 base offset (0 here: swizzled operands start on their
// pattern's repeat boundary, or a k-step into it), 62-63 swizzle mode (0 none, 1 128-byte,
// 2 64-byte, 3 32-byte). `swizzle_bytes` is 0, 32, 64 or 128; the offsets are multiples of 16.
FUSEDROP_PTX_DEVICE uint64_t make_smem_desc(const void* smem, int swizzle_bytes,
                                            uint32_t leading_byte_offset,
                                            uint32_t stride_byte_offset) {
#if !defined(__CUDACC__)
    if ((swizzle_bytes != 0 && swizzle_bytes != 32 && swizzle_bytes != 64 &&
         swizzle_bytes != 128) ||
        leading_byte_offset % 16 != 0 || stride_byte_offset % 16 != 0 ||
        leading_byte_offset >= (1u << 18) || stride_byte_offset >= (1u << 18))
        ::fusedrop::host::fail(
            "make_smem_desc(swizzle %d, leading byte offset %u, stride byte offset %u): the "
            "swizzle is 0, 32, 64 or 128 and the offsets are multiples of 16 below 2^18",
            swizzle_bytes, leading_byte_offset, stride_byte_offset);
#endif
    const uint64_t mode = swizzle_bytes == 128 ? 1 : swizzle_bytes == 64 ? 2
                          : swizzle_bytes == 32 ? 3 : 0;
    return (uint64_t)((smem_u32(smem) & 0x3FFFF) >> 4) |
           ((uint64_t)((leading_byte_offset & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((stride_byte_offset & 0x3FFFF) >> 4) << 32) | (mode << 62);
}

// Operands of wgmma.mma_async: the N/2 f32 accumulators d[0..N/2-1] are asm operands 0..N/2-1
// (outputs, read and written), and the inputs follow them: descriptors and scale-d, and A's four
// registers for the register-A form. FUSEDROP_WGMMA_D<j> is the register list text for 4j
// accumulators, FUSEDROP_WGMMA_ACC<j> the matching operand list, and FUSEDROP_WGMMA_IN(i, j)
// the text of input i when there are 4j accumulators ("%<4j + i>"). Inputs are plain inputs, so
// the compiler never copies them between the caller's wgmma_fence and the wgmma.
#define FUSEDROP_WGMMA_D1 "%0, %1, %2, %3"
#define FUSEDROP_WGMMA_D2 FUSEDROP_WGMMA_D1 ", %4, %5, %6, %7"
#define FUSEDROP_WGMMA_D3 FUSEDROP_WGMMA_D2 ", %8, %9, %10, %11"
#define FUSEDROP_WGMMA_D4 FUSEDROP_WGMMA_D3 ", %12, %13, %14, %15"
#define FUSEDROP_WGMMA_D5 FUSEDROP_WGMMA_D4 ", %16, %17, %18, %19"
#define FUSEDROP_WGMMA_D6 FUSEDROP_WGMMA_D5 ", %20, %21, %22, %23"
#define FUSEDROP_WGMMA_D7 FUSEDROP_WGMMA_D6 ", %24, %25, %26, %27"
#define FUSEDROP_WGMMA_D8 FUSEDROP_WGMMA_D7 ", %28, %29, %30, %31"
#define FUSEDROP_WGMMA_D9 FUSEDROP_WGMMA_D8 ", %32, %33, %34, %35"
#define FUSEDROP_WGMMA_D10 FUSEDROP_WGMMA_D9 ", %36, %37, %38, %39"
#define FUSEDROP_WGMMA_D11 FUSEDROP_WGMMA_D10 ", %40, %41, %42, %43"
#define FUSEDROP_WGMMA_D12 FUSEDROP_WGMMA_D11 ", %44, %45, %46, %47"
#define FUSEDROP_WGMMA_D13 FUSEDROP_WGMMA_D12 ", %48, %49, %50, %51"
#define FUSEDROP_WGMMA_D14 FUSEDROP_WGMMA_D13 ", %52, %53, %54, %55"
#define FUSEDROP_WGMMA_D15 FUSEDROP_WGMMA_D14 ", %56, %57, %58, %59"
#define FUSEDROP_WGMMA_D16 FUSEDROP_WGMMA_D15 ", %60, %61, %62, %63"
#define FUSEDROP_WGMMA_D17 FUSEDROP_WGMMA_D16 ", %64, %65, %66, %67"
#define FUSEDROP_WGMMA_D18 FUSEDROP_WGMMA_D17 ", %68, %69, %70, %71"
#define FUSEDROP_WGMMA_D19 FUSEDROP_WGMMA_D18 ", %72, %73, %74, %75"
#define FUSEDROP_WGMMA_D20 FUSEDROP_WGMMA_D19 ", %76, %77, %78, %79"
#define FUSEDROP_WGMMA_D21 FUSEDROP_WGMMA_D20 ", %80, %81, %82, %83"
#define FUSEDROP_WGMMA_D22 FUSEDROP_WGMMA_D21 ", %84, %85, %86, %87"
#define FUSEDROP_WGMMA_D23 FUSEDROP_WGMMA_D22 ", %88, %89, %90, %91"
#define FUSEDROP_WGMMA_D24 FUSEDROP_WGMMA_D23 ", %92, %93, %94, %95"
#define FUSEDROP_WGMMA_D25 FUSEDROP_WGMMA_D24 ", %96, %97, %98, %99"
#define FUSEDROP_WGMMA_D26 FUSEDROP_WGMMA_D25 ", %100, %101, %102, %103"
#define FUSEDROP_WGMMA_D27 FUSEDROP_WGMMA_D26 ", %104, %105, %106, %107"
#define FUSEDROP_WGMMA_D28 FUSEDROP_WGMMA_D27 ", %108, %109, %110, %111"
#define FUSEDROP_WGMMA_D29 FUSEDROP_WGMMA_D28 ", %112, %113, %114, %115"
#define FUSEDROP_WGMMA_D30 FUSEDROP_WGMMA_D29 ", %116, %117, %118, %119"
#define FUSEDROP_WGMMA_D31 FUSEDROP_WGMMA_D30 ", %120, %121, %122, %123"
#define FUSEDROP_WGMMA_D32 FUSEDROP_WGMMA_D31 ", %124, %125, %126, %127"
#define FUSEDROP_WGMMA_INPUTS1 "%4", "%5", "%6", "%7", "%8", "%9"
#define FUSEDROP_WGMMA_INPUTS2 "%8", "%9", "%10", "%11", "%12", "%13"
#define FUSEDROP_WGMMA_INPUTS3 "%12", "%13", "%14", "%15", "%16", "%17"
#define FUSEDROP_WGMMA_INPUTS4 "%16", "%17", "%18", "%19", "%20", "%21"
#define FUSEDROP_WGMMA_INPUTS5 "%20", "%21", "%22", "%23", "%24", "%25"
#define FUSEDROP_WGMMA_INPUTS6 "%24", "%25", "%26", "%27", "%28", "%29"
#define FUSEDROP_WGMMA_INPUTS7 "%28", "%29", "%30", "%31", "%32", "%33"
#define FUSEDROP_WGMMA_INPUTS8 "%32", "%33", "%34", "%35", "%36", "%37"
#define FUSEDROP_WGMMA_INPUTS9 "%36", "%37", "%38", "%39", "%40", "%41"
#define FUSEDROP_WGMMA_INPUTS10 "%40", "%41", "%42", "%43", "%44", "%45"
#define FUSEDROP_WGMMA_INPUTS11 "%44", "%45", "%46", "%47", "%48", "%49"
#define FUSEDROP_WGMMA_INPUTS12 "%48", "%49", "%50", "%51", "%52", "%53"
#define FUSEDROP_WGMMA_INPUTS13 "%52", "%53", "%54", "%55", "%56", "%57"
#define FUSEDROP_WGMMA_INPUTS14 "%56", "%57", "%58", "%59", "%60", "%61"
#define FUSEDROP_WGMMA_INPUTS15 "%60", "%61", "%62", "%63", "%64", "%65"
#define FUSEDROP_WGMMA_INPUTS16 "%64", "%65", "%66", "%67", "%68", "%69"
#define FUSEDROP_WGMMA_INPUTS17 "%68", "%69", "%70", "%71", "%72", "%73"
#define FUSEDROP_WGMMA_INPUTS18 "%72", "%73", "%74", "%75", "%76", "%77"
#define FUSEDROP_WGMMA_INPUTS19 "%76", "%77", "%78", "%79", "%80", "%81"
#define FUSEDROP_WGMMA_INPUTS20 "%80", "%81", "%82", "%83", "%84", "%85"
#define FUSEDROP_WGMMA_INPUTS21 "%84", "%85", "%86", "%87", "%88", "%89"
#define FUSEDROP_WGMMA_INPUTS22 "%88", "%89", "%90", "%91", "%92", "%93"
#define FUSEDROP_WGMMA_INPUTS23 "%92", "%93", "%94", "%95", "%96", "%97"
#define FUSEDROP_WGMMA_INPUTS24 "%96", "%97", "%98", "%99", "%100", "%101"
#define FUSEDROP_WGMMA_INPUTS25 "%100", "%101", "%102", "%103", "%104", "%105"
#define FUSEDROP_WGMMA_INPUTS26 "%104", "%105", "%106", "%107", "%108", "%109"
#define FUSEDROP_WGMMA_INPUTS27 "%108", "%109", "%110", "%111", "%112", "%113"
#define FUSEDROP_WGMMA_INPUTS28 "%112", "%113", "%114", "%115", "%116", "%117"
#define FUSEDROP_WGMMA_INPUTS29 "%116", "%117", "%118", "%119", "%120", "%121"
#define FUSEDROP_WGMMA_INPUTS30 "%120", "%121", "%122", "%123", "%124", "%125"
#define FUSEDROP_WGMMA_INPUTS31 "%124", "%125", "%126", "%127", "%128", "%129"
#define FUSEDROP_WGMMA_INPUTS32 "%128", "%129", "%130", "%131", "%132", "%133"
#define FUSEDROP_WGMMA_PICK0(a, b, c, d, e, f) a
#define FUSEDROP_WGMMA_PICK1(a, b, c, d, e, f) b
#define FUSEDROP_WGMMA_PICK2(a, b, c, d, e, f) c
#define FUSEDROP_WGMMA_PICK3(a, b, c, d, e, f) d
#define FUSEDROP_WGMMA_PICK4(a, b, c, d, e, f) e
#define FUSEDROP_WGMMA_PICK5(a, b, c, d, e, f) f
// The second level expands FUSEDROP_WGMMA_INPUTS<j> into six arguments before PICK<i> takes one.
#define FUSEDROP_WGMMA_APPLY(PICK, ...) PICK(__VA_ARGS__)
#define FUSEDROP_WGMMA_IN(I, J) \
    FUSEDROP_WGMMA_APPLY(FUSEDROP_WGMMA_PICK##I, FUSEDROP_WGMMA_INPUTS##J)
#define FUSEDROP_WGMMA_ACC1 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
#define FUSEDROP_WGMMA_ACC2 FUSEDROP_WGMMA_ACC1, "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define FUSEDROP_WGMMA_ACC3 FUSEDROP_WGMMA_ACC2, "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11])
#define FUSEDROP_WGMMA_ACC4 FUSEDROP_WGMMA_ACC3, "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define FUSEDROP_WGMMA_ACC5 FUSEDROP_WGMMA_ACC4, "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19])
#define FUSEDROP_WGMMA_ACC6 FUSEDROP_WGMMA_ACC5, "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define FUSEDROP_WGMMA_ACC7 FUSEDROP_WGMMA_ACC6, "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27])
#define FUSEDROP_WGMMA_ACC8 FUSEDROP_WGMMA_ACC7, "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define FUSEDROP_WGMMA_ACC9 FUSEDROP_WGMMA_ACC8, "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
#define FUSEDROP_WGMMA_ACC10 FUSEDROP_WGMMA_ACC9, "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define FUSEDROP_WGMMA_ACC11 \
    FUSEDROP_WGMMA_ACC10, "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43])
#define FUSEDROP_WGMMA_ACC12 \
    FUSEDROP_WGMMA_ACC11, "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define FUSEDROP_WGMMA_ACC13 \
    FUSEDROP_WGMMA_ACC12, "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51])
#define FUSEDROP_WGMMA_ACC14 \
    FUSEDROP_WGMMA_ACC13, "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55])
#define FUSEDROP_WGMMA_ACC15 \
    FUSEDROP_WGMMA_ACC14, "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59])
#define FUSEDROP_WGMMA_ACC16 \
    FUSEDROP_WGMMA_ACC15, "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define FUSEDROP_WGMMA_ACC17 \
    FUSEDROP_WGMMA_ACC16, "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
#define FUSEDROP_WGMMA_ACC18 \
    FUSEDROP_WGMMA_ACC17, "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71])
#define FUSEDROP_WGMMA_ACC19 \
    FUSEDROP_WGMMA_ACC18, "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75])
#define FUSEDROP_WGMMA_ACC20 \
    FUSEDROP_WGMMA_ACC19, "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
#define FUSEDROP_WGMMA_ACC21 \
    FUSEDROP_WGMMA_ACC20, "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83])
#define FUSEDROP_WGMMA_ACC22 \
    FUSEDROP_WGMMA_ACC21, "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
#define FUSEDROP_WGMMA_ACC23 \
    FUSEDROP_WGMMA_ACC22, "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91])
#define FUSEDROP_WGMMA_ACC24 \
    FUSEDROP_WGMMA_ACC23, "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define FUSEDROP_WGMMA_ACC25 \
    FUSEDROP_WGMMA_ACC24, "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99])
#define FUSEDROP_WGMMA_ACC26 \
    FUSEDROP_WGMMA_ACC25, "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103])
#define FUSEDROP_WGMMA_ACC27 \
    FUSEDROP_WGMMA_ACC26, "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107])
#define FUSEDROP_WGMMA_ACC28 \
    FUSEDROP_WGMMA_ACC27, "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define FUSEDROP_WGMMA_ACC29 \
    FUSEDROP_WGMMA_ACC28, "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115])
#define FUSEDROP_WGMMA_ACC30 \
    FUSEDROP_WGMMA_ACC29, "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119])
#define FUSEDROP_WGMMA_ACC31 \
    FUSEDROP_WGMMA_ACC30, "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123])
#define FUSEDROP_WGMMA_ACC32 \
    FUSEDROP_WGMMA_ACC31, "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// Inputs: SS: desc_a (0), desc_b (1), scale-d (2); RS: desc_b (0), scale-d (1), a[0..3] (2-5).
// The predicate p is scale-d != 0.
#define FUSEDROP_WGMMA_SS_ASM(NN, J, TY, TA, TB)                                              \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " FUSEDROP_WGMMA_IN(2, J) ", 0;\n"         \
                 "wgmma.mma_async.sync.aligned.m64n" #NN "k16.f32." TY "." TY " {"              \
                 FUSEDROP_WGMMA_D##J "}, " FUSEDROP_WGMMA_IN(0, J) ", " FUSEDROP_WGMMA_IN(1, J)  \
                 ", p, 1, 1, " #TA ", " #TB ";\n}\n"                                            \
                 : FUSEDROP_WGMMA_ACC##J                                                      \
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d))
#define FUSEDROP_WGMMA_RS_ASM(NN, J, TY, TB)                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " FUSEDROP_WGMMA_IN(1, J) ", 0;\n"         \
                 "wgmma.mma_async.sync.aligned.m64n" #NN "k16.f32." TY "." TY " {"              \
                 FUSEDROP_WGMMA_D##J "}, {" FUSEDROP_WGMMA_IN(2, J) ", " FUSEDROP_WGMMA_IN(3, J) \
                 ", " FUSEDROP_WGMMA_IN(4, J) ", " FUSEDROP_WGMMA_IN(5, J) "}, "                 \
                 FUSEDROP_WGMMA_IN(0, J) ", p, 1, 1, " #TB ";\n}\n"                             \
                 : FUSEDROP_WGMMA_ACC##J                                                      \
                 : "l"(desc_b), "r"(scale_d), "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]))
#define FUSEDROP_WGMMA_SS_TYPE(NN, J, TY)                                                     \
    if constexpr (kTransA == 0 && kTransB == 0) FUSEDROP_WGMMA_SS_ASM(NN, J, TY, 0, 0);       \
    else if constexpr (kTransA == 0) FUSEDROP_WGMMA_SS_ASM(NN, J, TY, 0, 1);                  \
    else if constexpr (kTransB == 0) FUSEDROP_WGMMA_SS_ASM(NN, J, TY, 1, 0);                  \
    else FUSEDROP_WGMMA_SS_ASM(NN, J, TY, 1, 1);
#define FUSEDROP_WGMMA_SS_CASE(NN, J)                                                         \
    if constexpr (N == NN) {                                                                  \
        if constexpr (MmaType<T>::kind == 0) {                                                \
            FUSEDROP_WGMMA_SS_TYPE(NN, J, "f16")                                              \
        } else {                                                                              \
            FUSEDROP_WGMMA_SS_TYPE(NN, J, "bf16")                                             \
        }                                                                                     \
    }
#define FUSEDROP_WGMMA_RS_TYPE(NN, J, TY)                                                     \
    if constexpr (kTransB == 0) FUSEDROP_WGMMA_RS_ASM(NN, J, TY, 0);                          \
    else FUSEDROP_WGMMA_RS_ASM(NN, J, TY, 1);
#define FUSEDROP_WGMMA_RS_CASE(NN, J)                                                         \
    if constexpr (N == NN) {                                                                  \
        if constexpr (MmaType<T>::kind == 0) {                                                \
            FUSEDROP_WGMMA_RS_TYPE(NN, J, "f16")                                              \
        } else {                                                                              \
            FUSEDROP_WGMMA_RS_TYPE(NN, J, "bf16")                                             \
        }                                                                                     \
    }
#define FUSEDROP_WGMMA_EVERY_N(CASE)                                                          \
    CASE(8, 1) CASE(16, 2) CASE(24, 3) CASE(32, 4) CASE(40, 5) CASE(48, 6) CASE(56, 7)        \
    CASE(64, 8) CASE(72, 9) CASE(80, 10) CASE(88, 11) CASE(96, 12) CASE(104, 13)              \
    CASE(112, 14) CASE(120, 15) CASE(128, 16) CASE(136, 17) CASE(144, 18) CASE(152, 19)       \
    CASE(160, 20) CASE(168, 21) CASE(176, 22) CASE(184, 23) CASE(192, 24) CASE(200, 25)       \
    CASE(208, 26) CASE(216, 27) CASE(224, 28) CASE(232, 29) CASE(240, 30) CASE(248, 31)       \
    CASE(256, 32)

// wgmma.mma_async.sync.aligned.m64nNk16.f32.T.T with A and B from shared memory:
// D[64 x N] = A[64 x 16] * B[16 x N] (+ D when `accumulate`; scale-d is a run-time predicate).
// T is __half or __nv_bfloat16, N a multiple of 8 up to 256, kTransA / kTransB the imm-trans
// bits (0: K-major, 1: M- / N-major). Thread t of the warpgroup (warp w = t / 32, lane
// l = t % 32) holds d[r] = D[16w + l/4 + 8((r >> 1) & 1)][8(r >> 2) + 2(l % 4) + (r & 1)].
// The accumulators are undefined until wgmma_wait_group retires the operation's group.
template <typename T, int N, int kTransA = 0, int kTransB = 0>
FUSEDROP_PTX_DEVICE void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                  bool accumulate) {
    static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma N is a multiple of 8 up to 256");
    static_assert((kTransA == 0 || kTransA == 1) && (kTransB == 0 || kTransB == 1),
                  "the transpose bits are 0 or 1");
#if defined(FUSEDROP_PTX_SM90A)
    const uint32_t scale_d = accumulate ? 1u : 0u;
    FUSEDROP_WGMMA_EVERY_N(FUSEDROP_WGMMA_SS_CASE)
#elif defined(__CUDA_ARCH__)
    (void)d, (void)desc_a, (void)desc_b, (void)accumulate;
    __trap();
#elif defined(__CUDACC__)
    (void)d, (void)desc_a, (void)desc_b, (void)accumulate;
#else
    ::fusedrop::host::wgmma(MmaType<T>::kind, N, kTransA, kTransB, d, nullptr, desc_a, desc_b,
                            accumulate);
#endif
}

// The same with A from registers (K-major). a[4] is this thread's A fragment (PTX ISA "Register
// Fragments" for wgmma .m64nNk16): element e of a[e / 2] (low half first) is
// A[16w + l/4 + 8((e >> 1) & 1)][2(l % 4) + (e & 1) + 8(e >> 2)], as mma.m16n8k16's A fragment
// per warp.
template <typename T, int N, int kTransB = 0>
FUSEDROP_PTX_DEVICE void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                  bool accumulate) {
    static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma N is a multiple of 8 up to 256");
    static_assert(kTransB == 0 || kTransB == 1, "the transpose bit is 0 or 1");
#if defined(FUSEDROP_PTX_SM90A)
    const uint32_t scale_d = accumulate ? 1u : 0u;
    FUSEDROP_WGMMA_EVERY_N(FUSEDROP_WGMMA_RS_CASE)
#elif defined(__CUDA_ARCH__)
    (void)d, (void)a, (void)desc_b, (void)accumulate;
    __trap();
#elif defined(__CUDACC__)
    (void)d, (void)a, (void)desc_b, (void)accumulate;
#else
    ::fusedrop::host::wgmma(MmaType<T>::kind, N, 0, kTransB, d, a, 0, desc_b, accumulate);
#endif
}

// Keeps the compiler from moving reads or writes of the accumulator registers across a wgmma
// fence, commit or wait (CUTLASS's warpgroup_fence_operand): an empty asm that claims to read
// and write every register. Call it after each wgmma_wait_group and before each wgmma_fence.
// On the host, where the harness's wgmma writes the registers at the wait itself, the harness
// checks that discipline (docs/HARNESS.md).
template <int N>
FUSEDROP_PTX_DEVICE void fence_registers(float (&d)[N]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#elif defined(__CUDACC__)
    (void)d;
#else
    ::fusedrop::host::fence_registers(d, sizeof d);
#endif
}

// The same for A fragments of wgmma_rs, which a wgmma reads until it retires: fenced after each
// wait_group, they stay in their registers, unchanged, until the wgmmas that read them retired.
template <int M>
FUSEDROP_PTX_DEVICE void fence_registers(uint32_t (&a)[M][4]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
#elif defined(__CUDACC__)
    (void)a;
#else
    ::fusedrop::host::fence_registers(a, sizeof a);
#endif
}

// ---- registers ----

// setmaxnreg.inc / .dec.sync.aligned.u32: the warpgroup's per-thread register budget becomes
// kRegs (24 .. 256, a multiple of 8); producers give registers up, consumers take them.
template <int kRegs>
FUSEDROP_PTX_DEVICE void setmaxnreg_inc() {
    static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0,
                  "setmaxnreg takes 24 .. 256 registers, a multiple of 8");
#if defined(FUSEDROP_PTX_SM90A)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::setmaxnreg(true, kRegs);
#endif
}

template <int kRegs>
FUSEDROP_PTX_DEVICE void setmaxnreg_dec() {
    static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0,
                  "setmaxnreg takes 24 .. 256 registers, a multiple of 8");
#if defined(FUSEDROP_PTX_SM90A)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#elif defined(__CUDA_ARCH__)
    __trap();
#elif !defined(__CUDACC__)
    ::fusedrop::host::setmaxnreg(false, kRegs);
#endif
}

}  // namespace ptx
}  // namespace fusedrop
