// What the GEMM main loops say the same way: how an operand lies in global memory (Major: every
// main loop), and which part of the reduction a main loop covers (Slices: mma.sync and SIMT;
// the Hopper main loop takes k_first / k_blocks from split_k.cuh's KShare).
#pragma once

namespace fusedrop {
namespace gemm {

// The orientation of an operand's row-major global matrix.
//   K-major:  [M or N, red] (the forward's X and W, the backward's dY for dX): a row is one
//             output row (A) or column (B), its reduction indices consecutive.
//   MN-major: [red, M or N] (the backward's W and X, and dY for dW): a row is one reduction
//             index, its output rows or columns consecutive.
enum class Major { K, MN };

// Reduction slices [begin, end) of a main loop (slice s: reduction indices s * BK ..): the
// whole reduction, or a split-K share of it.
struct Slices {
    long long begin;
    long long end;
};

}  // namespace gemm
}  // namespace fusedrop
