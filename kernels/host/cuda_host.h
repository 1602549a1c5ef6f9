// The CPU harness: what the host C++ compiler needs to run a kernels/*.cu file unchanged.
//
// Compiled only by the host compiler (g++ -std=c++20, never by nvcc): tests/harness/*.cpp include
// this header and then the real kernel file. See docs/HARNESS.md.
//
// Execution model:
// - One fiber (ucontext) per CUDA thread; the threads of a block run on one OS thread under a
//   deterministic scheduler, and blocks run one after another. The scheduler always resumes the
//   highest-priority runnable thread, priorities being a random permutation of warps (and of lanes
//   within a warp) drawn from the launch's schedule seed: one warp runs as far ahead as it can
//   before the others start, so a missing barrier shows up as stale or poisoned data.
// - `__syncthreads()` is a real barrier over the block's live threads; two threads waiting at
//   different `__syncthreads()` call sites in one phase is reported as an error (divergent barrier).
// - Warp-collective operations (mma, ldmatrix, shuffles, __syncwarp) rendezvous the 32 lanes of
//   the warp; the last lane to arrive executes the instruction for the whole warp, following the
//   PTX ISA definition and fragment layouts, and hands each lane its result. A collective that not
//   all 32 lanes reach (divergence, early exit, a partial warp) is reported as an error.
// - Dynamic shared memory is a heap buffer of exactly the launch's size (so AddressSanitizer sees
//   overruns), filled with 0xFF bytes (NaN in every element type) before each block. Static
//   `__shared__` variables are function-scope statics (blocks run one after another): zero at
//   first, then whatever the previous block left.
// - cp.async is asynchronous: the source is read when the copy is issued, the destination is
//   filled with 0xFF bytes at issue and receives the data only when the issuing thread's
//   cp.async.wait_group retires its group. Reading a stage before waiting, or another thread's
//   stage without a barrier after the wait, reads poison.
// - Misuse that the GPU would fault on or leave undefined (misaligned cp.async / ldmatrix
//   addresses, divergent barriers, collectives with missing lanes, deadlocks) aborts with a
//   message naming the block and thread.
#pragma once

#if defined(__CUDACC__)
#error "kernels/host/cuda_host.h is for the host compiler only"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <new>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define FUSEDROP_HOST_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define FUSEDROP_HOST_ASAN 0
#endif

// The CUDA keywords, for host code. cuda_runtime's host_defines.h turns them into annotations
// the host compiler ignores; the harness gives them their meaning here instead.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
// Static shared memory: a function-scope static, one per kernel instantiation. Blocks run one
// after another, so the block's threads share it; it starts zeroed and then holds whatever the
// previous block left (no poisoning: GCC places template statics where no section attribute
// reaches them).
#define __shared__ static
#define __syncthreads() ::fusedrop::host::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::fusedrop::host::syncwarp(__FILE__, __LINE__)

// The built-in variables, set by the scheduler before it resumes a thread.
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

// Device intrinsics with plain host meanings.
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned int)i); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((uint64_t)a * b) >> 32);
}
using std::max;
using std::min;

