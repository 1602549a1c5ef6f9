// The common part of every harness driver (tests/harness/*.cpp): reads launch requests written by
// tests/kernels_on_cpu/, runs the launches they plan through kernels/host/cuda_host.h, writes
// the outputs.
//
// Usage: <driver> <request dir>...
// Each request dir holds `request.txt`, one `key value...` per line:
//   schedule <u64>                 the harness's schedule seed
//   i64 <name> <value>             a test's departure from the plan (grid_x, grid_y: below), or
//                                  track_proxy_stores 1: each thread's fence.proxy.async on its
//                                  own (LaunchConfig::track_proxy_stores), or co_resident 1: all
//                                  blocks of each launch at once (LaunchConfig::co_resident)
//   mp <seed> <subsequence> <threshold> <row_offset> <col_offset> <n_global> <scale_bits>
//      <device_seed>
//                                  MaskParams; device_seed 1 passes (seed, subsequence) through a
//                                  seed_subsequence buffer and garbage in the by-value fields
//   buffer <name> <bytes> <misalign> <output>
//                                  <name>.bin holds the initial bytes; the kernel receives a
//                                  pointer `misalign` bytes past a 16-byte aligned allocation of
//                                  exactly misalign + bytes bytes; output 1 writes <name>.out
//   record <name>                  MaskParams::record points at buffer <name> (two u64)
//   launch <function> <gx> <gy> <gz> <threads> <smem> <cluster>
//                                  a launch of the library's plan (src/cuda/launch_plan.rs, as
//                                  the Rust wrapper would queue it): the entry point (registered
//                                  by the driver), its grid, block, dynamic shared memory and
//                                  cluster size; the request's launches run in order
//   arg ptr <name> | arg null | arg wsat <offset> | arg map <name> <rows> <cols> <box_rows> |
//   arg map0 | arg i64 <v> | arg i32 <v> | arg f32 <bits> | arg mask
//                                  the latest launch's arguments, one line each, in order: a
//                                  buffer's pointer, a null pointer, a pointer <offset> bytes into
//                                  buffer ws (the workspace), the TMA map of buffer <name>
//                                  (f16/bf16, row-major [rows, cols], boxes of 64 x box_rows,
//                                  128-byte swizzle), an all-zero map, integers, a float, the
//                                  MaskParams
// Exit status 0 on success; harness errors print a message and exit 3; AddressSanitizer reports
// exit 1.
#pragma once

