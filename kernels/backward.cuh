// The backward pass's one elementwise step, shared by every backward kernel: forming dZ from dY
// (and the saved output Y) while a tile of dY is loaded, so that dZ never goes to memory (except
// where a caller asks for it: BackwardKernel::HopperDzFromDx's dX writes it out for dW).
//
//   identity: dZ = dY * (keep(i) ? scale : 0)   (Y says nothing about the mask, so Philox is
//                                                redrawn from (seed, subsequence, i) with i from
//                                                the shard geometry)
//   ReLU:     dZ = dY * scale                    when Y > 0 (Y = relu(Z) * (keep ? scale : 0) is
//                                                positive exactly when the element was kept and
//                                                ReLU passed it; docs/mask-contract.md)
//             dZ = dY * (keep(i) ? scale : 0)    when Y is NaN (ReLU passed a NaN or +inf; the
//                                                mask is redrawn for this element only)
//             dZ = 0                              otherwise (ReLU blocked it, or it was dropped)
//
// The multiplications carry a NaN or infinity of dY through a dropped element as PyTorch's
// dropout backward does; where this differs from PyTorch is in docs/BACKWARD.md.
// Host-compilable (no intrinsics), so the CPU harness runs it as the GPU does.
#pragma once

#include <stdint.h>
#include <string.h>

#include "element.cuh"
#include "mask.cuh"

namespace fusedrop {

// The keep decisions of dY(r, c .. c+3) of the row-major [m, n] gradient (bit j: column c + j).
// The four linear indices i0 .. i0+3 span at most two Philox calls (a shard's rows may start at
// any index), so this costs one call, or two when i0 is not a multiple of 4 and a column of the
// second call lies inside the matrix (the bits of columns beyond n are then those of the first).
FUSEDROP_HD uint32_t keep_quad(const MaskParams& mp, long long n, long long r, long long c) {
    const uint64_t i0 = mask_index(mp, (uint64_t)r, (uint64_t)c);
    const uint32_t first = (uint32_t)(i0 & 3);
    const Philox4 lo = mask_words(mp, i0 >> 2);
    Philox4 hi = lo;
    if (first != 0 && c + (4 - first) < n) hi = mask_words(mp, (i0 >> 2) + 1);
    uint32_t keep = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint32_t slot = first + (uint32_t)j;
        const uint32_t word = slot < 4 ? philox_word(lo, slot) : philox_word(hi, slot - 4);
        keep |= (keep_word(mp, word) ? 1u : 0u) << j;
    }
    return keep;
}

// Turns dY(r, c .. c+3) of the row-major [m, n] gradient into dZ, in place: v holds the four dY
// values and yv the saved outputs (read only when `relu`). Elements outside the matrix must hold
// v = 0 and yv = 0 and stay 0. The mask (keep_quad) is drawn for identity, and for ReLU only
// when one of the four saved outputs is NaN; never when p == 0.
FUSEDROP_HD void form_dz4(float (&v)[4], const float (&yv)[4], bool relu, const MaskParams& mp,
                          long long n, long long r, long long c) {
    // Whether the element's dZ is dY times its regenerated mask factor.
    bool masked[4];
    bool any_masked = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        masked[j] = !relu || yv[j] != yv[j];
        any_masked = any_masked || masked[j];
    }
    const uint32_t keep = any_masked && dropout_enabled(mp) ? keep_quad(mp, n, r, c) : 0xfu;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        v[j] = masked[j] ? apply_keep(v[j], ((keep >> j) & 1u) != 0, mp.scale)
                         : (yv[j] > 0.0f ? v[j] * mp.scale : 0.0f);
    }
}

// dZ(r, c), dZ(r, c+1), dZ(r, c+2), dZ(r, c+3) of the row-major [m, n] gradient, as floats,
// read from global memory. Elements outside the matrix (r >= m or a column >= n) are 0, so tiles
// that overhang the edges add nothing. `y` is read only when `relu` is set.
template <typename T>
FUSEDROP_HD void load_dz4(const T* __restrict__ dy, const T* __restrict__ y, long long m,
                          long long n, long long r, long long c, bool relu, const MaskParams& mp,
                          float (&out)[4]) {
    float yv[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = yv[j] = 0.0f;
    if (r >= m || c >= n) return;
    const long long row = r * n;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (c + j < n) {
            out[j] = Element<T>::to_float(dy[row + c + j]);
            if (relu) yv[j] = Element<T>::to_float(y[row + c + j]);
        }
    }
    form_dz4(out, yv, relu, mp, n, r, c);
}

