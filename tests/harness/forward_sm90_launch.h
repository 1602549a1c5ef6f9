// Launching a Hopper forward kernel (kernels/forward_sm90.cuh) from its config struct, as
// src/cuda/forward.rs does: the tensor maps encoded as src/cuda/tensor_map.rs encodes them
// (inner dimension k, 128-byte swizzle, boxes of 64 x kBlockM for X and 64 x kBlockN /
// kMulticast for W; for a TMA-store config Y's map, inner dimension n, boxes of 64 x 64), and a
// persistent grid: the request's optional `blocks` (default 3) sets the number of clusters of
// kClusterBlocks blocks (split-K or W multicast; 1 block each otherwise), capped at the count of
// the clusters' tiles, so blocks walk several tiles and share the ring across them.
#pragma once

#include "driver.h"

namespace harness {

template <class Config, typename T>
struct Sm90Maps {
    CUtensorMap x, w, y;
};

template <class Config, typename T>
Sm90Maps<Config, T> encode_sm90_maps(const Request& req) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    Sm90Maps<Config, T> maps;
    memset(&maps.y, 0, sizeof maps.y);
    std::string why;
    if (fusedrop::host::encode_tensor_map_2d(&maps.x, 2, req.ptr<const T>("x"), k, m, k * 2, 64,
                                              Config::kBlockM, 128, &why) != CUDA_SUCCESS)
        die(req.dir + ": X's tensor map: " + why);
    if (fusedrop::host::encode_tensor_map_2d(&maps.w, 2, req.ptr<const T>("w"), k, n, k * 2, 64,
                                              Config::kBlockN / Config::kMulticast, 128,
                                              &why) != CUDA_SUCCESS)
        die(req.dir + ": W's tensor map: " + why);
    if (Config::kTmaStore &&
        fusedrop::host::encode_tensor_map_2d(&maps.y, 2, req.ptr<T>("y"), n, m, n * 2, 64, 64,
                                              128, &why) != CUDA_SUCCESS)
        die(req.dir + ": Y's tensor map (the TMA-store configs need n % 8 == 0 and Y 16-byte "
                      "aligned): " + why);
    return maps;
}

template <class Config>
fusedrop::host::LaunchConfig sm90_launch_config(const Request& req) {
    const long long m = req.i64("m"), n = req.i64("n");
    const long long cluster_rows = (long long)Config::kBlockM * Config::kMulticast;
    const long long tiles = (long long)ceil_div(m, cluster_rows) * ceil_div(n, Config::kBlockN);
    const long long clusters = std::max<long long>(1, std::min(tiles, req.i64_or("blocks", 3)));
    fusedrop::host::LaunchConfig cfg =
        config(req, dim3((unsigned)(clusters * Config::kClusterBlocks), 1, 1), Config::kThreads,
               Config::kSmemBytes);
    cfg.cluster = Config::kClusterBlocks;
    return cfg;
}

}  // namespace harness
