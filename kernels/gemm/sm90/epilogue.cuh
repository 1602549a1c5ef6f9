// Hopper epilogues, from a consumer warpgroup's wgmma accumulator fragment. The forward's: bias,
// activation, the Philox dropout mask, the scale, conversion and the store, straight to global
// memory (store_fragment) or through a shared-memory staging area and TMA stores
// (stage_fragment). The backward's: the dropout scale, accumulation and the store.
//
// Fragment of m64nN (ptx.cuh, wgmma_ss): thread t of the warpgroup (warp w = t / 32, lane l)
// holds, for each 8-column group j = 0 .. N/8 - 1, the pairs
//   acc[4j + 2h], acc[4j + 2h + 1] = C[16w + l/4 + 8h][8j + 2(l % 4) + {0, 1}],  h = 0, 1.
// So per group a thread owns two pairs of adjacent columns, in rows r0 and r0 + 8.
//
// The mask of a group is 4 keep bits (bit 2h + e for pair h, column e). They are drawn while the
// tensor cores run the main loop (FragmentMask::draw_next from Mainloop::mma_tile's `between`
// hook, ceil(groups / k-blocks) groups per k-block, counting the groups of every row block of the
// warpgroup's tile, so all before the epilogue). The bits go
// through a shift register of kGroups / 8 words, so every register index is a compile-time
// constant (a run-time index into a register array would put it in local memory).
//
// Lanes 2i and 2i + 1 hold columns c, c + 1 and c + 2, c + 3 (c = 8j + 4 (i % 2)) of rows r0 and
// r0 + 8. When those four columns are one Philox call's words in every row (the call's group
// q = index >> 2 starts at c: n_global and col_offset multiples of 4), the pair draws one call
// per row instead of each lane drawing both: the even lane row r0's, the odd lane row r0 + 8's,
// and they trade keep bits with one shuffle (paired draws: half the Philox work per lane).
#pragma once

#include <stdint.h>
#include <string.h>

#include "../../element.cuh"
#include "../../mask.cuh"
#include "../../ptx.cuh"
#include "../epilogue.cuh"

namespace fusedrop {
namespace gemm {
namespace sm90 {

// What drawing a mask bit needs, in as few registers as possible (the main loop's 128
// accumulators leave little room): the resolved (seed, subsequence) as Philox key and counter
// words, and the keep threshold, which fits 32 bits whenever words are drawn at all (0 < p < 1).
struct MaskKey {
    uint32_t seed_lo, seed_hi, subsequence_lo, subsequence_hi;
    uint32_t threshold;
    // Paired draws (above): every lane pair's four columns are one Philox call's words. The same
    // for every thread of the launch, so the shuffle is never divergent.
    bool paired;

    // `allow_pairs` false keeps one lane's draws independent of its neighbour's (a sweep variant
    // measures what pairing buys).
    __device__ __forceinline__ static MaskKey from(const MaskParams& resolved, bool allow_pairs) {
        MaskKey key;
        key.seed_lo = (uint32_t)resolved.seed;
        key.seed_hi = (uint32_t)(resolved.seed >> 32);
        key.subsequence_lo = (uint32_t)resolved.subsequence;
        key.subsequence_hi = (uint32_t)(resolved.subsequence >> 32);
        key.threshold = (uint32_t)resolved.threshold;
        key.paired = allow_pairs && resolved.n_global % 4 == 0 && resolved.col_offset % 4 == 0;
        return key;
    }

    // mask_words(mp, q) of mask.cuh.
    __device__ __forceinline__ Philox4 words(uint64_t q) const {
        const Philox4 counter = {
            {(uint32_t)q, (uint32_t)(q >> 32), subsequence_lo, subsequence_hi}};
        return philox4x32_10(counter, seed_lo, seed_hi);
    }

    // Keep bits of the linear indices i (bit 0) and i + 1 (bit 1): one Philox call unless i is
    // word 3 of its call.
    __device__ __forceinline__ uint32_t keep_pair(uint64_t i) const {
        const uint32_t s = (uint32_t)(i & 3);
        const Philox4 first = words(i >> 2);
        const uint32_t w0 = philox_word(first, s);
        const uint32_t w1 = s == 3 ? words((i >> 2) + 1).w[0] : philox_word(first, s + 1);
        return (w0 >= threshold ? 1u : 0u) | (w1 >= threshold ? 2u : 0u);
    }

