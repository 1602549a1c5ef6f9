//! `BackwardKernel::HopperTmaStore` on the harness: the Hopper dX and dW kernels whose consumer
//! warpgroups stage each gradient tile in shared memory and store it by TMA
//! (kernels/backward_sm90.cu's `wg128x256_tmastore` and `wg128x128_tmastore` entry points,
//! gemm/sm90/epilogue.cuh's stage_gradient_fragment; 128 x 256 tiles in two passes), against
//! the reference and, bit for bit, against the same tile's kernels that store from the
//! accumulators.

use super::hopper::{fences_tracked, hopper_backward_cases};
use super::*;

/// The TMA-store configurations, each with the configuration of the same tile that stores
/// directly.
pub(super) const TMA_STORE_CONFIGS: [(&str, &str); 2] = [
    ("wg128x256_tmastore", "wg128x256"),
    ("wg128x128_tmastore", "wg128x128"),
];

/// Each case on each TMA-store configuration and on its direct one, from the same inputs: the
/// first must match the reference, and its dX, dW and db the second's bit for bit.
fn check_tma_store<T: Raw>(cases: &[BackwardCase], seed: u64) {
    for (i, (tma_store, direct)) in TMA_STORE_CONFIGS.into_iter().enumerate() {
        check_tma_store_on::<T>(tma_store, direct, cases, seed + i as u64);
    }
}

fn check_tma_store_on<T: Raw>(tma_store: &str, direct: &str, cases: &[BackwardCase], seed: u64) {
    let Some(exe) = driver("backward_sm90") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let (launches, inputs) = case_launches_on::<T>(&[tma_store, direct], cases, &mut rng);
    assert!(
        launches[0].what.contains("_tmastore"),
        "{}",
        launches[0].what
    );
    run(&exe, &launches);
    for (quad, (case, input)) in launches.chunks(4).zip(&inputs) {
        let [dx, dw, direct_dx, direct_dw] = quad else {
            unreachable!("four launches per case")
        };
        check_case_outputs(case, input, &quad[..2]);
        let stored = "the kernel that stores from the accumulators";
        assert_same_output_bits::<T>(dx, direct_dx, &["dx"], stored);
        assert_same_output_bits::<T>(dw, direct_dw, &["dw", "db"], stored);
    }
}

/// Every Hopper backward case (overwriting and accumulating, shards, non-finite inputs, the seed
/// from a device buffer; blocks of several tiles, whose staging areas are reused; 128 x 256
/// tiles staged in two passes) and two whose tiles reach past the gradients: 40 rows (the second
/// consumer's 64 rows of a dX tile lie wholly past m, so it queues no store) and k = 200 (the
/// last box that starts inside k, at 128 on 128 x 128 tiles and at 192 in the second pass on
/// 128 x 256, ends past it, which the TMA unit clips). The cases with k = 64 and 72 give the
/// 128 x 256 tiles a second pass with no box inside k.
#[test]
fn backward_sm90_tma_store_matches_reference_and_the_direct_stores() {
    let mut cases = hopper_backward_cases();
    let base = cases[0];
    for (m, n, k) in [(40, 72, 136), (136, 200, 200)] {
        cases.push(BackwardCase {
            shape: LinearShape::new(m, n, k),
            nonlinearity: Nonlinearity::Relu,
            p: 0.5,
            weight_grad: true,
            grid_x: Some(2),
            ..base
        });
    }
    check_tma_store::<f16>(&cases, 0x7516);
    check_tma_store::<bf16>(&cases, 0x75BF);
}

/// Each thread's fence.proxy.async checked on its own (`track_proxy_stores`): every thread of a
/// consumer warpgroup writes the staging area with stmatrix, and each must fence its own writes
/// before the warpgroup's barrier, after which one thread queues the TMA stores. The two
/// 200 x 264 x 328 cases on 2 blocks (ReLU; the identity with p = 0.5: dX and dW of 2 x 3 and
/// 3 x 3 tiles of 128 x 128, 2 x 2 and 3 x 2 of 128 x 256); f16 only.
#[test]
fn backward_sm90_tma_store_fences_are_checked_per_thread() {
    check_tma_store::<f16>(&fences_tracked(hopper_backward_cases()), 0x7FEB);
}
