//! `BackwardKernel::HopperTransformWarps` on the harness: the Hopper dW kernels whose producer
//! warpgroup's warps 1-3 form dZᵀ in each landed stage and hand it to the consumers through the
//! stage's `formed` barrier (kernels/backward_sm90.cu's `_transform` entry points,
//! kernels/gemm/sm90/pipeline.cuh's FormedStageBarriers).

use super::hopper::{
    fences_tracked, hopper_backward_cases, hopper_split_backward_cases, BACKWARD_SM90_CONFIGS,
    BACKWARD_SM90_SPLIT_CONFIGS,
};
use super::*;

/// The cases where dZ differs from dY (ReLU, or the identity with p > 0): where there is
/// something to form.
fn formed(cases: Vec<BackwardCase>) -> Vec<BackwardCase> {
    let formed: Vec<BackwardCase> = cases
        .into_iter()
        .filter(|c| c.nonlinearity == Nonlinearity::Relu || c.p > 0.0)
        .collect();
    assert!(
        formed.len() >= 2,
        "{} cases where dZ is not dY",
        formed.len()
    );
    formed
}

/// `config`'s dW with transform warps on each case, which must match the reference and, bit for
/// bit, the same config's dW whose consumers form dZ themselves (dX, plain, for the reference
/// check of the whole call). The plans are `product_plan`'s with `transform_warps` set, whatever
/// the case (the wrapper sets it only where dZ is not dY).
fn check_transform_warps<T: Raw>(config: &str, cases: &[BackwardCase], seed: u64) {
    let Some(exe) = driver("backward_sm90") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs: Vec<BackwardInputs<T>> = cases
        .iter()
        .map(|case| BackwardInputs::new(case, &mut rng))
        .collect();
    let transform = format!("{config}_transform");
    let mut launches = Vec::new();
    for (case, input) in cases.iter().zip(&inputs) {
        let n = case.shape.n;
        let what = format!("{config} {case:?}");
        let launch = |config: &str, product, what: String, rng: &mut StdRng| {
            let mut launch = backward_product_launch::<T>(
                config,
                product,
                &input.spec,
                ProductInput::Dy,
                case,
                what,
                rng,
            );
            launch
                .mask(&input.spec.dropout, &case.geometry, n, case.device_seed)
                .buffer("dy", &input.dy, 0, false);
            if case.nonlinearity == Nonlinearity::Relu {
                launch.buffer("y", &input.y, 0, false);
            }
            launch
        };
        let mut dx = launch(config, BackwardProduct::Dx, what.clone(), &mut rng);
        dx.buffer("w", &input.w, 0, false)
            .buffer("dx", &input.start.0, 0, true);
        let mut with_warps = launch(
            &transform,
            BackwardProduct::Dw,
            format!("{what}, transform warps"),
            &mut rng,
        );
        let mut by_consumers = launch(config, BackwardProduct::Dw, what, &mut rng);
        for dw in [&mut with_warps, &mut by_consumers] {
            dw.buffer("x", &input.x, 0, false)
                .buffer("dw", &input.start.1, 0, true)
                .buffer("db", &input.start.2, 0, true);
        }
        assert!(
            with_warps.what.contains("_transform_"),
            "{}",
            with_warps.what
        );
        launches.extend([dx, with_warps, by_consumers]);
    }
    run(&exe, &launches);
    for ((case, input), triple) in cases.iter().zip(&inputs).zip(launches.chunks(3)) {
        let [dx, with_warps, by_consumers] = triple else {
            unreachable!("three launches per case")
        };
        input.check(
            case,
            &with_warps.what,
            &dx.output::<T>("dx"),
            &with_warps.output::<T>("dw"),
            &with_warps.output::<T>("db"),
        );
        assert_same_output_bits::<T>(
            with_warps,
            by_consumers,
            &["dw", "db"],
            "the kernel whose consumers form dZ",
        );
    }
}

#[test]
fn backward_sm90_transform_warps_match_reference_and_the_consumers_forming() {
    let cases = formed(hopper_backward_cases());
    assert!(cases.len() >= 8, "{} cases", cases.len());
    for (i, config) in BACKWARD_SM90_CONFIGS.iter().enumerate() {
        check_transform_warps::<f16>(config, &cases, 0x7516 + i as u64);
        check_transform_warps::<bf16>(config, &cases, 0x75BF + i as u64);
    }
}

/// The split-K configurations: the transform warps of each block of a cluster form its share of
/// the reduction. f16 only: the split does not depend on the type.
#[test]
fn backward_sm90_split_transform_warps_match_reference_and_the_consumers_forming() {
    for (i, (config, splits)) in BACKWARD_SM90_SPLIT_CONFIGS.iter().enumerate() {
        check_transform_warps::<f16>(
            config,
            &formed(hopper_split_backward_cases(*splits)),
            0x7555 + i as u64,
        );
    }
}

/// The transform kernels where there is nothing to form (the identity at p = 0: the wrapper
/// never plans them there, but the kernel takes the call): the transform warps arrive on
/// `formed` without touching the stage, and dW and db must still match the reference and the
/// consumers' kernel. f16, one unsplit and one split configuration.
#[test]
fn backward_sm90_transform_warps_with_nothing_to_form() {
    let nothing = |cases: Vec<BackwardCase>| -> Vec<BackwardCase> {
        let nothing: Vec<BackwardCase> = cases
            .into_iter()
            .filter(|c| c.nonlinearity == Nonlinearity::Identity && c.p == 0.0)
            .collect();
        assert!(!nothing.is_empty(), "identity cases at p = 0");
        nothing
    };
    check_transform_warps::<f16>("wg128x128", &nothing(hopper_backward_cases()), 0x7A0);
    check_transform_warps::<f16>(
        "wg128x128s4",
        &nothing(hopper_split_backward_cases(4)),
        0x7A1,
    );
}

/// Each transform thread's fence.proxy.async checked on its own (`track_proxy_stores`): the
/// threads form dZᵀ with ordinary stores, and each must fence its own before it arrives on the
/// stage's `formed` barrier. The two cases of 3 x 3 dW tiles over rings that wrap (ReLU; the
/// identity with p = 0.5), unsplit and in clusters of 2; f16 only.
#[test]
fn backward_sm90_transform_warps_fence_per_thread() {
    check_transform_warps::<f16>(
        "wg128x128",
        &fences_tracked(hopper_backward_cases()),
        0x7FE9,
    );
    check_transform_warps::<f16>(
        "wg128x128s2",
        &fences_tracked(hopper_split_backward_cases(2)),
        0x7FEA,
    );
}
