// Backward of Y = dropout_p(act(X·Wᵀ + b)) on Hopper (sm_90a only; f16 and bf16, f32
// accumulate), on the forward's main loop (gemm/sm90/mainloop.cuh) with other operand layouts:
//
//   dX = dZ · W   [m, k]   fusedrop_backward_dx_<config>_<dtype>:  A = dY [m, n] K-major,
//                          B = W [n, k] MN-major (the reduction n is W's row index)
//   dW = dZᵀ · X  [n, k]   fusedrop_backward_dw_<config>_<dtype>:  A = dY MN-major (dZᵀ),
//                          B = X [m, k] MN-major; also db = Σ_rows dZ [n] in the blocks whose
//                          tile is in the first column of dW
//   both in one launch     fusedrop_backward_dxdw_<config>_<dtype> (unsplit configs;
//                          BackwardKernel::HopperOneLaunch): dX's and dW's tiles in one
//                          persistent sequence (BackwardTiles) on one ring, each tile as its
//                          product's kernel computes it
//   stored by TMA          fusedrop_backward_{dx,dw}_<config>_tmastore_<dtype> (unsplit configs;
//                          BackwardKernel::HopperTmaStore): dX and dW as above, the gradient
//                          staged in shared memory and stored by TMA through its own tensor map
//
// dZ is formed by the consumer warpgroup that multiplies it, from the landed stage's dY (and for
// ReLU Y, the main loop's side operand) (kernels/backward.cuh, form_dz4's rule):
//   dX: in registers. ldmatrix brings the consumer's 64 rows of the K-major dY box into wgmma's
//       A-fragment layout, dZ is formed there and wgmma takes A from registers
//       (Mainloop::mma_tile_rs).
//   dW: in the stage. dZᵀ is an M-major A operand, which only shared memory can supply: in the
//       main loop's prepare hook the consumer turns its 64-column box of dY into dZ in place,
//       fences the writes to the async proxy and meets its warpgroup at a named barrier before
//       issuing the wgmmas; the previous k-block's wgmmas run meanwhile.
//       Or, in the `_transform` dW kernels (BackwardKernel::HopperTransformWarps), by transform
//       warps: warps 1-3 of the producer warpgroup form the whole stage once it has landed,
//       each thread fences its own stores and arrives on the stage's `formed` barrier, which
//       the consumers wait on instead of `full` (gemm/sm90/pipeline.cuh, FormedStageBarriers);
//       the consumers then only multiply (and sum db), while the forming of later stages runs
//       beside their wgmmas.
// The dropout scale 1/(1-p) is not applied there but once to the f32 accumulators in the
// epilogue (fewer roundings, and ReLU with no NaN in Y needs no Philox at all). Identity with
// p = 0 forms nothing: the kernel is then a plain GEMM.
// Out-of-bounds parts of the boxes arrive as zeros (TMA zero fill), dZ of a zero is zero, so the
// M, N and K tails need no predicates before the store.
//
// Each consumer's part of a stage: for dX the 64 rows (m) it multiplies, all 64 columns (n) of
// the k-block; for dW the box of 64 columns (n) it multiplies, all 64 rows (m) of the k-block.
// Both are a 64 x 64 block of dY, 128 x (the consumer's first row of the tile) bytes into the
// stage, laid out as the TMA wrote it (row r at byte 128 r, 16-byte chunk c of the row at chunk
// c ^ (r % 8)).
//
// Determinism: every output element is reduced by one warpgroup over the whole reduction in
// k-block order, db by one thread per column in row order; no atomics, so the same inputs give
// bit-identical outputs whatever the grid size. The split-K configs (narrow products: few output
// tiles over a long reduction, like small's dX or wide's dW) split the reduction over the S
// blocks of a cluster, each in k-block order, and add the S partial sums (and db's) in rank order
// in distributed shared memory (gemm/sm90/split_k.cuh): bit-identical from run to run for a given
// S.
//
// Tensor maps (src/cuda/tensor_map.rs; all 2-D, 128-byte swizzle, zero fill):
//   dX: dY and Y: inner n, outer m, box 64 x kBlockM; W: inner k, outer n, box 64 x 64.
//   dW: dY and Y: inner n, outer m, box 64 x 64;      X: inner k, outer m, box 64 x 64.
//   _tmastore: the gradient, dX [m, k] or dW [n, k], after the operands' maps: box 64 x 64.
// That needs n % 8 == 0, k % 8 == 0 and 16-byte aligned dY, Y, W and X; m, n >= 1 (the
// reduction has at least one k-block), and dW with db needs dw (db-only calls take
// kernels/backward_tc.cu). When relu = 0 the map_y argument is not read (any valid map).
//
// Launch: block = 384 threads (a producer warpgroup and two consumers, as the forward),
// dynamic shared memory = kSmemBytes, grid = (blocks, 1, 1) for any blocks >= 1, persistent
// over the launch's tiles (BackwardTiles below, over gemm/tile_scheduler.cuh's
// PersistentTileScheduler); split-K configs: blocks a
// multiple of kSplits (the entry points' __cluster_dims__) and a reduction of at least kSplits
// k-blocks.
// accumulate = 1 adds to the existing values (in f32, rounded once). mp: the forward's
// MaskParams (seed read from its device buffer when given).
// dz (dX only): null, or a 4-byte aligned [m, n] buffer that the blocks computing dX's first
// column tile fill with the dZ / scale they form (ReLU, or the identity with p > 0; with neither
// dZ is dY and nothing is written), so that the dW launch after it reads dZ as a plain operand,
// with no Y, no mask and no forming in its stages (BackwardKernel::HopperDzFromDx: issue 11's
// "dZᵀ written once by the dX pass", to be measured against forming it in dW's stages).
#include <type_traits>

#include "backward.cuh"
#include "element.cuh"
#include "gemm/sm90/epilogue.cuh"
#include "gemm/sm90/mainloop.cuh"
#include "gemm/sm90/split_k.cuh"
#include "gemm/tile_scheduler.cuh"
#include "mask.cuh"
#include "ptx.cuh"

