// Fused forward in true fp32 (SIMT FMA, no TF32): Y = dropout_p(act(X·Wᵀ + b)) in one launch.
//
//   X [m, k], W [n, k] (nn.Linear layout), b [n] or null, Y [m, n], all row-major f32.
//
// Levels (kernels/gemm/): kernel = tile scheduler + main loop + epilogue (this file);
// threadblock + thread register blocking = threadblock_simt.cuh; epilogue = epilogue.cuh (the
// same bias / activation / Philox / scale / store piece as the tensor-core kernels).
//
// Entry points: fusedrop_forward_<config>_f32, config in simt128x128, simt64x64 (struct names
// below). Launch numbers per config: block = (kThreads, 1, 1), dynamic shared memory =
// kSmemBytes (below 48 KiB, no opt-in needed),
//   grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), 65535), 1)  -- see gemm/tile_scheduler.cuh;
//   gridDim.x must be exactly ceil(n / kBlockN).
// src/cuda/launch_table.rs holds the same numbers; the static_asserts at the end check them.
#include "gemm/epilogue.cuh"
#include "gemm/threadblock_simt.cuh"
#include "gemm/tile_scheduler.cuh"
#include "mask.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace forward {

template <class Tb>
__device__ __forceinline__ void forward_simt(const float* __restrict__ x,
                                             const float* __restrict__ w,
                                             const float* __restrict__ b, float* __restrict__ y,
                                             long long m, long long n, long long k, int relu,
                                             MaskParams mp) {
    mp = resolve_seed(mp);
    record_seed(mp, blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0);
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    float* buffer = reinterpret_cast<float*>(smem);
    const gemm::EpilogueArgs<float> epi = gemm::make_epilogue_args(b, y, m, n, relu, mp);
    const bool vec_x = reinterpret_cast<uintptr_t>(x) % 16 == 0 && k % 4 == 0;
    const bool vec_w = reinterpret_cast<uintptr_t>(w) % 16 == 0 && k % 4 == 0;
    const gemm::TileScheduler<8> scheduler(m, n, Tb::kBlockM, Tb::kBlockN);
    const long long folds = scheduler.folds();
    for (long long fold = 0; fold < folds; ++fold) {
        gemm::TileCoord tile;
        if (!scheduler.tile(fold, tile)) continue;
        const long long m0 = tile.tm * Tb::kBlockM;
        const long long n0 = tile.tn * Tb::kBlockN;
        typename Tb::Acc acc;
        Tb::mainloop(acc, buffer, x, w, m, n, k, m0, n0, vec_x, vec_w);
#pragma unroll
        for (int pass = 0; pass < Tb::kPasses; ++pass) {
            Tb::stage_accumulators(acc, buffer, pass);
            __syncthreads();
            Tb::Epilogue::apply(buffer, m0 + pass * Tb::kEpiRows, n0, epi);
            // The slab is rewritten by the next pass or the next fold's main loop.
            __syncthreads();
        }
    }
}

// Threadblock tile BM x BN, k slice BK, per-thread register block TM x TN.
template <int BM, int BN, int BK, int TM, int TN>
struct SimtConfig {
    struct Threadblock : gemm::ThreadblockSimt<BM, BN, BK, TM, TN> {
        static constexpr int kBlockM = BM;
        static constexpr int kBlockN = BN;
    };
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kThreads = Threadblock::kThreads;
    static constexpr int kSmemBytes = Threadblock::kSmemBytes;
};

// Large tiles: 256 threads of 8 x 8 outputs, slices of 8.
struct Simt128x128 : SimtConfig<128, 128, 8, 8, 8> {};
// Small tiles for shapes with few output tiles: 256 threads of 4 x 4, slices of 16.
struct Simt64x64 : SimtConfig<64, 64, 16, 4, 4> {};

}  // namespace forward
}  // namespace fusedrop

#define FUSEDROP_FORWARD_SIMT(CONFIG, NAME)                                                    \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads)          \
        fusedrop_forward_##NAME##_f32(const float* __restrict__ x, const float* __restrict__ w, \
                                      const float* __restrict__ b, float* __restrict__ y,      \
                                      long long m, long long n, long long k, int relu,         \
                                      fusedrop::MaskParams mp) {                               \
        fusedrop::forward::forward_simt<fusedrop::forward::CONFIG::Threadblock>(               \
            x, w, b, y, m, n, k, relu, mp);                                                    \
    }

FUSEDROP_FORWARD_SIMT(Simt128x128, simt128x128)
FUSEDROP_FORWARD_SIMT(Simt64x64, simt64x64)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches<fusedrop::forward::Simt128x128>(
                  fusedrop::launch::forward_simt128x128),
              "Simt128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Simt64x64>(
                  fusedrop::launch::forward_simt64x64),
              "Simt64x64 disagrees with src/cuda/launch_table.rs");
