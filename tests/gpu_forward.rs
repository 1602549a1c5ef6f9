//! GPU tests of the fused forward kernels (kernels/forward_sm90.cu, kernels/forward_tc.cu,
//! kernels/forward_f32.cu) against the CPU reference: masks exactly, values within the element type's relative L2
//! tolerance and each element within its rounding bound. Skipped, with a message, where no GPU
//! is usable.

use fusedrop::cuda::forward::{ForwardConfig, ForwardOptions};
use fusedrop::cuda::{self, LayerKernels, LoadOptions, SeedSource};
use fusedrop::{
    mask, reference, DropoutSpec, Element, Geometry, LayerSpec, LinearShape, Nonlinearity,
};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[path = "common/elementwise.rs"]
mod elementwise;
use elementwise::check_elementwise;
#[path = "common/same_bits.rs"]
mod same_bits;
use same_bits::assert_same_bits;

#[path = "common/gpu_open.rs"]
mod gpu_open;
use gpu_open::{hopper_or_skip, open_or_skip};

fn gpu() -> Option<LayerKernels> {
    open_or_skip("the GPU forward test", || {
        cuda::open_device(0).and_then(|ctx| LayerKernels::new(ctx.default_stream()))
    })
}

/// Half-type kernels need sm_80; on an older GPU only f32 is checked.
fn runs<T: Element>(kernels: &LayerKernels) -> bool {
    !T::NEEDS_SM80 || kernels.compute_capability() >= (8, 0)
}

fn random_values<T: Element>(len: usize, rng: &mut StdRng) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f64(rng.random_range(-1.0..1.0)))
        .collect()
}

/// One forward call to check.
#[derive(Debug, Clone, Copy)]
struct Case {
    shape: LinearShape,
    nonlinearity: Nonlinearity,
    p: f32,
    bias: bool,
    geometry: Geometry,
    config: Option<ForwardConfig>,
    /// Pass X, W and Y as views one element into their allocations (misaligned by 2 or 4
    /// bytes), which must take the kernels' unaligned paths.
    misaligned: bool,
    /// Pass b as a view one element into its allocation (2 bytes off 4-byte alignment), X, W
    /// and Y as `misaligned` says: the Hopper epilogue reads such biases one by one.
    bias_misaligned: bool,
    /// Plant NaN, +inf and -inf in X, W and b (docs/mask-contract.md, "Non-finite values").
    nonfinite: bool,
}

impl Case {
    fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            shape: LinearShape::new(m, n, k),
            nonlinearity: Nonlinearity::Relu,
            p: 0.1,
            bias: true,
            geometry: Geometry::UNSHARDED,
            config: None,
            misaligned: false,
            bias_misaligned: false,
            nonfinite: false,
        }
    }
}

struct Inputs<T> {
    x: Vec<T>,
    w: Vec<T>,
    b: Option<Vec<T>>,
}

/// Writes NaN, +inf, -inf, NaN, .. at the given flat positions (those inside `v`).
fn plant<T: Element>(v: &mut [T], at: &[usize]) {
    let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    for (&i, &value) in at.iter().zip(values.iter().cycle()) {
        if let Some(e) = v.get_mut(i) {
            *e = T::from_f64(value);
        }
    }
}

fn inputs<T: Element>(case: &Case, rng: &mut StdRng) -> Inputs<T> {
    let LinearShape { m, n, k } = case.shape;
    let mut host = Inputs {
        x: random_values(m * k, rng),
        w: random_values(n * k, rng),
        b: case.bias.then(|| random_values(n, rng)),
    };
    if case.nonfinite {
        // Non-finite elements of X and W spoil whole rows and columns of z; the bias, columns.
        plant(&mut host.x, &[k + k / 3, (m / 2) * k + k - 1, (m - 1) * k]);
        plant(&mut host.w, &[(n / 2) * k + 1, (n - 1) * k + k / 4]);
        if let Some(b) = host.b.as_mut() {
            plant(b, &[2, n / 3, n - 1]);
        }
    }
    host
}

/// Runs the kernel once on fresh device buffers, Y poisoned with NaN; returns Y.
fn run_gpu<T: Element>(
    kernels: &LayerKernels,
    case: &Case,
    spec: &LayerSpec,
    host: &Inputs<T>,
    seed: SeedSource<'_>,
) -> Vec<T> {
    let offset = usize::from(case.misaligned);
    let pad = |v: &[T]| {
        let mut padded = vec![T::from_f64(0.5); offset];
        padded.extend_from_slice(v);
        padded
    };
    let x = kernels.stream().clone_htod(&pad(&host.x)).unwrap();
    let w = kernels.stream().clone_htod(&pad(&host.w)).unwrap();
    let b_offset = usize::from(case.bias_misaligned);
    let b = host.b.as_ref().map(|b| {
        let mut padded = vec![T::from_f64(0.5); b_offset];
        padded.extend_from_slice(b);
        kernels.stream().clone_htod(&padded).unwrap()
    });
    let poison = vec![T::from_f64(f64::NAN); offset + case.shape.m * case.shape.n];
    let mut y = kernels.stream().clone_htod(&poison).unwrap();
    let b_view = b.as_ref().map(|b| b.slice(b_offset..));
    let x_view = x.slice(offset..);
    let w_view = w.slice(offset..);
    let mut y_view = y.slice_mut(offset..);
    let options = ForwardOptions {
        config: case.config,
        seed,
    };
    kernels
        .forward(
            spec,
            &x_view,
            &w_view,
            b_view.as_ref(),
            &mut y_view,
            options,
        )
        .unwrap_or_else(|e| panic!("{} {case:?}: {e}", T::NAME));
    let got = kernels.stream().clone_dtoh(&y).unwrap();
    got[offset..].to_vec()
}