    // Keep bits of the linear indices 4q .. 4q + 3 (bit e for 4q + e).
    __device__ __forceinline__ uint32_t keep_quad(uint64_t q) const {
        const Philox4 w = words(q);
        return (w.w[0] >= threshold ? 1u : 0u) | (w.w[1] >= threshold ? 2u : 0u) |
               (w.w[2] >= threshold ? 4u : 0u) | (w.w[3] >= threshold ? 8u : 0u);
    }

    // Keep bits of this lane's pairs in an accumulator-layout fragment group: linear indices
    // i0, i0 + 1 (bits 0, 1) of row r0 and i8, i8 + 1 (bits 2, 3) of row r0 + 8. Paired (above)
    // or per lane; every lane of the warp calls it alike (paired draws shuffle).
    __device__ __forceinline__ uint32_t keep_rows(uint64_t i0, uint64_t i8) const {
        if (!paired) return keep_pair(i0) | (keep_pair(i8) << 2);
        // Both lanes' indices in a row lie in the same call (the odd lane's is 2 past the even
        // lane's), so each names it from the row it draws.
        const bool odd = (threadIdx.x & 1u) != 0;
        const uint32_t own = keep_quad((odd ? i8 : i0) >> 2);
        const uint32_t other = ptx::shfl_xor(own, 1);
        const uint32_t row0 = odd ? other : own;
        const uint32_t row8 = odd ? own : other;
        const int column = odd ? 2 : 0;  // the lane's first column within the call
        return ((row0 >> column) & 3u) | (((row8 >> column) & 3u) << 2);
    }
};

template <int kWgN>
struct FragmentMask {
    static constexpr int kGroups = kWgN / 8;
    static constexpr int kWords = kGroups / 8;
    static_assert(kGroups % 8 == 0, "the warpgroup tile is a multiple of 64 columns");
    // Each draw shifts the whole register right by one group: after kGroups draws the bits of
    // group j sit at bits 4 (j % 8) .. 4 (j % 8) + 3 of word j / 8.
    uint32_t words[kWords];
    int drawn;
    // Linear mask indices of the thread's first element in rows r0 and r0 + 8 (group 0); group
    // j adds 8 j.
    uint64_t index_r0;
    uint64_t index_r8;

    __device__ __forceinline__ void reset(const MaskParams& mp, uint64_t r0, uint64_t c0) {
#pragma unroll
        for (int i = 0; i < kWords; ++i) words[i] = 0;
        drawn = 0;
        index_r0 = mask_index(mp, r0, c0);
        index_r8 = mask_index(mp, r0 + 8, c0);
    }

    // Draws the next group's 4 bits, if any are left. Every lane of the warp calls it alike
    // (MaskKey::keep_rows).
    __device__ __forceinline__ void draw_next(const MaskKey& key) {
        if (drawn >= kGroups) return;
        const uint64_t step = 8 * (uint64_t)drawn;
        const uint32_t bits = key.keep_rows(index_r0 + step, index_r8 + step);
#pragma unroll
        for (int i = 0; i + 1 < kWords; ++i) words[i] = (words[i] >> 4) | (words[i + 1] << 28);
        words[kWords - 1] = (words[kWords - 1] >> 4) | (bits << 28);
        ++drawn;
    }

