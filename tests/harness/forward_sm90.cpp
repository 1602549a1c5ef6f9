// Harness driver for kernels/forward_sm90.cu: every config struct, f16 and bf16, launched as
// forward_sm90_launch.h describes.
#include "forward_sm90_launch.h"

#include "forward_sm90.cu"

using namespace fusedrop::forward;

namespace harness {

template <class Config, typename T>
void run_forward_sm90(const Request& req,
                      void (*kernel)(const CUtensorMap, const CUtensorMap, const T*, T*,
                                     long long, long long, long long, int, fusedrop::MaskParams),
                      const char* name) {
    const Sm90Maps<Config, T> maps = encode_sm90_maps<Config, T>(req);
    fusedrop::host::launch(name, kernel, sm90_launch_config<Config>(req), maps.x, maps.w,
                           req.ptr<const T>("b"), req.ptr<T>("y"), req.i64("m"), req.i64("n"),
                           req.i64("k"), (int)req.i64("relu"), req.mp);
}

}  // namespace harness

#define HARNESS_FORWARD_SM90(CONFIG, NAME, SUFFIX, T)                                        \
    harness::registry()["fusedrop_forward_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                      \
            harness::run_forward_sm90<CONFIG, T>(q, fusedrop_forward_##NAME##_##SUFFIX,      \
                                                 "fusedrop_forward_" #NAME "_" #SUFFIX);     \
        };

void register_kernels() {
    HARNESS_FORWARD_SM90(Wg128x256, wg128x256, f16, __half)
    HARNESS_FORWARD_SM90(Wg128x256, wg128x256, bf16, __nv_bfloat16)
    HARNESS_FORWARD_SM90(Wg128x128, wg128x128, f16, __half)
    HARNESS_FORWARD_SM90(Wg128x128, wg128x128, bf16, __nv_bfloat16)
    HARNESS_FORWARD_SM90(Wg64x128, wg64x128, f16, __half)
    HARNESS_FORWARD_SM90(Wg64x128, wg64x128, bf16, __nv_bfloat16)
    HARNESS_FORWARD_SM90(Wg64x128Split2, wg64x128s2, f16, __half)
    HARNESS_FORWARD_SM90(Wg64x128Split2, wg64x128s2, bf16, __nv_bfloat16)
    HARNESS_FORWARD_SM90(Wg64x128Split4, wg64x128s4, f16, __half)
    HARNESS_FORWARD_SM90(Wg64x128Split4, wg64x128s4, bf16, __nv_bfloat16)
    HARNESS_FORWARD_SM90(Wg128x128Split2, wg128x128s2, f16, __half)
    HARNESS_FORWARD_SM90(Wg128x128Split2, wg128x128s2, bf16, __nv_bfloat16)
    HARNESS_FORWARD_SM90(Wg128x128Split4, wg128x128s4, f16, __half)
    HARNESS_FORWARD_SM90(Wg128x128Split4, wg128x128s4, bf16, __nv_bfloat16)
}