fn spec_of(case: &Case, seed: u64, stream_id: u64) -> LayerSpec {
    LayerSpec::new(
        case.shape,
        case.nonlinearity,
        DropoutSpec::new(case.p, seed, stream_id),
    )
    .with_geometry(case.geometry)
}

/// Runs one case and checks it against the reference: no poison left, every dropped element
/// exactly 0, every kept element with a clearly non-zero activation non-zero, the relative L2
/// error within the element type's tolerance, and every finite element within its own rounding
/// bound (`check_elementwise`: X and W are exact in T, the sum of the |terms| is the same layer
/// on |X|, |W|, |b| times the dropout scale).
fn check<T: Element>(kernels: &LayerKernels, case: Case) {
    if !runs::<T>(kernels) {
        return;
    }
    let LinearShape { m, n, k } = case.shape;
    let mut rng = StdRng::seed_from_u64((m * 1_000_003 + n * 1009 + k) as u64 ^ 0x5eed);
    let host = inputs::<T>(&case, &mut rng);
    let spec = spec_of(&case, rng.random(), rng.random());
    let what = format!(
        "{} {m}x{n}x{k} p={} {:?} bias={} {:?} config={:?} misaligned={} bias_misaligned={} \
         nonfinite={}",
        T::NAME,
        case.p,
        case.nonlinearity,
        case.bias,
        case.geometry,
        case.config,
        case.misaligned,
        case.bias_misaligned,
        case.nonfinite
    );
    let got_elements = run_gpu(kernels, &case, &spec, &host, SeedSource::Host);
    check_against_reference(&what, &case, &spec, &host, &got_elements);
}

/// `got_elements`, the output of `spec` on `host`'s inputs, against the f64 reference: every
/// element of the reference's class, the mask exact, the dtype's relative L2 tolerance, and each
/// element within its own bound.
fn check_against_reference<T: Element>(
    what: &str,
    case: &Case,
    spec: &LayerSpec,
    host: &Inputs<T>,
    got_elements: &[T],
) {
    let LinearShape { m, n, k } = case.shape;
    let got = reference::to_f64(got_elements);
    let want = reference::forward_f64(spec, &host.x, &host.w, host.b.as_deref()).unwrap();
    let z = reference::preactivation_f64(case.shape, &host.x, &host.w, host.b.as_deref()).unwrap();
    // NaN where the reference has none is an unwritten (poisoned) output or a lost class.
    let wrong_class = |i: usize| !reference::same_class(got[i], want[i]);
    assert!(
        !(0..m * n).any(wrong_class),
        "{what}: outputs unwritten or of the wrong class (NaN, +-inf, finite): {}",
        reference::describe_differences(m, n, &got, &want, wrong_class)
    );

    let dropout = spec.dropout;
    // A finite dropped element must be 0, and a kept one whose pre-activation is clearly active
    // must not be.
    let wrong_mask = |i: usize| {
        let (r, c) = (i / n, i % n);
        let index = case.geometry.linear_index(n, r, c);
        let kept = mask::keep(dropout.seed, dropout.subsequence, dropout.p, index);
        let active = match case.nonlinearity {
            Nonlinearity::Relu => z[i] > 1e-3,
            Nonlinearity::Identity => z[i].abs() > 1e-3,
        };
        want[i].is_finite() && ((!kept && got[i] != 0.0) || (kept && active && got[i] == 0.0))
    };
    assert!(
        !(0..m * n).any(wrong_mask),
        "{what}: mask differs from the reference: {}",
        reference::describe_differences(m, n, &got, &want, wrong_mask)
    );
    let err = reference::relative_l2_error_nonfinite(&got, &want);
    assert!(
        err < T::REL_L2_TOLERANCE,
        "{what}: relative L2 error {err:e} exceeds {:e}; elements off by more than 1 %: {}",
        T::REL_L2_TOLERANCE,
        reference::describe_differences(m, n, &got, &want, |i| {
            reference::off_by_more_than(got[i], want[i], 0.01)
        })
    );
    let abs = |v: &[T]| -> Vec<T> { v.iter().map(|e| T::from_f64(e.to_f64().abs())).collect() };
    let scale = f64::from(mask::scale(dropout.p));
    let abs_b = host.b.as_deref().map(abs);
    let abs_sum: Vec<f64> =
        reference::preactivation_f64(case.shape, &abs(&host.x), &abs(&host.w), abs_b.as_deref())
            .unwrap()
            .into_iter()
            .map(|s| s * scale)
            .collect();
    check_elementwise(what, n, got_elements, &want, &abs_sum, k + 1);
}

