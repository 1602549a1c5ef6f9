// Backward of Y = dropout_p(act(X·Wᵀ + b)) on CUDA cores (no tensor cores), every dtype:
//
//   dZ = dY * scale * active          (kernels/backward.cuh, formed while dY tiles are loaded;
//                                      the exact rule, with non-finite values, is there)
//   dX = dZ · W      [m, k]           fusedrop_backward_dx_simt_<dtype>
//   dW = dZᵀ · X     [n, k]           fusedrop_backward_dw_simt_<dtype>, which also reduces
//   db = Σ_rows dZ   [n]              db in the blocks that own the first column tile of dW
//
// This is the kernel that is right on every shape: element-wise loads with bounds checks (any
// m, n, k >= 1, rows of any alignment), 64-bit index arithmetic, and a grid-stride loop over
// output tiles (any grid size is correct). f32 accumulation; f16/bf16 inputs are widened on load
// and dZ stays in f32.
//
// Both kernels are one tiled product OUT[rows, k] = A[rows, red] · B[red, k] over a reduction of
// length red, with B a row-major [red, k] matrix (W for dX, X for dW) and A = dZ (dX: rows = m,
// red = n) or dZᵀ (dW: rows = n, red = m). Every output element is reduced by exactly one thread
// in a fixed order, and db by one thread per column of dZ in a fixed order: no atomics, so the
// same inputs give bit-identical outputs whatever the grid size.
//
// Launch (BackwardSimtConfig): kThreads = 256 threads, no dynamic shared memory (8.5 KB static),
// a 1-D grid of any size >= 1; the wrapper uses grid.x = min(tiles, kMaxBlocks) with
//   dX: tiles = ceil(m / kBlockM) * ceil(k / kBlockN)
//   dW: tiles = ceil(n / kBlockM) * ceil(k / kBlockN)   (dw != nullptr)
//       tiles = ceil(n / kBlockM)                         (dw == nullptr: db only)
// Tile t covers output rows (t / col_tiles) * kBlockM and columns (t % col_tiles) * kBlockN.
//
// Arguments: dy [m, n]; y [m, n] (the saved forward output, read only when relu = 1, may be
// nullptr otherwise); w [n, k] or x [m, k]; outputs dx [m, k], dw [n, k] (nullptr: skip),
// db [n] (nullptr: skip); accumulate = 1 adds to the outputs' existing values (the sum is taken
// in f32 and rounded once), 0 overwrites them. mp: the forward call's MaskParams.
#include "backward.cuh"

