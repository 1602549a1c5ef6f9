// The f32 forward's kernel level, shared by the production module (forward_f32.cu) and the
// tuning module (forward_f32_sweep.cu): Y = dropout_p(act(X·Wᵀ + b)) in true fp32 (SIMT FMA, no
// TF32): the SIMT main loop (gemm/threadblock_simt.cuh) in the folded-grid tile loop
// (forward_folded.cuh: tile scheduler, dropout epilogue), and the macro that turns a config
// struct into an entry point.
#pragma once

#include "forward_folded.cuh"
#include "gemm/threadblock_simt.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace forward {

template <class Tb>
__device__ __forceinline__ void forward_simt(const float* __restrict__ x,
                                             const float* __restrict__ w,
                                             const float* __restrict__ b, float* __restrict__ y,
                                             long long m, long long n, long long k, int relu,
                                             MaskParams mp) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    float* buffer = reinterpret_cast<float*>(smem);
    const gemm::GlobalRows<float> x_rows = gemm::global_rows(x, m, k);
    const gemm::GlobalRows<float> w_rows = gemm::global_rows(w, n, k);
    const gemm::Slices whole{0, (k + Tb::kBlockK - 1) / Tb::kBlockK};
    forward_folded<Tb, typename Tb::Epilogue, typename Tb::Acc>(
        b, y, m, n, relu, mp, buffer, [&](typename Tb::Acc& acc, long long m0, long long n0) {
            Tb::mainloop(acc, buffer, x_rows, w_rows, m0, n0, whole, true,
                         [](long long, const float*) {});
        });
}

// Threadblock tile BM x BN, k slice BK, per-thread register block TM x TN, FRAG sets of register
// fragments (gemm/threadblock_simt.cuh).
template <int BM, int BN, int BK, int TM, int TN, int FRAG = 1>
struct SimtConfig {
    using Threadblock = gemm::ThreadblockSimt<BM, BN, BK, TM, TN, FRAG>;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kThreads = Threadblock::kThreads;
    static constexpr int kSmemBytes = Threadblock::kSmemBytes;
};

}  // namespace forward
}  // namespace fusedrop

// The entry point ENTRY of config CONFIG.
#define FUSEDROP_FORWARD_SIMT(CONFIG, ENTRY)                                                   \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads)          \
        ENTRY(const float* __restrict__ x, const float* __restrict__ w,                        \
              const float* __restrict__ b, float* __restrict__ y, long long m, long long n,    \
              long long k, int relu, fusedrop::MaskParams mp) {                                \
        fusedrop::forward::forward_simt<fusedrop::forward::CONFIG::Threadblock>(               \
            x, w, b, y, m, n, k, relu, mp);                                                    \
    }
