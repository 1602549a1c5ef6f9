// Harness driver for kernels/forward_tc.cu: every config struct, f16 and bf16, each name taking
// the general or the aligned kernel as the host does (forward_launch.h).
#include "forward_launch.h"

#include "forward_tc.cu"

using namespace fusedrop::forward;

void register_kernels() {
    HARNESS_FORWARD_DISPATCH(Tc128x256, tc128x256, f16, __half)
    HARNESS_FORWARD_DISPATCH(Tc128x256, tc128x256, bf16, __nv_bfloat16)
    HARNESS_FORWARD_DISPATCH(Tc128x128, tc128x128, f16, __half)
    HARNESS_FORWARD_DISPATCH(Tc128x128, tc128x128, bf16, __nv_bfloat16)
    HARNESS_FORWARD_DISPATCH(Tc64x128, tc64x128, f16, __half)
    HARNESS_FORWARD_DISPATCH(Tc64x128, tc64x128, bf16, __nv_bfloat16)
    HARNESS_FORWARD_DISPATCH(Tc64x64, tc64x64, f16, __half)
    HARNESS_FORWARD_DISPATCH(Tc64x64, tc64x64, bf16, __nv_bfloat16)
    HARNESS_FORWARD_DISPATCH(Tc64x32, tc64x32, f16, __half)
    HARNESS_FORWARD_DISPATCH(Tc64x32, tc64x32, bf16, __nv_bfloat16)
}
