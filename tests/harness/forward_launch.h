// Launching a forward kernel (kernels/forward_*.cu) from its config struct, as the Rust wrapper
// does: grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), grid_y), 1), block = kThreads, dynamic
// shared memory = kSmemBytes, where the request's optional grid_y (default 65535) folds the row
// tiles into fewer grid rows (gemm/tile_scheduler.cuh).
#pragma once

#include "driver.h"

namespace harness {

template <class Config, typename T>
void run_forward(const Request& req,
                 void (*kernel)(const T*, const T*, const T*, T*, long long, long long, long long,
                                int, fusedrop::MaskParams),
                 const char* name) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const long long row_tiles = (m + Config::kBlockM - 1) / Config::kBlockM;
    const long long grid_y = std::min<long long>(row_tiles, req.i64_or("grid_y", 65535));
    const dim3 grid(ceil_div(n, Config::kBlockN), (unsigned)grid_y, 1);
    fusedrop::host::launch(name, kernel, config(req, grid, Config::kThreads, Config::kSmemBytes),
                           req.ptr<const T>("x"), req.ptr<const T>("w"), req.ptr<const T>("b"),
                           req.ptr<T>("y"), m, n, k, (int)req.i64("relu"), req.mp);
}

}  // namespace harness

// Registers fusedrop_forward_<NAME>_<SUFFIX> with config CONFIG and element type T.
#define HARNESS_FORWARD(CONFIG, NAME, SUFFIX, T)                                             \
    harness::registry()["fusedrop_forward_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                      \
            harness::run_forward<CONFIG, T>(q, fusedrop_forward_##NAME##_##SUFFIX,           \
                                            "fusedrop_forward_" #NAME "_" #SUFFIX);          \
        };
