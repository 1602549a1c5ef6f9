// Harness driver for kernels/forward_tc_sweep.cu: every tuning variant, f16 and bf16, launched
// from the request's plan (src/cuda/forward.rs, forward_sweep_plan, which takes X and W 16-byte
// aligned with k a multiple of 8 only, as the kernels require).
#include "driver.h"

#include "forward_tc_sweep.cu"

#define HARNESS_FORWARD_TC_SWEEP(NAME)                        \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_f16, 1)         \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_bf16, 1)

void register_kernels() {
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk32_f1)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk32_f2)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk64_f1)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk64_f2)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x256_bk32_f1)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x256_bk64_f1)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x256_bk64_f2)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk32_f1_spread)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk64_f1_spread)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x256_bk32_f1_spread)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x256_bk64_f1_spread)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x128_bk32_f1_interleaved)
    HARNESS_FORWARD_TC_SWEEP(sweep_tc128x256_bk32_f1_interleaved)
}
