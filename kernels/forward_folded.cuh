// The part of the kernel level that the folded-grid forwards share (mma.sync: forward_tc.cuh;
// SIMT: forward_f32.cuh), so that a fix to it is made once: the seed resolved (and recorded once
// per launch), then every tile the block owns in the tile scheduler's order
// (gemm/tile_scheduler.cuh), multiplied by the caller's main loop and written by the dropout
// epilogue (gemm/epilogue.cuh) in passes of Tb::kEpiRows rows staged in shared memory.
#pragma once

#include "gemm/epilogue.cuh"
#include "gemm/tile_scheduler.cuh"
#include "mask.cuh"

namespace fusedrop {
namespace forward {

// Tb: the threadblock level (kBlockM, kBlockN, kEpiRows, kPasses, stage_accumulators); Acc: its
// accumulators; `slab`: the epilogue's staging area (shared memory the main loop leaves free).
// multiply(acc, m0, n0) sets acc to X[m0.., :] · W[n0.., :]ᵀ for the tile at (m0, n0).
template <class Tb, class Epilogue, class Acc, typename T, class Multiply>
__device__ __forceinline__ void forward_folded(const T* __restrict__ b, T* __restrict__ y,
                                               long long m, long long n, int relu, MaskParams mp,
                                               float* slab, Multiply&& multiply) {
    mp = resolve_seed(mp);
    record_seed(mp, blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0);
    const gemm::EpilogueArgs<T> epi = gemm::make_epilogue_args(b, y, m, n, relu, mp);
    const gemm::TileScheduler<8> scheduler(m, n, Tb::kBlockM, Tb::kBlockN);
    const long long folds = scheduler.folds();
    for (long long fold = 0; fold < folds; ++fold) {
        gemm::TileCoord tile;
        if (!scheduler.tile(fold, tile)) continue;
        const long long m0 = tile.tm * Tb::kBlockM;
        const long long n0 = tile.tn * Tb::kBlockN;
        Acc acc;
        multiply(acc, m0, n0);
#pragma unroll
        for (int pass = 0; pass < Tb::kPasses; ++pass) {
            Tb::stage_accumulators(acc, slab, pass);
            __syncthreads();
            Epilogue::apply(slab, m0 + pass * Tb::kEpiRows, n0, epi);
            // The slab is rewritten by the next pass or the next fold's main loop.
            __syncthreads();
        }
    }
}

}  // namespace forward
}  // namespace fusedrop
