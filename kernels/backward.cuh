// The backward pass's one elementwise step, shared by every backward kernel: forming dZ from dY
// (and the saved output Y) while a tile of dY is loaded, so that dZ never goes to memory.
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

#include "element.cuh"
#include "mask.cuh"

namespace fusedrop {

// Word `index` (0..3) of a Philox result, with constant subscripts only: a run-time subscript
// would put the four words in local memory.
FUSEDROP_HD uint32_t philox_word(const Philox4& words, uint32_t index) {
    return index == 0 ? words.w[0] : index == 1 ? words.w[1] : index == 2 ? words.w[2] : words.w[3];
}

// Turns dY(r, c .. c+3) of the row-major [m, n] gradient into dZ, in place: v holds the four dY
// values and yv the saved outputs (read only when `relu`). Elements outside the matrix must hold
// v = 0 and yv = 0 and stay 0.
//
// The four linear indices i0 .. i0+3 span at most two Philox calls (a shard's rows may start at
// any index), so the mask costs one call, or two when i0 is not a multiple of 4 and a column of
// the second call lies inside the matrix. It is drawn for identity, and for ReLU only when one
// of the four saved outputs is NaN; never when p == 0.
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
    bool keep[4] = {true, true, true, true};
    if (any_masked && dropout_enabled(mp)) {
        const uint64_t i0 = mask_index(mp, (uint64_t)r, (uint64_t)c);
        const uint32_t first = (uint32_t)(i0 & 3);
        const Philox4 lo = mask_words(mp, i0 >> 2);
        Philox4 hi = lo;
        if (first != 0 && c + (4 - first) < n) hi = mask_words(mp, (i0 >> 2) + 1);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const uint32_t slot = first + (uint32_t)j;
            const uint32_t word = slot < 4 ? philox_word(lo, slot) : philox_word(hi, slot - 4);
            keep[j] = keep_word(mp, word);
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        v[j] = masked[j] ? apply_keep(v[j], keep[j], mp.scale)
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

}  // namespace fusedrop
