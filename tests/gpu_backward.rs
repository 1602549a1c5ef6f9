//! GPU tests of the backward kernels (kernels/backward_simt.cu, kernels/backward_tc.cu and, on
//! Hopper, kernels/backward_sm90.cu, through `fusedrop::cuda::backward`) against the f64 CPU
//! reference backward. Skipped, with a message,
//! where no GPU is usable.

use cudarc::driver::CudaSlice;
use fusedrop::cuda::backward::{self, BackwardKernel, BackwardOptions, GradientsMut};
use fusedrop::cuda::{self, forward::ForwardOptions, LayerKernels, LoadOptions, SeedSource};
use fusedrop::reference::{self, relative_l2_error, relative_l2_error_nonfinite, Gradients};
use fusedrop::{DropoutSpec, Element, Geometry, LayerSpec, LinearShape, Nonlinearity};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[path = "common/elementwise.rs"]
mod elementwise;
#[path = "common/same_bits.rs"]
mod same_bits;
use elementwise::check_elementwise;
use same_bits::assert_same_bits;

#[path = "common/gpu_open.rs"]
mod gpu_open;
use gpu_open::{hopper_or_skip, open_or_skip, skip};

fn gpu() -> Option<LayerKernels> {
    open_or_skip("the GPU backward test", || {
        cuda::open_device(0).and_then(|ctx| LayerKernels::new(ctx.default_stream()))
    })
}

/// What one backward call asks for.
#[derive(Debug, Clone, Copy)]
struct Case {
    accumulate: bool,
    dx: bool,
    dw: bool,
    db: bool,
    /// Pass (seed, subsequence) through a device buffer, with wrong values in the spec.
    device_seed: bool,
    kernel: BackwardKernel,
    /// Plant NaN, +inf and -inf in dY and (through X) in the saved Y.
    nonfinite: bool,
    /// Pass a workspace of `workspace_bytes` (poisoned), so the identity backward with dropout
    /// masks dY once into it.
    workspace: bool,
    /// Pass a workspace of `backward_workspace_bytes` instead (poisoned), so narrow mma.sync and
    /// SIMT products also split their reduction (and `BackwardKernel::HopperDzFromDx` has its
    /// area for dZ).
    split_workspace: bool,
}

const ALL_OUTPUTS: Case = Case {
    accumulate: false,
    dx: true,
    dw: true,
    db: true,
    device_seed: false,
    kernel: BackwardKernel::Auto,
    nonfinite: false,
    workspace: false,
    split_workspace: false,
};

/// Values in ±[0.25, 2): never zero, both signs.
fn random_values<T: Element>(len: usize, rng: &mut StdRng) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f64(rng.random_range(0.25..2.0) * if rng.random() { 1.0 } else { -1.0 }))
        .collect()
}

/// [`assert_same_bits`] for dX (`m x k`), dW (`n x k`) and db (`1 x n`) of one shape.
fn assert_same_gradients<T: Element>(
    what: &str,
    shape: LinearShape,
    got: &Gradients<T>,
    want: &Gradients<T>,
) {
    let LinearShape { m, n, k } = shape;
    assert_same_bits(&format!("{what}: dX"), m, k, &got.dx, &want.dx);
    assert_same_bits(&format!("{what}: dW"), n, k, &got.dw, &want.dw);
    assert_same_bits(&format!("{what}: db"), 1, n, &got.db, &want.db);
}

/// The inputs of one backward call, on the host.
struct Inputs<T> {
    x: Vec<T>,
    w: Vec<T>,
    dy: Vec<T>,
    /// The forward output (ReLU only), computed by the CPU reference forward so that its zeros
    /// are the real dropped and inactive elements.
    y: Option<Vec<T>>,
}

fn inputs<T: Element>(spec: &LayerSpec, nonfinite: bool, rng: &mut StdRng) -> Inputs<T> {
    let LinearShape { m, n, k } = spec.shape;
    let mut x = random_values::<T>(m * k, rng);
    let w = random_values::<T>(n * k, rng);
    let b = random_values::<T>(n, rng);
    let mut dy = random_values::<T>(m * n, rng);
    if nonfinite {
        // NaN, +inf, -inf, NaN, ..: two elements of X spoil two rows of Y (so ReLU redraws the
        // mask there), and a dozen single elements of dY.
        let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        for (i, &at) in [k / 2, (m / 2) * k].iter().enumerate() {
            if let Some(e) = x.get_mut(at) {
                *e = T::from_f64(values[i % 3]);
            }
        }
        for i in 0..12 {
            let at = ((5 * i + 1) % m.max(1)) * n + (7 * i + 2) % n.max(1);
            if let Some(e) = dy.get_mut(at) {
                *e = T::from_f64(values[i % 3]);
            }
        }
    }
    let y = (spec.nonlinearity == Nonlinearity::Relu)
        .then(|| reference::forward(spec, &x, &w, Some(&b)).expect("valid reference forward"));
    Inputs { x, w, dy, y }
}

/// dX alone requested (dW and db skipped).
fn dx_only<T>(dx: &mut CudaSlice<T>) -> GradientsMut<'_, T> {
    GradientsMut {
        dx: Some(dx.as_view_mut()),
        dw: None,
        db: None,
    }
}

/// Gradient buffers of `shape` filled with NaN, so that an element no kernel writes shows.
fn poisoned_gradients<T: Element>(shape: LinearShape) -> Gradients<T> {
    let LinearShape { m, n, k } = shape;
    let nan = T::from_f64(f64::NAN);
    Gradients {
        dx: vec![nan; m * k],
        dw: vec![nan; n * k],
        db: vec![nan; n],
    }
}

/// Runs the GPU backward with the gradient buffers starting as `initial` (dx, dw, db) and
/// returns all three buffers afterwards, requested or not.
fn run_gpu<T: Element>(
    kernels: &LayerKernels,
    spec: &LayerSpec,
    inputs: &Inputs<T>,
    initial: &Gradients<T>,
    case: Case,
) -> Gradients<T> {
    let x = kernels.stream().clone_htod(&inputs.x).unwrap();
    let w = kernels.stream().clone_htod(&inputs.w).unwrap();
    let dy = kernels.stream().clone_htod(&inputs.dy).unwrap();
    let y = inputs
        .y
        .as_ref()
        .map(|y| kernels.stream().clone_htod(y).unwrap());
    let mut dx = kernels.stream().clone_htod(&initial.dx).unwrap();
    let mut dw = kernels.stream().clone_htod(&initial.dw).unwrap();
    let mut db = kernels.stream().clone_htod(&initial.db).unwrap();
    let seed_buffer = kernels
        .stream()
        .clone_htod(&[spec.dropout.seed, spec.dropout.subsequence])
        .unwrap();
    let seed_view = seed_buffer.as_view();
    let (launch_spec, seed) = if case.device_seed {
        let mut wrong = *spec;
        wrong.dropout.seed ^= 0x5eed_0000_dead_beef;
        wrong.dropout.subsequence = wrong.dropout.subsequence.wrapping_add(77);
        (wrong, SeedSource::Device(&seed_view))
    } else {
        (*spec, SeedSource::Host)
    };
    let grads = GradientsMut {
        dx: case.dx.then(|| dx.as_view_mut()),
        dw: case.dw.then(|| dw.as_view_mut()),
        db: case.db.then(|| db.as_view_mut()),
    };
    // Poisoned with NaN bytes, so that a product reading workspace the pre-pass did not write
    // shows.
    let mut workspace = (case.workspace || case.split_workspace).then(|| {
        let bytes = if case.split_workspace {
            kernels
                .backward_workspace_bytes::<T>(spec, case.kernel)
                .unwrap()
        } else {
            backward::workspace_bytes::<T>(spec)
        };
        kernels
            .stream()
            .clone_htod(&vec![0xFFu8; bytes.max(1)])
            .unwrap()
    });
    let options = BackwardOptions {
        accumulate: case.accumulate,
        kernel: case.kernel,
        seed,
        workspace: workspace.as_mut().map(|w| w.as_view_mut()),
    };
    let y_view = y.as_ref().map(|y| y.as_view());
    kernels
        .backward(&launch_spec, &x, &w, &dy, y_view.as_ref(), grads, options)
        .unwrap_or_else(|e| panic!("backward {spec:?} {case:?}: {e}"));
    Gradients {
        dx: kernels.stream().clone_dtoh(&dx).unwrap(),
        dw: kernels.stream().clone_dtoh(&dw).unwrap(),
        db: kernels.stream().clone_dtoh(&db).unwrap(),
    }
}

/// Panics unless every requested gradient was written: with finite inputs no NaN may remain of
/// the poison the buffers started with.
fn assert_requested_written<T: Element>(what: &str, got: &Gradients<T>, case: Case) {
    for (name, requested, values) in [
        ("dX", case.dx, &got.dx),
        ("dW", case.dw, &got.dw),
        ("db", case.db, &got.db),
    ] {
        let unwritten = values.iter().filter(|v| v.to_f64().is_nan()).count();
        assert!(
            !requested || unwritten == 0,
            "{what}: {unwritten} elements of {name} still hold the NaN poison"
        );
    }
}

