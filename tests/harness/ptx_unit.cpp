// Unit tests of the host bodies of kernels/ptx.cuh and of the harness's execution model, run by
// tests/kernels_on_cpu.rs.
//
//   ptx_unit checks        every positive check; prints one line per check, exit 1 on a failure
//   ptx_unit <misuse>      one kernel that misuses the model; the harness must abort (exit 3):
//                          divergent_barrier, exited_lane_shfl, misaligned_cp_async,
//                          misaligned_ldmatrix, partial_warp_shfl
//   ptx_unit race <seed>   a kernel with a missing barrier: prints how many elements were wrong
//
// The fragment layouts are written out here a second time, from the PTX ISA's formulas, so that
// the host bodies are checked against the plain matrix product rather than against themselves.
#include "ptx.cuh"

#include <random>
#include <string>

using namespace fusedrop::ptx;

static int g_failures = 0;

static void check(bool ok, const std::string& what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) g_failures += 1;
}

template <typename T>
static uint16_t bits_of(float v);
template <>
uint16_t bits_of<__half>(float v) {
    return __half_raw(__float2half_rn(v)).x;
}
template <>
uint16_t bits_of<__nv_bfloat16>(float v) {
    return __nv_bfloat16_raw(__float2bfloat16_rn(v)).x;
}
template <typename T>
static float value_of(uint16_t bits);
template <>
float value_of<__half>(uint16_t bits) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
}
template <>
float value_of<__nv_bfloat16>(uint16_t bits) {
    __nv_bfloat16_raw r;
    r.x = bits;
    return __bfloat162float(__nv_bfloat16(r));
}

static uint32_t pack(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

// ---------------------------------------------------------------------------------------------
// mma.m16n8k16 from fragments built by each lane per the PTX ISA formulas.

struct MmaIo {
    uint16_t a[16][16];  // row-major A (m x k)
    uint16_t b[16][8];   // B (k x n)
    float c[16][8];
    float d[16][8];
};

template <typename T>
__global__ void mma_kernel(MmaIo* io) {
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    uint32_t a[4], b[2];
    float c[4], d[4];
    // A: a_i, i = 0..7: row g for i in {0,1,4,5}, else g + 8; col 2t + (i & 1), + 8 for i >= 4.
    uint16_t ae[8];
    for (int i = 0; i < 8; ++i) {
        const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        ae[i] = io->a[row][col];
    }
    for (int r = 0; r < 4; ++r) a[r] = pack(ae[2 * r], ae[2 * r + 1]);
    // B: b_i, i = 0..3: row 2t + (i & 1), + 8 for i >= 2; col g.
    uint16_t be[4];
    for (int i = 0; i < 4; ++i) be[i] = io->b[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g];
    b[0] = pack(be[0], be[1]);
    b[1] = pack(be[2], be[3]);
    // C/D: c_i: row g for i < 2, else g + 8; col 2t + (i & 1).
    for (int i = 0; i < 4; ++i) c[i] = io->c[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
    mma_m16n8k16<T>(d, a, b, c);
    for (int i = 0; i < 4; ++i) io->d[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = d[i];
}

template <typename T>
static void check_mma(const char* name, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    MmaIo io;
    for (auto& row : io.a)
        for (auto& v : row) v = bits_of<T>(u(rng));
    for (auto& row : io.b)
        for (auto& v : row) v = bits_of<T>(u(rng));
    for (auto& row : io.c)
        for (auto& v : row) v = u(rng);
    for (auto& row : io.d)
        for (auto& v : row) v = NAN;
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 0, 1};
    fusedrop::host::launch("mma_kernel", mma_kernel<T>, cfg, &io);
    double max_err = 0;
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
            double want = io.c[i][j];
            for (int k = 0; k < 16; ++k)
                want += (double)value_of<T>(io.a[i][k]) * value_of<T>(io.b[k][j]);
            const double err = std::fabs(io.d[i][j] - want) / std::max(1.0, std::fabs(want));
            max_err = std::isnan(io.d[i][j]) ? INFINITY : std::max(max_err, err);
        }
    check(max_err < 1e-6, std::string("mma.m16n8k16 ") + name + " equals A*B + C (max rel err " +
                              std::to_string(max_err) + ")");
}

// ---------------------------------------------------------------------------------------------
// ldmatrix: four 8x8 matrices whose rows sit at scattered, padded places in shared memory.

struct LdIo {
    uint16_t m[4][8][8];
    uint32_t out[6][32][4];  // per variant, per lane
};

// Row r of matrix j lives at smem + row_slot(j, r) * 24 halves (48 bytes, 16-aligned).
__device__ inline int row_slot(int j, int r) { return ((j * 8 + r) * 13 + 5) % 32; }

__global__ void ldmatrix_kernel(LdIo* io) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    const int lane = threadIdx.x;
    for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 8; ++i) smem[row_slot(j, lane % 8) * 24 + i] = io->m[j][lane % 8][i];
    __syncwarp();
    const uint16_t* row = smem + row_slot(lane / 8, lane % 8) * 24;
    uint32_t r1[1], r2[2], r4[4], t2[2], t4[4];
    ldmatrix_x1(r1, row);
    ldmatrix_x2(r2, row);
    ldmatrix_x4(r4, row);
    ldmatrix_x2_trans(t2, row);
    ldmatrix_x4_trans(t4, row);
    io->out[0][lane][0] = r1[0];
    for (int j = 0; j < 2; ++j) io->out[1][lane][j] = r2[j], io->out[3][lane][j] = t2[j];
    for (int j = 0; j < 4; ++j) io->out[2][lane][j] = r4[j], io->out[4][lane][j] = t4[j];
}