fn check_all_types(kernels: &LayerKernels, case: Case) {
    check::<f32>(kernels, case);
    check::<f16>(kernels, case);
    check::<bf16>(kernels, case);
}

#[test]
fn forward_matches_reference_on_odd_shapes_for_every_setting() {
    let Some(kernels) = gpu() else { return };
    // Multiples of no tile; k and n not multiples of 8 (unaligned rows), and aligned ones.
    for &(m, n, k) in &[
        (1, 1, 1),
        (3, 5, 7),
        (33, 77, 9),
        (17, 45, 24),
        (257, 129, 67),
        (130, 200, 48),
    ] {
        for &p in &[0.0f32, 0.1, 0.5, 1.0] {
            for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
                for bias in [false, true] {
                    check_all_types(
                        &kernels,
                        Case {
                            nonlinearity,
                            p,
                            bias,
                            ..Case::new(m, n, k)
                        },
                    );
                }
            }
        }
    }
}

/// NaN and infinities through every config: NaN stays NaN through ReLU and dropped elements, a
/// dropped infinity becomes NaN, for every rate and both activations.
#[test]
fn forward_keeps_nan_and_infinities_as_pytorch() {
    let Some(kernels) = gpu() else { return };
    fn each<T: Element>(kernels: &LayerKernels) {
        for &config in ForwardConfig::all_for::<T>() {
            for &(m, n, k) in &[(70, 72, 64), (37, 29, 45)] {
                for &p in &[0.0f32, 0.1, 0.5, 1.0] {
                    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
                        check::<T>(
                            kernels,
                            Case {
                                config: Some(config),
                                nonlinearity,
                                p,
                                nonfinite: true,
                                ..Case::new(m, n, k)
                            },
                        );
                    }
                }
            }
        }
    }
    each::<f32>(&kernels);
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}

#[test]
fn forward_matches_reference_on_1000_cubed() {
    let Some(kernels) = gpu() else { return };
    check_all_types(&kernels, Case::new(1000, 1000, 1000));
    check_all_types(
        &kernels,
        Case {
            nonlinearity: Nonlinearity::Identity,
            p: 0.5,
            bias: false,
            ..Case::new(1000, 1000, 1000)
        },
    );
}

#[test]
fn every_config_is_correct() {
    let Some(kernels) = gpu() else { return };
    fn each<T: Element>(kernels: &LayerKernels) {
        for &config in ForwardConfig::all_for::<T>() {
            for &(m, n, k) in &[(257, 129, 67), (130, 200, 48), (5, 300, 512)] {
                for misaligned in [false, true] {
                    check::<T>(
                        kernels,
                        Case {
                            config: Some(config),
                            nonlinearity: Nonlinearity::Identity,
                            p: 0.5,
                            misaligned,
                            ..Case::new(m, n, k)
                        },
                    );
                }
            }
        }
    }
    each::<f32>(&kernels);
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}

#[test]
fn forward_honours_shard_geometry() {
    let Some(kernels) = gpu() else { return };
    // n_global not a multiple of 4: every row starts at a different word of its Philox call.
    let geometry = Geometry {
        row_offset: 5,
        col_offset: 3,
        n_global: Some(1003),
    };
    for config in [None, Some(ForwardConfig::Tc64x32)] {
        let case = Case {
            geometry,
            config,
            p: 0.5,
            nonlinearity: Nonlinearity::Identity,
            ..Case::new(133, 997, 40)
        };
        check::<f32>(
            &kernels,
            Case {
                config: None,
                ..case
            },
        );
        check::<f16>(&kernels, case);
        check::<bf16>(&kernels, case);
    }
    let geometry = Geometry {
        row_offset: 1 << 33,
        col_offset: 1,
        n_global: Some(130),
    };
    check_all_types(
        &kernels,
        Case {
            geometry,
            p: 0.1,
            ..Case::new(70, 129, 33)
        },
    );
}

#[test]
fn forward_handles_grids_beyond_one_wave_and_the_row_limit() {
    let Some(kernels) = gpu() else { return };
    // Hundreds of 128 x 128 tiles: more than a full wave on any current GPU.
    check_all_types(&kernels, Case::new(2048, 2048, 64));
    // More row tiles than gridDim.y can hold (65535): the kernels fold rows into grid.y.
    let tall = 65_535 * 64 + 100;
    check::<bf16>(
        &kernels,
        Case {
            config: Some(ForwardConfig::Tc64x32),
            ..Case::new(tall, 8, 8)
        },
    );
    check::<f32>(
        &kernels,
        Case {
            config: Some(ForwardConfig::Simt64x64),
            ..Case::new(tall, 5, 4)
        },
    );
}