namespace fusedrop {
namespace host {

inline uint32_t float_bits(float v) { return __float_as_uint(v); }
inline float bits_float(uint32_t u) { return __uint_as_float(u); }

enum class Shfl { Idx, Xor, Down };

// ---------------------------------------------------------------------------------------------
// Runtime state.

enum class State { Runnable, AtBarrier, AtWarp, Done };

enum class Op { None, Mma, Ldmatrix, Shfl, SyncWarp };

struct PendingCopy {
    void* dst;
    int bytes;
    unsigned char data[16];
};

struct Fiber {
    ucontext_t ctx;
    void* stack = nullptr;
    size_t stack_size = 0;
    void* fake_stack = nullptr;
    State state = State::Done;
    uint3 tid{};
    int linear = 0, warp = 0, lane = 0;
    const char* site_file = nullptr;
    int site_line = 0;
    std::vector<PendingCopy> uncommitted;
    std::deque<std::vector<PendingCopy>> groups;
};

// One lane's operands and results of a warp collective.
struct Slot {
    Op op = Op::None;
    int kind = 0;  // mma: 0 f16, 1 bf16; ldmatrix: matrix count; shfl: mode
    bool trans = false;
    uint32_t a[4] = {0, 0, 0, 0};
    uint32_t b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    const void* addr = nullptr;
    int arg = 0;
    uint32_t out[4] = {0, 0, 0, 0};
    float fout[4] = {0, 0, 0, 0};
    const char* file = nullptr;
    int line = 0;
};

struct Warp {
    Slot slot[32];
    int arrived = 0;
    int size = 32;
};

struct Runtime {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<int> order;  // fiber indices, highest priority first
    int live = 0;
    int at_barrier = 0;
    const char* barrier_file = nullptr;
    int barrier_line = 0;
    ucontext_t scheduler;
    void* scheduler_fake_stack = nullptr;
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
    Fiber* current = nullptr;
    unsigned char* dyn_smem = nullptr;
    size_t dyn_bytes = 0;
    std::function<void()> body;
    const char* kernel_name = "";
};

// swapcontext itself. Under AddressSanitizer, libc's own, so that ASan's interceptor (which clears
// the shadow of the whole target stack on every switch, far too slow for a switch per warp
// collective) is bypassed; the switches are annotated with __sanitizer_*_switch_fiber instead.
using SwapContext = int (*)(ucontext_t*, const ucontext_t*);
inline SwapContext swap_context() {
#if FUSEDROP_HOST_ASAN
    static const SwapContext fn = [] {
        void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        void* sym = libc != nullptr ? dlsym(libc, "swapcontext") : nullptr;
        return sym != nullptr ? reinterpret_cast<SwapContext>(sym) : &::swapcontext;
    }();
    return fn;
#else
    return &::swapcontext;
#endif
}

inline Runtime*& runtime() {
    static Runtime* rt = nullptr;
    return rt;
}

[[noreturn]] inline void fail(const char* fmt, ...) {
    Runtime* rt = runtime();
    fprintf(stderr, "fusedrop harness error");
    if (rt != nullptr) {
        fprintf(stderr, " in %s, block (%u,%u,%u)", rt->kernel_name, blockIdx.x, blockIdx.y,
                blockIdx.z);
        if (rt->current != nullptr)
            fprintf(stderr, ", thread (%u,%u,%u) [warp %d lane %d]", rt->current->tid.x,
                    rt->current->tid.y, rt->current->tid.z, rt->current->warp,
                    rt->current->lane);
    }
    fprintf(stderr, ": ");
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "\n");
    fflush(stderr);
    _exit(3);
}

inline Fiber& current_fiber() {
    Runtime* rt = runtime();
    if (rt == nullptr || rt->current == nullptr)
        fail("a device operation was called outside a kernel launched by fusedrop::host::launch");
    return *rt->current;
}

// Switches from the current thread back to the scheduler; returns when the scheduler resumes it.
inline void yield_to_scheduler(bool dying = false) {
    Runtime* rt = runtime();
    Fiber& f = *rt->current;
#if FUSEDROP_HOST_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f.fake_stack, rt->scheduler_stack_bottom,
                                   rt->scheduler_stack_size);
#endif
    swap_context()(&f.ctx, &rt->scheduler);
#if FUSEDROP_HOST_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, &rt->scheduler_stack_bottom,
                                    &rt->scheduler_stack_size);
#endif
    (void)dying;
}

inline void release_barrier_if_complete() {
    Runtime* rt = runtime();
    if (rt->at_barrier == 0 || rt->at_barrier < rt->live) return;
    for (Fiber& f : rt->fibers)
        if (f.state == State::AtBarrier) f.state = State::Runnable;
    rt->at_barrier = 0;
    rt->barrier_file = nullptr;
}

inline void fiber_entry() {
    Runtime* rt = runtime();
#if FUSEDROP_HOST_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &rt->scheduler_stack_bottom,
                                    &rt->scheduler_stack_size);
#endif
    rt->body();
    Fiber& f = *rt->current;
    f.state = State::Done;
    f.uncommitted.clear();
    f.groups.clear();
    rt->live -= 1;
    release_barrier_if_complete();
    yield_to_scheduler(true);
    fail("a finished thread was resumed");
}

