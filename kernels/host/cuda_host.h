// The CPU harness: what the host C++ compiler needs to run a kernels/*.cu file unchanged.
//
// Compiled only by the host compiler (g++ -std=c++20, never by nvcc): tests/harness/*.cpp include
// this header and then the real kernel file. See docs/HARNESS.md.
//
// Execution model:
// - One fiber (its own stack) per CUDA thread; the threads of a block run on one OS thread under
//   a deterministic scheduler, and blocks run one after another (the blocks of a thread block
//   cluster together, each with its own shared memory). The scheduler always resumes the
//   highest-priority runnable thread, priorities being a random permutation of warps (and of lanes
//   within a warp) drawn from the launch's schedule seed: one warp runs as far ahead as it can
//   before the others start, so a missing barrier shows up as stale or poisoned data.
// - `__syncthreads()` is a real barrier over the block's live threads; two threads waiting at
//   different `__syncthreads()` call sites in one phase is reported as an error (divergent barrier).
// - Warp-collective operations (mma, ldmatrix, stmatrix, shuffles, __syncwarp) rendezvous the
//   32 lanes of the warp; the last lane to arrive executes the instruction for the whole warp,
//   following the PTX ISA definition and fragment layouts, and hands each lane its result. A
//   collective that not all 32 lanes reach (divergence, early exit, a partial warp) is reported
//   as an error.
// - Dynamic shared memory is a heap buffer of exactly the launch's size (so AddressSanitizer sees
//   overruns), 128 bytes into a 256 KiB-aligned shared window (so smem_u32 gives window
//   addresses), filled with 0xFF bytes (NaN in every element type) before each block. Static
//   `__shared__` variables are function-scope statics (blocks run one after another): zero at
//   first, then whatever the previous block left.
// - cp.async is asynchronous: the source is read when the copy is issued, the destination is
//   filled with 0xFF bytes at issue and receives the data only when the issuing thread's
//   cp.async.wait_group retires its group. Reading a stage before waiting, or another thread's
//   stage without a barrier after the wait, reads poison.
// - Hopper (sm_90a) instructions, modelled after the PTX ISA (see "The Hopper model" below):
//   mbarrier objects with phases, arrival and transaction counts; TMA tensor loads that land
//   only when no thread of the block can run, in an order drawn from the schedule seed, into
//   destinations nobody may write meanwhile; TMA stores that read shared memory only when the
//   issuing thread waits for them; wgmma as a warpgroup collective whose accumulators are NaN
//   until wgmma.wait_group retires the operation, with the register fences around it checked;
//   the async proxy's view of shared memory (each thread's fence.proxy.async publishing that
//   thread's own stores) and of barrier initialisations (fence.mbarrier_init); cluster-scope
//   releases and acquires.
// - Flags in global memory between blocks (ptx::flag_store_release, ptx::flag_wait_acquire): a
//   waiting thread stops until a release store of a block running with it writes the value it
//   waits for. A launch with LaunchConfig::co_resident runs all its blocks together under one
//   scheduler (as a GPU runs a persistent grid), so that a block that reads what another wrote
//   before its flag says so reads poison.
// - Misuse that the GPU would fault on or leave undefined (misaligned cp.async / ldmatrix /
//   stmatrix addresses, stmatrix rows that overlap, divergent barriers, collectives with missing
//   lanes, deadlocks) aborts with a message naming the block and thread.
#pragma once

#if defined(__CUDACC__)
#error "kernels/host/cuda_host.h is for the host compiler only"
#endif

#include <cmath>
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
// FUSEDROP_HOST_UCONTEXT forces the ucontext form of the fiber switch (below) on x86-64 too, so
// that it is tested here (tests/kernels_on_cpu/, FUSEDROP_HARNESS_SWITCH=ucontext).
#if defined(__x86_64__) && !defined(FUSEDROP_HOST_UCONTEXT)
#define FUSEDROP_HOST_STACK_SWITCH 1
#else
#define FUSEDROP_HOST_STACK_SWITCH 0
#include <dlfcn.h>
#include <ucontext.h>
#endif

#include <algorithm>
#include <iterator>
#include <array>
#include <cmath>
#include <deque>
#include <functional>
#include <new>
#include <string>
#include <tuple>
#include <unordered_map>
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
#undef __grid_constant__
#undef __cluster_dims__
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
// The cluster shape is the launch's here (LaunchConfig::cluster), as the driver takes it from the
// kernel's attribute on the GPU.
#define __cluster_dims__(...)
// Kernel parameters are per-thread copies here, so a const parameter is already grid-constant.
#define __grid_constant__
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
// Single-precision arithmetic rounded to nearest (x86-64 rounds each float operation in single
// precision; std::fma rounds once).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
using std::max;
using std::min;

namespace fusedrop {
namespace host {

// ---------------------------------------------------------------------------------------------
// Runtime state.

enum class State {
    Runnable,
    AtBarrier,
    AtClusterBarrier,
    AtWarp,
    AtWarpGroup,
    AtMbarrier,
    AtFlag,
    Done
};

enum class Op { None, Mma, Ldmatrix, Stmatrix, Shfl, SyncWarp };

struct PendingCopy {
    void* dst;
    int bytes;
    unsigned char data[16];
};

// A tensor map as encode_tensor_map_2d stores it inside the 128 opaque bytes of a CUtensorMap.
struct TensorMap2d {
    uint64_t magic;
    const unsigned char* base;
    uint64_t dim0, dim1;  // elements: innermost (columns), rows
    uint64_t row_stride;  // bytes
    uint32_t box0, box1;
    int32_t element_bytes;
    int32_t swizzle_bytes;  // 0, 32, 64 or 128
};
static_assert(sizeof(TensorMap2d) <= sizeof(CUtensorMap), "a TensorMap2d fits in a CUtensorMap");

// A TMA store issued by a thread: the shared-memory source is read when the thread's
// cp.async.bulk.wait_group.read retires the store's group.
struct BulkStore {
    TensorMap2d map;
    const unsigned char* src;
    int32_t c0, c1;
    std::vector<unsigned char> image;  // the box's 16-byte chunks when the store was issued
};

// Registers of one thread (an accumulator array, A fragments), named by their host address.
struct RegisterRange {
    const void* p;
    size_t bytes;
};

// Whether [p, p + bytes) lies inside one of `ranges`.
inline bool registers_covered(const std::vector<RegisterRange>& ranges, const void* p,
                              size_t bytes) {
    const unsigned char* lo = static_cast<const unsigned char*>(p);
    for (const RegisterRange& r : ranges) {
        const unsigned char* rlo = static_cast<const unsigned char*>(r.p);
        if (lo >= rlo && lo + bytes <= rlo + r.bytes) return true;
    }
    return false;
}

// ---------------------------------------------------------------------------------------------
// Switching between fibers.
//
// On x86-64 a switch saves what the System V ABI asks a called function to preserve (rbx, rbp,
// r12-r15, the SSE control and status word, the x87 control word) on the fiber's own stack and
// keeps only the stack pointer: swapcontext also saves and restores the signal mask, a system call
// per switch, which was a third of the harness's run time (the fibers never change the mask).
// Elsewhere (or with FUSEDROP_HOST_UCONTEXT), ucontext. Under AddressSanitizer the switches are
// annotated with __sanitizer_*_switch_fiber (yield_to_scheduler, resume) in both forms.

#if FUSEDROP_HOST_STACK_SWITCH

struct FiberContext {
    void* sp = nullptr;  // where the switch that left the fiber saved its registers
};

// fusedrop_host_switch_stack(save, load): pushes the preserved registers, stores the stack
// pointer in *save, loads `load` and pops what the switch away from there pushed. Weak, so that
// two translation units including this header link.
extern "C" void fusedrop_host_switch_stack(void** save, void* load);
asm(R"(
    .pushsection .text
    .weak fusedrop_host_switch_stack
    .type fusedrop_host_switch_stack, @function
fusedrop_host_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fusedrop_host_switch_stack, .-fusedrop_host_switch_stack
    .popsection
)");

// Prepares `c` so that the next switch to it enters `entry` (which must never return) at the
// top of the stack [stack, stack + bytes), as if called there.
inline void start_context(FiberContext& c, void* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top) - 9;
    // frame[0]: the control words (this thread's); [1..6]: r15, r14, r13, r12, rbx, rbp;
    // [7]: where the switch's ret goes, 16-byte aligned so that `entry` starts with the stack
    // aligned as after a call; [8]: a null return address for `entry`, ending backtraces there.
    uint32_t mxcsr;
    uint16_t x87;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87));
    frame[0] = mxcsr | (uint64_t)x87 << 32;
    for (int i = 1; i <= 6; ++i) frame[i] = 0;
    frame[7] = reinterpret_cast<uint64_t>(entry);
    frame[8] = 0;
    c.sp = frame;
}

inline void switch_context(FiberContext& from, const FiberContext& to) {
    fusedrop_host_switch_stack(&from.sp, to.sp);
}

#else

struct FiberContext {
    ucontext_t uc;
};

inline void start_context(FiberContext& c, void* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}

// Under AddressSanitizer libc's own swapcontext, bypassing ASan's interceptor (which clears the
// shadow of the whole target stack on every switch, far too slow for a switch per warp
// collective); the switches are annotated instead.
inline void switch_context(FiberContext& from, const FiberContext& to) {
    using SwapContext = int (*)(ucontext_t*, const ucontext_t*);
#if FUSEDROP_HOST_ASAN
    static const SwapContext swap = [] {
        void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        void* sym = libc != nullptr ? dlsym(libc, "swapcontext") : nullptr;
        return sym != nullptr ? reinterpret_cast<SwapContext>(sym) : &::swapcontext;
    }();
#else
    const SwapContext swap = &::swapcontext;
#endif
    swap(&from.uc, &to.uc);
}

#endif

struct Fiber {
    FiberContext ctx;
    void* stack = nullptr;
    size_t stack_size = 0;
    void* fake_stack = nullptr;
    State state = State::Done;
    uint3 tid{};
    // linear: the thread's index in its block; index: in the cluster's fibers; cta: its block's
    // rank in the cluster; warp, warpgroup: indices into the cluster's warps and warpgroups.
    int linear = 0, index = 0, cta = 0, warp = 0, warpgroup = 0, lane = 0;
    const char* site_file = nullptr;
    int site_line = 0;
    std::vector<PendingCopy> uncommitted;
    std::deque<std::vector<PendingCopy>> groups;
    std::vector<BulkStore> bulk_uncommitted;
    std::deque<std::vector<BulkStore>> bulk_groups;
    const uint64_t* mbar_wait = nullptr;  // the mbarrier this thread waits on (State::AtMbarrier)
    uint32_t mbar_parity = 0;
    const uint32_t* flag_wait = nullptr;  // the global flag it waits on (State::AtFlag)
    uint32_t flag_value = 0;              // for this value
    // ptx::fence_registers discipline (kernels/ptx.cuh): accumulators a wgmma_wait_group wrote
    // that no fence_registers has covered since (the thread's next operation must be that
    // fence); registers fenced since the thread's last wgmma_fence; and those fenced before it,
    // which its wgmmas may use.
    std::vector<RegisterRange> registers_to_fence;
    std::vector<RegisterRange> registers_fenced;
    std::vector<RegisterRange> registers_fenced_for_wgmma;
    // Chunks (Cta::writer) of its block's dynamic shared memory that hold bytes of this
    // thread's ordinary stores that no fence.proxy.async of this thread has published yet.
    std::vector<uint32_t> unfenced_chunks;
    // Chunks holding bytes this thread's fence.proxy.async published only after the thread had
    // released them (Cta::late_writer), until its next release.
    std::vector<uint32_t> late_chunks;
};

