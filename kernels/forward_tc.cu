// Fused forward, tensor cores (f16 and bf16, sm_80+): Y = dropout_p(act(X·Wᵀ + b)) in one
// launch, f32 accumulation with mma.sync m16n8k16.
//
//   X [m, k], W [n, k] (nn.Linear layout), b [n] or null, Y [m, n], all row-major.
//
// Levels (kernels/gemm/): kernel = tile scheduler + main loop + epilogue (this file);
// threadblock = cp.async multistage pipeline (threadblock_tc.cuh); warp = ldmatrix + mma.sync
// over the warp tile (warp_tc.cuh); epilogue = bias, activation, Philox mask, scale, store
// (epilogue.cuh).
//
// Entry points: fusedrop_forward_<config>_<f16|bf16>, config in tc128x256, tc128x128, tc64x128, tc64x64,
// tc64x32 (struct names below). Each config gives its launch numbers:
//   block = (kThreads, 1, 1), dynamic shared memory = kSmemBytes (above 48 KiB it must be
//   opted in with cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)),
//   grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), 65535), 1)  -- see gemm/tile_scheduler.cuh;
//   gridDim.x must be exactly ceil(n / kBlockN).
// src/cuda/launch_table.rs holds the same numbers; the static_asserts at the end check them.
#include "element.cuh"
#include "gemm/epilogue.cuh"
#include "gemm/threadblock_tc.cuh"
#include "gemm/tile_scheduler.cuh"
#include "mask.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace forward {

template <typename T, class Tb>
__device__ __forceinline__ void forward_tc(const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ b, T* __restrict__ y,
                                           long long m, long long n, long long k, int relu,
                                           MaskParams mp) {
    mp = resolve_seed(mp);
    record_seed(mp, blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0);
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    T* pipe = reinterpret_cast<T*>(smem);
    float* stage = reinterpret_cast<float*>(smem);
    const gemm::EpilogueArgs<T> epi = gemm::make_epilogue_args(b, y, m, n, relu, mp);
    // Both operands K-major: X [m, k] gives the tile's rows, W [n, k] its columns.
    const gemm::GlobalMatrix<T> x_mat = gemm::global_matrix(x, m, k);
    const gemm::GlobalMatrix<T> w_mat = gemm::global_matrix(w, n, k);
    const gemm::TileScheduler<8> scheduler(m, n, Tb::kBlockM, Tb::kBlockN);
    const long long folds = scheduler.folds();
    for (long long fold = 0; fold < folds; ++fold) {
        gemm::TileCoord tile;
        if (!scheduler.tile(fold, tile)) continue;
        const long long m0 = tile.tm * Tb::kBlockM;
        const long long n0 = tile.tn * Tb::kBlockN;
        typename Tb::Warp warp;
        warp.clear();
        Tb::mainloop(warp, pipe, x_mat, w_mat, m0, n0);
#pragma unroll
        for (int pass = 0; pass < Tb::kPasses; ++pass) {
            Tb::stage_accumulators(warp, stage, pass);
            __syncthreads();
            Tb::Epilogue::apply(stage, m0 + pass * Tb::kEpiRows, n0, epi);
            // The slab is rewritten by the next pass or the next fold's copies.
            __syncthreads();
        }
    }
}

// Threadblock tile BM x BN, k slice BK, warp tile WM x WN, pipeline depth STAGES.
template <int BM, int BN, int BK, int WM, int WN, int STAGES>
struct TcConfig {
    template <typename T>
    using Threadblock = gemm::ThreadblockTc<T, BM, BN, BK, WM, WN, STAGES>;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kThreads = Threadblock<__half>::kThreads;
    static constexpr int kSmemBytes = Threadblock<__half>::kSmemBytes;
};

// The largest tiles, for shapes with at least a full wave of them: 8 warps of 64 x 64
// (64 x 64 warp tiles need 8 ldmatrix.x4 per 32 mma, against 6 per 16 for 64 x 32), 4 stages
// (96 KiB, within the 99 KiB of shared memory an sm_86 / sm_89 block may use).
struct Tc128x256 : TcConfig<128, 256, 32, 64, 64, 4> {};
// Large: 4 warps of 64 x 64, 4 stages.
struct Tc128x128 : TcConfig<128, 128, 32, 64, 64, 4> {};
// Medium: 4 warps of 32 x 64.
struct Tc64x128 : TcConfig<64, 128, 32, 32, 64, 4> {};
// Small: 4 warps of 32 x 32, for shapes with few output tiles.
struct Tc64x64 : TcConfig<64, 64, 32, 32, 32, 5> {};
// Smallest (most tiles for small m, e.g. inference batches): 4 warps of 16 x 32. Such shapes
// stream W once with little reuse, so a deeper pipeline keeps more bytes in flight.
struct Tc64x32 : TcConfig<64, 32, 32, 16, 32, 6> {};

}  // namespace forward
}  // namespace fusedrop

#define FUSEDROP_FORWARD_TC(CONFIG, NAME, SUFFIX, T)                                           \
    extern "C" __global__ void __launch_bounds__(fusedrop::forward::CONFIG::kThreads)          \
        fusedrop_forward_##NAME##_##SUFFIX(const T* __restrict__ x, const T* __restrict__ w,   \
                                           const T* __restrict__ b, T* __restrict__ y,         \
                                           long long m, long long n, long long k, int relu,    \
                                           fusedrop::MaskParams mp) {                          \
        fusedrop::forward::forward_tc<T, fusedrop::forward::CONFIG::Threadblock<T>>(           \
            x, w, b, y, m, n, k, relu, mp);                                                    \
    }

#define FUSEDROP_FORWARD_TC_TYPES(CONFIG, NAME)              \
    FUSEDROP_FORWARD_TC(CONFIG, NAME, f16, __half)           \
    FUSEDROP_FORWARD_TC(CONFIG, NAME, bf16, __nv_bfloat16)

FUSEDROP_FORWARD_TC_TYPES(Tc128x256, tc128x256)
FUSEDROP_FORWARD_TC_TYPES(Tc128x128, tc128x128)
FUSEDROP_FORWARD_TC_TYPES(Tc64x128, tc64x128)
FUSEDROP_FORWARD_TC_TYPES(Tc64x64, tc64x64)
FUSEDROP_FORWARD_TC_TYPES(Tc64x32, tc64x32)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc128x256>(fusedrop::launch::forward_tc128x256),
              "Tc128x256 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc128x128>(fusedrop::launch::forward_tc128x128),
              "Tc128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc64x128>(fusedrop::launch::forward_tc64x128),
              "Tc64x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc64x64>(fusedrop::launch::forward_tc64x64),
              "Tc64x64 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc64x32>(fusedrop::launch::forward_tc64x32),
              "Tc64x32 disagrees with src/cuda/launch_table.rs");
