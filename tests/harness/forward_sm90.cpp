// Harness driver for kernels/forward_sm90.cu: every config, f16 and bf16, launched from the
// request's plan (src/cuda/forward.rs, ForwardConfig::launch_plan): X's and W's tensor maps, the
// persistent grid of whole clusters.
#include "driver.h"

#include "forward_sm90.cu"

using namespace fusedrop::forward;

#define HARNESS_FORWARD_SM90(CONFIG, NAME)                                          \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_f16, CONFIG::kClusterBlocks)         \
    HARNESS_PLANNED(fusedrop_forward_##NAME##_bf16, CONFIG::kClusterBlocks)

void register_kernels() {
    HARNESS_FORWARD_SM90(Wg128x256, wg128x256)
    HARNESS_FORWARD_SM90(Wg128x128, wg128x128)
    HARNESS_FORWARD_SM90(Wg64x128, wg64x128)
    HARNESS_FORWARD_SM90(Wg64x128Split2, wg64x128s2)
    HARNESS_FORWARD_SM90(Wg64x128Split4, wg64x128s4)
    HARNESS_FORWARD_SM90(Wg128x128Split2, wg128x128s2)
    HARNESS_FORWARD_SM90(Wg128x128Split4, wg128x128s4)
}