#[test]
fn same_call_twice_is_bit_identical_and_device_seed_matches_host_seed() {
    let Some(kernels) = gpu() else { return };
    fn each<T: Element>(kernels: &LayerKernels) {
        if !runs::<T>(kernels) {
            return;
        }
        let case = Case {
            p: 0.3,
            ..Case::new(301, 257, 96)
        };
        let mut rng = StdRng::seed_from_u64(11);
        let host = inputs::<T>(&case, &mut rng);
        let spec = spec_of(&case, 0xdead_beef_0123_4567, 77);
        let first = run_gpu(kernels, &case, &spec, &host, SeedSource::Host);
        let second = run_gpu(kernels, &case, &spec, &host, SeedSource::Host);
        let LinearShape { m, n, .. } = case.shape;
        let two_runs = format!("{}: two runs differ", T::NAME);
        assert_same_bits(&two_runs, m, n, &second, &first);

        let buffer = kernels
            .stream()
            .clone_htod(&[spec.dropout.seed, spec.dropout.subsequence])
            .unwrap();
        // Deliberately wrong host-side seed and subsequence: the kernel must use the buffer.
        let decoy = LayerSpec {
            dropout: DropoutSpec::new(spec.dropout.p, 1, 2),
            ..spec
        };
        let from_device = run_gpu(
            kernels,
            &case,
            &decoy,
            &host,
            SeedSource::Device(&buffer.as_view()),
        );
        let device_seed = format!("{}: device-seed form differs from the host form", T::NAME);
        assert_same_bits(&device_seed, m, n, &from_device, &first);
    }
    each::<f32>(&kernels);
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}

/// A handle and buffers made on one thread, the call made on another that has never used the
/// context (cudarc makes it current for launches only; the handle's first kernel lookup must do
/// it itself), then checked against the reference like every other case.
#[test]
fn a_fresh_handle_runs_its_first_call_on_another_thread() {
    let Some(kernels) = gpu() else { return };
    let case = Case::new(67, 45, 33);
    let LinearShape { m, n, k } = case.shape;
    let mut rng = StdRng::seed_from_u64(5);
    let host = inputs::<f32>(&case, &mut rng);
    let spec = spec_of(&case, rng.random(), rng.random());
    let stream = kernels.stream().clone();
    let x = stream.clone_htod(&host.x).unwrap();
    let w = stream.clone_htod(&host.w).unwrap();
    let b = stream.clone_htod(host.b.as_ref().unwrap()).unwrap();
    let mut y = stream.clone_htod(&vec![f32::NAN; m * n]).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let b_view = b.as_view();
                kernels.forward(
                    &spec,
                    &x,
                    &w,
                    Some(&b_view),
                    &mut y,
                    ForwardOptions::default(),
                )
            })
            .join()
            .expect("the forward's thread panicked")
            .unwrap_or_else(|e| panic!("the forward on a fresh thread failed: {e}"));
    });
    let got = stream.clone_dtoh(&y).unwrap();
    let on_this_thread = run_gpu(&kernels, &case, &spec, &host, SeedSource::Host);
    assert_same_bits("fresh thread vs this thread", m, n, &got, &on_this_thread);
    // And the result is the layer's, not two identical wrong answers.
    let want = reference::forward_f64(&spec, &host.x, &host.w, host.b.as_deref()).unwrap();
    let err = reference::relative_l2_error_nonfinite(&reference::to_f64(&got), &want);
    assert!(
        err < f32::REL_L2_TOLERANCE,
        "{m}x{n}x{k}: relative L2 error {err:e}"
    );
}

