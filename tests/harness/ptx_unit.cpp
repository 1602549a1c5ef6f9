// Unit tests of the host bodies of kernels/ptx.cuh and of the harness's execution model, run by
// tests/kernels_on_cpu/.
//
//   ptx_unit checks        every positive check; prints one line per check, exit 1 on a failure
//   ptx_unit <misuse>      one kernel that misuses the model; the harness must abort (exit 3):
//                          divergent_barrier, exited_lane_shfl, misaligned_cp_async,
//                          misaligned_ldmatrix, ldmatrix_bank_conflict, misaligned_stmatrix,
//                          stmatrix_bank_conflict, stmatrix_rows_overlap,
//                          stmatrix_fenced_except_one_lane, partial_warp_shfl,
//                          mbarrier_deadlock, flag_wait_on_later_block,
//                          flag_in_shared_memory, co_resident_cluster_op,
//                          named_barrier_shared,
//                          mbarrier_uninitialised, mbarrier_over_arrival, wgmma_without_fence,
//                          wgmma_no_fence_after_wait, wgmma_unfenced_operand,
//                          wgmma_accumulators_unfenced_after_wait,
//                          wgmma_registers_unfenced_before_fence,
//                          wgmma_unfenced_in_second_block,
//                          warpgroup_missing_warp, tma_misaligned_swizzle, wgmma_base_offset,
//                          tma_store_not_waited, tma_store_source_overwritten,
//                          tma_store_unfenced_source, tma_load_over_unfenced_store,
//                          tma_store_fenced_by_issuer_only, wgmma_operand_fenced_by_one_thread,
//                          wgmma_operand_fenced_after_arrive,
//                          wgmma_operand_fenced_after_barrier,
//                          wgmma_operand_written_in_flight,
//                          tma_barrier_init_unpublished, tma_load_destination_written,
//                          cluster_unmapped_address,
//                          cluster_exited_block, cluster_arrival_cta_wait,
//                          cluster_barrier_init_unpublished
//   ptx_unit race <seed>   a kernel with a missing barrier: prints how many elements were wrong
//
// The fragment layouts are written out here a second time, from the PTX ISA's formulas, so that
// the host bodies are checked against the plain matrix product rather than against themselves.
// `checks` also runs the register-path ReLU backward's pair rule (backward.cuh's
// relu_dz_pair_or_nan, pair_element_index, apply_keep_halves) against form_dz4 for every 16-bit
// pattern of Y.
#include "backward.cuh"
#include "ptx.cuh"

#include <random>
#include <string>
#include <utility>

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
    uint32_t out[2][32][4];  // per variant (plain, .trans), per lane
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
    uint32_t r4[4], t4[4];
    ldmatrix_x4(r4, row);
    ldmatrix_x4_trans(t4, row);
    for (int j = 0; j < 4; ++j) io->out[0][lane][j] = r4[j], io->out[1][lane][j] = t4[j];
}

static void check_ldmatrix(std::mt19937& rng) {
    LdIo io;
    for (auto& mat : io.m)
        for (auto& row : mat)
            for (auto& v : row) v = (uint16_t)rng();
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 32 * 48, 3};
    fusedrop::host::launch("ldmatrix_kernel", ldmatrix_kernel, cfg, &io);
    const char* names[2] = {"x4", "x4.trans"};
    for (int v = 0; v < 2; ++v) {
        bool ok = true;
        const bool trans = v == 1;
        for (int lane = 0; lane < 32; ++lane)
            for (int j = 0; j < 4; ++j) {
                // Lane l holds (row l/4, cols 2(l%4), 2(l%4)+1); .trans the same of the transpose.
                const int r = lane / 4, c = 2 * (lane % 4);
                const uint32_t want = trans ? pack(io.m[j][c][r], io.m[j][c + 1][r])
                                            : pack(io.m[j][r][c], io.m[j][r][c + 1]);
                ok = ok && io.out[v][lane][j] == want;
            }
        check(ok, std::string("ldmatrix ") + names[v] + " fragments");
    }
}

// stmatrix: each lane's four registers written to the scattered rows of check_ldmatrix, read
// back by ldmatrix from the same rows.
struct StIo {
    uint32_t in[32][4];
    uint16_t rows[4][8][24];  // every row's slot (48 bytes) after the stmatrix
    uint32_t back[32][4];
};

__global__ void stmatrix_kernel(StIo* io) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    const int lane = threadIdx.x;
    uint16_t* row = smem + row_slot(lane / 8, lane % 8) * 24;
    uint32_t r[4];
    for (int j = 0; j < 4; ++j) r[j] = io->in[lane][j];
    stmatrix_x4(row, r);
    __syncwarp();
    for (int i = 0; i < 24; ++i) io->rows[lane / 8][lane % 8][i] = row[i];
    uint32_t b[4];
    ldmatrix_x4(b, row);
    for (int j = 0; j < 4; ++j) io->back[lane][j] = b[j];
}

static void check_stmatrix(std::mt19937& rng) {
    StIo io;
    for (auto& lane : io.in)
        for (auto& v : lane) v = (uint32_t)rng();
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 32 * 48, 4};
    fusedrop::host::launch("stmatrix_kernel", stmatrix_kernel, cfg, &io);
    bool rows_ok = true, rest_ok = true;
    for (int j = 0; j < 4; ++j)
        for (int r = 0; r < 8; ++r) {
            for (int c = 0; c < 8; ++c) {
                // Row r, column c of matrix j is half c % 2 of register j of lane 4 r + c / 2.
                const uint32_t reg = io.in[4 * r + c / 2][j];
                rows_ok = rows_ok && io.rows[j][r][c] == (uint16_t)(reg >> (16 * (c % 2)));
            }
            // The slot's other 32 bytes keep the harness's 0xFF poison: 16 bytes per row written.
            for (int c = 8; c < 24; ++c) rest_ok = rest_ok && io.rows[j][r][c] == 0xFFFF;
        }
    bool back_ok = true;
    for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j) back_ok = back_ok && io.back[lane][j] == io.in[lane][j];
    check(rows_ok, "stmatrix x4 rows hold lane 4r + c/2's register j (the ldmatrix layout)");
    check(rest_ok, "stmatrix x4 writes 16 bytes per row and nothing else");
    check(back_ok, "stmatrix x4 then ldmatrix x4 of the same rows returns the registers");
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
    uint32_t a[4], w4[4], t4[4];
    // Matrices of x4: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
    ldmatrix_x4(a, sa + (lane % 16) * 24 + (lane / 16) * 8);
    // B from W (n x k): matrix 0 = k 0-7, matrix 1 = k 8-15, rows are n (lanes 16-31 load the
    // same two again; the kernels fill those with the next n8 block's).
    ldmatrix_x4(w4, sw + (lane % 8) * 24 + ((lane / 8) % 2) * 8);
    // B from Bt (k x n): rows are k, 0-7 then 8-15; .trans gives the col-major fragment.
    ldmatrix_x4_trans(t4, sbt + (lane % 16) * 16);
    const uint32_t b[2] = {w4[0], w4[1]}, bt[2] = {t4[0], t4[1]};
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
    check(err_w < 1e-6, std::string("ldmatrix.x4 + ldmatrix.x4 + mma ") + name + " = X*W^T");
    check(err_t < 1e-6, std::string("ldmatrix.x4 + ldmatrix.x4.trans + mma ") + name + " = X*W^T");
}

// ---------------------------------------------------------------------------------------------
// Shuffles.

struct ShflIo {
    uint32_t in[32];
    uint32_t bfly[32][32];  // per lane mask, per lane
};

__global__ void shfl_kernel(ShflIo* io) {
    const int lane = threadIdx.x;
    // Every mask the 5-bit field holds, and one beyond it (only its low 5 bits count).
    for (int mask = 0; mask < 32; ++mask) io->bfly[mask][lane] = shfl_xor(io->in[lane], mask);
    io->bfly[0][lane] = shfl_xor(io->in[lane], 32);
}

static void check_shfl(std::mt19937& rng) {
    ShflIo io;
    for (uint32_t& v : io.in) v = (uint32_t)rng();
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(32), 0, 9};
    fusedrop::host::launch("shfl_kernel", shfl_kernel, cfg, &io);
    bool ok = true;
    for (int mask = 0; mask < 32; ++mask)
        for (int l = 0; l < 32; ++l) ok = ok && io.bfly[mask][l] == io.in[l ^ mask];
    check(ok, "shfl.sync.bfly for every lane mask (a mask of 32 counts as 0)");
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
        cp_async_16(smem + 4, io->src + 4, true);  // group 1
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
    check(wait0, "cp.async.wait_group 0 retires every group");
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

// Whether the 16-bit T `got` is `want` rounded to T, every NaN counting as the same (NaN payloads
// are not part of the contract).
template <typename T>
static bool same_as_rounded(uint16_t got, float want) {
    const float g = value_of<T>(got);
    return (g != g && want != want) || (g == want && got == bits_of<T>(want));
}

// The MaskParams of the form_dz checks: scale 1 (the kernels' unit mask), p = 0.5 or 0.
static fusedrop::MaskParams unit_mask(bool p_half, uint64_t subsequence, uint64_t n_global,
                                      uint64_t col_offset) {
    fusedrop::MaskParams unit{};
    unit.seed = 0x5eedULL;
    unit.subsequence = subsequence;
    unit.seed_subsequence = nullptr;
    unit.threshold = p_half ? (1ULL << 31) : 0;
    unit.scale = 1.0f;
    unit.n_global = n_global;
    unit.col_offset = col_offset;
    return unit;
}

// A register pair of ReLU's dZ / scale as the mma.sync backward forms it
// (kernels/backward.cuh): relu_dz_pair_or_nan's bit rule, then, where a Y is NaN, keep_index of
// pair_element_index applied by apply_keep_halves.
template <typename T, bool kDown>
static uint32_t relu_pair_as_the_kernels_form_it(uint32_t dy, uint32_t y,
                                                 const fusedrop::MaskParams& unit, long long r,
                                                 long long c) {
    uint32_t nan = 0;
    const uint32_t pair = fusedrop::relu_dz_pair_or_nan<T>(dy, y, nan);
    uint32_t keep = 0;
    for (int e = 0; e < 2; ++e)
        if ((nan >> e) & 1u)
            keep |= (fusedrop::keep_index(unit, fusedrop::pair_element_index<kDown>(unit, r, c, e))
                         ? 1u
                         : 0u)
                    << e;
    return fusedrop::apply_keep_halves<T>(pair, nan, keep, unit.scale);
}

