//! The candle op on CUDA tensors (feature `candle-cuda`): its output, and the gradients that
//! `Tensor::backward` computes through it, are bit-identical to direct [`LayerKernels`] calls on
//! the same stream, inputs, mask and workspace (the op's outputs and workspace not filled first,
//! the direct calls' poisoned), in every dtype, for ReLU and identity, with bias
//! (on a shape whose dW splits its reduction over blocks too), and after
//! `set_cuda_load_options(LoadOptions { hopper: false })` bit-identical to a handle made with
//! those options; and a shape with no input features is refused before anything is allocated.
//! Needs a GPU (the feature links libcuda at build time); without a usable device
//! it prints why and passes.

use candle_core::{DType, Device, Tensor, Var};
use fusedrop::candle::{cuda_load_options, fused_linear, set_cuda_load_options};
use fusedrop::cuda::backward::{BackwardKernel, BackwardOptions, GradientsMut};
use fusedrop::cuda::forward::ForwardOptions;
use fusedrop::cuda::{LayerKernels, LoadOptions};
use fusedrop::{DropoutSpec, Element, LayerSpec, LinearShape, Nonlinearity};
use half::{bf16, f16};

#[path = "common/gpu_open.rs"]
mod gpu_open;
use gpu_open::skip;

type Result<T> = candle_core::Result<T>;

/// (m, n, k): odd sizes (the mma.sync path), sizes the Hopper kernels take, and a long batch
/// over few outputs whose dW the mma.sync kernels split over several blocks per tile (k odd, so
/// not Hopper's path; 2 output tiles of 64 x 64 over 32 slices).
const SHAPES: [(usize, usize, usize); 3] = [(37, 29, 45), (256, 136, 512), (1024, 33, 75)];

fn device() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) => {
            skip("the candle CUDA checks", &e);
            None
        }
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|e| e.to_f64().to_bits()).collect()
}

