// Harness driver for kernels/forward_tc.cu: both entry points of every config (for any operands,
// and for X and W that start 16-byte aligned with k a multiple of 8), f16 and bf16, each launched
// from the request's plan (src/cuda/forward.rs, ForwardConfig::launch_plan), which picks between
// them as the library does.
#include "driver.h"

#include "forward_tc.cu"

#define HARNESS_FORWARD_TC(NAME)                               \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_f16, 1)          \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_bf16, 1)         \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_aligned_f16, 1)  \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_aligned_bf16, 1)

void register_kernels() {
    HARNESS_FORWARD_TC(tc128x256)
    HARNESS_FORWARD_TC(tc128x128)
    HARNESS_FORWARD_TC(tc64x128)
    HARNESS_FORWARD_TC(tc64x64)
    HARNESS_FORWARD_TC(tc64x32)
}