#include "host/cuda_host.h"
#include "mask.cuh"

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace harness {

[[noreturn]] inline void die(const std::string& msg) {
    fprintf(stderr, "harness driver: %s\n", msg.c_str());
    fflush(stderr);
    _exit(2);
}

struct Buffer {
    unsigned char* base = nullptr;  // the allocation
    unsigned char* data = nullptr;  // what the kernel receives
    size_t bytes = 0;
    bool output = false;
    ~Buffer() { ::operator delete(base, std::align_val_t(16)); }
};

// One planned kernel argument (a request's `arg` line).
struct PlannedArg {
    std::string kind;  // ptr, null, wsat, map, map0, i64, i32, f32, mask
    std::string name;  // the buffer, for ptr and map
    long long value = 0;  // i64, i32, the bits of f32, the offset of wsat
    long long rows = 0, cols = 0, box_rows = 0;  // map
};

// One launch of the plan (a request's `launch` line and the `arg` lines after it).
struct PlannedLaunch {
    std::string function;
    dim3 grid;
    unsigned threads = 0, cluster = 1;
    size_t smem = 0;
    std::vector<PlannedArg> args;
};

struct Request {
    std::string dir;
    uint64_t schedule = 0;
    std::map<std::string, long long> ints;
    std::map<std::string, std::unique_ptr<Buffer>> buffers;
    fusedrop::MaskParams mp{};
    uint64_t seed_subsequence[2] = {0, 0};
    std::string record;
    std::vector<PlannedLaunch> launches;

    long long i64(const std::string& key) const {
        auto it = ints.find(key);
        if (it == ints.end()) die(dir + ": missing integer argument " + key);
        return it->second;
    }
    long long i64_or(const std::string& key, long long fallback) const {
        auto it = ints.find(key);
        return it == ints.end() ? fallback : it->second;
    }
    // The typed pointer to buffer `name`.
    template <typename T>
    T* ptr(const std::string& name) const {
        auto it = buffers.find(name);
        if (it == buffers.end()) die(dir + ": missing buffer " + name);
        return reinterpret_cast<T*>(it->second->data);
    }
};

inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) die("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline Request parse(const std::string& dir) {
    Request req;
    req.dir = dir;
    std::istringstream lines(read_file(dir + "/request.txt"));
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream words(line);
        std::string key;
        if (!(words >> key)) continue;
        if (key == "schedule") {
            words >> req.schedule;
        } else if (key == "i64") {
            std::string name;
            long long v;
            words >> name >> v;
            req.ints[name] = v;
        } else if (key == "mp") {
            uint32_t scale_bits;
            int device_seed;
            words >> req.mp.seed >> req.mp.subsequence >> req.mp.threshold >> req.mp.row_offset >>
                req.mp.col_offset >> req.mp.n_global >> scale_bits >> device_seed;
            memcpy(&req.mp.scale, &scale_bits, 4);
            req.mp.seed_subsequence = nullptr;
            if (device_seed) {
                req.seed_subsequence[0] = req.mp.seed;
                req.seed_subsequence[1] = req.mp.subsequence;
                req.mp.seed = ~req.mp.seed * 0x9E3779B97F4A7C15ull;
                req.mp.subsequence = ~req.mp.subsequence;
                req.mp.seed_subsequence = req.seed_subsequence;
            }
        } else if (key == "buffer") {
            std::string name;
            size_t bytes, misalign;
            int output;
            words >> name >> bytes >> misalign >> output;
            auto buf = std::make_unique<Buffer>();
            const std::string init = read_file(dir + "/" + name + ".bin");
            if (init.size() != bytes) die(dir + ": " + name + ".bin has the wrong size");
            buf->base = static_cast<unsigned char*>(
                ::operator new(misalign + bytes == 0 ? 1 : misalign + bytes, std::align_val_t(16)));
            buf->data = buf->base + misalign;
            buf->bytes = bytes;
            buf->output = output != 0;
            memcpy(buf->data, init.data(), bytes);
            req.buffers[name] = std::move(buf);
        } else if (key == "launch") {
            PlannedLaunch launch;
            words >> launch.function >> launch.grid.x >> launch.grid.y >> launch.grid.z >>
                launch.threads >> launch.smem >> launch.cluster;
            req.launches.push_back(launch);
        } else if (key == "arg") {
            if (req.launches.empty()) die(dir + ": an arg line before any launch line");
            PlannedArg arg;
            words >> arg.kind;
            if (arg.kind == "ptr") {
                words >> arg.name;
            } else if (arg.kind == "map") {
                words >> arg.name >> arg.rows >> arg.cols >> arg.box_rows;
            } else if (arg.kind == "i64" || arg.kind == "i32" || arg.kind == "f32" ||
                       arg.kind == "wsat") {
                words >> arg.value;
            } else if (arg.kind != "null" && arg.kind != "map0" && arg.kind != "mask") {
                die(dir + ": unknown argument kind: " + line);
            }
            req.launches.back().args.push_back(arg);
        } else if (key == "record") {
            words >> req.record;
        } else {
            die(dir + ": unknown request line: " + line);
        }
        if (words.fail()) die(dir + ": malformed request line: " + line);
    }
    req.mp.record = nullptr;
    if (!req.record.empty()) {
        auto it = req.buffers.find(req.record);
        if (it == req.buffers.end() || it->second->bytes != 16)
            die(dir + ": record names no buffer of two u64");
        req.mp.record = reinterpret_cast<uint64_t*>(it->second->data);
    }
    return req;
}

