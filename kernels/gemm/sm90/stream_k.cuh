// Stream-K over the persistent grid (sm_90a; the forward sweep's wg128x256_sk and wg128x128_sk,
// the production tiles of 128 x 256 and 128 x 128 with it): the blocks of a
// grid of G share out the last tiles' k-blocks evenly instead of whole tiles, so that the last
// wave leaves no multiprocessor idle. With T = W·G + R tiles (W full waves, 0 < R < G left
// over), whole tiles take W waves and the R tiles a wave of their own, in which G - R
// multiprocessors idle: on an H100 / H200 (G = 132) `up` at 128 x 256 has 4 096 tiles,
// 31.03 waves run as 32, `sq` 512 (3.88 as 4), `down` 1 024 (7.76 as 8), about 3 % of each
// call. Stream-K runs the same work in 31.03, 3.88 and 7.76 tile times, plus the partial sums.
// At 128 x 128, `up` has 8 192 tiles (62.06 waves as 63), `sq` 1 024 (7.76 as 8) and `down`
// 2 048 (15.52 as 16).
//
// Work of block b (StreamKWork), tiles in the grouped order of the scheduler:
//   - R = 0: every tile is one block's, tiles b, b + G, ... (as the plain persistent grid);
//   - else the last G + R tiles (all of them if W = 0) are stream-K tiles: their k-blocks, tile
//     after tile, S = (G + R)·K of them (K per tile), are cut into G ranges, block b taking
//     [b·S / G, (b + 1)·S / G); the (W - 1)·G tiles before them are whole tiles, W - 1 per
//     block. Taking G + R tiles rather than R gives every range at least K k-blocks, so that a
//     stream-K tile has at most two pieces and its fixup reads one partial.
//   A block runs its whole tiles, then its range's pieces of tiles in descending tile order:
//   first the piece it contributes (the tile its range ends in, unless it ends at that tile's
//   end), last the piece it finishes (the tile its range starts in).
//
// Fixup (StreamKFixup), per consumer warpgroup, through the caller's workspace:
//   - a piece that does not hold its tile's last k-block: each thread writes its accumulator
//     fragment into the block's slot, the warpgroup meets at a named barrier, and its first
//     thread stores the slot's flag (1, release at GPU scope: the barrier before it orders the
//     other threads' stores);
//   - the piece that holds the last k-block finishes the tile: for each earlier block c whose
//     range meets the tile, in block order, the first thread waits for c's flag (acquire at GPU
//     scope), a named barrier passes that on, and each thread adds the fragment of the same
//     thread of c's slot to its accumulators; then a barrier, the first thread sets the flags
//     back to 0, and the epilogue runs as for any tile.
// The sum is acc(finisher) + acc(c0) + acc(c1) + ... in that fixed order, so the output is
// bit-identical from run to run for a given G (though not to the whole-tile kernels: the
// k-blocks are summed in another order).
//
// Why no block waits forever: a finisher waits only on lower-numbered blocks, for the piece each
// of them runs first among its stream-K pieces, which needs nothing from any other block. On a
// GPU that holds where the blocks start in index order (CUTLASS's stream-K relies on the same):
// a lower block has then started, and its first piece ends without waiting, even where another
// kernel holds some multiprocessors (the grid is slower, not stuck). A GPU that started a
// higher block first and had no multiprocessor left for the lower one would wait until the wait
// limit traps (kernels/ptx.cuh).
//
// Workspace (the caller's, 16-byte aligned; src/cuda/forward.rs: sweep_workspace_bytes):
// kStreamKFlagBytes of flags first (u32, the flag of block b and consumer warpgroup g at
// b · kConsumerWarpgroups + g: room for kStreamKMaxBlocks blocks, so that the flags lie at the
// same bytes whatever the grid, and a workspace zero-filled once serves every shape), then G
// slots of kSlotBytes (slot b: warpgroup g's fragment as float4 number q of thread t at
// ((b · kConsumerWarpgroups + g) · kQuads + q) · 128 + t). The flags must be zero before the
// first launch; every launch leaves them zero.
#pragma once