// --- dZ / scale for the tensor-core products ---
//
// The tensor-core kernels multiply dZ / scale (form_dz4's rule with a unit scale: for ReLU with
// no NaN in Y that is dY or 0, exact in T, with no Philox) and apply the dropout scale once to
// their f32 sums. `unit` is the call's MaskParams with scale 1.

// The bit pattern of +infinity in a 16-bit T; with the sign cleared, NaNs lie above it.
template <typename T>
struct HalfBits;
template <>
struct HalfBits<__half> {
    static constexpr uint32_t kInf = 0x7c00u;
};
template <>
struct HalfBits<__nv_bfloat16> {
    static constexpr uint32_t kInf = 0x7f80u;
};

// A register pair (below) once the keep bits are known: element e (the 16-bit half e of dy and
// y) is dY · (bit e of keep ? scale : 0) where it is masked (masked0, masked1), else dY when
// Y > 0 and 0 otherwise.
template <typename T>
FUSEDROP_HD uint32_t dz_pair_from_keep(uint32_t dy, uint32_t y, bool masked0, bool masked1,
                                       uint32_t keep, float scale) {
    const bool masked[2] = {masked0, masked1};
    uint32_t packed = 0;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        T dv, yv;
        const uint16_t dbits = (uint16_t)(dy >> (16 * e)), ybits = (uint16_t)(y >> (16 * e));
        memcpy(&dv, &dbits, 2);
        memcpy(&yv, &ybits, 2);
        const float v = Element<T>::to_float(dv);
        const float out = masked[e] ? apply_keep(v, ((keep >> e) & 1u) != 0, scale)
                                    : (Element<T>::to_float(yv) > 0.0f ? v : 0.0f);
        const T o = Element<T>::from_float(out);
        uint16_t obits;
        memcpy(&obits, &o, 2);
        packed |= (uint32_t)obits << (16 * e);
    }
    return packed;
}

// Whether the 16-bit T with bits `half` (in the low 16 bits) is NaN.
template <typename T>
FUSEDROP_HD bool half_is_nan(uint32_t half) {
    return (half & 0x7fffu) > HalfBits<T>::kInf;
}

// Tests on both 16-bit T packed in a register at once, each answer in the top bit of its half
// (bits 15 and 31): with the sign cleared a half is at most 0x7fff, and every sum below stays
// under 0x10000, so no carry crosses into the other half. Whether the half is NaN (above +inf):
template <typename T>
FUSEDROP_HD uint32_t nan_halves(uint32_t y) {
    return ((y & 0x7fff7fffu) + (0x7fffu - HalfBits<T>::kInf) * 0x10001u) & 0x80008000u;
}

// Whether the half is nonzero with its sign ignored (not +0 or -0).
FUSEDROP_HD uint32_t nonzero_halves(uint32_t y) {
    return ((y & 0x7fff7fffu) + 0x7fff7fffu) & 0x80008000u;
}

// The 16-bit halves whose top bit is set in `top`, as a mask of the register.
FUSEDROP_HD uint32_t halves_of(uint32_t top) { return (top >> 15) * 0xffffu; }

// dZ / scale of a pair of elements packed in one register (below) for ReLU where neither Y is
// NaN: Y > 0 (+inf included) iff its bits lie in [1, +inf] (sign clear, nonzero, not NaN), and
// then dZ / scale is dY's bits, else 0. Bit operations only, both halves at once, no Philox.
template <typename T>
FUSEDROP_HD uint32_t relu_dz_pair(uint32_t dy, uint32_t y) {
    return dy & halves_of(nonzero_halves(y) & ~y & ~nan_halves<T>(y));
}

// The register-fragment kernels (the mma.sync backward's A fragments, the Hopper dX's) form dZ
// / scale of two elements of dY packed in the 16-bit halves of one register, as ldmatrix
// delivers them: the low half holds element (r, c), the high half (r, c + 1), or, down a column
// (kDown: a fragment of dZᵀ, where two consecutive reduction indices of dW are two rows of dY),
// (r + 1, c). For ReLU they form every register of a k step with relu_dz_pair_or_nan, and only
// where a Y was NaN draw the keep bits (keep_index of pair_element_index; the Hopper dX draws
// its own) and apply them (apply_keep_halves), in one loop for the registers: drawn inline at
// every register, the Philox code was over half of those kernels' SASS. Elements outside dY
// must hold dy = y = 0; they give 0.