fn host<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// The op (with whatever load options are set) against direct calls on a handle made with
/// `options`.
fn check<T>(device: &Device, dtype: DType, options: LoadOptions) -> Result<()>
where
    T: Element + candle_core::WithDType + cudarc::driver::DeviceRepr,
{
    let stream = device.as_cuda_device()?.cuda_stream();
    let kernels =
        LayerKernels::with_options(stream.clone(), options).expect("a handle on candle's stream");
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let dropout = DropoutSpec::new(0.1, 0xca2d1e + i as u64, 5);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), device)?.to_dtype(dtype)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (n, k), device)?.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, device)?.to_dtype(dtype)?)?;
            let r = Tensor::randn(0f32, 1.0, (m, n), device)?.to_dtype(dtype)?;
            let y = fused_linear(
                x.as_tensor(),
                &w,
                Some(b.as_tensor()),
                nonlinearity,
                dropout,
            )?;
            // d(sum(y * r))/dy = r, exactly: the direct backward takes r as dY.
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let (gx, gw, gb) = (
                grads.get(&x).expect("dX"),
                grads.get(&w).expect("dW"),
                grads.get(&b).expect("db"),
            );

            let spec = LayerSpec::new(LinearShape::new(m, n, k), nonlinearity, dropout);
            let upload = |t: &Tensor| -> Result<_> {
                stream
                    .clone_htod(&host::<T>(t)?)
                    .map_err(candle_core::Error::wrap)
            };
            let (xd, wd, bd, dyd) = (upload(&x)?, upload(&w)?, upload(&b)?, upload(&r)?);
            // The direct calls' outputs start as NaN and their workspace as 0xff bytes, so an
            // element they leave unwritten (or a workspace byte read before it is written) shows
            // as a difference from the op, whose buffers are not filled first.
            let poisoned = |len: usize| -> Result<_> {
                stream
                    .clone_htod(&vec![<T as Element>::from_f64(f64::NAN); len])
                    .map_err(candle_core::Error::wrap)
            };
            let mut yd = poisoned(m * n)?;
            kernels
                .forward(
                    &spec,
                    &xd,
                    &wd,
                    Some(&bd.as_view()),
                    &mut yd,
                    ForwardOptions::default(),
                )
                .map_err(candle_core::Error::wrap)?;
            let (mut dx, mut dw, mut db) = (poisoned(m * k)?, poisoned(n * k)?, poisoned(n)?);
            // The op passes the whole workspace the call can use; so does the direct call.
            let workspace_bytes = kernels
                .backward_workspace_bytes::<T>(&spec, BackwardKernel::Auto)
                .map_err(candle_core::Error::wrap)?;
            let mut workspace = stream
                .clone_htod(&vec![0xffu8; workspace_bytes.max(1)])
                .map_err(candle_core::Error::wrap)?;
            kernels
                .backward(
                    &spec,
                    &xd,
                    &wd,
                    &dyd,
                    Some(&yd.as_view()),
                    GradientsMut {
                        dx: Some(dx.as_view_mut()),
                        dw: Some(dw.as_view_mut()),
                        db: Some(db.as_view_mut()),
                    },
                    BackwardOptions {
                        workspace: (workspace_bytes > 0).then(|| workspace.as_view_mut()),
                        ..BackwardOptions::default()
                    },
                )
                .map_err(candle_core::Error::wrap)?;
            let down = |s: &cudarc::driver::CudaSlice<T>| -> Result<Vec<T>> {
                stream.clone_dtoh(s).map_err(candle_core::Error::wrap)
            };
            let what = format!("{dtype:?} {m}x{n}x{k} {nonlinearity:?} {options:?}");
            assert_eq!(bits(&host::<T>(&y)?), bits(&down(&yd)?), "{what}: Y");
            assert_eq!(bits(&host::<T>(gx)?), bits(&down(&dx)?), "{what}: dX");
            assert_eq!(bits(&host::<T>(gw)?), bits(&down(&dw)?), "{what}: dW");
            assert_eq!(bits(&host::<T>(gb)?), bits(&down(&db)?), "{what}: db");
        }
    }
    Ok(())
}

/// One test for both settings: the load options are process-wide, and the tests of one binary
/// run in parallel.
#[test]
fn the_candle_op_and_the_direct_calls_give_the_same_bits() -> Result<()> {
    let Some(device) = device() else {
        return Ok(());
    };
    assert_eq!(cuda_load_options(), LoadOptions::default());
    let no_hopper = LoadOptions { hopper: false };
    for options in [LoadOptions::default(), no_hopper] {
        set_cuda_load_options(options);
        assert_eq!(cuda_load_options(), options);
        check::<f32>(&device, DType::F32, options)?;
        check::<f16>(&device, DType::F16, options)?;
        check::<bf16>(&device, DType::BF16, options)?;
    }
    set_cuda_load_options(LoadOptions::default());
    Ok(())
}