#include <stdint.h>

#include "../../ptx.cuh"
#include "mainloop.cuh"

namespace fusedrop {
namespace gemm {
namespace sm90 {

// k-blocks [k_first, k_first + k_blocks) of tile `linear` (the scheduler's grouped order).
struct StreamKPiece {
    int linear;
    int k_first;
    int k_blocks;
    // Holds the tile's last k-block: adds the partials of blocks [first_block, blockIdx.x)
    // whose ranges meet the tile and runs the epilogue. Otherwise its partial goes to the
    // workspace for the block that finishes the tile.
    bool finishes;
    int first_block;
};

// The pieces block blockIdx.x of the grid runs, in order: whole tiles, then its stream-K range's.
// Every range must hold a k-block (S >= gridDim.x: the plan's grid has at most one block per tile,
// so that with R > 0 tiles left over S = (G + R)·K > G), and S times gridDim.x must fit an int
// (src/cuda/forward.rs checks it).
struct StreamKWork {
    int k_blocks;      // per tile
    int dp_tiles;      // whole tiles, [0, dp_tiles)
    int dp_pieces;     // the block's whole tiles: dp_tiles / gridDim.x
    int sk_k_blocks;   // S: the k-blocks of the stream-K tiles [dp_tiles, tiles)
    int begin, end;    // the block's range of them
    int first_tile;    // the stream-K tiles (from 0 at dp_tiles) its range meets
    int last_tile;     // (first_tile > last_tile: none)

    __device__ __forceinline__ StreamKWork(int tiles, int k_blocks_per_tile)
        : k_blocks(k_blocks_per_tile) {
        const int blocks = (int)gridDim.x;
        const int waves = tiles / blocks;
        const int rest = tiles - waves * blocks;
        dp_tiles = rest == 0 ? tiles : waves == 0 ? 0 : (waves - 1) * blocks;
        dp_pieces = dp_tiles / blocks;
        sk_k_blocks = (tiles - dp_tiles) * k_blocks;
        begin = start((int)blockIdx.x);
        end = start((int)blockIdx.x + 1);
        first_tile = end > begin ? begin / k_blocks : 0;
        last_tile = end > begin ? (end - 1) / k_blocks : -1;
    }

    // Where block b's range starts: b · S / G.
    __device__ __forceinline__ int start(int block) const {
        return (int)((uint32_t)block * (uint32_t)sk_k_blocks / gridDim.x);
    }

    __device__ __forceinline__ int pieces() const {
        return dp_pieces + last_tile - first_tile + 1;
    }

    __device__ __forceinline__ StreamKPiece piece(int i) const {
        StreamKPiece p;
        if (i < dp_pieces) {
            p.linear = (int)blockIdx.x + i * (int)gridDim.x;
            p.k_first = 0;
            p.k_blocks = k_blocks;
            p.finishes = true;
            p.first_block = (int)blockIdx.x;
            return p;
        }
        const int tile = last_tile - (i - dp_pieces);
        const int tile_begin = tile * k_blocks;
        const int tile_end = tile_begin + k_blocks;
        const int lo = begin > tile_begin ? begin : tile_begin;
        const int hi = end < tile_end ? end : tile_end;
        p.linear = dp_tiles + tile;
        p.k_first = lo - tile_begin;
        p.k_blocks = hi - lo;
        p.finishes = hi == tile_end;
        // The block whose range holds the tile's first k-block: the last b with start(b) <=
        // tile_begin, i.e. ((tile_begin + 1) · G - 1) / S.
        p.first_block =
            (int)((((uint32_t)tile_begin + 1u) * gridDim.x - 1u) / (uint32_t)sk_k_blocks);
        return p;
    }
};

// The grid's largest size the workspace's flag area holds, and that area's bytes (the first of
// the workspace): src/cuda/launch_table.rs's STREAM_K_MAX_BLOCKS, which the sweep's kernel file
// checks against.
constexpr int kStreamKMaxBlocks = 512;
constexpr uint32_t kStreamKFlagBytes = kStreamKMaxBlocks * kConsumerWarpgroups * 4u;

// The hand-over of partial tiles through the workspace (the kernel's parameter: its address is
// read where it is used rather than held in registers across the main loop, which has none to
// spare).
template <int kAccumulators>
struct StreamKFixup {
    static_assert(kAccumulators % 4 == 0, "fragments move as float4");
    static constexpr int kQuads = kAccumulators / 4;
    // One block's partial: both consumer warpgroups' fragments.
    static constexpr uint32_t kSlotBytes =
        (uint32_t)kConsumerWarpgroups * kAccumulators * kWarpgroupThreads * 4u;

