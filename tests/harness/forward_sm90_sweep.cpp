// Harness driver for kernels/forward_sm90_sweep.cu: every tuning variant of the Hopper forward,
// f16 and bf16, launched from the request's plan (src/cuda/forward.rs, forward_sweep_plan).
#include "driver.h"

#include "forward_sm90_sweep.cu"

using namespace fusedrop::forward;

#define HARNESS_FORWARD_SM90_SWEEP(CONFIG, NAME)                                           \
    HARNESS_PLANNED(fusedrop_forward_sweep_##NAME##_f16, CONFIG::kClusterBlocks)          \
    HARNESS_PLANNED(fusedrop_forward_sweep_##NAME##_bf16, CONFIG::kClusterBlocks)

void register_kernels() {
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256Stages3, wg128x256_st3)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256TmaStore, wg128x256_tmastore)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256Multicast2, wg128x256_mc2)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256Multicast2TmaStore, wg128x256_mc2_tmastore)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x128TmaStore, wg128x128_tmastore)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x128Multicast2, wg128x128_mc2)
    HARNESS_FORWARD_SM90_SWEEP(Sweep64x256PingPong, wg64x256_pp)
    HARNESS_FORWARD_SM90_SWEEP(Sweep64x256PingPongTmaStore, wg64x256_pp_tmastore)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x128PingPong, wg128x128_pp)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x128PingPongTmaStore, wg128x128_pp_tmastore)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256Group4, wg128x256_g4)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256Group16, wg128x256_g16)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x128Group16, wg128x128_g16)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256Unpaired, wg128x256_unpaired)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x256StreamK, wg128x256_sk)
    HARNESS_FORWARD_SM90_SWEEP(Sweep128x128StreamK, wg128x128_sk)
}
