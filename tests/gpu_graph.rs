//! CUDA graphs (issue 15): a two-layer training step (forward of both layers, backward of both,
//! ReLU then identity, p > 0, (seed, subsequence) from device buffers) captured once and replayed
//! with the buffers advanced between replays. Every replay is compared with the CPU reference for
//! the pair it used; replays with the same pair must be bit-identical, with different pairs they
//! must have different masks. Skipped, with a message, where no GPU is usable.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaSlice;
use fusedrop::cuda::backward::{BackwardKernel, BackwardOptions, GradientsMut};
use fusedrop::cuda::forward::{ForwardConfig, ForwardOptions};
use fusedrop::cuda::{self, LayerKernels, SeedSource};
use fusedrop::{mask, reference, DropoutSpec, LayerSpec, LinearShape, Nonlinearity};
use half::bf16;
use rand::{rngs::StdRng, Rng, SeedableRng};

#[path = "common/elementwise.rs"]
mod elementwise;
use elementwise::check_elementwise;
#[path = "common/gpu_open.rs"]
mod gpu_open;
use gpu_open::{hopper_or_skip, open_or_skip};

/// The per-thread default kernels: capture is not supported on the legacy default kernels
/// (cudarc's `default_stream`, the null kernels), and one kernels keeps cudarc out of its
/// multi-kernels event tracking.
fn gpu() -> Option<LayerKernels> {
    open_or_skip("the GPU graph test", || {
        cuda::open_device(0).and_then(|ctx| LayerKernels::new(ctx.per_thread_stream()))
    })
}

fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

const SEED: u64 = 0x6EA9_0000_1234;
const P1: f32 = 0.25;
const P2: f32 = 0.1;

/// The device buffers of the step.
struct Step {
    x: CudaSlice<f32>,
    w1: CudaSlice<f32>,
    b1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
    b2: CudaSlice<f32>,
    h: CudaSlice<f32>,
    y: CudaSlice<f32>,
    dy: CudaSlice<f32>,
    dh: CudaSlice<f32>,
    dx: CudaSlice<f32>,
    dw1: CudaSlice<f32>,
    db1: CudaSlice<f32>,
    dw2: CudaSlice<f32>,
    db2: CudaSlice<f32>,
    seed1: CudaSlice<u64>,
    seed2: CudaSlice<u64>,
}

/// Queues the step: H = dropout_P1(relu(X·W1ᵀ + b1)), Y = dropout_P2(H·W2ᵀ + b2), then the two
/// backward calls. The Dropout fields are placeholders: every call reads its pair from a seed
/// buffer when it runs.
fn queue_step(kernels: &LayerKernels, s: &mut Step, l1: LinearShape, l2: LinearShape) {
    let spec1 = LayerSpec::new(l1, Nonlinearity::Relu, DropoutSpec::new(P1, 0, 0));
    let spec2 = LayerSpec::new(l2, Nonlinearity::Identity, DropoutSpec::new(P2, 0, 0));
    let seed1 = s.seed1.as_view();
    let seed2 = s.seed2.as_view();
    kernels
        .forward(
            &spec1,
            &s.x,
            &s.w1,
            Some(&s.b1.as_view()),
            &mut s.h,
            ForwardOptions {
                seed: SeedSource::Device(&seed1),
                ..ForwardOptions::default()
            },
        )
        .unwrap();
    kernels
        .forward(
            &spec2,
            &s.h,
            &s.w2,
            Some(&s.b2.as_view()),
            &mut s.y,
            ForwardOptions {
                seed: SeedSource::Device(&seed2),
                ..ForwardOptions::default()
            },
        )
        .unwrap();
    let grads2 = GradientsMut {
        dx: Some(s.dh.as_view_mut()),
        dw: Some(s.dw2.as_view_mut()),
        db: Some(s.db2.as_view_mut()),
    };
    kernels
        .backward(
            &spec2,
            &s.h,
            &s.w2,
            &s.dy,
            None,
            grads2,
            BackwardOptions {
                seed: SeedSource::Device(&seed2),
                ..BackwardOptions::default()
            },
        )
        .unwrap();
    let grads1 = GradientsMut {
        dx: Some(s.dx.as_view_mut()),
        dw: Some(s.dw1.as_view_mut()),
        db: Some(s.db1.as_view_mut()),
    };
    kernels
        .backward(
            &spec1,
            &s.x,
            &s.w1,
            &s.dh,
            Some(&s.h.as_view()),
            grads1,
            BackwardOptions {
                seed: SeedSource::Device(&seed1),
                ..BackwardOptions::default()
            },
        )
        .unwrap();
}

