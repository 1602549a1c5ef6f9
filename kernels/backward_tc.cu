// Backward of Y = dropout_p(act(X·Wᵀ + b)) on tensor cores (f16 and bf16, sm_80+), f32
// accumulation with mma.sync m16n8k16:
//
//   dX = dZ · W   [m, k]   fusedrop_backward_dx_<config>_<dtype>
//   dW = dZᵀ · X  [n, k]   fusedrop_backward_dw_<config>_<dtype>, which also reduces
//   db = Σ dZ     [n]      db in the blocks that own the first column tile of dW
//
// with dZ (dY times its ReLU and dropout factor) formed in shared memory (kernels/backward.cuh,
// form_dz4): each pipeline stage brings a tile of dY (and, for ReLU, of Y) with cp.async, one
// pass over the tile turns it into dZ rounded to the element type, and the warps then read it
// with ldmatrix. dZ never goes to global memory.
//
// Both kernels are OUT[rows, k] = A[rows, red] · B[red, k] with B a row-major [red, k] matrix
// (W for dX, X for dW). Unlike the forward product (X·Wᵀ, both operands k-contiguous), the
// reduction dimension of B is its row index, so B tiles are stored k-major ([BK][BN]) and read
// with ldmatrix.trans; A is dZ for dX (stored [BM][BK], plain ldmatrix) and dZᵀ for dW (stored
// [BK][BM] as dY lies in memory, ldmatrix.trans). In both cases a shared A tile is a block of dY
// in dY's own orientation, so the dZ pass always walks four consecutive dY columns per thread
// (one or two Philox calls per four elements).
//
// Determinism: every output element is reduced by one thread over the whole reduction in a fixed
// order, db by one thread per column in a fixed order; no atomics, so the same inputs give
// bit-identical outputs whatever the grid size.
//
// Configs (struct BackwardTcConfig<BM, BN, WM, WN> below): tc128x128 (4 warps of 64x64) and
// tc64x64 (4 warps of 32x32). Launch: block = (kThreads, 1, 1), dynamic shared memory =
// kSmemBytes (above 48 KiB it must be opted in with CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES),
// 1-D grid of any size >= 1 (grid-stride over tiles); the wrapper uses grid.x = min(tiles,
// kMaxBlocks) with
//   dX: tiles = ceil(m / kBlockM) * ceil(k / kBlockN)
//   dW: tiles = ceil(n / kBlockM) * ceil(k / kBlockN)   (dw != nullptr)
//       tiles = ceil(n / kBlockM)                         (dw == nullptr: db only)
// Tile t covers output rows (t / col_tiles) * kBlockM and columns (t % col_tiles) * kBlockN.
//
// Arguments, as kernels/backward_simt.cu: dy [m, n]; y [m, n] (read only when relu = 1);
// w [n, k] or x [m, k]; dx [m, k], dw [n, k] (nullptr: skip), db [n] (nullptr: skip);
// accumulate = 1 adds to the existing values (in f32, rounded once); mp: the forward's
// MaskParams. Any m, n, k >= 1 and any row alignment: 16-byte cp.async when a matrix's base is
// 16-byte aligned and its rows are a multiple of 8 elements, element loads otherwise.
#include "backward.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace backward {

template <int BM, int BN, int WM, int WN>
struct BackwardTcConfig {
    static constexpr int kBlockM = BM;  // output rows per tile (m for dX, n for dW)
    static constexpr int kBlockN = BN;  // output columns per tile (k)
    static constexpr int kBlockK = 32;  // reduction slice per pipeline stage
    static constexpr int kStages = 3;
    static constexpr int kWarpsM = BM / WM;
    static constexpr int kWarpsN = BN / WN;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    static constexpr int kMaxBlocks = 1 << 20;
    // Shared strides in elements, each padded by 8 (16 bytes) so that the eight rows of every
    // ldmatrix land in distinct banks and rows stay 16-byte aligned.
    static constexpr int kRowMajorStride = kBlockK + 8;  // dX's A tile: [BM][BK]
    static constexpr int kKMajorStrideA = BM + 8;        // dW's A tile: [BK][BM]
    static constexpr int kStrideB = BN + 8;              // B tile: [BK][BN]
    static constexpr int kAElems = BM * kRowMajorStride > kBlockK * kKMajorStrideA
                                       ? BM * kRowMajorStride
                                       : kBlockK * kKMajorStrideA;
    static constexpr int kBElems = kBlockK * kStrideB;
    // A stage: the dY tile (turned into dZ in place), the Y tile (ReLU), the B tile.
    static constexpr int kStageElems = 2 * kAElems + kBElems;
    static constexpr int kSmemBytes = kStages * kStageElems * 2;
    static constexpr int kMTiles = WM / 16;
    static constexpr int kNTiles = WN / 8;
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "warp tiling");
    static_assert(BM * kBlockK % (8 * kThreads) == 0 && BN * kBlockK % (8 * kThreads) == 0,
                  "every thread copies whole 16-byte chunks");
    static_assert(BM * kBlockK % (4 * kThreads) == 0, "every thread forms whole dZ quads");
    static_assert(BM <= kThreads, "one thread per db column");
};