    // This thread's first float4 of consumer warpgroup `consumer`'s fragment in block b's slot.
    __device__ __forceinline__ static float4* slot(unsigned char* workspace, int block,
                                                   int consumer) {
        return reinterpret_cast<float4*>(workspace + kStreamKFlagBytes) +
               ((size_t)block * kConsumerWarpgroups + consumer) * kQuads * kWarpgroupThreads +
               threadIdx.x % kWarpgroupThreads;
    }

    __device__ __forceinline__ static uint32_t* flag(unsigned char* workspace, int block,
                                                     int consumer) {
        return reinterpret_cast<uint32_t*>(workspace) + block * kConsumerWarpgroups + consumer;
    }

    // A named barrier of the consumer warpgroup's own (3 or 4: the TMA-store epilogue's are 1
    // and 2).
    __device__ __forceinline__ static void barrier(int consumer) {
        if (consumer == 0) {
            ptx::warpgroup_barrier<3>();
        } else {
            ptx::warpgroup_barrier<4>();
        }
    }

    // A piece that does not finish its tile: the warpgroup's fragment into this block's slot,
    // then its flag.
    __device__ __forceinline__ static void contribute(unsigned char* workspace,
                                                      const float (&acc)[kAccumulators],
                                                      int consumer) {
        float4* out = slot(workspace, (int)blockIdx.x, consumer);
#pragma unroll
        for (int q = 0; q < kQuads; ++q)
            out[q * kWarpgroupThreads] =
                make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
        barrier(consumer);
        if (threadIdx.x % kWarpgroupThreads == 0)
            ptx::flag_store_release(flag(workspace, (int)blockIdx.x, consumer), 1u);
    }

    // The piece that finishes its tile: adds the partials of the blocks [first_block,
    // blockIdx.x) (whose ranges meet the tile), in block order, then sets their flags back to 0.
    __device__ __forceinline__ static void add_partials(unsigned char* workspace,
                                                        float (&acc)[kAccumulators],
                                                        int consumer, int first_block) {
        const bool leader = threadIdx.x % kWarpgroupThreads == 0;
        for (int c = first_block; c < (int)blockIdx.x; ++c) {
            if (leader) ptx::flag_wait_acquire(flag(workspace, c, consumer), 1u);
            barrier(consumer);
            const float4* in = slot(workspace, c, consumer);
#pragma unroll
            for (int q = 0; q < kQuads; ++q) {
                const float4 v = in[q * kWarpgroupThreads];
                acc[4 * q] += v.x;
                acc[4 * q + 1] += v.y;
                acc[4 * q + 2] += v.z;
                acc[4 * q + 3] += v.w;
            }
        }
        if (first_block == (int)blockIdx.x) return;
        // Every thread has read the slots before they may be written again (by the next launch).
        barrier(consumer);
        if (leader) {
            for (int c = first_block; c < (int)blockIdx.x; ++c)
                ptx::flag_store_release(flag(workspace, c, consumer), 0u);
        }
    }
};

}  // namespace sm90
}  // namespace gemm
}  // namespace fusedrop