/// One backward call checked against the reference: requested outputs within
/// `T::REL_L2_TOLERANCE` (of `initial + new` when accumulating), skipped outputs untouched, and
/// a second identical call bit-identical to the first.
fn check<T: Element>(kernels: &LayerKernels, spec: &LayerSpec, case: Case) {
    let LinearShape { m, n, k } = spec.shape;
    let mut rng = StdRng::seed_from_u64(
        spec.dropout.seed ^ ((m * 1_000_003 + n * 1009 + k) as u64) ^ u64::from(case.accumulate),
    );
    let inputs = inputs::<T>(spec, case.nonfinite, &mut rng);
    let want = reference::backward_f64(spec, &inputs.x, &inputs.w, &inputs.dy, inputs.y.as_deref())
        .expect("valid reference backward");
    // The same reductions over absolute values: each element's sum of |terms|, for the
    // element-wise bound.
    let abs = |v: &[T]| -> Vec<T> { v.iter().map(|e| T::from_f64(e.to_f64().abs())).collect() };
    let abs_sums = reference::backward_f64(
        spec,
        &abs(&inputs.x),
        &abs(&inputs.w),
        &abs(&inputs.dy),
        inputs.y.as_deref(),
    )
    .expect("valid reference backward");
    // Outputs start poisoned, so an element the kernel fails to write shows up as NaN; when
    // accumulating they start as random existing gradients instead.
    let initial = if case.accumulate {
        Gradients {
            dx: random_values::<T>(m * k, &mut rng),
            dw: random_values::<T>(n * k, &mut rng),
            db: random_values::<T>(n, &mut rng),
        }
    } else {
        let nan = T::from_f64(f64::NAN);
        Gradients {
            dx: vec![nan; m * k],
            dw: vec![nan; n * k],
            db: vec![nan; n],
        }
    };
    let got = run_gpu(kernels, spec, &inputs, &initial, case);
    let what = format!("{} backward {spec:?} {case:?}", T::NAME);
    let outputs = [
        (
            "dX",
            case.dx,
            &got.dx,
            &initial.dx,
            &want.dx,
            &abs_sums.dx,
            n,
            (m, k),
        ),
        (
            "dW",
            case.dw,
            &got.dw,
            &initial.dw,
            &want.dw,
            &abs_sums.dw,
            m,
            (n, k),
        ),
        (
            "db",
            case.db,
            &got.db,
            &initial.db,
            &want.db,
            &abs_sums.db,
            m,
            (1, n),
        ),
    ];
    for (name, requested, got, initial, new, abs_sum, terms, (rows, cols)) in outputs {
        if !requested {
            let skipped = format!("{what}: skipped {name} was written");
            assert_same_bits(&skipped, rows, cols, got, initial);
            continue;
        }
        let want: Vec<f64> = if case.accumulate {
            initial
                .iter()
                .zip(new)
                .map(|(a, b)| a.to_f64() + b)
                .collect()
        } else {
            new.clone()
        };
        let bound: Vec<f64> = if case.accumulate {
            initial
                .iter()
                .zip(abs_sum)
                .map(|(a, b)| a.to_f64().abs() + b)
                .collect()
        } else {
            abs_sum.clone()
        };
        check_elementwise(&format!("{what}: {name}"), cols, got, &want, &bound, terms);
        let got: Vec<f64> = got.iter().map(|v| v.to_f64()).collect();
        // Unwritten outputs (NaN poison) and lost or invented NaN / infinities give +inf.
        let error = relative_l2_error_nonfinite(&got, &want);
        assert!(
            error < T::REL_L2_TOLERANCE,
            "{what}: {name} relative L2 error {error:e} >= {:e}; outputs unwritten or of the \
             wrong class: {}",
            T::REL_L2_TOLERANCE,
            reference::describe_differences(rows, cols, &got, &want, |i| {
                !reference::same_class(got[i], want[i])
            })
        );
    }
    let again = run_gpu(kernels, spec, &inputs, &initial, case);
    assert_same_gradients(&format!("{what}: repeat call"), spec.shape, &again, &got);
}

/// `check` for every element type the case's kernel family runs (f32 only on the SIMT kernels,
/// which `Auto` takes for it).
fn check_all_types(kernels: &LayerKernels, spec: &LayerSpec, case: Case) {
    if matches!(case.kernel, BackwardKernel::Auto | BackwardKernel::Simt) {
        check::<f32>(kernels, spec, case);
    }
    check::<f16>(kernels, spec, case);
    check::<bf16>(kernels, spec, case);
}

const P_VALUES: [f32; 4] = [0.0, 0.1, 0.5, 1.0];

#[test]
fn matches_reference_for_every_dtype_activation_p_and_accumulation() {
    let Some(kernels) = gpu() else { return };
    // Multiples of no tile; a reduction shorter than one tile step; a single element.
    let shapes = [(67, 45, 33), (130, 70, 129), (5, 200, 3), (1, 1, 1)];
    for (index, &(m, n, k)) in shapes.iter().enumerate() {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            for p in P_VALUES {
                for accumulate in [false, true] {
                    let dropout =
                        DropoutSpec::new(p, 0x1234_5678_9abc + index as u64, 3 + index as u64);
                    let spec = LayerSpec::new(LinearShape::new(m, n, k), nonlinearity, dropout);
                    let case = Case {
                        accumulate,
                        ..ALL_OUTPUTS
                    };
                    check_all_types(&kernels, &spec, case);
                }
            }
        }
    }
}

/// Products of one term per element, on every kernel family: with m = 1 each element of dW and
/// db is one element of dZ times one of X, and with n = 1 (8 for the Hopper kernels, whose rows
/// must be 16-byte units) each element of dX one (or 8) of dZ times W, so the element-wise bound
/// sees every mask decision on its own (at p = 0.1), where a relative L2 error over many terms
/// could hide one wrong element.
#[test]
fn every_mask_decision_shows_in_single_term_products() {
    let Some(kernels) = gpu() else { return };
    let mut families = vec![(BackwardKernel::Simt, 1)];
    if kernels.compute_capability() >= (8, 0) {
        families.push((BackwardKernel::TensorCore, 1));
    }
    if hopper(&kernels) {
        families.push((BackwardKernel::Hopper, 8));
    }
    for (kernel, narrow_n) in families {
        for (m, n, k) in [(1, 200, 136), (200, narrow_n, 136)] {
            for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
                let spec = LayerSpec::new(
                    LinearShape::new(m, n, k),
                    nonlinearity,
                    DropoutSpec::new(0.1, 0x0e1e + m as u64, n as u64),
                );
                let case = Case {
                    kernel,
                    ..ALL_OUTPUTS
                };
                check_all_types(&kernels, &spec, case);
            }
        }
    }
}

/// NaN and infinities in dY and the saved Y, both kernels, every rate, both activations
/// (docs/mask-contract.md, "Backward without a mask").
#[test]
fn nan_and_infinities_follow_the_contract() {
    let Some(kernels) = gpu() else { return };
    for kernel in [BackwardKernel::Auto, BackwardKernel::Simt] {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            for p in P_VALUES {
                let dropout = DropoutSpec::new(p, 0xbad_f00d, 11);
                let spec = LayerSpec::new(LinearShape::new(130, 72, 64), nonlinearity, dropout);
                let case = Case {
                    kernel,
                    nonfinite: true,
                    ..ALL_OUTPUTS
                };
                check_all_types(&kernels, &spec, case);
            }
        }
    }
}

/// The SIMT kernels (every dtype; f32's only backward) with every tile: an odd shape (64 x 32
/// for both products), then two sized by the multiprocessor count S: the first's dX has 2 (S + 1)
/// tiles of 128 x 128, the second's 2 (S + 2) of 64 x 64 and fewer than S of 128 x 128 (their dW,
/// 40 x 200 and 40 x 70, take 64 x 32).
#[test]
fn simt_kernels_match_reference_with_every_tile() {
    let Some(kernels) = gpu() else { return };
    let case = Case {
        kernel: BackwardKernel::Simt,
        ..ALL_OUTPUTS
    };
    let sms = kernels.sm_count();
    let shapes = [
        (97, 83, 71),
        (128 * sms + 5, 40, 200),
        (64 * sms + 67, 40, 70),
    ];
    let mut tiles_run = Vec::new();
    for (m, n, k) in shapes {
        let shape = LinearShape::new(m, n, k);
        let choice = kernels
            .backward_kernels_for::<f32>(shape, Nonlinearity::Relu, BackwardKernel::Simt)
            .unwrap();
        tiles_run.extend([choice.dx, choice.dw]);
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let spec = LayerSpec::new(shape, nonlinearity, DropoutSpec::new(0.1, 99, 1));
            check_all_types(&kernels, &spec, case);
        }
    }
    for tile in ["simt128x128", "simt64x64", "simt64x32"] {
        assert!(
            tiles_run.contains(&tile),
            "no product took {tile}: {tiles_run:?}"
        );
    }
}

