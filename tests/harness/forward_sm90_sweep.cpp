// Harness driver for kernels/forward_sm90_sweep.cu: every tuning variant of the Hopper forward,
// f16 and bf16, launched as forward_sm90_launch.h describes.
#include "forward_sm90_launch.h"

#include "forward_sm90_sweep.cu"

using namespace fusedrop::forward;

namespace harness {

template <class Config, typename T>
void run_forward_sm90_sweep(const Request& req,
                            void (*kernel)(const CUtensorMap, const CUtensorMap, const CUtensorMap,
                                           const T*, T*, long long, long long, long long, int,
                                           fusedrop::MaskParams),
                            const char* name) {
    const Sm90Maps<Config, T> maps = encode_sm90_maps<Config, T>(req);
    fusedrop::host::launch(name, kernel, sm90_launch_config<Config>(req), maps.x, maps.w, maps.y,
                           req.ptr<const T>("b"), req.ptr<T>("y"), req.i64("m"), req.i64("n"),
                           req.i64("k"), (int)req.i64("relu"), req.mp);
}

}  // namespace harness

#define HARNESS_FORWARD_SM90_SWEEP(CONFIG, NAME, SUFFIX, T)                                    \
    harness::registry()["fusedrop_forward_sweep_" #NAME "_" #SUFFIX] =                         \
        [](const harness::Request& q) {                                                        \
            harness::run_forward_sm90_sweep<CONFIG, T>(                                        \
                q, fusedrop_forward_sweep_##NAME##_##SUFFIX,                                   \
                "fusedrop_forward_sweep_" #NAME "_" #SUFFIX);                                  \
        };

#define HARNESS_FORWARD_SM90_SWEEP_TYPES(CONFIG, NAME)                 \
    HARNESS_FORWARD_SM90_SWEEP(CONFIG, NAME, f16, __half)              \
    HARNESS_FORWARD_SM90_SWEEP(CONFIG, NAME, bf16, __nv_bfloat16)

void register_kernels() {
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Stages3, wg128x256_st3)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256TmaStore, wg128x256_tmastore)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Multicast2, wg128x256_mc2)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Multicast2TmaStore, wg128x256_mc2_tmastore)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x128TmaStore, wg128x128_tmastore)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x128Multicast2, wg128x128_mc2)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep64x256PingPong, wg64x256_pp)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep64x256PingPongTmaStore, wg64x256_pp_tmastore)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Group4, wg128x256_g4)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Group16, wg128x256_g16)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x128Group16, wg128x128_g16)
    HARNESS_FORWARD_SM90_SWEEP_TYPES(Sweep128x256Unpaired, wg128x256_unpaired)
}
