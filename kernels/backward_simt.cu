// Backward of Y = dropout_p(act(X·Wᵀ + b)) on CUDA cores (no tensor cores), every dtype; the
// only f32 backward (true fp32 FMA, no TF32):
//
//   dX = dZ · W      [m, k]           fusedrop_backward_dx_<config>_<dtype>
//   dW = dZᵀ · X     [n, k]           fusedrop_backward_dw_<config>_<dtype>, which also reduces
//   db = Σ_rows dZ   [n]              db in the blocks that own the first column tile of dW
//
// Both kernels are OUT[rows, k] = A[rows, red] · B[red, k] on the f32 forward's main loop
// (gemm/threadblock_simt.cuh) with other operand layouts: B is a row-major [red, k] matrix (W
// for dX, X for dW), so MN-major; A is dZ for dX (dY K-major: rows = m, red = n) and dZᵀ for dW
// (dY MN-major: rows = n, red = m). The main loop reads A through DzSource, which forms dZ /
// scale from four consecutive dY columns as it reads them (form_dz4 in kernels/backward.cuh with
// a unit scale: one Philox call per four elements, two when a run straddles calls); f16/bf16
// operands are widened to f32 as they are read. The dropout scale goes once on the f32 sums, as
// in the tensor-core kernels, and dZ never goes to memory.
//
// Any m, n, k >= 1 and any row alignment: bounded element loads, float4 loads of f32 B where
// its base is 16-byte aligned and k a multiple of 4; 64-bit index arithmetic.
//
// Determinism: every output element is reduced by one thread over the whole reduction in a fixed
// order, db by one thread per column in a fixed order; no atomics, so the same inputs give
// bit-identical outputs whatever the grid size. With split-K (splits = S > 1, for products with
// fewer tiles than the GPU has multiprocessors) S blocks each reduce a fixed share of the
// reduction's slices into an f32 workspace, and fusedrop_backward_split_sum_<dtype>
// (backward_split_k.cuh) adds the S shares in order: bit-identical from run to run and for every
// grid size too, though not to the unsplit sums (another order of f32 additions).
//
// Configs (BackwardSimtConfig<BM, BN, BK, TM, TN> below, the f32 forward's tiles): simt128x128
// (256 threads of 8 x 8 outputs, 8-deep slices), simt64x64 (256 threads of 4 x 4, 16-deep
// slices) and simt64x32 (128 threads of 4 x 4, 16-deep slices, for narrow products). Launch: block = (kThreads, 1, 1), dynamic shared memory =
// kSmemBytes (under 48 KiB), a 1-D grid of any size >= 1 (grid-stride over work items); the
// wrapper uses grid.x = min(tiles * splits, kMaxBlocks) with
//   dX: tiles = ceil(m / kBlockM) * ceil(k / kBlockN)
//   dW: tiles = ceil(n / kBlockM) * ceil(k / kBlockN)   (dw != nullptr)
//       tiles = ceil(n / kBlockM)                         (dw == nullptr: db only)
// Tile t is the t-th of the forward's grouped order (gemm/tile_scheduler.cuh, grouped_tile with
// kSimtGroupRows row tiles per group) over ceil(rows / kBlockM) x col_tiles tiles.
//
// Arguments, as kernels/backward_tc.cu: dy [m, n]; y [m, n] (the saved forward output, read only
// when relu = 1, may be nullptr otherwise); w [n, k] or x [m, k]; outputs dx [m, k], dw [n, k]
// (nullptr: skip), db [n] (nullptr: skip); accumulate = 1 adds to the outputs' existing values
// (the sum is taken in f32 and rounded once), 0 overwrites them; mp: the forward call's
// MaskParams; splits >= 1 and partial (read only when splits > 1): S * rows * k floats, plus
// S * n for db in the dW kernel, each written before it is read. split_sum then runs once per
// gradient (dX; or dW, then db on partial + S * n * k) with count = its element count and
// `accumulate` as the product was given.
#include "backward.cuh"
#include "backward_split_k.cuh"
#include "fusedrop_launch_table.h"
#include "gemm/threadblock_simt.cuh"
#include "gemm/tile_scheduler.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace backward {

// Row tiles per group of the tile order (as the forward's).
constexpr long long kSimtGroupRows = 8;