// That pair against form_dz4 (the SIMT kernel's rule on floats, scale 1) for every 16-bit
// pattern of Y in either half, several dY, both pair directions, p = 0 and 0.5.
template <typename T>
static void check_form_dz_pair(const char* name) {
    const float dys[] = {1.5f, -2.25f, 0.0f, 65504.0f, INFINITY, NAN};
    bool ok = true;
    for (int p_half = 0; p_half < 2 && ok; ++p_half) {
        const fusedrop::MaskParams unit = unit_mask(p_half != 0, 3, 1000, 0);
        for (uint32_t yb = 0; yb < 0x10000u && ok; ++yb) {
            for (float dyf : dys) {
                const uint16_t db = bits_of<T>(dyf);
                const uint16_t other = bits_of<T>(0.75f);
                // Y's pattern in the low half (partner Y = 0.75), then in the high half.
                for (int high = 0; high < 2; ++high) {
                    const uint32_t y = high ? (yb << 16) | other : (uint32_t(other) << 16) | yb;
                    const uint32_t dy = (uint32_t(db) << 16) | db;
                    const long long r = 7, c = 5 + (long long)(yb % 4);
                    T ys[2];
                    const uint16_t yh[2] = {(uint16_t)(y & 0xffffu), (uint16_t)(y >> 16)};
                    memcpy(&ys[0], &yh[0], 2);
                    memcpy(&ys[1], &yh[1], 2);
                    T dt;
                    memcpy(&dt, &db, 2);
                    const float v = fusedrop::Element<T>::to_float(dt);
                    // form_dz4 at (r, c) for the pair along a row; at (r, c) and (r + 1, c) down.
                    float along[4] = {v, v, 0.0f, 0.0f}, first[4] = {v, 0, 0, 0},
                          second[4] = {v, 0, 0, 0};
                    const float y_along[4] = {fusedrop::Element<T>::to_float(ys[0]),
                                              fusedrop::Element<T>::to_float(ys[1]), 0.0f, 0.0f};
                    const float y_first[4] = {y_along[0], 0, 0, 0};
                    const float y_second[4] = {y_along[1], 0, 0, 0};
                    fusedrop::form_dz4(along, y_along, true, unit, 1000, r, c);
                    fusedrop::form_dz4(first, y_first, true, unit, 1000, r, c);
                    fusedrop::form_dz4(second, y_second, true, unit, 1000, r + 1, c);
                    const uint32_t got[2] = {
                        relu_pair_as_the_kernels_form_it<T, false>(dy, y, unit, r, c),
                        relu_pair_as_the_kernels_form_it<T, true>(dy, y, unit, r, c)};
                    const float want[2][2] = {{along[0], along[1]}, {first[0], second[0]}};
                    for (int d = 0; d < 2; ++d) {
                        for (int e = 0; e < 2; ++e) {
                            const uint16_t g = (uint16_t)(got[d] >> (16 * e));
                            const float gf = value_of<T>(g);
                            const float w = want[d][e];
                            if (!same_as_rounded<T>(g, w)) {
                                printf("relu pair %s: y bits %04x (%s half), dy %g, %s pair, "
                                       "element %d: %g, form_dz4 %g\n",
                                       name, yb, high ? "high" : "low", dyf,
                                       d ? "down" : "along", e, gf, w);
                                ok = false;
                            }
                        }
                    }
                }
            }
        }
    }
    check(ok, std::string("relu pair ") + name + ": every 16-bit Y against form_dz4");
}

// kernels/backward.cuh's form_dz_quad (the Hopper dW's and the mma.sync backward's rule on four
// packed elements) against form_dz4 on floats (scale 1): ReLU with every 16-bit pattern of Y at
// each of the four positions, and identity, at p = 0 and 0.5, at every alignment of the first
// linear index within its Philox call, in the matrix's interior and where the quad overhangs
// column n (the overhanging elements hold dY = Y = 0 there, as the kernels' zero fill gives).
template <typename T>
static void check_form_dz_quad(const char* name) {
    const float dys[] = {1.5f, -2.25f, 0.0f, 65504.0f, -INFINITY, NAN};
    const float others[] = {0.75f, -1.0f, 0.0f, INFINITY};
    bool ok = true;
    for (int p_half = 0; p_half < 2 && ok; ++p_half) {
        const fusedrop::MaskParams unit = unit_mask(p_half != 0, 5, 1001, 3);
        for (int relu = 0; relu < 2 && ok; ++relu) {
            const uint32_t patterns = relu ? 0x10000u : 64u;
            for (uint32_t yb = 0; yb < patterns && ok; ++yb) {
                const int at = (int)(yb % 4);
                const long long r = 11, c = 2 + (long long)(yb / 4 % 4);
                // n = 1001: inside; c + 2: the last two elements overhang.
                for (const long long n : {1001LL, c + 2}) {
                    float v[4], yv[4];
                    uint16_t dbits[4], ybits[4];
                    for (int j = 0; j < 4; ++j) {
                        const bool inside = c + j < n;
                        const float d = inside ? dys[(yb + (uint32_t)j) % 6] : 0.0f;
                        dbits[j] = bits_of<T>(d);
                        ybits[j] = !inside ? 0 : j == at ? (uint16_t)yb
                                                          : bits_of<T>(others[(yb + j) % 4]);
                        T dt, yt;
                        memcpy(&dt, &dbits[j], 2);
                        memcpy(&yt, &ybits[j], 2);
                        v[j] = fusedrop::Element<T>::to_float(dt);
                        yv[j] = fusedrop::Element<T>::to_float(yt);
                    }
                    uint32_t dy[2] = {dbits[0] | ((uint32_t)dbits[1] << 16),
                                      dbits[2] | ((uint32_t)dbits[3] << 16)};
                    const uint32_t y[2] = {ybits[0] | ((uint32_t)ybits[1] << 16),
                                           ybits[2] | ((uint32_t)ybits[3] << 16)};
                    fusedrop::form_dz4(v, yv, relu != 0, unit, n, r, c);
                    fusedrop::form_dz_quad<T>(dy, y, relu != 0, unit, n, r, c);
                    for (int j = 0; j < 4; ++j) {
                        const uint16_t g = (uint16_t)(dy[j / 2] >> (16 * (j % 2)));
                        const float gf = value_of<T>(g);
                        if (!same_as_rounded<T>(g, v[j])) {
                            printf("form_dz_quad %s: %s, p %s, y bits %04x at %d, c %lld, n "
                                   "%lld, element %d: %g, form_dz4 %g\n",
                                   name, relu ? "relu" : "identity", p_half ? "0.5" : "0", yb,
                                   at, c, n, j, gf, v[j]);
                            ok = false;
                        }
                    }
                }
            }
        }
    }
    check(ok, std::string("form_dz_quad ") + name + ": every 16-bit Y against form_dz4");
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
    out[threadIdx.x] = (int)shfl_xor((uint32_t)threadIdx.x, 1);
}

__global__ void misaligned_cp_async_kernel(const float* src) {
    FUSEDROP_DYNAMIC_SMEM(float, smem);
    cp_async_16(smem, src + 1, true);
    cp_async_commit();
    cp_async_wait<0>();
}

__global__ void misaligned_ldmatrix_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    uint32_t r[4];
    ldmatrix_x4(r, smem + 8 * (threadIdx.x % 8) + 4);
    out[threadIdx.x] = (int)r[0];
}

// Rows 32 bytes apart: rows 0 and 4 of the matrix share a 16-byte bank slot (a 2-way conflict),
// in a launch that declares its layouts conflict-free.
__global__ void ldmatrix_bank_conflict_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    uint32_t r[4];
    ldmatrix_x4(r, smem + 16 * (threadIdx.x % 8));
    out[threadIdx.x] = (int)r[0];
}

// ---------------------------------------------------------------------------------------------
// The Hopper model. Shared-memory images are built here from the PTX ISA's pictures: the
// swizzle as its table (a 128-byte line l of a pattern-aligned block holds, at 16-byte position
// p, chunk p ^ (l mod swizzle/16)), the wgmma operands from the canonical layouts written per
// mode, not through the harness's address formula.

static uint16_t rand_bits(std::mt19937& rng, bool bf16) {
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    return bf16 ? bits_of<__nv_bfloat16>(u(rng)) : bits_of<__half>(u(rng));
}

static float value_of_kind(int kind, uint16_t bits) {
    return kind == 0 ? value_of<__half>(bits) : value_of<__nv_bfloat16>(bits);
}

// Where the byte at offset `linear` of a swizzle-pattern-aligned region is stored.
static size_t table_swizzle(size_t linear, int swizzle_bytes) {
    if (swizzle_bytes == 0) return linear;
    const size_t line = linear / 128, chunk = linear % 128 / 16;
    return line * 128 + (chunk ^ (line % (size_t)(swizzle_bytes / 16))) * 16 + linear % 16;
}

// The first 1024-byte-aligned place (in the shared window) at or after `raw`.
__device__ inline unsigned char* align_1024(unsigned char* raw) {
    return raw + (1024 - smem_u32(raw) % 1024) % 1024;
}

// ---- stmatrix into a TMA store's source ----

// Warp 0 writes four 8 x 8 matrices side by side (matrix j: columns 8j .. 8j + 7 of an 8 x 64
// box of halves, 128-byte rows, no swizzle) with stmatrix; every thread but `unfenced_lane`
// fences (fence.proxy.async), and after a barrier thread 0 stores the box by TMA.
__global__ void stmatrix_tma_store_kernel(const __grid_constant__ CUtensorMap map,
                                          const uint32_t* regs, int unfenced_lane) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        const uint32_t r[4] = {regs[4 * lane], regs[4 * lane + 1], regs[4 * lane + 2],
                               regs[4 * lane + 3]};
        stmatrix_x4(stage + 128 * (lane % 8) + 16 * (lane / 8), r);
    }
    if ((int)threadIdx.x != unfenced_lane) fence_proxy_async_shared();
    __syncthreads();
    if (threadIdx.x == 0) {
        tma_store_2d(&map, stage, 0, 0);
        tma_store_commit();
        tma_store_wait_read<0>();
    }
}

alignas(16) static uint16_t g_stmatrix_tensor[8][64];

static CUtensorMap stmatrix_store_map() {
    CUtensorMap map;
    if (fusedrop::host::encode_tensor_map_2d(&map, 2, g_stmatrix_tensor, 64, 8, 128, 64, 8, 0) !=
        CUDA_SUCCESS) {
        fprintf(stderr, "encode_tensor_map_2d of the stmatrix box failed\n");
        exit(2);
    }
    return map;
}

static void check_stmatrix_tma_store(std::mt19937& rng) {
    uint32_t regs[32 * 4];
    for (auto& v : regs) v = (uint32_t)rng();
    memset(g_stmatrix_tensor, 0, sizeof g_stmatrix_tensor);
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(128), 2048, 5};
    fusedrop::host::launch("stmatrix_tma_store_kernel", stmatrix_tma_store_kernel, cfg,
                           stmatrix_store_map(), (const uint32_t*)regs, -1);
    bool ok = true;
    for (int r = 0; r < 8; ++r)
        for (int c = 0; c < 32; ++c) {
            const uint32_t reg = regs[4 * (4 * r + (c % 8) / 2) + c / 8];
            ok = ok && g_stmatrix_tensor[r][c] == (uint16_t)(reg >> (16 * (c % 2)));
        }
    check(ok, "stmatrix x4 fenced by every lane, then a TMA store: the box holds the matrices");
}

// stmatrix rows 8 bytes off 16-byte alignment.
__global__ void misaligned_stmatrix_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    const uint32_t r[4] = {1, 2, 3, 4};
    stmatrix_x4(smem + 8 * threadIdx.x + 4, r);
    out[threadIdx.x] = 0;
}

// Rows 32 bytes apart, in a launch that declares its layouts conflict-free (as
// ldmatrix_bank_conflict_kernel).
__global__ void stmatrix_bank_conflict_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    const uint32_t r[4] = {1, 2, 3, 4};
    stmatrix_x4(smem + 16 * threadIdx.x, r);
    out[threadIdx.x] = 0;
}

// Lanes l and l + 16 give the same row: two writes to one place.
__global__ void stmatrix_rows_overlap_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint16_t, smem);
    const uint32_t r[4] = {1, 2, 3, 4};
    stmatrix_x4(smem + 8 * (threadIdx.x % 16), r);
    out[threadIdx.x] = 0;
}

// ---- TMA load ----

struct TmaLoadIo {
    unsigned char* out;        // the stage after the wait (region bytes)
    unsigned char* early;      // the stage right after issue (region bytes)
    size_t region;
    uint32_t box_bytes;
    int32_t c0, c1;
    // Publish the barrier's initialisation to the async proxy with fence.proxy.async (the CUDA
    // programming guide's way) instead of fence.mbarrier_init (CUTLASS's).
    bool init_by_proxy_fence;
};