static void check_ldmatrix(std::mt19937& rng) {
    LdIo io;
    for (auto& mat : io.m)
        for (auto& row : mat)
            for (auto& v : row) v = (uint16_t)rng();
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 32 * 48, 3};
    fusedrop::host::launch("ldmatrix_kernel", ldmatrix_kernel, cfg, &io);
    const int counts[5] = {1, 2, 4, 2, 4};
    const char* names[5] = {"x1", "x2", "x4", "x2.trans", "x4.trans"};
    for (int v = 0; v < 5; ++v) {
        bool ok = true;
        const bool trans = v >= 3;
        for (int lane = 0; lane < 32; ++lane)
            for (int j = 0; j < counts[v]; ++j) {
                // Lane l holds (row l/4, cols 2(l%4), 2(l%4)+1); .trans the same of the transpose.
                const int r = lane / 4, c = 2 * (lane % 4);
                const uint32_t want = trans ? pack(io.m[j][c][r], io.m[j][c + 1][r])
                                            : pack(io.m[j][r][c], io.m[j][r][c + 1]);
                ok = ok && io.out[v][lane][j] == want;
            }
        check(ok, std::string("ldmatrix ") + names[v] + " fragments");
    }
}

// ---------------------------------------------------------------------------------------------
// ldmatrix feeding mma as kernels do: A [16][16] row-major, B given as W [8][16] (n x k,
// non-transposed load) and as Bt [16][8] (k x n, .trans load).

struct GemmIo {
    uint16_t a[16][16];
    uint16_t w[8][16];
    float d_w[16][8];
    float d_t[16][8];
};

template <typename T>
__global__ void ldmatrix_mma_kernel(GemmIo* io) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    uint16_t* sa = smem;             // [16][24], padded rows
    uint16_t* sw = smem + 16 * 24;   // [8][24]
    uint16_t* sbt = smem + 24 * 24;  // [16][16]: Bt[k][n] = W[n][k] (cols 8..15 unused)
    const int lane = threadIdx.x;
    for (int i = 0; i < 16; ++i) sa[(lane % 16) * 24 + i] = io->a[lane % 16][i];
    for (int i = 0; i < 16; ++i) sw[(lane % 8) * 24 + i] = io->w[lane % 8][i];
    for (int i = 0; i < 8; ++i) sbt[(lane % 16) * 16 + i] = io->w[i][lane % 16];
    __syncwarp();
    uint32_t a[4], b[2], bt[2];
    // Matrices of x4: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
    ldmatrix_x4(a, sa + (lane % 16) * 24 + (lane / 16) * 8);
    // B from W (n x k): matrix 0 = k 0-7, matrix 1 = k 8-15, rows are n.
    ldmatrix_x2(b, sw + (lane % 8) * 24 + ((lane / 8) % 2) * 8);
    // B from Bt (k x n): rows are k, 0-7 then 8-15; .trans gives the col-major fragment.
    ldmatrix_x2_trans(bt, sbt + (lane % 16) * 16);
    float c[4] = {0, 0, 0, 0}, d[4], e[4];
    mma_m16n8k16<T>(d, a, b, c);
    mma_m16n8k16<T>(e, a, bt, c);
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        io->d_w[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = d[i];
        io->d_t[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = e[i];
    }
}