namespace fusedrop {
namespace backward {

constexpr int kGroupRows = 8;

// The dW kernels with transform warps (fusedrop_backward_dw_<config>_transform_<dtype>): warps
// 1-3 of the producer warpgroup form dZᵀ in each landed stage (warp 0's first thread issues the
// TMA loads), and the consumers wait for that instead of forming their boxes themselves
// (issue 11's "dZᵀ formed by a transform warpgroup", to be measured against the consumers
// forming it and against dX writing it). The forming draws Philox, which does not fit in the
// TMA thread's 40 registers: the producer warpgroup keeps 72, and the consumers, which then form
// nothing, take 16 fewer than usual (the most the block's pool leaves them).
constexpr int kTransformThreads = 96;
constexpr int kTransformProducerRegisters = 72;
constexpr int kTransformConsumerRegisters = 216;
static_assert(gemm::sm90::kWarpgroupThreads *
                      (kTransformProducerRegisters +
                       gemm::sm90::kConsumerWarpgroups * kTransformConsumerRegisters) <=
                  gemm::sm90::kEntryRegisters * gemm::sm90::kThreads,
              "the transform kernels' setmaxnreg split asks for more registers than the block "
              "has at entry");

// Turns 16-byte chunks first, first + stride, ... (below end) of the MN-major dY boxes at
// `boxes` (64 x 64 each, 8192 bytes apart, swizzled as above; `y_boxes` the matching boxes of Y,
// read only for ReLU) into dZ / scale, in place. Chunk c is the 8 elements of box c / 512's row
// (c % 512) / 8 at columns 8 (c % 8) ...; (row0, col0): the first box's first element in dY.
// Each chunk is read and written whole: a quarter warp's 8 consecutive chunks are one 128-byte
// row, a row's chunks stay in distinct bank groups under the swizzle, so every access is
// conflict-free (2-byte accesses of the same chunks are 4-way conflicted and 8 times as many).
// The dW consumers form their own box (first = their thread, stride 128, end 512); the transform
// warps a stage's every box between them, with kFewRegisters: the seed is hidden from ptxas at
// each chunk, so that Philox's 20 round keys are derived where they are used instead of held
// across the loop (in the transform warps' 72 registers they spilled).
template <typename T, bool kFewRegisters = false>
__device__ __forceinline__ void form_dz_chunks(unsigned char* boxes, const unsigned char* y_boxes,
                                               long long row0, long long col0, long long n,
                                               bool relu, const MaskParams& unit, int first,
                                               int stride, int end) {
#pragma unroll 1
    for (int chunk = first; chunk < end; chunk += stride) {
        const int box = chunk / 512, row = chunk % 512 / 8, logical = chunk % 8;
        const int offset = box * 8192 + row * 128 + ((logical ^ (row % 8)) * 16);
        uint4* d = reinterpret_cast<uint4*>(boxes + offset);
        const uint4 dv = *d;
        const uint4 yv = relu ? *reinterpret_cast<const uint4*>(y_boxes + offset)
                              : make_uint4(0u, 0u, 0u, 0u);
        uint32_t lo[2] = {dv.x, dv.y}, hi[2] = {dv.z, dv.w};
        const uint32_t y_lo[2] = {yv.x, yv.y}, y_hi[2] = {yv.z, yv.w};
        const long long c = col0 + 64 * box + 8 * logical;
        MaskParams key = unit;
        if constexpr (kFewRegisters) asm volatile("" : "+l"(key.seed));
        form_dz_quad<T>(lo, y_lo, relu, key, n, row0 + row, c);
        form_dz_quad<T>(hi, y_hi, relu, key, n, row0 + row, c + 4);
        *d = make_uint4(lo[0], lo[1], hi[0], hi[1]);
    }
}

// Keep bits of this lane's elements of a k-block's A fragments (the accumulator layout, below):
// bits 8 ks + 4 half + {0, 1} for row r0, columns c and c + 1, and + {2, 3} for row r0 + 8, where
// c = c0 + 16 ks + 8 half. One Philox call per lane and (ks, half) with paired draws (then every
// lane of the warp must call it alike: MaskKey::keep_rows shuffles), up to four without. Unrolled
// into load_dz_fragments' four steps, its three call sites (mma_tile_rs's fragment sets) and
// both kinds of draws, the draws made the dX kernels 374-406 KiB of SASS (dW: 52-84 KiB); the
// loop over ks is unrolled twice only (kept rolled, ptxas spilled a per-tile value in the
// split-K configs).
template <int kSteps>
__device__ __forceinline__ uint32_t fragment_keep_bits(const gemm::sm90::MaskKey& key,
                                                       const MaskParams& unit, long long r0,
                                                       long long c0) {
    static_assert(kSteps * 8 <= 32, "a k-block's keep bits fit one word");
    // mask_index is linear in the column: a step's indices are the previous step's + 16.
    uint64_t i0 = mask_index(unit, (uint64_t)r0, (uint64_t)c0);
    uint64_t i8 = mask_index(unit, (uint64_t)r0 + 8, (uint64_t)c0);
    uint32_t bits = 0;
#pragma unroll 2
    for (int ks = 0; ks < kSteps; ++ks, i0 += 16, i8 += 16)
        bits |= (key.keep_rows(i0, i8) | (key.keep_rows(i0 + 8, i8 + 8) << 4)) << (8 * ks);
    return bits;
}

// The A fragments (wgmma_rs layout, one per k16 step) of dZ / scale for this warpgroup's 64
// rows of the K-major dY box `block` (Y's at y_block), loaded with ldmatrix from the swizzled
// layout and formed in registers. (row0, col0): the block's first element in dY. Called only
// where dZ differs from dY (ReLU, or the identity with p > 0). For the identity every
// element's mask is drawn, with the forward epilogue's draws (gemm/sm90/epilogue.cuh,
// MaskKey::keep_rows: the A fragment's layout is the accumulator's, so lane pairs share their
// Philox calls where the columns allow). For ReLU every register takes relu_dz_pair_or_nan's
// bit rule, with no branch; a lane that met a NaN in Y then draws the keep bits of the k-block
// by itself and applies them where Y is NaN (kernels/backward.cuh).
template <typename T, int kSteps>
__device__ __forceinline__ void load_dz_fragments(const unsigned char* block,
                                                  const unsigned char* y_block, long long row0,
                                                  long long col0, bool relu,
                                                  const MaskParams& unit, uint32_t (&a)[kSteps][4]) {
    static_assert(kSteps * 8 <= 32, "a bit per element of a k-block fits one word");
    // keep_rows takes a 32-bit threshold, so p = 1 (threshold 2^32: nothing kept) is decided
    // here.
    const bool drop_all = unit.threshold > 0xffffffffull;
    const int t = (int)(threadIdx.x % gemm::sm90::kWarpgroupThreads);
    const int w = t / 32, l = t % 32;
    // ldmatrix x4: lanes 0-15 address rows 0-15 of the warp's 16 at the k-step's first 8
    // columns, lanes 16-31 the same rows at the next 8: registers (rows 0-7, k 0-7),
    // (8-15, k 0-7), (0-7, k 8-15), (8-15, k 8-15), as wgmma's A fragment. Register
    // j = 2 h' + h of step ks: row r0 + 8 h, columns c0 + 16 ks + 8 h' and the next (r0, c0
    // below); its elements' bits in the words below are 8 ks + 2 j + {0, 1}.
    const int row = 16 * w + l % 16;
    // ReLU: the elements whose Y is NaN (relu_dz_pair_or_nan left their dY).
    uint32_t nan_bits = 0;
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
        const int chunk = 2 * ks + l / 16;
        const int offset = row * 128 + ((chunk ^ (row % 8)) * 16);
        ptx::ldmatrix_x4(a[ks], block + offset);
        if (relu) {
            uint32_t y[4];
            ptx::ldmatrix_x4(y, y_block + offset);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                uint32_t nan;
                a[ks][j] = relu_dz_pair_or_nan<T>(a[ks][j], y[j], nan);
                nan_bits |= nan << (8 * ks + 2 * j);
            }
        }
    }
    if (relu && nan_bits == 0) return;
    // The mask where it decides: every element of the identity, alike in every lane (paired
    // draws where the columns allow); for ReLU the elements of this lane whose Y is NaN (ReLU
    // passed a NaN or +inf), with the lane's own draws, since the other lanes need not be here.
    // One call site for both keeps one copy of the draws in the kernel.
    const long long r0 = row0 + 16 * w + l / 4;
    const long long c0 = col0 + 2 * (l % 4);
    const uint32_t keep =
        !dropout_enabled(unit) ? ~0u
        : drop_all             ? 0u
                   : fragment_keep_bits<kSteps>(gemm::sm90::MaskKey::from(unit, !relu), unit, r0,
                                                c0);
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            // The halves that take the mask: all (identity), or those whose Y is NaN (ReLU);
            // keep's bits of register j are 8 ks + 4 h' + 2 h.
            a[ks][j] = apply_keep_halves<T>(
                a[ks][j], relu ? (nan_bits >> (8 * ks + 2 * j)) & 3u : 3u,
                keep >> (8 * ks + 4 * (j >> 1) + 2 * (j & 1)), unit.scale);
        }
}

