// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11), written once for host and device.
//
// This header is the Philox every GPU kernel runs; tests/philox_host.rs compiles it with the host
// C++ compiler and checks it bit for bit against src/philox.rs and the Random123 known-answer
// vectors. Keep it free of anything only one side has.
#pragma once

#if defined(__CUDACC__)
#define FUSEDROP_HD __host__ __device__ __forceinline__
#else
#define FUSEDROP_HD inline
#endif

#include <stdint.h>

namespace fusedrop {

struct Philox4 {
    uint32_t w[4];
};

// The high and low words of the 64-bit product a * b.
FUSEDROP_HD void mul_hi_lo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
    hi = __umulhi(a, b);
    lo = a * b;
#else
    const uint64_t product = (uint64_t)a * (uint64_t)b;
    hi = (uint32_t)(product >> 32);
    lo = (uint32_t)product;
#endif
}

FUSEDROP_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        uint32_t hi0, lo0, hi1, lo1;
        mul_hi_lo(M0, c.w[0], hi0, lo0);
        mul_hi_lo(M1, c.w[2], hi1, lo1);
        const Philox4 next = {{hi1 ^ c.w[1] ^ k0, lo1, hi0 ^ c.w[3] ^ k1, lo0}};
        c = next;
    }
    return c;
}

}  // namespace fusedrop
