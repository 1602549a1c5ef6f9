// Backward of Y = dropout_p(act(X·Wᵀ + b)) on tensor cores (f16 and bf16, sm_80+), f32
// accumulation with mma.sync m16n8k16:
//
//   dX = dZ · W   [m, k]   fusedrop_backward_dx_<config>_<dtype>
//   dW = dZᵀ · X  [n, k]   fusedrop_backward_dw_<config>_<dtype>, which also reduces
//   db = Σ dZ     [n]      db in the blocks that own the first column tile of dW
//
// The products multiply dZ / scale (dY times its ReLU and dropout factor without the dropout
// scale 1/(1-p), kernels/backward.cuh) and apply the scale once to the f32 sums, as the Hopper
// kernels do. Each pipeline stage brings a tile of dY (and, for ReLU, of Y) with cp.async; dZ /
// scale is formed
//   - ReLU: in registers, between each warp's ldmatrix of dY and its mmas (the main loop's
//     transform_a hook): the same ldmatrix on the stage's Y tile gives Y at the same fragment
//     places, and dZ / scale is dY where Y > 0, else 0 (an integer test on the bits; the mask is
//     redrawn only where Y is NaN). No pass over the stage, no extra barrier.
//   - identity with p > 0: in the stage, by one pass over the dY tile (the main loop's prepare
//     hook, form_dz_tile) in which each thread takes four consecutive dY columns, i.e. four
//     consecutive mask indices (one Philox call per four elements), then a barrier. (With the
//     backward's workspace the mask is already applied: the products run with it off.)
//   - identity with p = 0: not at all; the products are plain GEMMs of dY.
// dZ never goes to global memory.
//
// Both kernels are OUT[rows, k] = A[rows, red] · B[red, k] on the forward's main loop
// (gemm/threadblock_tc.cuh) with other operand layouts: B is a row-major [red, k] matrix (W for
// dX, X for dW), so its tile is MN-major (read with ldmatrix.trans); A is dZ for dX (dY's tile
// K-major, plain ldmatrix) and dZᵀ for dW (dY's tile MN-major, ldmatrix.trans). Y is the main
// loop's side operand (a second tile with A's layout, loaded only for ReLU). In both products a
// shared A tile is a block of dY in dY's own orientation, so the identity's dZ pass always walks
// four consecutive dY columns per thread (one or two Philox calls per four elements). A register
// of an A fragment holds two consecutive reduction indices: two columns of dY for dX, two rows
// of dY for dW (pair_element_index's kDown).
//
// Determinism: every output element is reduced by one thread over the whole reduction in a fixed
// order, db by one thread per column in a fixed order (from the stage: dZ / scale as formed there,
// or for ReLU formed per element by dz_over_scale); no atomics, so the same inputs give
// bit-identical outputs whatever the grid size. With split-K (splits = S > 1, for products with
// fewer tiles than the GPU has multiprocessors) S blocks each reduce a fixed share of the
// reduction into an f32 workspace, and fusedrop_backward_split_sum_<dtype> adds the S shares in
// order: bit-identical from run to run and for every grid size too, though not to the unsplit
// sums (another order of f32 additions).
//
// Configs (struct BackwardTcConfig<BM, BN, WM, WN> below): tc128x128 (4 warps of 64x64),
// tc64x64 (4 warps of 32x32) and tc64x32 (4 warps of 16x32, for narrow products: twice the
// tiles of tc64x64). Launch: block = (kThreads, 1, 1), dynamic shared memory =
// kSmemBytes (above 48 KiB it must be opted in with CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES),
// 1-D grid of any size >= 1 (grid-stride over work items); the wrapper uses grid.x =
// min(tiles * splits, kMaxBlocks) with
//   dX: tiles = ceil(m / kBlockM) * ceil(k / kBlockN)
//   dW: tiles = ceil(n / kBlockM) * ceil(k / kBlockN)   (dw != nullptr)
//       tiles = ceil(n / kBlockM)                         (dw == nullptr: db only)
// Tile t is the t-th of the forward's grouped order (gemm/tile_scheduler.cuh, grouped_tile with
// kGroupRows row tiles per group) over ceil(rows / kBlockM) x col_tiles tiles.
//
// Arguments, as kernels/backward_simt.cu: dy [m, n]; y [m, n] (read only when relu = 1);
// w [n, k] or x [m, k]; dx [m, k], dw [n, k] (nullptr: skip), db [n] (nullptr: skip);
// accumulate = 1 adds to the existing values (in f32, rounded once); mp: the forward's
// MaskParams; splits >= 1 and partial (read only when splits > 1): S * rows * k floats, plus
// S * n for db in the dW kernel (dX: rows = m; dW: rows = n), each written before it is read.
// split_sum then runs once per gradient (dX; or dW, then db on partial + S * n * k) with
// count = its element count and `accumulate` as the product was given, on split_sum_threads
// threads per block. Any m, n, k >= 1 and any row alignment: 16-byte cp.async when a matrix's base is
// 16-byte aligned and its rows are a multiple of 8 elements, element loads otherwise. The
// `_aligned` entry points (fusedrop_backward_{dx,dw}_<config>_aligned_<dtype>) take only
// operands the host found 16-byte aligned with n and k multiples of 8 (dY, Y when read, and
// W or X): their main loop has no element path and no run-time choice between the two.
#include "backward.cuh"
#include "backward_split_k.cuh"
#include "fusedrop_launch_table.h"
#include "gemm/threadblock_tc.cuh"
#include "gemm/tile_scheduler.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace backward {