// Writes this warpgroup's A fragments of a k-block (load_dz_fragments' dZ / scale, for 64 rows
// from row0 and 64 columns from col0) to dz [m, n], row-major: register j = 2 h' + h of step
// ks holds row r0 + 8 h, columns c0 + 16 ks + 8 h' and the next, one 4-byte store (n is a
// multiple of 8 on this path, so a pair is in bounds or out of them whole). Rows past m and
// columns past n (the boxes' zero fill) are not written.
template <typename T, int kSteps>
__device__ __forceinline__ void store_dz_fragments(const uint32_t (&a)[kSteps][4],
                                                   T* __restrict__ dz, long long m, long long n,
                                                   long long row0, long long col0) {
    const int t = (int)(threadIdx.x % gemm::sm90::kWarpgroupThreads);
    const int w = t / 32, l = t % 32;
    const long long r0 = row0 + 16 * w + l / 4;
    const long long c0 = col0 + 2 * (l % 4);
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long r = r0 + 8 * (j & 1), c = c0 + 16 * ks + 8 * (j >> 1);
            if (r < m && c < n) *reinterpret_cast<uint32_t*>(dz + r * n + c) = a[ks][j];
        }
}

// Column `col` (0 .. 63) of the 64 x 64 block, summed over its rows in order.
template <typename T>
__device__ __forceinline__ float column_sum(const unsigned char* block, int col) {
    float sum = 0.0f;
#pragma unroll 8
    for (int row = 0; row < 64; ++row) {
        const T* p = reinterpret_cast<const T*>(block + row * 128 +
                                                (((col / 8) ^ (row % 8)) * 16)) +
                     col % 8;
        sum += Element<T>::to_float(*p);
    }
    return sum;
}

// Which products a launch computes: dX, dW (and db), or both (BackwardKernel::HopperOneLaunch).
enum Products : int { kDx = 1, kDw = 2, kBoth = kDx | kDw };

// The operands one product reads by TMA: dY (dZ's source), Y (read for ReLU only) and B (W for
// dX, X for dW).
struct ProductMaps {
    const CUtensorMap* dy;
    const CUtensorMap* y;
    const CUtensorMap* b;
};

// The tiles of a launch in the order its persistent blocks (or split-K clusters) take them:
// one product's tiles (dX [m, k] or dW [n, k], in the grouped order), or with kBoth dX's and
// dW's as one sequence, the product with the longer reduction (dW's m when m > n, else dX's
// n) first, so that the shorter tiles fill the last wave. Block b takes tiles b, b + blocks, ...
// of the sequence (PersistentTileScheduler).
template <int kProducts, int kSplits>
struct BackwardTiles {
    static_assert(kProducts == kDx || kProducts == kDw || (kProducts == kBoth && kSplits == 1),
                  "one product, or both unsplit");
    gemm::PersistentTileScheduler<kGroupRows, kSplits> dx;
    gemm::PersistentTileScheduler<kGroupRows, kSplits> dw;
    bool dw_first;

    __device__ __forceinline__ BackwardTiles(long long m, long long n, long long k, int block_m,
                                             int block_n)
        : dx(m, k, block_m, block_n), dw(n, k, block_m, block_n), dw_first(m > n) {}

