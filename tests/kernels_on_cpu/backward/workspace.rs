//! The identity backward's workspace path (src/cuda/backward.rs): kernels/dropout.cu with scale 1
//! writes dY * keep once, and the backward kernels read it with the mask switched off.

use super::hopper::{hopper_backward_cases, hopper_split_backward_cases};
use super::*;

/// For each identity case with dropout: the pre-pass through the dropout driver (checked
/// against the mask bit for bit), then `config`'s dX and dW kernels on its output with
/// threshold 0 and p's scale, which must give exactly the bits of the same kernels redrawing
/// the mask from dY themselves.
fn check_backward_workspace<T: Raw>(
    driver_name: &str,
    config: &str,
    cases: &[BackwardCase],
    seed: u64,
) {
    let (Some(dropout_exe), Some(backward_exe)) = (driver("dropout"), driver(driver_name)) else {
        return;
    };
    let cases: Vec<BackwardCase> = cases
        .iter()
        .copied()
        .filter(|c| c.nonlinearity == Nonlinearity::Identity && c.p > 0.0)
        .collect();
    assert!(
        cases.len() >= 8,
        "{} identity cases with dropout",
        cases.len()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut prepasses = Vec::new();
    let mut inputs = Vec::new();
    for case in &cases {
        let LinearShape { m, n, k } = case.shape;
        let dropout = DropoutSpec::new(case.p, rng.random(), rng.random_range(0..16));
        let x = random_values::<T>(m * k, &mut rng);
        let w = random_values::<T>(n * k, &mut rng);
        let mut dy = random_values::<T>(m * n, &mut rng);
        if case.nonfinite {
            let at: Vec<(usize, usize)> = (0..12).map(|i| (5 * i + 1, (7 * i + 2) % n)).collect();
            plant(&mut dy, n, &at);
        }
        let init = |len: usize, rng: &mut StdRng| {
            if case.accumulate {
                random_values::<T>(len, rng)
            } else {
                poisoned::<T>(len)
            }
        };
        let grads0 = [
            init(m * k, &mut rng),
            init(n * k, &mut rng),
            init(n, &mut rng),
        ];
        let plan = dropout_plan::<T>(Operand::DY, Operand::Workspace, m, n);
        let mut prepass = Launch::new(
            &plan.function,
            format!("workspace pre-pass of {case:?}"),
            &mut rng,
        );
        prepass
            .plan(&plan)
            .mask_with(
                &dropout,
                &case.geometry,
                n,
                case.device_seed,
                mask::threshold(case.p),
                1.0,
            )
            .buffer("dy", &dy, 0, false)
            .buffer("ws", &poisoned::<T>(m * n), 0, true);
        prepasses.push(prepass);
        inputs.push((dropout, x, w, dy, grads0));
    }
    run(&dropout_exe, &prepasses);

    let mut launches = Vec::new();
    for ((case, prepass), (dropout, x, w, dy, grads0)) in cases.iter().zip(&prepasses).zip(&inputs)
    {
        let LinearShape { m, n, .. } = case.shape;
        let masked = prepass.output::<T>("ws");
        let want: Vec<u64> = (0..m * n)
            .map(|i| {
                let index = case.geometry.linear_index(n, i / n, i % n);
                let keep = mask::keep(dropout.seed, dropout.subsequence, dropout.p, index);
                class_bits(T::from_f64(dy[i].to_f64() * if keep { 1.0 } else { 0.0 }))
            })
            .collect();
        let got: Vec<u64> = masked.iter().map(|&v| class_bits(v)).collect();
        assert!(
            got == want,
            "{}: dY * keep differs from the mask",
            prepass.what
        );
        // Direct (the kernels redraw the mask) and from the workspace (threshold 0, p's scale,
        // no seed needed).
        for workspace in [false, true] {
            let spec = LayerSpec::new(case.shape, Nonlinearity::Identity, *dropout)
                .with_geometry(case.geometry);
            for (product, b_name, b, outputs) in [
                (BackwardProduct::Dx, "w", w, vec![("dx", &grads0[0])]),
                (
                    BackwardProduct::Dw,
                    "x",
                    x,
                    vec![("dw", &grads0[1]), ("db", &grads0[2])],
                ),
            ] {
                let input = if workspace {
                    ProductInput::PremaskedDy
                } else {
                    ProductInput::Dy
                };
                let mut launch = backward_product_launch::<T>(
                    config,
                    product,
                    &spec,
                    input,
                    case,
                    format!("{case:?} workspace={workspace}"),
                    &mut rng,
                );
                launch.buffer(b_name, b, 0, false);
                if workspace {
                    launch.mask_with(dropout, &case.geometry, n, false, 0, mask::scale(case.p));
                    launch.buffer("ws", &masked, 0, false);
                } else {
                    launch.mask(dropout, &case.geometry, n, case.device_seed);
                    launch.buffer("dy", dy, 0, false);
                }
                for (name, start) in outputs {
                    if name != "dw" || case.weight_grad {
                        launch.buffer(name, start, 0, true);
                    }
                }
                launches.push(launch);
            }
        }
    }
    run(&backward_exe, &launches);
    let mut checked_written = 0;
    for (case, pair) in cases.iter().zip(launches.chunks(4)) {
        let (direct, from_workspace) = (&pair[..2], &pair[2..]);
        let mut outputs = vec![(0, "dx"), (1, "db")];
        if case.weight_grad {
            outputs.push((1, "dw"));
        }
        for (launch, name) in outputs {
            let a: Vec<u64> = direct[launch]
                .output::<T>(name)
                .into_iter()
                .map(class_bits)
                .collect();
            let b: Vec<u64> = from_workspace[launch]
                .output::<T>(name)
                .into_iter()
                .map(class_bits)
                .collect();
            assert!(
                a == b,
                "{name} of {}: differs with the workspace",
                from_workspace[launch].what
            );
            // Equal is not enough where both left an element unwritten: with finite inputs
            // and no accumulation, the poison must be gone.
            if !case.nonfinite && !case.accumulate {
                checked_written += 1;
                let unwritten = direct[launch]
                    .output::<T>(name)
                    .iter()
                    .filter(|v| !v.to_f64().is_finite())
                    .count();
                assert_eq!(
                    unwritten, 0,
                    "{name} of {}: {unwritten} elements left as poisoned",
                    direct[launch].what
                );
            }
        }
    }
    assert!(
        checked_written > 0,
        "no case with finite inputs that overwrites"
    );
}

#[test]
fn backward_workspace_matches_the_redrawn_mask_bit_for_bit() {
    check_backward_workspace::<f32>("backward_simt", "simt128x128", &backward_cases(), 0xA32);
    check_backward_workspace::<f16>("backward_simt", "simt64x64", &backward_cases(), 0xA16);
    check_backward_workspace::<bf16>("backward_tc", "tc64x64", &backward_cases(), 0xABF);
    check_backward_workspace::<f16>("backward_tc", "tc128x128", &backward_cases(), 0xAC16);
}

#[test]
fn backward_sm90_workspace_matches_the_redrawn_mask_bit_for_bit() {
    check_backward_workspace::<f16>(
        "backward_sm90",
        "wg128x128",
        &hopper_backward_cases(),
        0xA90,
    );
    check_backward_workspace::<bf16>(
        "backward_sm90",
        "wg128x256",
        &hopper_backward_cases(),
        0xA91,
    );
    check_backward_workspace::<bf16>(
        "backward_sm90",
        "wg128x128s2",
        &hopper_split_backward_cases(2),
        0xA92,
    );
}