/// `got` (row-major, `cols` columns) within f32's tolerance of `want`; the message says where
/// the elements more than 1 % off lie.
fn close(what: &str, cols: usize, got: &[f32], want: &[f64]) {
    let got = reference::to_f64(got);
    let err = reference::relative_l2_error(&got, want);
    assert!(
        err < 1e-5,
        "{what}: relative L2 error {err:e}; elements off by more than 1 %: {}",
        reference::describe_differences(got.len() / cols, cols, &got, want, |i| {
            reference::off_by_more_than(got[i], want[i], 0.01)
        })
    );
}

#[test]
fn a_captured_training_step_replays_with_fresh_masks() {
    let Some(kernels) = gpu() else { return };
    let (m, k0, n1, n2) = (48, 64, 96, 40);
    let l1 = LinearShape::new(m, n1, k0);
    let l2 = LinearShape::new(m, n2, n1);
    let mut rng = StdRng::seed_from_u64(15);
    let host_x = random(m * k0, &mut rng);
    let host_w1 = random(n1 * k0, &mut rng);
    let host_b1 = random(n1, &mut rng);
    let host_w2 = random(n2 * n1, &mut rng);
    let host_b2 = random(n2, &mut rng);
    let host_dy = random(m * n2, &mut rng);
    let up = |v: &[f32]| kernels.stream().clone_htod(v).unwrap();
    let mut step = Step {
        x: up(&host_x),
        w1: up(&host_w1),
        b1: up(&host_b1),
        w2: up(&host_w2),
        b2: up(&host_b2),
        h: kernels.stream().alloc_zeros(m * n1).unwrap(),
        y: kernels.stream().alloc_zeros(m * n2).unwrap(),
        dy: up(&host_dy),
        dh: kernels.stream().alloc_zeros(m * n1).unwrap(),
        dx: kernels.stream().alloc_zeros(m * k0).unwrap(),
        dw1: kernels.stream().alloc_zeros(n1 * k0).unwrap(),
        db1: kernels.stream().alloc_zeros(n1).unwrap(),
        dw2: kernels.stream().alloc_zeros(n2 * n1).unwrap(),
        db2: kernels.stream().alloc_zeros(n2).unwrap(),
        seed1: kernels.stream().clone_htod(&[SEED, 0]).unwrap(),
        seed2: kernels.stream().clone_htod(&[SEED, 1]).unwrap(),
    };

    kernels
        .stream()
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    queue_step(&kernels, &mut step, l1, l2);
    let graph = kernels
        .stream()
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture recorded the step");

    // Replays: subsequences 10, 12, 14, 16, then 10 again (same pair: identical outputs).
    let mut first_h: Option<Vec<f32>> = None;
    let mut previous_h: Option<Vec<f32>> = None;
    for (replay, subsequence) in [10u64, 12, 14, 16, 10].into_iter().enumerate() {
        // Queued before the replay on the same kernels, so the graph's kernels read these values.
        kernels
            .stream()
            .memcpy_htod(&[SEED, subsequence], &mut step.seed1)
            .unwrap();
        kernels
            .stream()
            .memcpy_htod(&[SEED, subsequence + 1], &mut step.seed2)
            .unwrap();
        // Every output poisoned, so that one the replay leaves unwritten cannot pass with the
        // previous replay's values.
        for output in [
            &mut step.h,
            &mut step.y,
            &mut step.dh,
            &mut step.dx,
            &mut step.dw1,
            &mut step.db1,
            &mut step.dw2,
            &mut step.db2,
        ] {
            let poison = vec![f32::NAN; output.len()];
            kernels.stream().memcpy_htod(&poison, output).unwrap();
        }
        graph.launch().unwrap();
        let down = |v: &CudaSlice<f32>| kernels.stream().clone_dtoh(v).unwrap();
        let (h, y, dh, dx) = (down(&step.h), down(&step.y), down(&step.dh), down(&step.dx));
        let (dw1, db1, dw2, db2) = (
            down(&step.dw1),
            down(&step.db1),
            down(&step.dw2),
            down(&step.db2),
        );

        let what = format!("replay {replay} (subsequence {subsequence})");
        let spec1 = LayerSpec::new(
            l1,
            Nonlinearity::Relu,
            DropoutSpec::new(P1, SEED, subsequence),
        );
        let spec2 = LayerSpec::new(
            l2,
            Nonlinearity::Identity,
            DropoutSpec::new(P2, SEED, subsequence + 1),
        );
        // Each layer against the reference on the inputs it saw (layer 2 on the GPU's H).
        close(
            &format!("{what} H"),
            n1,
            &h,
            &reference::forward_f64(&spec1, &host_x, &host_w1, Some(&host_b1)).unwrap(),
        );
        close(
            &format!("{what} Y"),
            n2,
            &y,
            &reference::forward_f64(&spec2, &h, &host_w2, Some(&host_b2)).unwrap(),
        );
        for (i, &v) in y.iter().enumerate() {
            if !mask::keep(SEED, subsequence + 1, P2, i as u64) {
                assert_eq!(v, 0.0, "{what}: Y[{i}] was dropped but is {v}");
            }
        }
        let g2 = reference::backward_f64(&spec2, &h, &host_w2, &host_dy, None).unwrap();
        close(&format!("{what} dH"), n1, &dh, &g2.dx);
        close(&format!("{what} dW2"), n1, &dw2, &g2.dw);
        close(&format!("{what} db2"), n2, &db2, &g2.db);
        let g1 = reference::backward_f64(&spec1, &host_x, &host_w1, &dh, Some(&h)).unwrap();
        close(&format!("{what} dX"), k0, &dx, &g1.dx);
        close(&format!("{what} dW1"), k0, &dw1, &g1.dw);
        close(&format!("{what} db1"), n1, &db1, &g1.db);

        if let Some(prev) = &previous_h {
            let mask_of = |v: &[f32]| v.iter().map(|&e| e == 0.0).collect::<Vec<_>>();
            if replay < 4 {
                assert_ne!(
                    mask_of(prev),
                    mask_of(&h),
                    "{what}: same zeros as the previous replay"
                );
            }
        }
        if replay == 4 {
            assert_eq!(
                first_h.as_deref(),
                Some(&h[..]),
                "{what}: differs from replay 0 with the same pair"
            );
        }
        first_h.get_or_insert_with(|| h.clone());
        previous_h = Some(h);
    }
}