using Runner = std::function<void(const Request&, const PlannedLaunch&)>;

inline std::map<std::string, Runner>& registry() {
    static std::map<std::string, Runner> r;
    return r;
}

inline fusedrop::host::LaunchConfig config(const Request& req, dim3 grid, unsigned threads,
                                           size_t smem) {
    fusedrop::host::LaunchConfig cfg;
    cfg.grid = grid;
    cfg.block = dim3(threads, 1, 1);
    cfg.smem_bytes = smem;
    cfg.schedule_seed = req.schedule;
    cfg.matrix_conflict_free = true;
    // Each thread's fence.proxy.async checked on its own, where the test asks (several times
    // slower: LaunchConfig::track_proxy_stores).
    cfg.track_proxy_stores = req.i64_or("track_proxy_stores", 0) != 0;
    // Every block at once, where the test asks (blocks that wait for each other's global flags).
    cfg.co_resident = req.i64_or("co_resident", 0) != 0;
    return cfg;
}

// The value of planned argument `arg` as a kernel parameter of type P; a kind that cannot be
// such a parameter (an integer where the kernel takes a pointer, a pointer where it takes a map)
// is a harness error, as the wrong argument order would be a fault on the GPU.
template <typename P>
struct FromPlan;

inline void expect_kind(const Request& req, const PlannedArg& arg, size_t index,
                        std::initializer_list<const char*> kinds, const char* parameter) {
    for (const char* kind : kinds)
        if (arg.kind == kind) return;
    die(req.dir + ": planned argument " + std::to_string(index) + " is a " + arg.kind +
        "; the kernel's parameter there is " + parameter);
}

template <typename U>
struct FromPlan<U*> {
    static U* get(const Request& req, const PlannedArg& arg, size_t index) {
        expect_kind(req, arg, index, {"ptr", "null", "wsat"}, "a pointer");
        if (arg.kind == "null") return nullptr;
        if (arg.kind == "ptr") return req.ptr<U>(arg.name);
        auto it = req.buffers.find("ws");
        if (it == req.buffers.end() || arg.value < 0 || (size_t)arg.value > it->second->bytes)
            die(req.dir + ": planned argument " + std::to_string(index) + " points " +
                std::to_string(arg.value) + " bytes into the workspace, which is not there");
        return reinterpret_cast<U*>(it->second->data + arg.value);
    }
};

template <>
struct FromPlan<long long> {
    static long long get(const Request& req, const PlannedArg& arg, size_t index) {
        expect_kind(req, arg, index, {"i64"}, "a long long");
        return arg.value;
    }
};

template <>
struct FromPlan<int> {
    static int get(const Request& req, const PlannedArg& arg, size_t index) {
        expect_kind(req, arg, index, {"i32"}, "an int");
        return (int)arg.value;
    }
};

template <>
struct FromPlan<float> {
    static float get(const Request& req, const PlannedArg& arg, size_t index) {
        expect_kind(req, arg, index, {"f32"}, "a float");
        const uint32_t bits = (uint32_t)arg.value;
        float v;
        memcpy(&v, &bits, 4);
        return v;
    }
};

template <>
struct FromPlan<fusedrop::MaskParams> {
    static fusedrop::MaskParams get(const Request& req, const PlannedArg& arg, size_t index) {
        expect_kind(req, arg, index, {"mask"}, "MaskParams");
        return req.mp;
    }
};

template <>
struct FromPlan<CUtensorMap> {
    static CUtensorMap get(const Request& req, const PlannedArg& arg, size_t index) {
        expect_kind(req, arg, index, {"map", "map0"}, "a CUtensorMap");
        CUtensorMap map;
        memset(&map, 0, sizeof map);
        if (arg.kind == "map0") return map;
        std::string why;
        if (fusedrop::host::encode_tensor_map_2d(
                &map, 2, req.ptr<const unsigned char>(arg.name), (uint64_t)arg.cols,
                (uint64_t)arg.rows, (uint64_t)arg.cols * 2, 64, (uint32_t)arg.box_rows, 128,
                &why) != CUDA_SUCCESS)
            die(req.dir + ": the tensor map of " + arg.name + ": " + why);
        return map;
    }
};

