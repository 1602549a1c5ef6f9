// Threadblock level of the tensor-core GEMM: a BM x BN output tile, computed by
// (BM / WM) x (BN / WN) warps over a STAGES-deep cp.async pipeline of BK-wide slices of X and W.
//
// Shared memory per stage: A = BM rows x BK (X rows), then B = BN rows x BK (W rows), unpadded,
// with the 16-byte chunks of each row XOR-swizzled (SmemLayout) so that the eight rows of every
// ldmatrix fall into distinct banks. No padding means 4 stages of 128 x 256 fit in the 99 KiB
// an sm_86 / sm_89 block may use.
//
// Global loads: 16-byte cp.async (zero-filled outside the matrix) when the operand's base is
// 16-byte aligned and k is a multiple of 8; otherwise plain element loads, zero-filled, stored
// as 16 bytes (slower, but any k and any alignment work).
#pragma once

#include <stdint.h>
#include <string.h>

#include "../ptx.cuh"
#include "epilogue.cuh"
#include "warp_tc.cuh"

namespace fusedrop {
namespace gemm {

// Where column col (a multiple of 8) of row `row` of a BK-wide operand tile lives. BK = 32:
// a 128-byte bank line holds two rows, and chunk c of row r goes to chunk c ^ ((r / 2) % 4);
// BK = 64: one row per line, chunk c ^ (r % 8). Either way the 8 consecutive rows an ldmatrix
// reads at one logical chunk occupy the 8 distinct 16-byte slots of a line.
template <int BK>
struct SmemLayout {
    static constexpr int kChunks = BK / 8;
    static_assert(kChunks == 4 || kChunks == 8, "swizzle defined for BK = 32 or 64");
    __device__ __forceinline__ static int offset(int row, int col) {
        const int swizzle = kChunks == 4 ? (row >> 1) & 3 : row & 7;
        return row * BK + (((col >> 3) ^ swizzle) << 3);
    }
};

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES>
struct ThreadblockTc {
    static constexpr int kWarpsM = BM / WM;
    static constexpr int kWarpsN = BN / WN;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    using Layout = SmemLayout<BK>;
    static constexpr int kStageElems = (BM + BN) * BK;
    static constexpr int kPipeBytes = STAGES * kStageElems * (int)sizeof(T);
    static constexpr int kChunksPerRow = BK / 8;  // 16-byte chunks per smem row
    static constexpr int kAChunks = BM * kChunksPerRow / kThreads;
    static constexpr int kBChunks = BN * kChunksPerRow / kThreads;
    // Rows of the accumulator tile staged per epilogue pass: enough for every thread to own a
    // run of 32 columns, at most the whole tile.
    static constexpr int kEpiRows = 32 * kThreads / BN < BM ? 32 * kThreads / BN : BM;
    static constexpr int kPasses = BM / kEpiRows;
    using Warp = WarpMmaTc<T, WM, WN, Layout>;
    using Epilogue = DropoutEpilogue<T, kEpiRows, BN, kThreads>;
    static constexpr int kSmemBytes =
        kPipeBytes > Epilogue::kSmemBytes ? kPipeBytes : Epilogue::kSmemBytes;

    static_assert(BM % WM == 0 && BN % WN == 0 && BK % 16 == 0, "tiles divide evenly");
    static_assert(STAGES >= 3, "the pipeline keeps at least two slices in flight");
    static_assert(BM * kChunksPerRow % kThreads == 0 && BN * kChunksPerRow % kThreads == 0,
                  "every thread copies the same number of 16-byte chunks");
    static_assert(BM % kEpiRows == 0 && kEpiRows % 16 == 0, "passes hold whole m16 tiles");

    // Copies rows row0 .. row0 + ROWS - 1, columns k0 .. k0 + BK - 1 of the row-major
    // [rows, k] operand src into the stage's rows first_row .., zero outside the operand.
    template <int ROWS, int CHUNKS>
    __device__ __forceinline__ static void load_operand(T* stage, int first_row, const T* src,
                                                        long long rows,
                                                        long long k, long long row0,
                                                        long long k0, bool vec) {
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int chunk = (int)threadIdx.x + i * kThreads;
            const int row = chunk / kChunksPerRow;
            const int col = (chunk % kChunksPerRow) * 8;
            const long long gr = row0 + row;
            const long long gc = k0 + col;
            T* d = stage + Layout::offset(first_row + row, col);
            if (vec) {
                const bool valid = gr < rows && gc < k;
                ptx::cp_async_16(d, valid ? src + gr * k + gc : src, valid);
            } else {
                uint16_t e[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    T v = Element<T>::from_float(0.0f);
                    if (gr < rows && gc + j < k) v = src[gr * k + gc + j];
                    e[j] = bits16(v);
                }
                *reinterpret_cast<uint4*>(d) =
                    make_uint4((uint32_t)e[0] | ((uint32_t)e[1] << 16),
                               (uint32_t)e[2] | ((uint32_t)e[3] << 16),
                               (uint32_t)e[4] | ((uint32_t)e[5] << 16),
                               (uint32_t)e[6] | ((uint32_t)e[7] << 16));
            }
        }
    }