// ---------------------------------------------------------------------------------------------
// __syncthreads and warp collectives.

inline void syncthreads(const char* file, int line) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    if (rt->at_barrier == 0) {
        rt->barrier_file = file;
        rt->barrier_line = line;
    } else if (rt->barrier_line != line || strcmp(rt->barrier_file, file) != 0) {
        fail("divergent __syncthreads: this thread waits at %s:%d while another waits at %s:%d",
             file, line, rt->barrier_file, rt->barrier_line);
    }
    f.state = State::AtBarrier;
    f.site_file = file;
    f.site_line = line;
    rt->at_barrier += 1;
    release_barrier_if_complete();
    if (f.state == State::AtBarrier) yield_to_scheduler();
}

inline const char* op_name(Op op) {
    switch (op) {
        case Op::Mma: return "mma.sync";
        case Op::Ldmatrix: return "ldmatrix";
        case Op::Shfl: return "shfl.sync";
        case Op::SyncWarp: return "__syncwarp";
        default: return "none";
    }
}

inline uint16_t load_u16(const unsigned char* row, int i) {
    uint16_t v;
    memcpy(&v, row + 2 * i, 2);
    return v;
}

inline float b16_to_float(int kind, uint16_t bits) {
    if (kind == 0) {
        __half_raw raw;
        raw.x = bits;
        return __half2float(__half(raw));
    }
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
}

// The PTX ISA's element of each fragment register, for mma.m16n8k16 with 16-bit inputs.
// Element e (0..7) of lane l's A fragment is register e / 2, half e % 2.
inline void mma_a_coord(int lane, int e, int& row, int& col) {
    const int g = lane >> 2, t = lane & 3;
    row = g + ((e == 2 || e == 3 || e == 6 || e == 7) ? 8 : 0);
    col = t * 2 + (e & 1) + (e >= 4 ? 8 : 0);
}
// Element e (0..3) of lane l's B fragment (16x8, k x n).
inline void mma_b_coord(int lane, int e, int& row, int& col) {
    const int g = lane >> 2, t = lane & 3;
    row = t * 2 + (e & 1) + (e >= 2 ? 8 : 0);
    col = g;
}
// Element e (0..3) of lane l's C/D fragment (16x8 f32).
inline void mma_c_coord(int lane, int e, int& row, int& col) {
    const int g = lane >> 2, t = lane & 3;
    row = g + (e >= 2 ? 8 : 0);
    col = t * 2 + (e & 1);
}

inline void execute_mma(Warp& w) {
    const int kind = w.slot[0].kind;
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const Slot& s = w.slot[lane];
        if (s.kind != kind) fail("mma.sync lanes disagree on the element type");
        for (int e = 0; e < 8; ++e) {
            int r, c;
            mma_a_coord(lane, e, r, c);
            A[r][c] = b16_to_float(kind, (uint16_t)(s.a[e / 2] >> (16 * (e % 2))));
        }
        for (int e = 0; e < 4; ++e) {
            int r, c;
            mma_b_coord(lane, e, r, c);
            B[r][c] = b16_to_float(kind, (uint16_t)(s.b[e / 2] >> (16 * (e % 2))));
            mma_c_coord(lane, e, r, c);
            C[r][c] = s.c[e];
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        Slot& s = w.slot[lane];
        for (int e = 0; e < 4; ++e) {
            int r, c;
            mma_c_coord(lane, e, r, c);
            // Products of 16-bit floats are exact in double; the sum is rounded once to f32.
            double acc = C[r][c];
            for (int kk = 0; kk < 16; ++kk) acc += (double)A[r][kk] * (double)B[kk][c];
            s.fout[e] = (float)acc;
        }
    }
}