    // The 4 bits of group j (a compile-time constant after unrolling), once all are drawn.
    __device__ __forceinline__ uint32_t nibble(int j) const {
        return (words[j / 8] >> (4 * (j % 8))) & 0xFu;
    }
};

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float v0, float v1) {
    return (uint32_t)bits16(Element<T>::from_float(v0)) |
           ((uint32_t)bits16(Element<T>::from_float(v1)) << 16);
}

template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float v0, float v1) {
    *reinterpret_cast<uint32_t*>(dst) = pack_pair<T>(v0, v1);
}

// Two adjacent 16-bit biases, read as one 4-byte access.
template <typename T>
struct alignas(4) BiasPair {
    T first, second;
};

// The bias of columns c and c + 1, c even (0 past the last column, or without bias): one 4-byte
// load where both columns lie inside and b is 4-byte aligned (a.bias_pairs), else one load
// each.
template <typename T>
__device__ __forceinline__ void bias_pair(const EpilogueArgs<T>& a, long long c, float& bias0,
                                          float& bias1) {
    static_assert(sizeof(BiasPair<T>) == 4, "a pair of 16-bit elements");
    bias0 = 0.0f;
    bias1 = 0.0f;
    if (a.b == nullptr) return;
    if (a.bias_pairs && c + 1 < a.n) {
        const BiasPair<T> pair = *reinterpret_cast<const BiasPair<T>*>(a.b + c);
        bias0 = Element<T>::to_float(pair.first);
        bias1 = Element<T>::to_float(pair.second);
    } else {
        if (c < a.n) bias0 = Element<T>::to_float(a.b[c]);
        if (c + 1 < a.n) bias1 = Element<T>::to_float(a.b[c + 1]);
    }
}

// The outputs of two adjacent accumulators: bias, activation, then the keep bits `keep2` (bit 0
// for the first, bit 1 for the second) and the scale; non-finite values as
// docs/mask-contract.md defines them (activate, apply_keep).
template <typename T>
__device__ __forceinline__ void epilogue_pair(const EpilogueArgs<T>& a, float acc0, float acc1,
                                              float bias0, float bias1, uint32_t keep2,
                                              float& v0, float& v1) {
    v0 = activate(acc0 + bias0, a.relu);
    v1 = activate(acc1 + bias1, a.relu);
    if (a.drop_all || a.dropout) {
        v0 = apply_keep(v0, !a.drop_all && (keep2 & 1u), a.mp.scale);
        v1 = apply_keep(v1, !a.drop_all && (keep2 & 2u), a.mp.scale);
    }
}

// A gradient element from its f32 sum: scale * acc, or when accumulating scale * acc + old as
// one fused multiply-add (one rounding). Explicit, so that the direct and the TMA-store
// epilogues (and the CPU harness) give the same bits whatever ptxas would contract in each.
__device__ __forceinline__ float gradient_value(float acc, float scale, bool accumulate,
                                                float old) {
    return accumulate ? __fmaf_rn(acc, scale, old) : __fmul_rn(acc, scale);
}

// The values of kBatch 8-column groups of this lane's gradient fragment from group j0, before the
// store: old[g][2 h + e] = OUT[r0 + 8 h][c0 + 8 (j0 + g) + e], 0 outside OUT ([rows, cols],
// row-major). All are read before any is used, so that a thread waits for global memory once per
// batch instead of once per pair (in the SASS each pair's loads had sat right before its stores).
template <typename T, int kBatch>
__device__ __forceinline__ void read_old_groups(const T* out, long long rows, long long cols,
                                               long long r0, long long c0, int j0,
                                               float (&old)[kBatch][4]) {
#pragma unroll
    for (int g = 0; g < kBatch; ++g) {
        const long long c = c0 + 8 * (j0 + g);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long r = r0 + 8 * h;
            old[g][2 * h] = old[g][2 * h + 1] = 0.0f;
            if (r >= rows || c >= cols) continue;
            const T* src = out + r * cols + c;
            old[g][2 * h] = Element<T>::to_float(src[0]);
            if (c + 1 < cols) old[g][2 * h + 1] = Element<T>::to_float(src[1]);
        }
    }
}

