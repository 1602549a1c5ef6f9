// Harness driver for kernels/backward_sm90.cu: every config, f16 and bf16, dX, dW and dW with
// transform warps, on the unsplit configs dX and dW in one launch, and the TMA-store configs' dX
// and dW, launched from the request's plan (src/cuda/backward.rs, product_plan and
// one_launch_plan: the tensor maps of dY (or the workspace), Y (or dY's again without ReLU) and W
// or X, and the TMA-store kernels' gradient, the persistent grid of whole clusters).
#include "driver.h"

#include "backward_sm90.cu"

using namespace fusedrop::backward;

#define HARNESS_BACKWARD_SM90(CONFIG, NAME)                                                \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_f16, CONFIG::kSplits)                   \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_bf16, CONFIG::kSplits)                  \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_f16, CONFIG::kSplits)                   \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_bf16, CONFIG::kSplits)                  \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_transform_f16, CONFIG::kSplits)         \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_transform_bf16, CONFIG::kSplits)

#define HARNESS_BACKWARD_SM90_TMA_STORE(NAME)                  \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_f16, 1)  \
    HARNESS_PLANNED(fusedrop_backward_dx_##NAME##_bf16, 1) \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_f16, 1)  \
    HARNESS_PLANNED(fusedrop_backward_dw_##NAME##_bf16, 1)

#define HARNESS_BACKWARD_SM90_ONE_LAUNCH(NAME)             \
    HARNESS_PLANNED(fusedrop_backward_dxdw_##NAME##_f16, 1) \
    HARNESS_PLANNED(fusedrop_backward_dxdw_##NAME##_bf16, 1)

void register_kernels() {
    HARNESS_BACKWARD_SM90(Wg128x128, wg128x128)
    HARNESS_BACKWARD_SM90(Wg128x256, wg128x256)
    HARNESS_BACKWARD_SM90_ONE_LAUNCH(wg128x128)
    HARNESS_BACKWARD_SM90_ONE_LAUNCH(wg128x256)
    HARNESS_BACKWARD_SM90_TMA_STORE(wg128x128_tmastore)
    HARNESS_BACKWARD_SM90_TMA_STORE(wg128x256_tmastore)
    HARNESS_BACKWARD_SM90(Wg128x128Split2, wg128x128s2)
    HARNESS_BACKWARD_SM90(Wg128x128Split4, wg128x128s4)
    HARNESS_BACKWARD_SM90(Wg128x128Split8, wg128x128s8)
}
