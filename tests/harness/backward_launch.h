// Launching a backward kernel (kernels/backward*.cu) from its config struct, as
// src/cuda/backward.rs does: kThreads threads, kSmemBytes of dynamic shared memory, a 1-D grid of
// min(tiles, kMaxBlocks) blocks, or the request's grid_x (every backward kernel loops
// grid-stride over its output tiles, so any grid >= 1 is correct), with
//   dX: tiles = ceil(m / kBlockM) * ceil(k / kBlockN)
//   dW: tiles = ceil(n / kBlockM) * ceil(k / kBlockN), or ceil(n / kBlockM) when dw is null.
#pragma once

#include "driver.h"

namespace harness {

template <class Config, typename T>
void run_backward_dx(const Request& req,
                     void (*kernel)(const T*, const T*, const T*, T*, long long, long long,
                                    long long, int, int, fusedrop::MaskParams),
                     const char* name) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const long long tiles =
        (long long)ceil_div(m, Config::kBlockM) * ceil_div(k, Config::kBlockN);
    const long long grid =
        req.i64_or("grid_x", std::min<long long>(tiles, Config::kMaxBlocks));
    fusedrop::host::launch(
        name, kernel, config(req, dim3((unsigned)grid), Config::kThreads, Config::kSmemBytes),
        req.ptr<const T>("dy"), req.ptr<const T>("y"), req.ptr<const T>("w"), req.ptr<T>("dx"), m,
        n, k, (int)req.i64("relu"), (int)req.i64("accumulate"), req.mp);
}

template <class Config, typename T>
void run_backward_dw(const Request& req,
                     void (*kernel)(const T*, const T*, const T*, T*, T*, long long, long long,
                                    long long, int, int, fusedrop::MaskParams),
                     const char* name) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const bool gemm = req.ptr<T>("dw") != nullptr;
    const long long tiles =
        (long long)ceil_div(n, Config::kBlockM) * (gemm ? ceil_div(k, Config::kBlockN) : 1);
    const long long grid =
        req.i64_or("grid_x", std::min<long long>(tiles, Config::kMaxBlocks));
    fusedrop::host::launch(
        name, kernel, config(req, dim3((unsigned)grid), Config::kThreads, Config::kSmemBytes),
        req.ptr<const T>("dy"), req.ptr<const T>("y"), req.ptr<const T>("x"), req.ptr<T>("dw"),
        req.ptr<T>("db"), m, n, k, (int)req.i64("relu"), (int)req.i64("accumulate"), req.mp);
}

}  // namespace harness

// Registers fusedrop_backward_{dx,dw}_<NAME>_<SUFFIX> with config CONFIG and element type T.
#define HARNESS_BACKWARD(CONFIG, NAME, SUFFIX, T)                                            \
    harness::registry()["fusedrop_backward_dx_" #NAME "_" #SUFFIX] =                         \
        [](const harness::Request& q) {                                                      \
            harness::run_backward_dx<CONFIG, T>(q, fusedrop_backward_dx_##NAME##_##SUFFIX,   \
                                                "fusedrop_backward_dx_" #NAME "_" #SUFFIX);  \
        };                                                                                   \
    harness::registry()["fusedrop_backward_dw_" #NAME "_" #SUFFIX] =                         \
        [](const harness::Request& q) {                                                      \
            harness::run_backward_dw<CONFIG, T>(q, fusedrop_backward_dw_##NAME##_##SUFFIX,   \
                                                "fusedrop_backward_dw_" #NAME "_" #SUFFIX);  \
        };