/// The Hopper kernels inside a graph (compute capability 9.0 with the sm_90a modules): the
/// forward, then the backward of the same layer (dX, dW, db), with tensor maps encoded on the
/// host at capture time and the seed read from the device buffer; the backward as
/// `BackwardKernel::Hopper`, and as the four variants issue 11 leaves to measurement (dW's dZᵀ
/// formed by transform warps; dZ written by dX into a workspace allocated before the capture;
/// both products in one launch; the gradients stored by TMA through maps encoded at capture).
#[test]
fn a_captured_hopper_forward_and_backward_replay_with_fresh_masks() {
    let Some(kernels) = gpu() else { return };
    if !hopper_or_skip(&kernels, "the Hopper graph check") {
        return;
    }
    // 300 x 520 x 256: dX's reduction of 9 k-blocks splits over clusters of 2 on an H100 or
    // H200; with n = 448 (7 k-blocks) nothing splits, so the one launch runs.
    let (split, unsplit) = (
        LinearShape::new(300, 520, 256),
        LinearShape::new(300, 448, 256),
    );
    for (family, shape) in [
        (BackwardKernel::Hopper, split),
        (BackwardKernel::HopperTransformWarps, split),
        (BackwardKernel::HopperDzFromDx, split),
        (BackwardKernel::HopperOneLaunch, unsplit),
        (BackwardKernel::HopperTmaStore, unsplit),
    ] {
        check_hopper_graph(&kernels, family, shape);
    }
}