#[test]
fn tensor_core_kernels_match_reference_with_every_tile() {
    let Some(kernels) = gpu() else { return };
    let case = Case {
        kernel: BackwardKernel::TensorCore,
        ..ALL_OUTPUTS
    };
    // Odd shapes whose long product (dX of the first, dW of the second) takes 128 x 128 on most
    // GPUs; then two shapes sized by the multiprocessor count S, so that every tile runs on any
    // GPU: the third's dX has 2 (S + 1) tiles of 128 x 128 and its dW (40 x 200) fewer than S of
    // 64 x 64, so 64 x 32; the fourth's products have S + 1 tiles of 64 x 64 and fewer than S of
    // 128 x 128.
    let sms = kernels.sm_count();
    let shapes = [
        (1300, 40, 1601),
        (40, 1300, 1601),
        (128 * sms + 5, 40, 200),
        (64, 40, 64 * sms + 7),
    ];
    let mut tiles_run = Vec::new();
    for (m, n, k) in shapes {
        let shape = LinearShape::new(m, n, k);
        let choice = kernels
            .backward_kernels_for::<f16>(shape, Nonlinearity::Relu, BackwardKernel::TensorCore)
            .unwrap();
        tiles_run.extend([choice.dx, choice.dw]);
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            for accumulate in [false, true] {
                let spec = LayerSpec::new(shape, nonlinearity, DropoutSpec::new(0.1, 31, 4));
                let case = Case { accumulate, ..case };
                check::<f16>(&kernels, &spec, case);
                check::<bf16>(&kernels, &spec, case);
            }
        }
    }
    for tile in ["tc128x128", "tc64x64", "tc64x32"] {
        assert!(
            tiles_run.iter().any(|t| t.starts_with(tile)),
            "no product took {tile}: {tiles_run:?}"
        );
    }
}

/// Split-K on the mma.sync and SIMT kernels: a narrow dX (64 x 256 outputs over n = 4096) and a
/// narrow dW (64 x 256 over m = 4096), with the workspace `backward_workspace_bytes` asks for
/// (poisoned, so a partial sum never written shows), both activations (the identity's mask
/// pre-pass shares the workspace), overwriting and accumulating; then bit-identical twice.
#[test]
fn classic_split_k_for_narrow_products() {
    let Some(kernels) = gpu() else { return };
    for kernel in [BackwardKernel::TensorCore, BackwardKernel::Simt] {
        split_k_for_narrow_products(&kernels, kernel);
    }
}

fn split_k_for_narrow_products(kernels: &LayerKernels, kernel: BackwardKernel) {
    let case = Case {
        kernel,
        split_workspace: true,
        ..ALL_OUTPUTS
    };
    for (m, n, k, narrow) in [(64, 4096, 256, "dX"), (4096, 64, 256, "dW")] {
        let shape = LinearShape::new(m, n, k);
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let unsplit = kernels
                .backward_kernels_for::<f16>(shape, nonlinearity, kernel)
                .unwrap();
            assert_eq!((unsplit.dx_splits, unsplit.dw_splits), (1, 1), "{unsplit}");
            let choice = kernels
                .backward_kernels_with_workspace_for::<f16>(shape, nonlinearity, kernel)
                .unwrap();
            let splits = if narrow == "dX" {
                choice.dx_splits
            } else {
                choice.dw_splits
            };
            assert!(splits > 1, "{shape:?}: {choice} does not split {narrow}");
            let spec = LayerSpec::new(shape, nonlinearity, DropoutSpec::new(0.1, 23, 6));
            for accumulate in [false, true] {
                let case = Case { accumulate, ..case };
                if kernel == BackwardKernel::Simt {
                    check::<f32>(kernels, &spec, case);
                }
                check::<f16>(kernels, &spec, case);
                check::<bf16>(kernels, &spec, case);
            }
            let mut rng = StdRng::seed_from_u64(5);
            let inputs = inputs::<bf16>(&spec, false, &mut rng);
            let initial = poisoned_gradients::<bf16>(shape);
            let first = run_gpu(kernels, &spec, &inputs, &initial, case);
            let again = run_gpu(kernels, &spec, &inputs, &initial, case);
            assert_same_gradients(&format!("{shape:?}: repeat"), shape, &again, &first);
        }
    }
}

#[test]
fn tensor_core_and_simt_kernels_agree_on_aligned_rows() {
    let Some(kernels) = gpu() else { return };
    // Rows a multiple of 8 elements take the 16-byte cp.async path of the tensor-core kernels.
    for kernel in [BackwardKernel::TensorCore, BackwardKernel::Simt] {
        let case = Case {
            kernel,
            ..ALL_OUTPUTS
        };
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let spec = LayerSpec::new(
                LinearShape::new(136, 72, 200),
                nonlinearity,
                DropoutSpec::new(0.5, 8, 8),
            );
            check::<f16>(&kernels, &spec, case);
            check::<bf16>(&kernels, &spec, case);
        }
    }
}

#[test]
fn skipped_outputs_are_left_untouched() {
    let Some(kernels) = gpu() else { return };
    let spec = LayerSpec::new(
        LinearShape::new(70, 66, 65),
        Nonlinearity::Identity,
        DropoutSpec::new(0.5, 5, 9),
    );
    for (dx, dw, db) in [
        (false, true, true),
        (true, false, false),
        (false, false, true),
        (true, true, false),
        (false, true, false),
        (true, false, true),
    ] {
        for accumulate in [false, true] {
            let case = Case {
                accumulate,
                dx,
                dw,
                db,
                ..ALL_OUTPUTS
            };
            check_all_types(&kernels, &spec, case);
        }
    }
}

#[test]
fn shard_geometry_and_device_seed_select_the_forward_mask() {
    let Some(kernels) = gpu() else { return };
    let (m, n, k) = (37, 29, 41);
    // Offsets that put rows at unaligned Philox positions and mask indices above 2^32.
    let geometries = [
        Geometry {
            row_offset: 3,
            col_offset: 5,
            n_global: Some(n as u64 + 11),
        },
        Geometry {
            row_offset: (1 << 33) + 1,
            col_offset: 2,
            n_global: Some(n as u64 + 3),
        },
    ];
    for geometry in geometries {
        for nonlinearity in [Nonlinearity::Identity, Nonlinearity::Relu] {
            for device_seed in [false, true] {
                let spec = LayerSpec::new(
                    LinearShape::new(m, n, k),
                    nonlinearity,
                    DropoutSpec::new(0.5, 0xfeed_f00d, 12),
                )
                .with_geometry(geometry);
                let case = Case {
                    device_seed,
                    ..ALL_OUTPUTS
                };
                check_all_types(&kernels, &spec, case);
            }
        }
    }
}

#[test]
fn empty_dy_gives_zero_gradients() {
    let Some(kernels) = gpu() else { return };
    for (m, n, k) in [(0, 7, 5), (6, 0, 5)] {
        for accumulate in [false, true] {
            let spec = LayerSpec::new(
                LinearShape::new(m, n, k),
                Nonlinearity::Identity,
                DropoutSpec::new(0.1, 1, 2),
            );
            let case = Case {
                accumulate,
                ..ALL_OUTPUTS
            };
            check_all_types(&kernels, &spec, case);
        }
    }
    // With the Hopper kernels forced the empty products still run (the classic kernels' empty
    // reductions).
    if hopper(&kernels) {
        for (m, n, k) in [(0, 8, 8), (8, 0, 8)] {
            let spec = LayerSpec::new(
                LinearShape::new(m, n, k),
                Nonlinearity::Identity,
                DropoutSpec::new(0.1, 1, 2),
            );
            let case = Case {
                kernel: BackwardKernel::Hopper,
                ..ALL_OUTPUTS
            };
            check::<f16>(&kernels, &spec, case);
            check::<bf16>(&kernels, &spec, case);
        }
    }
}

