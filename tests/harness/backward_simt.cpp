// Harness driver for kernels/backward_simt.cu: every config, dX and dW, every dtype, and the
// split-K sum, each launched from the request's plan (src/cuda/backward.rs, product_plan: a split
// product is followed by its sums).
#include "driver.h"

#include "backward_simt.cu"

#define HARNESS_BACKWARD_SIMT(NAME)                            \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_f32, 1)      \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_f16, 1)      \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_bf16, 1)     \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_f32, 1)      \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_f16, 1)      \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_bf16, 1)

void register_kernels() {
    HARNESS_BACKWARD_SIMT(simt128x128)
    HARNESS_BACKWARD_SIMT(simt64x64)
    HARNESS_BACKWARD_SIMT(simt64x32)
    HARNESS_PLANNED(fusedrop_backward_split_sum_f32, 1)
    HARNESS_PLANNED(fusedrop_backward_split_sum_f16, 1)
    HARNESS_PLANNED(fusedrop_backward_split_sum_bf16, 1)
}
