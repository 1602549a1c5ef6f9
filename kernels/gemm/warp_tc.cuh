// Warp level of the tensor-core GEMM: one warp computes a WM x WN tile of C = A·Bᵀ with
// mma.sync m16n8k16 (f32 accumulators), reading its operands from shared memory with ldmatrix.
//
// Shared-memory operands (one pipeline stage): A rows are output rows (row-major, k contiguous),
// B rows are output columns (W's [n, k] layout, k contiguous); Layout::offset(row, col) places
// the 16-byte chunk holding columns col .. col + 7 of a row (threadblock_tc.cuh). Because B is
// stored n-major, the "col" B operand of mma.sync is read with plain (not transposed) ldmatrix.
#pragma once

#include <stdint.h>

#include "../ptx.cuh"

namespace fusedrop {
namespace gemm {

template <typename T, int WM, int WN, class Layout>
struct WarpMmaTc {
    static constexpr int kMTiles = WM / 16;
    static constexpr int kNTiles = WN / 8;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile is whole m16 x n16 pieces");

    // acc[mt][nt] is the m16n8 accumulator fragment of rows 16 mt.., columns 8 nt..:
    // [0..1] = (row g, columns 2t, 2t+1), [2..3] = (row g + 8, same columns), g = lane / 4,
    // t = lane % 4.
    float acc[kMTiles][kNTiles][4];

    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }

    // One k16 step over the stage at `stage`: a_row / b_row = the warp's first A / B row in it,
    // k0 = the step's first column.
    __device__ __forceinline__ void step(const T* stage, int a_row, int b_row, int k0,
                                         int lane) {
        uint32_t af[kMTiles][4];
        uint32_t bf[kNTiles][2];
        // A, x4: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
        // (rows 8-15, k 8-15), i.e. a[0..3] of the mma fragment.
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
            ptx::ldmatrix_x4(af[mt], stage + Layout::offset(a_row + 16 * mt + (lane % 16),
                                                            k0 + (lane / 16) * 8));
        }
        // B, x4 over two n8 tiles: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
        // (n 8-15, k 8-15): b[0..1] of the first tile, then of the second.
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
            uint32_t r[4];
            ptx::ldmatrix_x4(r, stage + Layout::offset(b_row + 16 * np + (lane % 8) + (lane / 16) * 8,
                                                       k0 + ((lane / 8) % 2) * 8));
            bf[2 * np][0] = r[0];
            bf[2 * np][1] = r[1];
            bf[2 * np + 1][0] = r[2];
            bf[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
                ptx::mma_m16n8k16<T>(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
    }
};

}  // namespace gemm
}  // namespace fusedrop