// Writes the fragment `acc` of the warpgroup tile whose top-left element is (tile_row,
// tile_col) of Y. `mask` holds every group's bits when a.dropout.
template <typename T, int kWgN>
__device__ __forceinline__ void store_fragment(const float (&acc)[kWgN / 2],
                                               const FragmentMask<kWgN>& mask,
                                               const EpilogueArgs<T>& a, long long tile_row,
                                               long long tile_col) {
    const int t = (int)(threadIdx.x % 128);
    const int w = t / 32, l = t % 32;
    const long long r0 = tile_row + 16 * w + l / 4;
    const long long c0 = tile_col + 2 * (l % 4);
    // Two adjacent outputs are one 4-byte store when every row starts 4-byte aligned.
    const bool pair_store = reinterpret_cast<uintptr_t>(a.y) % 4 == 0 && a.n % 2 == 0;
    // Each group's bias is loaded one group ahead, so that its latency passes during the
    // previous group's arithmetic and stores (nvcc does not hoist it past the loop's break: each
    // group's loads sat right before its own use).
    float next0, next1;
    bias_pair(a, c0, next0, next1);
#pragma unroll
    for (int j = 0; j < kWgN / 8; ++j) {
        const long long c = c0 + 8 * j;
        if (c >= a.n) break;
        const bool second_col = c + 1 < a.n;
        const float bias0 = next0, bias1 = next1;
        if (j + 1 < kWgN / 8) bias_pair(a, c + 8, next0, next1);
        const uint32_t keep = a.dropout ? mask.nibble(j) : 0xFu;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long r = r0 + 8 * h;
            if (r >= a.m) continue;
            float v0, v1;
            epilogue_pair(a, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], bias0, bias1,
                          keep >> (2 * h), v0, v1);
            T* dst = a.y + r * a.n + c;
            if (pair_store && second_col) {
                store_pair(dst, v0, v1);
            } else {
                dst[0] = Element<T>::from_float(v0);
                if (second_col) dst[1] = Element<T>::from_float(v1);
            }
        }
    }
}

// A barrier over consumer warpgroup `consumer`'s 128 threads (named barriers 1 and 2).
__device__ __forceinline__ void consumer_barrier(int consumer) {
    if (consumer == 0)
        ptx::warpgroup_barrier<1>();
    else
        ptx::warpgroup_barrier<2>();
}

// One pass of stage_block (below): groups first_group .. first_group + kPassCols / 8 - 1 of the
// fragment, whose first column is tile_col, staged and stored; `wait`: first wait until the
// stores queued before have read the staging area.
template <typename T, int kPassCols, class GroupValues>
__device__ __forceinline__ void stage_pass(const GroupValues& group_values, int first_group,
                                           unsigned char* staging, const CUtensorMap* map_out,
                                           int consumer, long long tile_row, long long tile_col,
                                           long long rows, long long cols, bool wait) {
    static_assert(kPassCols % 64 == 0, "the staging area is whole 64-column boxes");
    const int t = (int)(threadIdx.x % 128);
    const int w = t / 32, l = t % 32;
    // The stores queued before have read the staging area before anyone writes it again.
    if (wait) {
        if (t == 0) ptx::tma_store_wait_read<0>();
        consumer_barrier(consumer);
    }
    // Lane l gives the row of matrix l / 8 it receives: row l % 8 of the 8 x 8 block of group
    // j + l / 16, rows 8 ((l / 8) % 2) on from the warp's first.
    const int st_row = 16 * w + 8 * ((l / 8) % 2) + l % 8;
    const uint32_t st_row_byte = (uint32_t)st_row * 128u;
    const uint32_t st_swizzle = (uint32_t)(st_row & 7) << 4;
#pragma unroll
    for (int j = 0; j < kPassCols / 8; j += 2) {
        // Register 2 g + h: the pair of group j + g in row r0 + 8 h (matrix 2 g + h).
        uint32_t packed[4];
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            float v[4];
            group_values(first_group + j + g, v);
#pragma unroll
            for (int h = 0; h < 2; ++h) packed[2 * g + h] = pack_pair<T>(v[2 * h], v[2 * h + 1]);
        }
        const int col = 8 * (j + l / 16);
        const uint32_t byte =
            (uint32_t)(col / 64) * 8192u + st_row_byte + (uint32_t)(col % 64) * 2u;
        ptx::stmatrix_x4(staging + (byte ^ st_swizzle), packed);
    }
    // The generic-proxy writes, visible to the TMA unit's reads.
    ptx::fence_proxy_async_shared();
    consumer_barrier(consumer);
    if (t == 0) {
#pragma unroll
        for (int box = 0; box < kPassCols / 64; ++box)
            if (tile_row < rows && tile_col + 64 * box < cols)
                ptx::tma_store_2d(map_out, staging + 8192 * box, (int32_t)(tile_col + 64 * box),
                                  (int32_t)tile_row);
        ptx::tma_store_commit();
    }
}