    __device__ __forceinline__ static void load_stage(T* stage, const T* x, const T* w,
                                                      long long m, long long n, long long k,
                                                      long long m0, long long n0, long long k0,
                                                      bool vec_x, bool vec_w) {
        load_operand<BM, kAChunks>(stage, 0, x, m, k, m0, k0, vec_x);
        load_operand<BN, kBChunks>(stage, BM, w, n, k, n0, k0, vec_w);
    }

    // acc = X[m0.., :] · W[n0.., :]ᵀ for this warp's part of the tile. Leaves every copy
    // complete and every warp past its last read of the pipeline (shared memory is free).
    __device__ __forceinline__ static void mainloop(Warp& warp, T* smem, const T* x, const T* w,
                                                    long long m, long long n, long long k,
                                                    long long m0, long long n0, bool vec_x,
                                                    bool vec_w) {
        const int warp_id = (int)threadIdx.x / 32;
        const int lane = (int)threadIdx.x % 32;
        const int warp_m = warp_id / kWarpsN;
        const int warp_n = warp_id % kWarpsN;
        const long long k_tiles = (k + BK - 1) / BK;

#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < k_tiles) {
                load_stage(smem + s * kStageElems, x, w, m, n, k, m0, n0, (long long)s * BK,
                           vec_x, vec_w);
            }
            ptx::cp_async_commit();
        }
        int read_stage = 0;
        int write_stage = STAGES - 1;
        for (long long kt = 0; kt < k_tiles; ++kt) {
            // Slice kt has landed for this thread; the barrier makes it visible to all and
            // guarantees every warp is done with the stage about to be overwritten.
            ptx::cp_async_wait<STAGES - 2>();
            __syncthreads();
            const long long next = kt + STAGES - 1;
            if (next < k_tiles) {
                load_stage(smem + write_stage * kStageElems, x, w, m, n, k, m0, n0, next * BK,
                           vec_x, vec_w);
            }
            ptx::cp_async_commit();
            const T* stage = smem + read_stage * kStageElems;
#pragma unroll
            for (int k16 = 0; k16 < BK / 16; ++k16) {
                warp.step(stage, warp_m * WM, BM + warp_n * WN, k16 * 16, lane);
            }
            read_stage = read_stage + 1 == STAGES ? 0 : read_stage + 1;
            write_stage = write_stage + 1 == STAGES ? 0 : write_stage + 1;
        }
        ptx::cp_async_wait<0>();
        __syncthreads();
    }

    // Writes the accumulator rows of epilogue pass `pass` (tile rows pass * kEpiRows ..) into
    // the staging slab (Epilogue::kStride floats per row).
    __device__ __forceinline__ static void stage_accumulators(const Warp& warp, float* stage,
                                                              int pass) {
        const int warp_id = (int)threadIdx.x / 32;
        const int lane = (int)threadIdx.x % 32;
        const int warp_m = warp_id / kWarpsN;
        const int warp_n = warp_id % kWarpsN;
        const int g = lane / 4;
        const int t = lane % 4;
#pragma unroll
        for (int mt = 0; mt < Warp::kMTiles; ++mt) {
            const int row = warp_m * WM + 16 * mt - pass * kEpiRows;
            if (row < 0 || row >= kEpiRows) continue;
#pragma unroll
            for (int nt = 0; nt < Warp::kNTiles; ++nt) {
                const int col = warp_n * WN + 8 * nt + 2 * t;
                float* top = stage + (row + g) * Epilogue::kStride + col;
                float* bottom = top + 8 * Epilogue::kStride;
                *reinterpret_cast<float2*>(top) =
                    make_float2(warp.acc[mt][nt][0], warp.acc[mt][nt][1]);
                *reinterpret_cast<float2*>(bottom) =
                    make_float2(warp.acc[mt][nt][2], warp.acc[mt][nt][3]);
            }
        }
    }
};

}  // namespace gemm
}  // namespace fusedrop