__global__ void tma_load_kernel(const __grid_constant__ CUtensorMap map, TmaLoadIo* io) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(stage + io->region);
    const int tid = threadIdx.x;
    if (tid == 0) {
        mbarrier_init(bar, 1);
        if (io->init_by_proxy_fence)
            fence_proxy_async_shared();
        else
            fence_mbarrier_init();
    }
    __syncthreads();
    if (tid == 40) {
        memset(stage, 0, io->region);
        // Ordered before the box's write (the async proxy's), which the zeros must not outlast.
        fence_proxy_async_shared();
        prefetch_tensormap(&map);
        mbarrier_arrive_expect_tx(bar, io->box_bytes);
        tma_load_2d(stage, &map, bar, io->c0, io->c1);
        memcpy(io->early, stage, io->region);
    }
    mbarrier_wait(bar, 0);
    for (size_t i = tid; i < io->region; i += blockDim.x) io->out[i] = stage[i];
}

static void check_tma_load(std::mt19937& rng) {
    bool ok_data = true, ok_early = true;
    int cases = 0;
    for (int element_bytes : {2, 4})
        for (int swizzle : {0, 32, 64, 128})
            for (int rep = 0; rep < 6; ++rep) {
                const uint32_t max_inner = swizzle == 0 ? 256u : (uint32_t)swizzle;
                const uint32_t inner_bytes = 16u * (1 + rng() % (max_inner / 16));
                const uint32_t box0 = std::min<uint32_t>(256, inner_bytes / element_bytes);
                const uint32_t box1 = 1 + rng() % 40;
                const uint64_t dim0 = 1 + rng() % 300, dim1 = 1 + rng() % 90;
                const uint64_t stride = (dim0 * element_bytes + 15) / 16 * 16 + 16 * (rng() % 3);
                // Boxes hanging over every edge, and some inside.
                const int step = 16 / element_bytes;
                const int32_t c0 = step * ((int32_t)(rng() % (dim0 / step + 3)) - 2);
                const int32_t c1 = (int32_t)(rng() % (dim1 + 6)) - 4;
                std::vector<unsigned char> tensor(stride * dim1);
                for (auto& b : tensor) b = (unsigned char)rng();
                const uint32_t row_bytes = box0 * element_bytes;
                const size_t region = ((size_t)row_bytes * box1 + 1023) / 1024 * 1024;
                std::vector<unsigned char> out(region), early(region), want(region, 0);
                for (uint32_t j = 0; j < box1; ++j)
                    for (uint32_t i = 0; i < box0; ++i) {
                        const int64_t row = c1 + (int64_t)j, col = c0 + (int64_t)i;
                        const bool inside = row >= 0 && col >= 0 && row < (int64_t)dim1 &&
                                            col < (int64_t)dim0;
                        const size_t at = table_swizzle((size_t)j * row_bytes + i * element_bytes,
                                                        swizzle);
                        for (int b = 0; b < element_bytes; ++b)
                            want[at + b] =
                                inside ? tensor[row * stride + col * element_bytes + b] : 0;
                    }
                CUtensorMap map;
                std::string why;
                if (fusedrop::host::encode_tensor_map_2d(&map, element_bytes, tensor.data(), dim0,
                                                          dim1, stride, box0, box1, swizzle,
                                                          &why) != CUDA_SUCCESS) {
                    check(false, "encode_tensor_map_2d of a valid map: " + why);
                    return;
                }
                TmaLoadIo io{out.data(), early.data(), region,
                             row_bytes * box1, c0, c1, rep % 2 == 1};
                fusedrop::host::LaunchConfig cfg{dim3(1), dim3(64), region + 1024 + 64,
                                                 (uint64_t)rep};
                fusedrop::host::launch("tma_load_kernel", tma_load_kernel, cfg, map, &io);
                for (size_t b = 0; b < (size_t)row_bytes * box1; ++b) {
                    const size_t at = table_swizzle(b, swizzle);
                    ok_early = ok_early && early[at] == 0xFF;
                }
                ok_data = ok_data && out == want;
                cases += 1;
            }
    check(ok_data, "tma_load_2d: " + std::to_string(cases) +
                       " boxes over the tensor's edges, 2- and 4-byte elements, every swizzle, "
                       "equal a plain copy with zero fill placed by the swizzle table (the "
                       "barrier's initialisation published by fence.mbarrier_init or "
                       "fence.proxy.async)");
    check(ok_early, "tma_load_2d: the destination is undefined (poison) until the load completes");
}

// Two loads in flight on two barriers, each waited for by a thread of its own warp: the thread
// that wakes first records its load's index, which is the load that landed first.
__global__ void tma_delivery_order_kernel(const __grid_constant__ CUtensorMap map, int* first) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(stage + 4096);
    int* landed = reinterpret_cast<int*>(stage + 4096 + 16);
    if (threadIdx.x == 0) {
        mbarrier_init(&bar[0], 1);
        mbarrier_init(&bar[1], 1);
        fence_mbarrier_init();
        *landed = -1;
    }
    __syncthreads();
    if (threadIdx.x == 0)
        for (int i = 0; i < 2; ++i) {
            mbarrier_arrive_expect_tx(&bar[i], 64 * 8 * 2);
            tma_load_2d(stage + 2048 * i, &map, &bar[i], 0, 0);
        }
    const int mine = threadIdx.x == 0 ? 1 : threadIdx.x == 32 ? 0 : -1;
    if (mine >= 0) {
        mbarrier_wait(&bar[mine], 0);
        if (*landed < 0) *landed = mine;
    }
    __syncthreads();
    if (threadIdx.x == 0) *first = *landed;
}

static void check_tma_delivery_order() {
    alignas(16) static unsigned char tensor[64 * 16 * 2];
    CUtensorMap map;
    if (fusedrop::host::encode_tensor_map_2d(&map, 2, tensor, 64, 16, 128, 64, 8, 128) !=
        CUDA_SUCCESS) {
        check(false, "encode_tensor_map_2d of a valid map");
        return;
    }
    bool seen[2] = {false, false};
    for (uint64_t seed = 0; seed < 16; ++seed) {
        int first = -1;
        fusedrop::host::LaunchConfig cfg{dim3(1), dim3(64), 8192, seed};
        fusedrop::host::launch("tma_delivery_order_kernel", tma_delivery_order_kernel, cfg, map,
                               &first);
        if (first == 0 || first == 1) seen[first] = true;
    }
    check(seen[0] && seen[1], "TMA loads in flight land in either order over 16 schedule seeds "
                              "(the GPU completes them in any order)");
}

// ---- TMA store ----

struct TmaStoreIo {
    const unsigned char* image_a;  // stage A as the threads write it
    const unsigned char* image_b;  // stage B as the threads write it
    unsigned char* tensor;         // the global tensor the map describes
    unsigned char* snapshot;       // the tensor after wait_read<1>
    size_t tensor_bytes, region;
    int32_t a0, a1, b0, b1;        // box coordinates of the two stores
};

__global__ void tma_store_kernel(const __grid_constant__ CUtensorMap map, TmaStoreIo* io) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage_a = align_1024(raw);
    unsigned char* stage_b = stage_a + io->region;
    for (size_t i = threadIdx.x; i < io->region; i += blockDim.x) {
        stage_a[i] = io->image_a[i];
        stage_b[i] = io->image_b[i];
    }
    fence_proxy_async_shared();
    __syncthreads();
    if (threadIdx.x == 3) {
        tma_store_2d(&map, stage_a, io->a0, io->a1);
        tma_store_commit();
        tma_store_2d(&map, stage_b, io->b0, io->b1);
        tma_store_commit();
        tma_store_wait_read<1>();
        memcpy(io->snapshot, io->tensor, io->tensor_bytes);
        tma_store_wait_read<0>();
    }
}

static void check_tma_store(std::mt19937& rng) {
    bool ok_first = true, ok_second = true;
    int cases = 0;
    for (int element_bytes : {2, 4})
        for (int swizzle : {0, 32, 64, 128})
            for (int rep = 0; rep < 4; ++rep) {
                const uint32_t max_inner = swizzle == 0 ? 256u : (uint32_t)swizzle;
                const uint32_t inner_bytes = 16u * (1 + rng() % (max_inner / 16));
                const uint32_t box0 = std::min<uint32_t>(256, inner_bytes / element_bytes);
                const uint32_t box1 = 1 + rng() % 24;
                const uint64_t dim0 = 1 + rng() % 200, dim1 = 1 + rng() % 60;
                const uint64_t stride = (dim0 * element_bytes + 15) / 16 * 16 + 16 * (rng() % 2);
                const int step = 16 / element_bytes;
                const int32_t a0 = step * ((int32_t)(rng() % (dim0 / step + 3)) - 2);
                const int32_t a1 = (int32_t)(rng() % (dim1 + 6)) - 4;
                const int32_t b0 = step * ((int32_t)(rng() % (dim0 / step + 3)) - 2);
                const int32_t b1 = (int32_t)(rng() % (dim1 + 6)) - 4;
                const uint32_t row_bytes = box0 * element_bytes;
                const size_t region = ((size_t)row_bytes * box1 + 1023) / 1024 * 1024;
                std::vector<unsigned char> tensor(stride * dim1), snapshot(tensor.size());
                for (auto& b : tensor) b = (unsigned char)rng();
                std::vector<unsigned char> image_a(region), image_b(region);
                for (size_t i = 0; i < region; ++i)
                    image_a[i] = (unsigned char)rng(), image_b[i] = (unsigned char)rng();
                // The plain store: element (j, i) of the box comes from its swizzled place.
                auto store = [&](std::vector<unsigned char>& t,
                                 const std::vector<unsigned char>& img, int32_t c0, int32_t c1) {
                    for (uint32_t j = 0; j < box1; ++j)
                        for (uint32_t i = 0; i < box0; ++i) {
                            const int64_t row = c1 + (int64_t)j, col = c0 + (int64_t)i;
                            if (row < 0 || col < 0 || row >= (int64_t)dim1 || col >= (int64_t)dim0)
                                continue;
                            const size_t at = table_swizzle(
                                (size_t)j * row_bytes + i * element_bytes, swizzle);
                            memcpy(&t[row * stride + col * element_bytes], &img[at], element_bytes);
                        }
                };
                std::vector<unsigned char> want_first = tensor;
                store(want_first, image_a, a0, a1);
                std::vector<unsigned char> want_second = want_first;
                store(want_second, image_b, b0, b1);
                CUtensorMap map;
                if (fusedrop::host::encode_tensor_map_2d(&map, element_bytes, tensor.data(), dim0,
                                                          dim1, stride, box0, box1,
                                                          swizzle) != CUDA_SUCCESS) {
                    check(false, "encode_tensor_map_2d of a valid map for a store");
                    return;
                }
                TmaStoreIo io{image_a.data(), image_b.data(), tensor.data(), snapshot.data(),
                              tensor.size(), region, a0, a1, b0, b1};
                fusedrop::host::LaunchConfig cfg{dim3(1), dim3(64), 2 * region + 1024,
                                                 (uint64_t)rep + 20};
                fusedrop::host::launch("tma_store_kernel", tma_store_kernel, cfg, map, &io);
                ok_first = ok_first && snapshot == want_first;
                ok_second = ok_second && tensor == want_second;
                cases += 1;
            }
    check(ok_first, "tma_store_2d: " + std::to_string(cases) +
                        " boxes over the tensor's edges, every swizzle, write exactly the "
                        "in-bounds elements, un-swizzled by the table");
    check(ok_second, "tma_store_2d: the second store of a thread lands at wait_group.read 0, "
                     "after the first one's wait_group.read 1");
}

// ---- encode_tensor_map_2d: the cuTensorMapEncodeTiled rules ----