#[test]
fn forward_rejects_bad_input_before_launch() {
    let Some(kernels) = gpu() else { return };
    let x = kernels.stream().clone_htod(&[1.0f32; 6]).unwrap();
    let w = kernels.stream().clone_htod(&[1.0f32; 6]).unwrap();
    // Y has 5 elements where the shape needs 2 x 2.
    let mut y = kernels.stream().clone_htod(&[f32::NAN; 5]).unwrap();
    let spec = LayerSpec::new(
        LinearShape::new(2, 2, 3),
        Nonlinearity::Relu,
        DropoutSpec::new(0.5, 1, 1),
    );
    let err = kernels
        .forward(&spec, &x, &w, None, &mut y, ForwardOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("expected 4"), "{err}");
    let bad_p = LayerSpec {
        dropout: DropoutSpec::new(1.5, 1, 1),
        ..spec
    };
    let mut y4 = kernels.stream().clone_htod(&[f32::NAN; 4]).unwrap();
    let x4 = kernels.stream().clone_htod(&[1.0f32; 6]).unwrap();
    let err = kernels
        .forward(&bad_p, &x4, &w, None, &mut y4, ForwardOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    let err = kernels
        .forward(
            &LayerSpec {
                shape: LinearShape::new(2, 2, 3),
                ..spec
            },
            &x4,
            &w,
            None,
            &mut y4,
            ForwardOptions {
                config: Some(ForwardConfig::Tc64x64),
                ..ForwardOptions::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("not compiled for f32"), "{err}");
    // A shard whose columns run past the logical output, one whose mask indices overflow, and a
    // shape whose element counts do.
    let past_the_end = Geometry {
        row_offset: 0,
        col_offset: 1,
        n_global: Some(2),
    };
    let beyond_63_bits = Geometry {
        row_offset: u64::MAX / 4,
        col_offset: 0,
        n_global: None,
    };
    for (geometry, needle) in [
        (past_the_end, "col_offset 1 + n 2 exceeds n_global 2"),
        (beyond_63_bits, "overflows the 63-bit mask index"),
    ] {
        let sharded = spec.with_geometry(geometry);
        let err = kernels
            .forward(&sharded, &x4, &w, None, &mut y4, ForwardOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let huge = LayerSpec {
        shape: LinearShape::new(1 << 40, 1 << 40, 3),
        ..spec
    };
    let err = kernels
        .forward(&huge, &x4, &w, None, &mut y4, ForwardOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
    // Nothing was launched: y is still poisoned.
    assert!(kernels
        .stream()
        .clone_dtoh(&y4)
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
    // An empty output is valid and launches nothing.
    let empty = LayerSpec::new(
        LinearShape::new(0, 2, 3),
        Nonlinearity::Relu,
        DropoutSpec::new(0.5, 1, 1),
    );
    let mut forward_empty = |config| {
        kernels.forward(
            &empty,
            &x.slice(0..0),
            &w,
            None,
            &mut y.slice_mut(0..0),
            ForwardOptions {
                config,
                ..ForwardOptions::default()
            },
        )
    };
    forward_empty(None).unwrap();
    // ... but a configuration that cannot run f32 is refused for it as for any other shape.
    let err = forward_empty(Some(ForwardConfig::Tc64x64)).unwrap_err();
    assert!(err.to_string().contains("not compiled for f32"), "{err}");
}

/// Whether the Hopper kernel can run here: compute capability 9.0 and the sm_90a module built.
fn hopper(kernels: &LayerKernels) -> bool {
    hopper_or_skip(kernels, "the Hopper forward checks")
}

/// The error of a 64 x 64 x 64 bf16 forward forced onto `wg64x128`, with X viewed `x_offset`
/// elements into its allocation (1: not 16-byte aligned, so TMA cannot read it). Panics if the
/// call succeeds.
fn forced_hopper_error(kernels: &LayerKernels, x_offset: usize) -> fusedrop::Error {
    let x = kernels
        .stream()
        .alloc_zeros::<bf16>(x_offset + 64 * 64)
        .unwrap();
    let w = kernels.stream().alloc_zeros::<bf16>(64 * 64).unwrap();
    let mut y = kernels.stream().alloc_zeros::<bf16>(64 * 64).unwrap();
    let spec = LayerSpec::new(
        LinearShape::new(64, 64, 64),
        Nonlinearity::Relu,
        DropoutSpec::new(0.1, 1, 2),
    );
    kernels
        .forward(
            &spec,
            &x.slice(x_offset..),
            &w,
            None,
            &mut y,
            ForwardOptions {
                config: Some(ForwardConfig::Wg64x128),
                ..ForwardOptions::default()
            },
        )
        .unwrap_err()
}

/// Every Hopper config, f16 and bf16, on shapes it takes (k a multiple of 8) that are multiples
/// of no tile, many tiles per block and few, every rate, both activations, with and without
/// bias, non-finite inputs, a shard geometry, and b off 4-byte alignment with even and odd n.
#[test]
fn hopper_configs_match_reference() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    fn each<T: Element>(kernels: &LayerKernels) {
        for config in ForwardConfig::HOPPER {
            for (i, &(m, n, k)) in [
                (1, 1, 8),
                (70, 72, 64),
                (257, 129, 136),
                (1000, 1000, 1000),
                (3000, 2056, 512),
                (64, 1000, 1288),
            ]
            .iter()
            .enumerate()
            // A split-K config takes k >= 64 per block of its cluster (an error otherwise).
            .filter(|(_, &(_, _, k))| k >= config.min_k())
            {
                for (j, &p) in [0.0f32, 0.1, 0.5, 1.0].iter().enumerate() {
                    check::<T>(
                        kernels,
                        Case {
                            config: Some(config),
                            nonlinearity: if (i + j) % 2 == 0 {
                                Nonlinearity::Relu
                            } else {
                                Nonlinearity::Identity
                            },
                            p,
                            bias: j % 2 == 0,
                            nonfinite: i == 1,
                            ..Case::new(m, n, k)
                        },
                    );
                }
            }
            check::<T>(
                kernels,
                Case {
                    config: Some(config),
                    geometry: Geometry {
                        row_offset: 1 << 33,
                        col_offset: 17,
                        n_global: Some(4099),
                    },
                    ..Case::new(300, 301, 200)
                },
            );
            for n in [136, 131] {
                check::<T>(
                    kernels,
                    Case {
                        config: Some(config),
                        bias_misaligned: true,
                        p: 0.5,
                        ..Case::new(300, n, 256)
                    },
                );
            }
        }
    }
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}

/// The heuristic takes the Hopper kernel for aligned operands and a shape with a full wave of
/// tiles, and the mma.sync kernel for a view TMA cannot read; forcing a Hopper config on such a
/// view is an error, not a launch.
#[test]
fn hopper_is_chosen_only_where_tma_can_read_the_operands() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    let shape = LinearShape::new(2048, 2048, 256);
    let config = kernels.forward_config_for::<bf16>(shape);
    assert!(config.is_hopper(), "{config:?}");
    let case = Case::new(2048, 2048, 256);
    check::<bf16>(&kernels, case);
    check::<bf16>(
        &kernels,
        Case {
            misaligned: true,
            ..case
        },
    );
    let odd_k = Case::new(2048, 2048, 250);
    check::<f16>(&kernels, odd_k);
    let err = forced_hopper_error(&kernels, 1);
    assert!(err.to_string().contains("16-byte aligned"), "{err}");
}

/// A handle made with `LoadOptions { hopper: false }` takes the portable kernels on every GPU:
/// on a Hopper GPU the heuristic picks the mma.sync config it picks elsewhere, the results match
/// the reference and, bit for bit, that config forced on a default handle, and a Hopper config
/// asked for by name is refused with the reason.
#[test]
fn without_the_hopper_modules_every_call_takes_the_portable_kernels() {
    let Some(default) = gpu() else { return };
    let stream = default.stream().clone();
    let portable = LayerKernels::with_options(stream, LoadOptions { hopper: false }).unwrap();
    assert!(!portable.hopper_available::<bf16>());
    assert!(!portable.hopper_available::<f16>());
    if !runs::<bf16>(&portable) {
        return;
    }
    let case = Case::new(2048, 2048, 256);
    let config = portable.forward_config_for::<bf16>(case.shape);
    assert!(!config.is_hopper(), "{config:?}");
    check::<bf16>(&portable, case);
    let mut rng = StdRng::seed_from_u64(31);
    let host = inputs::<bf16>(&case, &mut rng);
    let spec = spec_of(&case, 5, 6);
    let chosen = run_gpu(&portable, &case, &spec, &host, SeedSource::Host);
    let forced = Case {
        config: Some(config),
        ..case
    };
    let on_default = run_gpu(&default, &forced, &spec, &host, SeedSource::Host);
    assert_same_bits(
        "portable handle vs its config forced on a default handle",
        case.shape.m,
        case.shape.n,
        &chosen,
        &on_default,
    );

    let err = forced_hopper_error(&portable, 0);
    assert!(
        matches!(err, fusedrop::Error::UnsupportedDevice(_)),
        "{err:?}"
    );
    if portable.compute_capability() == (9, 0) {
        assert!(err.to_string().contains("hopper: false"), "{err}");
    }
}

/// An inference batch on Hopper takes split-K (clusters summing partial products in distributed
/// shared memory), matches the reference, and gives the same bits on every run: the partial
/// sums are added in a fixed order.
#[test]
fn hopper_split_k_is_chosen_for_few_tiles_and_deterministic() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    fn each<T: Element>(kernels: &LayerKernels) {
        let case = Case {
            p: 0.1,
            ..Case::new(64, 4096, 4096)
        };
        let config = kernels.forward_config_for::<T>(case.shape);
        assert!(config.splits() > 1, "{}: {config:?}", T::NAME);
        check::<T>(kernels, case);
        let mut rng = StdRng::seed_from_u64(5);
        let host = inputs::<T>(&case, &mut rng);
        let spec = spec_of(&case, 99, 3);
        let first = run_gpu(kernels, &case, &spec, &host, SeedSource::Host);
        let LinearShape { m, n, .. } = case.shape;
        for _ in 0..3 {
            let again = run_gpu(kernels, &case, &spec, &host, SeedSource::Host);
            assert_same_bits(&format!("{}: runs differ", T::NAME), m, n, &again, &first);
        }
    }
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}

/// Every Hopper tuning variant but stream-K (kernels/forward_sm90_sweep.cu: stages, TMA-store
/// epilogue, W multicast over clusters of 2, ping-pong consumers, tile order, unpaired draws;
/// stream-K has a test of its own, below) bit for bit against the production config
/// of its column tile (wg128x256 or wg128x128: the same wgmma N) on the
/// same inputs, which `hopper_configs_match_reference` checks against the reference: odd row
/// tile counts (the multicast clusters' second block past m), partial column tiles, several tiles
/// per block, non-finite inputs, b off 4-byte alignment, every rate. A TMA-store variant refuses a Y whose rows TMA
/// cannot write (n not a multiple of 8).
#[test]
fn hopper_sweep_variants_match_production_bit_for_bit() {
    use fusedrop::cuda::launch_table::FORWARD_SM90_SWEEP;
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    fn each<T: Element>(kernels: &LayerKernels) {
        let stream = kernels.stream();
        for (i, &(m, n, k)) in [(257, 136, 136), (1000, 1000, 1000), (3000, 2056, 512)]
            .iter()
            .enumerate()
        {
            // The small shape also passes b one element off 4-byte alignment (the epilogues
            // then read the biases one by one).
            let case = Case {
                nonfinite: i == 0,
                bias_misaligned: i == 0,
                ..Case::new(m, n, k)
            };
            let host = inputs::<T>(&case, &mut StdRng::seed_from_u64(0x5EE9 + i as u64));
            let x = stream.clone_htod(&host.x).unwrap();
            let w = stream.clone_htod(&host.w).unwrap();
            let b_offset = usize::from(case.bias_misaligned);
            let mut padded_b = vec![T::from_f64(0.5); b_offset];
            padded_b.extend_from_slice(host.b.as_ref().unwrap());
            let b = stream.clone_htod(&padded_b).unwrap();
            let b_view = b.slice(b_offset..);
            for (j, &p) in [0.0f32, 0.1, 0.5, 1.0].iter().enumerate() {
                let spec = spec_of(&Case { p, ..case }, 0xD00D + j as u64, j as u64);
                // Where the comparison starts from: every element written, of the reference's
                // class (NaN, infinity, finite) on the small shape that plants non-finite
                // inputs, and no NaN (the poison) on the others, whose inputs are finite. Two
                // kernels that left the same elements unwritten would otherwise agree.
                let want = (i == 0).then(|| {
                    reference::forward_f64(&spec, &host.x, &host.w, host.b.as_deref()).unwrap()
                });
                let written = |what: &str, y: &[T]| {
                    let got = reference::to_f64(y);
                    let wrong = |e: usize| match &want {
                        Some(want) => !reference::same_class(got[e], want[e]),
                        None => got[e].is_nan(),
                    };
                    assert!(
                        !(0..m * n).any(wrong),
                        "{what} {} {m}x{n}x{k} p = {p}: unwritten or of the wrong class: {}",
                        T::NAME,
                        reference::describe_differences(
                            m,
                            n,
                            &got,
                            want.as_deref().unwrap_or(&got),
                            wrong
                        )
                    );
                };
                for variant in FORWARD_SM90_SWEEP.iter().filter(|v| !v.stream_k) {
                    let config = ForwardConfig::HOPPER
                        .into_iter()
                        .find(|c| {
                            c.splits() == 1
                                && c.block_m() == 128
                                && c.block_n() == variant.block_n as usize
                        })
                        .expect("a production config with the variant's column tile");
                    let production = run_gpu(
                        kernels,
                        &Case {
                            config: Some(config),
                            p,
                            ..case
                        },
                        &spec,
                        &host,
                        SeedSource::Host,
                    );
                    written(config.name(), &production);
                    let poison = vec![T::from_f64(f64::NAN); m * n];
                    let mut y = stream.clone_htod(&poison).unwrap();
                    kernels
                        .forward_sweep_variant(&spec, variant, &x, &w, Some(&b_view), &mut y, None)
                        .unwrap_or_else(|e| panic!("{} {}: {e}", variant.name, T::NAME));
                    let what = format!(
                        "{} {} {m}x{n}x{k} p = {p}: differs from {}",
                        variant.name,
                        T::NAME,
                        config.name()
                    );
                    assert_same_bits(&what, m, n, &stream.clone_dtoh(&y).unwrap(), &production);
                }
            }
        }
        // n = 1001: Y's rows are not 16-byte multiples, so no TMA store.
        let shape = LinearShape::new(64, 1001, 64);
        let spec = LayerSpec::new(shape, Nonlinearity::Relu, DropoutSpec::new(0.1, 1, 0));
        let x = stream.clone_htod(&vec![T::from_f64(0.5); 64 * 64]).unwrap();
        let w = stream
            .clone_htod(&vec![T::from_f64(0.5); 1001 * 64])
            .unwrap();
        let mut y = stream.alloc_zeros::<T>(64 * 1001).unwrap();
        for variant in FORWARD_SM90_SWEEP
            .iter()
            .filter(|v| v.name.contains("tmastore"))
        {
            let err = kernels
                .forward_sweep_variant(&spec, variant, &x, &w, None, &mut y, None)
                .unwrap_err();
            assert!(err.to_string().contains("stores Y by TMA"), "{err}");
        }
    }
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}

/// The stream-K sweep variants (kernels/gemm/sm90/stream_k.cuh) on shapes of one column of tiles
/// (n = the variant's tile width) whose tiles do not fill whole waves of the GPU (1.06 waves on
/// 132 multiprocessors: every tile shared out; 2.27 waves: a wave of whole tiles first;
/// k = 1000, 16 k-blocks, the last partial), against the reference, bit for bit from run to run,
/// with the workspace's flags zero after each launch; the whole tiles (the first wave's row
/// tiles) bit for bit against the production config of the same tile (`wg128x256`,
/// `wg128x128`); without a workspace, or with one too short, it is refused.
#[test]
fn hopper_stream_k_matches_reference_and_repeats_bit_for_bit() {
    use fusedrop::cuda::forward::sweep_workspace_bytes;
    use fusedrop::cuda::launch_table::{LaunchNumbers, FORWARD_SM90_SWEEP};
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    fn each<T: Element>(kernels: &LayerKernels) {
        let sms = kernels.sm_count();
        for variant in FORWARD_SM90_SWEEP.iter().filter(|v| v.stream_k) {
            let config = match variant.block_n {
                256 => ForwardConfig::Wg128x256,
                128 => ForwardConfig::Wg128x128,
                other => panic!("{}: no production config of width {other}", variant.name),
            };
            each_shape::<T>(kernels, variant, config, sms);
        }
    }
    fn each_shape<T: Element>(
        kernels: &LayerKernels,
        variant: &LaunchNumbers,
        config: ForwardConfig,
        sms: usize,
    ) {
        let stream = kernels.stream();
        let width = variant.block_n as usize;
        for (i, row_tiles) in [sms + 8, 2 * sms + 36].into_iter().enumerate() {
            for p in [0.0f32, 0.1] {
                let case = Case {
                    p,
                    nonfinite: i == 0,
                    ..Case::new(128 * row_tiles, width, 1000)
                };
                let host = inputs::<T>(&case, &mut StdRng::seed_from_u64(0x5C + i as u64));
                let spec = spec_of(&case, 0x5EED + i as u64, 3);
                let x = stream.clone_htod(&host.x).unwrap();
                let w = stream.clone_htod(&host.w).unwrap();
                let b = stream.clone_htod(host.b.as_ref().unwrap()).unwrap();
                let bytes = sweep_workspace_bytes(variant, case.shape, kernels.resident_clusters())
                    .unwrap();
                let mut workspace = stream.alloc_zeros::<u8>(bytes).unwrap();
                let (m, n) = (case.shape.m, case.shape.n);
                let mut outputs = Vec::new();
                for _ in 0..2 {
                    let mut y = stream
                        .clone_htod(&vec![T::from_f64(f64::NAN); m * n])
                        .unwrap();
                    kernels
                        .forward_sweep_variant(
                            &spec,
                            variant,
                            &x,
                            &w,
                            Some(&b.as_view()),
                            &mut y,
                            Some(workspace.as_view_mut()),
                        )
                        .unwrap_or_else(|e| panic!("{} {}: {e}", variant.name, T::NAME));
                    // The flags: two u32 per block of the largest grid, first.
                    let flag_bytes = 8 * fusedrop::cuda::launch_table::STREAM_K_MAX_BLOCKS as usize;
                    let bytes_back: Vec<u8> = stream.clone_dtoh(&workspace).unwrap();
                    assert!(
                        bytes_back[..flag_bytes].iter().all(|&f| f == 0),
                        "{} {}: flags left set",
                        variant.name,
                        T::NAME
                    );
                    outputs.push(stream.clone_dtoh(&y).unwrap());
                }
                let what = format!("{} {} {m}x{n}x1000 p = {p}", variant.name, T::NAME);
                check_against_reference(&what, &case, &spec, &host, &outputs[0]);
                assert_same_bits(
                    &format!("{what}: runs differ"),
                    m,
                    n,
                    &outputs[1],
                    &outputs[0],
                );
                // With 2.27 waves the first wave's tiles are whole: with one column of tiles the
                // grouped order is the row order, so they are the first `sms` row tiles, and
                // each is the production kernel's tile.
                if i == 1 {
                    let production = run_gpu(
                        kernels,
                        &Case {
                            config: Some(config),
                            ..case
                        },
                        &spec,
                        &host,
                        SeedSource::Host,
                    );
                    let rows = 128 * sms;
                    assert_same_bits(
                        &format!("{what}: whole tiles differ from {config:?}"),
                        rows,
                        n,
                        &outputs[0][..rows * n],
                        &production[..rows * n],
                    );
                }
                let mut y = stream.alloc_zeros::<T>(m * n).unwrap();
                let err = kernels
                    .forward_sweep_variant(&spec, variant, &x, &w, None, &mut y, None)
                    .unwrap_err();
                assert!(err.to_string().contains("needs a workspace"), "{err}");
                let err = kernels
                    .forward_sweep_variant(
                        &spec,
                        variant,
                        &x,
                        &w,
                        None,
                        &mut y,
                        Some(workspace.slice_mut(..bytes - 1)),
                    )
                    .unwrap_err();
                assert!(err.to_string().contains("needs a workspace of"), "{err}");
            }
        }
    }
    each::<f16>(&kernels);
    each::<bf16>(&kernels);
}
