// Launching a backward kernel (kernels/backward*.cu) from its config struct, as
// src/cuda/backward.rs does: kThreads threads, kSmemBytes of dynamic shared memory, a 1-D grid of
// min(tiles, kMaxBlocks) blocks, or the request's grid_x (every backward kernel loops
// grid-stride over its output tiles, so any grid >= 1 is correct), with
//   dX: tiles = ceil(m / kBlockM) * ceil(k / kBlockN)
//   dW: tiles = ceil(n / kBlockM) * ceil(k / kBlockN), or ceil(n / kBlockM) when dw is null,
// times the request's `splits` for the classic kernels' split-K (run_backward_classic).
#pragma once

#include "driver.h"
#include "fusedrop_launch_table.h"

namespace harness {

// The kernel's grid: min(work items, kMaxBlocks), or the request's grid_x.
template <class Config>
long long backward_grid(const Request& req, long long items) {
    return req.i64_or("grid_x", std::min<long long>(items, Config::kMaxBlocks));
}

// `extra`: the arguments after MaskParams (the classic kernels' split-K pair), `splits`: the
// blocks per output tile they ask for.
template <class Config, typename T, class... Extra>
void run_backward_dx(const Request& req,
                     void (*kernel)(const T*, const T*, const T*, T*, long long, long long,
                                    long long, int, int, fusedrop::MaskParams, Extra...),
                     const char* name, long long splits, Extra... extra) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const long long tiles =
        (long long)ceil_div(m, Config::kBlockM) * ceil_div(k, Config::kBlockN);
    fusedrop::host::launch(
        name, kernel,
        config(req, dim3((unsigned)backward_grid<Config>(req, tiles * splits)), Config::kThreads,
               Config::kSmemBytes),
        req.ptr<const T>("dy"), req.ptr<const T>("y"), req.ptr<const T>("w"), req.ptr<T>("dx"), m,
        n, k, (int)req.i64("relu"), (int)req.i64("accumulate"), req.mp, extra...);
}

template <class Config, typename T, class... Extra>
void run_backward_dw(const Request& req,
                     void (*kernel)(const T*, const T*, const T*, T*, T*, long long, long long,
                                    long long, int, int, fusedrop::MaskParams, Extra...),
                     const char* name, long long splits, Extra... extra) {
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    const bool gemm = req.ptr<T>("dw") != nullptr;
    const long long tiles =
        (long long)ceil_div(n, Config::kBlockM) * (gemm ? ceil_div(k, Config::kBlockN) : 1);
    fusedrop::host::launch(
        name, kernel,
        config(req, dim3((unsigned)backward_grid<Config>(req, tiles * splits)), Config::kThreads,
               Config::kSmemBytes),
        req.ptr<const T>("dy"), req.ptr<const T>("y"), req.ptr<const T>("x"), req.ptr<T>("dw"),
        req.ptr<T>("db"), m, n, k, (int)req.i64("relu"), (int)req.i64("accumulate"), req.mp,
        extra...);
}

// The classic kernels (mma.sync: kernels/backward_tc.cu; SIMT: kernels/backward_simt.cu), as
// src/cuda/backward.rs queues them: with the
// request's `splits` (default 1) and `partial` buffer, and for splits > 1 the split sum over
// each gradient after the product (split_sum_threads threads, grid_x blocks or enough for one
// element per thread).
template <class Config, typename T, bool kWeightGrad, class Kernel, class Sum>
void run_backward_classic(const Request& req, Kernel kernel, const char* name, Sum sum,
                          const char* sum_name) {
    const int splits = (int)req.i64_or("splits", 1);
    float* partial = req.has("partial") ? req.ptr<float>("partial") : nullptr;
    if constexpr (kWeightGrad) {
        run_backward_dw<Config, T>(req, kernel, name, splits, partial, splits);
    } else {
        run_backward_dx<Config, T>(req, kernel, name, splits, partial, splits);
    }
    if (splits <= 1) return;
    const long long m = req.i64("m"), n = req.i64("n"), k = req.i64("k");
    auto add = [&](T* out, const float* shares, long long count) {
        const long long grid = req.i64_or(
            "grid_x", ceil_div(count, fusedrop::launch::split_sum_threads));
        fusedrop::host::launch(
            sum_name, sum,
            config(req, dim3((unsigned)std::max<long long>(grid, 1)),
                   fusedrop::launch::split_sum_threads, 0),
            shares, out, count, splits, req.mp.scale, (int)req.i64("accumulate"));
    };
    if constexpr (!kWeightGrad) {
        add(req.ptr<T>("dx"), partial, m * k);
        return;
    }
    if (req.ptr<T>("dw") != nullptr) add(req.ptr<T>("dw"), partial, n * k);
    if (req.ptr<T>("db") != nullptr) add(req.ptr<T>("db"), partial + (long long)splits * n * k, n);
}

}  // namespace harness

// Registers fusedrop_backward_{dx,dw}_<NAME>_<SUFFIX> of a classic kernel file with config
// CONFIG and element type T: they take the split-K pair and are followed by
// fusedrop_backward_split_sum_<SUFFIX> when the request splits.
#define HARNESS_BACKWARD_CLASSIC(CONFIG, NAME, SUFFIX, T)                                          \
    harness::registry()["fusedrop_backward_dx_" #NAME "_" #SUFFIX] =                          \
        [](const harness::Request& q) {                                                       \
            harness::run_backward_classic<CONFIG, T, false>(                                       \
                q, fusedrop_backward_dx_##NAME##_##SUFFIX,                                    \
                "fusedrop_backward_dx_" #NAME "_" #SUFFIX, fusedrop_backward_split_sum_##SUFFIX, \
                "fusedrop_backward_split_sum_" #SUFFIX);                                      \
        };                                                                                    \
    harness::registry()["fusedrop_backward_dw_" #NAME "_" #SUFFIX] =                          \
        [](const harness::Request& q) {                                                       \
            harness::run_backward_classic<CONFIG, T, true>(                                        \
                q, fusedrop_backward_dw_##NAME##_##SUFFIX,                                    \
                "fusedrop_backward_dw_" #NAME "_" #SUFFIX, fusedrop_backward_split_sum_##SUFFIX, \
                "fusedrop_backward_split_sum_" #SUFFIX);                                      \
        };