/// The op's other paths on CUDA tensors against the same op on CPU tensors (the CPU
/// reference), within each dtype's tolerance: no bias, frozen weights and bias (dW and db not
/// asked for), an untracked X (dX not asked for), p = 0, 0.1 and 1, and X as a view at an odd
/// offset (not 16-byte aligned, so the kernels for any alignment run). Which gradients exist
/// must match too.
#[test]
fn the_paths_without_bias_or_with_frozen_operands_match_the_cpu_op() -> Result<()> {
    let Some(device) = device() else {
        return Ok(());
    };
    let (m, n, k) = (45, 24, 40);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let tolerance = match dtype {
            DType::F32 => f32::REL_L2_TOLERANCE,
            DType::F16 => f16::REL_L2_TOLERANCE,
            _ => bf16::REL_L2_TOLERANCE,
        };
        for p in [0.0f32, 0.1, 1.0] {
            // (bias, W and b tracked, X tracked, X read from element 1 of a larger buffer)
            for (with_bias, tracked_w, tracked_x, offset_x) in [
                (false, true, true, false),
                (true, false, true, false),
                (true, true, false, true),
            ] {
                let dropout = DropoutSpec::new(p, 0x0ff5e7, 9);
                let host = |rows: usize, cols: usize, std: f32| -> Result<Tensor> {
                    Tensor::randn(0f32, std, (rows, cols), &Device::Cpu)?.to_dtype(dtype)
                };
                let x_big = host(1, m * k + 1, 1.0)?.reshape(m * k + 1)?;
                let (w_host, b_host, r_host) = (
                    host(n, k, 0.5)?,
                    host(1, n, 1.0)?.reshape(n)?,
                    host(m, n, 1.0)?,
                );
                let case = format!(
                    "{dtype:?} p={p} bias={with_bias} W,b tracked={tracked_w} X tracked={tracked_x} \
                     X offset={offset_x}"
                );
                let mut results = Vec::new();
                for on in [&device, &Device::Cpu] {
                    let x_source = Var::from_tensor(&x_big.to_device(on)?)?;
                    // A row-major view one element in: 2 or 4 bytes past a 16-byte boundary.
                    let x = x_source
                        .narrow(0, usize::from(offset_x), m * k)?
                        .reshape((m, k))?;
                    let x = if tracked_x { x } else { x.detach() };
                    let w = Var::from_tensor(&w_host.to_device(on)?)?;
                    let b = Var::from_tensor(&b_host.to_device(on)?)?;
                    let (w_in, b_in) = if tracked_w {
                        (w.as_tensor().clone(), b.as_tensor().clone())
                    } else {
                        (w.as_tensor().detach(), b.as_tensor().detach())
                    };
                    let y = fused_linear(
                        &x,
                        &w_in,
                        with_bias.then_some(&b_in),
                        Nonlinearity::Relu,
                        dropout,
                    )?;
                    let grads = (&y * r_host.to_device(on)?)?.sum_all()?.backward()?;
                    let dx = grads.get(&x_source).cloned();
                    let (dw, db) = (grads.get(&w).cloned(), grads.get(&b).cloned());
                    assert_eq!(dx.is_some(), tracked_x, "{case}: dX present");
                    assert_eq!(dw.is_some(), tracked_w, "{case}: dW present");
                    assert_eq!(db.is_some(), tracked_w && with_bias, "{case}: db present");
                    results.push([Some(y), dx, dw, db]);
                }
                let [gpu, cpu] = [&results[0], &results[1]];
                for (name, (g, c)) in ["Y", "dX", "dW", "db"].iter().zip(gpu.iter().zip(cpu)) {
                    let (Some(g), Some(c)) = (g, c) else { continue };
                    let values = |t: &Tensor| -> Result<Vec<f64>> {
                        t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
                    };
                    let error = fusedrop::reference::relative_l2_error(&values(g)?, &values(c)?);
                    assert!(
                        error < tolerance,
                        "{case}: {name} relative L2 error {error:e} against the CPU op"
                    );
                }
            }
        }
    }
    Ok(())
}

/// No input features on CUDA tensors: refused before Y's `m*n` elements are allocated (X
/// `[2^40, 0]` and W `[2^40, 0]` hold nothing, so only the shape check stands between them and a
/// 2^80-element allocation).
#[test]
fn no_input_features_are_refused_before_anything_is_allocated() -> Result<()> {
    let Some(device) = device() else {
        return Ok(());
    };
    let no_features = |rows| Tensor::zeros((rows, 0), DType::BF16, &device);
    let result = fused_linear(
        &no_features(1 << 40)?,
        &no_features(1 << 40)?,
        None,
        Nonlinearity::Relu,
        DropoutSpec::new(0.5, 1, 0),
    );
    match result {
        Ok(t) => panic!("expected the k = 0 error, got a tensor {:?}", t.dims()),
        Err(e) => assert!(
            e.to_string().contains("expected k >= 1"),
            "error {e} does not say k must be at least 1"
        ),
    }
    Ok(())
}