static void check_tensor_map_rules() {
    alignas(16) static unsigned char buffer[64 * 1024];
    CUtensorMap map;
    std::string why;
    auto rejects = [&](int eb, const void* base, uint64_t d0, uint64_t d1, uint64_t stride,
                       uint32_t b0, uint32_t b1, int swz, const char* rule) {
        why.clear();
        const bool rejected = fusedrop::host::encode_tensor_map_2d(&map, eb, base, d0, d1, stride,
                                                                    b0, b1, swz, &why) ==
                              CUDA_ERROR_INVALID_VALUE;
        check(rejected && !why.empty(), std::string("encode_tensor_map_2d rejects ") + rule +
                                            " (" + why + ")");
    };
    check(fusedrop::host::encode_tensor_map_2d(&map, 2, buffer, 64, 100, 128, 64, 128, 128) ==
              CUDA_SUCCESS,
          "encode_tensor_map_2d accepts a 64 x 128 box of halves with 128-byte swizzle");
    rejects(2, buffer + 8, 64, 100, 128, 64, 128, 128, "a base that is not 16-byte aligned");
    rejects(2, buffer, 64, 100, 120, 8, 8, 0, "a row stride that is not a multiple of 16");
    rejects(2, buffer, 64, 100, 112, 8, 8, 0, "a row stride shorter than a row");
    rejects(2, buffer, 64, 100, 128, 8, 257, 0, "a box dimension over 256");
    rejects(2, buffer, 64, 100, 128, 0, 8, 0, "an empty box");
    rejects(2, buffer, 64, 100, 128, 12, 8, 0, "an inner box of 24 bytes (not a multiple of 16)");
    rejects(2, buffer, 128, 100, 256, 128, 8, 128,
            "an inner box of 256 bytes with 128-byte swizzle");
    rejects(2, buffer, 64, 100, 128, 64, 8, 64, "an inner box of 128 bytes with 64-byte swizzle");
    rejects(2, buffer, 64, 100, 128, 32, 8, 16, "a 16-byte swizzle");
    rejects(3, buffer, 64, 100, 192, 16, 8, 0, "3-byte elements");
    rejects(2, buffer, 0, 100, 128, 8, 8, 0, "an empty dimension");
}

// ---- mbarrier ----

struct MbarIo {
    int immediate[64];  // mbarrier_wait(parity 1) right after init returned
    int seen[6][32];    // what the consumer warp read in each phase
    int after[64];      // mbarrier_wait(parity 1) after the six phases returned
};

__global__ void mbarrier_kernel(MbarIo* io) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    uint64_t* full = reinterpret_cast<uint64_t*>(raw);
    uint64_t* empty = full + 1;
    int* slot = reinterpret_cast<int*>(raw + 64);
    const int tid = threadIdx.x, lane = tid % 32;
    if (tid == 0) {
        mbarrier_init(full, 32);
        mbarrier_init(empty, 32);
        fence_mbarrier_init();
    }
    __syncthreads();
    // The phase before phase 0 counts as complete: a producer's first wait on "empty".
    mbarrier_wait(empty, 1);
    io->immediate[tid] = 1;
    for (int phase = 0; phase < 6; ++phase) {
        if (tid >= 32) {
            mbarrier_wait(empty, (phase & 1) ^ 1);
            slot[lane] = 1000 * phase + lane;
            mbarrier_arrive(full);
        } else {
            mbarrier_wait(full, phase & 1);
            io->seen[phase][lane] = slot[lane];
            mbarrier_arrive(empty);
        }
    }
    mbarrier_wait(full, 1);
    io->after[tid] = 1;
}

static void check_mbarrier() {
    bool ok_immediate = true, ok_phases = true, ok_after = true;
    for (uint64_t seed = 0; seed < 6; ++seed) {
        MbarIo io;
        memset(&io, 0, sizeof io);
        fusedrop::host::LaunchConfig cfg{dim3(1), dim3(64), 256, seed};
        fusedrop::host::launch("mbarrier_kernel", mbarrier_kernel, cfg, &io);
        for (int t = 0; t < 64; ++t)
            ok_immediate = ok_immediate && io.immediate[t] == 1, ok_after = ok_after && io.after[t];
        for (int p = 0; p < 6; ++p)
            for (int l = 0; l < 32; ++l) ok_phases = ok_phases && io.seen[p][l] == 1000 * p + l;
    }
    check(ok_immediate,
          "mbarrier_wait with the parity of the phase before phase 0 returns at once");
    check(ok_phases, "mbarrier: six full/empty phases with alternating parity hand every value "
                     "from a producer warp to a consumer warp under 6 schedules");
    check(ok_after, "mbarrier_wait on a completed phase's parity returns at once");
}

// ---- Flags in global memory between blocks (flag_store_release, flag_wait_acquire) ----

struct FlagIo {
    uint32_t flags[4];
    float data[4][128];  // block b's values, which block b + 1 (or b - 1: `downward`) reads
    float seen[4][128];  // what each block read of its neighbour's
};

// A chain of 4 blocks of 128 threads: block b (after waiting for its neighbour's flag, the first
// block in the chain without waiting) reads its neighbour's values, adds its own and writes
// them, then its thread 0 flags them (release, after a __syncthreads). `upward`: block b waits
// for b - 1, as the stream-K grid does; otherwise for b + 1, which only blocks running at once
// can satisfy. `wait`: false leaves the wait out (the race a co-resident launch exposes).
__global__ void flag_chain_kernel(FlagIo* io, int upward, int wait) {
    const int b = (int)blockIdx.x, t = (int)threadIdx.x;
    const int from = upward ? b - 1 : b + 1;
    float before = 0.0f;
    if (from >= 0 && from < 4) {
        if (wait && t == 0) flag_wait_acquire(&io->flags[from], 1u);
        __syncthreads();
        before = io->data[from][t];
        io->seen[b][t] = before;
    }
    io->data[b][t] = before + (float)(1000 * (b + 1) + t);
    __syncthreads();
    if (t == 0) flag_store_release(&io->flags[b], 1u);
}

// Runs the chain once; whether every block saw its neighbour's final values.
static bool flag_chain(bool upward, bool wait, bool co_resident, uint64_t seed) {
    static FlagIo io;
    memset(&io, 0, sizeof io);
    for (auto& block : io.data)
        for (float& v : block) v = -1.0f;
    fusedrop::host::LaunchConfig cfg{dim3(4), dim3(128), 0, seed};
    cfg.co_resident = co_resident;
    fusedrop::host::launch("flag_chain_kernel", flag_chain_kernel, cfg, &io, (int)upward,
                           (int)wait);
    bool ok = true;
    for (int b = 0; b < 4; ++b) {
        const int from = upward ? b - 1 : b + 1;
        if (from < 0 || from > 3) continue;
        // The neighbour's values: the sum of the chain's terms up to it.
        for (int t = 0; t < 128; ++t) {
            float want = 0.0f;
            for (int c = upward ? 0 : 3; upward ? c <= from : c >= from; c += upward ? 1 : -1)
                want += (float)(1000 * (c + 1) + t);
            ok = ok && io.seen[b][t] == want;
        }
    }
    return ok;
}

static void check_flags() {
    bool sequential = true, together = true, downward = true;
    int races_seen = 0;
    for (uint64_t seed = 0; seed < 8; ++seed) {
        sequential = sequential && flag_chain(true, true, false, seed);
        together = together && flag_chain(true, true, true, seed);
        downward = downward && flag_chain(false, true, true, seed);
        races_seen += !flag_chain(true, false, true, seed);
    }
    check(sequential, "flags: a chain of 4 blocks, each waiting for the one before, one after "
                      "another (blocks run in order)");
    check(together, "flags: the same chain with the blocks co-resident under 8 schedules");
    check(downward, "flags: a chain waiting for the next block completes when the blocks are "
                    "co-resident");
    check(races_seen > 0, "flags: without the waits a co-resident launch reads unwritten values "
                          "(" + std::to_string(races_seen) + " of 8 schedules)");
}

// ---- Thread block clusters ----

struct ClusterIo {
    float seen[4][128];     // what thread t of rank r read from rank (r + 1) % 4
    int gathered[128];      // rank 0: how many of the other ranks' values it saw after its wait
    unsigned blocks[4];     // blockIdx.x of each rank
};

// Clusters of 4 blocks of 128 threads: every block fills its shared memory with its own values,
// the cluster barrier publishes them, each thread reads its neighbour rank's value through
// cluster_map / cluster_load_f32x4; then ranks 1..3 write a second value and arrive on rank 0's
// mbarrier remotely, and rank 0 reads them after its wait.
__global__ void cluster_kernel(ClusterIo* io) {
    FUSEDROP_DYNAMIC_SMEM(float, values);  // [128][4], then the barrier
    uint64_t* bar = reinterpret_cast<uint64_t*>(values + 512);
    const uint32_t rank = cluster_ctarank(), t = threadIdx.x;
    if (t == 0) {
        mbarrier_init(bar, 3 * 128);
        fence_mbarrier_init();
        io->blocks[rank] = blockIdx.x;
    }
    for (int j = 0; j < 4; ++j) values[4 * t + j] = (float)(1000 * rank + t);
    cluster_sync();
    float got[4];
    cluster_load_f32x4(cluster_map(values + 4 * t, (rank + 1) % 4), got);
    io->seen[rank][t] = got[0] == got[3] ? got[0] : -1.0f;
    cluster_sync();
    if (rank != 0) {
        for (int j = 0; j < 4; ++j) values[4 * t + j] = (float)(10000 * rank + t);
        mbarrier_arrive_cluster(cluster_map(bar, 0));
    } else {
        mbarrier_wait_cluster(bar, 0);
        int ok = 0;
        for (uint32_t r = 1; r < 4; ++r) {
            cluster_load_f32x4(cluster_map(values + 4 * t, r), got);
            ok += got[0] == (float)(10000 * r + t);
        }
        io->gathered[t] = ok;
    }
    // No block leaves while rank 0 may still read its shared memory.
    cluster_sync();
}

static void check_cluster() {
    bool neighbours = true, gathered = true, blocks = true;
    for (uint64_t seed = 0; seed < 4; ++seed) {
        ClusterIo io;
        memset(&io, 0, sizeof io);
        fusedrop::host::LaunchConfig cfg{dim3(8), dim3(128), 512 * 4 + 16, seed};
        cfg.cluster = 4;
        fusedrop::host::launch("cluster_kernel", cluster_kernel, cfg, &io);
        // The second cluster (blocks 4..7) ran last.
        for (unsigned r = 0; r < 4; ++r) {
            blocks = blocks && io.blocks[r] == 4 + r;
            for (int t = 0; t < 128; ++t)
                neighbours = neighbours && io.seen[r][t] == (float)(1000 * ((r + 1) % 4) + t);
        }
        for (int t = 0; t < 128; ++t) gathered = gathered && io.gathered[t] == 3;
    }
    check(blocks, "cluster: each block of a cluster of 4 reads its rank (%cluster_ctarank) and "
                  "sees its own blockIdx");
    check(neighbours, "cluster: ld.shared::cluster through mapa reads the neighbour block's "
                      "shared memory after the cluster barrier");
    check(gathered, "cluster: remote mbarrier arrivals from 3 blocks complete rank 0's phase "
                    "after their writes");
}

// ---- TMA multicast ----

struct MulticastIo {
    unsigned char out[2][2048];  // each block's 16 x 128-byte box after its own barrier's phase
};

// Clusters of 2 blocks: a 64 x 16 box of 2-byte elements (128-byte swizzle), block `rank` loading
// rows [8 rank, 8 rank + 8) and multicasting them to both blocks; each block's barrier expects
// the whole box (its own half and the other block's).
__global__ void multicast_kernel(const __grid_constant__ CUtensorMap map, MulticastIo* io) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* box = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(box + 2048);
    const uint32_t rank = blockIdx.x % 2;
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_mbarrier_init();
    }
    // Both barriers initialised before either block's multicast completes on them.
    cluster_sync();
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(bar, 2048);
        tma_load_2d_multicast(box + 1024 * rank, &map, bar, 0, (int32_t)(8 * rank), 0x3);
    }
    mbarrier_wait(bar, 0);
    for (int i = threadIdx.x; i < 2048; i += blockDim.x) io->out[rank][i] = box[i];
    // No block leaves while the other's multicast may still land in it.
    cluster_sync();
}

