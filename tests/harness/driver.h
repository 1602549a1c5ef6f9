// The common part of every harness driver (tests/harness/*.cpp): reads launch requests written by
// tests/kernels_on_cpu.rs, runs the kernel through kernels/host/cuda_host.h, writes the outputs.
//
// Usage: <driver> <request dir>...
// Each request dir holds `request.txt`, one `key value...` per line:
//   kernel <name>                  the entry point to run (must be registered by the driver)
//   schedule <u64>                 the harness's schedule seed
//   i64 <name> <value>             an integer argument (m, n, k, relu, accumulate, grid_x, ...)
//   mp <seed> <subsequence> <threshold> <row_offset> <col_offset> <n_global> <scale_bits>
//      <device_seed>
//                                  MaskParams; device_seed 1 passes (seed, subsequence) through a
//                                  seed_subsequence buffer and garbage in the by-value fields
//   buffer <name> <bytes> <misalign> <output>
//                                  <name>.bin holds the initial bytes; the kernel receives a
//                                  pointer `misalign` bytes past a 16-byte aligned allocation of
//                                  exactly misalign + bytes bytes; output 1 writes <name>.out
//   null <name>                    the argument <name> is a null pointer
//   record <name>                  MaskParams::record points at buffer <name> (two u64)
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

struct Request {
    std::string dir;
    std::string kernel;
    uint64_t schedule = 0;
    std::map<std::string, long long> ints;
    std::map<std::string, std::unique_ptr<Buffer>> buffers;
    std::map<std::string, bool> nulls;
    fusedrop::MaskParams mp{};
    uint64_t seed_subsequence[2] = {0, 0};
    std::string record;

    long long i64(const std::string& key) const {
        auto it = ints.find(key);
        if (it == ints.end()) die(dir + ": missing integer argument " + key);
        return it->second;
    }
    long long i64_or(const std::string& key, long long fallback) const {
        auto it = ints.find(key);
        return it == ints.end() ? fallback : it->second;
    }
    // Whether the request names a buffer `name`.
    bool has(const std::string& name) const { return buffers.count(name) != 0; }
    // The typed pointer for argument `name`: a buffer, or null when the request says so.
    template <typename T>
    T* ptr(const std::string& name) const {
        if (nulls.count(name)) return nullptr;
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
        if (key == "kernel") {
            words >> req.kernel;
        } else if (key == "schedule") {
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
        } else if (key == "record") {
            words >> req.record;
        } else if (key == "null") {
            std::string name;
            words >> name;
            req.nulls[name] = true;
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

using Runner = std::function<void(const Request&)>;

inline std::map<std::string, Runner>& registry() {
    static std::map<std::string, Runner> r;
    return r;
}

inline unsigned ceil_div(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

inline fusedrop::host::LaunchConfig config(const Request& req, dim3 grid, unsigned threads,
                                           size_t smem) {
    fusedrop::host::LaunchConfig cfg;
    cfg.grid = grid;
    cfg.block = dim3(threads, 1, 1);
    cfg.smem_bytes = smem;
    cfg.schedule_seed = req.schedule;
    cfg.ldmatrix_conflict_free = true;
    return cfg;
}

}  // namespace harness

// Each driver defines this: registry()[name] = runner for every kernel it can launch.
void register_kernels();

int main(int argc, char** argv) {
    register_kernels();
    for (int i = 1; i < argc; ++i) {
        harness::Request req = harness::parse(argv[i]);
        auto it = harness::registry().find(req.kernel);
        if (it == harness::registry().end())
            harness::die(req.dir + ": kernel " + req.kernel + " is not registered in this driver");
        it->second(req);
        for (const auto& [name, buf] : req.buffers) {
            if (!buf->output) continue;
            std::ofstream out(req.dir + "/" + name + ".out", std::ios::binary);
            out.write(reinterpret_cast<const char*>(buf->data), (std::streamsize)buf->bytes);
            if (!out) harness::die("cannot write " + req.dir + "/" + name + ".out");
        }
    }
    return 0;
}
