//! The fused layer in [candle](https://github.com/huggingface/candle) (feature `candle`): an op
//! with a backward pass, so that `Tensor::backward` differentiates through it, and a module
//! ([`FusedLinear`]) that drops into a candle model in place of `Linear` + `relu` + `Dropout`.
//!
//! On CPU tensors the op runs the CPU reference ([`crate::reference`]); on CUDA tensors
//! (feature `candle-cuda`, which turns on candle-core's CUDA backend) it launches the crate's
//! forward and backward kernels on the tensor's own stream. With `candle` alone a CUDA tensor
//! gets candle's "no cuda implementation" error. f32, f16 and bf16; X `[m, k]`, W `[n, k]`
//! (candle-nn's `Linear` layout), b `[n]`, all of one dtype (an error names what is wrong
//! otherwise), in any layout: [`fused_linear`] copies a non-contiguous operand first, as
//! candle-nn's `Linear` does.
//!
//! The ReLU's gradient at exactly zero follows PyTorch, not candle: dZ passes where the output
//! is positive, so an element whose pre-activation is exactly 0 gets no gradient (candle's own
//! `relu` passes it there). The mask is not stored, and Y > 0 is what the backward can see.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use fusedrop::{candle::fused_linear, DropoutSpec, Nonlinearity};
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::randn(0f32, 1.0, (8, 4), &Device::Cpu)?;
//! let w = Var::randn(0f32, 0.5, (3, 4), &Device::Cpu)?;
//! let y = fused_linear(&x, w.as_tensor(), None, Nonlinearity::Relu, DropoutSpec::new(0.5, 7, 0))?;
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).unwrap().dims(), &[3, 4]);
//! # Ok(()) }
//! ```

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, ModuleT, Shape, Storage, Tensor, WithDType,
};
use half::{bf16, f16};

use crate::element::Element;
use crate::layer::{DropoutGenerator, DropoutSpec, LayerSpec, LinearShape, Nonlinearity};
use crate::reference;

/// A fusedrop error as a candle error.
fn to_candle(e: crate::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// An invalid-argument error as a candle error.
fn invalid(msg: String) -> candle_core::Error {
    to_candle(crate::Error::InvalidArgument(msg))
}

/// `Y = dropout_p(act(X·Wᵀ + b))` as a candle op: X `[m, k]`, W `[n, k]`, optional b `[n]`.
///
/// `dropout` names the mask (p, seed, subsequence); take a fresh subsequence for every call from a
/// [`DropoutGenerator`], or use [`FusedLinear`], which does. The backward pass recovers the mask
/// from the output for ReLU and redraws it from (seed, subsequence) for the identity, so nothing
/// but the output is kept for it. Gradients are computed for the operands candle tracks (a `Var`,
/// or a tensor computed from one): X, W and b each only when tracked, so frozen weights cost no
/// dW. Non-contiguous operands are copied to contiguous ones first.
/// On CUDA tensors the backward also allocates, for the duration of the call, the scratch memory
/// [`LayerKernels::backward_workspace_bytes`](crate::cuda::LayerKernels::backward_workspace_bytes)
/// asks for: dY times the mask for the identity with p > 0 (m · n elements), and the partial sums
/// of narrow products split over several blocks; none on most ReLU shapes.
pub fn fused_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    nonlinearity: Nonlinearity,
    dropout: DropoutSpec,
) -> candle_core::Result<Tensor> {
    crate::validate::check_probability(dropout.p).map_err(to_candle)?;
    let op = FusedLinearOp {
        nonlinearity,
        dropout,
    };
    // The kernels and the reference read row-major operands; `contiguous` is the tensor itself
    // when it already is one, and otherwise a copy that gradients flow back through.
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// The op behind [`fused_linear`]: a `CustomOp2` (X, W) without bias, a `CustomOp3` (X, W, b)
/// with one.
#[derive(Debug, Clone, Copy)]
struct FusedLinearOp {
    nonlinearity: Nonlinearity,
    dropout: DropoutSpec,
}

/// A contiguous operand's element range in its storage, or an error naming the operand.
fn contiguous_range(name: &str, layout: &Layout) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        invalid(format!(
            "{name} of shape {:?} has strides {:?}; expected a contiguous (row-major) tensor \
             (call .contiguous() first)",
            layout.dims(),
            layout.stride()
        ))
    })
}

