// Launching a forward kernel (kernels/forward_*.cu) from its config struct, as the Rust wrapper
// does: grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), grid_y), 1), block = kThreads, dynamic
// shared memory = kSmemBytes, where the request's optional grid_y (default 65535) folds the row
// tiles into fewer grid rows (gemm/tile_scheduler.cuh). A config with a kernel for aligned operands
// (forward_tc.cu) is registered under the general kernel's name and picks between the two as
// src/cuda/forward.rs does: the aligned kernel when X and W start 16-byte aligned and k is a
// multiple of 8.
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

// Whether a kernel for aligned operands may take the request: X and W start 16-byte aligned and
// k is a multiple of 8.
template <typename T>
bool operands_aligned(const Request& req) {
    const auto at16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return req.i64("k") % 8 == 0 && at16(req.ptr<const T>("x")) && at16(req.ptr<const T>("w"));
}

// The host's choice between a config's general kernel and its kernel for aligned operands.
template <class Config, typename T>
void run_forward_dispatch(const Request& req,
                          void (*general)(const T*, const T*, const T*, T*, long long, long long,
                                          long long, int, fusedrop::MaskParams),
                          void (*aligned)(const T*, const T*, const T*, T*, long long, long long,
                                          long long, int, fusedrop::MaskParams),
                          const std::string& name) {
    if (operands_aligned<T>(req)) {
        const std::string aligned_name = name.substr(0, name.rfind('_')) + "_aligned" +
                                         name.substr(name.rfind('_'));
        run_forward<Config, T>(req, aligned, aligned_name.c_str());
    } else {
        run_forward<Config, T>(req, general, name.c_str());
    }
}

// A kernel for aligned operands only (forward_tc_sweep.cu): refuses any other request, as its
// callers must.
template <class Config, typename T>
void run_forward_aligned(const Request& req,
                         void (*kernel)(const T*, const T*, const T*, T*, long long, long long,
                                        long long, int, fusedrop::MaskParams),
                         const char* name) {
    if (!operands_aligned<T>(req)) {
        die(req.dir + ": " + name + " takes X and W 16-byte aligned with k a multiple of 8 only");
    }
    run_forward<Config, T>(req, kernel, name);
}

}  // namespace harness

// Registers fusedrop_forward_<NAME>_<SUFFIX> with config CONFIG and element type T.
#define HARNESS_FORWARD(CONFIG, NAME, SUFFIX, T)                                             \
    harness::registry()["fusedrop_forward_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                      \
            harness::run_forward<CONFIG, T>(q, fusedrop_forward_##NAME##_##SUFFIX,           \
                                            "fusedrop_forward_" #NAME "_" #SUFFIX);          \
        };

// Registers fusedrop_forward_<NAME>_<SUFFIX> of a config that also has the kernel
// fusedrop_forward_<NAME>_aligned_<SUFFIX>, choosing between them as the host does.
#define HARNESS_FORWARD_DISPATCH(CONFIG, NAME, SUFFIX, T)                                    \
    harness::registry()["fusedrop_forward_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                      \
            harness::run_forward_dispatch<CONFIG, T>(                                        \
                q, fusedrop_forward_##NAME##_##SUFFIX, fusedrop_forward_##NAME##_aligned_##SUFFIX, \
                "fusedrop_forward_" #NAME "_" #SUFFIX);                                      \
        };

// Registers fusedrop_forward_<NAME>_<SUFFIX>, a kernel for aligned operands only.
#define HARNESS_FORWARD_ALIGNED(CONFIG, NAME, SUFFIX, T)                                     \
    harness::registry()["fusedrop_forward_" #NAME "_" #SUFFIX] =                             \
        [](const harness::Request& q) {                                                      \
            harness::run_forward_aligned<CONFIG, T>(q, fusedrop_forward_##NAME##_##SUFFIX,   \
                                                    "fusedrop_forward_" #NAME "_" #SUFFIX);  \
        };
