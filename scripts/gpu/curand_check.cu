// Cross-checks the mask contract's Philox word against cuRAND, an implementation nobody on this
// project wrote: curand_init(seed, subsequence, offset = i) then curand() must return word (i & 3)
// of philox4x32_10(counter(i >> 2, subsequence), key(seed)), as kernels/mask.cuh computes it. Built
// and run on a GPU host by scripts/gpu-check.sh (it needs curand_kernel.h, which the PyPI nvcc used
// on CPU machines does not ship):
//   nvcc -O2 -arch=sm_90 -I kernels scripts/gpu/curand_check.cu -o curand_check && ./curand_check
#include <cstdio>
#include <curand_kernel.h>

#include "mask.cuh"

__global__ void compare(uint64_t seed, uint64_t subsequence, uint64_t first, uint64_t count,
                        unsigned long long* mismatches) {
    fusedrop::MaskParams mp = {};
    mp.seed = seed;
    mp.subsequence = subsequence;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < count;
         t += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t i = first + t;
        curandStatePhilox4_32_10_t state;
        curand_init(seed, subsequence, i, &state);
        const uint32_t theirs = curand(&state);
        const uint32_t ours = fusedrop::mask_words(mp, i >> 2).w[i & 3];
        if (theirs != ours) atomicAdd(mismatches, 1ull);
    }
}

int main() {
    struct Case {
        uint64_t seed, subsequence, first, count;
    };
    const Case cases[] = {
        {0, 0, 0, 1 << 22},
        {42, 7, 0, 1 << 22},
        {0x0123456789abcdefull, 1, (1ull << 40) - 5, 1 << 20},
        {0xffffffffffffffffull, 0xfffffffffffffffeull, 0, 1 << 20},
        {0x9e3779b97f4a7c15ull, 1ull << 32, (1ull << 62) - 3, 1 << 20},
    };
    unsigned long long* mismatches;
    if (cudaMalloc(&mismatches, sizeof(*mismatches)) != cudaSuccess) {
        std::printf("curand_check: cudaMalloc failed\n");
        return 2;
    }
    unsigned long long total = 0, words = 0;
    for (const Case& c : cases) {
        unsigned long long found = 0;
        cudaMemset(mismatches, 0, sizeof(*mismatches));
        compare<<<1024, 256>>>(c.seed, c.subsequence, c.first, c.count, mismatches);
        if (cudaMemcpy(&found, mismatches, sizeof(found), cudaMemcpyDeviceToHost) != cudaSuccess) {
            std::printf("curand_check: kernel failed: %s\n", cudaGetErrorString(cudaGetLastError()));
            return 2;
        }
        std::printf("curand_check: seed %016llx subsequence %016llx first %llu count %llu: "
                    "%llu mismatches\n",
                    (unsigned long long)c.seed, (unsigned long long)c.subsequence,
                    (unsigned long long)c.first, (unsigned long long)c.count, found);
        total += found;
        words += c.count;
    }
    std::printf("curand_check: %llu words compared, %llu mismatches: %s\n", words, total,
                total == 0 ? "PASS" : "FAIL");
    return total == 0 ? 0 : 1;
}