template <typename T>
static void check_ldmatrix_mma(const char* name, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    GemmIo io;
    for (auto& row : io.a)
        for (auto& v : row) v = bits_of<T>(u(rng));
    for (auto& row : io.w)
        for (auto& v : row) v = bits_of<T>(u(rng));
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 40 * 24 * 2, 5};
    fusedrop::host::launch("ldmatrix_mma_kernel", ldmatrix_mma_kernel<T>, cfg, &io);
    double err_w = 0, err_t = 0;
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
            double want = 0;
            for (int k = 0; k < 16; ++k)
                want += (double)value_of<T>(io.a[i][k]) * value_of<T>(io.w[j][k]);
            err_w = std::max(err_w, std::fabs(io.d_w[i][j] - want) / std::max(1.0, std::fabs(want)));
            err_t = std::max(err_t, std::fabs(io.d_t[i][j] - want) / std::max(1.0, std::fabs(want)));
            if (std::isnan(io.d_w[i][j]) || std::isnan(io.d_t[i][j])) err_w = INFINITY;
        }
    check(err_w < 1e-6, std::string("ldmatrix.x4 + ldmatrix.x2 + mma ") + name + " = X*W^T");
    check(err_t < 1e-6, std::string("ldmatrix.x4 + ldmatrix.x2.trans + mma ") + name + " = X*W^T");
}

// ---------------------------------------------------------------------------------------------
// Shuffles.

struct ShflIo {
    uint32_t in[32];
    uint32_t idx[32], idx_far[32], bfly[32], down[32];
    float fin[32], fidx[32], fbfly[32], fdown[32];
};

__global__ void shfl_kernel(ShflIo* io) {
    const int lane = threadIdx.x;
    io->idx[lane] = shfl_idx(io->in[lane], (lane * 7 + 3) % 32);
    io->idx_far[lane] = shfl_idx(io->in[lane], lane + 37);  // source lane (lane + 37) mod 32
    io->bfly[lane] = shfl_xor(io->in[lane], 5);
    io->down[lane] = shfl_down(io->in[lane], 3);  // lanes 29..31 keep their own value
    io->fidx[lane] = shfl_idx(io->fin[lane], 31 - lane);
    io->fbfly[lane] = shfl_xor(io->fin[lane], 16);
    io->fdown[lane] = shfl_down(io->fin[lane], 1);
}

static void check_shfl(std::mt19937& rng) {
    ShflIo io;
    for (int i = 0; i < 32; ++i) io.in[i] = (uint32_t)rng(), io.fin[i] = (float)rng() / 7.0f;
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 0, 9};
    fusedrop::host::launch("shfl_kernel", shfl_kernel, cfg, &io);
    bool ok_idx = true, ok_far = true, ok_bfly = true, ok_down = true, ok_f = true;
    for (int l = 0; l < 32; ++l) {
        ok_idx = ok_idx && io.idx[l] == io.in[(l * 7 + 3) % 32];
        ok_far = ok_far && io.idx_far[l] == io.in[(l + 37) % 32];
        ok_bfly = ok_bfly && io.bfly[l] == io.in[l ^ 5];
        ok_down = ok_down && io.down[l] == io.in[l + 3 <= 31 ? l + 3 : l];
        ok_f = ok_f && io.fidx[l] == io.fin[31 - l] && io.fbfly[l] == io.fin[l ^ 16] &&
               io.fdown[l] == io.fin[l + 1 <= 31 ? l + 1 : l];
    }
    check(ok_idx, "shfl.sync.idx");
    check(ok_far, "shfl.sync.idx with a source lane beyond 31 (taken mod 32)");
    check(ok_bfly, "shfl.sync.bfly");
    check(ok_down, "shfl.sync.down (lanes past the end keep their value)");
    check(ok_f, "float shuffles");
}