inline void execute_ldmatrix(Warp& w) {
    const int count = w.slot[0].kind;
    const bool trans = w.slot[0].trans;
    uint16_t M[4][8][8];
    for (int lane = 0; lane < 32; ++lane) {
        const Slot& s = w.slot[lane];
        if (s.kind != count || s.trans != trans)
            fail("ldmatrix lanes disagree on the shape (.x%d%s vs .x%d%s)", count,
                 trans ? ".trans" : "", s.kind, s.trans ? ".trans" : "");
    }
    for (int lane = 0; lane < 8 * count; ++lane) {
        const unsigned char* row = static_cast<const unsigned char*>(w.slot[lane].addr);
        if (row == nullptr || reinterpret_cast<uintptr_t>(row) % 16 != 0)
            fail("ldmatrix: lane %d supplies row address %p, which is not 16-byte aligned", lane,
                 (const void*)row);
        unsigned char bytes[16];
        memcpy(bytes, row, 16);
        for (int i = 0; i < 8; ++i) M[lane / 8][lane % 8][i] = load_u16(bytes, i);
    }
    for (int lane = 0; lane < 32; ++lane) {
        Slot& s = w.slot[lane];
        const int g = lane >> 2, t = lane & 3;
        for (int j = 0; j < count; ++j) {
            uint16_t lo, hi;
            if (trans) {
                lo = M[j][2 * t][g];
                hi = M[j][2 * t + 1][g];
            } else {
                lo = M[j][g][2 * t];
                hi = M[j][g][2 * t + 1];
            }
            s.out[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
}

// shfl.sync.{idx,bfly,down}.b32 with c = 0x1f (a full 32-lane segment), as the PTX ISA defines
// the source lane j and its validity: an invalid source returns the lane's own value.
inline void execute_shfl(Warp& w) {
    const int mode = w.slot[0].kind;
    for (int lane = 0; lane < 32; ++lane)
        if (w.slot[lane].kind != mode) fail("shfl.sync lanes disagree on the mode");
    for (int lane = 0; lane < 32; ++lane) {
        Slot& s = w.slot[lane];
        const int bval = s.arg & 0x1f;
        int j;
        bool valid;
        switch ((Shfl)mode) {
            case Shfl::Idx:
                j = bval;
                valid = true;
                break;
            case Shfl::Xor:
                j = lane ^ bval;
                valid = j <= 31;
                break;
            default:
                j = lane + bval;
                valid = j <= 31;
                break;
        }
        s.out[0] = valid ? w.slot[j].a[0] : s.a[0];
    }
}

// Arrives at the warp's rendezvous with this lane's slot filled in; returns once the whole warp
// has arrived and the operation has been executed.
inline Slot& warp_collective(Op op) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    Warp& w = rt->warps[f.warp];
    if (w.size != 32)
        fail("%s with a full mask in a partial warp of %d threads", op_name(op), w.size);
    Slot& s = w.slot[f.lane];
    s.op = op;
    f.state = State::AtWarp;
    w.arrived += 1;
    if (w.arrived < 32) {
        yield_to_scheduler();
        return s;
    }
    for (int lane = 0; lane < 32; ++lane)
        if (w.slot[lane].op != op)
            fail("warp collectives diverge: lane %d is in %s, lane %d in %s", f.lane,
                 op_name(op), lane, op_name(w.slot[lane].op));
    switch (op) {
        case Op::Mma: execute_mma(w); break;
        case Op::Ldmatrix: execute_ldmatrix(w); break;
        case Op::Shfl: execute_shfl(w); break;
        default: break;
    }
    w.arrived = 0;
    for (Fiber& other : rt->fibers)
        if (other.warp == f.warp && other.state == State::AtWarp) other.state = State::Runnable;
    for (int lane = 0; lane < 32; ++lane) w.slot[lane].op = Op::None;
    return s;
}

// ---------------------------------------------------------------------------------------------
// The host bodies of kernels/ptx.cuh.

inline void mma_m16n8k16(int kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4]) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    Slot& s = rt->warps[f.warp].slot[f.lane];
    s.kind = kind;
    for (int i = 0; i < 4; ++i) s.a[i] = a[i], s.c[i] = c[i];
    s.b[0] = b[0], s.b[1] = b[1];
    warp_collective(Op::Mma);
    for (int i = 0; i < 4; ++i) d[i] = s.fout[i];
}

template <int N>
inline void ldmatrix(int count, bool trans, uint32_t (&r)[N], const void* smem_row) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    Slot& s = rt->warps[f.warp].slot[f.lane];
    s.kind = count;
    s.trans = trans;
    s.addr = smem_row;
    warp_collective(Op::Ldmatrix);
    for (int i = 0; i < N; ++i) r[i] = s.out[i];
}

