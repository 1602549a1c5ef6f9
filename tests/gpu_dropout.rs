//! GPU tests of the standalone dropout kernel (kernels/dropout.cu) against the CPU reference,
//! and the refusal of device seed buffers of the wrong length (by the dropout kernel and by the
//! forward, also for an empty output). Skipped, with a message, where no GPU is usable.

use fusedrop::cuda::forward::ForwardOptions;
use fusedrop::cuda::{self, LayerKernels, SeedSource};
use fusedrop::{reference, DropoutSpec, Element, Geometry, LayerSpec, LinearShape, Nonlinearity};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[path = "common/gpu_open.rs"]
mod gpu_open;
use gpu_open::open_or_skip;

fn gpu() -> Option<LayerKernels> {
    open_or_skip("the GPU dropout test", || {
        cuda::open_device(0).and_then(|ctx| LayerKernels::new(ctx.default_stream()))
    })
}

fn random_values<T: Element>(len: usize, rng: &mut StdRng) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f64(rng.random_range(0.25..2.0) * if rng.random() { 1.0 } else { -1.0 }))
        .collect()
}

/// Runs the kernel, in place and out of place (into a poisoned buffer), and the reference on the
/// same random buffer; all must agree bit for bit, and the out-of-place input stay as it was.
fn check<T: Element>(
    kernels: &LayerKernels,
    m: usize,
    n: usize,
    dropout: DropoutSpec,
    geometry: Geometry,
) {
    let mut rng = StdRng::seed_from_u64(dropout.seed ^ (m * 131 + n) as u64);
    let mut host = random_values::<T>(m * n, &mut rng);
    if dropout.seed == NONFINITE_SEED {
        // Every seventh element NaN, +inf or -inf (docs/mask-contract.md, "Non-finite values").
        let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        for (i, e) in host.iter_mut().enumerate().step_by(7) {
            *e = T::from_f64(values[(i / 7) % 3]);
        }
    }
    let mut want = host.clone();
    reference::dropout_in_place(&mut want, m, n, &dropout, &geometry).unwrap();

    let mut device = kernels.stream().clone_htod(&host).unwrap();
    kernels
        .dropout_in_place(&mut device, m, n, &dropout, &geometry, SeedSource::Host)
        .unwrap();
    let got = kernels.stream().clone_dtoh(&device).unwrap();
    let differ = mismatches(&got, &want);
    assert_eq!(
        differ, 0,
        "{} dropout {m}x{n} p={} geometry {geometry:?}: {differ} elements differ from the reference",
        T::NAME, dropout.p
    );
    let input = kernels.stream().clone_htod(&host).unwrap();
    let mut output = kernels
        .stream()
        .clone_htod(&vec![T::from_f64(f64::NAN); m * n])
        .unwrap();
    kernels
        .dropout(
            &input,
            &mut output,
            m,
            n,
            &dropout,
            &geometry,
            SeedSource::Host,
        )
        .unwrap();
    let differ = mismatches(&kernels.stream().clone_dtoh(&output).unwrap(), &want);
    assert_eq!(
        differ,
        0,
        "{} dropout {m}x{n} p={} geometry {geometry:?} out of place: {differ} elements differ \
         from the reference",
        T::NAME,
        dropout.p
    );
    let untouched = kernels.stream().clone_dtoh(&input).unwrap();
    assert!(
        untouched
            .iter()
            .zip(&host)
            .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()
                || (a.to_f64().is_nan() && b.to_f64().is_nan())),
        "{} dropout {m}x{n} out of place changed its input",
        T::NAME
    );
    if dropout.p > 0.0 && dropout.p < 1.0 && m * n > 1000 {
        let dropped = got
            .iter()
            .zip(&host)
            .filter(|(v, h)| v.to_f64() == 0.0 || (v.to_f64().is_nan() && !h.to_f64().is_nan()))
            .count() as f64
            / (m * n) as f64;
        assert!(
            (dropped - f64::from(dropout.p)).abs() < 0.05,
            "drop rate {dropped} for p {}",
            dropout.p
        );
    }
}

