// The dropout mask contract v1 (docs/mask-contract.md) for the kernels: which Philox word decides
// which element, the keep threshold, the scale, and the sharded-layer geometry.
// Host-compilable, so tests/philox_host.rs checks it against src/mask.rs.
#pragma once

#include "philox.cuh"

namespace fusedrop {

// Everything a kernel needs to decide and scale one element. Passed to every kernel by value;
// its layout is mirrored by `MaskParams` in src/cuda/mod.rs (seven 8-byte fields, scale and pad,
// then the record pointer).
struct MaskParams {
    uint64_t seed;
    uint64_t subsequence;
    // When non-null, the kernel reads {seed, subsequence} from this device buffer instead of the
    // two fields above, so that a captured CUDA graph replays with whatever the buffer holds.
    const uint64_t* seed_subsequence;
    // floor(p * 2^32); 0 means p == 0 (keep all, skip Philox), 2^32 means p == 1 (drop all).
    uint64_t threshold;
    uint64_t row_offset;
    uint64_t col_offset;
    uint64_t n_global;
    // 1 / (1 - p), or 0 when p == 1.
    float scale;
    uint32_t pad;
    // When non-null (forward and standalone dropout only), one thread of the grid (thread 0 of
    // block 0, or in the Hopper forward block 0's first consumer thread) writes the
    // {seed, subsequence} the launch used here (record_seed), for the backward to read: the
    // buffer in seed_subsequence may be advanced between the forward and the backward
    // (SeedSource::DeviceRecorded).
    uint64_t* record;
};

// Replaces seed and subsequence by the device buffer's values when one is given. Call once at
// the top of a kernel (device side) before any mask decision.
FUSEDROP_HD MaskParams resolve_seed(MaskParams mp) {
    if (mp.seed_subsequence != nullptr) {
        mp.seed = mp.seed_subsequence[0];
        mp.subsequence = mp.seed_subsequence[1];
    }
    return mp;
}

// Writes the pair this launch used to mp.record when one is given. Call after resolve_seed,
// with `first_thread` true for exactly one thread of the grid.
FUSEDROP_HD void record_seed(const MaskParams& mp, bool first_thread) {
    if (mp.record != nullptr && first_thread) {
        mp.record[0] = mp.seed;
        mp.record[1] = mp.subsequence;
    }
}

FUSEDROP_HD bool dropout_enabled(const MaskParams& mp) { return mp.threshold != 0; }

// The linear index that decides element (r, c) of this call's output.
FUSEDROP_HD uint64_t mask_index(const MaskParams& mp, uint64_t r, uint64_t c) {
    return (mp.row_offset + r) * mp.n_global + (mp.col_offset + c);
}

// The four words of the Philox call that decides linear indices 4q .. 4q+3.
FUSEDROP_HD Philox4 mask_words(const MaskParams& mp, uint64_t q) {
    const Philox4 counter = {{(uint32_t)q, (uint32_t)(q >> 32), (uint32_t)mp.subsequence,
                              (uint32_t)(mp.subsequence >> 32)}};
    return philox4x32_10(counter, (uint32_t)mp.seed, (uint32_t)(mp.seed >> 32));
}

// Keep decision for a word already drawn.
FUSEDROP_HD bool keep_word(const MaskParams& mp, uint32_t word) {
    return (uint64_t)word >= mp.threshold;
}

// The activation of the forward epilogues, with PyTorch's non-finite behaviour
// (docs/mask-contract.md, "Non-finite values"): ReLU is `z <= 0 ? 0 : z`, so relu(NaN) = NaN,
// relu(-inf) = 0, relu(+inf) = +inf and relu(-0) = +0. (fmaxf(z, 0) would turn NaN into 0, and so
// would `z > 0 ? z : 0`.) Identity returns z unchanged.
FUSEDROP_HD float activate(float z, bool relu) { return relu && z <= 0.0f ? 0.0f : z; }

// Applies one element's keep decision to an activated value: `a * (keep ? scale : 0)`, written as
// a multiplication so that a dropped NaN or infinity becomes NaN, as PyTorch's dropout (which
// multiplies by the mask) does; a dropped finite value becomes a zero of a's sign.
FUSEDROP_HD float apply_keep(float a, bool keep, float scale) { return a * (keep ? scale : 0.0f); }

// Word `index` (0..3) of a Philox result, with constant subscripts only: a run-time subscript
// would put the four words in local memory.
FUSEDROP_HD uint32_t philox_word(const Philox4& words, uint32_t index) {
    return index == 0 ? words.w[0] : index == 1 ? words.w[1] : index == 2 ? words.w[2] : words.w[3];
}

// Keep decision for one linear index, drawing its Philox call. Kernels that handle four
// consecutive indices should call mask_words once and use keep_word on each word instead.
FUSEDROP_HD bool keep_index(const MaskParams& mp, uint64_t index) {
    if (!dropout_enabled(mp)) return true;
    return keep_word(mp, philox_word(mask_words(mp, index >> 2), (uint32_t)(index & 3)));
}

}  // namespace fusedrop