inline uint32_t shfl(Shfl mode, uint32_t v, int arg) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    Slot& s = rt->warps[f.warp].slot[f.lane];
    s.kind = (int)mode;
    s.a[0] = v;
    s.arg = arg;
    warp_collective(Op::Shfl);
    return s.out[0];
}

inline void syncwarp(const char* file, int line) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    Slot& s = rt->warps[f.warp].slot[f.lane];
    s.file = file;
    s.line = line;
    warp_collective(Op::SyncWarp);
}

inline void cp_async(void* smem, const void* gmem, int bytes, bool valid) {
    Fiber& f = current_fiber();
    if (reinterpret_cast<uintptr_t>(smem) % bytes != 0 ||
        reinterpret_cast<uintptr_t>(gmem) % bytes != 0)
        fail("cp.async of %d bytes with misaligned addresses (shared %p, global %p)", bytes, smem,
             gmem);
    PendingCopy copy;
    copy.dst = smem;
    copy.bytes = bytes;
    if (valid)
        memcpy(copy.data, gmem, bytes);
    else
        memset(copy.data, 0, bytes);
    // The destination holds no defined value until the copy's group is waited for.
    memset(smem, 0xFF, bytes);
    f.uncommitted.push_back(copy);
}

inline void cp_async_commit() {
    Fiber& f = current_fiber();
    f.groups.push_back(std::move(f.uncommitted));
    f.uncommitted.clear();
}

inline void cp_async_wait(int n) {
    Fiber& f = current_fiber();
    while ((int)f.groups.size() > n) {
        for (const PendingCopy& copy : f.groups.front()) memcpy(copy.dst, copy.data, copy.bytes);
        f.groups.pop_front();
    }
}

inline unsigned char* dynamic_smem() { return runtime()->dyn_smem; }

// ---------------------------------------------------------------------------------------------
// Launch.

struct LaunchConfig {
    dim3 grid;
    dim3 block;
    size_t smem_bytes = 0;
    uint64_t schedule_seed = 0;
};

inline uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

inline size_t fiber_stack_size() { return 256u << 10; }

// Thread stacks, kept for the next launch (mapped lazily: untouched pages cost nothing).
inline std::vector<void*>& stack_pool() {
    static std::vector<void*> pool;
    return pool;
}

// Makes `f` start the kernel from the top when next resumed. Out of line for the same reason as
// resume (getcontext returns twice).
__attribute__((noinline)) inline void restart(Fiber& f) {
#if FUSEDROP_HOST_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);
#endif
    f.state = State::Runnable;
    f.fake_stack = nullptr;
    f.uncommitted.clear();
    f.groups.clear();
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = f.stack_size;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
}

// Runs `f` until it blocks or finishes. Kept out of line so that no caller variable lives across
// swapcontext.
__attribute__((noinline)) inline void resume(Runtime& rt, Fiber& f) {
    rt.current = &f;
    threadIdx = f.tid;
#if FUSEDROP_HOST_ASAN
    __sanitizer_start_switch_fiber(&rt.scheduler_fake_stack, f.stack, f.stack_size);
#endif
    swap_context()(&rt.scheduler, &f.ctx);
#if FUSEDROP_HOST_ASAN
    __sanitizer_finish_switch_fiber(rt.scheduler_fake_stack, nullptr, nullptr);
#endif
    rt.current = nullptr;
}