    __device__ __forceinline__ int tiles() const {
        return kProducts == kDx ? dx.tiles() : kProducts == kDw ? dw.tiles()
                                                                : dx.tiles() + dw.tiles();
    }
    __device__ __forceinline__ int first() const { return dx.first(); }
    __device__ __forceinline__ int next(int linear) const { return dx.next(linear); }
    // Whether tile `linear` of the sequence is dW's.
    __device__ __forceinline__ bool weight_grad(int linear) const {
        if constexpr (kProducts != kBoth) return kProducts == kDw;
        return dw_first ? linear < dw.tiles() : linear >= dx.tiles();
    }
    // Tile `linear` of the sequence within its product.
    __device__ __forceinline__ gemm::TileCoordOf<int> tile(int linear) const {
        if constexpr (kProducts == kDx) return dx.tile(linear);
        if constexpr (kProducts == kDw) return dw.tile(linear);
        if (weight_grad(linear)) return dw.tile(dw_first ? linear : linear - dx.tiles());
        return dx.tile(dw_first ? linear - dw.tiles() : linear);
    }
};

// The TMA-store kernels' staging areas after main loop Loop's ring: one per consumer warpgroup,
// 64 rows of kPassCols columns (128-byte boxes), 1024-byte aligned as the 128-byte swizzle needs,
// the ring's barriers in the first bytes of the 1024 before them. A warpgroup's 64 x kWgN block
// of the tile goes through it in passes of kPassCols columns (stage_block): at most 128, so that
// the 128 x 256 tile keeps its 3 stages (two 64 x 256 areas would leave it 2).
template <class Loop>
struct Staging {
    static constexpr int kPassCols = Loop::kWgN < 128 ? Loop::kWgN : 128;
    static_assert(sizeof(typename Loop::Barriers) <= 1024, "the ring's barriers fit before it");
    static constexpr uint32_t kOffset = (uint32_t)Loop::kStages * Loop::kStageBytes + 1024u;
    static constexpr uint32_t kBytesPerWarpgroup = 128u * kPassCols;
    static constexpr int kSmemBytes =
        (int)(1024u + kOffset + gemm::sm90::kConsumerWarpgroups * kBytesPerWarpgroup);
};

// The products of one launch: OUT[rows, k] = A · B with A from dY (dZ formed in registers for dX,
// in the stage for dW: by the consumers, or with a DwLoop that has transform threads by the
// producer warpgroup's other warps), as described at the top; kProducts says which (kBoth:
// dX's and dW's tiles in one persistent sequence, BackwardTiles, on one ring: DxLoop and DwLoop
// then lay out their stages alike). Split: gemm::sm90::NoSplit or a ClusterSplitK (with the db
// column sums as its extra float for dW); one product only. kTmaStore (one unsplit product):
// the product's gradient is staged in shared memory, in the two areas Staging<Ring> places after
// the ring, and stored by TMA through `map_out` (gemm/sm90/epilogue.cuh,
// stage_gradient_fragment); map_out is null otherwise. db and dZ are stored directly either way.
template <typename T, class DxLoop, class DwLoop, class Split, int kProducts,
          bool kTmaStore = false>