/// How many elements of `got` differ from `want` in their bits; NaN payloads differ between the
/// GPU and the CPU, so any NaN matches any NaN (NaN must stay NaN).
fn mismatches<T: Element>(got: &[T], want: &[T]) -> usize {
    assert_eq!(got.len(), want.len(), "the output's length");
    got.iter()
        .zip(want)
        .filter(|(g, w)| {
            let (g, w) = (g.to_f64(), w.to_f64());
            g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan())
        })
        .count()
}

/// The kernel on buffers that start one element past an allocation's start (so misaligned for
/// a four-element access): in place, and out of place with the input, the output or both
/// misaligned; each against the reference, bit for bit.
fn check_misaligned<T: Element>(kernels: &LayerKernels, m: usize, n: usize, dropout: DropoutSpec) {
    let stream = kernels.stream();
    let mut rng = StdRng::seed_from_u64(dropout.seed ^ 0x4a11);
    let host = random_values::<T>(m * n + 1, &mut rng);
    let mut want = host[1..].to_vec();
    reference::dropout_in_place(&mut want, m, n, &dropout, &Geometry::UNSHARDED).unwrap();
    let what = |form: &str| format!("{} dropout {m}x{n} p={} {form}", T::NAME, dropout.p);

    let mut device = stream.clone_htod(&host).unwrap();
    kernels
        .dropout_in_place(
            &mut device.slice_mut(1..),
            m,
            n,
            &dropout,
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )
        .unwrap();
    let got = stream.clone_dtoh(&device).unwrap();
    assert_eq!(
        mismatches(&got[1..], &want),
        0,
        "{}",
        what("in place, misaligned")
    );
    assert_eq!(
        got[0].to_f64().to_bits(),
        host[0].to_f64().to_bits(),
        "{}",
        what("in place")
    );

    let poison = vec![T::from_f64(f64::NAN); m * n + 1];
    for (x_off, y_off) in [(1, 0), (0, 1), (1, 1)] {
        let input = stream.clone_htod(&host[1 - x_off..]).unwrap();
        let mut output = stream.clone_htod(&poison[1 - y_off..]).unwrap();
        kernels
            .dropout(
                &input.slice(x_off..),
                &mut output.slice_mut(y_off..),
                m,
                n,
                &dropout,
                &Geometry::UNSHARDED,
                SeedSource::Host,
            )
            .unwrap();
        let got = stream.clone_dtoh(&output).unwrap();
        let form = format!("out of place, x misaligned by {x_off}, y by {y_off}");
        assert_eq!(mismatches(&got[y_off..], &want), 0, "{}", what(&form));
        if y_off == 1 {
            assert!(got[0].to_f64().is_nan(), "{}: wrote before y", what(&form));
        }
    }
}

fn check_all_types(
    kernels: &LayerKernels,
    m: usize,
    n: usize,
    dropout: DropoutSpec,
    geometry: Geometry,
) {
    check::<f32>(kernels, m, n, dropout, geometry);
    check::<f16>(kernels, m, n, dropout, geometry);
    check::<bf16>(kernels, m, n, dropout, geometry);
}

/// The seed that makes `check` plant NaN and infinities in its input.
const NONFINITE_SEED: u64 = 0x0bad_0bad_0bad_0bad;

#[test]
fn dropout_kernel_keeps_nan_and_makes_dropped_infinities_nan() {
    let Some(kernels) = gpu() else { return };
    for &(m, n) in &[(3, 5), (17, 1001), (257, 129)] {
        for &p in &[0.0f32, 0.1, 0.5, 1.0] {
            check_all_types(
                &kernels,
                m,
                n,
                DropoutSpec::new(p, NONFINITE_SEED, 5),
                Geometry::UNSHARDED,
            );
        }
    }
}

#[test]
fn dropout_kernel_matches_reference_bit_for_bit() {
    let Some(kernels) = gpu() else { return };
    for &(m, n) in &[
        (1, 1),
        (3, 5),
        (17, 1001),
        (257, 129),
        (1000, 1000),
        (4099, 777),
    ] {
        for &p in &[0.1f32, 0.5, 1.0] {
            check_all_types(
                &kernels,
                m,
                n,
                DropoutSpec::new(p, 0x0123_4567_89ab_cdef, 3),
                Geometry::UNSHARDED,
            );
        }
    }
}