#[test]
fn rejects_relu_without_saved_output_and_wrong_lengths() {
    let Some(kernels) = gpu() else { return };
    let (m, n, k) = (4, 3, 2);
    let x = kernels.stream().alloc_zeros::<f32>(m * k).unwrap();
    let w = kernels.stream().alloc_zeros::<f32>(n * k).unwrap();
    let dy = kernels.stream().alloc_zeros::<f32>(m * n).unwrap();
    let mut dx = kernels.stream().alloc_zeros::<f32>(m * k + 1).unwrap();
    let relu = LayerSpec::new(
        LinearShape::new(m, n, k),
        Nonlinearity::Relu,
        DropoutSpec::new(0.1, 1, 1),
    );
    let none = || GradientsMut {
        dx: None,
        dw: None,
        db: None,
    };
    let error = kernels
        .backward(&relu, &x, &w, &dy, None, none(), BackwardOptions::default())
        .unwrap_err();
    assert!(error.to_string().contains("y_saved"), "{error}");
    let identity = LayerSpec {
        nonlinearity: Nonlinearity::Identity,
        ..relu
    };
    // A gradient buffer of the wrong length, one at a time.
    let refused = |grads: GradientsMut<'_, f32>, needle: &str| {
        let error = kernels
            .backward(
                &identity,
                &x,
                &w,
                &dy,
                None,
                grads,
                BackwardOptions::default(),
            )
            .unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
    };
    refused(
        GradientsMut {
            dx: Some(dx.as_view_mut()),
            ..none()
        },
        "dX",
    );
    let mut dw = kernels.stream().alloc_zeros::<f32>(n * k - 1).unwrap();
    refused(
        GradientsMut {
            dw: Some(dw.as_view_mut()),
            ..none()
        },
        "dW has 5 elements",
    );
    let mut db = kernels.stream().alloc_zeros::<f32>(n + 1).unwrap();
    refused(
        GradientsMut {
            db: Some(db.as_view_mut()),
            ..none()
        },
        "db has 4 elements",
    );
    // A shard whose columns run past the logical output, one whose mask indices overflow, and a
    // shape whose element counts do; the gradient buffers stay as they were.
    let mut dx = kernels.stream().clone_htod(&vec![f32::NAN; m * k]).unwrap();
    let past_the_end = Geometry {
        row_offset: 0,
        col_offset: 1,
        n_global: Some(3),
    };
    let beyond_63_bits = Geometry {
        row_offset: u64::MAX / 4,
        col_offset: 0,
        n_global: None,
    };
    let huge = LayerSpec {
        shape: LinearShape::new(1 << 40, 1 << 40, k),
        ..identity
    };
    for (spec, needle) in [
        (
            identity.with_geometry(past_the_end),
            "col_offset 1 + n 3 exceeds n_global 3",
        ),
        (
            identity.with_geometry(beyond_63_bits),
            "overflows the 63-bit mask index",
        ),
        (huge, "overflows"),
    ] {
        let error = kernels
            .backward(
                &spec,
                &x,
                &w,
                &dy,
                None,
                dx_only(&mut dx),
                BackwardOptions::default(),
            )
            .unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
    }
    assert!(kernels
        .stream()
        .clone_dtoh(&dx)
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
    // The planning queries refuse what the backward refuses.
    let no_features = LinearShape::new(m, n, 0);
    let error = kernels
        .backward_kernels_for::<f32>(no_features, Nonlinearity::Relu, BackwardKernel::Auto)
        .unwrap_err();
    assert!(error.to_string().contains("expected k >= 1"), "{error}");
    let error = kernels
        .backward_workspace_bytes::<f32>(
            &LayerSpec {
                shape: no_features,
                ..identity
            },
            BackwardKernel::Auto,
        )
        .unwrap_err();
    assert!(error.to_string().contains("expected k >= 1"), "{error}");
    let error = kernels
        .backward_workspace_bytes::<f32>(
            &LayerSpec {
                dropout: DropoutSpec::new(1.5, 1, 1),
                ..identity
            },
            BackwardKernel::Auto,
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("expected 0 <= p <= 1"),
        "{error}"
    );
    // f32 operands with a kernel family that has no f32 kernel.
    for (kernel, name) in [
        (BackwardKernel::TensorCore, "TensorCore"),
        (BackwardKernel::Hopper, "Hopper"),
        (BackwardKernel::HopperWg128x256, "HopperWg128x256"),
    ] {
        let options = BackwardOptions {
            kernel,
            ..BackwardOptions::default()
        };
        let error = kernels
            .backward(&identity, &x, &w, &dy, None, none(), options)
            .unwrap_err();
        assert!(error.to_string().contains(name), "{error}");
    }
}

fn hopper(kernels: &LayerKernels) -> bool {
    hopper_or_skip(kernels, "the Hopper backward checks")
}

/// The shapes `hopper_kernels_match_reference` forces the Hopper kernels on.
const HOPPER_SHAPES: [(usize, usize, usize); 5] = [
    (1, 8, 8),
    (70, 72, 64),
    (257, 136, 200),
    (1000, 1000, 1000),
    (3000, 2056, 512),
];

/// The narrow products `hopper_split_k_for_narrow_products` runs through `Auto`: small's dX,
/// 64 x 4096 over n = 4096; a short-k layer's dW, 1024 x 256 over m = 8192.
const HOPPER_SPLIT_SHAPES: [(usize, usize, usize, &str); 2] =
    [(64, 4096, 4096, "dX"), (8192, 1024, 256, "dW")];

/// The Hopper kernels forced, f16 and bf16, on shapes they take (n and k multiples of 8) that
/// are multiples of no tile, with one tile per block and many, every rate, both activations,
/// accumulation, non-finite inputs, and the seed from a device buffer; each tile forced for
/// both products; and the variants issue 11 leaves to measurement (dZ from dX, transform warps,
/// one launch, the TMA store) bit for bit against `Hopper`.
#[test]
fn hopper_kernels_match_reference() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    for (i, &(m, n, k)) in HOPPER_SHAPES.iter().enumerate() {
        for (j, &p) in P_VALUES.iter().enumerate() {
            let nonlinearity = if (i + j) % 2 == 0 {
                Nonlinearity::Relu
            } else {
                Nonlinearity::Identity
            };
            let spec = LayerSpec::new(
                LinearShape::new(m, n, k),
                nonlinearity,
                DropoutSpec::new(p, 0x5eed + i as u64, j as u64),
            );
            let case = Case {
                kernel: BackwardKernel::Hopper,
                accumulate: j % 2 == 1,
                nonfinite: i == 1,
                device_seed: i == 2,
                ..ALL_OUTPUTS
            };
            check::<f16>(&kernels, &spec, case);
            check::<bf16>(&kernels, &spec, case);
        }
    }
    // Each Hopper tile forced for both products (unsplit), as `fusedrop bench` times them.
    for (i, kernel) in [
        BackwardKernel::HopperWg128x256,
        BackwardKernel::HopperWg128x128,
    ]
    .into_iter()
    .enumerate()
    {
        let shape = LinearShape::new(257, 136, 200);
        let spec = LayerSpec::new(
            shape,
            Nonlinearity::Relu,
            DropoutSpec::new(0.1, 0x7117, i as u64),
        );
        let choice = kernels
            .backward_kernels_for::<f16>(shape, Nonlinearity::Relu, kernel)
            .unwrap();
        let tile = ["wg128x256", "wg128x128"][i];
        assert!(
            choice.dx == tile
                && choice.dw == tile
                && choice.dx_splits == 1
                && choice.dw_splits == 1,
            "{kernel:?} runs {choice}"
        );
        let case = Case {
            kernel,
            ..ALL_OUTPUTS
        };
        check::<f16>(&kernels, &spec, case);
        check::<bf16>(&kernels, &spec, case);
    }
    // dZ written once by dX into the (poisoned) workspace and read by dW
    // (BackwardKernel::HopperDzFromDx), dW's dZᵀ formed by transform warps
    // (BackwardKernel::HopperTransformWarps, no workspace: with one the identity's pre-pass
    // would leave nothing to form), and both products in one launch
    // (BackwardKernel::HopperOneLaunch, which the shapes with reductions too short to split
    // take on any GPU), and the gradients stored by TMA (BackwardKernel::HopperTmaStore, which
    // those shapes take for both products): the reference's gradients, and bit for bit those of
    // `Hopper`, whose dW consumers form dZ in their stages and whose epilogue stores from the
    // registers.
    for &(m, n, k) in &HOPPER_SHAPES[..3] {
        let choice = kernels
            .backward_kernels_for::<f16>(
                LinearShape::new(m, n, k),
                Nonlinearity::Relu,
                BackwardKernel::HopperOneLaunch,
            )
            .unwrap();
        assert!(choice.one_launch, "({m}, {n}, {k}): {choice}");
        let choice = kernels
            .backward_kernels_for::<f16>(
                LinearShape::new(m, n, k),
                Nonlinearity::Relu,
                BackwardKernel::HopperTmaStore,
            )
            .unwrap();
        assert!(
            choice.dx.ends_with("_tmastore") && choice.dw.ends_with("_tmastore"),
            "({m}, {n}, {k}): {choice}"
        );
    }
    let mut rng = StdRng::seed_from_u64(0xd2);
    for (family, workspace) in [
        (BackwardKernel::HopperDzFromDx, true),
        (BackwardKernel::HopperTransformWarps, false),
        (BackwardKernel::HopperOneLaunch, false),
        (BackwardKernel::HopperTmaStore, false),
    ] {
        for (i, &(m, n, k)) in HOPPER_SHAPES.iter().enumerate() {
            for (j, (nonlinearity, p)) in [
                (Nonlinearity::Relu, 0.0),
                (Nonlinearity::Relu, 0.1),
                (Nonlinearity::Identity, 0.5),
                (Nonlinearity::Relu, 1.0),
            ]
            .into_iter()
            .enumerate()
            {
                let shape = LinearShape::new(m, n, k);
                let spec = LayerSpec::new(
                    shape,
                    nonlinearity,
                    DropoutSpec::new(p, 0xd2 + i as u64, j as u64),
                );
                let case = Case {
                    kernel: family,
                    split_workspace: workspace,
                    accumulate: j == 1,
                    nonfinite: i == 1,
                    device_seed: i == 2,
                    ..ALL_OUTPUTS
                };
                check::<f16>(&kernels, &spec, case);
                check::<bf16>(&kernels, &spec, case);
                let inputs = inputs::<bf16>(&spec, case.nonfinite, &mut rng);
                let initial = poisoned_gradients::<bf16>(shape);
                let variant = run_gpu(&kernels, &spec, &inputs, &initial, case);
                let in_stages = Case {
                    kernel: BackwardKernel::Hopper,
                    split_workspace: false,
                    ..case
                };
                let formed = run_gpu(&kernels, &spec, &inputs, &initial, in_stages);
                // NaN payloads are not part of the contract.
                let one_nan = |g: Gradients<bf16>| {
                    let canon = |v: Vec<bf16>| -> Vec<bf16> {
                        v.into_iter()
                            .map(|e| if e.is_nan() { bf16::NAN } else { e })
                            .collect()
                    };
                    Gradients {
                        dx: canon(g.dx),
                        dw: canon(g.dw),
                        db: canon(g.db),
                    }
                };
                assert_same_gradients(
                    &format!("{spec:?}: {family:?} against Hopper"),
                    shape,
                    &one_nan(variant),
                    &one_nan(formed),
                );
            }
        }
    }
}