// One lane's operands and results of a warp collective.
struct Slot {
    Op op = Op::None;
    int kind = 0;  // mma: 0 f16, 1 bf16; ldmatrix, stmatrix: matrix count
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

// Warpgroup collectives (wgmma.*, setmaxnreg): one slot per thread of the warpgroup.
enum class WgOp { None, Fence, Mma, Commit, Wait, SetMaxNReg, Barrier };

struct WgSlot {
    WgOp op = WgOp::None;
    int kind = 0;  // wgmma: 0 f16, 1 bf16
    int n = 0;
    int trans_a = 0, trans_b = 0;
    bool a_in_regs = false;
    bool accumulate = false;
    uint64_t desc_a = 0, desc_b = 0;
    uint32_t a[4] = {0, 0, 0, 0};
    const uint32_t* a_registers = nullptr;  // wgmma_rs: where the A fragment came from
    float* acc = nullptr;
    int arg = 0;  // wait_group N; setmaxnreg register count (negative: dec)
};

// One wgmma.mma_async of a warpgroup, from issue until its group is retired by wait_group.
struct WgmmaOp {
    int id = 0;
    int kind = 0, n = 0, trans_a = 0, trans_b = 0;
    bool a_in_regs = false, accumulate = false;
    uint64_t desc_a = 0, desc_b = 0;
    uint32_t a[128][4];
    float* acc[128];
    // source[t] >= 0: thread t's accumulator input is the result of that earlier, still pending
    // operation on the same registers; -1: it is c[t] (the register values at issue).
    int source[128];
    std::vector<float> c;  // [128][n / 2]
    // The shared-memory operands as they were at issue (A empty for register A), compared with
    // what retirement reads: a GPU's wgmma may read them at any time until it completes.
    std::vector<double> a_at_issue, b_at_issue;
};

struct WarpGroup {
    WgSlot slot[128];
    int arrived = 0;
    int size = 128;
    bool fenced = false;  // a wgmma.fence since the last wgmma.wait_group
    int next_id = 0;
    std::vector<WgmmaOp> uncommitted;
    std::deque<std::vector<WgmmaOp>> groups;
};

// The harness's state of one mbarrier object (the object's 8 bytes hold a fingerprint only).
struct Mbarrier {
    uint32_t expected = 0;  // arrivals per phase
    uint32_t pending = 0;   // arrivals still missing in the current phase
    int64_t tx = 0;         // tx-count of the current phase
    uint32_t phase = 0;
    // The rank of another block of the cluster that arrived in the current phase (releasing at
    // cluster scope: mbarrier_arrive_cluster), or -1; and the same for the last completed phase
    // of each parity, which a wait acquiring at CTA scope only must not return from.
    int remote_rank = -1;
    int completed_remote_rank[2] = {-1, -1};
    // The thread (Fiber::index) that initialised it, and whether that thread has since published
    // the initialisation to its block's async proxy (fence.mbarrier_init or fence.proxy.async),
    // which a TMA load completing on it needs, and to the cluster (fence.mbarrier_init only),
    // which another block's use of it needs.
    int init_thread = -1;
    bool init_published_to_async_proxy = false;
    bool init_published_to_cluster = false;
};

// A TMA load in flight: 16-byte chunks of the box, already at their swizzled places.
struct TmaDelivery {
    std::vector<std::pair<unsigned char*, std::array<unsigned char, 16>>> chunks;
    uint64_t* bar;
    uint32_t bytes;
    int thread;
};

// One block of the cluster being run: its shared memory and its __syncthreads state.
struct Cta {
    uint3 block{};
    unsigned char* smem_window = nullptr;  // address 0 of the block's shared window
    unsigned char* dyn_smem = nullptr;
    int live = 0;
    int at_barrier = 0;
    const char* barrier_file = nullptr;
    int barrier_line = 0;
    bool exited = false;  // every thread returned: the shared memory is gone
    // The dynamic shared memory as the async proxy (TMA, wgmma) sees it: ordinary stores change
    // dyn_smem only, a thread's fence.proxy.async copies its own stores here, TMA loads write
    // both.
    std::vector<unsigned char> async_view;
    // Whose ordinary stores those are, where the launch tracks it (`tracking`, from the block's
    // start: start_store_tracking): generic_seen is dyn_smem as it was when a thread of the
    // block last stopped running, and writer[i] the Fiber::index of the thread whose ordinary
    // store last changed byte i since the async proxy last saw it (kNoWriter: none).
    bool tracking = false;
    std::vector<unsigned char> generic_seen;
    std::vector<int> writer;
    // Releases (an mbarrier arrive, a named barrier, __syncthreads: what another thread waits on
    // before it hands the bytes to the async proxy) against fences, where tracking:
    // released_unfenced[i] is set while byte i holds its writer's store that the writer released
    // before any fence.proxy.async of its published it; late_writer[i] is the Fiber::index of
    // the writer whose fence then published it, until that writer's next release (kNoWriter:
    // none). The async proxy reading a late byte is an error: a thread that waited on the
    // release may reach the read before the fence (note_release).
    std::vector<unsigned char> released_unfenced;
    std::vector<int> late_writer;
    // The warpgroup (of its block) that uses each named barrier of 128 threads, -1 while none
    // has: a second warpgroup using the same one is an error (warpgroup_barrier).
    int named_barrier_owner[16];
};

struct Runtime {
    std::vector<Fiber> fibers;  // every thread of every block of the cluster
    std::vector<Warp> warps;
    std::vector<int> order;  // fiber indices, highest priority first
    // place[i]: fiber i's position in `order`; bit p of `runnable` is set while the fiber at
    // position p is Runnable (set_state keeps it so), so the scheduler finds the next thread by
    // a scan for the first set bit, not a walk over every fiber's state (which was half the
    // run time of the 8-block split-K clusters: 3072 fibers).
    std::vector<int> place;
    std::vector<uint64_t> runnable;
    std::vector<Cta> ctas;   // the blocks of the cluster (or of the co-resident grid), by rank
    int cta = 0;             // the rank of the block whose thread runs (or ran last)
    bool co_resident = false;  // LaunchConfig::co_resident: ctas are the grid's blocks, no cluster
    int at_cluster_barrier = 0;
    FiberContext scheduler;
    void* scheduler_fake_stack = nullptr;
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
    Fiber* current = nullptr;
    std::vector<WarpGroup> warpgroups;
    std::unordered_map<const uint64_t*, Mbarrier> mbarriers;
    std::deque<TmaDelivery> tma_in_flight;
    size_t dyn_bytes = 0;
    std::function<void()> body;
    const char* kernel_name = "";
    bool matrix_conflict_free = false;  // LaunchConfig::matrix_conflict_free
};

inline Runtime*& runtime() {
    static Runtime* rt = nullptr;
    return rt;
}

// Every change of a fiber's state goes through here (Runtime::runnable).
inline void set_state(Fiber& f, State state) {
    Runtime* rt = runtime();
    const int p = rt->place[f.index];
    const uint64_t bit = uint64_t(1) << (p % 64);
    if (state == State::Runnable)
        rt->runnable[p / 64] |= bit;
    else
        rt->runnable[p / 64] &= ~bit;
    f.state = state;
}

// The Runnable fiber of highest priority, or null.
inline Fiber* next_runnable(Runtime& rt) {
    for (size_t word = 0; word < rt.runnable.size(); ++word)
        if (rt.runnable[word] != 0)
            return &rt.fibers[rt.order[64 * word + __builtin_ctzll(rt.runnable[word])]];
    return nullptr;
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

// The block whose thread runs (the scheduler keeps the last one between threads).
inline Cta& current_cta() { return runtime()->ctas[runtime()->cta]; }

constexpr const char* kRegisterFenceRule =
    "call ptx::fence_registers on the accumulators right after each wgmma_wait_group (without it "
    "nvcc may move their reads above the wait) and on every register a wgmma uses before its "
    "wgmma_fence (or it may move their writes below the fence)";

// The running thread. Every device operation's host body comes through here, so it is also where
// a thread whose accumulators a wgmma_wait_group just wrote is stopped if its next operation is
// not ptx::fence_registers (which does not come through here).
inline Fiber& current_fiber() {
    Runtime* rt = runtime();
    if (rt == nullptr || rt->current == nullptr)
        fail("a device operation was called outside a kernel launched by fusedrop::host::launch");
    Fiber& f = *rt->current;
    if (!f.registers_to_fence.empty())
        fail("the %zu accumulator bytes at %p that wgmma_wait_group retired into this thread's "
             "registers were not fenced before its next operation; %s",
             f.registers_to_fence.front().bytes, f.registers_to_fence.front().p,
             kRegisterFenceRule);
    return f;
}

// Switches from the current thread back to the scheduler; returns when the scheduler resumes it.
inline void yield_to_scheduler(bool dying = false) {
    Runtime* rt = runtime();
    Fiber& f = *rt->current;
#if FUSEDROP_HOST_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f.fake_stack, rt->scheduler_stack_bottom,
                                   rt->scheduler_stack_size);
#endif
    switch_context(f.ctx, rt->scheduler);
#if FUSEDROP_HOST_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, &rt->scheduler_stack_bottom,
                                    &rt->scheduler_stack_size);
#endif
    (void)dying;
}

// Releases block `rank`'s __syncthreads once every live thread of the block is there.
inline void release_barrier_if_complete(int rank) {
    Runtime* rt = runtime();
    Cta& c = rt->ctas[rank];
    if (c.at_barrier == 0 || c.at_barrier < c.live) return;
    for (Fiber& f : rt->fibers)
        if (f.cta == rank && f.state == State::AtBarrier) set_state(f, State::Runnable);
    c.at_barrier = 0;
    c.barrier_file = nullptr;
}

// Releases the cluster barrier once every live thread of the cluster is there (threads that
// exited count as arrived, as the PTX ISA defines for barrier.cluster).
inline void release_cluster_barrier_if_complete() {
    Runtime* rt = runtime();
    int live = 0;
    for (const Cta& c : rt->ctas) live += c.live;
    if (rt->at_cluster_barrier == 0 || rt->at_cluster_barrier < live) return;
    for (Fiber& f : rt->fibers)
        if (f.state == State::AtClusterBarrier) set_state(f, State::Runnable);
    rt->at_cluster_barrier = 0;
}

// A block whose threads all exited: its shared memory is gone (poisoned here), and any later
// access to it from another block of the cluster is an error (defined with the cluster model).
inline void retire_cta(int rank);

// Asynchronous work a thread must have waited for before it exits (defined with the Hopper model).
inline void check_thread_exit(const Fiber& f);

inline void fiber_entry() {
    Runtime* rt = runtime();
#if FUSEDROP_HOST_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &rt->scheduler_stack_bottom,
                                    &rt->scheduler_stack_size);
#endif
    rt->body();
    Fiber& f = *rt->current;
    check_thread_exit(f);
    set_state(f, State::Done);
    f.uncommitted.clear();
    f.groups.clear();
    Cta& c = rt->ctas[f.cta];
    c.live -= 1;
    release_barrier_if_complete(f.cta);
    release_cluster_barrier_if_complete();
    if (c.live == 0) retire_cta(f.cta);
    yield_to_scheduler(true);
    fail("a finished thread was resumed");
}

// ---------------------------------------------------------------------------------------------
// __syncthreads and warp collectives.

// A release by thread `f` for the proxy bookkeeping (below, with the async proxy's view).
inline void note_release(Fiber& f);

inline void syncthreads(const char* file, int line) {
    Fiber& f = current_fiber();
    note_release(f);
    Cta& c = current_cta();
    if (c.at_barrier == 0) {
        c.barrier_file = file;
        c.barrier_line = line;
    } else if (c.barrier_line != line || strcmp(c.barrier_file, file) != 0) {
        fail("divergent __syncthreads: this thread waits at %s:%d while another waits at %s:%d",
             file, line, c.barrier_file, c.barrier_line);
    }
    set_state(f, State::AtBarrier);
    f.site_file = file;
    f.site_line = line;
    c.at_barrier += 1;
    release_barrier_if_complete(f.cta);
    if (f.state == State::AtBarrier) yield_to_scheduler();
}

// A cluster operation in a co-resident launch, whose blocks run together without forming a
// cluster (LaunchConfig::co_resident), is an error rather than an operation on the wrong blocks.
inline void refuse_in_co_resident(const char* op) {
    if (runtime()->co_resident)
        fail("%s in a co-resident launch (its blocks run together to check their global flags; "
             "the harness runs them without clusters)",
             op);
}

// barrier.cluster.arrive.release + barrier.cluster.wait.acquire: every live thread of every
// block of the cluster.
inline void cluster_sync() {
    refuse_in_co_resident("barrier.cluster");
    Fiber& f = current_fiber();
    set_state(f, State::AtClusterBarrier);
    f.site_file = "barrier.cluster";
    f.site_line = 0;
    runtime()->at_cluster_barrier += 1;
    release_cluster_barrier_if_complete();
    if (f.state == State::AtClusterBarrier) yield_to_scheduler();
}

