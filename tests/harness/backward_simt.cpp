// Harness driver for kernels/backward_simt.cu: every config struct, every dtype, and the split-K
// sum after a request that splits.
#include "backward_launch.h"

#include "backward_simt.cu"

using namespace fusedrop::backward;

void register_kernels() {
    HARNESS_BACKWARD_CLASSIC(Simt128x128, simt128x128, f32, float)
    HARNESS_BACKWARD_CLASSIC(Simt128x128, simt128x128, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Simt128x128, simt128x128, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Simt64x64, simt64x64, f32, float)
    HARNESS_BACKWARD_CLASSIC(Simt64x64, simt64x64, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Simt64x64, simt64x64, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_CLASSIC(Simt64x32, simt64x32, f32, float)
    HARNESS_BACKWARD_CLASSIC(Simt64x32, simt64x32, f16, __half)
    HARNESS_BACKWARD_CLASSIC(Simt64x32, simt64x32, bf16, __nv_bfloat16)
}