impl FusedLinearOp {
    /// Checks ranks, sizes, contiguity and dtypes, and returns the call's spec.
    fn spec(
        &self,
        x: (&Layout, DType),
        w: (&Layout, DType),
        b: Option<(&Layout, DType)>,
    ) -> candle_core::Result<LayerSpec> {
        let (&[m, k], &[n, w_k]) = (x.0.dims(), w.0.dims()) else {
            return Err(invalid(format!(
                "X has shape {:?} and W {:?}; expected X [m, k] and W [n, k] (rank 2 each)",
                x.0.dims(),
                w.0.dims()
            )));
        };
        if w_k != k {
            return Err(invalid(format!(
                "W has shape [{n}, {w_k}]; expected [n, k] with k = {k}, the columns of X"
            )));
        }
        if let Some((b, _)) = b {
            if b.dims() != [n] {
                return Err(invalid(format!(
                    "b has shape {:?}; expected [{n}], one per row of W",
                    b.dims()
                )));
            }
        }
        for (name, dtype) in [("W", Some(w.1)), ("b", b.map(|b| b.1))] {
            if let Some(dtype) = dtype.filter(|&d| d != x.1) {
                return Err(invalid(format!(
                    "{name} is {dtype:?} and X is {:?}; expected one dtype for every operand",
                    x.1
                )));
            }
        }
        if !matches!(x.1, DType::F32 | DType::F16 | DType::BF16) {
            return Err(invalid(format!(
                "X is {:?}; expected F32, F16 or BF16",
                x.1
            )));
        }
        contiguous_range("X", x.0)?;
        contiguous_range("W", w.0)?;
        if let Some((b, _)) = b {
            contiguous_range("b", b)?;
        }
        // Before anything is allocated for Y: with k = 0, X and W hold no elements whatever m and
        // n are, so m*n could be as large as the caller likes.
        crate::validate::check_shape(LinearShape::new(m, n, k)).map_err(to_candle)?;
        Ok(LayerSpec::new(
            LinearShape::new(m, n, k),
            self.nonlinearity,
            self.dropout,
        ))
    }

    /// [`Self::spec`] of the operands as a backend (CPU or CUDA) hands them to the op.
    fn storage_spec<S: BackendStorage>(
        &self,
        x: (&S, &Layout),
        w: (&S, &Layout),
        b: Option<(&S, &Layout)>,
    ) -> candle_core::Result<LayerSpec> {
        self.spec(
            (x.1, x.0.dtype()),
            (w.1, w.0.dtype()),
            b.map(|(s, l)| (l, s.dtype())),
        )
    }

    fn cpu_forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let spec = self.storage_spec(x, w, b)?;
        let y = match x.0.dtype() {
            DType::F32 => cpu_forward::<f32>(&spec, x, w, b)?,
            DType::F16 => cpu_forward::<f16>(&spec, x, w, b)?,
            _ => cpu_forward::<bf16>(&spec, x, w, b)?,
        };
        Ok((y, Shape::from((spec.shape.m, spec.shape.n))))
    }

    /// dX, dW and db (when there is a bias), each only when its operand is tracked, on X's
    /// device.
    fn gradients(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Gradients> {
        let spec = self.spec(
            (x.layout(), x.dtype()),
            (w.layout(), w.dtype()),
            b.map(|b| (b.layout(), b.dtype())),
        )?;
        // candle hands the gradient in any layout; the kernels and the reference read it
        // row-major. The output was made by the forward pass and is contiguous already.
        let dy = dy.contiguous()?;
        let y = y.contiguous()?;
        let wanted = Wanted {
            dx: x.track_op(),
            dw: w.track_op(),
            db: b.is_some_and(Tensor::track_op),
        };
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = w.storage_and_layout();
        let (y_storage, y_layout) = y.storage_and_layout();
        let (dy_storage, dy_layout) = dy.storage_and_layout();
        let layouts = [x_layout, w_layout, y_layout, dy_layout];
        match (&*x_storage, &*w_storage, &*y_storage, &*dy_storage) {
            (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(ys), Storage::Cpu(dys)) => {
                let storages = [xs, ws, ys, dys];
                match x.dtype() {
                    DType::F32 => cpu_backward::<f32>(&spec, storages, layouts, wanted),
                    DType::F16 => cpu_backward::<f16>(&spec, storages, layouts, wanted),
                    _ => cpu_backward::<bf16>(&spec, storages, layouts, wanted),
                }
            }
            #[cfg(feature = "candle-cuda")]
            (Storage::Cuda(xs), Storage::Cuda(ws), Storage::Cuda(ys), Storage::Cuda(dys)) => {
                let storages = [xs, ws, ys, dys];
                match x.dtype() {
                    DType::F32 => cuda::backward::<f32>(&spec, storages, layouts, wanted),
                    DType::F16 => cuda::backward::<f16>(&spec, storages, layouts, wanted),
                    _ => cuda::backward::<bf16>(&spec, storages, layouts, wanted),
                }
            }
            _ => Err(invalid(format!(
                "the backward pass of fusedrop's layer got X on {:?}, W on {:?}, Y on {:?} and \
                 dY on {:?}; expected all on one CPU{}",
                x.device().location(),
                w.device().location(),
                y.device().location(),
                dy.device().location(),
                if cfg!(feature = "candle-cuda") {
                    " or CUDA device"
                } else {
                    " device (CUDA tensors need the `candle-cuda` feature)"
                }
            ))),
        }
    }
}