using Tc128x128 = BackwardTcConfig<128, 128, 64, 64>;
using Tc64x64 = BackwardTcConfig<64, 64, 32, 32>;

// Copies rows gr0 .. gr0 + ROWS - 1, columns gc0 .. gc0 + COLS - 1 of the row-major
// [grows, gcols] matrix src into dst (row stride `stride`), zero outside the matrix.
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_block(T* dst, int stride, const T* __restrict__ src,
                                           long long grows, long long gcols, long long gr0,
                                           long long gc0, bool vec) {
    constexpr int kChunksPerRow = COLS / 8;
    constexpr int kChunks = ROWS * kChunksPerRow / THREADS;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
        const int chunk = (int)threadIdx.x + i * THREADS;
        const int row = chunk / kChunksPerRow;
        const int col = (chunk % kChunksPerRow) * 8;
        const long long gr = gr0 + row;
        const long long gc = gc0 + col;
        T* d = dst + row * stride + col;
        if (vec) {
            const bool valid = gr < grows && gc < gcols;
            ptx::cp_async_16(d, valid ? src + gr * gcols + gc : src, valid);
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                d[j] = gr < grows && gc + j < gcols ? src[gr * gcols + gc + j]
                                                    : Element<T>::from_float(0.0f);
            }
        }
    }
}

// Turns the dY block in `dz` (ROWS x COLS of dY at (gr0, gc0), row stride `stride`) into dZ in
// place; `y` is the matching block of Y (read only for ReLU).
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void form_dz_block(T* dz, const T* y, int stride, long long n,
                                              long long gr0, long long gc0, bool relu,
                                              const MaskParams& mp) {
    constexpr int kQuadsPerRow = COLS / 4;
    constexpr int kQuads = ROWS * kQuadsPerRow / THREADS;
#pragma unroll
    for (int i = 0; i < kQuads; ++i) {
        const int quad = (int)threadIdx.x + i * THREADS;
        const int row = quad / kQuadsPerRow;
        const int col = (quad % kQuadsPerRow) * 4;
        T* d = dz + row * stride + col;
        float v[4], yv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            v[j] = Element<T>::to_float(d[j]);
            yv[j] = relu ? Element<T>::to_float(y[row * stride + col + j]) : 0.0f;
        }
        form_dz4(v, yv, relu, mp, n, gr0 + row, gc0 + col);
#pragma unroll
        for (int j = 0; j < 4; ++j) d[j] = Element<T>::from_float(v[j]);
    }
}