#[test]
fn dropout_kernel_honours_shard_geometry() {
    let Some(kernels) = gpu() else { return };
    let geometry = Geometry {
        row_offset: 5,
        col_offset: 3,
        n_global: Some(1003),
    };
    check_all_types(&kernels, 33, 997, DropoutSpec::new(0.3, 42, 7), geometry);
    let geometry = Geometry {
        row_offset: 1 << 33,
        col_offset: 1,
        n_global: Some(130),
    };
    check_all_types(
        &kernels,
        9,
        129,
        DropoutSpec::new(0.5, u64::MAX, u64::MAX - 1),
        geometry,
    );
}

/// The whole-rows path (kernels/dropout.cu: unsharded, or a shard of whole rows), which reads
/// and writes a Philox call's four elements at once where aligned: buffers misaligned by one
/// element, row shards whose first linear index is and is not a multiple of 4, and a column
/// shard starting at column 0 (which takes the other path).
#[test]
fn dropout_kernel_reads_four_at_once_only_where_aligned() {
    let Some(kernels) = gpu() else { return };
    for &(m, n) in &[(8, 64), (17, 1001), (3, 5)] {
        let dropout = DropoutSpec::new(0.5, 0x5eed, 4);
        check_misaligned::<f32>(&kernels, m, n, dropout);
        check_misaligned::<f16>(&kernels, m, n, dropout);
        check_misaligned::<bf16>(&kernels, m, n, dropout);
    }
    for (row_offset, n, n_global) in [(3, 64, 64), (5, 101, 101), (2, 77, 150)] {
        let geometry = Geometry {
            row_offset,
            col_offset: 0,
            n_global: Some(n_global),
        };
        check_all_types(&kernels, 33, n, DropoutSpec::new(0.3, 77, 1), geometry);
    }
}

#[test]
fn dropout_kernel_reads_seed_from_device_buffer() {
    let Some(kernels) = gpu() else { return };
    let (m, n) = (123, 457);
    let dropout = DropoutSpec::new(0.25, 99, 12);
    let mut rng = StdRng::seed_from_u64(5);
    let host = random_values::<f32>(m * n, &mut rng);
    let mut want = host.clone();
    reference::dropout_in_place(&mut want, m, n, &dropout, &Geometry::UNSHARDED).unwrap();

    let seed_subsequence = kernels
        .stream()
        .clone_htod(&[dropout.seed, dropout.subsequence])
        .unwrap();
    let mut device = kernels.stream().clone_htod(&host).unwrap();
    // The host-side seed and subsequence are deliberately wrong: the kernel must use the buffer.
    let decoy = DropoutSpec::new(dropout.p, 1, 1);
    kernels
        .dropout_in_place(
            &mut device,
            m,
            n,
            &decoy,
            &Geometry::UNSHARDED,
            SeedSource::Device(&seed_subsequence.as_view()),
        )
        .unwrap();
    assert_eq!(kernels.stream().clone_dtoh(&device).unwrap(), want);
}

