//! Where the demonstration's layers run: the CPU reference or the fused CUDA kernels (f32).
//! Both take the same [`LayerSpec`], so the model code does not know which one it uses.

use fusedrop::cuda::LayerKernels;
use fusedrop::{LayerSpec, Nonlinearity};

/// The gradients of one layer call, on the host.
pub struct Grads {
    /// Gradient with respect to the layer's input, `[m, k]`.
    pub dx: Vec<f32>,
    /// Gradient with respect to the weights, `[n, k]`.
    pub dw: Vec<f32>,
    /// Gradient with respect to the bias, `[n]`.
    pub db: Vec<f32>,
}

/// The backend a run uses.
pub enum Backend {
    /// `fusedrop::reference` in f32 on this CPU.
    Cpu,
    /// `fusedrop::cuda` kernels in f32 on a GPU.
    Cuda {
        /// The kernels, on the stream every launch and copy goes to.
        kernels: LayerKernels,
        /// The GPU's name, for the report.
        name: String,
    },
}

/// What `--device` asked for (the variants' names are the flag's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The GPU when one is usable, else the CPU (the default).
    Auto,
    /// The CPU reference.
    Cpu,
    /// The GPU, or an error.
    #[value(alias = "gpu")]
    Cuda,
}

impl Backend {
    /// Opens the backend for `choice`. With [`DeviceChoice::Auto`] an unusable GPU is not an
    /// error: the CPU is used and the returned note says why.
    pub fn open(choice: DeviceChoice) -> Result<(Backend, Option<String>), fusedrop::Error> {
        if choice == DeviceChoice::Cpu {
            return Ok((Backend::Cpu, None));
        }
        match Self::open_cuda() {
            Ok(backend) => Ok((backend, None)),
            Err(e) if choice == DeviceChoice::Auto => Ok((
                Backend::Cpu,
                Some(format!(
                    "no usable GPU ({e}); running on the CPU reference instead"
                )),
            )),
            Err(e) => Err(e),
        }
    }

    fn open_cuda() -> fusedrop::Result<Backend> {
        let ctx = fusedrop::cuda::open_device(0)?;
        let name = ctx.name().unwrap_or_else(|_| "GPU 0".into());
        Ok(Backend::Cuda {
            kernels: LayerKernels::new(ctx.default_stream())?,
            name,
        })
    }

    /// A one-line description for the report.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "CPU reference (fusedrop::reference, f32)".into(),
            Backend::Cuda { name, .. } => {
                format!("CUDA fused kernels (fusedrop::cuda, f32) on {name}")
            }
        }
    }

    /// The short name used in file names and the JSON summary.
    pub fn short_name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda { .. } => "cuda",
        }
    }

    /// Whether two runs may train at the same time on separate threads (the CPU backend keeps
    /// no state; the GPU runs are queued on one stream instead).
    pub fn parallel(&self) -> bool {
        matches!(self, Backend::Cpu)
    }

    /// `Y = dropout(act(X·Wᵀ + b))` for `spec`.
    pub fn forward(
        &self,
        spec: &LayerSpec,
        x: &[f32],
        w: &[f32],
        b: &[f32],
    ) -> fusedrop::Result<Vec<f32>> {
        match self {
            Backend::Cpu => cpu::forward(spec, x, w, b),
            Backend::Cuda { kernels, .. } => gpu::forward(kernels, spec, x, w, b),
        }
    }

    /// The gradients of the call `spec` that produced `y` from `x` and `w`, given `dy`.
    pub fn backward(
        &self,
        spec: &LayerSpec,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        y: &[f32],
    ) -> fusedrop::Result<Grads> {
        let y_saved = (spec.nonlinearity == Nonlinearity::Relu).then_some(y);
        match self {
            Backend::Cpu => cpu::backward(spec, x, w, dy, y_saved),
            Backend::Cuda { kernels, .. } => gpu::backward(kernels, spec, x, w, dy, y_saved),
        }
    }
}

mod cpu {
    use super::Grads;
    use fusedrop::{reference, LayerSpec};

    pub fn forward(
        spec: &LayerSpec,
        x: &[f32],
        w: &[f32],
        b: &[f32],
    ) -> fusedrop::Result<Vec<f32>> {
        reference::forward(spec, x, w, Some(b))
    }

    pub fn backward(
        spec: &LayerSpec,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        y_saved: Option<&[f32]>,
    ) -> fusedrop::Result<Grads> {
        let g = reference::backward(spec, x, w, dy, y_saved)?;
        Ok(Grads {
            dx: g.dx,
            dw: g.dw,
            db: g.db,
        })
    }
}

/// Each call copies its operands to the GPU, launches, and copies the result back: the model
/// and the optimiser live on the host, and at the demo's sizes the copies cost little.
mod gpu {
    use super::Grads;
    use fusedrop::cuda::backward::{BackwardOptions, GradientsMut};
    use fusedrop::cuda::forward::ForwardOptions;
    use fusedrop::cuda::LayerKernels;
    use fusedrop::LayerSpec;

    pub fn forward(
        kernels: &LayerKernels,
        spec: &LayerSpec,
        x: &[f32],
        w: &[f32],
        b: &[f32],
    ) -> fusedrop::Result<Vec<f32>> {
        let stream = kernels.stream();
        let x = stream.clone_htod(x)?;
        let w = stream.clone_htod(w)?;
        let b = stream.clone_htod(b)?;
        let mut y = stream.alloc_zeros::<f32>(spec.shape.m * spec.shape.n)?;
        kernels.forward(
            spec,
            &x,
            &w,
            Some(&b.as_view()),
            &mut y,
            ForwardOptions::default(),
        )?;
        Ok(stream.clone_dtoh(&y)?)
    }

    pub fn backward(
        kernels: &LayerKernels,
        spec: &LayerSpec,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        y_saved: Option<&[f32]>,
    ) -> fusedrop::Result<Grads> {
        let shape = spec.shape;
        let stream = kernels.stream();
        let x = stream.clone_htod(x)?;
        let w = stream.clone_htod(w)?;
        let dy = stream.clone_htod(dy)?;
        let y_saved = y_saved.map(|y| stream.clone_htod(y)).transpose()?;
        let mut dx = stream.alloc_zeros::<f32>(shape.m * shape.k)?;
        let mut dw = stream.alloc_zeros::<f32>(shape.n * shape.k)?;
        let mut db = stream.alloc_zeros::<f32>(shape.n)?;
        kernels.backward(
            spec,
            &x,
            &w,
            &dy,
            y_saved.as_ref().map(|y| y.as_view()).as_ref(),
            GradientsMut {
                dx: Some(dx.as_view_mut()),
                dw: Some(dw.as_view_mut()),
                db: Some(db.as_view_mut()),
            },
            BackwardOptions::default(),
        )?;
        Ok(Grads {
            dx: stream.clone_dtoh(&dx)?,
            dw: stream.clone_dtoh(&dw)?,
            db: stream.clone_dtoh(&db)?,
        })
    }
}