__device__ __forceinline__ void backward_sm90(const ProductMaps& dx_maps,
                                              const ProductMaps& dw_maps,
                                              const CUtensorMap* map_out, T* __restrict__ dx,
                                              T* __restrict__ dw, T* __restrict__ db,
                                              T* __restrict__ dz, long long m, long long n,
                                              long long k, int relu, int accumulate,
                                              MaskParams mp) {
    constexpr bool kHasDx = (kProducts & kDx) != 0;
    constexpr bool kHasDw = (kProducts & kDw) != 0;
    constexpr bool kSplitK = Split::kSplits > 1;
    // The main loop whose ring the launch sets up (the products' agree where both run).
    using Ring = std::conditional_t<kHasDx, DxLoop, DwLoop>;
    constexpr bool kTransformWarps = kHasDw && DwLoop::kTransformThreads > 0;
    static_assert(!kTransformWarps || (kProducts == kDw && DwLoop::kTransformThreads ==
                                                               kTransformThreads),
                  "transform warps form dW's dZᵀ, warps 1-3 of the producer warpgroup, in "
                  "launches of dW alone");
    static_assert(kProducts != kBoth ||
                      (std::is_same<typename DxLoop::Barriers, typename DwLoop::Barriers>::value &&
                       std::is_same<typename DxLoop::State, typename DwLoop::State>::value &&
                       DxLoop::kStageBytes == DwLoop::kStageBytes &&
                       DxLoop::kOffsetSide == DwLoop::kOffsetSide &&
                       DxLoop::kOffsetB == DwLoop::kOffsetB &&
                       DxLoop::kSmemBytes == DwLoop::kSmemBytes &&
                       DxLoop::kAccumulators == DwLoop::kAccumulators &&
                       DxLoop::kEmptyArrivals == DwLoop::kEmptyArrivals &&
                       DxLoop::kBlockM == DwLoop::kBlockM && DxLoop::kBlockN == DwLoop::kBlockN &&
                       DxLoop::kBlockK == DwLoop::kBlockK &&
                       DxLoop::kConsumersPerTile == DwLoop::kConsumersPerTile &&
                       DxLoop::kWgRows == DwLoop::kWgRows && DxLoop::kWgN == DwLoop::kWgN &&
                       DwLoop::kWgRowBlocks == 1 && DxLoop::kMulticast == 1 &&
                       DwLoop::kMulticast == 1),
                  "both products of one launch share the ring: the same stages, barriers, "
                  "tile, consumer parts and accumulators, and no multicast (the launch's "
                  "producer loads each tile with load_tile, without produce's cluster rows "
                  "and drain)");
    static_assert(!kTmaStore || (!kSplitK && kProducts != kBoth),
                  "the TMA-store kernels run one unsplit product");
    using gemm::sm90::kSplitOffset;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, smem);
    const typename Ring::Storage storage = Ring::storage(smem);
    // The same pointers, in the type of dW's main loop.
    const typename DwLoop::Storage dw_storage = DwLoop::storage(smem);
    const int warpgroup = (int)(threadIdx.x / gemm::sm90::kWarpgroupThreads);
    if constexpr (kSplitK) {
        if (threadIdx.x == 0) {
            Split::init(Split::storage(smem + kSplitOffset<Ring>));
            storage.barriers->init(Ring::kEmptyArrivals);
        }
        // Every block's barriers initialised before any block arrives on another's.
        ptx::cluster_sync();
    } else {
        if (threadIdx.x == 0) storage.barriers->init(Ring::kEmptyArrivals);
        __syncthreads();
    }

    const BackwardTiles<kProducts, Split::kSplits> tiles(m, n, k, Ring::kBlockM, Ring::kBlockN);
    // This block's k-blocks of each product's reduction (n for dX, m for dW): all of them, or
    // its rank's share.
    const gemm::sm90::KShare dx_share =
        Split::share((int)((n + Ring::kBlockK - 1) / Ring::kBlockK));
    const gemm::sm90::KShare dw_share =
        Split::share((int)((m + Ring::kBlockK - 1) / Ring::kBlockK));
    typename Ring::State state;

    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<kTransformWarps ? kTransformProducerRegisters
                                            : gemm::sm90::kProducerRegisters>();
        if (threadIdx.x == 0) {
            if constexpr (kProducts == kBoth) {
                // Each tile's k-blocks from its own product's operands, into the one ring.
                const ProductMaps* const both[2] = {&dx_maps, &dw_maps};
                for (const ProductMaps* maps : both) {
                    ptx::prefetch_tensormap(maps->dy);
                    ptx::prefetch_tensormap(maps->b);
                    if (relu) ptx::prefetch_tensormap(maps->y);
                }
                typename Ring::State loads;
                for (int linear = tiles.first(); linear < tiles.tiles();
                     linear = tiles.next(linear)) {
                    const gemm::TileCoordOf<int> tile = tiles.tile(linear);
                    const int a0 = tile.tm * Ring::kBlockM, b0 = tile.tn * Ring::kBlockN;
                    if (tiles.weight_grad(linear))
                        DwLoop::load_tile(dw_maps.dy, dw_maps.b, relu ? dw_maps.y : nullptr,
                                          dw_storage, loads, a0, b0, 0, dw_share.count);
                    else
                        DxLoop::load_tile(dx_maps.dy, dx_maps.b, relu ? dx_maps.y : nullptr,
                                          storage, loads, a0, b0, 0, dx_share.count);
                }
            } else {
                const ProductMaps& maps = kHasDx ? dx_maps : dw_maps;
                const gemm::sm90::KShare& share = kHasDx ? dx_share : dw_share;
                Ring::produce(tiles, maps.dy, maps.b, relu ? maps.y : nullptr, storage,
                              share.first, share.count);
            }
        }
        if constexpr (kTransformWarps) {
            if (threadIdx.x < 32) return;
            MaskParams unit = resolve_seed(mp);
            unit.scale = 1.0f;
            const bool is_relu = relu != 0;
            const bool form = is_relu || dropout_enabled(unit);
            DwLoop::transform(
                tiles, storage, dw_share.count, (int)threadIdx.x - 32,
                [&](const gemm::TileCoordOf<int>& tile, int kb, unsigned char* stage,
                    int thread) {
                    // The stage's A boxes: 64 rows (m) of the k-block, the tile's BM columns
                    // (n) of dY; with neither ReLU nor dropout dZ is dY.
                    if (form)
                        form_dz_chunks<T, true>(stage, stage + DwLoop::kOffsetSide,
                                          (long long)(dw_share.first + kb) * DwLoop::kBlockK,
                                          (long long)tile.tm * DwLoop::kBlockM, n, is_relu,
                                          unit, thread, kTransformThreads,
                                          DwLoop::kBlockM / 64 * 512);
                });
        }
        return;
    }

    ptx::setmaxnreg_inc<kTransformWarps ? kTransformConsumerRegisters
                                        : gemm::sm90::kConsumerRegisters>();
    const int consumer = warpgroup - 1;
    const bool is_relu = relu != 0;
    // The operand is dZ / scale: form_dz4 with a unit scale; the scale goes on the accumulators.
    MaskParams unit = resolve_seed(mp);
    const float scale = unit.scale;
    unit.scale = 1.0f;
    const bool transform = is_relu || dropout_enabled(unit);
    const int t = (int)(threadIdx.x % gemm::sm90::kWarpgroupThreads);
    static_assert(Ring::kWgRowBlocks == 1, "each consumer warpgroup takes one 64-row block");
    const int wg_row = (consumer % Ring::kWgRows) * 64;
    const int wg_col = (consumer / Ring::kWgRows) * Ring::kWgN;
    float acc[Ring::kAccumulators];
    int done = 0;  // tiles this block has finished
    for (int linear = tiles.first(); linear < tiles.tiles(); linear = tiles.next(linear), ++done) {
        const bool weight_grad = tiles.weight_grad(linear);
        const gemm::TileCoordOf<int> tile = tiles.tile(linear);
        // In int, as the producer's TMA coordinates (rows < 2^31, so a tile's rows start at
        // most 2^31 - 128): as a 64-bit sum ptxas kept wg_row's sign extension in local memory in
        // the split-K transform kernels.
        const long long tile_row = (long long)(tile.tm * Ring::kBlockM + wg_row);
        const bool do_db = weight_grad && db != nullptr && tile.tn == 0 && t < 64;
        float db_sum = 0.0f;
        if constexpr (kHasDx) {
            if (!weight_grad) {
                if (transform) {
                    // dX: dZ formed in registers from this consumer's 64 rows of the K-major dY
                    // box and multiplied from there (no write-back, fence or barrier).
                    DxLoop::mma_tile_rs(
                        acc, storage, state, dx_share.count, consumer,
                        [&](int kb, unsigned char* stage, typename DxLoop::FragmentsA& a) {
                            const unsigned char* block = stage + 128 * wg_row;
                            const long long col0 =
                                (long long)(dx_share.first + kb) * DxLoop::kBlockK;
                            load_dz_fragments<T>(block, block + DxLoop::kOffsetSide, tile_row,
                                                 col0, is_relu, unit, a);
                            // The tiles of dX's first column tile see every element of dY once
                            // between them: they write dZ / scale out for the dW launch.
                            if (dz != nullptr && tile.tn == 0)
                                store_dz_fragments<T>(a, dz, m, n, tile_row, col0);
                        });
                } else {
                    // Identity with p = 0: dZ is dY, multiplied straight from the stage.
                    DxLoop::mma_tile(acc, storage, state, dx_share.count, consumer, [](int) {});
                }
            }
        }
        if constexpr (kHasDw) {
            if (weight_grad) {
                DwLoop::mma_tile(
                    acc, dw_storage, state, dw_share.count, consumer,
                    [&](int kb, unsigned char* stage) {
                        // dW: this consumer's 64-column box of the MN-major dY (dZᵀ), all 64
                        // rows of the k-block, 128 wg_row bytes into the stage.
                        // With transform warps the stage arrives formed.
                        unsigned char* block = stage + 128 * wg_row;
                        if (!kTransformWarps && transform) {
                            form_dz_chunks<T>(block, block + DwLoop::kOffsetSide,
                                              (long long)(dw_share.first + kb) * DwLoop::kBlockK,
                                              tile_row, n, is_relu, unit, t,
                                              gemm::sm90::kWarpgroupThreads, 512);
                            ptx::fence_proxy_async_shared();
                            if (consumer == 0)
                                ptx::warpgroup_barrier<1>();
                            else
                                ptx::warpgroup_barrier<2>();
                        }
                        // db's sums read the formed block here, before the wgmmas are issued,
                        // though they could run beside them: right after the barrier they are
                        // what makes the CPU harness (whose wgmmas rendezvous the warpgroup) see
                        // the barrier go missing (docs/HARNESS.md).
                        if (do_db) db_sum += column_sum<T>(block, t);
                    },
                    [](int) {});
            }
        }
        const long long rows = weight_grad ? n : m;
        T* const out = weight_grad ? dw : dx;
        const auto store = [&](const float (&result)[Ring::kAccumulators], float db_total) {
            const long long tile_col = (long long)tile.tn * Ring::kBlockN + wg_col;
            if constexpr (kTmaStore) {
                gemm::sm90::stage_gradient_fragment<T, Ring::kWgN, Staging<Ring>::kPassCols>(
                    result, out, rows, k, tile_row, tile_col, scale, accumulate != 0,
                    storage.stages + Staging<Ring>::kOffset +
                        consumer * Staging<Ring>::kBytesPerWarpgroup,
                    map_out, consumer);
            } else {
                gemm::sm90::store_gradient_fragment<T, Ring::kWgN>(
                    result, out, rows, k, tile_row, tile_col, scale, accumulate != 0);
            }
            if (do_db && tile_row + t < n)
                write_gradient(db + tile_row + t, db_total, scale, accumulate != 0);
        };
        // Split-K: only rank 0 stores, the cluster's sums (and db's).
        Split::finish_tile(smem + kSplitOffset<Ring>, acc, db_sum, consumer, done, store);
    }
    Split::finish(smem + kSplitOffset<Ring>, consumer, done);
    if constexpr (kTmaStore) gemm::sm90::finish_tma_stores();
}