// One config: BM x BN output tiles, each thread owning a TM x TN register block,
// BK-deep reduction slices (the forward's SimtConfig tiles).
template <int BM, int BN, int BK, int TM, int TN>
struct BackwardSimtConfig {
    using DxThreadblock =
        gemm::ThreadblockSimt<BM, BN, BK, TM, TN, 1, gemm::Major::K, gemm::Major::MN>;
    using DwThreadblock =
        gemm::ThreadblockSimt<BM, BN, BK, TM, TN, 1, gemm::Major::MN, gemm::Major::MN>;
    static constexpr int kBlockM = BM;  // output rows per tile (m for dX, n for dW)
    static constexpr int kBlockN = BN;  // output columns per tile (k)
    static constexpr int kThreads = DxThreadblock::kThreads;
    static constexpr int kMaxBlocks = 1 << 20;
    // The pipeline only: the gradients are stored from the accumulators.
    static constexpr int kSmemBytes = DxThreadblock::kPipeBytes;
    static_assert(DwThreadblock::kPipeBytes == kSmemBytes, "one shared size per config");
    static_assert(BM <= kThreads, "one thread per db column");
};

using Simt128x128 = BackwardSimtConfig<128, 128, 8, 8, 8>;
using Simt64x64 = BackwardSimtConfig<64, 64, 16, 4, 4>;
using Simt64x32 = BackwardSimtConfig<64, 32, 16, 4, 4>;

// dY [m, n] as the main loop's A source: load4(r, row, col) gives dZ / scale of dY(row, col ..
// col + 3) (form_dz4's rule with `unit`, the mask with scale 1), zero outside dY. Both products
// read four consecutive dY columns per run: dX's K-major runs lie along dY's rows (its reduction
// is n), dW's MN-major runs too (its output rows are dY's columns).
template <typename T>
struct DzSource {
    const T* dy;
    const T* y;
    long long m;
    long long n;
    bool relu;
    MaskParams unit;

    __device__ __forceinline__ void load4(float (&r)[4], long long row, long long col) const {
        load_dz4(dy, y, m, n, row, col, relu, unit, r);
    }
};

template <typename T, class Tb, bool kWeightGrad>
__device__ __forceinline__ void backward_simt(const T* __restrict__ dy, const T* __restrict__ y,
                                              const T* __restrict__ b_mat, T* __restrict__ out,
                                              T* __restrict__ db, long long m, long long n,
                                              long long k, int relu, int accumulate,
                                              MaskParams mp, float* __restrict__ partial,
                                              int splits) {
    constexpr int BM = Tb::kBlockM, BN = Tb::kBlockN, BK = Tb::kBlockK;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    float* pipe = reinterpret_cast<float*>(smem);

    // The operand is dZ / scale (the mask with a unit scale); the scale goes on the f32 sums.
    MaskParams unit = resolve_seed(mp);
    const float scale = unit.scale;
    unit.scale = 1.0f;
    const bool is_relu = relu != 0;
    const long long rows = kWeightGrad ? n : m;
    const long long red = kWeightGrad ? m : n;
    const bool do_gemm = out != nullptr;
    const long long col_tiles = do_gemm ? (k + BN - 1) / BN : 1;
    const long long row_tiles = (rows + BM - 1) / BM;
    const long long tiles = row_tiles * col_tiles;
    const long long k_slices = (red + BK - 1) / BK;
    const bool split = splits > 1;
    float* const partial_db = split ? partial + (long long)splits * rows * k : nullptr;
    const DzSource<T> dz{dy, is_relu ? y : nullptr, m, n, is_relu, unit};
    const gemm::GlobalRows<T> b = gemm::global_rows(b_mat, red, k);
    const int tid = (int)threadIdx.x;
    const int tx = Tb::thread_col(), ty = Tb::thread_row();

    for (long long item = blockIdx.x; item < tiles * splits; item += gridDim.x) {
        const long long tile = item / splits;
        const int share = (int)(item % splits);
        const gemm::Slices slices{share * k_slices / splits, (share + 1) * k_slices / splits};
        const gemm::TileCoordOf<long long> coord =
            gemm::grouped_tile<kSimtGroupRows, long long>(tile, row_tiles, col_tiles);
        const long long r0 = coord.tm * BM;
        const long long c0 = coord.tn * BN;
        const bool do_db = kWeightGrad && db != nullptr && c0 == 0;
        typename Tb::Acc acc;
        float db_acc = 0.0f;
        Tb::mainloop(acc, pipe, dz, b, r0, c0, slices, do_gemm,
                     [&](long long, const float* as) {
                         // Column tid of dZ / scale in this slice's rows, in row order: A(tid, t)
                         // of the dW product.
                         if (!do_db || tid >= BM) return;
#pragma unroll
                         for (int t = 0; t < BK; ++t) db_acc += as[t * Tb::kStrideA + tid];
                     });

        if (do_gemm) {
#pragma unroll
            for (int i = 0; i < Tb::kThreadRows; ++i) {
                const long long r = r0 + Tb::row_of(ty, i);
                if (r >= rows) continue;
#pragma unroll
                for (int j = 0; j < Tb::kThreadCols; ++j) {
                    const long long s = c0 + Tb::col_of(tx, j);
                    if (s >= k) continue;
                    store_gradient<T>(out, r * k + s, partial, (share * rows + r) * k + s, split,
                                      acc.v[i][j], scale, accumulate);
                }
            }
        }
        if (do_db && tid < BM && r0 + tid < n) {
            store_gradient<T>(db, r0 + tid, partial_db, share * n + r0 + tid, split, db_acc, scale,
                              accumulate);
        }
    }
}

}  // namespace backward
}  // namespace fusedrop