/// `BackwardKernel::HopperTmaStore` on a shape whose dX takes 128 x 256 tiles, which stage each
/// warpgroup's 64 x 256 block in two passes (the shapes of `hopper_kernels_match_reference` take
/// 128 x 128): the reference's gradients, and bit for bit `Hopper`'s, overwriting (from NaN) and
/// accumulating (onto random gradients).
#[test]
fn hopper_tma_store_stages_128x256_tiles_in_two_passes() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    // dX: 16 x 16 tiles of 128 x 256 over n = 512; dW: 4 x 32 tiles of 128 x 128 over m = 2048.
    let shape = LinearShape::new(2048, 512, 4096);
    let choice = kernels
        .backward_kernels_for::<bf16>(shape, Nonlinearity::Relu, BackwardKernel::HopperTmaStore)
        .unwrap();
    assert_eq!(choice.dx, "wg128x256_tmastore", "{choice}");
    let mut rng = StdRng::seed_from_u64(0x7552);
    for (j, accumulate) in [false, true].into_iter().enumerate() {
        let spec = LayerSpec::new(
            shape,
            Nonlinearity::Relu,
            DropoutSpec::new(0.1, 0x7552, j as u64),
        );
        let case = Case {
            kernel: BackwardKernel::HopperTmaStore,
            accumulate,
            ..ALL_OUTPUTS
        };
        check::<bf16>(&kernels, &spec, case);
        let inputs = inputs::<bf16>(&spec, false, &mut rng);
        let initial = if accumulate {
            let LinearShape { m, n, k } = shape;
            Gradients {
                dx: random_values::<bf16>(m * k, &mut rng),
                dw: random_values::<bf16>(n * k, &mut rng),
                db: random_values::<bf16>(n, &mut rng),
            }
        } else {
            poisoned_gradients::<bf16>(shape)
        };
        let staged = run_gpu(&kernels, &spec, &inputs, &initial, case);
        let hopper = Case {
            kernel: BackwardKernel::Hopper,
            ..case
        };
        let direct = run_gpu(&kernels, &spec, &inputs, &initial, hopper);
        assert_same_gradients(
            &format!("{spec:?}, accumulate {accumulate}: HopperTmaStore against Hopper"),
            shape,
            &staged,
            &direct,
        );
    }
}

/// `BackwardKernel::HopperDzFromDx` takes its dZ path: after the call, the workspace (poisoned
/// with NaN bytes) holds dZ / scale of every element as the contract defines it (dY where ReLU
/// passed it, the redrawn mask where Y is NaN, 0 elsewhere; the identity's mask), so dW did not
/// quietly form dZ in its stages while dX wrote nothing.
#[test]
fn hopper_dz_from_dx_leaves_dz_in_the_workspace() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    let mut rng = StdRng::seed_from_u64(0xd2d2);
    for (i, (m, n, k, nonlinearity, p, nonfinite)) in [
        (257, 136, 200, Nonlinearity::Relu, 0.1, false),
        (70, 72, 64, Nonlinearity::Relu, 0.5, true),
        (3000, 2056, 512, Nonlinearity::Identity, 0.5, false),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = LinearShape::new(m, n, k);
        let spec = LayerSpec::new(shape, nonlinearity, DropoutSpec::new(p, 0xd3 + i as u64, 4));
        let inputs = inputs::<bf16>(&spec, nonfinite, &mut rng);
        let bytes = kernels
            .backward_workspace_bytes::<bf16>(&spec, BackwardKernel::HopperDzFromDx)
            .unwrap();
        assert_eq!(bytes, m * n * 2, "{spec:?}");
        let stream = kernels.stream();
        let x = stream.clone_htod(&inputs.x).unwrap();
        let w = stream.clone_htod(&inputs.w).unwrap();
        let dy = stream.clone_htod(&inputs.dy).unwrap();
        let y = inputs.y.as_ref().map(|y| stream.clone_htod(y).unwrap());
        let mut dx = stream.alloc_zeros::<bf16>(m * k).unwrap();
        let mut dw = stream.alloc_zeros::<bf16>(n * k).unwrap();
        let mut db = stream.alloc_zeros::<bf16>(n).unwrap();
        let mut workspace = stream.clone_htod(&vec![0xFFu8; bytes]).unwrap();
        let grads = GradientsMut {
            dx: Some(dx.as_view_mut()),
            dw: Some(dw.as_view_mut()),
            db: Some(db.as_view_mut()),
        };
        let options = BackwardOptions {
            kernel: BackwardKernel::HopperDzFromDx,
            workspace: Some(workspace.as_view_mut()),
            ..BackwardOptions::default()
        };
        let y_view = y.as_ref().map(|y| y.as_view());
        kernels
            .backward(&spec, &x, &w, &dy, y_view.as_ref(), grads, options)
            .unwrap();
        let written = stream.clone_dtoh(&workspace).unwrap();
        let d = spec.dropout;
        let differ = (0..m * n)
            .filter(|&i| {
                let got = bf16::from_bits(u16::from_le_bytes([written[2 * i], written[2 * i + 1]]));
                let g = inputs.dy[i].to_f64();
                let keep = || {
                    let index = spec.geometry.linear_index(n, i / n, i % n);
                    fusedrop::mask::keep(d.seed, d.subsequence, d.p, index)
                };
                let want = match &inputs.y {
                    Some(y) if y[i].to_f64() > 0.0 => g,
                    Some(y) if y[i].to_f64().is_nan() => reference::apply_keep(g, keep(), 1.0),
                    Some(_) => 0.0,
                    None => reference::apply_keep(g, keep(), 1.0),
                };
                let want = bf16::from_f64(want);
                // Bit for bit (a dropped negative dY is -0), NaN payloads aside.
                got.is_nan() != want.is_nan() || !got.is_nan() && got.to_bits() != want.to_bits()
            })
            .count();
        assert_eq!(
            differ, 0,
            "{spec:?}: elements of dZ / scale in the workspace differ"
        );
    }
}

