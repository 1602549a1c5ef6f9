// Host driver for tests/philox_host.rs: runs kernels/philox.cuh and kernels/mask.cuh, compiled by
// the host C++ compiler, on records read from a binary file, and writes the results to another.
// All integers are native-endian; the Rust side writes and reads them the same way.
//
//   philox_driver philox IN OUT   IN: records of 6 u32 (counter[4], key[2]); OUT: 4 u32 each
//   philox_driver mask IN OUT     IN: records of 8 u64 (seed, subsequence, threshold, row_offset,
//                                 col_offset, n_global, r, c); OUT: 5 u64 each (mask_index,
//                                 keep_index, keep_index through a seed_subsequence buffer,
//                                 dropout_enabled, the deciding word)
//   philox_driver layout - OUT    OUT: sizeof(MaskParams), alignof, then each field's offset
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mask.cuh"
#include "philox.cuh"

namespace {

template <typename T>
bool read_all(const char* path, std::vector<T>& out) {
    FILE* f = std::fopen(path, "rb");
    if (f == nullptr) return false;
    T v;
    while (std::fread(&v, sizeof v, 1, f) == 1) out.push_back(v);
    std::fclose(f);
    return true;
}

template <typename T>
bool write_all(const char* path, const std::vector<T>& v) {
    FILE* f = std::fopen(path, "wb");
    if (f == nullptr) return false;
    const bool ok = std::fwrite(v.data(), sizeof(T), v.size(), f) == v.size();
    return std::fclose(f) == 0 && ok;
}

int run_philox(const char* in, const char* out) {
    std::vector<uint32_t> words;
    if (!read_all(in, words) || words.size() % 6 != 0) return 2;
    std::vector<uint32_t> result;
    result.reserve(words.size() / 6 * 4);
    for (size_t i = 0; i < words.size(); i += 6) {
        const fusedrop::Philox4 c = {{words[i], words[i + 1], words[i + 2], words[i + 3]}};
        const fusedrop::Philox4 r = fusedrop::philox4x32_10(c, words[i + 4], words[i + 5]);
        result.insert(result.end(), r.w, r.w + 4);
    }
    return write_all(out, result) ? 0 : 3;
}

int run_mask(const char* in, const char* out) {
    std::vector<uint64_t> v;
    if (!read_all(in, v) || v.size() % 8 != 0) return 2;
    std::vector<uint64_t> result;
    result.reserve(v.size() / 8 * 5);
    for (size_t i = 0; i < v.size(); i += 8) {
        fusedrop::MaskParams mp;
        mp.seed = v[i];
        mp.subsequence = v[i + 1];
        mp.seed_subsequence = nullptr;
        mp.threshold = v[i + 2];
        mp.row_offset = v[i + 3];
        mp.col_offset = v[i + 4];
        mp.n_global = v[i + 5];
        mp.scale = 0.0f;
        mp.pad = 0;
        const uint64_t r = v[i + 6], c = v[i + 7];
        mp = fusedrop::resolve_seed(mp);
        const uint64_t index = fusedrop::mask_index(mp, r, c);
        const bool keep = fusedrop::keep_index(mp, index);

        // The same decision with (seed, subsequence) taken from a buffer, as a CUDA graph replay
        // does; the fields it replaces hold something else.
        const uint64_t seed_subsequence[2] = {mp.seed, mp.subsequence};
        fusedrop::MaskParams from_buffer = mp;
        from_buffer.seed = ~mp.seed;
        from_buffer.subsequence = mp.subsequence + 1;
        from_buffer.seed_subsequence = seed_subsequence;
        from_buffer = fusedrop::resolve_seed(from_buffer);
        const bool keep_buffer = fusedrop::keep_index(from_buffer, index);

        const uint32_t word = fusedrop::mask_words(mp, index >> 2).w[index & 3];
        result.push_back(index);
        result.push_back(keep ? 1 : 0);
        result.push_back(keep_buffer ? 1 : 0);
        result.push_back(fusedrop::dropout_enabled(mp) ? 1 : 0);
        result.push_back(word);
    }
    return write_all(out, result) ? 0 : 3;
}

int run_layout(const char* out) {
    using fusedrop::MaskParams;
    const std::vector<uint64_t> layout = {
        sizeof(MaskParams),
        alignof(MaskParams),
        offsetof(MaskParams, seed),
        offsetof(MaskParams, subsequence),
        offsetof(MaskParams, seed_subsequence),
        offsetof(MaskParams, threshold),
        offsetof(MaskParams, row_offset),
        offsetof(MaskParams, col_offset),
        offsetof(MaskParams, n_global),
        offsetof(MaskParams, scale),
        offsetof(MaskParams, pad),
        offsetof(MaskParams, record),
    };
    return write_all(out, layout) ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s philox|mask|layout IN OUT\n", argv[0]);
        return 1;
    }
    if (std::strcmp(argv[1], "philox") == 0) return run_philox(argv[2], argv[3]);
    if (std::strcmp(argv[1], "mask") == 0) return run_mask(argv[2], argv[3]);
    if (std::strcmp(argv[1], "layout") == 0) return run_layout(argv[3]);
    std::fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 1;
}