// Row tiles per group of the tile order (as the forward's).
constexpr long long kGroupRows = 8;

// One config: BM x BN output tiles of WM x WN warps, 32-wide reduction slices, 3 stages (a stage
// holds dY's, Y's and B's tiles).
// kAligned: the main loop's compile-time promise that dY, Y and B are 16-byte aligned with n and
// k multiples of 8 (cp.async only, no element path; the `_aligned` entry points, which the host
// picks after checking exactly that).
// kSplitK: whether the config's kernels split the reduction when asked (splits > 1); the 128 x 128
// kernels do not (the bookkeeping makes them spill on sm_80, and a product too narrow for a wave
// of their tiles gets more blocks from 64 x 64 or 64 x 32 tiles), and run unsplit whatever
// `splits` says.
// kMinBlocksPerSm: __launch_bounds__'s minimum, so that ptxas keeps the registers of a block
// within 1 / kMinBlocksPerSm of the multiprocessor's (and fails the build by spilling
// otherwise): the narrow 64 x 32 tile is there to fill the GPU with small blocks, 4 of them per
// multiprocessor, and 64 x 64 at 3; 128 x 128 takes what it needs (2 fit at 255 registers).
template <int BM, int BN, int WM, int WN, bool kCanSplit, int kMinBlocksPerSmArg>
struct BackwardTcConfig {
    template <typename T, bool kAligned = false>
    using DxThreadblock = gemm::ThreadblockTc<T, BM, BN, 32, WM, WN, 3, gemm::Major::K,
                                              gemm::Major::MN, true, 1, kAligned>;
    template <typename T, bool kAligned = false>
    using DwThreadblock = gemm::ThreadblockTc<T, BM, BN, 32, WM, WN, 3, gemm::Major::MN,
                                              gemm::Major::MN, true, 1, kAligned>;
    static constexpr int kBlockM = BM;  // output rows per tile (m for dX, n for dW)
    static constexpr int kBlockN = BN;  // output columns per tile (k)
    static constexpr int kThreads = DxThreadblock<__half>::kThreads;
    static constexpr int kMaxBlocks = 1 << 20;
    static constexpr int kMinBlocksPerSm = kMinBlocksPerSmArg;
    static constexpr bool kSplitK = kCanSplit;
    // The pipeline only: the gradients are stored from the accumulators.
    static constexpr int kSmemBytes = DxThreadblock<__half>::kPipeBytes;
    static_assert(DwThreadblock<__half>::kPipeBytes == kSmemBytes, "one shared size per config");
    static_assert(DxThreadblock<__half, true>::kPipeBytes == kSmemBytes &&
                      DwThreadblock<__half, true>::kPipeBytes == kSmemBytes,
                  "the aligned kernels launch with the same numbers");
    static_assert(BM <= kThreads, "one thread per db column");
};

using Tc128x128 = BackwardTcConfig<128, 128, 64, 64, false, 1>;
using Tc64x64 = BackwardTcConfig<64, 64, 32, 32, true, 3>;
using Tc64x32 = BackwardTcConfig<64, 32, 16, 32, true, 4>;

