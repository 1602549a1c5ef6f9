// Harness driver for kernels/forward_f32_sweep.cu: every tuning variant of the f32 forward.
#include "forward_launch.h"

#include "forward_f32_sweep.cu"

using namespace fusedrop::forward;

void register_kernels() {
    HARNESS_FORWARD(Sweep128x128F2, sweep_simt128x128_f2, f32, float)
    HARNESS_FORWARD(Sweep64x64F2, sweep_simt64x64_f2, f32, float)
    HARNESS_FORWARD(Sweep128x128Bk16, sweep_simt128x128_bk16, f32, float)
    HARNESS_FORWARD(Sweep128x128Bk16F2, sweep_simt128x128_bk16_f2, f32, float)
}