static void check_multicast() {
    alignas(16) static unsigned char tensor[16 * 128];
    std::mt19937 rng(7);
    for (auto& b : tensor) b = (unsigned char)rng();
    CUtensorMap map;
    if (fusedrop::host::encode_tensor_map_2d(&map, 2, tensor, 64, 16, 128, 64, 8, 128) !=
        CUDA_SUCCESS) {
        check(false, "encode_tensor_map_2d of a valid map for the multicast check");
        return;
    }
    bool ok = true;
    for (uint64_t seed = 0; seed < 4; ++seed) {
        static MulticastIo io;
        memset(&io, 0, sizeof io);
        fusedrop::host::LaunchConfig cfg{dim3(2), dim3(128), 2048 + 1024 + 64, seed};
        cfg.cluster = 2;
        fusedrop::host::launch("multicast_kernel", multicast_kernel, cfg, map, &io);
        for (int r = 0; r < 2; ++r)
            for (size_t j = 0; j < 16; ++j)
                for (size_t i = 0; i < 128; ++i)
                    ok = ok && io.out[r][table_swizzle(j * 128 + i, 128)] == tensor[j * 128 + i];
    }
    check(ok, "tma_load_2d_multicast: each block of a cluster of 2 loads half a box for both, and "
              "each block's barrier completes with the whole box in its shared memory");
}

// ---- wgmma ----

// A wgmma operand in shared memory: `rows` along M (A) or N (B), k = 16 * ksteps along K.
struct Operand {
    int swizzle = 0;        // 0, 32, 64, 128
    bool mn_major = false;  // the transpose bit
    int rows = 0, ksteps = 0;
    uint32_t lbo = 0, sbo = 0;
    std::vector<size_t> start;  // byte offset of each k-step's descriptor start
    std::vector<unsigned char> image;

    // The byte offset of element (i, k), from the canonical layouts of the PTX ISA, pattern by
    // pattern: core matrices without swizzle, swizzle atoms (8 rows of `swizzle` bytes) with.
    size_t offset(int i, int k) const {
        if (!mn_major && swizzle == 0)  // 8x8 core matrices, K halves adjacent
            return (size_t)(i / 8) * sbo + (size_t)(k / 8) * lbo + (i % 8) * 16 + (k % 8) * 2;
        if (!mn_major) {  // one atom column per swizzle width of K, 8-row atoms SBO apart
            const int per_row = swizzle / 2;
            const size_t atom = (size_t)(k / per_row) * rows * swizzle + (size_t)(i / 8) * sbo;
            return atom + table_swizzle((size_t)(i % 8) * swizzle + (k % per_row) * 2, swizzle);
        }
        if (swizzle == 0)  // 8 K rows of 8 elements of i per core matrix
            return (size_t)(i / 8) * sbo + (size_t)(k / 8) * lbo + (k % 8) * 16 + (i % 8) * 2;
        const int per_row = swizzle / 2;  // atoms of 8 K rows, `swizzle` bytes of i each
        const size_t atom = (size_t)(i / per_row) * lbo + (size_t)(k / 8) * sbo;
        return atom + table_swizzle((size_t)(k % 8) * swizzle + (i % per_row) * 2, swizzle);
    }

    Operand(int swz, bool mn, int r, int ks, const std::vector<uint16_t>& values)  // values[i][k]
        : swizzle(swz), mn_major(mn), rows(r), ksteps(ks) {
        const int k_total = 16 * ks;
        if (!mn && swz == 0) {
            lbo = 128;
            sbo = 256 * ks;
        } else if (!mn) {
            lbo = 4096;  // not used by the hardware for swizzled K-major layouts
            sbo = 8 * swz;
        } else if (swz == 0) {
            lbo = 128;
            sbo = 256 * ks;
        } else {
            sbo = 8 * swz;
            lbo = 2 * ks * 8 * swz;
        }
        size_t bytes = 0;
        for (int i = 0; i < r; ++i)
            for (int k = 0; k < k_total; ++k) bytes = std::max(bytes, offset(i, k) + 2);
        image.assign((bytes + 1023) / 1024 * 1024, 0xEE);
        for (int i = 0; i < r; ++i)
            for (int k = 0; k < k_total; ++k)
                memcpy(&image[offset(i, k)], &values[(size_t)i * k_total + k], 2);
        for (int s = 0; s < ks; ++s) {
            if (!mn && swz != 0) {
                const int per_row = swz / 2, k0 = 16 * s;
                start.push_back((size_t)(k0 / per_row) * r * swz + (size_t)(k0 % per_row) * 2);
            } else {
                start.push_back(offset(0, 16 * s));
            }
        }
    }
};

// The most k16 steps run_wgmma gives one product.
constexpr int kMaxWgmmaKsteps = 4;

struct WgmmaIo {
    const unsigned char* image_a;
    const unsigned char* image_b;
    size_t bytes_a, bytes_b;
    const size_t* start_a;
    const size_t* start_b;
    int swizzle_a, swizzle_b;
    uint32_t lbo_a, sbo_a, lbo_b, sbo_b;
    int ksteps;
    const uint16_t* a_values;  // [64][16 * ksteps], for A from registers
    float* out;                // [warpgroups][64][n]
    float* before_wait;        // [warpgroups][128]: d[0] between issue and wait
};

// Both warpgroups of the block compute the same product; each writes its own copy of D.
template <typename T, int N, int kTransA, int kTransB, bool kARegs>
__global__ void wgmma_kernel(WgmmaIo* io) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* sa = align_1024(raw);
    unsigned char* sb = sa + io->bytes_a;
    for (size_t i = threadIdx.x; i < io->bytes_a; i += blockDim.x) sa[i] = io->image_a[i];
    for (size_t i = threadIdx.x; i < io->bytes_b; i += blockDim.x) sb[i] = io->image_b[i];
    fence_proxy_async_shared();
    __syncthreads();
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128, w = t / 32, l = t % 32;
    float d[N / 2];
    for (int r = 0; r < N / 2; ++r) d[r] = 1.0e30f;  // ignored: the first wgmma has scale-d 0
    // Element e of k-step s's A fragment: row 16w + l/4 + 8((e >> 1) & 1),
    // column 2(l % 4) + (e & 1) + 8(e >> 2) of that k-step's 64 x 16 slice.
    uint32_t a[kMaxWgmmaKsteps][4] = {};
    if constexpr (kARegs)
        for (int s = 0; s < io->ksteps; ++s)
            for (int reg = 0; reg < 4; ++reg) {
                uint16_t half[2];
                for (int h = 0; h < 2; ++h) {
                    const int e = 2 * reg + h;
                    const int row = 16 * w + l / 4 + 8 * ((e >> 1) & 1);
                    const int col = 2 * (l % 4) + (e & 1) + 8 * (e >> 2);
                    half[h] = io->a_values[row * 16 * io->ksteps + 16 * s + col];
                }
                a[s][reg] = pack(half[0], half[1]);
            }
    fence_registers(a);
    fence_registers(d);
    wgmma_fence();
    for (int s = 0; s < io->ksteps; ++s) {
        const uint64_t desc_b = make_smem_desc(sb + io->start_b[s], io->swizzle_b, io->lbo_b,
                                               io->sbo_b);
        if constexpr (kARegs) {
            wgmma_rs<T, N, kTransB>(d, a[s], desc_b, s > 0);
        } else {
            const uint64_t desc_a = make_smem_desc(sa + io->start_a[s], io->swizzle_a, io->lbo_a,
                                                   io->sbo_a);
            wgmma_ss<T, N, kTransA, kTransB>(d, desc_a, desc_b, s > 0);
        }
    }
    wgmma_commit_group();
    io->before_wait[wg * 128 + t] = d[0];
    wgmma_wait_group<0>();
    fence_registers(d);
    float* out = io->out + (size_t)wg * 64 * N;
    for (int r = 0; r < N / 2; ++r) {
        const int row = 16 * w + l / 4 + 8 * ((r >> 1) & 1);
        const int col = 8 * (r >> 2) + 2 * (l % 4) + (r & 1);
        out[row * N + col] = d[r];
    }
}

struct WgmmaResult {
    double max_err = 0;
    bool nan_before_wait = true;
};

template <typename T, int N, int kTransA, int kTransB, bool kARegs>
static WgmmaResult run_wgmma(std::mt19937& rng, int swizzle_a, int swizzle_b, int ksteps) {
    constexpr int kind = MmaType<T>::kind;
    const int k_total = 16 * ksteps;
    std::vector<uint16_t> a((size_t)64 * k_total), b((size_t)N * k_total);  // a[m][k], b[n][k]
    for (auto& v : a) v = rand_bits(rng, kind == 1);
    for (auto& v : b) v = rand_bits(rng, kind == 1);
    const Operand op_a(swizzle_a, kTransA == 1, 64, ksteps, a);
    const Operand op_b(swizzle_b, kTransB == 1, N, ksteps, b);
    std::vector<float> out((size_t)2 * 64 * N, NAN), before(256, 0.0f);
    WgmmaIo io{op_a.image.data(), op_b.image.data(), op_a.image.size(), op_b.image.size(),
               op_a.start.data(), op_b.start.data(), swizzle_a, swizzle_b, op_a.lbo, op_a.sbo,
               op_b.lbo, op_b.sbo, ksteps, a.data(), out.data(), before.data()};
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(256),
                                     op_a.image.size() + op_b.image.size() + 1024, rng()};
    fusedrop::host::launch("wgmma_kernel", wgmma_kernel<T, N, kTransA, kTransB, kARegs>, cfg,
                           &io);
    WgmmaResult result;
    for (int wg = 0; wg < 2; ++wg)
        for (int m = 0; m < 64; ++m)
            for (int n = 0; n < N; ++n) {
                double want = 0, scale = 1;
                for (int k = 0; k < k_total; ++k) {
                    const double p = (double)value_of_kind(kind, a[(size_t)m * k_total + k]) *
                                     value_of_kind(kind, b[(size_t)n * k_total + k]);
                    want += p;
                    scale += std::fabs(p);
                }
                const float got = out[((size_t)wg * 64 + m) * N + n];
                const double err = std::isnan(got) ? INFINITY : std::fabs(got - want) / scale;
                result.max_err = std::max(result.max_err, err);
            }
    for (float v : before) result.nan_before_wait = result.nan_before_wait && std::isnan(v);
    return result;
}

// One configuration per transpose combination and N, each over every pair of swizzle modes.
template <typename T, int N, int kTransA, int kTransB, bool kARegs>
static void check_wgmma_config(std::mt19937& rng, const char* type_name) {
    double worst = 0;
    bool nan_before = true;
    for (int swizzle_a : {0, 32, 64, 128})
        for (int swizzle_b : {0, 32, 64, 128}) {
            if (kARegs && swizzle_a != 0) continue;
            const WgmmaResult r = run_wgmma<T, N, kTransA, kTransB, kARegs>(
                rng, swizzle_a, swizzle_b, 1 + (swizzle_a + swizzle_b) / 32 % 4);
            worst = std::max(worst, r.max_err);
            nan_before = nan_before && r.nan_before_wait;
        }
    const std::string what =
        std::string(kARegs ? "wgmma_rs " : "wgmma_ss ") + type_name + " m64n" +
        std::to_string(N) + "k16" + (kARegs ? "" : (kTransA ? " A M-major" : " A K-major")) +
        (kTransB ? " B N-major" : " B K-major") + ", every swizzle";
    check(worst < 1e-6, what + ": equals the plain product (max rel err " +
                            std::to_string(worst) + ")");
    check(nan_before, what + ": accumulators read before wgmma_wait_group are NaN");
}