/// `Auto` takes the Hopper kernels where TMA can read the operands and gives the same results
/// as forcing them; operands TMA cannot read are refused by `Hopper` and run by `Auto`.
#[test]
fn hopper_is_taken_only_where_tma_can_read_the_operands() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    // At least half a wave of 128 x 128 tiles in both products on any Hopper GPU (dX: 256, dW:
    // 128; an H100 SXM or H200 has 132 multiprocessors); identity, so that no CPU reference
    // forward is needed for the saved Y.
    let (m, n, k) = (4096, 2048, 1024);
    let shape = LinearShape::new(m, n, k);
    let spec = LayerSpec::new(shape, Nonlinearity::Identity, DropoutSpec::new(0.1, 5, 6));
    let choice = kernels
        .backward_kernels_for::<bf16>(shape, Nonlinearity::Identity, BackwardKernel::Auto)
        .unwrap();
    assert!(
        choice.dx.starts_with("wg") && choice.dw.starts_with("wg"),
        "Auto took {choice} for {shape:?}"
    );
    let mut rng = StdRng::seed_from_u64(77);
    let inputs = inputs::<bf16>(&spec, false, &mut rng);
    let initial = poisoned_gradients::<bf16>(shape);
    let auto = run_gpu(&kernels, &spec, &inputs, &initial, ALL_OUTPUTS);
    assert_requested_written("Auto on Hopper", &auto, ALL_OUTPUTS);
    let forced = run_gpu(
        &kernels,
        &spec,
        &inputs,
        &initial,
        Case {
            kernel: BackwardKernel::Hopper,
            ..ALL_OUTPUTS
        },
    );
    assert_same_gradients("Auto and Hopper differ", shape, &forced, &auto);
    // n = 75: dY's rows are not whole 16-byte units.
    let odd = LayerSpec::new(
        LinearShape::new(64, 75, 64),
        Nonlinearity::Identity,
        DropoutSpec::new(0.1, 5, 6),
    );
    check::<bf16>(&kernels, &odd, ALL_OUTPUTS);
    let x = kernels.stream().alloc_zeros::<bf16>(64 * 64).unwrap();
    let w = kernels.stream().alloc_zeros::<bf16>(75 * 64).unwrap();
    let dy = kernels.stream().alloc_zeros::<bf16>(64 * 75).unwrap();
    let mut dx = kernels.stream().alloc_zeros::<bf16>(64 * 64).unwrap();
    let error = kernels
        .backward(
            &odd,
            &x,
            &w,
            &dy,
            None,
            dx_only(&mut dx),
            BackwardOptions {
                kernel: BackwardKernel::Hopper,
                ..BackwardOptions::default()
            },
        )
        .unwrap_err();
    assert!(error.to_string().contains("multiples of 8"), "{error}");
}

/// A handle made with `LoadOptions { hopper: false }` runs the backward on the portable kernels
/// on every GPU (on a Hopper GPU where `Auto` would take the Hopper ones), matches the reference,
/// and refuses `BackwardKernel::Hopper` with the reason.
#[test]
fn without_the_hopper_modules_the_backward_takes_the_portable_kernels() {
    let Some(default) = gpu() else { return };
    let portable =
        LayerKernels::with_options(default.stream().clone(), LoadOptions { hopper: false })
            .unwrap();
    if portable.compute_capability() < (8, 0) {
        return;
    }
    // Enough tiles for the Hopper kernels in both products (as in the test above).
    let shape = LinearShape::new(4096, 2048, 1024);
    let choice = portable
        .backward_kernels_for::<bf16>(shape, Nonlinearity::Identity, BackwardKernel::Auto)
        .unwrap();
    assert!(
        !choice.dx.starts_with("wg") && !choice.dw.starts_with("wg"),
        "Auto took {choice} without the Hopper modules"
    );
    let small = LayerSpec::new(
        LinearShape::new(520, 264, 136),
        Nonlinearity::Relu,
        DropoutSpec::new(0.1, 5, 6),
    );
    check::<bf16>(&portable, &small, ALL_OUTPUTS);
    let error = portable
        .backward_kernels_for::<bf16>(shape, Nonlinearity::Identity, BackwardKernel::Hopper)
        .unwrap_err();
    assert!(
        matches!(error, fusedrop::Error::UnsupportedDevice(_)),
        "{error:?}"
    );
    if portable.compute_capability() == (9, 0) {
        assert!(error.to_string().contains("hopper: false"), "{error}");
    }
}

/// Narrow products take split-K on Hopper (clusters summing partial products in distributed
/// shared memory): an inference batch's dX and a short-k layer's dW (with db, whose column sums
/// are split too) match the reference and give the same bits on every run.
#[test]
fn hopper_split_k_for_narrow_products() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    for (m, n, k, narrow) in HOPPER_SPLIT_SHAPES {
        let shape = LinearShape::new(m, n, k);
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let choice = kernels
                .backward_kernels_for::<bf16>(shape, nonlinearity, BackwardKernel::Auto)
                .unwrap();
            let split = if narrow == "dX" { choice.dx } else { choice.dw };
            assert!(
                split.starts_with("wg128x128s"),
                "{shape:?}: Auto took {choice}"
            );
            let spec = LayerSpec::new(shape, nonlinearity, DropoutSpec::new(0.1, 21, 4));
            check::<bf16>(&kernels, &spec, ALL_OUTPUTS);
            check::<f16>(&kernels, &spec, ALL_OUTPUTS);
            let mut rng = StdRng::seed_from_u64(3);
            let inputs = inputs::<bf16>(&spec, false, &mut rng);
            let initial = poisoned_gradients::<bf16>(shape);
            let first = run_gpu(&kernels, &spec, &inputs, &initial, ALL_OUTPUTS);
            let again = run_gpu(&kernels, &spec, &inputs, &initial, ALL_OUTPUTS);
            assert_same_gradients(&format!("{shape:?}: repeat"), shape, &again, &first);
        }
    }
}

/// The two Hopper tests above run every Hopper backward configuration: the 128 x 256 tile (the
/// dW of 64 x 4096 x 4096) and the 128 x 128 one always; each split-K configuration where the
/// heuristic (`hopper_for` in src/cuda/backward.rs) takes it for their narrow products on this
/// GPU: clusters of 2 for 1000³ (64 tiles, fewer than half a wave of more than 128
/// multiprocessors, 64 clusters of 2 at once), of 4 for small's dX (32 tiles, 32 clusters of 4),
/// of 8 for the short-k dW (16 tiles, 16 clusters of 8); all of them on an H100 SXM or H200. A
/// change of the heuristic or the shapes that left one untested fails this test.
#[test]
fn hopper_tests_run_every_hopper_configuration() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    let mut run = Vec::new();
    let mut add = |shape: LinearShape, kernel| {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let choice = kernels
                .backward_kernels_for::<bf16>(shape, nonlinearity, kernel)
                .unwrap();
            run.extend([choice.dx, choice.dw]);
        }
    };
    for (m, n, k) in HOPPER_SHAPES {
        add(LinearShape::new(m, n, k), BackwardKernel::Hopper);
    }
    for (m, n, k, _) in HOPPER_SPLIT_SHAPES {
        add(LinearShape::new(m, n, k), BackwardKernel::Auto);
    }
    let resident = kernels.resident_clusters();
    let sms = kernels.sm_count() as u64;
    let mut expected = vec!["wg128x256", "wg128x128"];
    for (config, size, tiles) in [
        ("wg128x128s2", 2, 64),
        ("wg128x128s4", 4, 32),
        ("wg128x128s8", 8, 16),
    ] {
        if 2 * tiles < sms && resident.can_place(size) && resident.of(size) >= tiles {
            expected.push(config);
        }
    }
    for config in expected {
        assert!(
            run.contains(&config),
            "no Hopper test runs {config}; they run {run:?} ({resident:?})"
        );
    }
}

/// dX of a problem with more than 2^32 elements: every index is 64-bit. Only the last rows are
/// compared (with the reference run on just those rows as a row shard, which gives them the
/// same mask indices).
#[test]
fn dx_beyond_four_billion_elements() {
    let Some(kernels) = gpu() else { return };
    let (m, n, k) = (4_200_001usize, 1usize, 1024usize);
    let tail = 67;
    let geometry = Geometry {
        row_offset: 11,
        col_offset: 0,
        n_global: None,
    };
    let dropout = DropoutSpec::new(0.25, 77, 5);
    let spec = LayerSpec::new(LinearShape::new(m, n, k), Nonlinearity::Identity, dropout)
        .with_geometry(geometry);
    let mut rng = StdRng::seed_from_u64(4242);
    let w_host = random_values::<f16>(n * k, &mut rng);
    let dy_host = random_values::<f16>(m * n, &mut rng);
    // dW is not requested, so X is never read; it only has to have m*k elements.
    let x = match kernels.stream().alloc_zeros::<f16>(m * k) {
        Ok(x) => x,
        Err(e) => {
            skip(
                "the 2^32-element backward test",
                &format!("cannot allocate X: {e}"),
            );
            return;
        }
    };
    let mut dx = match kernels.stream().alloc_zeros::<f16>(m * k) {
        Ok(dx) => dx,
        Err(e) => {
            skip(
                "the 2^32-element backward test",
                &format!("cannot allocate dX: {e}"),
            );
            return;
        }
    };
    let start = (m - tail) * k;
    let w = kernels.stream().clone_htod(&w_host).unwrap();
    let dy = kernels.stream().clone_htod(&dy_host).unwrap();
    let tail_spec = LayerSpec::new(
        LinearShape::new(tail, n, k),
        Nonlinearity::Identity,
        dropout,
    )
    .with_geometry(Geometry {
        row_offset: geometry.row_offset + (m - tail) as u64,
        ..geometry
    });
    let tail_x = random_values::<f16>(tail * k, &mut rng);
    let tail_dy = &dy_host[m - tail..];
    let want = reference::backward_f64(&tail_spec, &tail_x, &w_host, tail_dy, None).unwrap();
    // n = 1: each element of dX is one term, |dZ| |W|, so every element is held to its own
    // rounding bound.
    let abs =
        |v: &[f16]| -> Vec<f16> { v.iter().map(|e| f16::from_f64(e.to_f64().abs())).collect() };
    let abs_sum = reference::backward_f64(
        &tail_spec,
        &abs(&tail_x),
        &abs(&w_host),
        &abs(tail_dy),
        None,
    )
    .unwrap()
    .dx;
    // Both families, each with 128 x 128 tiles here (262,504 of them, within one grid).
    for kernel in [BackwardKernel::TensorCore, BackwardKernel::Simt] {
        kernels
            .stream()
            .memcpy_htod(&vec![f16::NAN; tail * k], &mut dx.slice_mut(start..))
            .unwrap();
        kernels
            .backward(
                &spec,
                &x,
                &w,
                &dy,
                None,
                dx_only(&mut dx),
                BackwardOptions {
                    kernel,
                    ..BackwardOptions::default()
                },
            )
            .unwrap();
        let got_elements = kernels.stream().clone_dtoh(&dx.slice(start..)).unwrap();
        check_elementwise(
            &format!("{kernel:?}: dX rows past 2^32 elements"),
            k,
            &got_elements,
            &want.dx,
            &abs_sum,
            n,
        );
        let got: Vec<f64> = got_elements.iter().map(|v| v.to_f64()).collect();
        let error = relative_l2_error(&got, &want.dx);
        assert!(
            error < f16::REL_L2_TOLERANCE,
            "{kernel:?}: dX rows past 2^32 elements: relative L2 error {error:e}"
        );
    }
}