// relu_dz_pair's bit rule, except that a half whose Y is NaN keeps its dY, for the mask to
// decide it (apply_keep_halves); bit e of `nan` is set when half e's Y is NaN.
template <typename T>
FUSEDROP_HD uint32_t relu_dz_pair_or_nan(uint32_t dy, uint32_t y, uint32_t& nan) {
    const uint32_t nan_top = nan_halves<T>(y);
    nan = ((nan_top >> 15) | (nan_top >> 30)) & 3u;
    // Sign clear and nonzero (Y > 0 or a positive NaN), or NaN.
    return dy & halves_of((nonzero_halves(y) & ~y) | nan_top);
}

// The mask index of half e of the register pair at (r, c), as laid out above.
template <bool kDown>
FUSEDROP_HD uint64_t pair_element_index(const MaskParams& unit, long long r, long long c, int e) {
    return kDown ? mask_index(unit, (uint64_t)(r + e), (uint64_t)c)
                 : mask_index(unit, (uint64_t)r, (uint64_t)(c + e));
}

// The pair with the mask applied to the halves set in `halves` (dY · (bit e of keep ? scale :
// 0), as dz_pair_from_keep; for ReLU the halves whose Y is NaN, for the identity both) and the
// other halves as they are.
template <typename T>
FUSEDROP_HD uint32_t apply_keep_halves(uint32_t pair, uint32_t halves, uint32_t keep,
                                       float scale) {
    const uint32_t drawn = dz_pair_from_keep<T>(pair, 0u, true, true, keep, scale);
    const uint32_t mask = (halves & 1u ? 0xffffu : 0u) | (halves & 2u ? 0xffff0000u : 0u);
    return (drawn & mask) | (pair & ~mask);
}

// dZ / scale of dY(r, c .. c+3) of the row-major [m, n] gradient, in place, as 16-byte and
// 8-byte shared-memory accesses deliver it: dy[0] holds columns c and c + 1 (low half first),
// dy[1] columns c + 2 and c + 3; y likewise (read only for ReLU). form_dz4's rule with a unit
// scale and its Philox calls (keep_quad); for ReLU with no NaN among the four Y, bit operations
// only. Elements outside dY must hold dy = y = 0; they give 0.
template <typename T>
FUSEDROP_HD void form_dz_quad(uint32_t (&dy)[2], const uint32_t (&y)[2], bool relu,
                              const MaskParams& unit, long long n, long long r, long long c) {
    bool masked[4];
    bool any_masked = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        masked[j] = !relu || half_is_nan<T>(y[j / 2] >> (16 * (j % 2)));
        any_masked = any_masked || masked[j];
    }
    if (!any_masked) {
        dy[0] = relu_dz_pair<T>(dy[0], y[0]);
        dy[1] = relu_dz_pair<T>(dy[1], y[1]);
        return;
    }
    const uint32_t keep = dropout_enabled(unit) ? keep_quad(unit, n, r, c) : 0xfu;
    dy[0] = dz_pair_from_keep<T>(dy[0], y[0], masked[0], masked[1], keep, unit.scale);
    dy[1] = dz_pair_from_keep<T>(dy[1], y[1], masked[2], masked[3], keep >> 2, unit.scale);
}

// dZ / scale of element (r, c) of dY as a float (form_dz4's rule for one element; db's column
// sums when dZ is formed in registers).
template <typename T>
FUSEDROP_HD float dz_over_scale(T dy, T y, bool relu, const MaskParams& unit, long long r,
                                long long c) {
    const float v = Element<T>::to_float(dy);
    const float yv = relu ? Element<T>::to_float(y) : 0.0f;
    if (relu && yv == yv) return yv > 0.0f ? v : 0.0f;
    return apply_keep(v, keep_index(unit, mask_index(unit, (uint64_t)r, (uint64_t)c)), unit.scale);
}

// One gradient element as every backward kernel writes it: *dst = round(old + sum * scale), old
// being *dst when accumulating, else 0 (the sum in f32, rounded to T once).
template <typename T>
FUSEDROP_HD void write_gradient(T* dst, float sum, float scale, bool accumulate) {
    const float old = accumulate ? Element<T>::to_float(*dst) : 0.0f;
    *dst = Element<T>::from_float(old + sum * scale);
}

}  // namespace fusedrop