template <typename T, class C, bool kWeightGrad>
__device__ __forceinline__ void backward_tc(const T* __restrict__ dy, const T* __restrict__ y,
                                            const T* __restrict__ b_mat, T* __restrict__ out,
                                            T* __restrict__ db, long long m, long long n,
                                            long long k, int relu, int accumulate,
                                            MaskParams mp) {
    constexpr int BM = C::kBlockM, BN = C::kBlockN, BK = C::kBlockK, S = C::kStages;
    constexpr int kStrideA = kWeightGrad ? C::kKMajorStrideA : C::kRowMajorStride;
    // The A tile as a block of dY: dX reads dY rows r0.. and columns t0..; dW the transpose.
    constexpr int kARows = kWeightGrad ? BK : BM;
    constexpr int kACols = kWeightGrad ? BM : BK;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    T* pipe = reinterpret_cast<T*>(smem);

    mp = resolve_seed(mp);
    const bool is_relu = relu != 0;
    const long long rows = kWeightGrad ? n : m;
    const long long red = kWeightGrad ? m : n;
    const bool do_gemm = out != nullptr;
    const long long col_tiles = do_gemm ? (k + BN - 1) / BN : 1;
    const long long tiles = (rows + BM - 1) / BM * col_tiles;
    const long long k_tiles = (red + BK - 1) / BK;
    const bool vec_dy = reinterpret_cast<uintptr_t>(dy) % 16 == 0 &&
                        (!is_relu || reinterpret_cast<uintptr_t>(y) % 16 == 0) && n % 8 == 0;
    const bool vec_b = reinterpret_cast<uintptr_t>(b_mat) % 16 == 0 && k % 8 == 0;
    const int tid = (int)threadIdx.x;
    const int lane = tid % 32, warp_id = tid / 32;
    const int wr0 = warp_id / C::kWarpsN * (BM / C::kWarpsM);
    const int wc0 = warp_id % C::kWarpsN * (BN / C::kWarpsN);

    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long r0 = tile / col_tiles * BM;
        const long long c0 = tile % col_tiles * BN;
        const bool do_db = kWeightGrad && db != nullptr && c0 == 0;

        // Stage s of slice t0: dY block at (ar0, ac0) of dY, and rows t0.. of B.
        auto load_stage = [&](int s, long long t0) {
            T* stage = pipe + s * C::kStageElems;
            const long long ar0 = kWeightGrad ? t0 : r0;
            const long long ac0 = kWeightGrad ? r0 : t0;
            load_block<T, kARows, kACols, C::kThreads>(stage, kStrideA, dy, m, n, ar0, ac0,
                                                       vec_dy);
            if (is_relu) {
                load_block<T, kARows, kACols, C::kThreads>(stage + C::kAElems, kStrideA, y, m,
                                                           n, ar0, ac0, vec_dy);
            }
            if (do_gemm) {
                load_block<T, BK, BN, C::kThreads>(stage + 2 * C::kAElems, C::kStrideB, b_mat,
                                                   red, k, t0, c0, vec_b);
            }
        };

        float acc[C::kMTiles][C::kNTiles][4];
#pragma unroll
        for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < C::kNTiles; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
        float db_acc = 0.0f;

#pragma unroll
        for (int s = 0; s < S - 1; ++s) {
            if (s < k_tiles) load_stage(s, (long long)s * BK);
            ptx::cp_async_commit();
        }
        int read_stage = 0, write_stage = S - 1;
        for (long long kt = 0; kt < k_tiles; ++kt) {
            // Slice kt has landed for this thread; the barrier makes it visible to all and
            // guarantees every warp is done with the stage about to be overwritten.
            ptx::cp_async_wait<S - 2>();
            __syncthreads();
            if (kt + S - 1 < k_tiles) load_stage(write_stage, (kt + S - 1) * BK);
            ptx::cp_async_commit();

            T* stage = pipe + read_stage * C::kStageElems;
            const long long t0 = kt * BK;
            form_dz_block<T, kARows, kACols, C::kThreads>(
                stage, stage + C::kAElems, kStrideA, n, kWeightGrad ? t0 : r0,
                kWeightGrad ? r0 : t0, is_relu, mp);
            __syncthreads();

            const T* a = stage;
            const T* b = stage + 2 * C::kAElems;
            if (do_gemm) {
#pragma unroll
                for (int k0 = 0; k0 < BK; k0 += 16) {
                    uint32_t af[C::kMTiles][4];
                    uint32_t bf[C::kNTiles][2];
                    const int j = lane / 8, i = lane % 8;
#pragma unroll
                    for (int mt = 0; mt < C::kMTiles; ++mt) {
                        const int r = wr0 + 16 * mt;
                        if (kWeightGrad) {
                            // A stored [k][r]: matrices (r 0-7, k 0-7), (r 8-15, k 0-7),
                            // (r 0-7, k 8-15), (r 8-15, k 8-15), transposed on load.
                            ptx::ldmatrix_x4_trans(
                                af[mt], a + (k0 + i + 8 * (j / 2)) * kStrideA + r + 8 * (j % 2));
                        } else {
                            ptx::ldmatrix_x4(af[mt],
                                             a + (r + lane % 16) * kStrideA + k0 + (lane / 16) * 8);
                        }
                    }
                    // B stored [k][n]: matrices (k 0-7, n 0-7), (k 8-15, n 0-7) are b[0], b[1]
                    // of the first n8 tile, then the same for the second, transposed on load.
#pragma unroll
                    for (int np = 0; np < C::kNTiles / 2; ++np) {
                        uint32_t r4[4];
                        ptx::ldmatrix_x4_trans(r4, b + (k0 + i + 8 * (j % 2)) * C::kStrideB +
                                                       wc0 + 16 * np + 8 * (j / 2));
                        bf[2 * np][0] = r4[0];
                        bf[2 * np][1] = r4[1];
                        bf[2 * np + 1][0] = r4[2];
                        bf[2 * np + 1][1] = r4[3];
                    }
#pragma unroll
                    for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
                        for (int nt = 0; nt < C::kNTiles; ++nt)
                            ptx::mma_m16n8k16<T>(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
                }
            }
            if (do_db && tid < BM) {
                // Column tid of the [BK][BM] dZ tile, in row order.
#pragma unroll 8
                for (int t = 0; t < BK; ++t) db_acc += Element<T>::to_float(a[t * kStrideA + tid]);
            }
            read_stage = read_stage + 1 == S ? 0 : read_stage + 1;
            write_stage = write_stage + 1 == S ? 0 : write_stage + 1;
        }
        ptx::cp_async_wait<0>();
        // Every warp is past its last read of the pipeline before the next tile refills it.
        __syncthreads();

        if (do_gemm) {
            const int g = lane / 4, t4 = lane % 4;
#pragma unroll
            for (int mt = 0; mt < C::kMTiles; ++mt) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const long long r = r0 + wr0 + 16 * mt + g + 8 * h;
                    if (r >= rows) continue;
#pragma unroll
                    for (int nt = 0; nt < C::kNTiles; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const long long s = c0 + wc0 + 8 * nt + 2 * t4 + e;
                            if (s >= k) continue;
                            T* dst = out + r * k + s;
                            const float old = accumulate ? Element<T>::to_float(*dst) : 0.0f;
                            *dst = Element<T>::from_float(old + acc[mt][nt][2 * h + e]);
                        }
                    }
                }
            }
        }
        if (do_db && tid < BM && r0 + tid < n) {
            T* dst = db + r0 + tid;
            const float old = accumulate ? Element<T>::to_float(*dst) : 0.0f;
            *dst = Element<T>::from_float(old + db_acc);
        }
    }
}

}  // namespace backward
}  // namespace fusedrop

