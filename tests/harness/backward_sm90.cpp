// Harness driver for kernels/backward_sm90.cu: every config struct, f16 and bf16. The tensor
// maps are encoded as src/cuda/tensor_map.rs encodes them on the GPU path (128-byte swizzle):
//   dX: dY and Y inner n, outer m, box 64 x kBlockM; W inner k, outer n, box 64 x 64;
//   dW: dY and Y inner n, outer m, box 64 x 64;      X inner k, outer m, box 64 x 64.
// Without ReLU the kernel reads no Y; its map is then dY's (as on the GPU path). The grid is
// persistent: the request's optional `grid_x` (default 3) sets the number of blocks (split-K
// configs: of clusters of kSplits blocks), capped at the tile count, so blocks walk several
// tiles and share the ring across them.
#include "driver.h"

#include "backward_sm90.cu"

using namespace fusedrop::backward;

namespace harness {

template <typename T>
CUtensorMap encode(const Request& req, const char* what, const T* base, long long inner,
                   long long outer, int box_outer) {
    CUtensorMap map;
    std::string why;
    if (fusedrop::host::encode_tensor_map_2d(&map, 2, base, inner, outer, inner * 2, 64,
                                              box_outer, 128, &why) != CUDA_SUCCESS)
        die(req.dir + ": " + what + "'s tensor map: " + why);
    return map;
}

// The launch of a config over `tiles` tiles: grid_x blocks (or clusters), capped at the tiles.
template <class Config>
fusedrop::host::LaunchConfig persistent_launch(const Request& req, long long tiles) {
    const long long units = std::max<long long>(1, std::min(tiles, req.i64_or("grid_x", 3)));
    fusedrop::host::LaunchConfig cfg =
        config(req, dim3((unsigned)(units * Config::kSplits), 1, 1), Config::kThreads,
               Config::kSmemBytes);
    cfg.cluster = Config::kSplits;
    return cfg;
}

template <class Config, typename T>
void run_backward_sm90_dx(const Request& req,
                          void (*kernel)(const CUtensorMap, const CUtensorMap, const CUtensorMap,
                                         T*, long long, long long, long long, int, int,
                                         fusedrop::MaskParams),
                          const char* name) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const int relu = (int)req.i64("relu");
    const T* dy = req.ptr<const T>("dy");
    const CUtensorMap map_dy = encode(req, "dY", dy, n, m, Config::kBlockM);
    const CUtensorMap map_y =
        encode(req, "Y", relu ? req.ptr<const T>("y") : dy, n, m, Config::kBlockM);
    const CUtensorMap map_w = encode(req, "W", req.ptr<const T>("w"), k, n, 64);
    const long long tiles = (long long)ceil_div(m, Config::kBlockM) * ceil_div(k, Config::kBlockN);
    fusedrop::host::launch(
        name, kernel, persistent_launch<Config>(req, tiles), map_dy, map_y, map_w, req.ptr<T>("dx"), m, n, k, relu, (int)req.i64("accumulate"),
        req.mp);
}

template <class Config, typename T>
void run_backward_sm90_dw(const Request& req,
                          void (*kernel)(const CUtensorMap, const CUtensorMap, const CUtensorMap,
                                         T*, T*, long long, long long, long long, int, int,
                                         fusedrop::MaskParams),
                          const char* name) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const int relu = (int)req.i64("relu");
    const T* dy = req.ptr<const T>("dy");
    const CUtensorMap map_dy = encode(req, "dY", dy, n, m, 64);
    const CUtensorMap map_y = encode(req, "Y", relu ? req.ptr<const T>("y") : dy, n, m, 64);
    const CUtensorMap map_x = encode(req, "X", req.ptr<const T>("x"), k, m, 64);
    const long long tiles = (long long)ceil_div(n, Config::kBlockM) * ceil_div(k, Config::kBlockN);
    fusedrop::host::launch(
        name, kernel, persistent_launch<Config>(req, tiles), map_dy, map_y, map_x, req.ptr<T>("dw"), req.ptr<T>("db"), m, n, k, relu,
        (int)req.i64("accumulate"), req.mp);
}

}  // namespace harness

#define HARNESS_BACKWARD_SM90(CONFIG, NAME, SUFFIX, T)                                           \
    harness::registry()["fusedrop_backward_dx_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                          \
            harness::run_backward_sm90_dx<CONFIG, T>(q, fusedrop_backward_dx_##NAME##_##SUFFIX,  \
                                                     "fusedrop_backward_dx_" #NAME "_" #SUFFIX); \
        };                                                                                       \
    harness::registry()["fusedrop_backward_dw_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                          \
            harness::run_backward_sm90_dw<CONFIG, T>(q, fusedrop_backward_dw_##NAME##_##SUFFIX,  \
                                                     "fusedrop_backward_dw_" #NAME "_" #SUFFIX); \
        };

void register_kernels() {
    HARNESS_BACKWARD_SM90(Wg128x128, wg128x128, f16, __half)
    HARNESS_BACKWARD_SM90(Wg128x128, wg128x128, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_SM90(Wg128x256, wg128x256, f16, __half)
    HARNESS_BACKWARD_SM90(Wg128x256, wg128x256, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_SM90(Wg128x128Split2, wg128x128s2, f16, __half)
    HARNESS_BACKWARD_SM90(Wg128x128Split2, wg128x128s2, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_SM90(Wg128x128Split4, wg128x128s4, f16, __half)
    HARNESS_BACKWARD_SM90(Wg128x128Split4, wg128x128s4, bf16, __nv_bfloat16)
    HARNESS_BACKWARD_SM90(Wg128x128Split8, wg128x128s8, f16, __half)
    HARNESS_BACKWARD_SM90(Wg128x128Split8, wg128x128s8, bf16, __nv_bfloat16)
}