// ---------------------------------------------------------------------------------------------
// cp.async: asynchronous until wait_group, zero-fill, group accounting, barrier hand-off.

struct CpIo {
    alignas(16) float src[64];
    float before_wait[4];
    float after_wait1[8];  // after wait_group 1: group 0 landed, group 1 not yet
    float after_wait0[8];
    float zero_filled[4];
    float neighbour[64];  // read after wait + __syncthreads from another thread's copies
};

__global__ void cp_async_kernel(CpIo* io) {
    FUSEDROP_DYNAMIC_SMEM(float, smem);
    const int tid = threadIdx.x;
    if (tid == 0) {
        cp_async_16(smem, io->src, true);       // group 0
        cp_async_commit();
        cp_async_8(smem + 4, io->src + 4, true);  // group 1
        cp_async_4(smem + 6, io->src + 6, true);
        cp_async_4(smem + 7, io->src + 7, true);
        cp_async_commit();
        for (int i = 0; i < 4; ++i) io->before_wait[i] = smem[i];
        cp_async_wait<1>();
        for (int i = 0; i < 8; ++i) io->after_wait1[i] = smem[i];
        cp_async_wait<0>();
        for (int i = 0; i < 8; ++i) io->after_wait0[i] = smem[i];
        // Zero-fill: the source is never read, so even an invalid address is fine.
        cp_async_16(smem + 8, reinterpret_cast<const void*>(uintptr_t(16)), false);
        cp_async_commit();
        cp_async_wait<0>();
        for (int i = 0; i < 4; ++i) io->zero_filled[i] = smem[8 + i];
    }
    __syncthreads();
    // Every thread copies 16 bytes of src into the second half of smem, then reads a neighbour's.
    cp_async_16(smem + 64 + 4 * (tid % 16), io->src + 4 * (tid % 16), true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const int other = (tid + 5) % 16;
    for (int i = 0; i < 4; ++i) io->neighbour[4 * other + i] = smem[64 + 4 * other + i];
}

static bool is_poison(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u == 0xFFFFFFFFu;
}

static void check_cp_async(std::mt19937& rng) {
    CpIo io;
    for (float& v : io.src) v = (float)(rng() % 1000) / 8.0f + 1.0f;
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(64), 128 * 4, 11};
    fusedrop::host::launch("cp_async_kernel", cp_async_kernel, cfg, &io);
    bool before = true, wait1 = true, wait0 = true, zero = true, neighbour = true;
    for (int i = 0; i < 4; ++i) before = before && is_poison(io.before_wait[i]);
    for (int i = 0; i < 8; ++i) {
        wait1 = wait1 && (i < 4 ? io.after_wait1[i] == io.src[i] : is_poison(io.after_wait1[i]));
        wait0 = wait0 && io.after_wait0[i] == io.src[i];
    }
    for (int i = 0; i < 4; ++i) zero = zero && io.zero_filled[i] == 0.0f;
    for (int i = 0; i < 64; ++i) neighbour = neighbour && io.neighbour[i] == io.src[i];
    check(before, "cp.async: the destination is undefined (poison) before wait_group");
    check(wait1, "cp.async.wait_group 1 retires only the older group");
    check(wait0, "cp.async.wait_group 0 retires every group (16, 8 and 4 bytes)");
    check(zero, "cp.async with src-size 0 zero-fills without reading the source");
    check(neighbour, "cp.async + wait_group + __syncthreads hands data to other threads");
}

// ---------------------------------------------------------------------------------------------
// The model's safety nets.

struct RaceIo {
    float out[256];
};

// Every thread writes its slot, then reads a slot of a thread of another warp; `with_barrier`
// decides whether a __syncthreads separates the two.
// `salt` differs between launches, so what an earlier launch left in the static array is stale.
template <bool with_barrier>
__global__ void exchange_kernel(RaceIo* io, float salt) {
    __shared__ float slots[256];
    const int tid = threadIdx.x;
    slots[tid] = (float)tid + salt;
    if (with_barrier) __syncthreads();
    io->out[tid] = slots[(tid + 96) % 256];
}