// Tile BM x BN (BM = 128: each consumer warpgroup owns 64 rows, so it forms the dZ it reads,
// unless transform warps form the stage for it), pipeline depth STAGES, SPLITS blocks per tile
// (split-K clusters) or 1. A stage holds dY's box(es), Y's, and B's.
template <int BM, int BN, int STAGES, int SPLITS = 1>
struct WgConfig {
    static_assert(BM == 128, "each consumer warpgroup multiplies its own 64 rows of dZ");
    template <typename T>
    using DxMainloop = gemm::sm90::Mainloop<T, BM, BN, STAGES, gemm::sm90::Major::K,
                                            gemm::sm90::Major::MN, true>;
    template <typename T>
    using DwMainloop = gemm::sm90::Mainloop<T, BM, BN, STAGES, gemm::sm90::Major::MN,
                                            gemm::sm90::Major::MN, true>;
    // dW with transform warps: the same stages, and a `formed` barrier per stage.
    template <typename T>
    using DwTransformMainloop =
        gemm::sm90::Mainloop<T, BM, BN, STAGES, gemm::sm90::Major::MN, gemm::sm90::Major::MN,
                             true, 1, gemm::sm90::kConsumerWarpgroups, kTransformThreads>;
    static constexpr int kAccumulators = DxMainloop<__half>::kAccumulators;
    // dW's partial sums carry db's column sums too.
    using DxSplit = std::conditional_t<SPLITS == 1, gemm::sm90::NoSplit,
                                       gemm::sm90::ClusterSplitK<kAccumulators, SPLITS>>;
    using DwSplit = std::conditional_t<SPLITS == 1, gemm::sm90::NoSplit,
                                       gemm::sm90::ClusterSplitK<kAccumulators, SPLITS, true>>;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = BN;
    static constexpr int kSplits = SPLITS;
    static constexpr int kClusterBlocks = SPLITS;
    static constexpr int kThreads = gemm::sm90::kThreads;
    static_assert(DwMainloop<__half>::kSmemBytes == DxMainloop<__half>::kSmemBytes,
                  "one main-loop size per config");
    static_assert(DwTransformMainloop<__half>::kSmemBytes > DwMainloop<__half>::kSmemBytes,
                  "the transform kernel's main loop is the largest (its `formed` barriers)");
    // One shared size for every kernel of the config: the transform kernel's, whose main loop
    // is the largest and, split, whose split area is dW's (the larger).
    static constexpr int kSmemBytes =
        SPLITS == 1
            ? DwTransformMainloop<__half>::kSmemBytes
            : (int)(gemm::sm90::kSplitOffset<DwTransformMainloop<__half>> + DwSplit::kBytes);
    static_assert(kSmemBytes <= 227 * 1024, "a Hopper block has at most 227 KiB of shared memory");
};

// A config's kernels with the TMA-store epilogue (`_tmastore` entry points, dX and dW with the
// consumers forming dZᵀ): the same tile and ring, the two staging areas after it.
template <class Config>
struct TmaStored : Config {
    static_assert(Config::kSplits == 1, "the split-K epilogue stores directly");
    static constexpr bool kTmaStore = true;
    static constexpr int kSmemBytes =
        Staging<typename Config::template DxMainloop<__half>>::kSmemBytes;
    static_assert(Staging<typename Config::template DwMainloop<__half>>::kSmemBytes == kSmemBytes,
                  "dX's and dW's rings are alike");
    static_assert(kSmemBytes <= 227 * 1024, "a Hopper block has at most 227 KiB of shared memory");
};