/// The forward records the (seed, subsequence) it read from the device buffer; the buffer is then
/// advanced (as a CUDA graph does before the next call), and the identity backward reading the
/// record still gets the forward's mask. The backward refuses `DeviceRecorded` itself.
#[test]
fn backward_reads_the_pair_the_forward_recorded() {
    let Some(kernels) = gpu() else { return };
    let (m, n, k) = (67, 45, 33);
    let used = DropoutSpec::new(0.5, 0x0dd_5eed, 17);
    let spec = LayerSpec::new(LinearShape::new(m, n, k), Nonlinearity::Identity, used);
    let mut rng = StdRng::seed_from_u64(0x7ec0);
    let inputs = inputs::<f32>(&spec, false, &mut rng);
    let x = kernels.stream().clone_htod(&inputs.x).unwrap();
    let w = kernels.stream().clone_htod(&inputs.w).unwrap();
    let dy = kernels.stream().clone_htod(&inputs.dy).unwrap();
    let mut y = kernels.stream().alloc_zeros::<f32>(m * n).unwrap();
    let mut next = kernels
        .stream()
        .clone_htod(&[used.seed, used.subsequence])
        .unwrap();
    let mut record = kernels.stream().alloc_zeros::<u64>(2).unwrap();
    // The spec's own pair is wrong on purpose: only the buffers may decide the mask.
    let mut wrong = spec;
    wrong.dropout.subsequence += 1000;
    let next_view = next.as_view();
    kernels
        .forward(
            &wrong,
            &x,
            &w,
            None,
            &mut y,
            ForwardOptions {
                seed: SeedSource::DeviceRecorded {
                    next: &next_view,
                    record: &mut record,
                },
                ..ForwardOptions::default()
            },
        )
        .unwrap();
    assert_eq!(
        kernels.stream().clone_dtoh(&record).unwrap(),
        [used.seed, used.subsequence]
    );
    // Advance the buffer as a graph would before the next call.
    kernels
        .stream()
        .memcpy_htod(&[used.seed, used.subsequence + 1], &mut next)
        .unwrap();
    let mut dx = kernels.stream().clone_htod(&vec![f32::NAN; m * k]).unwrap();
    let record_view = record.as_view();
    kernels
        .backward(
            &wrong,
            &x,
            &w,
            &dy,
            None,
            dx_only(&mut dx),
            BackwardOptions {
                seed: SeedSource::Device(&record_view),
                ..BackwardOptions::default()
            },
        )
        .unwrap();
    let want = reference::backward_f64(&spec, &inputs.x, &inputs.w, &inputs.dy, None).unwrap();
    let abs = |v: &[f32]| -> Vec<f32> { v.iter().map(|e| e.abs()).collect() };
    let abs_sum = reference::backward_f64(
        &spec,
        &abs(&inputs.x),
        &abs(&inputs.w),
        &abs(&inputs.dy),
        None,
    )
    .unwrap()
    .dx;
    let got_elements = kernels.stream().clone_dtoh(&dx).unwrap();
    // Each element on its own: the recorded pair's mask, not the advanced one's, in every
    // element (a wrong mask moves elements far outside their bound).
    check_elementwise(
        "dX from the recorded pair",
        k,
        &got_elements,
        &want.dx,
        &abs_sum,
        n,
    );
    let got: Vec<f64> = got_elements.iter().map(|v| f64::from(*v)).collect();
    let error = relative_l2_error(&got, &want.dx);
    assert!(
        error < f32::REL_L2_TOLERANCE,
        "dX relative L2 error {error:e}"
    );

    let next_view = next.as_view();
    let refused = kernels.backward(
        &spec,
        &x,
        &w,
        &dy,
        None,
        dx_only(&mut dx),
        BackwardOptions {
            seed: SeedSource::DeviceRecorded {
                next: &next_view,
                record: &mut record,
            },
            ..BackwardOptions::default()
        },
    );
    let error = refused.expect_err("the backward accepted SeedSource::DeviceRecorded");
    assert!(
        error
            .to_string()
            .contains("SeedSource::DeviceRecorded was passed to the backward"),
        "{error}"
    );
}

/// A gradient's bits, with every NaN the same value (a NaN's payload is not part of the
/// contract: NaN must stay NaN).
fn class_bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter()
        .map(|e| {
            let e = e.to_f64();
            if e.is_nan() {
                u64::MAX
            } else {
                e.to_bits()
            }
        })
        .collect()
}

/// The same call with and without a workspace: the identity backward's pre-pass (dY times the
/// mask, once) must give exactly the gradients of the products redrawing the mask themselves.
fn check_workspace_bit_for_bit<T: Element>(kernels: &LayerKernels, spec: &LayerSpec, case: Case) {
    let LinearShape { m, n, .. } = spec.shape;
    assert!(
        backward::workspace_bytes::<T>(spec) == m * n * std::mem::size_of::<T>(),
        "{spec:?}: the identity backward with dropout has a workspace"
    );
    let mut rng = StdRng::seed_from_u64(spec.dropout.seed ^ 0x3b5);
    let inputs = inputs::<T>(spec, case.nonfinite, &mut rng);
    let initial = if case.accumulate {
        let LinearShape { m, n, k } = spec.shape;
        Gradients {
            dx: random_values::<T>(m * k, &mut rng),
            dw: random_values::<T>(n * k, &mut rng),
            db: random_values::<T>(n, &mut rng),
        }
    } else {
        poisoned_gradients::<T>(spec.shape)
    };
    let direct = run_gpu(kernels, spec, &inputs, &initial, case);
    // The comparison below maps NaN to NaN, so a gradient both paths left unwritten would pass it.
    if !case.nonfinite {
        assert_requested_written(&format!("{} {spec:?} {case:?}", T::NAME), &direct, case);
    }
    let masked_once = run_gpu(
        kernels,
        spec,
        &inputs,
        &initial,
        Case {
            workspace: true,
            ..case
        },
    );
    for (name, a, b) in [
        ("dX", &direct.dx, &masked_once.dx),
        ("dW", &direct.dw, &masked_once.dw),
        ("db", &direct.db, &masked_once.db),
    ] {
        assert_eq!(
            class_bits(a),
            class_bits(b),
            "{} {spec:?} {case:?}: {name} differs with the workspace",
            T::NAME
        );
    }
}

