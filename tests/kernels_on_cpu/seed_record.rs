//! The device-seed record (`SeedSource::DeviceRecorded`).

use super::*;
use crate::backward::{backward_product_launch, BackwardCase, ProductInput};
use crate::dropout::dropout_launch;
use crate::forward::{forward_launch, ForwardCase, Planned};

/// A forward whose (seed, subsequence) comes from a device buffer writes the pair it used to its
/// record buffer; a backward that reads the record gets the forward's mask although the buffer was
/// advanced in between (as a CUDA graph does), while one that read the advanced buffer would not.
#[test]
fn forward_records_the_seed_it_used_for_the_backward() {
    let (Some(f32_forward), Some(tc_forward), Some(dropout), Some(backward)) = (
        driver("forward_f32"),
        driver("forward_tc"),
        driver("dropout"),
        driver("backward_simt"),
    ) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(0x5EED_5EED);
    let shape = LinearShape::new(37, 29, 45);
    let LinearShape { m, n, k } = shape;
    let used = DropoutSpec::new(0.5, 0x1234_5678_9abc_def0, 41);
    let spec = LayerSpec::new(shape, Nonlinearity::Identity, used);

    // Every kernel that takes a record writes the pair it read from the device buffer (the
    // by-value fields hold garbage in device-seed launches).
    let case = ForwardCase {
        nonlinearity: Nonlinearity::Identity,
        bias: false,
        p: used.p,
        device_seed: true,
        seed_subsequence: Some((used.seed, used.subsequence)),
        ..ForwardCase::relu(shape)
    };
    let (mut f32_launch, f32_want, _) =
        forward_launch::<f32>(Planned::Config("simt64x64"), &case, None, &mut rng);
    f32_launch.record();
    let (mut tc_launch, _, _) =
        forward_launch::<f16>(Planned::Config("tc64x64"), &case, None, &mut rng);
    tc_launch.record();
    let (mut dropout_launch, _) = dropout_launch::<f32>(
        m,
        n,
        used,
        Geometry::UNSHARDED,
        Some(3),
        true,
        false,
        &mut rng,
    );
    dropout_launch.record();
    run(&f32_forward, std::slice::from_ref(&f32_launch));
    run(&tc_forward, std::slice::from_ref(&tc_launch));
    run(&dropout, std::slice::from_ref(&dropout_launch));
    // The Hopper forward, on a shape it takes (k a multiple of 8).
    let sm90_case = ForwardCase {
        shape: LinearShape::new(m, n, 48),
        ..case
    };
    let (mut sm90_launch, _, _) =
        forward_launch::<bf16>(Planned::Config("wg64x128"), &sm90_case, Some(3), &mut rng);
    sm90_launch.record();
    if let Some(sm90_forward) = driver("forward_sm90") {
        run(&sm90_forward, std::slice::from_ref(&sm90_launch));
    }
    for launch in [&f32_launch, &tc_launch, &dropout_launch, &sm90_launch] {
        assert_eq!(
            launch.recorded(),
            (used.seed, used.subsequence),
            "{}: the record does not hold the pair the kernel used",
            launch.what
        );
    }
    check_layer_output(
        &f32_launch.what,
        &f32_launch.output::<f32>("y"),
        &f32_want,
        &used,
        &Geometry::UNSHARDED,
        n,
    );

    // The graph advances the buffer to the next call's subsequence before the backward runs.
    let (seed, subsequence) = f32_launch.recorded();
    let recorded = DropoutSpec::new(used.p, seed, subsequence);
    let advanced = DropoutSpec::new(used.p, used.seed, used.subsequence + 1);
    let x = random_values::<f32>(m * k, &mut rng);
    let w = random_values::<f32>(n * k, &mut rng);
    let dy = random_values::<f32>(m * n, &mut rng);
    let want = reference::backward_f64(&spec, &x, &w, &dy, None).expect("valid inputs");
    let launches: Vec<Launch> = [recorded, advanced]
        .iter()
        .map(|pair| {
            let case = BackwardCase {
                shape,
                nonlinearity: Nonlinearity::Identity,
                p: pair.p,
                geometry: Geometry::UNSHARDED,
                accumulate: false,
                weight_grad: false,
                grid_x: None,
                nonfinite: false,
                seed_subsequence: None,
                device_seed: true,
                splits: 1,
                track_proxy_stores: false,
            };
            let mut dx = backward_product_launch::<f32>(
                "simt64x64",
                BackwardProduct::Dx,
                &LayerSpec::new(shape, Nonlinearity::Identity, *pair),
                ProductInput::Dy,
                &case,
                format!("device seed {pair:?}"),
                &mut rng,
            );
            dx.mask(pair, &Geometry::UNSHARDED, n, true)
                .buffer("dy", &dy, 0, false)
                .buffer("w", &w, 0, false)
                .buffer("dx", &poisoned::<f32>(m * k), 0, true);
            dx
        })
        .collect();
    run(&backward, &launches);
    check_close(
        "dX from the recorded pair",
        k,
        &launches[0].output::<f32>("dx"),
        &want.dx,
    );
    let stale = reference::relative_l2_error(&to_f64(&launches[1].output::<f32>("dx")), &want.dx);
    assert!(
        stale > 0.1,
        "dX from the advanced buffer should have the wrong mask (relative L2 error {stale})"
    );
}