template <int... I>
static void check_wgmma_every_n(std::mt19937& rng, std::integer_sequence<int, I...>) {
    double worst = 0;
    ((worst = std::max(worst,
                       run_wgmma<__half, 8 * (I + 1), 0, 0, false>(rng, 128, 128, 2).max_err)),
     ...);
    check(worst < 1e-6, "wgmma_ss f16 m64nNk16 for every N = 8, 16, .., 256 (max rel err " +
                            std::to_string(worst) + ")");
}

// Groups: chained accumulation across pending groups, and wait_group<1> retiring only the older.
struct GroupsIo {
    const unsigned char* image;  // A (64 x 16) then B (8 x 16), both K-major without swizzle
    size_t a_bytes, b_bytes;
    float* chained_mid;   // acc after wait<1>: still NaN (group 1 pending on the same registers)
    float* chained;       // acc after wait<0>: A*B + A*B
    float* separate_mid;  // second accumulator after wait<1>: NaN; first: A*B
    float* first_mid;
};

__global__ void wgmma_groups_kernel(GroupsIo* io) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* s = align_1024(raw);
    for (size_t i = threadIdx.x; i < io->a_bytes + io->b_bytes; i += blockDim.x)
        s[i] = io->image[i];
    fence_proxy_async_shared();
    __syncthreads();
    const int t = threadIdx.x;
    const uint64_t da = make_smem_desc(s, 0, 128, 256);
    const uint64_t db = make_smem_desc(s + io->a_bytes, 0, 128, 256);
    float acc[4], other[4];
    fence_registers(acc);
    wgmma_fence();
    wgmma_ss<__half, 8>(acc, da, db, false);
    wgmma_commit_group();
    wgmma_ss<__half, 8>(acc, da, db, true);
    wgmma_commit_group();
    wgmma_wait_group<1>();
    fence_registers(acc);
    for (int r = 0; r < 4; ++r) io->chained_mid[t * 4 + r] = acc[r];
    wgmma_wait_group<0>();
    fence_registers(acc);
    for (int r = 0; r < 4; ++r) io->chained[t * 4 + r] = acc[r];
    fence_registers(other);
    wgmma_fence();
    wgmma_ss<__half, 8>(acc, da, db, false);
    wgmma_commit_group();
    wgmma_ss<__half, 8>(other, da, db, false);
    wgmma_commit_group();
    wgmma_wait_group<1>();
    fence_registers(acc);
    fence_registers(other);
    for (int r = 0; r < 4; ++r) {
        io->first_mid[t * 4 + r] = acc[r];
        io->separate_mid[t * 4 + r] = other[r];
    }
    wgmma_wait_group<0>();
    fence_registers(other);
}

static void check_wgmma_groups(std::mt19937& rng) {
    std::vector<uint16_t> a(64 * 16), b(8 * 16);
    for (auto& v : a) v = rand_bits(rng, false);
    for (auto& v : b) v = rand_bits(rng, false);
    const Operand op_a(0, false, 64, 1, a), op_b(0, false, 8, 1, b);
    std::vector<unsigned char> image = op_a.image;
    image.insert(image.end(), op_b.image.begin(), op_b.image.end());
    std::vector<float> chained_mid(512), chained(512), separate_mid(512), first_mid(512);
    GroupsIo io{image.data(), op_a.image.size(), op_b.image.size(), chained_mid.data(),
                chained.data(), separate_mid.data(), first_mid.data()};
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(128), image.size() + 1024, 7};
    fusedrop::host::launch("wgmma_groups_kernel", wgmma_groups_kernel, cfg, &io);
    bool ok_mid = true, ok_chain = true, ok_first = true, ok_second = true;
    for (int t = 0; t < 128; ++t)
        for (int r = 0; r < 4; ++r) {
            const int w = t / 32, l = t % 32;
            const int row = 16 * w + l / 4 + 8 * ((r >> 1) & 1);
            const int col = 2 * (l % 4) + (r & 1);
            double p = 0;
            for (int k = 0; k < 16; ++k)
                p += (double)value_of<__half>(a[row * 16 + k]) * value_of<__half>(b[col * 16 + k]);
            ok_mid = ok_mid && std::isnan(chained_mid[t * 4 + r]);
            const double tol = 1e-5 * (1 + std::fabs(p));
            ok_chain = ok_chain && std::fabs(chained[t * 4 + r] - 2 * p) <= tol;
            ok_first = ok_first && std::fabs(first_mid[t * 4 + r] - p) <= tol;
            ok_second = ok_second && std::isnan(separate_mid[t * 4 + r]);
        }
    check(ok_chain,
          "wgmma: a wgmma accumulating onto a pending wgmma's registers adds to its result");
    check(ok_mid,
          "wgmma: registers still targeted by a pending group stay NaN after wait_group<1>");
    check(ok_first && ok_second,
          "wgmma.wait_group 1 retires the older group only (its registers defined, the newer NaN)");
}

// make_smem_desc: the fields where the PTX ISA puts them.
__global__ void desc_kernel(uint64_t* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    out[0] = make_smem_desc(raw, 0, 0, 0);
    out[1] = make_smem_desc(raw + 0x1230, 128, 16, 1024);
    out[2] = make_smem_desc(raw + 0x40, 64, 0x3FFF0, 512);
    out[3] = make_smem_desc(raw + 0x80, 32, 256, 0x20);
}

static void check_smem_desc() {
    uint64_t d[4];
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(1), 0x2000, 1};
    fusedrop::host::launch("desc_kernel", desc_kernel, cfg, d);
    const uint64_t base = d[0] & 0x3FFF;
    const bool ok = (d[0] >> 14) == 0 && (d[1] & 0x3FFF) == base + 0x123 &&
                    ((d[1] >> 16) & 0x3FFF) == 1 && ((d[1] >> 32) & 0x3FFF) == 64 &&
                    (d[1] >> 62) == 1 && ((d[1] >> 14) & 3) == 0 && ((d[1] >> 46) & 0xFFFF) == 0 &&
                    (d[2] & 0x3FFF) == base + 4 && ((d[2] >> 16) & 0x3FFF) == 0x3FFF &&
                    ((d[2] >> 32) & 0x3FFF) == 32 && (d[2] >> 62) == 2 &&
                    (d[3] & 0x3FFF) == base + 8 && ((d[3] >> 16) & 0x3FFF) == 16 &&
                    ((d[3] >> 32) & 0x3FFF) == 2 && (d[3] >> 62) == 3;
    check(ok, "make_smem_desc puts start >> 4, LBO >> 4, SBO >> 4 and the swizzle mode (1 = 128, "
              "2 = 64, 3 = 32 bytes) in bits 0, 16, 32 and 62");
}

// ---- A warp-specialised pipeline: one producer warpgroup (one thread issuing TMA), two
// consumer warpgroups (64 rows each), a ring of kStages stages with full/empty mbarriers.
// Y[m x n] (f32) = X[m x k] * W[n x k]^T for m <= 128, n <= kBlockN, any k (TMA zero fill). ----

template <typename T, int kBlockN, int kStages>
__global__ void pipeline_kernel(const __grid_constant__ CUtensorMap map_x,
                                const __grid_constant__ CUtensorMap map_w, float* y, int m,
                                int n, int k) {
    constexpr uint32_t kBytesA = 128 * 64 * 2, kBytesB = kBlockN * 64 * 2;
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stages = align_1024(raw);
    uint64_t* full = reinterpret_cast<uint64_t*>(stages + kStages * (kBytesA + kBytesB));
    uint64_t* empty = full + kStages;
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], 2);
        }
        fence_mbarrier_init();
    }
    __syncthreads();
    const int k_blocks = (k + 63) / 64;
    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (t == 0) {
            prefetch_tensormap(&map_x);
            prefetch_tensormap(&map_w);
            for (int kb = 0; kb < k_blocks; ++kb) {
                const int s = kb % kStages;
                mbarrier_wait(&empty[s], ((kb / kStages) & 1) ^ 1);
                unsigned char* a = stages + s * (kBytesA + kBytesB);
                mbarrier_arrive_expect_tx(&full[s], kBytesA + kBytesB);
                tma_load_2d(a, &map_x, &full[s], kb * 64, 0);
                tma_load_2d(a + kBytesA, &map_w, &full[s], kb * 64, 0);
            }
        }
        return;
    }
    setmaxnreg_inc<232>();
    const int c = wg - 1;
    float d[kBlockN / 2];
    for (int kb = 0; kb < k_blocks; ++kb) {
        const int s = kb % kStages;
        mbarrier_wait(&full[s], (kb / kStages) & 1);
        unsigned char* a = stages + s * (kBytesA + kBytesB) + c * 64 * 128;
        unsigned char* b = stages + s * (kBytesA + kBytesB) + kBytesA;
        fence_registers(d);
        wgmma_fence();
        for (int ks = 0; ks < 4; ++ks)
            wgmma_ss<T, kBlockN>(d, make_smem_desc(a + 32 * ks, 128, 16, 1024),
                                 make_smem_desc(b + 32 * ks, 128, 16, 1024), kb > 0 || ks > 0);
        wgmma_commit_group();
        // The previous stage's wgmmas are done once at most this one's group is pending.
        wgmma_wait_group<1>();
        fence_registers(d);
        if (kb > 0 && t == 0) mbarrier_arrive(&empty[(kb - 1) % kStages]);
    }
    wgmma_wait_group<0>();
    fence_registers(d);
    if (t == 0 && k_blocks > 0) mbarrier_arrive(&empty[(k_blocks - 1) % kStages]);
    const int w = t / 32, l = t % 32;
    for (int r = 0; r < kBlockN / 2; ++r) {
        const int row = 64 * c + 16 * w + l / 4 + 8 * ((r >> 1) & 1);
        const int col = 8 * (r >> 2) + 2 * (l % 4) + (r & 1);
        if (row < m && col < n) y[row * n + col] = d[r];
    }
}

template <typename T, int kBlockN, int kStages>
static double run_pipeline(std::mt19937& rng, int m, int n, int k, uint64_t seed) {
    constexpr int kind = MmaType<T>::kind;
    std::vector<uint16_t> x((size_t)m * k), w((size_t)n * k);
    for (auto& v : x) v = rand_bits(rng, kind == 1);
    for (auto& v : w) v = rand_bits(rng, kind == 1);
    std::vector<float> y((size_t)m * n, NAN);
    CUtensorMap map_x, map_w;
    if (fusedrop::host::encode_tensor_map_2d(&map_x, 2, x.data(), k, m, (uint64_t)k * 2, 64, 128,
                                              128) != CUDA_SUCCESS ||
        fusedrop::host::encode_tensor_map_2d(&map_w, 2, w.data(), k, n, (uint64_t)k * 2, 64,
                                              kBlockN, 128) != CUDA_SUCCESS)
        return INFINITY;
    const size_t smem = 1024 + kStages * (128 * 64 * 2 + kBlockN * 64 * 2) + 16 * kStages;
    fusedrop::host::LaunchConfig cfg{dim3(1), dim3(384), smem, seed};
    fusedrop::host::launch("pipeline_kernel", pipeline_kernel<T, kBlockN, kStages>, cfg, map_x,
                           map_w, y.data(), m, n, k);
    double worst = 0;
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
            double want = 0, scale = 1;
            for (int kk = 0; kk < k; ++kk) {
                const double p = (double)value_of_kind(kind, x[(size_t)i * k + kk]) *
                                 value_of_kind(kind, w[(size_t)j * k + kk]);
                want += p;
                scale += std::fabs(p);
            }
            const float got = y[(size_t)i * n + j];
            worst = std::max(worst, std::isnan(got) ? INFINITY : std::fabs(got - want) / scale);
        }
    return worst;
}

