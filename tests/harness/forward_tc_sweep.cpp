// Harness driver for kernels/forward_tc_sweep.cu: every tuning variant, f16 and bf16 (aligned
// operands only, as the kernels require).
#include "forward_launch.h"

#include "forward_tc_sweep.cu"

using namespace fusedrop::forward;

void register_kernels() {
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32F1, sweep_tc128x128_bk32_f1, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32F1, sweep_tc128x128_bk32_f1, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32F2, sweep_tc128x128_bk32_f2, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32F2, sweep_tc128x128_bk32_f2, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk64F1, sweep_tc128x128_bk64_f1, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk64F1, sweep_tc128x128_bk64_f1, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk64F2, sweep_tc128x128_bk64_f2, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk64F2, sweep_tc128x128_bk64_f2, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk32F1, sweep_tc128x256_bk32_f1, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk32F1, sweep_tc128x256_bk32_f1, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk64F1, sweep_tc128x256_bk64_f1, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk64F1, sweep_tc128x256_bk64_f1, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk64F2, sweep_tc128x256_bk64_f2, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk64F2, sweep_tc128x256_bk64_f2, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32Spread, sweep_tc128x128_bk32_f1_spread, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32Spread, sweep_tc128x128_bk32_f1_spread, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk64Spread, sweep_tc128x128_bk64_f1_spread, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk64Spread, sweep_tc128x128_bk64_f1_spread, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk32Spread, sweep_tc128x256_bk32_f1_spread, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk32Spread, sweep_tc128x256_bk32_f1_spread, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk64Spread, sweep_tc128x256_bk64_f1_spread, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk64Spread, sweep_tc128x256_bk64_f1_spread, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32Interleaved, sweep_tc128x128_bk32_f1_interleaved, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x128Bk32Interleaved, sweep_tc128x128_bk32_f1_interleaved, bf16, __nv_bfloat16)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk32Interleaved, sweep_tc128x256_bk32_f1_interleaved, f16, __half)
    HARNESS_FORWARD_ALIGNED(Sweep128x256Bk32Interleaved, sweep_tc128x256_bk32_f1_interleaved, bf16, __nv_bfloat16)
}