// Stages one 64-row block of consumer warpgroup `consumer`'s tile, whose top-left element is
// (tile_row, tile_col) of the row-major [rows, cols] OUT, and queues its TMA stores (OUT's rows
// 16-byte aligned: cols % 8 == 0 and OUT 16-byte aligned; `map_out` is OUT's tensor map with
// 64 x 64 boxes and 128-byte swizzle), in passes of kPassCols columns (all kWgN at once unless
// the staging area is narrower than the tile). `group_values(j, v)` gives the f32 outputs of the
// fragment's column group j (0 .. kWgN / 8 - 1, called in order): v[2 h] and v[2 h + 1] for the
// pair in row 8 h of the group. Per pass, the warpgroup writes them, rounded to T, into its
// `staging` area (1024-byte aligned, 128 kPassCols bytes) as kPassCols / 64 boxes of 64 rows x
// 128 bytes in the 128-byte swizzle layout (the 16-byte chunk index XOR the row within its
// group of 8 rows), with one stmatrix.x4 per two 8-column groups (ptx::stmatrix_x4: the
// fragment's column pairs are its registers' layout; each 8 x 8 matrix row is one 16-byte chunk,
// so a matrix's 8 rows fall in 8 distinct chunks of the bank line), then its first thread queues
// one TMA store per box that starts inside OUT (none when the warpgroup's rows all lie past OUT,
// as the second block of a multicast cluster's last row tile may); the TMA unit clips the rest
// past OUT. A later pass first waits until the stores of the one before have read the area. The
// warpgroup goes on to its next tile while the last pass's stores drain; the next tile's first
// call (and the kernel's end, through finish_tma_stores) waits until they have read the area.
// A warpgroup tile of several 64-row blocks (a ping-pong warpgroup's 128 rows) stages block
// `block` at `staging` + 128 kPassCols `block` bytes, one call per block in order: only block 0's
// first pass waits.
template <typename T, int kWgN, int kPassCols = kWgN, class GroupValues>
__device__ __forceinline__ void stage_block(const GroupValues& group_values,
                                            unsigned char* staging, const CUtensorMap* map_out,
                                            int consumer, long long tile_row, long long tile_col,
                                            long long rows, long long cols, int block) {
    static_assert(kWgN % kPassCols == 0, "whole passes");
    staging += (uint32_t)block * 128u * kPassCols;
#pragma unroll
    for (int pass = 0; pass < kWgN / kPassCols; ++pass)
        stage_pass<T, kPassCols>(group_values, pass * kPassCols / 8, staging, map_out, consumer,
                                 tile_row, tile_col + pass * kPassCols, rows, cols,
                                 block == 0 || pass > 0);
}

// The TMA-store form of store_fragment (stage_block's rules, OUT = Y, [m, n]).
template <typename T, int kWgN>
__device__ __forceinline__ void stage_fragment(const float (&acc)[kWgN / 2],
                                               const FragmentMask<kWgN>& mask,
                                               const EpilogueArgs<T>& a, unsigned char* staging,
                                               const CUtensorMap* map_y, int consumer,
                                               long long tile_row, long long tile_col,
                                               int block = 0) {
    const int l = (int)(threadIdx.x % 32);
    stage_block<T, kWgN>(
        [&](int j, float (&v)[4]) {
            float bias0, bias1;
            bias_pair(a, tile_col + 8 * j + 2 * (l % 4), bias0, bias1);
            const uint32_t keep = a.dropout ? mask.nibble(j) : 0xFu;
#pragma unroll
            for (int h = 0; h < 2; ++h)
                epilogue_pair(a, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], bias0, bias1,
                              keep >> (2 * h), v[2 * h], v[2 * h + 1]);
        },
        staging, map_y, consumer, tile_row, tile_col, a.m, a.n, block);
}