#define FUSEDROP_BACKWARD_TC(CONFIG, NAME, SUFFIX, T)                                            \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dx_##NAME##_##SUFFIX(                                                  \
            const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ w,          \
            T* __restrict__ dx, long long m, long long n, long long k, int relu, int accumulate, \
            fusedrop::MaskParams mp) {                                                           \
        fusedrop::backward::backward_tc<T, fusedrop::backward::CONFIG, false>(                   \
            dy, y, w, dx, nullptr, m, n, k, relu, accumulate, mp);                               \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dw_##NAME##_##SUFFIX(                                                  \
            const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,          \
            T* __restrict__ dw, T* __restrict__ db, long long m, long long n, long long k,       \
            int relu, int accumulate, fusedrop::MaskParams mp) {                                 \
        fusedrop::backward::backward_tc<T, fusedrop::backward::CONFIG, true>(                    \
            dy, y, x, dw, db, m, n, k, relu, accumulate, mp);                                    \
    }

FUSEDROP_BACKWARD_TC(Tc128x128, tc128x128, f16, __half)
FUSEDROP_BACKWARD_TC(Tc128x128, tc128x128, bf16, __nv_bfloat16)
FUSEDROP_BACKWARD_TC(Tc64x64, tc64x64, f16, __half)
FUSEDROP_BACKWARD_TC(Tc64x64, tc64x64, bf16, __nv_bfloat16)

// The launch numbers src/cuda/backward.rs uses.
static_assert(fusedrop::backward::Tc128x128::kThreads == 128 &&
                  fusedrop::backward::Tc128x128::kSmemBytes == 87552,
              "update src/cuda/backward.rs");
static_assert(fusedrop::backward::Tc64x64::kThreads == 128 &&
                  fusedrop::backward::Tc64x64::kSmemBytes == 44544,
              "update src/cuda/backward.rs");
