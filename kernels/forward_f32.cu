// Fused forward in true fp32 (SIMT FMA, no TF32): Y = dropout_p(act(X·Wᵀ + b)) in one launch.
//
//   X [m, k], W [n, k] (nn.Linear layout), b [n] or null, Y [m, n], all row-major f32.
//
// Levels (kernels/gemm/): kernel = tile scheduler + main loop + epilogue (forward_f32.cuh);
// threadblock + thread register blocking = threadblock_simt.cuh; epilogue = epilogue.cuh (the
// same bias / activation / Philox / scale / store piece as the tensor-core kernels).
//
// Entry points: fusedrop_forward_<config>_f32, config in simt128x128, simt64x64, simt64x32 (struct names
// below). Launch numbers per config: block = (kThreads, 1, 1), dynamic shared memory =
// kSmemBytes (below 48 KiB, no opt-in needed),
//   grid = (ceil(n / kBlockN), min(ceil(m / kBlockM), 65535), 1)  -- see gemm/tile_scheduler.cuh;
//   gridDim.x must be exactly ceil(n / kBlockN).
// src/cuda/launch_table.rs holds the same numbers; the static_asserts at the end check them.
#include "forward_f32.cuh"

namespace fusedrop {
namespace forward {

// Large tiles: 256 threads of 8 x 8 outputs, slices of 8.
struct Simt128x128 : SimtConfig<128, 128, 8, 8, 8> {};
// Small tiles for shapes with few output tiles: 256 threads of 4 x 4, slices of 16.
struct Simt64x64 : SimtConfig<64, 64, 16, 4, 4> {};
// The most tiles, for the narrowest shapes (an inference batch of 64 rows: twice the tiles of
// 64 x 64): 128 threads of 4 x 4, slices of 16.
struct Simt64x32 : SimtConfig<64, 32, 16, 4, 4> {};

}  // namespace forward
}  // namespace fusedrop

FUSEDROP_FORWARD_SIMT(Simt128x128, fusedrop_forward_simt128x128_f32)
FUSEDROP_FORWARD_SIMT(Simt64x64, fusedrop_forward_simt64x64_f32)
FUSEDROP_FORWARD_SIMT(Simt64x32, fusedrop_forward_simt64x32_f32)

// The launch numbers the Rust side launches with (src/cuda/launch_table.rs, via build.rs).
#include "fusedrop_launch_table.h"
static_assert(fusedrop::launch::matches<fusedrop::forward::Simt128x128>(
                  fusedrop::launch::forward_simt128x128),
              "Simt128x128 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Simt64x64>(
                  fusedrop::launch::forward_simt64x64),
              "Simt64x64 disagrees with src/cuda/launch_table.rs");
static_assert(fusedrop::launch::matches<fusedrop::forward::Simt64x32>(
                  fusedrop::launch::forward_simt64x32),
              "Simt64x32 disagrees with src/cuda/launch_table.rs");