// Two warpgroups of 64 x 128 (wgmma m64n128k16), 4 stages of 48 KiB (dY, Y, B 16 KiB each).
struct Wg128x128 : WgConfig<128, 128, 4> {};
// Two warpgroups of 64 x 256 (wgmma m64n256k16), 3 stages of 64 KiB (B 32 KiB): half the loads of
// dY and Y per output of Wg128x128.
struct Wg128x256 : WgConfig<128, 256, 3> {};
// The unsplit configs with the TMA-store epilogue (BackwardKernel::HopperTmaStore; issue 11's
// question whether the backward's gradients, like the forward's Y in the sweep, should drain by
// TMA while the next tile's main loop runs): the rings and two 16 KiB staging areas fit in
// 227 KiB; Wg128x256's warpgroups stage their 64 x 256 blocks in two passes of 128 columns.
struct Wg128x128TmaStore : TmaStored<Wg128x128> {};
struct Wg128x256TmaStore : TmaStored<Wg128x256> {};
// Split-K for narrow products (gemm/sm90/split_k.cuh): clusters of 2, 4 or 8 blocks per
// 128 x 128 tile; the 64 KiB of partial sums leave room for 3 stages.
struct Wg128x128Split2 : WgConfig<128, 128, 3, 2> {};
struct Wg128x128Split4 : WgConfig<128, 128, 3, 4> {};
struct Wg128x128Split8 : WgConfig<128, 128, 3, 8> {};

}  // namespace backward
}  // namespace fusedrop

// CLUSTER: nothing, or the split-K configs' __cluster_dims__ (a plain launch with gridDim.x a
// multiple of kSplits then runs the kernel in clusters).
// A dW entry point ENTRY on main loop MAINLOOP (DwMainloop, or DwTransformMainloop: transform
// warps).
#define FUSEDROP_BACKWARD_SM90_DW(CONFIG, ENTRY, MAINLOOP, T, CLUSTER)                           \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        CLUSTER ENTRY(                                                                           \
            const __grid_constant__ CUtensorMap map_dy, const __grid_constant__ CUtensorMap map_y, \
            const __grid_constant__ CUtensorMap map_x, T* __restrict__ dw, T* __restrict__ db,   \
            long long m, long long n, long long k, int relu, int accumulate,                     \
            fusedrop::MaskParams mp) {                                                           \
        const fusedrop::backward::ProductMaps maps{&map_dy, &map_y, &map_x};                     \
        fusedrop::backward::backward_sm90<T, fusedrop::backward::CONFIG::DxMainloop<T>,          \
                                          fusedrop::backward::CONFIG::MAINLOOP<T>,               \
                                          fusedrop::backward::CONFIG::DwSplit,                   \
                                          fusedrop::backward::kDw>(                              \
            maps, maps, nullptr, nullptr, dw, db, nullptr, m, n, k, relu, accumulate, mp);       \
    }

#define FUSEDROP_BACKWARD_SM90(CONFIG, NAME, SUFFIX, T, CLUSTER)                                 \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        CLUSTER fusedrop_backward_dx_##NAME##_##SUFFIX(                                          \
            const __grid_constant__ CUtensorMap map_dy, const __grid_constant__ CUtensorMap map_y, \
            const __grid_constant__ CUtensorMap map_w, T* __restrict__ dx, T* __restrict__ dz,   \
            long long m, long long n, long long k, int relu, int accumulate,                     \
            fusedrop::MaskParams mp) {                                                           \
        const fusedrop::backward::ProductMaps maps{&map_dy, &map_y, &map_w};                     \
        fusedrop::backward::backward_sm90<T, fusedrop::backward::CONFIG::DxMainloop<T>,          \
                                          fusedrop::backward::CONFIG::DwMainloop<T>,             \
                                          fusedrop::backward::CONFIG::DxSplit,                   \
                                          fusedrop::backward::kDx>(                              \
            maps, maps, nullptr, dx, nullptr, nullptr, dz, m, n, k, relu, accumulate, mp);       \
    }                                                                                            \
    FUSEDROP_BACKWARD_SM90_DW(CONFIG, fusedrop_backward_dw_##NAME##_##SUFFIX, DwMainloop, T,     \
                              CLUSTER)                                                           \
    FUSEDROP_BACKWARD_SM90_DW(CONFIG, fusedrop_backward_dw_##NAME##_transform_##SUFFIX,          \
                              DwTransformMainloop, T, CLUSTER)

// dX, dW and db in one launch (BackwardKernel::HopperOneLaunch; unsplit configs only): each
// product's three maps as its own kernel takes them (dX's dY and Y in boxes of 64 x kBlockM,
// dW's in boxes of 64 x 64), then dx, dw, db (db may be null; dx and dw may not).
#define FUSEDROP_BACKWARD_SM90_ONE_LAUNCH(CONFIG, NAME, SUFFIX, T)                               \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dxdw_##NAME##_##SUFFIX(                                                \
            const __grid_constant__ CUtensorMap map_dy_dx,                                       \
            const __grid_constant__ CUtensorMap map_y_dx,                                        \
            const __grid_constant__ CUtensorMap map_w,                                           \
            const __grid_constant__ CUtensorMap map_dy_dw,                                       \
            const __grid_constant__ CUtensorMap map_y_dw,                                        \
            const __grid_constant__ CUtensorMap map_x,                                           \
            T* __restrict__ dx, T* __restrict__ dw, T* __restrict__ db, long long m, long long n, \
            long long k, int relu, int accumulate, fusedrop::MaskParams mp) {                    \
        const fusedrop::backward::ProductMaps dx_maps{&map_dy_dx, &map_y_dx, &map_w};            \
        const fusedrop::backward::ProductMaps dw_maps{&map_dy_dw, &map_y_dw, &map_x};            \
        fusedrop::backward::backward_sm90<T, fusedrop::backward::CONFIG::DxMainloop<T>,          \
                                          fusedrop::backward::CONFIG::DwMainloop<T>,             \
                                          fusedrop::gemm::sm90::NoSplit,                         \
                                          fusedrop::backward::kBoth>(                            \
            dx_maps, dw_maps, nullptr, dx, dw, db, nullptr, m, n, k, relu, accumulate, mp);      \
    }

