// Warp level of the tensor-core GEMM: one warp computes a WM x WN tile of C = A·B with
// mma.sync m16n8k16 (f32 accumulators), reading its operands from shared memory with ldmatrix.
//
// Shared-memory operands (one pipeline stage; OperandTile below): each operand is a block of a
// row-major global matrix, stored in the matrix's own orientation.
//   K-major:  the matrix is [M or N, red] (the forward's X and W, the backward's dY for dX): the
//             tile's rows are output rows (A) or columns (B), 8 reduction indices per 16-byte
//             chunk, read with plain ldmatrix.
//   MN-major: the matrix is [red, M or N] (the backward's W and X, and dY for dW): the tile's
//             rows are reduction indices, read with ldmatrix.trans.
// Either way the four 8 x 8 matrices of an ldmatrix.x4 are the same pieces of the mma fragments,
// so the mma sequence (and every accumulator's reduction order) does not depend on the layout.
#pragma once

#include <stdint.h>

#include "../ptx.cuh"
#include "layout.cuh"

namespace fusedrop {
namespace gemm {

// A ROWS x COLS block of a row-major matrix in shared memory, unpadded, the 16-byte chunks of
// each row XOR-swizzled so that the 8 rows an ldmatrix reads at one logical chunk (8 consecutive
// rows from a multiple of 8) occupy the 8 distinct 16-byte slots of a 128-byte bank line.
// COLS = 32: a line holds two rows, and chunk c of row r goes to chunk c ^ ((r / 2) % 4);
// COLS a multiple of 64: a row fills whole lines, and chunk c goes to c ^ (r % 8).
template <int ROWS, int COLS>
struct SmemTile {
    static constexpr int kRows = ROWS;
    static constexpr int kCols = COLS;
    static constexpr int kElems = ROWS * COLS;
    static constexpr int kChunksPerRow = COLS / 8;
    static_assert(COLS == 32 || COLS % 64 == 0,
                  "swizzle defined for rows of 32 elements or of a multiple of 64");
    static_assert(ROWS % 8 == 0, "ldmatrix reads whole groups of 8 rows");

    // Element (row, col): col's 16-byte chunk moved by the swizzle, its place in the chunk kept.
    __device__ __forceinline__ static int offset(int row, int col) {
        const int swizzle = COLS == 32 ? (row >> 1) & 3 : row & 7;
        return row * COLS + ((((col >> 3) ^ swizzle) << 3) | (col & 7));
    }
};

// One operand of a stage: kRows output rows (A) or columns (B) by BK reduction indices, stored
// K-major as SmemTile<kRows, BK> or MN-major as SmemTile<BK, kRows>.
template <int kRows, int BK, Major kMajorArg>
struct OperandTile {
    static constexpr Major kMajor = kMajorArg;
    using Tile = SmemTile<kMajor == Major::K ? kRows : BK, kMajor == Major::K ? BK : kRows>;

    // Lane's row address (as an element offset) for the ldmatrix of the 8 x 8 matrix at output
    // row/column mn, reduction index k (both multiples of 8), `i` = the lane's row of it: an
    // output row of 8 reduction indices when K-major, a reduction index of 8 output rows (read
    // transposed) when MN-major.
    __device__ __forceinline__ static int ldmatrix_row(int mn, int k, int i) {
        return kMajor == Major::K ? Tile::offset(mn + i, k) : Tile::offset(k + i, mn);
    }

    __device__ __forceinline__ static void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
        if (kMajor == Major::K) {
            ptx::ldmatrix_x4(r, row);
        } else {
            ptx::ldmatrix_x4_trans(r, row);
        }
    }
};

template <typename T, int WM, int WN, class OperandA, class OperandB>
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

    // The operand fragments of one k16 step: A's of every m16 tile, B's of every n8 tile.
    struct Fragments {
        uint32_t a[kMTiles][4];
        uint32_t b[kNTiles][2];
    };

    // Register j of an A fragment holds the elements (row, k) and (row, k + 1) of the warp's
    // m16 x k16 piece, with row = a_fragment_row(j, lane) and k = a_fragment_k(j, lane) (the mma
    // fragment layout: g = lane / 4 and g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9).
    __device__ __forceinline__ static int a_fragment_row(int j, int lane) {
        return lane / 4 + 8 * (j & 1);
    }
    __device__ __forceinline__ static int a_fragment_k(int j, int lane) {
        return 2 * (lane % 4) + 8 * (j >> 1);
    }

    // The A fragments of one k16 step, every m16 tile, from the A-shaped tile `a`: a_first = the
    // warp's first output row, k0 = the step's first reduction index in the tile.
    __device__ __forceinline__ static void load_a(uint32_t (&fa)[kMTiles][4], const T* a,
                                                  int a_first, int k0, int lane) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) load_a_tile(fa[mt], a, a_first, mt, k0, lane);
    }

    // The A fragment of m16 tile mt alone (load_a's piece). The backward reads its side tile (Y)
    // with it, at the same places as dY.
    __device__ __forceinline__ static void load_a_tile(uint32_t (&fa)[4], const T* a, int a_first,
                                                       int mt, int k0, int lane) {
        // Lanes 8j .. 8j + 7 address matrix j; i is the lane's row of it.
        const int j = lane / 8;
        const int i = lane % 8;
        // x4: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
        // (rows 8-15, k 8-15), i.e. a[0..3] of the mma fragment.
        OperandA::ldmatrix_x4(
            fa, a + OperandA::ldmatrix_row(a_first + 16 * mt + 8 * (j % 2), k0 + 8 * (j / 2), i));
    }

    // Loads the fragments of one k16 step from the stage's tiles a and b: a_first / b_first = the
    // warp's first output row / column, k0 = the step's first reduction index in the tiles.
    __device__ __forceinline__ static void load(Fragments& f, const T* a, const T* b, int a_first,
                                                int b_first, int k0, int lane) {
        load_a(f.a, a, a_first, k0, lane);
        // Lanes 8j .. 8j + 7 address matrix j; i is the lane's row of it.
        const int j = lane / 8;
        const int i = lane % 8;
        // B, x4 over two n8 tiles: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
        // (n 8-15, k 8-15): b[0..1] of the first tile, then of the second.
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
            uint32_t r[4];
            OperandB::ldmatrix_x4(
                r, b + OperandB::ldmatrix_row(b_first + 16 * np + 8 * (j / 2), k0 + 8 * (j % 2),
                                              i));
            f.b[2 * np][0] = r[0];
            f.b[2 * np][1] = r[1];
            f.b[2 * np + 1][0] = r[2];
            f.b[2 * np + 1][1] = r[3];
        }
    }

    // acc += the product of one k16 step's fragments. Every accumulator takes its k16 steps in
    // the order the caller gives them, whenever their fragments were loaded.
    __device__ __forceinline__ void mma(const Fragments& f) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
                ptx::mma_m16n8k16<T>(acc[mt][nt], f.a[mt], f.b[nt], acc[mt][nt]);
    }
};

}  // namespace gemm
}  // namespace fusedrop
