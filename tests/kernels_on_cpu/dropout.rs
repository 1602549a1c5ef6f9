//! kernels/dropout.cu, the standalone dropout kernel.

use super::*;

/// One dropout launch; `nonfinite` plants NaN and infinities in the input.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dropout_launch<T: Raw>(
    m: usize,
    n: usize,
    dropout: DropoutSpec,
    geometry: Geometry,
    grid_x: Option<u32>,
    device_seed: bool,
    nonfinite: bool,
    rng: &mut StdRng,
) -> (Launch, Vec<T>) {
    let mut y = random_values::<T>(m * n, rng);
    if nonfinite {
        let at: Vec<(usize, usize)> = (0..m)
            .flat_map(|r| (r % 4..n).step_by(4).map(move |c| (r, c)))
            .collect();
        plant(&mut y, n, &at);
    }
    let mut want = y.clone();
    reference::dropout_in_place(&mut want, m, n, &dropout, &geometry).unwrap();
    let plan = dropout_plan::<T>(Operand::Y, Operand::Y, m, n);
    let mut launch = Launch::new(
        &plan.function,
        format!(
            "{m}x{n} p={} {geometry:?} grid_x={grid_x:?} device_seed={device_seed} \
             nonfinite={nonfinite}",
            dropout.p
        ),
        rng,
    );
    launch
        .plan(&plan)
        .mask(&dropout, &geometry, n, device_seed)
        .buffer("y", &y, 0, true);
    if let Some(g) = grid_x {
        launch.int("grid_x", g);
    }
    (launch, want)
}

/// How many elements of `got` differ from `want` in their bits; NaN payloads differ between
/// machines, so any NaN matches any NaN (NaN must stay NaN).
fn differing<T: Raw>(got: &[T], want: &[T]) -> usize {
    assert_eq!(got.len(), want.len(), "the output's length");
    got.iter()
        .zip(want)
        .filter(|(g, w)| {
            let (g, w) = (g.to_f64(), w.to_f64());
            g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan())
        })
        .count()
}

fn check_dropout_type<T: Raw>(exe: &Path, rng: &mut StdRng) {
    let shard = Geometry {
        row_offset: 5,
        col_offset: 3,
        n_global: Some(1003),
    };
    let far = Geometry {
        row_offset: 1 << 33,
        col_offset: 1,
        n_global: Some(130),
    };
    let mut cases = Vec::new();
    for &(m, n) in &[(1, 1), (3, 5), (17, 101), (33, 97), (8, 64)] {
        for &p in &[0.0f32, 0.1, 0.5, 1.0] {
            cases.push((
                m,
                n,
                DropoutSpec::new(p, rng.random(), rng.random_range(0..8)),
                Geometry::UNSHARDED,
                None,
                false,
                false,
            ));
        }
    }
    // NaN and infinities in every fourth element (docs/mask-contract.md, "Non-finite values").
    for &p in &[0.0f32, 0.1, 0.5, 1.0] {
        cases.push((
            17,
            101,
            DropoutSpec::new(p, rng.random(), 3),
            Geometry::UNSHARDED,
            None,
            false,
            true,
        ));
    }
    // Keep-rule boundary vectors: one element's word equals the threshold (kept), or is one
    // below it (p_above: dropped).
    for b in boundaries() {
        for p in [b.p(), b.p_above()] {
            cases.push((
                17,
                101,
                DropoutSpec::new(p, b.seed, b.subsequence),
                Geometry::UNSHARDED,
                None,
                false,
                false,
            ));
        }
    }
    cases.push((
        33,
        97,
        DropoutSpec::new(0.3, 42, 7),
        shard,
        None,
        false,
        false,
    ));
    cases.push((9, 29, DropoutSpec::new(0.5, 7, 1), far, None, true, false));
    cases.push((
        40,
        77,
        DropoutSpec::new(0.5, 99, 2),
        shard,
        Some(1),
        false,
        false,
    ));
    cases.push((
        40,
        77,
        DropoutSpec::new(0.1, 98, 0),
        Geometry::UNSHARDED,
        Some(3),
        true,
        false,
    ));
    let mut kept_on_boundary = 0;
    let (launches, wants): (Vec<_>, Vec<_>) = cases
        .into_iter()
        .map(|(m, n, d, g, grid, dev, nonfinite)| {
            let (launch, want) = dropout_launch::<T>(m, n, d, g, grid, dev, nonfinite, rng);
            if d.p > 0.0 && d.p < 1.0 {
                kept_on_boundary += (0..m * n)
                    .filter(|&i| on_boundary(&d, &g, n, i / n, i % n) && want[i].to_f64() != 0.0)
                    .count();
            }
            (launch, want)
        })
        .unzip();
    run(exe, &launches);
    for (launch, want) in launches.iter().zip(&wants) {
        let differ = differing(&launch.output::<T>("y"), want);
        assert_eq!(
            differ, 0,
            "{}: {differ} elements differ from the reference",
            launch.what
        );
    }
    // Each boundary vector must be met, with a non-zero value the kernel has to keep.
    assert_eq!(kept_on_boundary, boundaries().len());
}

