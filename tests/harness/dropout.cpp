// Harness driver for kernels/dropout.cu: fusedrop_dropout_{f32,f16,bf16}(x, y, m, n, mp), with x
// the request's buffer x (out of place) or y again when there is none (in place), launched as
// src/cuda/dropout.rs does (256 threads, one thread per Philox call) unless the request gives
// grid_x (any grid is correct: the kernel loops grid-stride).
#include "driver.h"

#include "dropout.cu"

template <typename T>
static void run(const harness::Request& req,
                void (*kernel)(const T*, T*, long long, long long, fusedrop::MaskParams),
                const char* name) {
    const long long m = req.i64("m"), n = req.i64("n");
    const long long calls = m * (n / 4 + 2);
    const long long blocks = std::min<long long>(std::max<long long>((calls + 255) / 256, 1),
                                                 65535LL * 8);
    const unsigned grid_x = (unsigned)req.i64_or("grid_x", blocks);
    fusedrop::host::launch(name, kernel, harness::config(req, dim3(grid_x), 256, 0),
                           req.has("x") ? req.ptr<const T>("x") : req.ptr<const T>("y"),
                           req.ptr<T>("y"), m, n, req.mp);
}

void register_kernels() {
    auto& r = harness::registry();
    r["fusedrop_dropout_f32"] = [](const harness::Request& q) {
        run<float>(q, fusedrop_dropout_f32, "fusedrop_dropout_f32");
    };
    r["fusedrop_dropout_f16"] = [](const harness::Request& q) {
        run<__half>(q, fusedrop_dropout_f16, "fusedrop_dropout_f16");
    };
    r["fusedrop_dropout_bf16"] = [](const harness::Request& q) {
        run<__nv_bfloat16>(q, fusedrop_dropout_bf16, "fusedrop_dropout_bf16");
    };
}