#define FUSEDROP_BACKWARD_SIMT(CONFIG, NAME, SUFFIX, T)                                          \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dx_##NAME##_##SUFFIX(                                                  \
            const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ w,          \
            T* __restrict__ dx, long long m, long long n, long long k, int relu, int accumulate, \
            fusedrop::MaskParams mp, float* __restrict__ partial, int splits) {                  \
        fusedrop::backward::backward_simt<T, fusedrop::backward::CONFIG::DxThreadblock, false>(  \
            dy, y, w, dx, nullptr, m, n, k, relu, accumulate, mp, partial, splits);              \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dw_##NAME##_##SUFFIX(                                                  \
            const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,          \
            T* __restrict__ dw, T* __restrict__ db, long long m, long long n, long long k,       \
            int relu, int accumulate, fusedrop::MaskParams mp, float* __restrict__ partial,      \
            int splits) {                                                                        \
        fusedrop::backward::backward_simt<T, fusedrop::backward::CONFIG::DwThreadblock, true>(   \
            dy, y, x, dw, db, m, n, k, relu, accumulate, mp, partial, splits);                   \
    }

#define FUSEDROP_BACKWARD_SIMT_TYPES(CONFIG, NAME)                    \
    FUSEDROP_BACKWARD_SIMT(CONFIG, NAME, f32, float)                  \
    FUSEDROP_BACKWARD_SIMT(CONFIG, NAME, f16, __half)                 \
    FUSEDROP_BACKWARD_SIMT(CONFIG, NAME, bf16, __nv_bfloat16)

FUSEDROP_BACKWARD_SIMT_TYPES(Simt128x128, simt128x128)
FUSEDROP_BACKWARD_SIMT_TYPES(Simt64x64, simt64x64)
FUSEDROP_BACKWARD_SIMT_TYPES(Simt64x32, simt64x32)
FUSEDROP_BACKWARD_SPLIT_SUM(f32, float)
FUSEDROP_BACKWARD_SPLIT_SUM(f16, __half)
FUSEDROP_BACKWARD_SPLIT_SUM(bf16, __nv_bfloat16)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
static_assert(fusedrop::launch::matches<fusedrop::backward::Simt128x128>(
                  fusedrop::launch::backward_simt128x128),
              "backward Simt128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::backward::Simt64x64>(
                  fusedrop::launch::backward_simt64x64),
              "backward Simt64x64 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::backward::Simt64x32>(
                  fusedrop::launch::backward_simt64x32),
              "backward Simt64x32 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::backward::Simt128x128::kMaxBlocks == fusedrop::launch::backward_max_blocks &&
                  fusedrop::backward::Simt64x64::kMaxBlocks == fusedrop::launch::backward_max_blocks &&
                  fusedrop::backward::Simt64x32::kMaxBlocks == fusedrop::launch::backward_max_blocks,
              "kMaxBlocks disagrees with src/cuda/launch_table.rs");