/// Which gradients the backward pass is asked for: those of the tracked operands.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    dx: bool,
    dw: bool,
    db: bool,
}

/// dX, dW and db, each `None` where it was not wanted.
type Gradients = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The contiguous elements of an operand (its range was checked by [`FusedLinearOp::spec`]).
fn cpu_slice<'a, T: WithDType>(
    name: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = contiguous_range(name, layout)?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

fn cpu_forward<T: Element + WithDType>(
    spec: &LayerSpec,
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> candle_core::Result<CpuStorage> {
    let x = cpu_slice::<T>("X", x.0, x.1)?;
    let w = cpu_slice::<T>("W", w.0, w.1)?;
    let b = b.map(|(s, l)| cpu_slice::<T>("b", s, l)).transpose()?;
    let y = reference::forward(spec, x, w, b).map_err(to_candle)?;
    Ok(T::to_cpu_storage_owned(y))
}

fn cpu_backward<T: Element + WithDType>(
    spec: &LayerSpec,
    [x, w, y, dy]: [&CpuStorage; 4],
    [x_layout, w_layout, y_layout, dy_layout]: [&Layout; 4],
    wanted: Wanted,
) -> candle_core::Result<Gradients> {
    let x = cpu_slice::<T>("X", x, x_layout)?;
    let w = cpu_slice::<T>("W", w, w_layout)?;
    let y = cpu_slice::<T>("Y", y, y_layout)?;
    let dy = cpu_slice::<T>("dY", dy, dy_layout)?;
    let grads = reference::backward(spec, x, w, dy, Some(y)).map_err(to_candle)?;
    let LinearShape { m, n, k } = spec.shape;
    let tensor = |values: Vec<T>, shape: Shape| {
        Tensor::from_storage(
            Storage::Cpu(T::to_cpu_storage_owned(values)),
            shape,
            BackpropOp::none(),
            false,
        )
    };
    // The reference computes all three; what was not asked for is dropped.
    Ok((
        wanted.dx.then(|| tensor(grads.dx, Shape::from((m, k)))),
        wanted.dw.then(|| tensor(grads.dw, Shape::from((n, k)))),
        wanted.db.then(|| tensor(grads.db, Shape::from(n))),
    ))
}

impl CustomOp2 for FusedLinearOp {
    fn name(&self) -> &'static str {
        "fusedrop-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_forward((x, x_layout), (w, w_layout), None)
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda_forward((x, x_layout), (w, w_layout), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.gradients(x, w, None, y, dy)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for FusedLinearOp {
    fn name(&self) -> &'static str {
        "fusedrop-linear-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_forward((x, x_layout), (w, w_layout), Some((b, b_layout)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.cuda_forward((x, x_layout), (w, w_layout), Some((b, b_layout)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.gradients(x, w, Some(b), y, dy)
    }
}

/// Sets what the op loads on CUDA tensors from now on ([`LoadOptions`](crate::cuda::LoadOptions);
/// by default every module this build has for the GPU). With `LoadOptions { hopper: false }`
/// every later call on an H100 or H200 takes the mma.sync and SIMT kernels other GPUs run: a way
/// to keep training past a fault in a Hopper kernel, as
/// [`LayerKernels::with_options`](crate::cuda::LayerKernels::with_options) is for direct calls.
///
/// The setting is process-wide, like candle's own `set_gemm_reduced_precision_*`: the op keeps
/// one kernel handle per (CUDA context, stream, options), so the first call after a change on a
/// context loads that context's modules again (module loading is illegal during stream capture:
/// change the options before capturing), and a change back reuses the handle made before.
#[cfg(feature = "candle-cuda")]
pub fn set_cuda_load_options(options: crate::cuda::LoadOptions) {
    cuda::set_load_options(options);
}

/// What the op loads on CUDA tensors: the last [`set_cuda_load_options`], or the default.
#[cfg(feature = "candle-cuda")]
pub fn cuda_load_options() -> crate::cuda::LoadOptions {
    cuda::load_options()
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The CUDA side of the op: the crate's kernels on the candle tensors' own stream.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::cuda::CudaDType;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaDevice, CudaStorage, Layout, Shape, Storage, Tensor};
    use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr};
    use half::{bf16, f16};

    use super::{contiguous_range, to_candle, FusedLinearOp, Gradients, Wanted};
    use crate::cuda::backward::{BackwardKernel, BackwardOptions, GradientsMut};
    use crate::cuda::forward::ForwardOptions;
    use crate::cuda::{LayerKernels, LoadOptions};
    use crate::element::Element;
    use crate::error::Error;
    use crate::layer::{LayerSpec, LinearShape};

    /// What the op loads on a context it has no handle for with these options
    /// ([`super::set_cuda_load_options`]).
    static LOAD_OPTIONS: Mutex<LoadOptions> = Mutex::new(LoadOptions::DEFAULT);

    pub(super) fn set_load_options(options: LoadOptions) {
        // A poisoned lock still holds a valid LoadOptions (a plain Copy value).
        *LOAD_OPTIONS.lock().unwrap_or_else(|e| e.into_inner()) = options;
    }

    pub(super) fn load_options() -> LoadOptions {
        *LOAD_OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel handle for a candle device's stream and the current load options, made on
    /// first use.
    ///
    /// candle's custom ops receive storages, not a place to keep state per device, so the handles
    /// live in a process-wide map keyed by (context, stream, options): one
    /// [`LayerKernels::with_options`] (module loading) per CUDA context and options, and
    /// [`LayerKernels::on_stream`] for each further stream of that context (candle devices made
    /// for one GPU share its primary context, each with its own stream). The map holds each
    /// stream, so a key cannot be reused by a later stream.
    fn kernels_for(stream: &Arc<CudaStream>) -> candle_core::Result<LayerKernels> {
        type Key = (usize, usize, LoadOptions);
        static HANDLES: OnceLock<Mutex<HashMap<Key, LayerKernels>>> = OnceLock::new();
        let options = load_options();
        let mut handles = HANDLES
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .map_err(|_| {
                to_candle(Error::Cuda(
                    "the candle adapter's kernel handle lock was poisoned by a panic".into(),
                ))
            })?;
        let context = stream.context().cu_ctx() as usize;
        let key = (context, stream.cu_stream() as usize, options);
        if let Some(kernels) = handles.get(&key) {
            return Ok(kernels.clone());
        }
        let same_context = handles
            .iter()
            .find(|((ctx, _, loaded), _)| *ctx == context && *loaded == options)
            .map(|(_, kernels)| kernels.clone());
        let kernels = match same_context {
            Some(other) => other.on_stream(stream.clone()),
            None => LayerKernels::with_options(stream.clone(), options),
        }
        .map_err(to_candle)?;
        handles.insert(key, kernels.clone());
        Ok(kernels)
    }

    /// The contiguous elements of an operand as a view of its device buffer.
    fn view<'a, T: Element + CudaDType>(
        name: &str,
        storage: &'a CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<CudaView<'a, T>> {
        let (start, end) = contiguous_range(name, layout)?;
        Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
    }

    /// A device buffer of `len` elements for an output (or the workspace) of the fusedrop call
    /// queued next, not filled first. Each call writes every element of its outputs before
    /// anything reads them (an empty reduction writes zeros) and every byte of the workspace it
    /// reads; the GPU tests prove it with outputs and workspaces poisoned before each call. A
    /// zero fill would be one more pass over memory on the stream (for the `wide` benchmark
    /// shape's Y, 64 MiB written twice instead of once).
    fn unfilled<T: DeviceRepr>(
        device: &CudaDevice,
        len: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        // SAFETY: the buffer goes only to the fusedrop call that follows on the same stream,
        // which writes every element it reads or returns; if the call fails, the buffer is
        // dropped unread.
        unsafe { device.alloc::<T>(len) }
    }

    impl FusedLinearOp {
        pub(super) fn cuda_forward(
            &self,
            x: (&CudaStorage, &Layout),
            w: (&CudaStorage, &Layout),
            b: Option<(&CudaStorage, &Layout)>,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            use candle_core::backend::BackendStorage;
            let spec = self.storage_spec(x, w, b)?;
            let y = match x.0.dtype() {
                candle_core::DType::F32 => launch_forward::<f32>(&spec, x, w, b)?,
                candle_core::DType::F16 => launch_forward::<f16>(&spec, x, w, b)?,
                _ => launch_forward::<bf16>(&spec, x, w, b)?,
            };
            Ok((y, Shape::from((spec.shape.m, spec.shape.n))))
        }
    }

    fn launch_forward<T: Element + CudaDType>(
        spec: &LayerSpec,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        b: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<CudaStorage> {
        let device = x.0.device.clone();
        let kernels = kernels_for(&device.cuda_stream())?;
        let x_view = view::<T>("X", x.0, x.1)?;
        let w_view = view::<T>("W", w.0, w.1)?;
        let b_view = b.map(|(s, l)| view::<T>("b", s, l)).transpose()?;
        let mut y = unfilled::<T>(&device, spec.shape.m * spec.shape.n)?;
        kernels
            .forward(
                spec,
                &x_view,
                &w_view,
                b_view.as_ref(),
                &mut y,
                ForwardOptions::default(),
            )
            .map_err(to_candle)?;
        Ok(CudaStorage::wrap_cuda_slice(y, device))
    }

    pub(super) fn backward<T: Element + CudaDType>(
        spec: &LayerSpec,
        [x, w, y, dy]: [&CudaStorage; 4],
        [x_layout, w_layout, y_layout, dy_layout]: [&Layout; 4],
        wanted: Wanted,
    ) -> candle_core::Result<Gradients> {
        let LinearShape { m, n, k } = spec.shape;
        let device = x.device.clone();
        let kernels = kernels_for(&device.cuda_stream())?;
        let x_view = view::<T>("X", x, x_layout)?;
        let w_view = view::<T>("W", w, w_layout)?;
        let y_view = view::<T>("Y", y, y_layout)?;
        let dy_view = view::<T>("dY", dy, dy_layout)?;
        let mut dx = wanted
            .dx
            .then(|| unfilled::<T>(&device, m * k))
            .transpose()?;
        let mut dw = wanted
            .dw
            .then(|| unfilled::<T>(&device, n * k))
            .transpose()?;
        let mut db = wanted.db.then(|| unfilled::<T>(&device, n)).transpose()?;
        let grads = GradientsMut {
            dx: dx.as_mut().map(|d| d.as_view_mut()),
            dw: dw.as_mut().map(|d| d.as_view_mut()),
            db: db.as_mut().map(|d| d.as_view_mut()),
        };
        // The whole workspace the call can use: the identity's mask applied to dY once, and the
        // partial sums of the narrow products the mma.sync and SIMT kernels split (none on most
        // shapes).
        let workspace_bytes = kernels
            .backward_workspace_bytes::<T>(spec, BackwardKernel::Auto)
            .map_err(to_candle)?;
        let mut workspace = (workspace_bytes > 0)
            .then(|| unfilled::<u8>(&device, workspace_bytes))
            .transpose()?;
        kernels
            .backward(
                spec,
                &x_view,
                &w_view,
                &dy_view,
                Some(&y_view),
                grads,
                BackwardOptions {
                    workspace: workspace.as_mut().map(|ws| ws.as_view_mut()),
                    ..BackwardOptions::default()
                },
            )
            .map_err(to_candle)?;
        let tensor = |slice: cudarc::driver::CudaSlice<T>, shape: Shape| {
            Tensor::from_storage(
                Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone())),
                shape,
                BackpropOp::none(),
                false,
            )
        };
        Ok((
            dx.map(|d| tensor(d, Shape::from((m, k)))),
            dw.map(|d| tensor(d, Shape::from((n, k)))),
            db.map(|d| tensor(d, Shape::from(n))),
        ))
    }
}

