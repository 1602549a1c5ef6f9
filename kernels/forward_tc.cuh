// The mma.sync forward's kernel level, shared by the production module (forward_tc.cu) and the
// tuning module (forward_tc_sweep.cu): Y = dropout_p(act(X·Wᵀ + b)) with the cp.async main loop
// (gemm/threadblock_tc.cuh) in the folded-grid tile loop (forward_folded.cuh: tile scheduler,
// dropout epilogue), and the macro that turns a config struct into an entry point.
#pragma once

#include "element.cuh"
#include "forward_folded.cuh"
#include "gemm/threadblock_tc.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace forward {

// kInterleaved: the epilogue's interleaved store layout (gemm/epilogue.cuh).
template <typename T, class Tb, bool kInterleaved>
__device__ __forceinline__ void forward_tc(const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ b, T* __restrict__ y,
                                           long long m, long long n, long long k, int relu,
                                           MaskParams mp) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    T* pipe = reinterpret_cast<T*>(smem);
    using Epilogue = gemm::DropoutEpilogue<T, Tb::kEpiRows, Tb::kBlockN, Tb::kThreads, kInterleaved>;
    // Both operands K-major: X [m, k] gives the tile's rows, W [n, k] its columns.
    const gemm::GlobalMatrix<T> x_mat = gemm::global_matrix(x, m, k);
    const gemm::GlobalMatrix<T> w_mat = gemm::global_matrix(w, n, k);
    using Warp = typename Tb::Warp;
    forward_folded<Tb, Epilogue, Warp>(b, y, m, n, relu, mp, reinterpret_cast<float*>(smem),
                                       [&](Warp& warp, long long m0, long long n0) {
                                           warp.clear();
                                           Tb::mainloop(warp, pipe, x_mat, w_mat, m0, n0);
                                       });
}

// Threadblock tile BM x BN, k slice BK, warp tile WM x WN, pipeline depth STAGES, FRAG sets of
// warp fragments, copies spread over the k16 steps (SPREAD; gemm/threadblock_tc.cuh), the
// epilogue's interleaved stores (INTERLEAVE; gemm/epilogue.cuh). Threadblock<T, true> is the
// kernel for operands the host found 16-byte aligned with k a multiple of 8 (cp.async only, no
// element path).
template <int BM, int BN, int BK, int WM, int WN, int STAGES, int FRAG = 1, bool SPREAD = false,
          bool INTERLEAVE = false>
struct TcConfig {
    template <typename T, bool kAligned>
    using Threadblock = gemm::ThreadblockTc<T, BM, BN, BK, WM, WN, STAGES, gemm::Major::K,
                                            gemm::Major::K, false, FRAG, kAligned, SPREAD>;
    static constexpr bool kInterleaved = INTERLEAVE;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kThreads = Threadblock<__half, false>::kThreads;
    static constexpr int kSmemBytes = Threadblock<__half, false>::kSmemBytes;
};

}  // namespace forward
}  // namespace fusedrop

// The entry point ENTRY of config CONFIG for element type T; ALIGNED: the kernel for operands the
// host checked (see TcConfig).
#define FUSEDROP_FORWARD_TC(CONFIG, ALIGNED, ENTRY, T)                                          \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads)          \
        ENTRY(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,       \
              T* __restrict__ y, long long m, long long n, long long k, int relu,              \
              fusedrop::MaskParams mp) {                                                       \
        fusedrop::forward::forward_tc<T, fusedrop::forward::CONFIG::Threadblock<T, ALIGNED>,   \
                                      fusedrop::forward::CONFIG::kInterleaved>(                \
            x, w, b, y, m, n, k, relu, mp);                                                    \
    }