// Turns the dY tile at `dz` (a Tile-shaped block of dY at (gr0, gc0)) into the identity
// activation's dZ / scale (dY times its redrawn keep decision) in place; `unit`: the mask with
// scale 1.
template <typename T, class Tile, int THREADS>
__device__ __forceinline__ void form_dz_tile(T* dz, long long n, long long gr0, long long gc0,
                                             const MaskParams& unit) {
    constexpr int kQuadsPerRow = Tile::kCols / 4;
    constexpr int kQuads = Tile::kElems / 4 / THREADS;
    static_assert(Tile::kElems % (4 * THREADS) == 0, "every thread forms whole dZ quads");
    // Not unrolled: unrolled, the Philox rounds of several quads overlap and the 128 x 128 dW
    // kernel spills beside its 128 accumulators (ptxas -v, sm_80).
#pragma unroll 1
    for (int i = 0; i < kQuads; ++i) {
        const int quad = (int)threadIdx.x + i * THREADS;
        const int row = quad / kQuadsPerRow;
        const int col = (quad % kQuadsPerRow) * 4;
        // The four elements share a 16-byte chunk, which the swizzle moves as a whole, so they
        // are one aligned 8-byte access.
        uint2* d = reinterpret_cast<uint2*>(dz + Tile::offset(row, col));
        const uint2 dv = *d;
        uint32_t packed[2] = {dv.x, dv.y};
        const uint32_t no_y[2] = {0u, 0u};
        form_dz_quad<T>(packed, no_y, false, unit, n, gr0 + row, gc0 + col);
        *d = make_uint2(packed[0], packed[1]);
    }
}

