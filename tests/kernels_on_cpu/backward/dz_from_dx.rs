//! `BackwardKernel::HopperDzFromDx` on the harness: the Hopper dX kernel writes dZ / scale to the
//! workspace (kernels/backward_sm90.cu's `dz`) and the dW kernel reads it as a plain operand,
//! with no Y and the mask switched off.

use super::hopper::{
    hopper_backward_cases, hopper_split_backward_cases, BACKWARD_SM90_CONFIGS,
    BACKWARD_SM90_SPLIT_CONFIGS,
};
use super::*;

/// What the workspace holds before dX writes dZ: a value no dZ takes (the inputs lie in (-1, 1),
/// dZ is one of them, 0, or a planted non-finite value), so that an element left unwritten
/// differs from its dZ even where that is NaN.
const UNWRITTEN: f64 = 3.0;

/// dZ / scale of `spec` as the contract defines it (src/reference.rs's `backward_f64` at scale
/// 1), as `class_bits`: ReLU passes dY where Y > 0, redraws the mask where Y is NaN and gives 0
/// elsewhere; the identity applies the mask everywhere.
fn unit_dz<T: Raw>(spec: &LayerSpec, dy: &[T], y: &[T]) -> Vec<u64> {
    let LinearShape { n, .. } = spec.shape;
    let d = &spec.dropout;
    let keep = |i: usize| {
        let index = spec.geometry.linear_index(n, i / n, i % n);
        mask::keep(d.seed, d.subsequence, d.p, index)
    };
    (0..dy.len())
        .map(|i| {
            let g = dy[i].to_f64();
            let dz = match spec.nonlinearity {
                Nonlinearity::Relu => {
                    let y = y[i].to_f64();
                    if y > 0.0 {
                        g
                    } else if y.is_nan() {
                        reference::apply_keep(g, keep(i), 1.0)
                    } else {
                        0.0
                    }
                }
                Nonlinearity::Identity => reference::apply_keep(g, keep(i), 1.0),
            };
            class_bits(T::from_f64(dz))
        })
        .collect()
}

/// For each case where dZ differs from dY (ReLU, or the identity with p > 0): `config`'s dX
/// writing dZ into a workspace filled with `UNWRITTEN`, which must hold the contract's dZ / scale
/// bit for bit
/// afterwards (every element written once by the blocks of dX's first column tile); then dW and
/// db read from it, which must match the reference and, bit for bit, the same dW kernel forming
/// dZ in its stages from dY (and Y).
fn check_dz_from_dx<T: Raw>(config: &str, cases: &[BackwardCase], seed: u64) {
    let Some(exe) = driver("backward_sm90") else {
        return;
    };
    let cases: Vec<BackwardCase> = cases
        .iter()
        .copied()
        .filter(|c| c.nonlinearity == Nonlinearity::Relu || c.p > 0.0)
        .collect();
    assert!(cases.len() >= 8, "{} cases where dZ is not dY", cases.len());
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs: Vec<BackwardInputs<T>> = cases
        .iter()
        .map(|case| BackwardInputs::new(case, &mut rng))
        .collect();
    // dX writing dZ, and dW forming it in its stages (the comparison).
    let mut first = Vec::new();
    for (case, input) in cases.iter().zip(&inputs) {
        let LinearShape { m, n, .. } = case.shape;
        let what = format!("{config} {case:?}");
        let mut dx = backward_product_launch::<T>(
            config,
            BackwardProduct::Dx,
            &input.spec,
            ProductInput::DyWritingDz,
            case,
            what.clone(),
            &mut rng,
        );
        let mut dw = backward_product_launch::<T>(
            config,
            BackwardProduct::Dw,
            &input.spec,
            ProductInput::Dy,
            case,
            what,
            &mut rng,
        );
        for launch in [&mut dx, &mut dw] {
            launch
                .mask(&input.spec.dropout, &case.geometry, n, case.device_seed)
                .buffer("dy", &input.dy, 0, false);
            if case.nonlinearity == Nonlinearity::Relu {
                launch.buffer("y", &input.y, 0, false);
            }
        }
        dx.buffer("w", &input.w, 0, false)
            .buffer("dx", &input.start.0, 0, true)
            .buffer("ws", &vec![T::from_f64(UNWRITTEN); m * n], 0, true);
        dw.buffer("x", &input.x, 0, false)
            .buffer("dw", &input.start.1, 0, true)
            .buffer("db", &input.start.2, 0, true);
        first.push(dx);
        first.push(dw);
    }
    run(&exe, &first);
    // dW and db from the workspace.
    let mut second = Vec::new();
    for ((case, input), pair) in cases.iter().zip(&inputs).zip(first.chunks(2)) {
        let dz = pair[0].output::<T>("ws");
        let got: Vec<u64> = dz.iter().map(|&v| class_bits(v)).collect();
        let want = unit_dz(&input.spec, &input.dy, &input.y);
        let wrong = (0..got.len()).filter(|&i| got[i] != want[i]).count();
        assert!(
            wrong == 0,
            "{}: {wrong} elements of the dZ that dX wrote differ from dY's dZ / scale (first at \
             {:?})",
            pair[0].what,
            (0..got.len()).find(|&i| got[i] != want[i])
        );
        let mut dw = backward_product_launch::<T>(
            config,
            BackwardProduct::Dw,
            &input.spec,
            ProductInput::Dz,
            case,
            format!("{} from dZ", pair[1].what),
            &mut rng,
        );
        let d = &input.spec.dropout;
        dw.mask_with(d, &case.geometry, case.shape.n, false, 0, mask::scale(d.p))
            .buffer("ws", &dz, 0, false)
            .buffer("x", &input.x, 0, false)
            .buffer("dw", &input.start.1, 0, true)
            .buffer("db", &input.start.2, 0, true);
        second.push(dw);
    }
    run(&exe, &second);
    for (((case, input), pair), from_dz) in
        cases.iter().zip(&inputs).zip(first.chunks(2)).zip(&second)
    {
        input.check(
            case,
            &from_dz.what,
            &pair[0].output::<T>("dx"),
            &from_dz.output::<T>("dw"),
            &from_dz.output::<T>("db"),
        );
        assert_same_output_bits::<T>(
            from_dz,
            &pair[1],
            &["dw", "db"],
            "the kernel forming dZ in its stages",
        );
    }
}

#[test]
fn backward_sm90_dz_from_dx_matches_reference_and_the_stage_path() {
    for (i, config) in BACKWARD_SM90_CONFIGS.iter().enumerate() {
        check_dz_from_dx::<f16>(config, &hopper_backward_cases(), 0xD216 + i as u64);
        check_dz_from_dx::<bf16>(config, &hopper_backward_cases(), 0xD2BF + i as u64);
    }
}

/// The split-K configurations: each block of a cluster forms (and writes) the dZ of its share of
/// the reduction. f16 only: the split does not depend on the type.
#[test]
fn backward_sm90_split_dz_from_dx_matches_reference_and_the_stage_path() {
    for (i, (config, splits)) in BACKWARD_SM90_SPLIT_CONFIGS.iter().enumerate() {
        check_dz_from_dx::<f16>(
            config,
            &hopper_split_backward_cases(*splits),
            0xD25 + i as u64,
        );
    }
}