/// A fused `Linear` → activation → dropout layer for candle models, with weights in candle-nn's
/// `Linear` layout (`weight` `[out, in]`, `bias` `[out]`).
///
/// In training (`forward_t(xs, true)`) every call takes the next Philox subsequence of the layer's
/// own [`DropoutGenerator`], so no two calls share a mask; in evaluation (`train == false`)
/// there is no dropout and the generator does not move. Inputs may have any number of leading
/// dimensions (`[.., in]` → `[.., out]`), as with candle-nn's `Linear`.
#[derive(Debug)]
pub struct FusedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    nonlinearity: Nonlinearity,
    p: f32,
    generator: Mutex<DropoutGenerator>,
}

impl FusedLinear {
    /// A layer over existing weights (`[out, in]`) and bias (`[out]`), dropping with
    /// probability `p` in training, its masks drawn from `seed` starting at subsequence 0.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        nonlinearity: Nonlinearity,
        p: f32,
        seed: u64,
    ) -> candle_core::Result<Self> {
        crate::validate::check_probability(p).map_err(to_candle)?;
        Ok(Self {
            weight,
            bias,
            nonlinearity,
            p,
            generator: Mutex::new(DropoutGenerator::new(seed)),
        })
    }

    /// The weights, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The Philox subsequence the next training call will use (for checkpoints: resume with
    /// [`FusedLinear::resume_at_subsequence`]).
    pub fn next_subsequence(&self) -> u64 {
        self.generator().peek_subsequence()
    }

    /// Continues the dropout masks from `subsequence`, as a checkpointed layer had reached.
    pub fn resume_at_subsequence(&self, subsequence: u64) {
        let seed = self.generator().seed();
        *self.generator() = DropoutGenerator::with_subsequence(seed, subsequence);
    }

    fn generator(&self) -> std::sync::MutexGuard<'_, DropoutGenerator> {
        // The generator is two integers, always in a valid state: a panic elsewhere while the
        // lock was held leaves nothing to repair.
        self.generator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ModuleT for FusedLinear {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // In training the generator stays locked for the call and moves on only once the call
        // has succeeded: a call refused for its input uses up no subsequence (resuming from
        // `next_subsequence` stays exact), and two threads never share one.
        let mut generator = train.then(|| self.generator());
        let dropout = match &generator {
            Some(generator) => DropoutSpec {
                p: self.p,
                seed: generator.seed(),
                subsequence: generator.peek_subsequence(),
            },
            None => DropoutSpec::NONE,
        };
        let dims = xs.dims();
        let Some((&k, leading)) = dims.split_last() else {
            return Err(invalid(
                "FusedLinear got a scalar; expected an input of shape [.., in]".into(),
            ));
        };
        let rows = leading.iter().product::<usize>();
        let x = if dims.len() == 2 {
            xs.clone()
        } else {
            xs.reshape((rows, k))?
        };
        let y = fused_linear(
            &x,
            &self.weight,
            self.bias.as_ref(),
            self.nonlinearity,
            dropout,
        )?;
        let y = if dims.len() == 2 {
            y
        } else {
            let mut out_dims = leading.to_vec();
            out_dims.push(self.weight.dim(0)?);
            y.reshape(out_dims)?
        };
        if let Some(generator) = generator.as_mut() {
            generator.next(self.p);
        }
        Ok(y)
    }
}

/// A [`FusedLinear`] of `in_dim` → `out_dim` with a bias, its variables `weight` and `bias`
/// taken from `vb` and initialised as candle-nn's `linear` initialises them (Kaiming-normal
/// weights, bias uniform in ±1/√in_dim), so that it replaces `candle_nn::linear` + activation
/// + `Dropout::new(p)` one for one.
pub fn fused_linear_layer(
    in_dim: usize,
    out_dim: usize,
    nonlinearity: Nonlinearity,
    p: f32,
    seed: u64,
    vb: candle_nn::VarBuilder,
) -> candle_core::Result<FusedLinear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1.0 / (in_dim as f64).sqrt();
    let bias = vb.get_with_hints(
        out_dim,
        "bias",
        candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    FusedLinear::new(weight, Some(bias), nonlinearity, p, seed)
}
