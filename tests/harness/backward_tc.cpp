// Harness driver for kernels/backward_tc.cu: every config struct, f16 and bf16, each with its
// `_aligned` entry points (same launch numbers), and the split-K sum after a request that splits.
#include "backward_launch.h"

#include "backward_tc.cu"

using namespace fusedrop::backward;

void register_kernels() {
    HARNESS_BACKWARD_CLASSIC(Tc128x128, tc128x128, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Tc128x128, tc128x128, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Tc64x64, tc64x64, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Tc64x64, tc64x64, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Tc64x32, tc64x32, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Tc64x32, tc64x32, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Tc128x128, tc128x128_aligned, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Tc128x128, tc128x128_aligned, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Tc64x64, tc64x64_aligned, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Tc64x64, tc64x64_aligned, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Tc64x32, tc64x32_aligned, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Tc64x32, tc64x32_aligned, bf16, __nv_bfloat16)
}