static void check_pipeline(std::mt19937& rng) {
    double worst = 0;
    for (uint64_t seed = 0; seed < 3; ++seed) {
        worst = std::max(worst, run_pipeline<__half, 64, 3>(rng, 100, 60, 200, seed));
        worst = std::max(worst, run_pipeline<__nv_bfloat16, 128, 3>(rng, 77, 128, 72, seed));
        worst = std::max(worst, run_pipeline<__half, 64, 3>(rng, 128, 64, 448, seed));
    }
    worst = std::max(worst, run_pipeline<__nv_bfloat16, 256, 4>(rng, 128, 256, 256, 5));
    check(worst < 1e-5, "producer warp + two consumer warpgroups over a 3-stage TMA/mbarrier ring "
                        "(and 4 stages at 128 x 256) compute X*W^T with edge tiles (max rel err " +
                            std::to_string(worst) + ")");
}

// ---- Misuse of the Hopper model ----

__global__ void mbarrier_deadlock_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint64_t, bar);
    if (threadIdx.x == 0) mbarrier_init(bar, 2);
    __syncthreads();
    if (threadIdx.x == 0) mbarrier_arrive(bar);
    mbarrier_wait(bar, 0);
    out[threadIdx.x] = 1;
}

// Flag misuse: a flag in shared memory; a cluster barrier in a co-resident launch.
__global__ void flag_in_shared_memory_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint32_t, flag);
    if (threadIdx.x == 0) flag_store_release(flag, 1u);
    out[threadIdx.x] = 1;
}

// Both warpgroups of a block on named barrier 3 of 128 threads.
__global__ void named_barrier_shared_kernel(int* out) {
    warpgroup_barrier<3>();
    if (threadIdx.x == 0) out[0] = 1;
}

__global__ void co_resident_cluster_op_kernel(int* out) {
    cluster_sync();
    if (threadIdx.x == 0) out[blockIdx.x] = 1;
}

__global__ void mbarrier_uninitialised_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint64_t, bar);
    mbarrier_arrive(bar);
    out[threadIdx.x] = 1;
}

// The misuse kernels below multiply zeros, m64n8k16: A (64 x 16) at byte 0 of the returned 4 KiB
// of shared memory, B (8 x 16) at byte 2048, written by every thread of the block, then (with
// `fence_proxy`) published to the async proxy, then ordered by a barrier.
__device__ unsigned char* zero_wgmma_operands(unsigned char* raw, bool fence_proxy) {
    unsigned char* s = align_1024(raw);
    for (int i = threadIdx.x; i < 4096; i += blockDim.x) s[i] = 0;
    if (fence_proxy) fence_proxy_async_shared();
    __syncthreads();
    return s;
}

__device__ void wgmma_zeros(float (&d)[4], const unsigned char* s, bool accumulate) {
    wgmma_ss<__half, 8>(d, make_smem_desc(s, 0, 128, 256), make_smem_desc(s + 2048, 0, 128, 256),
                        accumulate);
}

__global__ void wgmma_without_fence_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    const unsigned char* s = zero_wgmma_operands(raw, true);
    float d[4];
    fence_registers(d);
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    out[threadIdx.x] = d[0];
}

__global__ void wgmma_no_fence_after_wait_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    const unsigned char* s = zero_wgmma_operands(raw, true);
    float d[4];
    fence_registers(d);
    wgmma_fence();
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    fence_registers(d);
    out[threadIdx.x] = d[0];
    wgmma_zeros(d, s, true);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    out[threadIdx.x] = d[0];
}

// One correctly fenced wgmma of the zero operands at `s`, its result to out[threadIdx.x].
__device__ void wgmma_zeros_to(float* out, const unsigned char* s) {
    float d[4];
    fence_registers(d);
    wgmma_fence();
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    fence_registers(d);
    out[threadIdx.x] = d[0];
}

// An operand written, fenced and ordered by a barrier, but while the wgmma that reads it is still
// in flight (before the wait_group that retires it): the wgmma may read either value.
__global__ void wgmma_operand_written_in_flight_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* s = zero_wgmma_operands(raw, true);
    float d[4];
    fence_registers(d);
    wgmma_fence();
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    if (threadIdx.x == 0) s[2049] = 0x3C;  // B's first element: 0 becomes 1.0 (f16 0x3C00)
    fence_proxy_async_shared();
    __syncthreads();
    wgmma_wait_group<0>();
    fence_registers(d);
    out[threadIdx.x] = d[0];
}

// The operands are written by ordinary stores and ordered by the barrier alone: the wgmma (async
// proxy) may read the old bytes.
__global__ void wgmma_unfenced_operand_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    wgmma_zeros_to(out, zero_wgmma_operands(raw, false));
}

// Every thread writes its part of the operands, but only thread 0 fences: a proxy fence orders
// the fencing thread's own stores, so the other threads' may still be unseen by the wgmma.
__global__ void wgmma_operand_fenced_by_one_thread_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    wgmma_zeros_to(out, zero_wgmma_operands(raw, threadIdx.x == 0));
}

// Every thread writes its part of the operands and releases them (an mbarrier arrive: the
// transform warps' hand-over) before its fence.proxy.async: a thread that waited on the arrivals
// may issue the wgmma before the writers' fences.
__global__ void wgmma_operand_fenced_after_arrive_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* s = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(s + 4096);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, blockDim.x);
        fence_mbarrier_init();
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 4096; i += blockDim.x) s[i] = 0;
    mbarrier_arrive(bar);
    fence_proxy_async_shared();
    mbarrier_wait(bar, 0);
    wgmma_zeros_to(out, s);
}

// The same with __syncthreads as the release, the fence after it.
__global__ void wgmma_operand_fenced_after_barrier_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* s = align_1024(raw);
    for (int i = threadIdx.x; i < 4096; i += blockDim.x) s[i] = 0;
    __syncthreads();
    fence_proxy_async_shared();
    wgmma_zeros_to(out, s);
}

// The accumulators a wait retired are used by the thread's next operation without a
// fence_registers between: nvcc may move their reads above the wait.
__global__ void wgmma_accumulators_unfenced_after_wait_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    const unsigned char* s = zero_wgmma_operands(raw, true);
    float d[4];
    fence_registers(d);
    wgmma_fence();
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    out[threadIdx.x] = d[0];
    __syncthreads();
}

// A wgmma whose accumulators were not fenced before its wgmma_fence: nvcc may move writes of
// them below the fence.
__global__ void wgmma_registers_unfenced_before_fence_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    const unsigned char* s = zero_wgmma_operands(raw, true);
    float d[4];
    wgmma_fence();
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    fence_registers(d);
    out[threadIdx.x] = d[0];
}

// Only the first block fences before its wgmma_fence. The second runs on the same thread stacks
// (same register addresses), where the first block's fences must not count.
__global__ void wgmma_unfenced_in_second_block_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    const unsigned char* s = zero_wgmma_operands(raw, true);
    float d[4];
    if (blockIdx.x == 0) fence_registers(d);
    wgmma_fence();
    wgmma_zeros(d, s, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    fence_registers(d);
    out[threadIdx.x] = d[0];
}

__global__ void warpgroup_missing_warp_kernel(float* out) {
    if (threadIdx.x / 32 == 3) return;
    wgmma_fence();
    out[threadIdx.x] = 1.0f;
}

__global__ void tma_misaligned_swizzle_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw) + 512;
    uint64_t* bar = reinterpret_cast<uint64_t*>(align_1024(raw) + 8192);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_mbarrier_init();
        mbarrier_arrive_expect_tx(bar, 64 * 8 * 2);
        tma_load_2d(stage, &map, bar, 0, 0);
        mbarrier_wait(bar, 0);
    }
}

// An ordinary store into a TMA load's destination while the load is in flight.
__global__ void tma_load_destination_written_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(align_1024(raw) + 8192);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_mbarrier_init();
        mbarrier_arrive_expect_tx(bar, 64 * 8 * 2);
        tma_load_2d(stage, &map, bar, 0, 0);
        stage[300] = 7;
        mbarrier_wait(bar, 0);
    }
}

// A TMA load completing on a barrier whose initialisation no fence published to the async proxy.
__global__ void tma_barrier_init_unpublished_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(align_1024(raw) + 8192);
    if (threadIdx.x == 0) mbarrier_init(bar, 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(bar, 64 * 8 * 2);
        tma_load_2d(stage, &map, bar, 0, 0);
    }
    mbarrier_wait(bar, 0);
}

__global__ void wgmma_base_offset_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* s = align_1024(raw);
    float d[4];
    const uint64_t desc = make_smem_desc(s, 128, 16, 1024) | (3ull << 49);
    wgmma_fence();
    wgmma_ss<__half, 8>(d, desc, desc, false);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    out[threadIdx.x] = d[0];
}

__global__ void tma_store_not_waited_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    if (threadIdx.x == 0) {
        tma_store_2d(&map, align_1024(raw), 0, 0);
        tma_store_commit();
    }
}

__global__ void tma_store_source_overwritten_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    if (threadIdx.x == 0) {
        memset(stage, 1, 1024);
        fence_proxy_async_shared();
        tma_store_2d(&map, stage, 0, 0);
        tma_store_commit();
        // Too early: the store may not have read its source yet.
        stage[100] = 2;
        tma_store_wait_read<0>();
    }
}

// The store's source is fenced, then written once more before the store is issued.
__global__ void tma_store_unfenced_source_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    if (threadIdx.x == 0) {
        memset(stage, 1, 1024);
        fence_proxy_async_shared();
        stage[300] = 2;
        tma_store_2d(&map, stage, 0, 0);
        tma_store_commit();
        tma_store_wait_read<0>();
    }
}

// Every thread writes its part of the source; the threads do not fence, and the issuing thread
// fences after the barrier, which orders only its own stores before the TMA unit's read.
__global__ void tma_store_fenced_by_issuer_only_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    for (int i = threadIdx.x; i < 1024; i += blockDim.x) stage[i] = 1;
    __syncthreads();
    if (threadIdx.x == 0) {
        fence_proxy_async_shared();
        tma_store_2d(&map, stage, 0, 0);
        tma_store_commit();
        tma_store_wait_read<0>();
    }
}

// An ordinary store into a stage, then a TMA load into it with no fence between: the store may
// land after the box.
__global__ void tma_load_over_unfenced_store_kernel(const __grid_constant__ CUtensorMap map) {
    FUSEDROP_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* stage = align_1024(raw);
    uint64_t* bar = reinterpret_cast<uint64_t*>(align_1024(raw) + 8192);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_mbarrier_init();
        stage[40] = 7;
        mbarrier_arrive_expect_tx(bar, 64 * 8 * 2);
        tma_load_2d(stage, &map, bar, 0, 0);
        mbarrier_wait(bar, 0);
    }
}

__global__ void mbarrier_over_arrival_kernel(int* out) {
    FUSEDROP_DYNAMIC_SMEM(uint64_t, bar);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        mbarrier_arrive_expect_tx(bar, 16);
        mbarrier_arrive(bar);
    }
    out[threadIdx.x] = 1;
}

__global__ void cluster_unmapped_address_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(float, values);
    values[threadIdx.x] = 1.0f;
    cluster_sync();
    float got[4];
    // A shared::cta address where a mapa result belongs.
    cluster_load_f32x4(smem_u32(values), got);
    out[threadIdx.x] = got[0];
}

__global__ void cluster_exited_block_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(float, values);
    values[threadIdx.x] = 1.0f;
    cluster_sync();
    if (blockIdx.x % 2 == 1) return;
    // Rank 1's threads count as arrived once they exit, so past this barrier its shared memory
    // is gone.
    cluster_sync();
    float got[4];
    cluster_load_f32x4(cluster_map(values, 1), got);
    out[threadIdx.x] = got[0];
}

