// Fused forward, tensor cores (f16 and bf16, sm_80+): Y = dropout_p(act(X·Wᵀ + b)) in one
// launch, f32 accumulation with mma.sync m16n8k16.
//
//   X [m, k], W [n, k] (nn.Linear layout), b [n] or null, Y [m, n], all row-major.
//
// Levels (kernels/gemm/): kernel = tile scheduler + main loop + epilogue (forward_tc.cuh);
// threadblock = cp.async multistage pipeline (threadblock_tc.cuh); warp = ldmatrix + mma.sync
// over the warp tile (warp_tc.cuh); epilogue = bias, activation, Philox mask, scale, store
// (epilogue.cuh).
//
// Entry points, config in tc128x256, tc128x128, tc64x128, tc64x64, tc64x32 (struct names below):
//   fusedrop_forward_<config>_<f16|bf16>          any operands;
//   fusedrop_forward_<config>_aligned_<f16|bf16>  X and W whose bases are 16-byte aligned, k a
//                                                 multiple of 8 (the caller checks, the kernel
//                                                 trusts it).
// Each config gives its launch numbers (the same for both kernels):
//   block = (kThreads, 1, 1), dynamic shared memory = kSmemBytes (above 48 KiB it must be
//   opted in with cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)),
//   grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), 65535), 1)  -- see gemm/tile_scheduler.cuh;
//   gridDim.x must be exactly ceil(n / kBlockN).
// src/cuda/launch_table.rs holds the same numbers; the static_asserts at the end check them.
#include "forward_tc.cuh"

namespace fusedrop {
namespace forward {

// The largest tiles, for shapes with at least a full wave of them: 8 warps of 64 x 64
// (64 x 64 warp tiles need 8 ldmatrix.x4 per 32 mma, against 6 per 16 for 64 x 32), 4 stages
// (96 KiB, within the 99 KiB of shared memory an sm_86 / sm_89 block may use).
struct Tc128x256 : TcConfig<128, 256, 32, 64, 64, 4> {};
// Large: 4 warps of 64 x 64, 4 stages.
struct Tc128x128 : TcConfig<128, 128, 32, 64, 64, 4> {};
// Medium: 4 warps of 32 x 64.
struct Tc64x128 : TcConfig<64, 128, 32, 32, 64, 4> {};
// Small: 4 warps of 32 x 32, for shapes with few output tiles.
struct Tc64x64 : TcConfig<64, 64, 32, 32, 32, 5> {};
// Smallest (most tiles for small m, e.g. inference batches): 4 warps of 16 x 32. Such shapes
// stream W once with little reuse, so a deeper pipeline keeps more bytes in flight.
struct Tc64x32 : TcConfig<64, 32, 32, 16, 32, 6> {};

}  // namespace forward
}  // namespace fusedrop

#define FUSEDROP_FORWARD_TC_TYPES(CONFIG, NAME)                                        \
    FUSEDROP_FORWARD_TC(CONFIG, false, fusedrop_forward_##NAME##_f16, __half)          \
    FUSEDROP_FORWARD_TC(CONFIG, false, fusedrop_forward_##NAME##_bf16, __nv_bfloat16)  \
    FUSEDROP_FORWARD_TC(CONFIG, true, fusedrop_forward_##NAME##_aligned_f16, __half)   \
    FUSEDROP_FORWARD_TC(CONFIG, true, fusedrop_forward_##NAME##_aligned_bf16, __nv_bfloat16)

FUSEDROP_FORWARD_TC_TYPES(Tc128x256, tc128x256)
FUSEDROP_FORWARD_TC_TYPES(Tc128x128, tc128x128)
FUSEDROP_FORWARD_TC_TYPES(Tc64x128, tc64x128)
FUSEDROP_FORWARD_TC_TYPES(Tc64x64, tc64x64)
FUSEDROP_FORWARD_TC_TYPES(Tc64x32, tc64x32)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc128x256>(fusedrop::launch::forward_tc128x256),
              "Tc128x256 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc128x128>(fusedrop::launch::forward_tc128x128),
              "Tc128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc64x128>(fusedrop::launch::forward_tc64x128),
              "Tc64x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc64x64>(fusedrop::launch::forward_tc64x64),
              "Tc64x64 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Tc64x32>(fusedrop::launch::forward_tc64x32),
              "Tc64x32 disagrees with src/cuda/launch_table.rs");