#[test]
fn dropout_kernel_matches_reference_bit_for_bit() {
    let Some(exe) = driver("dropout") else { return };
    let mut rng = StdRng::seed_from_u64(0xD50);
    check_dropout_type::<f32>(&exe, &mut rng);
    check_dropout_type::<f16>(&exe, &mut rng);
    check_dropout_type::<bf16>(&exe, &mut rng);
}

/// The out-of-place form `LayerKernels::dropout` launches (the plan from X into Y): Y starts
/// poisoned and must equal the reference applied to X, for every dtype, with a shard, NaN and
/// infinities, and the seed from a device buffer.
#[test]
fn out_of_place_dropout_matches_reference_bit_for_bit() {
    let Some(exe) = driver("dropout") else { return };
    let mut rng = StdRng::seed_from_u64(0x0D50);
    let shard = Geometry {
        row_offset: 3,
        col_offset: 2,
        n_global: Some(211),
    };
    fn each<T: Raw>(exe: &Path, shard: Geometry, rng: &mut StdRng) {
        let cases = [
            (17, 101, 0.1f32, Geometry::UNSHARDED, false),
            (33, 97, 0.5, shard, true),
            (8, 64, 1.0, Geometry::UNSHARDED, false),
        ];
        let mut launches = Vec::new();
        let mut wants = Vec::new();
        for (i, &(m, n, p, geometry, device_seed)) in cases.iter().enumerate() {
            let dropout = DropoutSpec::new(p, rng.random(), i as u64);
            let mut x = random_values::<T>(m * n, rng);
            let at: Vec<(usize, usize)> = (0..m).map(|r| (r, (5 * r + 1) % n)).collect();
            plant(&mut x, n, &at);
            let mut want = x.clone();
            reference::dropout_in_place(&mut want, m, n, &dropout, &geometry).unwrap();
            let plan = dropout_plan::<T>(Operand::X, Operand::Y, m, n);
            let mut launch = Launch::new(
                &plan.function,
                format!("out of place {m}x{n} p={p} {geometry:?} device_seed={device_seed}"),
                rng,
            );
            launch
                .plan(&plan)
                .mask(&dropout, &geometry, n, device_seed)
                .buffer("x", &x, 0, false)
                .buffer("y", &poisoned::<T>(m * n), 0, true);
            launches.push(launch);
            wants.push(want);
        }
        run(exe, &launches);
        for (launch, want) in launches.iter().zip(&wants) {
            let differ = differing(&launch.output::<T>("y"), want);
            assert_eq!(
                differ,
                0,
                "{} {}: {differ} elements differ from the reference",
                T::NAME,
                launch.what
            );
        }
    }
    each::<f32>(&exe, shard, &mut rng);
    each::<f16>(&exe, shard, &mut rng);
    each::<bf16>(&exe, shard, &mut rng);
}
