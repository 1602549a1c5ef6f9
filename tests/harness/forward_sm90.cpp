// Harness driver for kernels/forward_sm90.cu: every config struct, f16 and bf16. The tensor maps
// are encoded here as src/cuda/tensor_map.rs encodes them on the GPU path (inner dimension k,
// 128-byte swizzle, boxes of 64 x kBlockM and 64 x kBlockN). The grid is persistent: the
// request's optional `blocks` (default 3) sets the number of blocks (split-K configs: of
// clusters of kSplits blocks), capped at the tile count, so blocks walk several tiles and share
// the ring across them.
#include "driver.h"

#include "forward_sm90.cu"

using namespace fusedrop::forward;

namespace harness {

template <class Config, typename T>
void run_forward_sm90(const Request& req,
                      void (*kernel)(const CUtensorMap, const CUtensorMap, const T*, T*,
                                     long long, long long, long long, int, fusedrop::MaskParams),
                      const char* name) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const T* x = req.ptr<const T>("x");
    const T* w = req.ptr<const T>("w");
    CUtensorMap map_x, map_w;
    std::string why;
    if (fusedrop::host::encode_tensor_map_2d(&map_x, 2, x, k, m, k * 2, 64, Config::kBlockM,
                                              128, &why) != CUDA_SUCCESS)
        die(req.dir + ": X's tensor map: " + why);
    if (fusedrop::host::encode_tensor_map_2d(&map_w, 2, w, k, n, k * 2, 64, Config::kBlockN,
                                              128, &why) != CUDA_SUCCESS)
        die(req.dir + ": W's tensor map: " + why);
    const long long tiles = (long long)ceil_div(m, Config::kBlockM) * ceil_div(n, Config::kBlockN);
    const long long units = std::max<long long>(1, std::min(tiles, req.i64_or("blocks", 3)));
    fusedrop::host::LaunchConfig cfg =
        config(req, dim3((unsigned)(units * Config::kSplits), 1, 1), Config::kThreads,
               Config::kSmemBytes);
    cfg.cluster = Config::kSplits;
    fusedrop::host::launch(name, kernel, cfg, map_x, map_w, req.ptr<const T>("b"), req.ptr<T>("y"), m, n, k,
                           (int)req.i64("relu"), req.mp);
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