template <typename... P, size_t... I>
std::tuple<std::decay_t<P>...> planned_args(const Request& req, const PlannedLaunch& launch,
                                            std::index_sequence<I...>) {
    return std::tuple<std::decay_t<P>...>(
        FromPlan<std::decay_t<P>>::get(req, launch.args[I], I)...);
}

// Runs `launch` of the request's plan: `kernel`, whose `__cluster_dims__` are `kernel_cluster`
// blocks along x (1 without clusters), on the planned grid, block and shared memory, each planned
// argument converted to the type of the kernel's parameter in that position. A test's departures
// from the plan: an optional `i64 grid_y <g>` caps the grid's y at g, so that a small output
// folds its row tiles as 65535 rows of tiles would (gemm/tile_scheduler.cuh), and `i64 grid_x
// <g>` sets a grid-stride kernel's x (more or less work per block; not for clustered kernels).
template <typename... P>
void launch_planned(const Request& req, const PlannedLaunch& launch, void (*kernel)(P...),
                    unsigned kernel_cluster) {
    const char* name = launch.function.c_str();
    if (launch.args.size() != sizeof...(P))
        die(req.dir + ": the plan gives " + name + " " + std::to_string(launch.args.size()) +
            " arguments; it takes " + std::to_string(sizeof...(P)));
    if (launch.cluster != kernel_cluster)
        die(req.dir + ": the plan launches clusters of " + std::to_string(launch.cluster) + "; " +
            name + " is compiled for clusters of " + std::to_string(kernel_cluster));
    const auto params = planned_args<P...>(req, launch, std::index_sequence_for<P...>{});
    dim3 grid = launch.grid;
    if (req.ints.count("grid_x")) {
        if (kernel_cluster != 1) die(req.dir + ": grid_x for the clustered kernel " + name);
        grid.x = (unsigned)req.i64("grid_x");
    }
    grid.y = (unsigned)std::min<long long>(grid.y, req.i64_or("grid_y", grid.y));
    fusedrop::host::LaunchConfig cfg = config(req, grid, launch.threads, launch.smem);
    cfg.cluster = kernel_cluster;
    std::apply([&](const auto&... args) { fusedrop::host::launch(name, kernel, cfg, args...); },
               params);
}

}  // namespace harness

// Registers the entry point FUNCTION, compiled for clusters of CLUSTER blocks (1 without
// clusters), under its own name, launched from the request's plan.
#define HARNESS_PLANNED(FUNCTION, CLUSTER)                                                    \
    harness::registry()[#FUNCTION] = [](const harness::Request& q,                            \
                                        const harness::PlannedLaunch& launch) {               \
        harness::launch_planned(q, launch, FUNCTION, (CLUSTER));                              \
    };

// Each driver defines this: registry()[name] = runner for every kernel it can launch.
void register_kernels();

int main(int argc, char** argv) {
    register_kernels();
    for (int i = 1; i < argc; ++i) {
        harness::Request req = harness::parse(argv[i]);
        if (req.launches.empty()) harness::die(req.dir + ": the request plans no launch");
        for (const harness::PlannedLaunch& launch : req.launches) {
            auto it = harness::registry().find(launch.function);
            if (it == harness::registry().end())
                harness::die(req.dir + ": kernel " + launch.function +
                             " is not registered in this driver");
            it->second(req, launch);
        }
        for (const auto& [name, buf] : req.buffers) {
            if (!buf->output) continue;
            std::ofstream out(req.dir + "/" + name + ".out", std::ios::binary);
            out.write(reinterpret_cast<const char*>(buf->data), (std::streamsize)buf->bytes);
            if (!out) harness::die("cannot write " + req.dir + "/" + name + ".out");
        }
    }
    return 0;
}