#[test]
fn dropout_kernel_rejects_bad_input_before_launch() {
    let Some(kernels) = gpu() else { return };
    let mut y = kernels.stream().clone_htod(&[1.0f32; 12]).unwrap();
    let err = kernels
        .dropout_in_place(
            &mut y,
            3,
            5,
            &DropoutSpec::new(0.5, 1, 1),
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )
        .unwrap_err();
    assert!(err.to_string().contains("expected 15"), "{err}");
    let err = kernels
        .dropout_in_place(
            &mut y,
            3,
            4,
            &DropoutSpec::new(f32::NAN, 1, 1),
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    let short = kernels.stream().clone_htod(&[1u64]).unwrap();
    let err = kernels
        .dropout_in_place(
            &mut y,
            3,
            4,
            &DropoutSpec::new(0.5, 1, 1),
            &Geometry::UNSHARDED,
            SeedSource::Device(&short.as_view()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("seed_subsequence"), "{err}");
    // A shard whose columns run past the logical output, and a logical output whose mask
    // indices overflow.
    let past_the_end = Geometry {
        row_offset: 0,
        col_offset: 1,
        n_global: Some(4),
    };
    let beyond_63_bits = Geometry {
        row_offset: u64::MAX / 4,
        col_offset: 0,
        n_global: None,
    };
    for (geometry, needle) in [
        (past_the_end, "col_offset 1 + n 4 exceeds n_global 4"),
        (beyond_63_bits, "overflows the 63-bit mask index"),
    ] {
        let err = kernels
            .dropout_in_place(
                &mut y,
                3,
                4,
                &DropoutSpec::new(0.5, 1, 1),
                &geometry,
                SeedSource::Host,
            )
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = kernels
        .dropout_in_place(
            &mut y,
            1 << 40,
            1 << 40,
            &DropoutSpec::new(0.5, 1, 1),
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )
        .unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
    // Out of place, X of the wrong length.
    let short_x = kernels.stream().clone_htod(&[1.0f32; 11]).unwrap();
    let err = kernels
        .dropout(
            &short_x,
            &mut y,
            3,
            4,
            &DropoutSpec::new(0.5, 1, 1),
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("X has 11 elements; expected 12"),
        "{err}"
    );
    // Nothing was launched: y holds what it was given.
    assert_eq!(kernels.stream().clone_dtoh(&y).unwrap(), vec![1.0f32; 12]);
}

/// Asserts `result` is an `InvalidArgument` whose message contains every one of `needles`.
#[track_caller]
fn assert_invalid_argument(result: fusedrop::Result<()>, needles: &[&str]) {
    match result {
        Err(fusedrop::Error::InvalidArgument(msg)) => {
            for needle in needles {
                assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
            }
        }
        other => panic!("expected InvalidArgument mentioning {needles:?}, got {other:?}"),
    }
}

#[test]
fn device_seed_buffers_of_wrong_length_are_refused() {
    let Some(kernels) = gpu() else { return };
    let stream = kernels.stream();
    let mut y = stream.clone_htod(&[1.0f32; 6]).expect("upload y");
    let seeds = stream.clone_htod(&[1u64, 2, 3]).expect("upload seeds");
    let view = seeds.as_view();
    let result = kernels.dropout_in_place(
        &mut y,
        2,
        3,
        &DropoutSpec::new(0.5, 0, 0),
        &Geometry::UNSHARDED,
        SeedSource::Device(&view),
    );
    assert_invalid_argument(
        result,
        &["seed_subsequence buffer has 3 elements", "expected 2"],
    );
    // The forward checks the buffer before it returns for an empty output (m = 0) too.
    let spec = LayerSpec::new(
        LinearShape::new(0, 3, 2),
        Nonlinearity::Relu,
        DropoutSpec::new(0.5, 0, 0),
    );
    let x = stream.alloc_zeros::<f32>(0).expect("allocate x");
    let w = stream.clone_htod(&[1.0f32; 6]).expect("upload w");
    let mut y_empty = stream.alloc_zeros::<f32>(0).expect("allocate y");
    let mut forward = |seed| {
        kernels.forward(
            &spec,
            &x,
            &w,
            None,
            &mut y_empty.as_view_mut(),
            ForwardOptions {
                seed,
                ..ForwardOptions::default()
            },
        )
    };
    assert_invalid_argument(
        forward(SeedSource::Device(&view)),
        &["seed_subsequence buffer has 3 elements", "expected 2"],
    );
    // DeviceRecorded: the record buffer too.
    let pair = stream.clone_htod(&[1u64, 2]).expect("upload pair");
    let pair_view = pair.as_view();
    let mut record = stream.alloc_zeros::<u64>(1).expect("allocate record");
    assert_invalid_argument(
        forward(SeedSource::DeviceRecorded {
            next: &pair_view,
            record: &mut record,
        }),
        &["seed record buffer has 1 elements", "expected 2"],
    );
}