// dX and dW with the TMA-store epilogue (BackwardKernel::HopperTmaStore; unsplit configs): the
// plain kernels' parameters with the gradient's tensor map (dX [m, k] or dW [n, k], 64 x 64
// boxes, 128-byte swizzle: k % 8 == 0 and the gradient 16-byte aligned) after the operands'.
#define FUSEDROP_BACKWARD_SM90_TMA_STORE(CONFIG, NAME, SUFFIX, T)                                \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dx_##NAME##_##SUFFIX(                                                  \
            const __grid_constant__ CUtensorMap map_dy, const __grid_constant__ CUtensorMap map_y, \
            const __grid_constant__ CUtensorMap map_w, const __grid_constant__ CUtensorMap map_dx, \
            T* __restrict__ dx, T* __restrict__ dz, long long m, long long n, long long k,       \
            int relu, int accumulate, fusedrop::MaskParams mp) {                                 \
        const fusedrop::backward::ProductMaps maps{&map_dy, &map_y, &map_w};                     \
        fusedrop::backward::backward_sm90<T, fusedrop::backward::CONFIG::DxMainloop<T>,          \
                                          fusedrop::backward::CONFIG::DwMainloop<T>,             \
                                          fusedrop::gemm::sm90::NoSplit,                         \
                                          fusedrop::backward::kDx, true>(                        \
            maps, maps, &map_dx, dx, nullptr, nullptr, dz, m, n, k, relu, accumulate, mp);       \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(fusedrop::backward::CONFIG::kThreads, 1)        \
        fusedrop_backward_dw_##NAME##_##SUFFIX(                                                  \
            const __grid_constant__ CUtensorMap map_dy, const __grid_constant__ CUtensorMap map_y, \
            const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_dw, \
            T* __restrict__ dw, T* __restrict__ db, long long m, long long n, long long k,       \
            int relu, int accumulate, fusedrop::MaskParams mp) {                                 \
        const fusedrop::backward::ProductMaps maps{&map_dy, &map_y, &map_x};                     \
        fusedrop::backward::backward_sm90<T, fusedrop::backward::CONFIG::DxMainloop<T>,          \
                                          fusedrop::backward::CONFIG::DwMainloop<T>,             \
                                          fusedrop::gemm::sm90::NoSplit,                         \
                                          fusedrop::backward::kDw, true>(                        \
            maps, maps, &map_dw, nullptr, dw, db, nullptr, m, n, k, relu, accumulate, mp);       \
    }

#define FUSEDROP_BACKWARD_SM90_TYPES(CONFIG, NAME)                  \
    FUSEDROP_BACKWARD_SM90(CONFIG, NAME, f16, __half, )             \
    FUSEDROP_BACKWARD_SM90(CONFIG, NAME, bf16, __nv_bfloat16, )     \
    FUSEDROP_BACKWARD_SM90_ONE_LAUNCH(CONFIG, NAME, f16, __half)    \
    FUSEDROP_BACKWARD_SM90_ONE_LAUNCH(CONFIG, NAME, bf16, __nv_bfloat16)

#define FUSEDROP_BACKWARD_SM90_SPLIT_TYPES(CONFIG, NAME)                                 \
    FUSEDROP_BACKWARD_SM90(CONFIG, NAME, f16, __half,                                    \
                           __cluster_dims__(fusedrop::backward::CONFIG::kSplits, 1, 1)) \
    FUSEDROP_BACKWARD_SM90(CONFIG, NAME, bf16, __nv_bfloat16,                            \
                           __cluster_dims__(fusedrop::backward::CONFIG::kSplits, 1, 1))

FUSEDROP_BACKWARD_SM90_TYPES(Wg128x128, wg128x128)
FUSEDROP_BACKWARD_SM90_TYPES(Wg128x256, wg128x256)
FUSEDROP_BACKWARD_SM90_TMA_STORE(Wg128x128TmaStore, wg128x128_tmastore, f16, __half)
FUSEDROP_BACKWARD_SM90_TMA_STORE(Wg128x128TmaStore, wg128x128_tmastore, bf16, __nv_bfloat16)
FUSEDROP_BACKWARD_SM90_TMA_STORE(Wg128x256TmaStore, wg128x256_tmastore, f16, __half)
FUSEDROP_BACKWARD_SM90_TMA_STORE(Wg128x256TmaStore, wg128x256_tmastore, bf16, __nv_bfloat16)
FUSEDROP_BACKWARD_SM90_SPLIT_TYPES(Wg128x128Split2, wg128x128s2)
FUSEDROP_BACKWARD_SM90_SPLIT_TYPES(Wg128x128Split4, wg128x128s4)
FUSEDROP_BACKWARD_SM90_SPLIT_TYPES(Wg128x128Split8, wg128x128s8)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches<fusedrop::backward::Wg128x128>(
                  fusedrop::launch::backward_wg128x128),
              "backward Wg128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::backward::Wg128x256>(
                  fusedrop::launch::backward_wg128x256),
              "backward Wg128x256 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_stores<fusedrop::backward::Wg128x128TmaStore>(
                  fusedrop::launch::backward_wg128x128_tmastore),
              "backward Wg128x128TmaStore disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_stores<fusedrop::backward::Wg128x256TmaStore>(
                  fusedrop::launch::backward_wg128x256_tmastore),
              "backward Wg128x256TmaStore disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::backward::Wg128x128Split2>(
                  fusedrop::launch::backward_wg128x128s2),
              "backward Wg128x128Split2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::backward::Wg128x128Split4>(
                  fusedrop::launch::backward_wg128x128s4),
              "backward Wg128x128Split4 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches_clustered<fusedrop::backward::Wg128x128Split8>(
                  fusedrop::launch::backward_wg128x128s8),
              "backward Wg128x128Split8 disagrees with src/cuda/launch_table.rs");
