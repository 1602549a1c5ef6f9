// Kernel level: which output tile each threadblock computes.
//
// Two grids: the folded grid of the mma.sync and SIMT forwards (TileScheduler, below), and the
// persistent grid of the Hopper kernels (PersistentTileScheduler, at the end); the mma.sync and
// SIMT backwards walk grouped_tile in a 1-D grid-stride loop of their own. All walk the tiles
// in the same grouped order (grouped_tile).
//
// Grid rule (the folded grid of every mma.sync and SIMT forward kernel): grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), 65535), 1).
// When m needs more than 65535 row tiles, block (x, y) loops over "folds": fold f covers row
// tiles f * gridDim.y .. f * gridDim.y + gridDim.y - 1. A grid with gridDim.y = ceil(m / kBlockM)
// (one fold) is equally valid. Within a fold the blocks are rasterised in groups of kGroupM row
// tiles, so that the blocks resident at one time share a few rows of X and columns of W in L2
// instead of sweeping all of W for each row tile.
#pragma once

namespace fusedrop {
namespace gemm {

template <typename Index>
struct TileCoordOf {
    Index tm;  // row tile index
    Index tn;  // column tile index
};
using TileCoord = TileCoordOf<long long>;

// Tile `linear` of an m_tiles x n_tiles grid of output tiles in grouped order: the tiles are
// walked in groups of kGroupM row tiles, column by column within a group, so that consecutive
// tiles share rows of X and columns of W in L2. Index is long long, or int where the tile count
// is known to fit (a 64-bit division is a subroutine call, whose calling convention costs
// registers that a wgmma main loop does not have).
template <int kGroupM, typename Index>
__host__ __device__ __forceinline__ TileCoordOf<Index> grouped_tile(Index linear, Index m_tiles,
                                                                    Index n_tiles) {
    const Index per_group = (Index)kGroupM * n_tiles;
    const Index group = linear / per_group;
    const Index first = group * kGroupM;
    const Index size = m_tiles - first < kGroupM ? m_tiles - first : (Index)kGroupM;
    const Index within = linear - group * per_group;
    TileCoordOf<Index> out;
    out.tm = first + within % size;
    out.tn = within / size;
    return out;
}

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
        out = grouped_tile<kGroupM, long long>(linear, rows_here, n_tiles);
        out.tm += base;
        return true;
    }
};

// Persistent grids (the Hopper kernels): gridDim = (blocks, 1, 1) with any blocks >= 1, usually
// one per multiprocessor; block b computes the tiles b, b + blocks, b + 2 blocks, ... of the
// grouped order. Producer and consumers of a block walk the same sequence. The tile count must
// fit an int (src/cuda/forward.rs and src/cuda/backward.rs check it before launching, the
// backward's launch of both products for their tiles together: one_launch_config).
// With kBlocksPerTile > 1 (split-K clusters of that many consecutive blocks), the unit is the
// cluster: cluster c = blockIdx.x / kBlocksPerTile walks the tiles c, c + clusters, ... and every
// block of it takes part in each of its tiles; gridDim.x is then a multiple of kBlocksPerTile.
template <int kGroupM, int kBlocksPerTile = 1>
struct PersistentTileScheduler {
    int m_tiles;
    int n_tiles;

    __device__ __forceinline__ PersistentTileScheduler(long long m, long long n, int block_m,
                                                       int block_n)
        : m_tiles((int)((m + block_m - 1) / block_m)), n_tiles((int)((n + block_n - 1) / block_n)) {}

    __device__ __forceinline__ int tiles() const { return m_tiles * n_tiles; }
    __device__ __forceinline__ int first() const { return (int)blockIdx.x / kBlocksPerTile; }
    __device__ __forceinline__ int next(int linear) const {
        return linear + (int)gridDim.x / kBlocksPerTile;
    }
    __device__ __forceinline__ TileCoordOf<int> tile(int linear) const {
        return grouped_tile<kGroupM, int>(linear, m_tiles, n_tiles);
    }
};

}  // namespace gemm
}  // namespace fusedrop
