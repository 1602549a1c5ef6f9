// Harness driver for kernels/forward_f32.cu: every config (f32 only), launched from the request's
// plan (src/cuda/forward.rs, ForwardConfig::launch_plan).
#include "driver.h"

#include "forward_f32.cu"

void register_kernels() {
    HARNESS_PLANNED(fusedrop_forward_simt128x128_f32, 1)
    HARNESS_PLANNED(fusedrop_forward_simt64x64_f32, 1)
    HARNESS_PLANNED(fusedrop_forward_simt64x32_f32, 1)
}