// The TMA-store form of store_gradient_fragment: OUT[r][c] = (accumulate ? OUT[r][c] : 0) +
// scale * acc (gradient_value: the same bits), staged and stored by TMA under stage_block's rules
// (one 64-row block per warpgroup, in passes of kPassCols columns). When accumulating, the old
// values of four 8-column groups are read together as the first of them is staged, as
// store_gradient_fragment reads them.
template <typename T, int kWgN, int kPassCols>
__device__ __forceinline__ void stage_gradient_fragment(
    const float (&acc)[kWgN / 2], const T* out, long long rows, long long cols,
    long long tile_row, long long tile_col, float scale, bool accumulate,
    unsigned char* staging, const CUtensorMap* map_out, int consumer) {
    constexpr int kOldAhead = 4;
    static_assert(kWgN / 8 % kOldAhead == 0, "whole batches of groups");
    const int t = (int)(threadIdx.x % 128);
    const int w = t / 32, l = t % 32;
    const long long r0 = tile_row + 16 * w + l / 4;
    const long long c0 = tile_col + 2 * (l % 4);
    // The batch of old values from the last group j with j % kOldAhead == 0 (read_old_groups).
    float old[kOldAhead][4] = {};
    stage_block<T, kWgN, kPassCols>(
        [&](int j, float (&v)[4]) {
            if (accumulate && j % kOldAhead == 0)
                read_old_groups<T, kOldAhead>(out, rows, cols, r0, c0, j, old);
#pragma unroll
            for (int e = 0; e < 4; ++e)
                v[e] = gradient_value(acc[4 * j + e], scale, accumulate, old[j % kOldAhead][e]);
        },
        staging, map_out, consumer, tile_row, tile_col, rows, cols, 0);
}

// Before a consumer warpgroup that staged its tiles exits: its stores have read shared memory.
__device__ __forceinline__ void finish_tma_stores() {
    if (threadIdx.x % 128 == 0) ptx::tma_store_wait_read<0>();
}

// The backward's epilogue: OUT[r][c] = (accumulate ? OUT[r][c] : 0) + scale * acc for the
// fragment of the warpgroup tile whose top-left element is (tile_row, tile_col) of the
// row-major [rows, cols] OUT, rows and columns past the matrix skipped; the sum is taken in f32
// (gradient_value) and rounded once to T. When accumulating, the old values of kOldAhead groups
// are read together (read_old_groups).
template <typename T, int kWgN>
__device__ __forceinline__ void store_gradient_fragment(const float (&acc)[kWgN / 2],
                                                        T* __restrict__ out, long long rows,
                                                        long long cols, long long tile_row,
                                                        long long tile_col, float scale,
                                                        bool accumulate) {
    constexpr int kGroups = kWgN / 8;
    constexpr int kOldAhead = kGroups < 4 ? kGroups : 4;
    static_assert(kGroups % kOldAhead == 0, "whole batches of groups");
    const int t = (int)(threadIdx.x % 128);
    const int w = t / 32, l = t % 32;
    const long long r0 = tile_row + 16 * w + l / 4;
    const long long c0 = tile_col + 2 * (l % 4);
    const bool pair_store = reinterpret_cast<uintptr_t>(out) % 4 == 0 && cols % 2 == 0;
#pragma unroll
    for (int j0 = 0; j0 < kGroups; j0 += kOldAhead) {
        float old[kOldAhead][4] = {};
        if (accumulate) read_old_groups<T, kOldAhead>(out, rows, cols, r0, c0, j0, old);
#pragma unroll
        for (int g = 0; g < kOldAhead; ++g) {
            const long long c = c0 + 8 * (j0 + g);
            if (c >= cols) return;
            const bool second_col = c + 1 < cols;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const long long r = r0 + 8 * h;
                if (r >= rows) continue;
                T* dst = out + r * cols + c;
                const float v0 =
                    gradient_value(acc[4 * (j0 + g) + 2 * h], scale, accumulate, old[g][2 * h]);
                const float v1 = gradient_value(acc[4 * (j0 + g) + 2 * h + 1], scale, accumulate,
                                                old[g][2 * h + 1]);
                if (pair_store && second_col) {
                    store_pair(dst, v0, v1);
                } else {
                    dst[0] = Element<T>::from_float(v0);
                    if (second_col) dst[1] = Element<T>::from_float(v1);
                }
            }
        }
    }
}

}  // namespace sm90
}  // namespace gemm
}  // namespace fusedrop
