// Harness driver for kernels/backward_simt.cu: fusedrop_backward_{dx,dw}_simt_<dtype>.
#include "backward_launch.h"

#include "backward_simt.cu"

using fusedrop::BackwardSimtConfig;

void register_kernels() {
    HARNESS_BACKWARD(BackwardSimtConfig, simt, f32, float)
    HARNESS_BACKWARD(BackwardSimtConfig, simt, f16, __half)
    HARNESS_BACKWARD(BackwardSimtConfig, simt, bf16, __nv_bfloat16)
}