// Rank 1 writes its shared memory and arrives on rank 0's mbarrier (a release at cluster scope);
// rank 0 waits for it acquiring at CTA scope only, so the write is not ordered before rank 0's
// read of it.
__global__ void cluster_arrival_cta_wait_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(float, values);  // [128], then the barrier
    uint64_t* bar = reinterpret_cast<uint64_t*>(values + 128);
    if (threadIdx.x == 0) {
        mbarrier_init(bar, 1);
        fence_mbarrier_init();
    }
    cluster_sync();
    if (blockIdx.x % 2 == 1) {
        if (threadIdx.x == 0) {
            values[0] = 5.0f;
            mbarrier_arrive_cluster(cluster_map(bar, 0));
        }
    } else {
        mbarrier_wait(bar, 0);
        out[threadIdx.x] = cluster_load_f32(cluster_map(values, 1));
    }
    cluster_sync();
}

// Rank 0 initialises its mbarrier without fence.mbarrier_init; rank 1 arrives on it.
__global__ void cluster_barrier_init_unpublished_kernel(float* out) {
    FUSEDROP_DYNAMIC_SMEM(uint64_t, bar);
    if (threadIdx.x == 0) mbarrier_init(bar, 1);
    cluster_sync();
    if (blockIdx.x % 2 == 1) {
        if (threadIdx.x == 0) mbarrier_arrive_cluster(cluster_map(bar, 0));
    } else {
        mbarrier_wait_cluster(bar, 0);
    }
    out[threadIdx.x] = 1.0f;
    cluster_sync();
}

int main(int argc, char** argv) {
    const std::string what = argc > 1 ? argv[1] : "checks";
    static int sink[64];
    alignas(16) static float src[16];
    static float fsink[128];
    fusedrop::host::LaunchConfig warp{dim3(1), dim3(32), 512, 1};
    fusedrop::host::LaunchConfig warpgroup{dim3(1), dim3(128), 16384, 1};
    if (what == "checks") {
        std::mt19937 rng(12345);
        check_mma<__half>("f16", rng);
        check_mma<__nv_bfloat16>("bf16", rng);
        check_ldmatrix(rng);
        check_stmatrix(rng);
        check_stmatrix_tma_store(rng);
        check_ldmatrix_mma<__half>("f16", rng);
        check_ldmatrix_mma<__nv_bfloat16>("bf16", rng);
        check_shfl(rng);
        check_cp_async(rng);
        check_barrier();
        check_form_dz_pair<__half>("f16");
        check_form_dz_pair<__nv_bfloat16>("bf16");
        check_form_dz_quad<__half>("f16");
        check_form_dz_quad<__nv_bfloat16>("bf16");
        check_tensor_map_rules();
        check_tma_load(rng);
        check_tma_delivery_order();
        check_tma_store(rng);
        check_mbarrier();
        check_flags();
        check_cluster();
        check_multicast();
        check_smem_desc();
        check_wgmma_config<__half, 8, 0, 0, false>(rng, "f16");
        check_wgmma_config<__half, 16, 1, 1, false>(rng, "f16");
        check_wgmma_config<__half, 24, 0, 1, false>(rng, "f16");
        check_wgmma_config<__half, 64, 1, 0, false>(rng, "f16");
        check_wgmma_config<__half, 256, 0, 0, false>(rng, "f16");
        check_wgmma_config<__nv_bfloat16, 8, 1, 0, false>(rng, "bf16");
        check_wgmma_config<__nv_bfloat16, 32, 0, 0, false>(rng, "bf16");
        check_wgmma_config<__nv_bfloat16, 128, 0, 1, false>(rng, "bf16");
        check_wgmma_config<__nv_bfloat16, 256, 1, 1, false>(rng, "bf16");
        check_wgmma_config<__half, 16, 0, 0, true>(rng, "f16");
        check_wgmma_config<__half, 128, 0, 1, true>(rng, "f16");
        check_wgmma_config<__nv_bfloat16, 64, 0, 0, true>(rng, "bf16");
        check_wgmma_config<__nv_bfloat16, 256, 0, 1, true>(rng, "bf16");
        check_wgmma_every_n(rng, std::make_integer_sequence<int, 32>{});
        check_wgmma_groups(rng);
        check_pipeline(rng);
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
    else if (what == "ldmatrix_bank_conflict") {
        fusedrop::host::LaunchConfig conflict_free = warp;
        conflict_free.matrix_conflict_free = true;
        fusedrop::host::launch(what.c_str(), ldmatrix_bank_conflict_kernel, conflict_free, sink);
    } else if (what == "misaligned_stmatrix")
        fusedrop::host::launch(what.c_str(), misaligned_stmatrix_kernel, warp, sink);
    else if (what == "stmatrix_bank_conflict") {
        fusedrop::host::LaunchConfig conflict_free = warp;
        conflict_free.matrix_conflict_free = true;
        fusedrop::host::launch(what.c_str(), stmatrix_bank_conflict_kernel, conflict_free, sink);
    } else if (what == "stmatrix_rows_overlap")
        fusedrop::host::launch(what.c_str(), stmatrix_rows_overlap_kernel, warp, sink);
    else if (what == "stmatrix_fenced_except_one_lane") {
        // Lane 5 holds bytes 4 .. 7 of row 1 of every matrix: only its own fence publishes them,
        // whichever lane the harness ran the stmatrix on.
        static uint32_t regs[32 * 4];
        for (int i = 0; i < 32 * 4; ++i) regs[i] = 0x10001u * (uint32_t)i;
        fusedrop::host::launch(what.c_str(), stmatrix_tma_store_kernel, warpgroup,
                               stmatrix_store_map(), (const uint32_t*)regs, 5);
    } else if (what == "mbarrier_deadlock")
        fusedrop::host::launch(what.c_str(), mbarrier_deadlock_kernel, warp, sink);
    else if (what == "mbarrier_uninitialised")
        fusedrop::host::launch(what.c_str(), mbarrier_uninitialised_kernel, warp, sink);
    else if (what == "flag_wait_on_later_block")
        // Blocks one after another: block 0 waits for block 1, which has not run.
        flag_chain(false, true, false, 0);
    else if (what == "named_barrier_shared")
        fusedrop::host::launch(what.c_str(), named_barrier_shared_kernel,
                               fusedrop::host::LaunchConfig{dim3(1), dim3(256), 0, 1}, sink);
    else if (what == "flag_in_shared_memory")
        fusedrop::host::launch(what.c_str(), flag_in_shared_memory_kernel, warp, sink);
    else if (what == "co_resident_cluster_op") {
        fusedrop::host::LaunchConfig together{dim3(2), dim3(128), 0, 1};
        together.co_resident = true;
        fusedrop::host::launch(what.c_str(), co_resident_cluster_op_kernel, together, sink);
    }
    else if (what == "mbarrier_over_arrival")
        fusedrop::host::launch(what.c_str(), mbarrier_over_arrival_kernel, warp, sink);
    else if (what == "wgmma_without_fence")
        fusedrop::host::launch(what.c_str(), wgmma_without_fence_kernel, warpgroup, fsink);
    else if (what == "wgmma_operand_written_in_flight")
        fusedrop::host::launch(what.c_str(), wgmma_operand_written_in_flight_kernel, warpgroup,
                               fsink);
    else if (what == "wgmma_no_fence_after_wait")
        fusedrop::host::launch(what.c_str(), wgmma_no_fence_after_wait_kernel, warpgroup, fsink);
    else if (what == "wgmma_unfenced_operand")
        fusedrop::host::launch(what.c_str(), wgmma_unfenced_operand_kernel, warpgroup, fsink);
    else if (what == "wgmma_operand_fenced_after_arrive")
        fusedrop::host::launch(what.c_str(), wgmma_operand_fenced_after_arrive_kernel, warpgroup,
                               fsink);
    else if (what == "wgmma_operand_fenced_after_barrier")
        fusedrop::host::launch(what.c_str(), wgmma_operand_fenced_after_barrier_kernel, warpgroup,
                               fsink);
    else if (what == "wgmma_operand_fenced_by_one_thread")
        fusedrop::host::launch(what.c_str(), wgmma_operand_fenced_by_one_thread_kernel, warpgroup,
                               fsink);
    else if (what == "wgmma_accumulators_unfenced_after_wait")
        fusedrop::host::launch(what.c_str(), wgmma_accumulators_unfenced_after_wait_kernel,
                               warpgroup, fsink);
    else if (what == "wgmma_registers_unfenced_before_fence")
        fusedrop::host::launch(what.c_str(), wgmma_registers_unfenced_before_fence_kernel,
                               warpgroup, fsink);
    else if (what == "wgmma_unfenced_in_second_block")
        fusedrop::host::launch(what.c_str(), wgmma_unfenced_in_second_block_kernel,
                               fusedrop::host::LaunchConfig{dim3(2), dim3(128), 16384, 1}, fsink);
    else if (what == "warpgroup_missing_warp")
        fusedrop::host::launch(what.c_str(), warpgroup_missing_warp_kernel, warpgroup, fsink);
    else if (what == "cluster_unmapped_address" || what == "cluster_exited_block" ||
             what == "cluster_arrival_cta_wait" || what == "cluster_barrier_init_unpublished") {
        fusedrop::host::LaunchConfig pair{dim3(2), dim3(128), 1024, 1};
        pair.cluster = 2;
        if (what == "cluster_unmapped_address")
            fusedrop::host::launch(what.c_str(), cluster_unmapped_address_kernel, pair, fsink);
        else if (what == "cluster_barrier_init_unpublished")
            fusedrop::host::launch(what.c_str(), cluster_barrier_init_unpublished_kernel, pair,
                                   fsink);
        else if (what == "cluster_arrival_cta_wait")
            fusedrop::host::launch(what.c_str(), cluster_arrival_cta_wait_kernel, pair, fsink);
        else
            fusedrop::host::launch(what.c_str(), cluster_exited_block_kernel, pair, fsink);
    } else if (what == "wgmma_base_offset")
        fusedrop::host::launch(what.c_str(), wgmma_base_offset_kernel, warpgroup, fsink);
    else if (what == "tma_misaligned_swizzle" || what == "tma_store_not_waited" ||
             what == "tma_store_source_overwritten" || what == "tma_store_unfenced_source" ||
             what == "tma_load_over_unfenced_store" || what == "tma_barrier_init_unpublished" ||
             what == "tma_load_destination_written" ||
             what == "tma_store_fenced_by_issuer_only") {
        alignas(16) static unsigned char tensor[64 * 16 * 2];
        CUtensorMap map;
        if (fusedrop::host::encode_tensor_map_2d(&map, 2, tensor, 64, 16, 128, 64, 8, 128) !=
            CUDA_SUCCESS)
            return 2;
        if (what == "tma_misaligned_swizzle")
            fusedrop::host::launch(what.c_str(), tma_misaligned_swizzle_kernel, warpgroup, map);
        else if (what == "tma_store_not_waited")
            fusedrop::host::launch(what.c_str(), tma_store_not_waited_kernel, warpgroup, map);
        else if (what == "tma_load_destination_written")
            fusedrop::host::launch(what.c_str(), tma_load_destination_written_kernel, warpgroup,
                                   map);
        else if (what == "tma_barrier_init_unpublished")
            fusedrop::host::launch(what.c_str(), tma_barrier_init_unpublished_kernel, warpgroup,
                                   map);
        else if (what == "tma_load_over_unfenced_store")
            fusedrop::host::launch(what.c_str(), tma_load_over_unfenced_store_kernel, warpgroup,
                                   map);
        else if (what == "tma_store_source_overwritten")
            fusedrop::host::launch(what.c_str(), tma_store_source_overwritten_kernel, warpgroup,
                                   map);
        else if (what == "tma_store_fenced_by_issuer_only")
            fusedrop::host::launch(what.c_str(), tma_store_fenced_by_issuer_only_kernel,
                                   warpgroup, map);
        else
            fusedrop::host::launch(what.c_str(), tma_store_unfenced_source_kernel, warpgroup,
                                   map);
    } else {
        fprintf(stderr, "unknown case %s\n", what.c_str());
        return 2;
    }
    printf("the harness did not catch %s\n", what.c_str());
    return 0;
}
