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

/// Runs `launches` and compares each one's output `y` with its entry of `wants`, bit for bit
/// (NaN matching NaN).
fn run_and_compare<T: Raw>(exe: &Path, launches: &[Launch], wants: &[Vec<T>]) {
    run(exe, launches);
    for (launch, want) in launches.iter().zip(wants) {
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
        run_and_compare::<T>(exe, &launches, &wants);
    }
    each::<f32>(&exe, shard, &mut rng);
    each::<f16>(&exe, shard, &mut rng);
    each::<bf16>(&exe, shard, &mut rng);
}

/// The whole-rows path of kernels/dropout.cu (unsharded, or a shard of whole rows: col_offset 0
/// and n_global = n), which reads and writes each Philox call's four elements at once where the
/// buffer's first element has a linear index divisible by 4 and both buffers are aligned to
/// four elements, and one at a time elsewhere: buffers misaligned by one element (in place, and out
/// of place with either side misaligned), row shards whose first linear index is and is not a
/// multiple of 4, lengths with a partial last call, the seed from a device buffer; and a column
/// shard starting at column 0, which must not take the path. UBSan's
/// alignment check (every harness build) fails a four-element access at a misaligned address.
#[test]
fn whole_rows_dropout_reads_four_at_once_only_where_aligned() {
    let Some(exe) = driver("dropout") else { return };
    let mut rng = StdRng::seed_from_u64(0x4D50);
    let rows = |row_offset: u64, n: u64| Geometry {
        row_offset,
        col_offset: 0,
        n_global: Some(n),
    };
    // (m, n, p, geometry, x misaligned by, y misaligned by, in place, device seed); in place,
    // the buffer is y and x's misalignment unused.
    let cases = [
        (8, 64, 0.5f32, Geometry::UNSHARDED, 0, 1, true, false),
        (17, 101, 0.1, Geometry::UNSHARDED, 0, 1, true, true),
        (8, 64, 0.5, Geometry::UNSHARDED, 0, 1, false, false),
        (8, 64, 0.5, Geometry::UNSHARDED, 1, 0, false, false),
        (7, 6, 1.0, Geometry::UNSHARDED, 0, 0, false, false),
        (9, 64, 0.3, rows(3, 64), 0, 0, true, false),
        (9, 101, 0.3, rows(5, 101), 0, 0, true, true),
        (9, 101, 0.5, rows(5, 101), 0, 0, false, false),
        // The first call starts before the buffer (base 505 = 4 * 126 + 1), misaligned buffers.
        (9, 101, 0.5, rows(5, 101), 1, 1, false, true),
        (9, 101, 0.5, rows(5, 101), 0, 1, true, false),
        (1, 3, 0.5, rows(1 << 33, 3), 0, 0, false, false),
        // A column shard starting at column 0: not whole rows (rows of 150, of which it holds
        // 77), so one element at a time from each row's own first call.
        (
            9,
            77,
            0.5,
            Geometry {
                row_offset: 2,
                col_offset: 0,
                n_global: Some(150),
            },
            0,
            0,
            false,
            true,
        ),
    ];
    fn each<T: Raw>(exe: &Path, cases: &[Case], rng: &mut StdRng) {
        let mut launches = Vec::new();
        let mut wants = Vec::new();
        for (i, &(m, n, p, geometry, x_off, y_off, in_place, device_seed)) in
            cases.iter().enumerate()
        {
            let dropout = DropoutSpec::new(p, rng.random(), i as u64);
            let mut x = random_values::<T>(m * n, rng);
            let at: Vec<(usize, usize)> = (0..m).map(|r| (r, (3 * r + 2) % n)).collect();
            plant(&mut x, n, &at);
            let mut want = x.clone();
            reference::dropout_in_place(&mut want, m, n, &dropout, &geometry).unwrap();
            let (input, output) = if in_place {
                (Operand::Y, Operand::Y)
            } else {
                (Operand::X, Operand::Y)
            };
            let plan = dropout_plan::<T>(input, output, m, n);
            let mut launch = Launch::new(
                &plan.function,
                format!(
                    "{m}x{n} p={p} {geometry:?} x+{x_off} y+{y_off} in_place={in_place} \
                     device_seed={device_seed}"
                ),
                rng,
            );
            launch.plan(&plan).mask(&dropout, &geometry, n, device_seed);
            if in_place {
                launch.buffer("y", &x, y_off, true);
            } else {
                launch.buffer("x", &x, x_off, false).buffer(
                    "y",
                    &poisoned::<T>(m * n),
                    y_off,
                    true,
                );
            }
            launches.push(launch);
            wants.push(want);
        }
        run_and_compare::<T>(exe, &launches, &wants);
    }
    type Case = (usize, usize, f32, Geometry, usize, usize, bool, bool);
    each::<f32>(&exe, &cases, &mut rng);
    each::<f16>(&exe, &cases, &mut rng);
    each::<bf16>(&exe, &cases, &mut rng);
}