namespace fusedrop {

struct BackwardSimtConfig {
    static constexpr int kBlockM = 64;  // output rows per tile (m for dX, n for dW)
    static constexpr int kBlockN = 64;  // output columns per tile (k)
    static constexpr int kBlockK = 16;  // reduction step
    static constexpr int kThreads = 256;
    static constexpr int kSmemBytes = 0;
    static constexpr int kMaxBlocks = 1 << 20;
    // Each thread owns a 4x4 block of the output tile, rows ty + 16 i and columns tx + 16 j.
    static constexpr int kThreadRows = kBlockM / 16;
    static constexpr int kThreadCols = kBlockN / 16;
};

template <typename T, bool kWeightGrad>
__device__ void backward_simt(const T* __restrict__ dy, const T* __restrict__ y,
                              const T* __restrict__ b_mat, T* __restrict__ out,
                              T* __restrict__ db, long long m, long long n, long long k, int relu,
                              int accumulate, MaskParams mp) {
    using C = BackwardSimtConfig;
    static_assert(C::kThreads == 256 && C::kBlockM == 64 && C::kBlockN == 64 &&
                      C::kBlockK == 16,
                  "the load patterns below assume 256 threads and 64x64x16 tiles");
    // a_tile[t][r] = A(r0 + r, t0 + t); b_tile[t][s] = B(t0 + t, c0 + s). The +4 pads keep the
    // transposing stores of a_tile from landing in one bank.
    __shared__ float a_tile[C::kBlockK][C::kBlockM + 4];
    __shared__ float b_tile[C::kBlockK][C::kBlockN + 4];

    mp = resolve_seed(mp);
    const bool is_relu = relu != 0;
    const long long rows = kWeightGrad ? n : m;
    const long long red = kWeightGrad ? m : n;
    const bool do_gemm = out != nullptr;
    const long long col_tiles = do_gemm ? (k + C::kBlockN - 1) / C::kBlockN : 1;
    const long long tiles = (rows + C::kBlockM - 1) / C::kBlockM * col_tiles;
    const int tid = (int)threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;

    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long r0 = tile / col_tiles * C::kBlockM;
        const long long c0 = tile % col_tiles * C::kBlockN;
        const bool do_db = kWeightGrad && db != nullptr && c0 == 0;
        float acc[C::kThreadRows][C::kThreadCols];
#pragma unroll
        for (int i = 0; i < C::kThreadRows; ++i)
#pragma unroll
            for (int j = 0; j < C::kThreadCols; ++j) acc[i][j] = 0.0f;
        float db_acc = 0.0f;

        for (long long t0 = 0; t0 < red; t0 += C::kBlockK) {
            float v[4];
            if (kWeightGrad) {
                // A(r, t) = dZ(t, r): 16 rows of dZ, 64 consecutive columns each.
                load_dz4(dy, y, m, n, t0 + ty, r0 + 4 * tx, is_relu, mp, v);
#pragma unroll
                for (int j = 0; j < 4; ++j) a_tile[ty][4 * tx + j] = v[j];
            } else {
                // A(r, t) = dZ(r, t): 64 rows of dZ, 16 consecutive columns each.
                load_dz4(dy, y, m, n, r0 + tid / 4, t0 + 4 * (tid % 4), is_relu, mp, v);
#pragma unroll
                for (int j = 0; j < 4; ++j) a_tile[4 * (tid % 4) + j][tid / 4] = v[j];
            }
            if (do_gemm) {
                const long long t = t0 + ty;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const long long s = c0 + 4 * tx + j;
                    b_tile[ty][4 * tx + j] =
                        t < red && s < k ? Element<T>::to_float(b_mat[t * k + s]) : 0.0f;
                }
            }
            __syncthreads();
            if (do_gemm) {
#pragma unroll
                for (int t = 0; t < C::kBlockK; ++t) {
                    float a[C::kThreadRows], b[C::kThreadCols];
#pragma unroll
                    for (int i = 0; i < C::kThreadRows; ++i) a[i] = a_tile[t][ty + 16 * i];
#pragma unroll
                    for (int j = 0; j < C::kThreadCols; ++j) b[j] = b_tile[t][tx + 16 * j];
#pragma unroll
                    for (int i = 0; i < C::kThreadRows; ++i)
#pragma unroll
                        for (int j = 0; j < C::kThreadCols; ++j) acc[i][j] += a[i] * b[j];
                }
            }
            if (do_db && tid < C::kBlockM) {
#pragma unroll
                for (int t = 0; t < C::kBlockK; ++t) db_acc += a_tile[t][tid];
            }
            __syncthreads();
        }

        if (do_gemm) {
#pragma unroll
            for (int i = 0; i < C::kThreadRows; ++i) {
                const long long r = r0 + ty + 16 * i;
                if (r >= rows) continue;
#pragma unroll
                for (int j = 0; j < C::kThreadCols; ++j) {
                    const long long s = c0 + tx + 16 * j;
                    if (s >= k) continue;
                    T* dst = out + r * k + s;
                    const float old = accumulate ? Element<T>::to_float(*dst) : 0.0f;
                    *dst = Element<T>::from_float(old + acc[i][j]);
                }
            }
        }
        if (do_db && tid < C::kBlockM && r0 + tid < n) {
            T* dst = db + r0 + tid;
            const float old = accumulate ? Element<T>::to_float(*dst) : 0.0f;
            *dst = Element<T>::from_float(old + db_acc);
        }
    }
}

}  // namespace fusedrop

#define FUSEDROP_BACKWARD_SIMT_KERNELS(SUFFIX, T)                                                \
    extern "C" __global__ void __launch_bounds__(256, 1) fusedrop_backward_dx_simt_##SUFFIX(        \
        const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ w,              \
        T* __restrict__ dx, long long m, long long n, long long k, int relu, int accumulate,     \
        fusedrop::MaskParams mp) {                                                               \
        fusedrop::backward_simt<T, false>(dy, y, w, dx, nullptr, m, n, k, relu, accumulate, mp); \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(256, 1) fusedrop_backward_dw_simt_##SUFFIX(        \
        const T* __restrict__ dy, const T* __restrict__ y, const T* __restrict__ x,              \
        T* __restrict__ dw, T* __restrict__ db, long long m, long long n, long long k, int relu,  \
        int accumulate, fusedrop::MaskParams mp) {                                               \
        fusedrop::backward_simt<T, true>(dy, y, x, dw, db, m, n, k, relu, accumulate, mp);       \
    }

FUSEDROP_BACKWARD_SIMT_KERNELS(f32, float)
FUSEDROP_BACKWARD_SIMT_KERNELS(f16, __half)
FUSEDROP_BACKWARD_SIMT_KERNELS(bf16, __nv_bfloat16)
