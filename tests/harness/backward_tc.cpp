// Harness driver for kernels/backward_tc.cu: both entry points of every config (for any operands,
// and for 16-byte aligned ones with n and k multiples of 8), dX and dW, f16 and bf16, and the
// split-K sum, each launched from the request's plan (src/cuda/backward.rs, product_plan: a
// split product is followed by its sums).
#include "driver.h"

#include "backward_tc.cu"

#define HARNESS_BACKWARD_TC(NAME)                                  \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_f16, 1)          \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_bf16, 1)         \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_f16, 1)          \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_bf16, 1)         \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_aligned_f16, 1)  \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_aligned_bf16, 1) \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_aligned_f16, 1)  \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_aligned_bf16, 1)

void register_kernels() {
    HARNESS_BACKWARD_TC(tc128x128)
    HARNESS_BACKWARD_TC(tc64x64)
    HARNESS_BACKWARD_TC(tc64x32)
    HARNESS_PLANNED(fusedrop_backward_split_sum_f16, 1)
    HARNESS_PLANNED(fusedrop_backward_split_sum_bf16, 1)
}
