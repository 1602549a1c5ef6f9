// Tuning variants of the f32 forward (not used by the library's calls): the production kernel
// (forward_f32.cuh) with two sets of register fragments (gemm/threadblock_simt.cuh,
// kFragBuffers = 2: step kk + 1's shared-memory reads issued before step kk's FMAs; `_f2`) at
// each production tile, and the 128 x 128 tile with 16-deep slices instead of 8 (`_bk16`: two
// float4s of X and two of W per thread and slice, half the barriers; issue 12), so that one
// `fusedrop sweep` run on a GPU times each against production on `sq`. The FMA sequence of every
// output is production's (k in order, one fmaf per k), so their outputs are bit-identical to it.
//
// Entry points: fusedrop_forward_sweep_<variant>_f32, launched as forward_f32.cu's kernels
// (any alignment), with the numbers of src/cuda/launch_table.rs (FORWARD_F32_SWEEP), which the
// static_asserts below check.
#include "forward_f32.cuh"

namespace fusedrop {
namespace forward {

struct Sweep128x128F2 : SimtConfig<128, 128, 8, 8, 8, 2> {};
struct Sweep64x64F2 : SimtConfig<64, 64, 16, 4, 4, 2> {};
struct Sweep128x128Bk16 : SimtConfig<128, 128, 16, 8, 8> {};
struct Sweep128x128Bk16F2 : SimtConfig<128, 128, 16, 8, 8, 2> {};

}  // namespace forward
}  // namespace fusedrop

FUSEDROP_FORWARD_SIMT(Sweep128x128F2, fusedrop_forward_sweep_simt128x128_f2_f32)
FUSEDROP_FORWARD_SIMT(Sweep64x64F2, fusedrop_forward_sweep_simt64x64_f2_f32)
FUSEDROP_FORWARD_SIMT(Sweep128x128Bk16, fusedrop_forward_sweep_simt128x128_bk16_f32)
FUSEDROP_FORWARD_SIMT(Sweep128x128Bk16F2, fusedrop_forward_sweep_simt128x128_bk16_f2_f32)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches<fusedrop::forward::Sweep128x128F2>(
                  fusedrop::launch::forward_sweep_simt128x128_f2),
              "Sweep128x128F2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Sweep64x64F2>(
                  fusedrop::launch::forward_sweep_simt64x64_f2),
              "Sweep64x64F2 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Sweep128x128Bk16>(
                  fusedrop::launch::forward_sweep_simt128x128_bk16),
              "Sweep128x128Bk16 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Sweep128x128Bk16F2>(
                  fusedrop::launch::forward_sweep_simt128x128_bk16_f2),
              "Sweep128x128Bk16F2 disagrees with src/cuda/launch_table.rs");
