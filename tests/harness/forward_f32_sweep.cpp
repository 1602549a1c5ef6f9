// Harness driver for kernels/forward_f32_sweep.cu: every tuning variant of the f32 forward,
// launched from the request's plan (src/cuda/forward.rs, forward_sweep_plan).
#include "driver.h"

#include "forward_f32_sweep.cu"

void register_kernels() {
    HARNESS_PLANNED(fusedrop_forward_sweep_simt128x128_f2_f32, 1)
    HARNESS_PLANNED(fusedrop_forward_sweep_simt64x64_f2_f32, 1)
    HARNESS_PLANNED(fusedrop_forward_sweep_simt128x128_bk16_f32, 1)
    HARNESS_PLANNED(fusedrop_forward_sweep_simt128x128_bk16_f2_f32, 1)
}
