// Tuning variants of the mma.sync forward (not used by the library's calls): the production
// kernel (forward_tc.cuh, aligned operands) instantiated with the main-loop choices of issue 12,
// so that one `fusedrop sweep` run on a GPU times each against the production configs:
//   tile 128 x 128 (4 warps of 64 x 64) or 128 x 256 (8 warps of 64 x 64),
//   k slice BK = 32 (4 stages) or 64 (4 stages at 128 x 128: 128 KiB; 3 at 128 x 256: 144 KiB;
//   both above the 99 KiB of sm_86 / sm_89, so they run on sm_80 and sm_90 only),
//   FRAG = 1 or 2 sets of warp fragments (gemm/threadblock_tc.cuh),
// except 128 x 256 with BK = 32 and FRAG = 2: ptxas spills it on sm_90 (255 registers, 16 bytes
// of stack), which build.rs refuses; and, with one fragment set, two more choices:
//   _spread: each slice's copies spread over its k16 steps (issue 12 (b), SPREAD),
//   _interleaved: the epilogue's threads store neighbouring 16-byte pieces (issue 12 (e),
//   INTERLEAVE; gemm/epilogue.cuh).
// Every variant takes the same mma sequence per output element as the production kernels, so
// their outputs are bit-identical to production's.
//
// Entry points: fusedrop_forward_sweep_<tile>_bk<BK>_f<FRAG>_<f16|bf16>, for X and W that start
// 16-byte aligned with k a multiple of 8 (the caller checks); launch as forward_tc.cu's kernels,
// with the numbers of src/cuda/launch_table.rs (FORWARD_SWEEP), which the static_asserts below
// check.
#include "forward_tc.cuh"

namespace fusedrop {
namespace forward {

struct Sweep128x128Bk32F1 : TcConfig<128, 128, 32, 64, 64, 4, 1> {};
struct Sweep128x128Bk32F2 : TcConfig<128, 128, 32, 64, 64, 4, 2> {};
struct Sweep128x128Bk64F1 : TcConfig<128, 128, 64, 64, 64, 4, 1> {};
struct Sweep128x128Bk64F2 : TcConfig<128, 128, 64, 64, 64, 4, 2> {};
struct Sweep128x256Bk32F1 : TcConfig<128, 256, 32, 64, 64, 4, 1> {};
struct Sweep128x256Bk64F1 : TcConfig<128, 256, 64, 64, 64, 3, 1> {};
struct Sweep128x256Bk64F2 : TcConfig<128, 256, 64, 64, 64, 3, 2> {};
struct Sweep128x128Bk32Spread : TcConfig<128, 128, 32, 64, 64, 4, 1, true> {};
struct Sweep128x128Bk64Spread : TcConfig<128, 128, 64, 64, 64, 4, 1, true> {};
struct Sweep128x256Bk32Spread : TcConfig<128, 256, 32, 64, 64, 4, 1, true> {};
struct Sweep128x256Bk64Spread : TcConfig<128, 256, 64, 64, 64, 3, 1, true> {};
struct Sweep128x128Bk32Interleaved : TcConfig<128, 128, 32, 64, 64, 4, 1, false, true> {};
struct Sweep128x256Bk32Interleaved : TcConfig<128, 256, 32, 64, 64, 4, 1, false, true> {};

}  // namespace forward
}  // namespace fusedrop

#define FUSEDROP_FORWARD_SWEEP(CONFIG, NAME)                                                   \
    FUSEDROP_FORWARD_TC(CONFIG, true, fusedrop_forward_sweep_##NAME##_f16, __half)             \
    FUSEDROP_FORWARD_TC(CONFIG, true, fusedrop_forward_sweep_##NAME##_bf16, __nv_bfloat16)

FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk32F1, tc128x128_bk32_f1)
FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk32F2, tc128x128_bk32_f2)
FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk64F1, tc128x128_bk64_f1)
FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk64F2, tc128x128_bk64_f2)
FUSEDROP_FORWARD_SWEEP(Sweep128x256Bk32F1, tc128x256_bk32_f1)
FUSEDROP_FORWARD_SWEEP(Sweep128x256Bk64F1, tc128x256_bk64_f1)
FUSEDROP_FORWARD_SWEEP(Sweep128x256Bk64F2, tc128x256_bk64_f2)
FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk32Spread, tc128x128_bk32_f1_spread)
FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk64Spread, tc128x128_bk64_f1_spread)
FUSEDROP_FORWARD_SWEEP(Sweep128x256Bk32Spread, tc128x256_bk32_f1_spread)
FUSEDROP_FORWARD_SWEEP(Sweep128x256Bk64Spread, tc128x256_bk64_f1_spread)
FUSEDROP_FORWARD_SWEEP(Sweep128x128Bk32Interleaved, tc128x128_bk32_f1_interleaved)
FUSEDROP_FORWARD_SWEEP(Sweep128x256Bk32Interleaved, tc128x256_bk32_f1_interleaved)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
#define FUSEDROP_SWEEP_MATCHES(CONFIG, NAME)                                                    \
    static_assert(fusedrop::launch::matches<fusedrop::forward::CONFIG>(                        \
                      fusedrop::launch::forward_sweep_##NAME),                                 \
                  #CONFIG " disagrees with src/cuda/launch_table.rs");
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk32F1, tc128x128_bk32_f1)
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk32F2, tc128x128_bk32_f2)
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk64F1, tc128x128_bk64_f1)
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk64F2, tc128x128_bk64_f2)
FUSEDROP_SWEEP_MATCHES(Sweep128x256Bk32F1, tc128x256_bk32_f1)
FUSEDROP_SWEEP_MATCHES(Sweep128x256Bk64F1, tc128x256_bk64_f1)
FUSEDROP_SWEEP_MATCHES(Sweep128x256Bk64F2, tc128x256_bk64_f2)
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk32Spread, tc128x128_bk32_f1_spread)
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk64Spread, tc128x128_bk64_f1_spread)
FUSEDROP_SWEEP_MATCHES(Sweep128x256Bk32Spread, tc128x256_bk32_f1_spread)
FUSEDROP_SWEEP_MATCHES(Sweep128x256Bk64Spread, tc128x256_bk64_f1_spread)
FUSEDROP_SWEEP_MATCHES(Sweep128x128Bk32Interleaved, tc128x128_bk32_f1_interleaved)
FUSEDROP_SWEEP_MATCHES(Sweep128x256Bk32Interleaved, tc128x256_bk32_f1_interleaved)
