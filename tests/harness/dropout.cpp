// Harness driver for kernels/dropout.cu: fusedrop_dropout_{f32,f16,bf16}(input, output, m, n,
// mp), launched from the request's plan (src/cuda/dropout.rs, dropout_plan: in place on y, out
// of place from x into y, or the backward's pre-pass from dy into the workspace ws).
#include "driver.h"

#include "dropout.cu"

void register_kernels() {
    HARNESS_PLANNED(fusedrop_dropout_f32, 1)
    HARNESS_PLANNED(fusedrop_dropout_f16, 1)
    HARNESS_PLANNED(fusedrop_dropout_bf16, 1)
}
