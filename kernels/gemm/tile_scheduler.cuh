// Kernel level: which output tile each threadblock computes.
//
// Grid rule (every forward kernel): grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), 65535), 1).
// When m needs more than 65535 row tiles, block (x, y) loops over "folds": fold f covers row
// tiles f * gridDim.y .. f * gridDim.y + gridDim.y - 1. A grid with gridDim.y = ceil(m / kBlockM)
// (one fold) is equally valid. Within a fold the blocks are rasterised in groups of kGroupM row
// tiles, so that the blocks resident at one time share a few rows of X and columns of W in L2
// instead of sweeping all of W for each row tile.
#pragma once

namespace fusedrop {
namespace gemm {

struct TileCoord {
    long long tm;  // row tile index
    long long tn;  // column tile index
};

template <int kGroupM>
struct TileScheduler {
    long long m_tiles;
    long long n_tiles;

    __device__ __forceinline__ TileScheduler(long long m, long long n, int block_m, int block_n)
        : m_tiles((m + block_m - 1) / block_m), n_tiles((n + block_n - 1) / block_n) {}

    __device__ __forceinline__ long long folds() const {
        return (m_tiles + gridDim.y - 1) / gridDim.y;
    }

    // The tile of this block in `fold`; false when the last fold has no tile for it. The result
    // is uniform over the block, so a block may skip the fold as a whole.
    __device__ __forceinline__ bool tile(long long fold, TileCoord& out) const {
        const long long rows = (long long)gridDim.y;
        const long long base = fold * rows;
        const long long rows_here = m_tiles - base < rows ? m_tiles - base : rows;
        const long long linear = (long long)blockIdx.y * gridDim.x + blockIdx.x;
        if (linear >= rows_here * n_tiles) return false;
        const long long per_group = (long long)kGroupM * n_tiles;
        const long long group = linear / per_group;
        const long long first = group * kGroupM;
        const long long size = rows_here - first < kGroupM ? rows_here - first : kGroupM;
        const long long within = linear - group * per_group;
        out.tm = base + first + within % size;
        out.tn = within / size;
        return true;
    }
};

}  // namespace gemm
}  // namespace fusedrop