/// `a_captured_hopper_forward_and_backward_replay_with_fresh_masks` with the backward on
/// `family`, for a layer of `shape`.
fn check_hopper_graph(kernels: &LayerKernels, family: BackwardKernel, shape: LinearShape) {
    if family == BackwardKernel::HopperOneLaunch {
        let choice = kernels
            .backward_kernels_for::<bf16>(shape, Nonlinearity::Relu, family)
            .unwrap();
        assert!(choice.one_launch, "{shape:?}: {choice}");
    }
    let mut rng = StdRng::seed_from_u64(90);
    let to_bf16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
    let host_x = to_bf16(random(shape.m * shape.k, &mut rng));
    let host_w = to_bf16(random(shape.n * shape.k, &mut rng));
    let x = kernels.stream().clone_htod(&host_x).unwrap();
    let w = kernels.stream().clone_htod(&host_w).unwrap();
    let mut y = kernels
        .stream()
        .alloc_zeros::<bf16>(shape.m * shape.n)
        .unwrap();
    let host_dy = to_bf16(random(shape.m * shape.n, &mut rng));
    let dy = kernels.stream().clone_htod(&host_dy).unwrap();
    let mut dx = kernels
        .stream()
        .alloc_zeros::<bf16>(shape.m * shape.k)
        .unwrap();
    let mut dw = kernels
        .stream()
        .alloc_zeros::<bf16>(shape.n * shape.k)
        .unwrap();
    let mut db = kernels.stream().alloc_zeros::<bf16>(shape.n).unwrap();
    let mut seed = kernels.stream().clone_htod(&[SEED, 0u64]).unwrap();
    let spec = LayerSpec::new(shape, Nonlinearity::Relu, DropoutSpec::new(0.5, 0, 0));
    // Nothing may be allocated during the capture.
    let workspace_bytes = kernels
        .backward_workspace_bytes::<bf16>(&spec, family)
        .unwrap();
    let mut workspace =
        (workspace_bytes > 0).then(|| kernels.stream().alloc_zeros::<u8>(workspace_bytes).unwrap());
    kernels
        .stream()
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    {
        let seed_view = seed.as_view();
        kernels
            .forward(
                &spec,
                &x,
                &w,
                None,
                &mut y,
                ForwardOptions {
                    config: Some(ForwardConfig::Wg64x128),
                    seed: SeedSource::Device(&seed_view),
                },
            )
            .unwrap();
        kernels
            .backward(
                &spec,
                &x,
                &w,
                &dy,
                Some(&y.as_view()),
                GradientsMut {
                    dx: Some(dx.as_view_mut()),
                    dw: Some(dw.as_view_mut()),
                    db: Some(db.as_view_mut()),
                },
                BackwardOptions {
                    seed: SeedSource::Device(&seed_view),
                    kernel: family,
                    workspace: workspace.as_mut().map(|w| w.as_view_mut()),
                    ..BackwardOptions::default()
                },
            )
            .unwrap();
    }
    let graph = kernels
        .stream()
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("captured");
    for subsequence in [3u64, 4] {
        kernels
            .stream()
            .memcpy_htod(&[SEED, subsequence], &mut seed)
            .unwrap();
        for output in [&mut y, &mut dx, &mut dw, &mut db] {
            let poison = vec![bf16::NAN; output.len()];
            kernels.stream().memcpy_htod(&poison, output).unwrap();
        }
        graph.launch().unwrap();
        let got = kernels.stream().clone_dtoh(&y).unwrap();
        let spec = LayerSpec::new(
            shape,
            Nonlinearity::Relu,
            DropoutSpec::new(0.5, SEED, subsequence),
        );
        let want = reference::forward_f64(&spec, &host_x, &host_w, None).unwrap();
        let err = reference::relative_l2_error(&reference::to_f64(&got), &want);
        assert!(
            err < 1e-2,
            "{family:?}, subsequence {subsequence}: relative L2 error {err:e}"
        );
        for (i, v) in got.iter().enumerate() {
            if !mask::keep(SEED, subsequence, 0.5, i as u64) {
                assert_eq!(
                    v.to_f32(),
                    0.0,
                    "{family:?}, subsequence {subsequence}: Y[{i}] was dropped"
                );
            }
        }
        // Every element on its own (a kept element written as 0 among many is invisible to the
        // L2 error): X and W are exact in bf16, the sum of |terms| is the layer on |X|, |W|
        // times the scale 2.
        let abs = |v: &[bf16]| -> Vec<bf16> {
            v.iter().map(|e| bf16::from_f32(e.to_f32().abs())).collect()
        };
        let (abs_x, abs_w) = (abs(&host_x), abs(&host_w));
        let abs_y: Vec<f64> = reference::preactivation_f64(shape, &abs_x, &abs_w, None)
            .unwrap()
            .into_iter()
            .map(|s| 2.0 * s)
            .collect();
        let what = format!("{family:?}, subsequence {subsequence}");
        check_elementwise(&format!("{what}: Y"), shape.n, &got, &want, &abs_y, shape.k);
        let want = reference::backward_f64(&spec, &host_x, &host_w, &host_dy, Some(&got)).unwrap();
        // dZ is dY times 0 or 2, exact in bf16.
        let abs_sums =
            reference::backward_f64(&spec, &abs_x, &abs_w, &abs(&host_dy), Some(&got)).unwrap();
        for (name, buffer, want, abs_sum, cols, terms) in [
            ("dX", &dx, &want.dx, &abs_sums.dx, shape.k, shape.n),
            ("dW", &dw, &want.dw, &abs_sums.dw, shape.k, shape.m),
            ("db", &db, &want.db, &abs_sums.db, shape.n, shape.m),
        ] {
            let got = kernels.stream().clone_dtoh(buffer).unwrap();
            check_elementwise(&format!("{what}: {name}"), cols, &got, want, abs_sum, terms);
            let err = reference::relative_l2_error(&reference::to_f64(&got), want);
            assert!(err < 1e-2, "{what}: {name} relative L2 error {err:e}");
        }
    }
}