/// The workspace path on every kernel family: odd and aligned shapes, rates with and without
/// survivors (p = 1), NaN and infinities, a shard with the seed in a device buffer,
/// accumulation, and subsets of the outputs; one call per family also against the reference.
#[test]
fn workspace_gives_the_same_gradients_bit_for_bit() {
    let Some(kernels) = gpu() else { return };
    let mut families = vec![BackwardKernel::Simt, BackwardKernel::TensorCore];
    if hopper(&kernels) {
        families.push(BackwardKernel::Hopper);
    }
    let shard = Geometry {
        row_offset: 3,
        col_offset: 5,
        n_global: Some(211),
    };
    let shapes = [(67, 45, 33), (130, 72, 64), (257, 136, 200)];
    for family in families {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            if family == BackwardKernel::Hopper && (n % 8 != 0 || k % 8 != 0) {
                continue;
            }
            for (j, p) in [0.1f32, 0.5, 1.0].into_iter().enumerate() {
                let geometry = if i == 1 { shard } else { Geometry::UNSHARDED };
                let spec = LayerSpec::new(
                    LinearShape::new(m, n, k),
                    Nonlinearity::Identity,
                    DropoutSpec::new(p, 0x3c0 + (i * 3 + j) as u64, j as u64),
                )
                .with_geometry(geometry);
                let (dx, dw, db) = [
                    (true, true, true),
                    (false, false, true),
                    (true, false, false),
                ][(i + j) % 3];
                let case = Case {
                    kernel: family,
                    accumulate: j == 1,
                    nonfinite: j != 1,
                    device_seed: i == 1,
                    dx: dx || family == BackwardKernel::Hopper,
                    dw: dw || family == BackwardKernel::Hopper,
                    db,
                    ..ALL_OUTPUTS
                };
                if family == BackwardKernel::Simt {
                    check_workspace_bit_for_bit::<f32>(&kernels, &spec, case);
                }
                check_workspace_bit_for_bit::<f16>(&kernels, &spec, case);
                check_workspace_bit_for_bit::<bf16>(&kernels, &spec, case);
            }
        }
        let spec = LayerSpec::new(
            LinearShape::new(130, 72, 64),
            Nonlinearity::Identity,
            DropoutSpec::new(0.1, 77, 1),
        );
        let case = Case {
            kernel: family,
            workspace: true,
            ..ALL_OUTPUTS
        };
        check::<f16>(&kernels, &spec, case);
        check::<bf16>(&kernels, &spec, case);
    }
}

/// A workspace too short or misaligned is refused before anything is queued (dX keeps its
/// poison); one given where no mask is drawn (ReLU, p = 0) is ignored, whatever its size.
#[test]
fn rejects_a_short_or_misaligned_workspace() {
    let Some(kernels) = gpu() else { return };
    let (m, n, k) = (40, 24, 16);
    let stream = kernels.stream();
    let x = stream.clone_htod(&vec![f16::from_f32(0.5); m * k]).unwrap();
    let w = stream
        .clone_htod(&vec![f16::from_f32(0.25); n * k])
        .unwrap();
    let dy = stream.clone_htod(&vec![f16::from_f32(1.0); m * n]).unwrap();
    let poison = vec![f16::NAN; m * k];
    let mut dx = stream.clone_htod(&poison).unwrap();
    let identity = LayerSpec::new(
        LinearShape::new(m, n, k),
        Nonlinearity::Identity,
        DropoutSpec::new(0.5, 9, 9),
    );
    let bytes = backward::workspace_bytes::<f16>(&identity);
    assert_eq!(bytes, m * n * 2);
    let mut workspace = stream.alloc_zeros::<u8>(bytes + 16).unwrap();
    for (range, expected) in [
        (0..bytes - 2, "at least"),
        (8..bytes + 8, "16-byte aligned"),
    ] {
        let error = kernels
            .backward(
                &identity,
                &x,
                &w,
                &dy,
                None,
                dx_only(&mut dx),
                BackwardOptions {
                    workspace: Some(workspace.slice_mut(range)),
                    ..BackwardOptions::default()
                },
            )
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
        let after = stream.clone_dtoh(&dx).unwrap();
        assert!(
            after.iter().all(|v| v.is_nan()),
            "dX written after an error"
        );
    }
    let y = stream.clone_htod(&vec![f16::from_f32(1.0); m * n]).unwrap();
    for spec in [
        LayerSpec {
            nonlinearity: Nonlinearity::Relu,
            ..identity
        },
        LayerSpec {
            dropout: DropoutSpec::new(0.0, 9, 9),
            ..identity
        },
    ] {
        assert_eq!(backward::workspace_bytes::<f16>(&spec), 0);
        kernels
            .backward(
                &spec,
                &x,
                &w,
                &dy,
                Some(&y.as_view()),
                dx_only(&mut dx),
                BackwardOptions {
                    workspace: Some(workspace.slice_mut(0..1)),
                    ..BackwardOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    }
}

/// A forced Hopper call whose dW operand TMA cannot read fails before dX (which it could run)
/// is queued: every check runs before the first launch.
#[test]
fn hopper_refusal_of_one_product_queues_neither() {
    let Some(kernels) = gpu() else { return };
    if !hopper(&kernels) {
        return;
    }
    let (m, n, k) = (256, 256, 256);
    let stream = kernels.stream();
    let x = stream.alloc_zeros::<bf16>(m * k + 1).unwrap();
    let w = stream
        .clone_htod(&vec![bf16::from_f32(0.25); n * k])
        .unwrap();
    let dy = stream
        .clone_htod(&vec![bf16::from_f32(1.0); m * n])
        .unwrap();
    let mut dx = stream.clone_htod(&vec![bf16::NAN; m * k]).unwrap();
    let mut dw = stream.alloc_zeros::<bf16>(n * k).unwrap();
    let spec = LayerSpec::new(
        LinearShape::new(m, n, k),
        Nonlinearity::Identity,
        DropoutSpec::new(0.1, 3, 3),
    );
    // X one element past an allocation's start: not 16-byte aligned.
    let error = kernels
        .backward(
            &spec,
            &x.slice(1..),
            &w,
            &dy,
            None,
            GradientsMut {
                dx: Some(dx.as_view_mut()),
                dw: Some(dw.as_view_mut()),
                db: None,
            },
            BackwardOptions {
                kernel: BackwardKernel::Hopper,
                ..BackwardOptions::default()
            },
        )
        .unwrap_err();
    assert!(error.to_string().contains("dW"), "{error}");
    let after = stream.clone_dtoh(&dx).unwrap();
    assert!(
        after.iter().all(|v| v.is_nan()),
        "dX was queued before the dW error"
    );
}

/// The mma.sync kernels' aligned entry points (taken for whole allocations with n and k
/// multiples of 8) give the bits of the general ones (taken when dY starts one element past a
/// 16-byte boundary): the same mma sequence, only the loads differ.
#[test]
fn aligned_and_general_tensor_core_kernels_give_the_same_bits() {
    let Some(kernels) = gpu() else { return };
    let (m, n, k) = (136, 72, 200);
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        let spec = LayerSpec::new(
            LinearShape::new(m, n, k),
            nonlinearity,
            DropoutSpec::new(0.1, 12, 3),
        );
        let mut rng = StdRng::seed_from_u64(0xA11);
        let inputs = inputs::<bf16>(&spec, false, &mut rng);
        let stream = kernels.stream();
        let x = stream.clone_htod(&inputs.x).unwrap();
        let w = stream.clone_htod(&inputs.w).unwrap();
        let y = inputs.y.as_ref().map(|y| stream.clone_htod(y).unwrap());
        // dY once at the start of its allocation, once one element past it.
        let mut shifted = vec![bf16::ZERO];
        shifted.extend_from_slice(&inputs.dy);
        let dy_whole = stream.clone_htod(&inputs.dy).unwrap();
        let dy_shifted = stream.clone_htod(&shifted).unwrap();
        let mut results = Vec::new();
        for dy in [dy_whole.slice(0..m * n), dy_shifted.slice(1..)] {
            // Poisoned: elements both kernels left unwritten would otherwise agree.
            let poisoned = |len: usize| stream.clone_htod(&vec![bf16::NAN; len]).unwrap();
            let (mut dx, mut dw, mut db) = (poisoned(m * k), poisoned(n * k), poisoned(n));
            kernels
                .backward(
                    &spec,
                    &x,
                    &w,
                    &dy,
                    y.as_ref().map(|y| y.as_view()).as_ref(),
                    GradientsMut {
                        dx: Some(dx.as_view_mut()),
                        dw: Some(dw.as_view_mut()),
                        db: Some(db.as_view_mut()),
                    },
                    BackwardOptions {
                        kernel: BackwardKernel::TensorCore,
                        ..BackwardOptions::default()
                    },
                )
                .unwrap();
            results.push(Gradients {
                dx: stream.clone_dtoh(&dx).unwrap(),
                dw: stream.clone_dtoh(&dw).unwrap(),
                db: stream.clone_dtoh(&db).unwrap(),
            });
        }
        assert_same_gradients(
            &format!("{nonlinearity:?}: the aligned and general kernels differ"),
            spec.shape,
            &results[1],
            &results[0],
        );
        // And both right: finite inputs give every gradient element, within bf16's tolerance.
        let want =
            reference::backward_f64(&spec, &inputs.x, &inputs.w, &inputs.dy, inputs.y.as_deref())
                .unwrap();
        for (name, got, want) in [
            ("dX", &results[0].dx, &want.dx),
            ("dW", &results[0].dw, &want.dw),
            ("db", &results[0].db, &want.db),
        ] {
            let error = reference::relative_l2_error(&reference::to_f64(got), want);
            assert!(
                error < bf16::REL_L2_TOLERANCE,
                "{nonlinearity:?} {name}: relative L2 error {error:e} (a NaN left means unwritten)"
            );
        }
    }
}