inline const char* op_name(Op op) {
    switch (op) {
        case Op::Mma: return "mma.sync";
        case Op::Ldmatrix: return "ldmatrix";
        case Op::Stmatrix: return "stmatrix";
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

// The row addresses of an ldmatrix or stmatrix of `count` matrices (lane 8j + i: row i of
// matrix j): each 16-byte aligned, and, in a launch that declares its layouts conflict-free,
// each matrix's 8 rows in distinct 16-byte slots of the 32 banks (they are one 128-byte access;
// the shared window is 256 KiB-aligned, so host addresses give the slot).
inline void check_matrix_rows(const char* name, const Warp& w, int count) {
    for (int lane = 0; lane < 8 * count; ++lane) {
        const unsigned char* row = static_cast<const unsigned char*>(w.slot[lane].addr);
        if (row == nullptr || reinterpret_cast<uintptr_t>(row) % 16 != 0)
            fail("%s: lane %d supplies row address %p, which is not 16-byte aligned", name, lane,
                 (const void*)row);
        if (!runtime()->matrix_conflict_free) continue;
        for (int other = lane - lane % 8; other < lane; ++other) {
            const unsigned char* o = static_cast<const unsigned char*>(w.slot[other].addr);
            if (o != row &&
                reinterpret_cast<uintptr_t>(o) % 128 == reinterpret_cast<uintptr_t>(row) % 128)
                fail("%s: matrix %d's rows from lanes %d and %d (shared addresses %u and %u) "
                     "fall in the same 16-byte slot of the 32 banks, a bank conflict, in a "
                     "kernel whose shared-memory layout is meant to be conflict-free (the "
                     "swizzle, docs/KERNELS.md)",
                     name, lane / 8, other, lane, (unsigned)(o - current_cta().smem_window),
                     (unsigned)(row - current_cta().smem_window));
        }
    }
}

inline void check_matrix_shape(const char* name, const Warp& w) {
    for (int lane = 0; lane < 32; ++lane) {
        const Slot& s = w.slot[lane];
        if (s.kind != w.slot[0].kind || s.trans != w.slot[0].trans)
            fail("%s lanes disagree on the shape (.x%d%s vs .x%d%s)", name, w.slot[0].kind,
                 w.slot[0].trans ? ".trans" : "", s.kind, s.trans ? ".trans" : "");
    }
}

inline void execute_ldmatrix(Warp& w) {
    const int count = w.slot[0].kind;
    const bool trans = w.slot[0].trans;
    check_matrix_shape("ldmatrix", w);
    check_matrix_rows("ldmatrix", w, count);
    uint16_t M[4][8][8];
    for (int lane = 0; lane < 8 * count; ++lane) {
        unsigned char bytes[16];
        memcpy(bytes, w.slot[lane].addr, 16);
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

// Defined with the Hopper model's shared-memory bookkeeping, which it uses.
inline void execute_stmatrix(Warp& w, int first_fiber);

// shfl.sync.bfly.b32 with c = 0x1f (a full 32-lane segment): lane l takes the value of lane
// l ^ (b & 0x1f), always a valid source (PTX ISA, shfl.sync).
inline void execute_shfl(Warp& w) {
    for (int lane = 0; lane < 32; ++lane) {
        Slot& s = w.slot[lane];
        s.out[0] = w.slot[lane ^ (s.arg & 0x1f)].a[0];
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
    set_state(f, State::AtWarp);
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
        case Op::Stmatrix: execute_stmatrix(w, f.index - f.lane); break;
        case Op::Shfl: execute_shfl(w); break;
        default: break;
    }
    w.arrived = 0;
    for (int i = f.index - f.lane; i < f.index - f.lane + w.size; ++i)
        if (rt->fibers[i].state == State::AtWarp) set_state(rt->fibers[i], State::Runnable);
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

// The calling lane's slot for an ldmatrix or stmatrix of `count` matrices, its row at
// `smem_row`.
inline Slot& matrix_slot(int count, bool trans, const void* smem_row) {
    Fiber& f = current_fiber();
    Slot& s = runtime()->warps[f.warp].slot[f.lane];
    s.kind = count;
    s.trans = trans;
    s.addr = smem_row;
    return s;
}

template <int N>
inline void ldmatrix(int count, bool trans, uint32_t (&r)[N], const void* smem_row) {
    Slot& s = matrix_slot(count, trans, smem_row);
    warp_collective(Op::Ldmatrix);
    for (int i = 0; i < N; ++i) r[i] = s.out[i];
}

inline void stmatrix(int count, const uint32_t (&r)[4], void* smem_row) {
    Slot& s = matrix_slot(count, false, smem_row);
    for (int i = 0; i < 4; ++i) s.a[i] = i < count ? r[i] : 0;
    warp_collective(Op::Stmatrix);
}

inline uint32_t shfl_xor(uint32_t v, int arg) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    Slot& s = rt->warps[f.warp].slot[f.lane];
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

inline unsigned char* dynamic_smem() { return current_cta().dyn_smem; }

// ---------------------------------------------------------------------------------------------
// The Hopper model (sm_90a): shared-window addresses, mbarrier, TMA, wgmma, setmaxnreg.
//
// Shared memory: the block's shared window starts kSmemWindowAlign-aligned, with the dynamic
// shared memory kDynSmemOffset bytes into it (the kernels declare it 128-byte aligned, and that
// is all they may rely on). So smem_u32() of a shared pointer (its low 32 bits) keeps its offset
// in the window in its low 18 bits, and a wgmma descriptor's 14-bit start address decodes back to
// a host pointer. Every TMA and wgmma shared-memory operand must lie in the dynamic shared memory.

constexpr size_t kSmemWindowAlign = size_t(1) << 18;
constexpr size_t kDynSmemOffset = 128;

// Whether [p, p + bytes) lies in the dynamic shared memory of block `rank` of the cluster.
inline bool in_cta_smem(int rank, const void* p, size_t bytes) {
    const Runtime* rt = runtime();
    const unsigned char* c = static_cast<const unsigned char*>(p);
    const unsigned char* dyn = rt->ctas[rank].dyn_smem;
    return c >= dyn && c + bytes <= dyn + rt->dyn_bytes;
}

// The rank of the block of the cluster whose dynamic shared memory holds the byte at `p`, or -1.
inline int cta_holding(const void* p) {
    const Runtime* rt = runtime();
    const int ranks = rt != nullptr ? (int)rt->ctas.size() : 0;
    for (int r = 0; r < ranks; ++r)
        if (in_cta_smem(r, p, 1)) return r;
    return -1;
}

// Whether [p, p + bytes) lies in the running block's dynamic shared memory.
inline bool in_dyn_smem(const void* p, size_t bytes) {
    return in_cta_smem(runtime()->cta, p, bytes);
}

// The async proxy's view (Cta::async_view) of the byte at `p`, which lies in the dynamic shared
// memory of some block of the cluster.
inline unsigned char* async_view_at(const void* p) {
    const int r = cta_holding(p);
    if (r < 0) fail("internal: %p lies in no block's dynamic shared memory", p);
    Cta& c = runtime()->ctas[r];
    return c.async_view.data() + (static_cast<const unsigned char*>(p) - c.dyn_smem);
}

// Whether the async proxy sees [p, p + bytes) as it is: no ordinary store has changed it since
// the last fence.proxy.async of its block (or since a TMA load wrote it).
inline bool async_proxy_sees(const void* p, size_t bytes) {
    return memcmp(p, async_view_at(p), bytes) == 0;
}

// Per-thread fence.proxy.async (Cta::writer): bytes per chunk of the bookkeeping, and the
// writer that is no thread.
constexpr size_t kWriterChunk = 64;
constexpr int kNoWriter = -1;

// Starts tracking whose ordinary stores block `rank`'s dynamic shared memory holds, at the
// block's start (where the async proxy's view equals the memory: nobody's stores to publish),
// where the launch asks for it (LaunchConfig::track_proxy_stores).
inline void start_store_tracking(int rank) {
    Runtime* rt = runtime();
    Cta& c = rt->ctas[rank];
    c.tracking = true;
    c.generic_seen.assign(c.dyn_smem, c.dyn_smem + rt->dyn_bytes);
    c.writer.assign(rt->dyn_bytes, kNoWriter);
    c.released_unfenced.assign(rt->dyn_bytes, 0);
    c.late_writer.assign(rt->dyn_bytes, kNoWriter);
}

// Credits thread `f` with the bytes of [begin, end), within one chunk of its block's dynamic
// shared memory, that differ from what the bookkeeping last saw there, and lists the chunk as
// the thread's if that made any byte newly its.
inline void credit_changed_bytes(Cta& c, Fiber& f, size_t begin, size_t end) {
    bool newly_listed = false;
    for (size_t i = begin; i < end; ++i) {
        if (c.dyn_smem[i] == c.generic_seen[i]) continue;
        c.generic_seen[i] = c.dyn_smem[i];
        if (c.writer[i] != f.index) newly_listed = true;
        c.writer[i] = f.index;
        c.released_unfenced[i] = 0;
        c.late_writer[i] = kNoWriter;
    }
    if (newly_listed) f.unfenced_chunks.push_back((uint32_t)(begin / kWriterChunk));
}

// Credits thread `f` with the ordinary stores to its block's dynamic shared memory since a
// thread of the block last stopped running: only `f` ran since (the scheduler calls this each
// time a thread stops, fence_proxy_async before it publishes), and the async proxy's own
// writes keep generic_seen up to date themselves (note_async_proxy_write).
inline void attribute_ordinary_stores(Runtime& rt, Fiber& f) {
    Cta& c = rt.ctas[f.cta];
    if (!c.tracking) return;
    const size_t n = rt.dyn_bytes;
    // n == 0: generic_seen.data() may be null, which memcmp must not be given.
    if (n == 0 || memcmp(c.dyn_smem, c.generic_seen.data(), n) == 0) return;
    for (size_t b = 0; b < n; b += kWriterChunk) {
        const size_t e = std::min(n, b + kWriterChunk);
        if (memcmp(c.dyn_smem + b, c.generic_seen.data() + b, e - b) != 0)
            credit_changed_bytes(c, f, b, e);
    }
}

// Shows the async proxy the bytes of its unfenced chunks that thread `f` stored last; those it
// had already released become late (Cta::late_writer).
inline void publish_ordinary_stores(Cta& c, Fiber& f) {
    const size_t n = runtime()->dyn_bytes;
    for (uint32_t chunk : f.unfenced_chunks) {
        const size_t b = chunk * kWriterChunk, e = std::min(n, b + kWriterChunk);
        bool late = false;
        for (size_t i = b; i < e; ++i) {
            if (c.writer[i] != f.index) continue;
            c.async_view[i] = c.dyn_smem[i];
            c.writer[i] = kNoWriter;
            if (c.released_unfenced[i]) {
                c.released_unfenced[i] = 0;
                c.late_writer[i] = f.index;
                late = true;
            }
        }
        if (late) f.late_chunks.push_back(chunk);
    }
    f.unfenced_chunks.clear();
}

// Thread `f` releases (an mbarrier arrive, a named barrier, __syncthreads), where its block tracks
// stores: the
// bytes its fences published since its last release are released now, and those it stored and
// has not fenced are released unfenced.
inline void note_release(Fiber& f) {
    Runtime* rt = runtime();
    Cta& c = rt->ctas[f.cta];
    if (!c.tracking) return;
    attribute_ordinary_stores(*rt, f);
    const size_t n = rt->dyn_bytes;
    for (uint32_t chunk : f.late_chunks) {
        const size_t b = chunk * kWriterChunk, e = std::min(n, b + kWriterChunk);
        for (size_t i = b; i < e; ++i)
            if (c.late_writer[i] == f.index) c.late_writer[i] = kNoWriter;
    }
    f.late_chunks.clear();
    for (uint32_t chunk : f.unfenced_chunks) {
        const size_t b = chunk * kWriterChunk, e = std::min(n, b + kWriterChunk);
        for (size_t i = b; i < e; ++i)
            if (c.writer[i] == f.index) c.released_unfenced[i] = 1;
    }
}

// The thread whose fence published [p, p + bytes) (in the running block's dynamic shared
// memory) after it had released the bytes (Cta::late_writer), or kNoWriter.
inline int late_publisher(const void* p, size_t bytes) {
    const Cta& c = current_cta();
    if (!c.tracking) return kNoWriter;
    if (!in_dyn_smem(p, bytes))
        fail("internal: %p lies outside the running block's dynamic shared memory", p);
    const size_t offset = (size_t)(static_cast<const unsigned char*>(p) - c.dyn_smem);
    for (size_t i = offset; i < offset + bytes; ++i)
        if (c.late_writer[i] != kNoWriter) return c.late_writer[i];
    return kNoWriter;
}

// [p, p + bytes), in some block's dynamic shared memory, was written by the async proxy (a TMA
// load's poison or box), not by an ordinary store: nobody's to fence.
inline void note_async_proxy_write(const unsigned char* p, size_t bytes) {
    const int r = cta_holding(p);
    if (r < 0) fail("internal: %p lies in no block's dynamic shared memory", p);
    Cta& c = runtime()->ctas[r];
    if (!c.tracking) return;
    const size_t offset = (size_t)(p - c.dyn_smem);
    memcpy(c.generic_seen.data() + offset, p, bytes);
    std::fill(c.writer.begin() + (std::ptrdiff_t)offset,
              c.writer.begin() + (std::ptrdiff_t)(offset + bytes), kNoWriter);
    std::fill(c.released_unfenced.begin() + (std::ptrdiff_t)offset,
              c.released_unfenced.begin() + (std::ptrdiff_t)(offset + bytes), 0);
    std::fill(c.late_writer.begin() + (std::ptrdiff_t)offset,
              c.late_writer.begin() + (std::ptrdiff_t)(offset + bytes), kNoWriter);
}

// stmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16 (sm_90), the mirror of ldmatrix: lane 8j + i
// gives the address of row i of matrix j, and r[j] of lane l holds row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1 of matrix j (.trans is not used by the kernels and not modelled).
// The last lane to arrive writes every row, so each 4-byte piece is credited to the lane whose
// register it came from (Cta::writer): that lane's fence.proxy.async is the one that publishes it.
// Two rows that overlap are an error (which lane's write lands is undefined), and so is a row
// outside the block's dynamic shared memory.
inline void execute_stmatrix(Warp& w, int first_fiber) {
    const int count = w.slot[0].kind;
    check_matrix_shape("stmatrix", w);
    check_matrix_rows("stmatrix", w, count);
    Runtime* rt = runtime();
    Cta& c = current_cta();
    for (int lane = 0; lane < 8 * count; ++lane) {
        unsigned char* row = static_cast<unsigned char*>(const_cast<void*>(w.slot[lane].addr));
        if (!in_dyn_smem(row, 16))
            fail("stmatrix: lane %d's row address %p is not in the block's dynamic shared memory",
                 lane, (const void*)row);
        for (int other = 0; other < lane; ++other) {
            const unsigned char* o = static_cast<const unsigned char*>(w.slot[other].addr);
            if (o < row + 16 && row < o + 16)
                fail("stmatrix: the rows of lanes %d and %d (shared addresses %u and %u) "
                     "overlap: which lane's write lands is undefined",
                     other, lane, (unsigned)(o - c.smem_window), (unsigned)(row - c.smem_window));
        }
        const int j = lane / 8, i = lane % 8;
        for (int t = 0; t < 4; ++t) {
            const int source = 4 * i + t;
            memcpy(row + 4 * t, &w.slot[source].a[j], 4);
            if (c.tracking) {
                const size_t at = (size_t)(row + 4 * t - c.dyn_smem);
                credit_changed_bytes(c, rt->fibers[first_fiber + source], at, at + 4);
            }
        }
    }
}

// For the messages of a failed async_proxy_sees: what happened, and the rule.
constexpr const char* kUnfencedWrite =
    "was changed by an ordinary (generic-proxy) store after the last fence.proxy.async of the "
    "thread that stored it";
constexpr const char* kLateFence =
    "was published to the async proxy by a fence.proxy.async that its writer ran only after it "
    "had released the bytes (an mbarrier arrive, a named barrier or __syncthreads, which the "
    "thread issuing this read waited on), so the read may come before the fence: the writer is "
    "thread";
constexpr const char* kProxyFenceRule =
    "threads that write shared memory that the async proxy (wgmma, TMA) then reads or "
    "overwrites call ptx::fence_proxy_async_shared() after their writes, before the barrier "
    "that orders the writes before the async access";

// The address of `p` in the running block's shared window (its offset from address 0 of the
// window).
inline uint32_t window_address(const void* p) {
    return (uint32_t)(static_cast<const unsigned char*>(p) - current_cta().smem_window);
}

// ptx::smem_u32 on the host: the window address of a pointer into the running block's dynamic
// shared memory (so it never looks like a shared::cluster address, below), else the pointer's
// low 32 bits.
inline uint32_t shared_address(const void* p) {
    const Runtime* rt = runtime();
    if (rt != nullptr && rt->current != nullptr && in_dyn_smem(p, 1)) return window_address(p);
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p));
}

// Where `p` is, for messages: its shared-window address, offset into the dynamic shared memory
// and block rank when it is in a block's dynamic shared memory.
inline std::string describe_smem(const void* p) {
    char text[120];
    const int r = cta_holding(p);
    if (r < 0) {
        snprintf(text, sizeof text, "%p", p);
        return text;
    }
    const Cta& holder = runtime()->ctas[r];
    const unsigned char* c = static_cast<const unsigned char*>(p);
    snprintf(text, sizeof text, "shared address %u (dynamic smem + %zu of cluster rank %d)",
             (uint32_t)(c - holder.smem_window), (size_t)(c - holder.dyn_smem), r);
    return text;
}

// The swizzle of the TMA unit and of wgmma descriptors, on shared-window address bits (PTX ISA,
// "Swizzling Modes"): 16-byte chunk bits [4, 4 + b) are XORed with bits [7, 7 + b), b = 3, 2, 1
// for the 128-, 64- and 32-byte modes.
inline uint32_t swizzle_address(uint32_t address, int swizzle_bytes) {
    const uint32_t mask = swizzle_bytes == 128 ? 7u : swizzle_bytes == 64 ? 3u
                          : swizzle_bytes == 32 ? 1u : 0u;
    return address ^ (((address >> 7) & mask) << 4);
}

// The shared-memory alignment TMA needs: 128 bytes, or the swizzle pattern's repeat.
inline uint32_t tma_smem_alignment(int swizzle_bytes) {
    return swizzle_bytes == 0 ? 128u : (uint32_t)swizzle_bytes * 8u;
}

// ---- mbarrier ----

inline uint64_t mbarrier_fingerprint(const uint64_t* bar) {
    return 0x6d62617272696572ull ^ (uint64_t)reinterpret_cast<uintptr_t>(bar);
}

inline Mbarrier& mbarrier_state(const uint64_t* bar, const char* op) {
    Runtime* rt = runtime();
    current_fiber();
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0)
        fail("%s: mbarrier address %p is not 8-byte aligned", op, (const void*)bar);
    auto it = rt->mbarriers.find(bar);
    if (it == rt->mbarriers.end())
        fail("%s on the mbarrier at %s, which was not initialised in this block (mbarrier_init "
             "by one thread, then fence_mbarrier_init and __syncthreads before other threads "
             "use it)",
             op, describe_smem(bar).c_str());
    uint64_t word;
    memcpy(&word, bar, 8);
    if (word != mbarrier_fingerprint(bar))
        fail("%s: the mbarrier object at %s was overwritten since mbarrier_init (shared memory "
             "of a barrier reused for data?)",
             op, describe_smem(bar).c_str());
    return it->second;
}

// Completes the current phase when no arrival and no transaction is pending, waking waiters.
inline void mbarrier_try_complete(const uint64_t* bar, Mbarrier& m) {
    if (m.pending != 0 || m.tx != 0) return;
    m.completed_remote_rank[m.phase & 1u] = m.remote_rank;
    m.remote_rank = -1;
    m.phase += 1;
    m.pending = m.expected;
    for (Fiber& f : runtime()->fibers)
        if (f.state == State::AtMbarrier && f.mbar_wait == bar) set_state(f, State::Runnable);
}

constexpr int64_t kMbarrierMaxCount = (int64_t(1) << 20) - 1;

// Another block of the cluster uses the mbarrier at `bar` (a remote arrival, or the complete-tx of
// a multicast load it issued): its initialising thread must have published the initialisation
// to the cluster with fence.mbarrier_init, or that block may find it uninitialised.
inline void check_published_to_cluster(const uint64_t* bar, const Mbarrier& m, const char* op) {
    if (!m.init_published_to_cluster)
        fail("%s from block rank %d on the mbarrier at %s, whose initialising thread has not "
             "published the initialisation to the cluster (ptx::fence_mbarrier_init after "
             "mbarrier_init, before the cluster_sync), so this block may find it uninitialised",
             op, runtime()->cta, describe_smem(bar).c_str());
}

inline void mbarrier_add_tx(const uint64_t* bar, Mbarrier& m, int64_t delta, const char* op) {
    m.tx += delta;
    if (m.tx > kMbarrierMaxCount || m.tx < -kMbarrierMaxCount)
        fail("%s: the tx-count of the mbarrier at %s is %lld, outside the PTX ISA's range "
             "+-(2^20 - 1)",
             op, describe_smem(bar).c_str(), (long long)m.tx);
}

inline void mbarrier_init(uint64_t* bar, uint32_t count) {
    Runtime* rt = runtime();
    current_fiber();
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0)
        fail("mbarrier_init: address %p is not 8-byte aligned", (void*)bar);
    if (count < 1 || count > kMbarrierMaxCount)
        fail("mbarrier_init: arrival count %u is outside 1 .. 2^20 - 1", count);
    auto it = rt->mbarriers.find(bar);
    if (it != rt->mbarriers.end()) {
        const Mbarrier& m = it->second;
        bool in_use = m.pending != m.expected || m.tx != 0;
        for (const TmaDelivery& d : rt->tma_in_flight) in_use = in_use || d.bar == bar;
        for (const Fiber& f : rt->fibers)
            in_use = in_use || (f.state == State::AtMbarrier && f.mbar_wait == bar);
        if (in_use)
            fail("mbarrier_init of the mbarrier at %s, which is in use in this block (%u of %u "
                 "arrivals pending, tx-count %lld, or a TMA load or a waiting thread on it)",
                 describe_smem(bar).c_str(), m.pending, m.expected, (long long)m.tx);
    }
    const uint64_t word = mbarrier_fingerprint(bar);
    memcpy(bar, &word, 8);
    Mbarrier fresh;
    fresh.expected = fresh.pending = count;
    fresh.init_thread = current_fiber().index;
    rt->mbarriers[bar] = fresh;
}

// mbarrier.arrive (expect_tx_bytes < 0) or mbarrier.arrive.expect_tx: expect-tx first, then
// arrive-on, as the PTX ISA orders them.
inline void mbarrier_arrive(uint64_t* bar, int64_t expect_tx_bytes) {
    const char* op = expect_tx_bytes < 0 ? "mbarrier_arrive" : "mbarrier_arrive_expect_tx";
    Mbarrier& m = mbarrier_state(bar, op);
    if (expect_tx_bytes >= 0) mbarrier_add_tx(bar, m, expect_tx_bytes, op);
    if (m.pending == 0)
        fail("%s on the mbarrier at %s: all %u arrivals of phase %u have already arrived "
             "(more arrivals than its count; the phase still waits for tx-count %lld)",
             op, describe_smem(bar).c_str(), m.expected, m.phase, (long long)m.tx);
    note_release(current_fiber());
    m.pending -= 1;
    mbarrier_try_complete(bar, m);
}

// mbarrier.try_wait.parity in a loop: returns once the phase with the given parity has
// completed, i.e. while the current phase's parity differs from it. `cluster_acquire`: the wait
// acquires at cluster scope (.acquire.cluster); without it, returning from a phase that another
// block's arrival completed is an error, as that block's writes before its arrival (a release at
// cluster scope) are then not ordered before what follows the wait.
inline void mbarrier_wait(uint64_t* bar, uint32_t parity, bool cluster_acquire) {
    if (parity > 1)
        fail("mbarrier_wait on the mbarrier at %s with parity %u (a parity is 0 or 1, not a "
             "phase count)",
             describe_smem(bar).c_str(), parity);
    Fiber& f = current_fiber();
    for (;;) {
        const Mbarrier& m = mbarrier_state(bar, "mbarrier_wait");
        if ((m.phase & 1u) != parity) {
            if (!cluster_acquire && m.completed_remote_rank[parity] >= 0)
                fail("mbarrier_wait on the mbarrier at %s returns from a phase that block rank %d "
                     "of the cluster arrived on (mbarrier_arrive_cluster, a release at cluster "
                     "scope), but it acquires at CTA scope only, so that block's writes before "
                     "its arrival are not ordered before what follows the wait: wait with "
                     "ptx::mbarrier_wait_cluster (.acquire.cluster)",
                     describe_smem(bar).c_str(), m.completed_remote_rank[parity]);
            return;
        }
        set_state(f, State::AtMbarrier);
        f.mbar_wait = bar;
        f.mbar_parity = parity;
        yield_to_scheduler();
        f.mbar_wait = nullptr;
    }
}

// ---- Flags in global memory (ptx::flag_store_release, ptx::flag_wait_acquire) ----
//
// Blocks run one after another unless the launch is co-resident (LaunchConfig::co_resident),
// so a flag another block sets is either set already when a thread waits for it (a block that
// ran before) or set by a block running beside it. A plain store never wakes a waiter: on a GPU
// it would not order the writes before it for the other block either.

inline void check_global_flag(const void* flag, const char* op) {
    current_fiber();
    if (cta_holding(flag) >= 0)
        fail("%s: the flag at %s is in shared memory; a flag between blocks lives in global "
             "memory",
             op, describe_smem(flag).c_str());
    if (reinterpret_cast<uintptr_t>(flag) % 4 != 0)
        fail("%s: the flag at %p is not 4-byte aligned", op, flag);
}

// st.release.gpu.global.u32: stores `value` and wakes the threads waiting for that value there.
inline void flag_store_release(uint32_t* flag, uint32_t value) {
    check_global_flag(flag, "flag_store_release");
    *flag = value;
    for (Fiber& f : runtime()->fibers)
        if (f.state == State::AtFlag && f.flag_wait == flag && f.flag_value == value)
            set_state(f, State::Runnable);
}

// ld.acquire.gpu.global.u32 until the flag holds `value`: the thread stops running meanwhile.
inline void flag_wait_acquire(const uint32_t* flag, uint32_t value) {
    check_global_flag(flag, "flag_wait_acquire");
    Fiber& f = current_fiber();
    while (*flag != value) {
        set_state(f, State::AtFlag);
        f.flag_wait = flag;
        f.flag_value = value;
        yield_to_scheduler();
        f.flag_wait = nullptr;
    }
}

// ---- Thread block clusters: distributed shared memory ----
//
// A shared::cluster address (what mapa returns) is modelled as a tag bit, the target block's rank
// and the offset in its shared window, so that passing a plain shared::cta address (smem_u32) to
// a cluster operation, or reaching a block that has exited, is reported.

constexpr uint32_t kClusterAddressTag = 1u << 31;
constexpr int kClusterRankShift = 18;  // the window offset fits 18 bits (kSmemWindowAlign)

// The block rank a shared::cluster address names.
inline uint32_t cluster_rank(uint32_t address) {
    return (address & ~kClusterAddressTag) >> kClusterRankShift;
}

inline void retire_cta(int rank) {
    Runtime* rt = runtime();
    Cta& c = rt->ctas[rank];
    for (const TmaDelivery& d : rt->tma_in_flight)
        if (in_cta_smem(rank, d.bar, 8))
            fail("block rank %d exits with a TMA load in flight into its shared memory (issued by "
                 "thread %d; nobody waited for its mbarrier phase)",
                 rank, d.thread);
    c.exited = true;
    memset(c.dyn_smem, 0xFF, rt->dyn_bytes);
}

// %cluster_ctarank: the running block's rank in its cluster (0 outside a cluster launch).
inline uint32_t cluster_ctarank() {
    current_fiber();
    return runtime()->co_resident ? 0u : (uint32_t)runtime()->cta;
}

// mapa.shared::cluster.u32: the address of `local` (in the running block's dynamic shared memory)
// in the shared memory of block `rank` of the cluster.
inline uint32_t cluster_map(const void* local, uint32_t rank) {
    Runtime* rt = runtime();
    current_fiber();
    refuse_in_co_resident("mapa");
    if (!in_dyn_smem(local, 1))
        fail("mapa: %p is not in the block's dynamic shared memory", local);
    if (rank >= rt->ctas.size())
        fail("mapa: rank %u, but the cluster has %zu block(s)", rank, rt->ctas.size());
    return kClusterAddressTag | (rank << kClusterRankShift) | window_address(local);
}

// The host pointer of `bytes` bytes at shared::cluster address `address`, after the checks the
// GPU would fault on (or leave undefined).
inline unsigned char* cluster_pointer(uint32_t address, size_t bytes, const char* op) {
    Runtime* rt = runtime();
    current_fiber();
    refuse_in_co_resident(op);
    if ((address & kClusterAddressTag) == 0)
        fail("%s: address %#x is not a shared::cluster address made by cluster_map (mapa)", op,
             address);
    const uint32_t rank = cluster_rank(address);
    const uint32_t offset = address & ((1u << kClusterRankShift) - 1);
    if (rank >= rt->ctas.size())
        fail("%s: block rank %u, but the cluster has %zu block(s)", op, rank, rt->ctas.size());
    const Cta& c = rt->ctas[rank];
    if (c.exited)
        fail("%s: block rank %u of the cluster has exited, and its shared memory with it (a block "
             "must not exit while another block of its cluster may still access its shared "
             "memory)",
             op, rank);
    unsigned char* p = c.smem_window + offset;
    if (!in_cta_smem((int)rank, p, bytes))
        fail("%s: %zu bytes at offset %u of block rank %u's shared window are outside its "
             "dynamic shared memory",
             op, bytes, offset, rank);
    if (offset % bytes != 0)
        fail("%s: offset %u is not aligned to the access size of %zu bytes", op, offset, bytes);
    return p;
}

// ld.shared::cluster.v4.f32.
inline void cluster_load_f32x4(uint32_t address, float (&out)[4]) {
    memcpy(out, cluster_pointer(address, 16, "ld.shared::cluster.v4.f32"), 16);
}

// ld.shared::cluster.f32.
inline float cluster_load_f32(uint32_t address) {
    float v;
    memcpy(&v, cluster_pointer(address, 4, "ld.shared::cluster.f32"), 4);
    return v;
}

// mbarrier.arrive.release.cluster.shared::cluster.b64 on another block's (or this block's)
// mbarrier.
inline void mbarrier_arrive_cluster(uint32_t address) {
    const char* op = "mbarrier.arrive.shared::cluster";
    uint64_t* bar = reinterpret_cast<uint64_t*>(cluster_pointer(address, 8, op));
    if ((int)cluster_rank(address) != runtime()->cta) {
        Mbarrier& m = mbarrier_state(bar, op);
        check_published_to_cluster(bar, m, op);
        m.remote_rank = runtime()->cta;
    }
    mbarrier_arrive(bar, -1);
}

// ---- TMA ----

constexpr uint64_t kTensorMapMagic = 0x66647470746d6170ull;

// The same rules as cuTensorMapEncodeTiled for a 2-D tiled map without interleave, element
// strides of 1 and zero fill. Returns CUDA_ERROR_INVALID_VALUE with the reason in `why`.
inline CUresult encode_tensor_map_2d(CUtensorMap* map, int element_bytes, const void* base,
                                     uint64_t dim0, uint64_t dim1, uint64_t row_stride_bytes,
                                     uint32_t box0, uint32_t box1, int swizzle_bytes,
                                     std::string* why = nullptr) {
    char reason[200] = "";
    if (map == nullptr || reinterpret_cast<uintptr_t>(map) % 64 != 0)
        snprintf(reason, sizeof reason, "the tensor map must be 64-byte aligned");
    else if (element_bytes != 1 && element_bytes != 2 && element_bytes != 4 && element_bytes != 8)
        snprintf(reason, sizeof reason, "element size %d is not 1, 2, 4 or 8 bytes", element_bytes);
    else if (base == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0)
        snprintf(reason, sizeof reason, "global address %p is not 16-byte aligned", base);
    else if (dim0 == 0 || dim1 == 0 || dim0 > (uint64_t(1) << 32) || dim1 > (uint64_t(1) << 32))
        snprintf(reason, sizeof reason, "dimensions %llu x %llu: each must be 1 .. 2^32",
                 (unsigned long long)dim0, (unsigned long long)dim1);
    else if (row_stride_bytes % 16 != 0 || row_stride_bytes >= (uint64_t(1) << 40))
        snprintf(reason, sizeof reason,
                 "row stride %llu bytes: must be a multiple of 16 and below 2^40",
                 (unsigned long long)row_stride_bytes);
    else if (row_stride_bytes < dim0 * (uint64_t)element_bytes)
        snprintf(reason, sizeof reason, "row stride %llu bytes is shorter than a row (%llu bytes)",
                 (unsigned long long)row_stride_bytes,
                 (unsigned long long)(dim0 * (uint64_t)element_bytes));
    else if (box0 < 1 || box0 > 256 || box1 < 1 || box1 > 256)
        snprintf(reason, sizeof reason, "box %u x %u: each dimension must be 1 .. 256", box0, box1);
    else if (box0 * (uint32_t)element_bytes % 16 != 0)
        snprintf(reason, sizeof reason, "inner box dimension of %u bytes is not a multiple of 16",
                 box0 * (uint32_t)element_bytes);
    else if (swizzle_bytes != 0 && swizzle_bytes != 32 && swizzle_bytes != 64 &&
             swizzle_bytes != 128)
        snprintf(reason, sizeof reason, "swizzle %d is not 0, 32, 64 or 128 bytes", swizzle_bytes);
    else if (swizzle_bytes != 0 && box0 * (uint32_t)element_bytes > (uint32_t)swizzle_bytes)
        snprintf(reason, sizeof reason,
                 "inner box dimension of %u bytes is wider than the %d-byte swizzle span",
                 box0 * (uint32_t)element_bytes, swizzle_bytes);
    if (reason[0] != '\0') {
        if (why != nullptr) *why = reason;
        return CUDA_ERROR_INVALID_VALUE;
    }
    TensorMap2d desc{kTensorMapMagic, static_cast<const unsigned char*>(base), dim0, dim1,
                     row_stride_bytes, box0, box1, element_bytes, swizzle_bytes};
    memset(map, 0, sizeof(CUtensorMap));
    memcpy(map, &desc, sizeof desc);
    return CUDA_SUCCESS;
}

inline TensorMap2d tensor_map(const CUtensorMap* map, const char* op) {
    current_fiber();
    if (map == nullptr || reinterpret_cast<uintptr_t>(map) % 64 != 0)
        fail("%s: tensor map address %p is not 64-byte aligned", op, (const void*)map);
    TensorMap2d desc;
    memcpy(&desc, map, sizeof desc);
    if (desc.magic != kTensorMapMagic)
        fail("%s: %p is not a tensor map made by encode_tensor_map_2d", op, (const void*)map);
    return desc;
}

// The shared-memory chunks of a box at `smem` and the checks TMA makes on it. Chunk q of box
// row j (16 bytes, elements 16q / element_bytes ..) sits at swizzle(smem + j * row + 16q).
inline std::vector<unsigned char*> tma_box_chunks(const TensorMap2d& t, const void* smem,
                                                  int32_t c0, const char* op) {
    const uint32_t align = tma_smem_alignment(t.swizzle_bytes);
    if (!in_dyn_smem(smem, 1))
        fail("%s: shared address %p is not in the block's dynamic shared memory", op, smem);
    const uint32_t address = window_address(smem);
    if (address % align != 0)
        fail("%s: %s is not aligned to %u bytes, which a TMA box with %d-byte swizzle needs "
             "(it faults on the GPU)",
             op, describe_smem(smem).c_str(), align, t.swizzle_bytes);
    if ((int64_t)c0 * t.element_bytes % 16 != 0)
        fail("%s: innermost coordinate %d is not at a 16-byte boundary of a row", op, c0);
    const uint32_t row_bytes = t.box0 * (uint32_t)t.element_bytes;
    std::vector<unsigned char*> chunks;
    chunks.reserve((size_t)t.box1 * row_bytes / 16);
    for (uint32_t j = 0; j < t.box1; ++j)
        for (uint32_t q = 0; q < row_bytes / 16; ++q) {
            const uint32_t at = swizzle_address(address + j * row_bytes + 16 * q, t.swizzle_bytes);
            unsigned char* p = current_cta().smem_window + at;
            if (!in_dyn_smem(p, 16))
                fail("%s: the %u x %u box at %s reaches past the dynamic shared memory (%zu "
                     "bytes)",
                     op, t.box0, t.box1, describe_smem(smem).c_str(), runtime()->dyn_bytes);
            chunks.push_back(p);
        }
    return chunks;
}

// The global address of element (row, col), or nullptr outside the tensor.
inline const unsigned char* tma_global(const TensorMap2d& t, int64_t row, int64_t col) {
    if (row < 0 || col < 0 || (uint64_t)row >= t.dim1 || (uint64_t)col >= t.dim0) return nullptr;
    return t.base + (uint64_t)row * t.row_stride + (uint64_t)col * (uint64_t)t.element_bytes;
}

inline void prefetch_tensormap(const CUtensorMap* map) { tensor_map(map, "prefetch_tensormap"); }

// What the destination of a TMA load in flight holds until the box lands.
constexpr unsigned char kTmaInFlightPoison[16] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                                  0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

// Queues the delivery of the box at (c0, c1) into the chunks `places` (in block `rank`'s shared
// memory), completing on `bar` (in the same block). The places are poisoned until it lands. An
// ordinary store to them that no fence.proxy.async has ordered before the load is an error: the
// two writes are unordered, so the stale store may land after the box.
inline void queue_tma_load(const TensorMap2d& t, const std::vector<unsigned char*>& places,
                           uint64_t* bar, int32_t c0, int32_t c1, const char* op) {
    if (!mbarrier_state(bar, op).init_published_to_async_proxy)
        fail("%s of the box at (%d, %d) completes on the mbarrier at %s, whose initialising "
             "thread has not published the initialisation to the async proxy "
             "(ptx::fence_mbarrier_init, or ptx::fence_proxy_async_shared, after mbarrier_init "
             "and before the barrier that orders it before the load), so the TMA unit may find "
             "it uninitialised",
             op, c0, c1, describe_smem(bar).c_str());
    TmaDelivery d;
    d.bar = bar;
    d.bytes = t.box0 * t.box1 * (uint32_t)t.element_bytes;
    d.thread = current_fiber().linear;
    d.chunks.resize(places.size());
    const uint32_t per_chunk = 16 / (uint32_t)t.element_bytes;
    const uint32_t chunks_per_row = t.box0 / per_chunk;
    for (size_t i = 0; i < places.size(); ++i) {
        const int64_t row = (int64_t)c1 + (int64_t)(i / chunks_per_row);
        const int64_t col = (int64_t)c0 + (int64_t)(i % chunks_per_row) * per_chunk;
        unsigned char* data = d.chunks[i].second.data();
        for (uint32_t e = 0; e < per_chunk; ++e) {
            const unsigned char* g = tma_global(t, row, col + e);
            if (g != nullptr)
                memcpy(data + e * t.element_bytes, g, t.element_bytes);
            else
                memset(data + e * t.element_bytes, 0, t.element_bytes);
        }
        d.chunks[i].first = places[i];
        if (!async_proxy_sees(places[i], 16))
            fail("%s of the box at (%d, %d): its destination at %s %s, so that store and the "
                 "box's write are unordered; %s",
                 op, c0, c1, describe_smem(places[i]).c_str(), kUnfencedWrite, kProxyFenceRule);
        // Undefined until the load completes on its barrier (to both proxies).
        memcpy(places[i], kTmaInFlightPoison, 16);
        memcpy(async_view_at(places[i]), kTmaInFlightPoison, 16);
        note_async_proxy_write(places[i], 16);
    }
    runtime()->tma_in_flight.push_back(std::move(d));
}

inline void tma_load_2d(void* smem, const CUtensorMap* map, uint64_t* bar, int32_t c0,
                        int32_t c1) {
    const TensorMap2d t = tensor_map(map, "tma_load_2d");
    queue_tma_load(t, tma_box_chunks(t, smem, c0, "tma_load_2d"), bar, c0, c1, "tma_load_2d");
}

// The multicast form: the box lands at the same offset of `smem` in the shared memory of every
// block of the cluster whose rank bit is set in `cta_mask`, each completing on the mbarrier at
// `bar`'s offset in that block. Each destination gets its own delivery (they land independently,
// as on the GPU), and its chunks are poisoned from now on: a block whose threads still read the
// stage sees the poison.
inline void tma_load_2d_multicast(void* smem, const CUtensorMap* map, uint64_t* bar, int32_t c0,
                                  int32_t c1, uint16_t cta_mask) {
    Runtime* rt = runtime();
    const char* op = "tma_load_2d_multicast";
    refuse_in_co_resident(op);
    const TensorMap2d t = tensor_map(map, op);
    mbarrier_state(bar, op);
    if (cta_mask == 0 || (cta_mask >> rt->ctas.size()) != 0)
        fail("%s: CTA mask %#x names no block or a rank beyond the cluster's %zu block(s)", op,
             (unsigned)cta_mask, rt->ctas.size());
    const std::vector<unsigned char*> local = tma_box_chunks(t, smem, c0, op);
    const unsigned char* window = current_cta().smem_window;
    for (int r = 0; r < (int)rt->ctas.size(); ++r) {
        if (((cta_mask >> r) & 1u) == 0) continue;
        const Cta& dst = rt->ctas[r];
        if (dst.exited)
            fail("%s: block rank %d of the cluster has exited, and its shared memory with it", op,
                 r);
        std::vector<unsigned char*> places(local.size());
        for (size_t i = 0; i < local.size(); ++i) places[i] = dst.smem_window + (local[i] - window);
        uint64_t* remote_bar = reinterpret_cast<uint64_t*>(
            dst.smem_window + (reinterpret_cast<unsigned char*>(bar) - window));
        const Mbarrier& remote = mbarrier_state(remote_bar, op);
        if (r != rt->cta) check_published_to_cluster(remote_bar, remote, op);
        queue_tma_load(t, places, remote_bar, c0, c1, op);
    }
}

// Lands the TMA load at position `which` of the loads in flight (0: the oldest) and performs its
// complete-tx on the barrier.
inline void deliver_tma_load(size_t which) {
    Runtime* rt = runtime();
    TmaDelivery d = std::move(rt->tma_in_flight[which]);
    rt->tma_in_flight.erase(rt->tma_in_flight.begin() + (std::ptrdiff_t)which);
    for (const auto& chunk : d.chunks) {
        // The poison of the issue still there, or something wrote the destination while the
        // load was in flight, which the box's write may land before or after.
        if (memcmp(chunk.first, kTmaInFlightPoison, 16) != 0)
            fail("a TMA load issued by thread %d, completing on the mbarrier at %s: its "
                 "destination at %s was written while the load was in flight (by an ordinary "
                 "store, or by another TMA load), so which write lands last is undefined; the "
                 "destination of a TMA load is the TMA unit's from the issue until the wait on "
                 "its barrier returns",
                 d.thread, describe_smem(d.bar).c_str(), describe_smem(chunk.first).c_str());
        memcpy(chunk.first, chunk.second.data(), 16);
        memcpy(async_view_at(chunk.first), chunk.second.data(), 16);
        note_async_proxy_write(chunk.first, 16);
    }
    auto it = rt->mbarriers.find(d.bar);
    uint64_t word;
    memcpy(&word, d.bar, 8);
    if (it == rt->mbarriers.end() || word != mbarrier_fingerprint(d.bar))
        fail("a TMA load issued by thread %d completes on the mbarrier at %s, which is no longer "
             "a valid mbarrier object",
             d.thread, describe_smem(d.bar).c_str());
    mbarrier_add_tx(d.bar, it->second, -(int64_t)d.bytes, "complete-tx of a TMA load");
    mbarrier_try_complete(d.bar, it->second);
}

// The TMA unit reads a store's source at some moment between the issue and the
// tma_store_wait_read that retires it. The harness takes an image of the source at the issue and
// reads it again at the wait: a source written in between (too early for the wait, or too late
// for the issue, e.g. by threads that had not reached the barrier before it) is reported, since
// what the GPU stores is then undefined.
inline void tma_store_2d(const CUtensorMap* map, const void* smem, int32_t c0, int32_t c1) {
    Fiber& f = current_fiber();
    const TensorMap2d t = tensor_map(map, "tma_store_2d");
    const std::vector<unsigned char*> places = tma_box_chunks(t, smem, c0, "tma_store_2d");
    BulkStore s{t, static_cast<const unsigned char*>(smem), c0, c1, {}};
    s.image.resize(places.size() * 16);
    for (size_t i = 0; i < places.size(); ++i) {
        if (!async_proxy_sees(places[i], 16))
            fail("tma_store_2d of the box at (%d, %d): its source at %s %s, so the TMA unit may "
                 "read the old bytes; %s",
                 c0, c1, describe_smem(places[i]).c_str(), kUnfencedWrite, kProxyFenceRule);
        if (const int late = late_publisher(places[i], 16); late != kNoWriter)
            fail("tma_store_2d of the box at (%d, %d): its source at %s %s %d; %s", c0, c1,
                 describe_smem(places[i]).c_str(), kLateFence, runtime()->fibers[late].linear,
                 kProxyFenceRule);
        memcpy(&s.image[16 * i], places[i], 16);
    }
    f.bulk_uncommitted.push_back(std::move(s));
}

inline void tma_store_commit() {
    Fiber& f = current_fiber();
    f.bulk_groups.push_back(std::move(f.bulk_uncommitted));
    f.bulk_uncommitted.clear();
}

// Reads the box from shared memory now and writes its in-bounds elements to global memory.
inline void perform_tma_store(const BulkStore& s) {
    const TensorMap2d& t = s.map;
    const std::vector<unsigned char*> places = tma_box_chunks(t, s.src, s.c0, "tma_store_2d");
    for (size_t i = 0; i < places.size(); ++i)
        if (memcmp(&s.image[16 * i], places[i], 16) != 0)
            fail("tma_store_2d of the box at (%d, %d): its shared-memory source at %s was written "
                 "between the store's issue and the tma_store_wait_read that retires it (the TMA "
                 "unit reads it at some moment in between, so what it stores is undefined)",
                 s.c0, s.c1, describe_smem(places[i]).c_str());
    const uint32_t per_chunk = 16 / (uint32_t)t.element_bytes;
    const uint32_t chunks_per_row = t.box0 / per_chunk;
    for (size_t i = 0; i < places.size(); ++i) {
        const int64_t row = (int64_t)s.c1 + (int64_t)(i / chunks_per_row);
        const int64_t col = (int64_t)s.c0 + (int64_t)(i % chunks_per_row) * per_chunk;
        for (uint32_t e = 0; e < per_chunk; ++e) {
            const unsigned char* g = tma_global(t, row, col + e);
            if (g != nullptr)
                memcpy(const_cast<unsigned char*>(g), places[i] + e * t.element_bytes,
                       t.element_bytes);
        }
    }
}

inline void tma_store_wait_read(int n) {
    Fiber& f = current_fiber();
    while ((int)f.bulk_groups.size() > n) {
        for (const BulkStore& s : f.bulk_groups.front()) perform_tma_store(s);
        f.bulk_groups.pop_front();
    }
}

// Marks the calling thread's earlier mbarrier initialisations as published to its block's async
// proxy, and with `to_cluster` to the cluster too.
inline void publish_mbarrier_inits(bool to_cluster) {
    const int thread = current_fiber().index;
    for (auto& entry : runtime()->mbarriers) {
        if (entry.second.init_thread != thread) continue;
        entry.second.init_published_to_async_proxy = true;
        if (to_cluster) entry.second.init_published_to_cluster = true;
    }
}

// fence.proxy.async: the async proxy sees the calling thread's ordinary stores so far, and its
// mbarrier initialisations (the CUDA programming guide's TMA example publishes them so). Another
// thread's stores stay unseen until that thread fences, even if it stored before this fence: as
// on the GPU, where a proxy fence orders the fencing thread's own accesses. Where the launch does
// not track whose stores are whose (LaunchConfig::track_proxy_stores), the fence publishes
// every store of the block so far: a coarser model than the GPU's.
inline void fence_proxy_async() {
    Fiber& f = current_fiber();
    Runtime* rt = runtime();
    Cta& c = current_cta();
    if (c.tracking) {
        attribute_ordinary_stores(*rt, f);
        publish_ordinary_stores(c, f);
    } else {
        memcpy(c.async_view.data(), c.dyn_smem, rt->dyn_bytes);
    }
    publish_mbarrier_inits(false);
}

// fence.mbarrier_init.release.cluster: publishes the calling thread's earlier mbarrier
// initialisations to the cluster (check_published_to_cluster) and to the async proxy
// (queue_tma_load).
inline void fence_mbarrier_init() { publish_mbarrier_inits(true); }

// ---- Warpgroup collectives: wgmma, setmaxnreg ----

inline const char* wg_op_name(WgOp op) {
    switch (op) {
        case WgOp::Fence: return "wgmma.fence";
        case WgOp::Mma: return "wgmma.mma_async";
        case WgOp::Commit: return "wgmma.commit_group";
        case WgOp::Wait: return "wgmma.wait_group";
        case WgOp::SetMaxNReg: return "setmaxnreg";
        case WgOp::Barrier: return "bar.sync (warpgroup)";
        default: return "none";
    }
}

// (row, col) of register r of the m64nN f32 accumulator of warpgroup thread t.
inline void wgmma_acc_coord(int t, int r, int& row, int& col) {
    const int w = t / 32, l = t % 32;
    row = 16 * w + l / 4 + 8 * ((r >> 1) & 1);
    col = 8 * (r >> 2) + 2 * (l % 4) + (r & 1);
}

// (row, col) of element e (register e / 2, half e % 2) of the m64nNk16 A register fragment.
inline void wgmma_a_coord(int t, int e, int& row, int& col) {
    const int w = t / 32, l = t % 32;
    row = 16 * w + l / 4 + 8 * ((e >> 1) & 1);
    col = 2 * (l % 4) + (e & 1) + 8 * (e >> 2);
}

// A wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"), its fields
// decoded once per operand rather than once per element.
struct WgmmaDescriptor {
    uint32_t start = 0, lbo = 0, sbo = 0;  // byte address and offsets
    int swizzle = 0;                       // 0 (none), 32, 64 or 128 bytes
};

// Decodes `desc` (operand `what`), refusing what sm_90 reserves and what the harness does not
// model.
inline WgmmaDescriptor decode_wgmma_descriptor(uint64_t desc, const char* what) {
    const uint64_t reserved = (3ull << 14) | (3ull << 30) | (7ull << 46) | (0x3FFull << 52);
    if ((desc & reserved) != 0)
        fail("wgmma: %s descriptor 0x%016llx has reserved bits set (bits 14-15, 30-31, 46-48, "
             "52-61 are zero on sm_90)",
             what, (unsigned long long)desc);
    const int base_offset = (int)((desc >> 49) & 7);
    if (base_offset != 0)
        fail("wgmma: %s descriptor 0x%016llx has matrix base offset %d; the harness models only "
             "base offset 0 (swizzle patterns starting at their repeat boundary)",
             what, (unsigned long long)desc, base_offset);
    WgmmaDescriptor d;
    d.start = (uint32_t)(desc & 0x3FFF) << 4;
    d.lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4;
    d.sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    const int mode = (int)(desc >> 62);
    d.swizzle = mode == 0 ? 0 : mode == 1 ? 128 : mode == 2 ? 64 : 32;
    return d;
}

// The shared-window address of element (i, k) of a wgmma operand described by `d` (PTX ISA,
// "Shared Memory Matrix Layout", canonical layouts in 16-bit elements): i runs along M (operand
// A) or N (operand B), k along K (0..15). K-major: rows of the operand are i, each 8-row group
// SBO apart; without swizzle an 8x8 core matrix is 8 rows of 16 bytes and the two K halves are
// LBO apart, with swizzle a row spans the swizzle width and LBO is unused. MN-major: 8 K rows
// per group, groups SBO apart (LBO without swizzle); a row holds 8 elements of i (no swizzle;
// the next 8 are SBO apart) or swizzle-width bytes (the next block LBO apart). The swizzle then
// acts on the address bits.
inline uint32_t wgmma_operand_address(const WgmmaDescriptor& d, bool mn_major, int i, int k) {
    uint32_t offset;
    if (!mn_major) {
        const uint32_t in_row = (uint32_t)(k % 8) * 2;
        offset = d.swizzle == 0 ? (uint32_t)(i % 8) * 16 + (uint32_t)(i / 8) * d.sbo +
                                      (uint32_t)(k / 8) * d.lbo + in_row
                                : (uint32_t)(i % 8) * (uint32_t)d.swizzle +
                                      (uint32_t)(i / 8) * d.sbo + (uint32_t)(k / 8) * 16 + in_row;
    } else if (d.swizzle == 0) {
        offset = (uint32_t)(i % 8) * 2 + (uint32_t)(i / 8) * d.sbo + (uint32_t)(k % 8) * 16 +
                 (uint32_t)(k / 8) * d.lbo;
    } else {
        const int per_row = d.swizzle / 2;
        offset = (uint32_t)(i % per_row) * 2 + (uint32_t)(i / per_row) * d.lbo +
                 (uint32_t)(k % 8) * (uint32_t)d.swizzle + (uint32_t)(k / 8) * d.sbo;
    }
    return swizzle_address(d.start + offset, d.swizzle);
}

// Reads a wgmma operand (rows x 16, 16-bit elements) through its descriptor, as floats.
inline void wgmma_read_operand(uint64_t desc, bool mn_major, int kind, int rows, double* out,
                               const char* what) {
    Runtime* rt = runtime();
    const WgmmaDescriptor decoded = decode_wgmma_descriptor(desc, what);
    const unsigned char* window = current_cta().smem_window;
    for (int i = 0; i < rows; ++i)
        for (int k = 0; k < 16; ++k) {
            const uint32_t at = wgmma_operand_address(decoded, mn_major, i, k);
            const unsigned char* p = window + at;
            if (!in_dyn_smem(p, 2))
                fail("wgmma: element (%d, %d) of the %s operand, descriptor 0x%016llx, is at "
                     "shared address %u, outside the dynamic shared memory (window addresses "
                     "%zu .. %zu)",
                     i, k, what, (unsigned long long)desc, at, kDynSmemOffset,
                     kDynSmemOffset + rt->dyn_bytes);
            if (!async_proxy_sees(p, 2))
                fail("wgmma: element (%d, %d) of the %s operand, descriptor 0x%016llx, at %s %s, "
                     "so the wgmma may read the old bytes; %s",
                     i, k, what, (unsigned long long)desc, describe_smem(p).c_str(),
                     kUnfencedWrite, kProxyFenceRule);
            if (const int late = late_publisher(p, 2); late != kNoWriter)
                fail("wgmma: element (%d, %d) of the %s operand, descriptor 0x%016llx, at %s %s "
                     "%d; %s",
                     i, k, what, (unsigned long long)desc, describe_smem(p).c_str(),
                     kLateFence, rt->fibers[late].linear, kProxyFenceRule);
            uint16_t bits;
            memcpy(&bits, p, 2);
            out[i * 16 + k] = b16_to_float(kind, bits);
        }
}

// d[row][col] (64 x n) += the 16 products a[row][k] * b[col][k], added in k order. The k loop
// runs outside the columns, so that a row's n sums advance side by side (the same additions in
// the same order as a k loop per element, without its chain of 16 dependent adds). The harness's
// own arithmetic is exempt from the alignment check that stands in for the GPU's misaligned
// access fault in kernel code: its per-access test would keep the loop from vectorising.
__attribute__((no_sanitize("alignment"))) inline void add_wgmma_products(const double* a,
                                                                         const double* b, int n,
                                                                         double* d) {
    std::vector<double> b_by_k((size_t)16 * n);
    for (int col = 0; col < n; ++col)
        for (int k = 0; k < 16; ++k) b_by_k[(size_t)k * n + col] = b[(size_t)col * 16 + k];
    for (int row = 0; row < 64; ++row) {
        double* d_row = d + (size_t)row * n;
        for (int k = 0; k < 16; ++k) {
            const double a_rk = a[row * 16 + k];
            const double* b_k = &b_by_k[(size_t)k * n];
            for (int col = 0; col < n; ++col) d_row[col] += a_rk * b_k[col];
        }
    }
}

// Fails if an operand read at retirement differs from the same operand read at issue (bit for bit,
// so that NaN equals NaN): something wrote its shared memory while the wgmma was in flight.
inline void check_operand_unchanged(const std::vector<double>& at_issue,
                                    const std::vector<double>& now, uint64_t desc,
                                    const char* what) {
    for (size_t e = 0; e < now.size(); ++e)
        if (memcmp(&at_issue[e], &now[e], sizeof(double)) != 0)
            fail("wgmma: element (%zu, %zu) of the %s operand, descriptor 0x%016llx, was %g at the "
                 "wgmma's issue and %g at the wgmma_wait_group that retired it: its shared memory "
                 "was written while the wgmma was in flight, which on a GPU may read it at any "
                 "time until it completes (write an operand only after the wait_group that "
                 "retires every wgmma reading it)",
                 e / 16, e % 16, what, (unsigned long long)desc, at_issue[e], now[e]);
}

// Executes one wgmma.mma_async: D = A * B (+ C), exact products summed in double, rounded once.
// The result goes to the next pending operation on the same registers, or to the registers.
inline void retire_wgmma(WarpGroup& g, WgmmaOp& op, Fiber* threads) {
    const int n = op.n, regs = op.n / 2;
    std::vector<double> a(64 * 16), b((size_t)n * 16), d((size_t)64 * n);
    if (op.a_in_regs) {
        for (int t = 0; t < 128; ++t)
            for (int e = 0; e < 8; ++e) {
                int row, col;
                wgmma_a_coord(t, e, row, col);
                a[row * 16 + col] =
                    b16_to_float(op.kind, (uint16_t)(op.a[t][e / 2] >> (16 * (e % 2))));
            }
    } else {
        wgmma_read_operand(op.desc_a, op.trans_a != 0, op.kind, 64, a.data(), "A");
        check_operand_unchanged(op.a_at_issue, a, op.desc_a, "A");
    }
    wgmma_read_operand(op.desc_b, op.trans_b != 0, op.kind, n, b.data(), "B");
    check_operand_unchanged(op.b_at_issue, b, op.desc_b, "B");
    for (int t = 0; t < 128; ++t)
        for (int r = 0; r < regs; ++r) {
            int row, col;
            wgmma_acc_coord(t, r, row, col);
            d[(size_t)row * n + col] = op.accumulate ? (double)op.c[(size_t)t * regs + r] : 0.0;
        }
    add_wgmma_products(a.data(), b.data(), n, d.data());
    auto forward_to = [&](int t) -> WgmmaOp* {
        for (auto& group : g.groups)
            for (WgmmaOp& later : group)
                if (later.id >= 0 && later.source[t] == op.id) return &later;
        for (WgmmaOp& later : g.uncommitted)
            if (later.source[t] == op.id) return &later;
        return nullptr;
    };
    for (int t = 0; t < 128; ++t) {
        WgmmaOp* next = forward_to(t);
        for (int r = 0; r < regs; ++r) {
            int row, col;
            wgmma_acc_coord(t, r, row, col);
            const float v = (float)d[(size_t)row * n + col];
            if (next != nullptr)
                next->c[(size_t)t * regs + r] = v;
            else
                op.acc[t][r] = v;
        }
        if (next != nullptr)
            next->source[t] = -1;
        else
            threads[t].registers_to_fence.push_back({op.acc[t], sizeof(float) * regs});
    }
    op.id = -1;
}

// Issues the wgmma.mma_async described by the (uniform) slots of the warpgroup.
inline void issue_wgmma(WarpGroup& g, const Fiber* threads) {
    const WgSlot& s0 = g.slot[0];
    for (int t = 1; t < 128; ++t) {
        const WgSlot& s = g.slot[t];
        if (s.kind != s0.kind || s.n != s0.n || s.trans_a != s0.trans_a ||
            s.trans_b != s0.trans_b || s.a_in_regs != s0.a_in_regs ||
            s.accumulate != s0.accumulate || s.desc_b != s0.desc_b ||
            (!s0.a_in_regs && s.desc_a != s0.desc_a))
            fail("wgmma.mma_async: warpgroup thread %d passes different operands than thread 0 "
                 "(descriptors, shape, type, transpose and scale-d must be the same in every "
                 "thread)",
                 t);
    }
    if (!g.fenced)
        fail("wgmma.mma_async without a wgmma_fence since the warpgroup's last wgmma_wait_group "
             "(or since the start): the accumulator registers are not fenced");
    WgmmaOp op;
    op.id = g.next_id++;
    op.kind = s0.kind;
    op.n = s0.n;
    op.trans_a = s0.trans_a;
    op.trans_b = s0.trans_b;
    op.a_in_regs = s0.a_in_regs;
    op.accumulate = s0.accumulate;
    op.desc_a = s0.desc_a;
    op.desc_b = s0.desc_b;
    const int regs = op.n / 2;
    op.c.assign((size_t)128 * regs, 0.0f);
    // The operands are read at retirement; read them now too, which checks that they decode into
    // shared memory and keeps what retirement must find again.
    if (!op.a_in_regs) {
        op.a_at_issue.resize((size_t)64 * 16);
        wgmma_read_operand(op.desc_a, op.trans_a != 0, op.kind, 64, op.a_at_issue.data(), "A");
    }
    op.b_at_issue.resize((size_t)op.n * 16);
    wgmma_read_operand(op.desc_b, op.trans_b != 0, op.kind, op.n, op.b_at_issue.data(), "B");
    for (int t = 0; t < 128; ++t) {
        const WgSlot& s = g.slot[t];
        memcpy(op.a[t], s.a, sizeof s.a);
        op.acc[t] = s.acc;
        op.source[t] = -1;
        const WgmmaOp* latest = nullptr;
        auto consider = [&](const WgmmaOp& p) {
            const float* lo = p.acc[t];
            const float* hi = p.acc[t] + p.n / 2;
            if (s.acc == lo && p.n == op.n)
                latest = &p;
            else if (s.acc < hi && lo < s.acc + regs)
                fail("wgmma.mma_async: thread %d's accumulators overlap those of a pending "
                     "wgmma with a different shape or start (not modelled)",
                     t);
        };
        for (const auto& group : g.groups)
            for (const WgmmaOp& p : group) consider(p);
        for (const WgmmaOp& p : g.uncommitted) consider(p);
        if (latest != nullptr)
            op.source[t] = latest->id;
        else
            memcpy(&op.c[(size_t)t * regs], s.acc, sizeof(float) * regs);
        const std::vector<RegisterRange>& fenced = threads[t].registers_fenced_for_wgmma;
        if (!registers_covered(fenced, s.acc, sizeof(float) * regs))
            fail("wgmma.mma_async: warpgroup thread %d's accumulators at %p were not passed to "
                 "ptx::fence_registers before the wgmma_fence; %s",
                 t, (const void*)s.acc, kRegisterFenceRule);
        if (s.a_in_regs && !registers_covered(fenced, s.a_registers, 16))
            fail("wgmma.mma_async: warpgroup thread %d's A fragment at %p was not passed to "
                 "ptx::fence_registers before the wgmma_fence; %s",
                 t, (const void*)s.a_registers, kRegisterFenceRule);
        // The registers hold no defined value until wait_group retires the operation.
        for (int r = 0; r < regs; ++r) s.acc[r] = NAN;
    }
    g.uncommitted.push_back(std::move(op));
}

inline void wait_wgmma_groups(WarpGroup& g, int n, Fiber* threads) {
    for (int t = 1; t < 128; ++t)
        if (g.slot[t].arg != g.slot[0].arg)
            fail("wgmma.wait_group: warpgroup threads wait for different group counts");
    while ((int)g.groups.size() > n) {
        for (WgmmaOp& op : g.groups.front()) retire_wgmma(g, op, threads);
        g.groups.pop_front();
    }
    g.fenced = false;
}

// Arrives at the warpgroup's rendezvous with this thread's slot filled in; the last thread to
// arrive executes the operation for the whole warpgroup.
inline void warpgroup_collective(WgOp op) {
    Runtime* rt = runtime();
    Fiber& f = current_fiber();
    WarpGroup& g = rt->warpgroups[f.warpgroup];
    if (g.size != 128)
        fail("%s in a partial warpgroup of %d threads (a warpgroup is 4 whole warps)",
             wg_op_name(op), g.size);
    const int first = f.index - f.linear % 128;
    for (int i = first; i < first + 128; ++i)
        if (rt->fibers[i].state == State::Done)
            fail("%s: thread %d of this warpgroup has exited, so it is missing from the "
                 "warpgroup collective",
                 wg_op_name(op), rt->fibers[i].linear);
    g.slot[f.linear % 128].op = op;
    if (op == WgOp::Fence) {
        f.registers_fenced_for_wgmma = std::move(f.registers_fenced);
        f.registers_fenced.clear();
    }
    set_state(f, State::AtWarpGroup);
    g.arrived += 1;
    if (g.arrived < 128) {
        yield_to_scheduler();
        return;
    }
    for (int t = 0; t < 128; ++t)
        if (g.slot[t].op != op)
            fail("warpgroup collectives diverge: thread %d is in %s, warpgroup thread %d in %s",
                 f.linear, wg_op_name(op), t, wg_op_name(g.slot[t].op));
    switch (op) {
        case WgOp::Fence: g.fenced = true; break;
        case WgOp::Mma: issue_wgmma(g, &rt->fibers[first]); break;
        case WgOp::Commit:
            g.groups.push_back(std::move(g.uncommitted));
            g.uncommitted.clear();
            break;
        case WgOp::Wait: wait_wgmma_groups(g, g.slot[0].arg, &rt->fibers[first]); break;
        case WgOp::SetMaxNReg:
            for (int t = 1; t < 128; ++t)
                if (g.slot[t].arg != g.slot[0].arg)
                    fail("setmaxnreg: warpgroup threads disagree on the register count");
            break;
        case WgOp::Barrier:
            for (int t = 1; t < 128; ++t)
                if (g.slot[t].arg != g.slot[0].arg)
                    fail("bar.sync over a warpgroup: its threads wait at different named "
                         "barriers (%d and %d)",
                         g.slot[0].arg, g.slot[t].arg);
            break;
        default: break;
    }
    g.arrived = 0;
    for (int i = first; i < first + 128; ++i)
        if (rt->fibers[i].state == State::AtWarpGroup) set_state(rt->fibers[i], State::Runnable);
    for (WgSlot& s : g.slot) s.op = WgOp::None;
}

inline WgSlot& warpgroup_slot() {
    Fiber& f = current_fiber();
    return runtime()->warpgroups[f.warpgroup].slot[f.linear % 128];
}

inline void wgmma_fence() { warpgroup_collective(WgOp::Fence); }

// ptx::fence_registers: the thread's registers at [p, p + bytes) are fenced. Not through
// current_fiber, whose check it answers.
inline void fence_registers(const void* p, size_t bytes) {
    Runtime* rt = runtime();
    if (rt == nullptr || rt->current == nullptr)
        fail("fence_registers was called outside a kernel launched by fusedrop::host::launch");
    Fiber& f = *rt->current;
    std::vector<RegisterRange>& pending = f.registers_to_fence;
    pending.erase(std::remove_if(pending.begin(), pending.end(),
                                 [&](const RegisterRange& r) {
                                     return registers_covered({{p, bytes}}, r.p, r.bytes);
                                 }),
                  pending.end());
    f.registers_fenced.push_back({p, bytes});
}
inline void wgmma_commit_group() { warpgroup_collective(WgOp::Commit); }
inline void wgmma_wait_group(int n) {
    warpgroup_slot().arg = n;
    warpgroup_collective(WgOp::Wait);
}

// wgmma.mma_async.m64nNk16.f32 with A from shared memory (a == nullptr) or from registers.
inline void wgmma(int kind, int n, int trans_a, int trans_b, float* d, const uint32_t* a,
                  uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    WgSlot& s = warpgroup_slot();
    s.kind = kind;
    s.n = n;
    s.trans_a = trans_a;
    s.trans_b = trans_b;
    s.a_in_regs = a != nullptr;
    s.accumulate = accumulate;
    s.desc_a = desc_a;
    s.desc_b = desc_b;
    for (int i = 0; i < 4; ++i) s.a[i] = a != nullptr ? a[i] : 0;
    s.a_registers = a;
    s.acc = d;
    warpgroup_collective(WgOp::Mma);
}

// setmaxnreg.{inc,dec}: a warpgroup collective with no other effect here (the count's range is
// checked at compile time in kernels/ptx.cuh).
inline void setmaxnreg(bool increase, int regs) {
    warpgroup_slot().arg = increase ? regs : -regs;
    warpgroup_collective(WgOp::SetMaxNReg);
}

// bar.sync id, 128 over the calling thread's warpgroup: a rendezvous of its 128 threads (the
// harness models the named barrier only for exactly one whole warpgroup, the kernels' use).
// Each id belongs to the first warpgroup of the block that uses it: on a GPU the barrier counts
// arriving threads whatever their warpgroup, so two warpgroups on one id of 128 threads could
// release each other's halves.
inline void warpgroup_barrier(int id) {
    Fiber& f = current_fiber();
    if (id < 1 || id > 15) fail("bar.sync %d: named barriers 1 .. 15 (0 is __syncthreads')", id);
    int& owner = runtime()->ctas[f.cta].named_barrier_owner[id];
    const int warpgroup = f.linear / 128;
    if (owner < 0) owner = warpgroup;
    if (owner != warpgroup)
        fail("bar.sync %d, 128 by warpgroups %d and %d of one block: on a GPU their threads "
             "would count towards one barrier of 128 (give each warpgroup its own id)",
             id, owner, warpgroup);
    note_release(f);
    warpgroup_slot().arg = id;
    warpgroup_collective(WgOp::Barrier);
}

inline void check_thread_exit(const Fiber& f) {
    Runtime* rt = runtime();
    if (!f.registers_to_fence.empty())
        fail("thread exits with the %zu accumulator bytes at %p that wgmma_wait_group retired "
             "into its registers never fenced; %s",
             f.registers_to_fence.front().bytes, f.registers_to_fence.front().p,
             kRegisterFenceRule);
    if (!f.bulk_uncommitted.empty() || !f.bulk_groups.empty())
        fail("thread exits with TMA stores whose shared-memory source it never waited for "
             "(tma_store_commit and tma_store_wait_read<0> before exit)");
    WarpGroup& g = rt->warpgroups[f.warpgroup];
    if (g.arrived > 0) {
        const int first = f.index - f.linear % 128;
        WgOp waiting = WgOp::None;
        for (int t = 0; t < 128; ++t)
            if (rt->fibers[first + t].state == State::AtWarpGroup) waiting = g.slot[t].op;
        fail("thread exits while %d threads of its warpgroup wait for it in %s: it is missing "
             "from the warpgroup collective",
             g.arrived, wg_op_name(waiting));
    }
    bool in_flight = !g.uncommitted.empty();
    for (const auto& group : g.groups) in_flight = in_flight || !group.empty();
    if (in_flight)
        fail("thread exits with wgmma operations of its warpgroup in flight (wgmma_commit_group "
             "and wgmma_wait_group<0> before exit)");
}

// ---------------------------------------------------------------------------------------------
// Launch.

struct LaunchConfig {
    dim3 grid;
    dim3 block;
    size_t smem_bytes = 0;
    uint64_t schedule_seed = 0;
    unsigned cluster = 1;  // blocks per cluster, along x (the kernel's __cluster_dims__)
    // A bank conflict in an ldmatrix or stmatrix is an error (the kernels' swizzled layouts avoid
    // them; the unit tests' layouts need not).
    bool matrix_conflict_free = false;
    // Whose ordinary stores to shared memory are which, from each block's start
    // (start_store_tracking), so that a fence.proxy.async publishes only its own thread's
    // stores. It costs a comparison of the block's shared memory each time a thread stops
    // (the Hopper kernels run about 4 times slower), so the drivers turn it on only where a
    // test asks (tests/harness/driver.h, `track_proxy_stores`); off, a fence publishes the
    // stores of every thread of its block so far.
    bool track_proxy_stores = true;
    // Every block of the grid (grid.x of them, at most kMaxCoResidentBlocks, no clusters) runs
    // at once under one scheduler, as the blocks of a persistent grid run at once on a GPU, so
    // that blocks that hand work over through global-memory flags (ptx::flag_wait_acquire)
    // interleave: a block reading what another wrote before waiting for its flag reads poison.
    // Off, blocks run one after another.
    bool co_resident = false;
};

constexpr unsigned kMaxCoResidentBlocks = 16;

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
// resume (in the ucontext form, getcontext returns twice).
__attribute__((noinline)) inline void restart(Fiber& f) {
#if FUSEDROP_HOST_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);
#endif
    set_state(f, State::Runnable);
    f.fake_stack = nullptr;
    f.uncommitted.clear();
    f.groups.clear();
    f.bulk_uncommitted.clear();
    f.bulk_groups.clear();
    f.mbar_wait = nullptr;
    f.flag_wait = nullptr;
    // The next block's thread runs on the same stack: a fence of this block's registers must not
    // count for the same addresses there (registers_to_fence is empty at every thread's exit,
    // and registers_fenced_for_wgmma is replaced at its first wgmma_fence).
    f.registers_fenced.clear();
    start_context(f.ctx, f.stack, f.stack_size, fiber_entry);
}

// Runs `f` until it blocks or finishes. Kept out of line so that no caller variable lives across
// the switch.
__attribute__((noinline)) inline void resume(Runtime& rt, Fiber& f) {
    rt.current = &f;
    rt.cta = f.cta;
    threadIdx = f.tid;
    blockIdx = rt.ctas[f.cta].block;
#if FUSEDROP_HOST_ASAN
    __sanitizer_start_switch_fiber(&rt.scheduler_fake_stack, f.stack, f.stack_size);
#endif
    switch_context(rt.scheduler, f.ctx);
#if FUSEDROP_HOST_ASAN
    __sanitizer_finish_switch_fiber(rt.scheduler_fake_stack, nullptr, nullptr);
#endif
    rt.current = nullptr;
}

// Prints where each waiting thread of the cluster waits, then fails with a deadlock.
[[noreturn]] inline void report_deadlock(Runtime& rt) {
    int waiting = 0;
    for (const Fiber& f : rt.fibers) {
        if (f.state == State::Done) continue;
        waiting += 1;
        if (f.state == State::AtBarrier) {
            fprintf(stderr, "  block rank %d thread %d waits at __syncthreads %s:%d\n", f.cta,
                    f.linear, f.site_file, f.site_line);
        } else if (f.state == State::AtClusterBarrier) {
            fprintf(stderr, "  block rank %d thread %d waits at the cluster barrier\n", f.cta,
                    f.linear);
        } else if (f.state == State::AtWarp) {
            fprintf(stderr, "  block rank %d thread %d (warp %d lane %d) waits in %s\n", f.cta,
                    f.linear, f.linear / 32, f.lane, op_name(rt.warps[f.warp].slot[f.lane].op));
        } else if (f.state == State::AtWarpGroup) {
            const WarpGroup& g = rt.warpgroups[f.warpgroup];
            fprintf(stderr,
                    "  block rank %d thread %d (warpgroup %d) waits in %s, %d of 128 threads "
                    "arrived\n",
                    f.cta, f.linear, f.linear / 128, wg_op_name(g.slot[f.linear % 128].op),
                    g.arrived);
        } else if (f.state == State::AtMbarrier) {
            const Mbarrier& m = rt.mbarriers.at(f.mbar_wait);
            fprintf(stderr,
                    "  block rank %d thread %d waits on the mbarrier at %s for parity %u "
                    "(phase %u, %u of %u arrivals pending, tx-count %lld)\n",
                    f.cta, f.linear, describe_smem(f.mbar_wait).c_str(), f.mbar_parity, m.phase,
                    m.pending, m.expected, (long long)m.tx);
        } else if (f.state == State::AtFlag) {
            fprintf(stderr,
                    "  block rank %d thread %d waits for the global flag at %p to hold %u (it "
                    "holds %u)\n",
                    f.cta, f.linear, static_cast<const void*>(f.flag_wait), f.flag_value,
                    *f.flag_wait);
        }
    }
    fail("deadlock: %d threads wait but none can run (a barrier, warp or warpgroup collective "
         "that not every thread reaches, an mbarrier phase that never completes, or a global "
         "flag that no running block sets)",
         waiting);
}

// Runs `body` (which calls the kernel) as every thread of every block of the grid. The blocks of
// one cluster (cfg.cluster consecutive blocks along x, as __cluster_dims__(cluster, 1, 1) groups
// them) run together under one scheduler, each with its own shared memory; clusters run one
// after another. A co-resident launch (cfg.co_resident) runs all its blocks together.
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
    const unsigned cluster = cfg.cluster;
    if (cluster < 1 || cluster > 8 || grid.x % cluster != 0)
        fail("launch of %s with clusters of %u blocks along x and grid.x = %u: a portable "
             "cluster has 1 .. 8 blocks and grid.x must be a multiple of it",
             name, cluster, grid.x);
    if (cfg.co_resident &&
        (cluster != 1 || grid.y != 1 || grid.z != 1 || grid.x > kMaxCoResidentBlocks))
        fail("launch of %s with grid (%u,%u,%u) and clusters of %u, co-resident: the harness "
             "runs up to %u blocks along x at once, without clusters",
             name, grid.x, grid.y, grid.z, cluster, kMaxCoResidentBlocks);
    // The blocks that run together: a cluster, or the whole co-resident grid.
    const unsigned together = cfg.co_resident ? grid.x : cluster;
    if (threads % 128 != 0 && together > 1)
        fail("launch of %s: the harness runs blocks together only if they are whole "
             "warpgroups",
             name);

    Runtime rt;
    rt.kernel_name = name;
    rt.body = std::move(body);
    rt.dyn_bytes = cfg.smem_bytes;
    rt.matrix_conflict_free = cfg.matrix_conflict_free;
    rt.ctas.resize(together);
    rt.co_resident = cfg.co_resident;
    for (Cta& c : rt.ctas) {
        c.smem_window = static_cast<unsigned char*>(::operator new(
            kDynSmemOffset + cfg.smem_bytes, std::align_val_t(kSmemWindowAlign)));
        c.dyn_smem = c.smem_window + kDynSmemOffset;
#if FUSEDROP_HOST_ASAN
        ASAN_POISON_MEMORY_REGION(c.smem_window, kDynSmemOffset);
#endif
    }
    const uint64_t fibers = threads * together;
    rt.fibers.resize(fibers);
    const int block_warps = (int)((threads + 31) / 32);
    const int block_warpgroups = (int)((threads + 127) / 128);
    rt.warps.resize((size_t)block_warps * together);
    rt.warpgroups.resize((size_t)block_warpgroups * together);
    for (unsigned r = 0; r < together; ++r) {
        for (int w = 0; w < block_warps; ++w)
            rt.warps[r * block_warps + w].size =
                (int)std::min<uint64_t>(32, threads - 32 * (uint64_t)w);
        for (int g = 0; g < block_warpgroups; ++g)
            rt.warpgroups[r * block_warpgroups + g].size =
                (int)std::min<uint64_t>(128, threads - 128 * (uint64_t)g);
    }
    const size_t stack_size = fiber_stack_size();
    for (uint64_t index = 0; index < fibers; ++index) {
        Fiber& f = rt.fibers[index];
        const uint64_t i = index % threads;
        f.index = (int)index;
        f.cta = (int)(index / threads);
        f.linear = (int)i;
        f.warp = f.cta * block_warps + (int)(i / 32);
        f.warpgroup = f.cta * block_warpgroups + (int)(i / 128);
        f.lane = (int)(i % 32);
        f.tid = uint3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                      (unsigned)(i / ((uint64_t)block.x * block.y))};
        f.stack_size = stack_size;
        if (stack_pool().size() <= index) {
            void* stack = mmap(nullptr, stack_size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (stack == MAP_FAILED) fail("could not map a %zu-byte thread stack", stack_size);
            // A guard page at the low end turns a thread's stack overflow into a fault.
            mprotect(stack, 4096, PROT_NONE);
            stack_pool().push_back(stack);
        }
        f.stack = stack_pool()[index];
    }
    // Priorities: a random order of the warps of all the blocks that run together, and of the
    // lanes within each warp.
    uint64_t rng = cfg.schedule_seed;
    const int n_warps = (int)rt.warps.size();
    std::vector<int> warp_order(n_warps);
    for (int w = 0; w < n_warps; ++w) warp_order[w] = w;
    for (int w = n_warps - 1; w > 0; --w) std::swap(warp_order[w], warp_order[splitmix64(rng) % (w + 1)]);
    for (int w : warp_order) {
        const int size = rt.warps[w].size;
        const int first = (w / block_warps) * (int)threads + (w % block_warps) * 32;
        std::vector<int> lanes(size);
        for (int l = 0; l < size; ++l) lanes[l] = first + l;
        for (int l = size - 1; l > 0; --l) std::swap(lanes[l], lanes[splitmix64(rng) % (l + 1)]);
        rt.order.insert(rt.order.end(), lanes.begin(), lanes.end());
    }
    rt.place.resize(fibers);
    for (size_t p = 0; p < rt.order.size(); ++p) rt.place[rt.order[p]] = (int)p;
    rt.runnable.assign((fibers + 63) / 64, 0);

    Runtime* saved = runtime();
    runtime() = &rt;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; bx += together) {
                for (unsigned r = 0; r < together; ++r) {
                    Cta& c = rt.ctas[r];
                    c.block = uint3{bx + r, by, bz};
                    memset(c.dyn_smem, 0xFF, cfg.smem_bytes);
                    c.async_view.assign(c.dyn_smem, c.dyn_smem + cfg.smem_bytes);
                    c.tracking = false;
                    if (cfg.track_proxy_stores) start_store_tracking((int)r);
                    c.live = (int)threads;
                    c.at_barrier = 0;
                    std::fill(std::begin(c.named_barrier_owner), std::end(c.named_barrier_owner),
                              -1);
                    c.barrier_file = nullptr;
                    c.exited = false;
                }
                rt.cta = 0;
                blockIdx = rt.ctas[0].block;
                rt.at_cluster_barrier = 0;
                for (Warp& w : rt.warps) {
                    w.arrived = 0;
                    for (Slot& s : w.slot) s.op = Op::None;
                }
                for (WarpGroup& g : rt.warpgroups) {
                    g.arrived = 0;
                    g.fenced = false;
                    g.next_id = 0;
                    g.uncommitted.clear();
                    g.groups.clear();
                    for (WgSlot& s : g.slot) s.op = WgOp::None;
                }
                rt.mbarriers.clear();
                rt.tma_in_flight.clear();
                for (Fiber& f : rt.fibers) {
                    f.unfenced_chunks.clear();
                    restart(f);
                }
                for (;;) {
                    Fiber* next = next_runnable(rt);
                    if (next != nullptr) {
                        resume(rt, *next);
                        attribute_ordinary_stores(rt, *next);
                        continue;
                    }
                    // TMA loads land only when no thread can run, the latest moment the
                    // hardware may deliver them, one at a time in an order drawn from the
                    // schedule seed: loads in flight complete in any order on the GPU.
                    if (rt.tma_in_flight.empty()) break;
                    int live = 0;
                    for (const Cta& c : rt.ctas) live += c.live;
                    if (live == 0)
                        fail("the block finished with %zu TMA load(s) in flight (issued by thread "
                             "%d; nobody waited for their mbarrier phase)",
                             rt.tma_in_flight.size(), rt.tma_in_flight.front().thread);
                    deliver_tma_load(splitmix64(rng) % rt.tma_in_flight.size());
                }
                for (const Cta& c : rt.ctas)
                    if (c.live != 0) report_deadlock(rt);
            }
    for (Cta& c : rt.ctas) {
#if FUSEDROP_HOST_ASAN
        ASAN_UNPOISON_MEMORY_REGION(c.smem_window, kDynSmemOffset);
#endif
        ::operator delete(c.smem_window, std::align_val_t(kSmemWindowAlign));
    }
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
