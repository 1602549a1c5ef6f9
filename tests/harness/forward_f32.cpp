// Harness driver for kernels/forward_f32.cu: every config struct (f32 only).
#include "forward_launch.h"

#include "forward_f32.cu"

using namespace fusedrop::forward;

void register_kernels() {
    HARNESS_FORWARD(Simt128x128, simt128x128, f32, float)
    HARNESS_FORWARD(Simt64x64, simt64x64, f32, float)
    HARNESS_FORWARD(Simt64x32, simt64x32, f32, float)
}