// Runs `body` (which calls the kernel) as every thread of every block of the grid.
inline void run_grid(const char* name, const LaunchConfig& cfg, std::function<void()> body) {
    const dim3 grid = cfg.grid, block = cfg.block;
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64)
        fail("launch of %s with block (%u,%u,%u): at most 1024 threads, z at most 64", name,
             block.x, block.y, block.z);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        fail("launch of %s with grid (%u,%u,%u): every dimension >= 1, y and z at most 65535",
             name, grid.x, grid.y, grid.z);
    if (cfg.smem_bytes > 227u * 1024u)
        fail("launch of %s with %zu bytes of dynamic shared memory (at most 227 KiB)", name,
             cfg.smem_bytes);

    Runtime rt;
    rt.kernel_name = name;
    rt.body = std::move(body);
    rt.dyn_bytes = cfg.smem_bytes;
    rt.dyn_smem = static_cast<unsigned char*>(
        ::operator new(cfg.smem_bytes == 0 ? 1 : cfg.smem_bytes, std::align_val_t(128)));
    rt.fibers.resize(threads);
    const int n_warps = (int)((threads + 31) / 32);
    rt.warps.resize(n_warps);
    for (int w = 0; w < n_warps; ++w)
        rt.warps[w].size = (int)std::min<uint64_t>(32, threads - 32 * (uint64_t)w);
    const size_t stack_size = fiber_stack_size();
    for (uint64_t i = 0; i < threads; ++i) {
        Fiber& f = rt.fibers[i];
        f.linear = (int)i;
        f.warp = (int)(i / 32);
        f.lane = (int)(i % 32);
        f.tid = uint3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                      (unsigned)(i / ((uint64_t)block.x * block.y))};
        f.stack_size = stack_size;
        if (stack_pool().size() <= i) {
            void* stack = mmap(nullptr, stack_size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (stack == MAP_FAILED) fail("could not map a %zu-byte thread stack", stack_size);
            // A guard page at the low end turns a thread's stack overflow into a fault.
            mprotect(stack, 4096, PROT_NONE);
            stack_pool().push_back(stack);
        }
        f.stack = stack_pool()[i];
    }
    // Priorities: a random order of the warps, and of the lanes within each warp.
    uint64_t rng = cfg.schedule_seed;
    std::vector<int> warp_order(n_warps);
    for (int w = 0; w < n_warps; ++w) warp_order[w] = w;
    for (int w = n_warps - 1; w > 0; --w) std::swap(warp_order[w], warp_order[splitmix64(rng) % (w + 1)]);
    for (int w : warp_order) {
        const int size = rt.warps[w].size;
        std::vector<int> lanes(size);
        for (int l = 0; l < size; ++l) lanes[l] = 32 * w + l;
        for (int l = size - 1; l > 0; --l) std::swap(lanes[l], lanes[splitmix64(rng) % (l + 1)]);
        rt.order.insert(rt.order.end(), lanes.begin(), lanes.end());
    }

    Runtime* saved = runtime();
    runtime() = &rt;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = uint3{bx, by, bz};
                memset(rt.dyn_smem, 0xFF, cfg.smem_bytes);
                rt.live = (int)threads;
                rt.at_barrier = 0;
                rt.barrier_file = nullptr;
                for (Warp& w : rt.warps) {
                    w.arrived = 0;
                    for (Slot& s : w.slot) s.op = Op::None;
                }
                for (Fiber& f : rt.fibers) restart(f);
                for (;;) {
                    Fiber* next = nullptr;
                    for (int i : rt.order)
                        if (rt.fibers[i].state == State::Runnable) {
                            next = &rt.fibers[i];
                            break;
                        }
                    if (next == nullptr) break;
                    resume(rt, *next);
                }
                if (rt.live != 0) {
                    // Nothing can run but threads remain: report where they wait.
                    for (const Fiber& f : rt.fibers) {
                        if (f.state == State::AtBarrier)
                            fprintf(stderr, "  thread %d waits at __syncthreads %s:%d\n",
                                    f.linear, f.site_file, f.site_line);
                        else if (f.state == State::AtWarp)
                            fprintf(stderr, "  thread %d (warp %d lane %d) waits in %s\n",
                                    f.linear, f.warp, f.lane,
                                    op_name(rt.warps[f.warp].slot[f.lane].op));
                    }
                    fail("deadlock: %d threads wait but none can run (a barrier or warp "
                         "collective that not every thread reaches)",
                         rt.live);
                }
            }
    ::operator delete(rt.dyn_smem, std::align_val_t(128));
    runtime() = saved;
}

// Launches `kernel` with arguments converted to its parameter types, as <<<grid, block, smem>>>
// would; each thread receives its own copy of the parameters.
template <typename... P, typename... A>
void launch(const char* name, void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    run_grid(name, cfg, [&]() { std::apply(kernel, params); });
}

}  // namespace host
}  // namespace fusedrop