// Split-K (splits > 1): work item w is share w % splits of output tile w / splits; the share
// multiplies reduction slices [s * K / S, (s + 1) * K / S) of the K slices (S = splits) and
// writes its unscaled f32 sums to partial[s][rows][k] (db's to partial[S * rows * k + s * n ..])
// instead of the gradient; split_sum (backward_split_k.cuh) adds the S partials in share order, scales and
// rounds them.
template <typename T, class Tb, bool kWeightGrad, bool kSplitK>
__device__ __forceinline__ void backward_tc(const T* __restrict__ dy, const T* __restrict__ y,
                                            const T* __restrict__ b_mat, T* __restrict__ out,
                                            T* __restrict__ db, long long m, long long n,
                                            long long k, int relu, int accumulate, MaskParams mp,
                                            float* __restrict__ partial, int splits_arg) {
    constexpr int BM = Tb::kBlockM, BN = Tb::kBlockN, BK = Tb::kBlockK;
    using ATile = typename Tb::OperandA::Tile;
    using Warp = typename Tb::Warp;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    T* pipe = reinterpret_cast<T*>(smem);

    // The operand is dZ / scale (the mask with a unit scale); the scale goes on the f32 sums.
    MaskParams unit = resolve_seed(mp);
    const float scale = unit.scale;
    unit.scale = 1.0f;
    const bool is_relu = relu != 0;
    const bool form_in_stage = !is_relu && dropout_enabled(unit);
    const long long rows = kWeightGrad ? n : m;
    const long long red = kWeightGrad ? m : n;
    const bool do_gemm = out != nullptr;
    const long long col_tiles = do_gemm ? (k + BN - 1) / BN : 1;
    const long long tiles = (rows + BM - 1) / BM * col_tiles;
    const long long k_slices = (red + BK - 1) / BK;
    const int splits = kSplitK ? splits_arg : 1;
    const bool split = splits > 1;
    float* const partial_db = split ? partial + (long long)splits * rows * k : nullptr;
    const gemm::GlobalMatrix<T> dy_mat = gemm::global_matrix(dy, m, n);
    const gemm::GlobalMatrix<T> y_mat = gemm::global_matrix(is_relu ? y : nullptr, m, n);
    const gemm::GlobalMatrix<T> b = gemm::global_matrix(b_mat, red, k);
    const int tid = (int)threadIdx.x;
    const int lane = tid % 32, warp_id = tid / 32;
    const int wr0 = warp_id / Tb::kWarpsN * (BM / Tb::kWarpsM);
    const int wc0 = warp_id % Tb::kWarpsN * (BN / Tb::kWarpsN);

    const long long row_tiles = (rows + BM - 1) / BM;
    for (long long item = blockIdx.x; item < tiles * splits; item += gridDim.x) {
        const long long tile = item / splits;
        const int share = (int)(item % splits);
        const gemm::Slices slices{share * k_slices / splits, (share + 1) * k_slices / splits};
        // The forward's grouped order: blocks resident at one time share a few row tiles of dY
        // and column tiles of B in L2.
        const gemm::TileCoordOf<long long> coord =
            gemm::grouped_tile<kGroupRows, long long>(tile, row_tiles, col_tiles);
        const long long r0 = coord.tm * BM;
        const long long c0 = coord.tn * BN;
        const bool do_db = kWeightGrad && db != nullptr && c0 == 0;
        Warp warp;
        warp.clear();
        float db_acc = 0.0f;
        Tb::mainloop(
            warp, pipe, dy_mat, y_mat, b, r0, c0, do_gemm, slices,
            [&](long long kt, T* stage) {
                // The dY tile of slice kt as a block of dY: dX's at (r0, t0), dW's at (t0, r0).
                const long long t0 = kt * BK;
                if (form_in_stage) {
                    form_dz_tile<T, ATile, Tb::kThreads>(stage, n, kWeightGrad ? t0 : r0,
                                                         kWeightGrad ? r0 : t0, unit);
                    __syncthreads();
                }
                if (do_db && tid < BM) {
                    // Column tid of the [BK][BM] dY tile, in row order: dZ / scale as the stage
                    // holds it, or for ReLU formed here (the warps form theirs in registers).
                    if (is_relu) {
                        const T* y_tile = stage + Tb::kOffsetSide;
                        // Not unrolled: unrolled, the Philox draws of a NaN in Y make the general
                        // 128 x 128 dW kernel spill on sm_80 (ptxas -v).
#pragma unroll 1
                        for (int t = 0; t < BK; ++t) {
                            const int at = ATile::offset(t, tid);
                            db_acc += dz_over_scale<T>(stage[at], y_tile[at], true, unit, t0 + t,
                                                       r0 + tid);
                        }
                    } else {
#pragma unroll 8
                        for (int t = 0; t < BK; ++t)
                            db_acc += Element<T>::to_float(stage[ATile::offset(t, tid)]);
                    }
                }
            },
            [&](uint32_t (&a)[Warp::kMTiles][4], const T* stage, int k0, long long red0) {
                if (!is_relu) return;
                // ReLU: Y's fragments from the stage's Y tile at dY's places; register j of m16
                // tile mt holds reduction indices red, red + 1 of output row `row` (below), and
                // its halves' bits in nan_bits and keep are i = 2 j + {0, 1}.
#pragma unroll
                for (int mt = 0; mt < Warp::kMTiles; ++mt) {
                    uint32_t ya[4];
                    Warp::load_a_tile(ya, stage + Tb::kOffsetSide, wr0, mt, k0, lane);
                    uint32_t nan_bits = 0;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        uint32_t nan;
                        a[mt][j] = relu_dz_pair_or_nan<T>(a[mt][j], ya[j], nan);
                        nan_bits |= nan << (2 * j);
                    }
                    if (nan_bits == 0) continue;
                    // A NaN in Y (ReLU passed a NaN or +inf): the mask decides those halves, one
                    // keep_index per half in a loop kept rolled (one copy of Philox per m16 tile
                    // in the kernel; the launch bounds keep the narrow tiles' occupancy).
                    uint32_t keep = 0;
#pragma unroll 1
                    for (int i = 0; i < 8; ++i) {
                        if (((nan_bits >> i) & 1u) == 0) continue;
                        const int j = i / 2;
                        const long long row = r0 + wr0 + 16 * mt + Warp::a_fragment_row(j, lane);
                        const long long red = red0 + Warp::a_fragment_k(j, lane);
                        const uint64_t index =
                            kWeightGrad ? pair_element_index<true>(unit, red, row, i % 2)
                                        : pair_element_index<false>(unit, row, red, i % 2);
                        keep |= (keep_index(unit, index) ? 1u : 0u) << i;
                    }
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        a[mt][j] = apply_keep_halves<T>(a[mt][j], (nan_bits >> (2 * j)) & 3u,
                                                        keep >> (2 * j), unit.scale);
                }
            });

        if (do_gemm) {
            const int g = lane / 4, t4 = lane % 4;
#pragma unroll
            for (int mt = 0; mt < Warp::kMTiles; ++mt) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const long long r = r0 + wr0 + 16 * mt + g + 8 * h;
                    if (r >= rows) continue;
#pragma unroll
                    for (int nt = 0; nt < Warp::kNTiles; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const long long s = c0 + wc0 + 8 * nt + 2 * t4 + e;
                            if (s >= k) continue;
                            store_gradient<T>(out, r * k + s, partial,
                                              (share * rows + r) * k + s, split,
                                              warp.acc[mt][nt][2 * h + e], scale, accumulate);
                        }
                    }
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

// NAME: the entry points' <config> part (`tc128x128`, or `tc128x128_aligned` with ALIGNED true).
#define FUSEDROP_BACKWARD_TC(CONFIG, ALIGNED, NAME, SUFFIX, T)                                   \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads,           \
                                                 fusedrop::backward::CONFIG::kMinBlocksPerSm)    \
        fusedrop_backward_dx_##NAME##_##SUFFIX(                                                  \
            const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ w,          \
            T* __restrict__ dx, long long m, long long n, long long k, int relu, int accumulate, \
            fusedrop::MaskParams mp, float* __restrict__ partial, int splits) {                  \
        fusedrop::backward::backward_tc<                                                         \
            T, fusedrop::backward::CONFIG::DxThreadblock<T, ALIGNED>, false,                     \
            fusedrop::backward::CONFIG::kSplitK>(                                                \
            dy, y, w, dx, nullptr, m, n, k, relu, accumulate, mp, partial, splits);              \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads,           \
                                                 fusedrop::backward::CONFIG::kMinBlocksPerSm)    \
        fusedrop_backward_dw_##NAME##_##SUFFIX(                                                  \
            const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,          \
            T* __restrict__ dw, T* __restrict__ db, long long m, long long n, long long k,       \
            int relu, int accumulate, fusedrop::MaskParams mp, float* __restrict__ partial,      \
            int splits) {                                                                        \
        fusedrop::backward::backward_tc<                                                         \
            T, fusedrop::backward::CONFIG::DwThreadblock<T, ALIGNED>, true,                      \
            fusedrop::backward::CONFIG::kSplitK>(                                                \
            dy, y, x, dw, db, m, n, k, relu, accumulate, mp, partial, splits);                   \
    }