static int exchange_errors(bool with_barrier, uint64_t seed) {
    RaceIo io;
    const float salt = 0.5f + (float)seed * 1000.0f;
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(256), 0, seed};
    if (with_barrier)
        fusedrop::host::launch("exchange_kernel", exchange_kernel<true>, cfg, &io, salt);
    else
        fusedrop::host::launch("exchange_kernel", exchange_kernel<false>, cfg, &io, salt);
    int wrong = 0;
    for (int t = 0; t < 256; ++t) wrong += io.out[t] != (float)((t + 96) % 256) + salt;
    return wrong;
}

static void check_barrier() {
    bool ok = true;
    for (uint64_t seed = 0; seed < 8; ++seed) ok = ok && exchange_errors(true, seed) == 0;
    check(ok, "__syncthreads orders shared-memory writes before reads under 8 schedules");
    int worst = 0;
    for (uint64_t seed = 0; seed < 8; ++seed) worst = std::max(worst, exchange_errors(false, seed));
    check(worst > 0, "a missing __syncthreads gives wrong reads under some schedule (" +
                         std::to_string(worst) + " of 256 at worst)");
}

__global__ void divergent_barrier_kernel(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

__global__ void exited_lane_shfl_kernel(int* out) {
    if (threadIdx.x == 7) return;
    out[threadIdx.x] = (int)shfl_xor((uint32_t)threadIdx.x, 1);
}

__global__ void partial_warp_shfl_kernel(int* out) {
    out[threadIdx.x] = (int)shfl_idx((uint32_t)threadIdx.x, 0);
}

__global__ void misaligned_cp_async_kernel(const float* src) {
    FUSEDROP_DYNAMIC_SMEM(float, smem);
    cp_async_16(smem, src + 1, true);
    cp_async_commit();
    cp_async_wait<0>();
}

__global__ void misaligned_ldmatrix_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    uint32_t r[1];
    ldmatrix_x1(r, smem + 8 * (threadIdx.x % 8) + 4);
    out[threadIdx.x] = (int)r[0];
}

int main(int argc, char** argv) {
    const std::string what = argc > 1 ? argv[1] : "checks";
    static int sink[64];
    alignas(16) static float src[16];
    fusedrop::host::LaunchConfig warp{dim3(1), dim3(32), 512, 1};
    if (what == "checks") {
        std::mt19937 rng(12345);
        check_mma<__half>("f16", rng);
        check_mma<__nv_bfloat16>("bf16", rng);
        check_ldmatrix(rng);
        check_ldmatrix_mma<__half>("f16", rng);
        check_ldmatrix_mma<__nv_bfloat16>("bf16", rng);
        check_shfl(rng);
        check_cp_async(rng);
        check_barrier();
        return g_failures == 0 ? 0 : 1;
    }
    if (what == "race") {
        const uint64_t seed = argc > 2 ? strtoull(argv[2], nullptr, 10) : 0;
        printf("%d\n", exchange_errors(false, seed));
        return 0;
    }
    if (what == "divergent_barrier")
        fusedrop::host::launch(what.c_str(), divergent_barrier_kernel, warp, sink);
    else if (what == "exited_lane_shfl")
        fusedrop::host::launch(what.c_str(), exited_lane_shfl_kernel, warp, sink);
    else if (what == "partial_warp_shfl")
        fusedrop::host::launch(what.c_str(), partial_warp_shfl_kernel,
                               fusedrop::host::LaunchConfig{dim3(1), dim3(40), 0, 1}, sink);
    else if (what == "misaligned_cp_async")
        fusedrop::host::launch(what.c_str(), misaligned_cp_async_kernel, warp, (const float*)src);
    else if (what == "misaligned_ldmatrix")
        fusedrop::host::launch(what.c_str(), misaligned_ldmatrix_kernel, warp, sink);
    else {
        fprintf(stderr, "unknown case %s\n", what.c_str());
        return 2;
    }
    printf("the harness did not catch %s\n", what.c_str());
    return 0;
}