#define FUSEDROP_BACKWARD_TC_TYPES(CONFIG, NAME)                                  \
    FUSEDROP_BACKWARD_TC(CONFIG, false, NAME, f16, __half)                        \
    FUSEDROP_BACKWARD_TC(CONFIG, false, NAME, bf16, __nv_bfloat16)                \
    FUSEDROP_BACKWARD_TC(CONFIG, true, NAME##_aligned, f16, __half)               \
    FUSEDROP_BACKWARD_TC(CONFIG, true, NAME##_aligned, bf16, __nv_bfloat16)

FUSEDROP_BACKWARD_TC_TYPES(Tc128x128, tc128x128)
FUSEDROP_BACKWARD_TC_TYPES(Tc64x64, tc64x64)
FUSEDROP_BACKWARD_TC_TYPES(Tc64x32, tc64x32)
FUSEDROP_BACKWARD_SPLIT_SUM(f16, __half)
FUSEDROP_BACKWARD_SPLIT_SUM(bf16, __nv_bfloat16)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
static_assert(fusedrop::launch::matches<fusedrop::backward::Tc128x128>(
                  fusedrop::launch::backward_tc128x128),
              "backward Tc128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::backward::Tc64x64>(
                  fusedrop::launch::backward_tc64x64),
              "backward Tc64x64 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::backward::Tc64x32>(
                  fusedrop::launch::backward_tc64x32),
              "backward Tc64x32 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::backward::Tc128x128::kMaxBlocks == fusedrop::launch::backward_max_blocks &&
                  fusedrop::backward::Tc64x64::kMaxBlocks == fusedrop::launch::backward_max_blocks &&
                  fusedrop::backward::Tc64x32::kMaxBlocks == fusedrop::launch::backward_max_blocks,
              "kMaxBlocks disagrees with src/cuda/launch_table.rs");
