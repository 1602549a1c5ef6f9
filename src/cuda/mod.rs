//! The CUDA side: device probing, kernel loading, and the safe wrappers over each kernel.
//!
//! Callers bring their own [`CudaStream`] and buffers ([`CudaSlice`],
//! [`CudaView`], [`CudaViewMut`](cudarc::driver::CudaViewMut)); nothing here creates a hidden
//! context or synchronises behind the caller's back. Every check runs before a launch.
//!
//! ```no_run
//! # fn main() -> fusedrop::Result<()> {
//! let ctx = fusedrop::cuda::open_device(0)?; // errors (never panics) without a driver
//! let stream = ctx.default_stream();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtr,
    DevicePtrMut, DeviceRepr, SyncOnDrop,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
use crate::layer::{Dropout, Geometry};
use crate::mask;

pub use cudarc;

pub mod backward;
pub mod dropout;
pub mod forward;
pub mod launch_table;
mod tensor_map;

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// Whether build.rs compiled the CUDA kernels into this build.
pub fn kernels_built() -> bool {
    KERNEL_IMAGES.is_some()
}

/// Whether build.rs compiled kernel module `name` (a `kernels/<name>.cu` file) into this build.
/// The Hopper modules are left out of builds whose `FUSEDROP_CUDA_ARCHS` lacks 90.
pub fn module_built(name: &str) -> bool {
    KERNEL_IMAGES.is_some_and(|images| images.iter().any(|image| image.name == name))
}

/// Whether the CUDA driver library (libcuda) can be loaded on this machine.
///
/// cudarc panics when a driver call finds no library; this probe lets every entry point return
/// [`Error::DriverUnavailable`] instead.
#[cfg(not(feature = "dynamic-linking"))]
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: is_culib_present only tries to open the shared library by name and drops it.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

/// Whether the CUDA driver library (libcuda) can be loaded on this machine: with the
/// `dynamic-linking` feature it was linked at build time and the process could not have started
/// without it, so this is `true`.
#[cfg(feature = "dynamic-linking")]
pub fn driver_present() -> bool {
    true
}

/// Opens GPU `ordinal` after checking that the kernels were built and a driver is present.
/// This is the entry point that never panics on a machine without CUDA.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !kernels_built() {
        return Err(Error::KernelsNotBuilt);
    }
    if !driver_present() {
        return Err(Error::DriverUnavailable(
            "libcuda could not be loaded (no NVIDIA driver installed, or not on the loader path)"
                .into(),
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| Error::DriverUnavailable(format!("cuInit/cuDeviceGetCount failed: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::DriverUnavailable(format!(
            "GPU {ordinal} requested but the driver reports {count} GPU(s)"
        )));
    }
    Ok(CudaContext::new(ordinal)?)
}

/// Per-context state: the compute capability and the loaded kernel modules.
struct ContextKernels {
    compute_capability: (i32, i32),
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
}

/// Loaded modules, keyed by the context handle. Modules are loaded once per context and kept
/// for the life of the process (they hold their context, as a caller's own modules would).
fn registry() -> &'static Mutex<HashMap<usize, ContextKernels>> {
    static REGISTRY: OnceLock<Mutex<HashMap<usize, ContextKernels>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

fn with_context<R>(
    ctx: &Arc<CudaContext>,
    f: impl FnOnce(&mut ContextKernels) -> Result<R>,
) -> Result<R> {
    KERNEL_IMAGES.ok_or(Error::KernelsNotBuilt)?;
    let mut registry = registry()
        .lock()
        .map_err(|_| Error::Cuda("the kernel registry lock was poisoned by a panic".into()))?;
    let kernels = match registry.entry(ctx.cu_ctx() as usize) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => entry.insert(ContextKernels {
            compute_capability: ctx.compute_capability()?,
            modules: HashMap::new(),
            functions: HashMap::new(),
        }),
    };
    f(kernels)
}

/// The compute capability of the stream's GPU (cached per context).
pub fn compute_capability(stream: &Arc<CudaStream>) -> Result<(i32, i32)> {
    with_context(stream.context(), |k| Ok(k.compute_capability))
}

/// Fails with [`Error::UnsupportedDevice`] when the stream's GPU is older than `major.minor`.
pub(crate) fn require_compute_capability(
    stream: &Arc<CudaStream>,
    needed: (i32, i32),
    what: &str,
) -> Result<()> {
    let have = compute_capability(stream)?;
    if have < needed {
        return Err(Error::UnsupportedDevice(format!(
            "{what} needs compute capability {}.{} or newer; this GPU has {}.{}",
            needed.0, needed.1, have.0, have.1
        )));
    }
    Ok(())
}

/// The kernel `function` of module `module` (a `kernels/<module>.cu` file), loaded once per
/// context.
pub(crate) fn kernel(
    stream: &Arc<CudaStream>,
    module: &'static str,
    function: &str,
) -> Result<CudaFunction> {
    let images = KERNEL_IMAGES.ok_or(Error::KernelsNotBuilt)?;
    let ctx = stream.context();
    with_context(ctx, |kernels| {
        let key = format!("{module}::{function}");
        if let Some(f) = kernels.functions.get(&key) {
            return Ok(f.clone());
        }
        if !kernels.modules.contains_key(module) {
            // Loading a module is not a stream operation and may synchronise the context, which
            // stream capture forbids (and a graph could not replay it anyway): the first call of
            // each kernel family must run outside capture (see `warm_up`).
            let status = stream.capture_status()?;
            if status != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                return Err(Error::Cuda(format!(
                    "kernel {function} would load module {module} while the stream is being \
                     captured into a CUDA graph ({status:?}); call fusedrop::cuda::warm_up (or \
                     run each call once) before beginning the capture"
                )));
            }
            let image = images
                .iter()
                .find(|image| image.name == module)
                .ok_or_else(|| Error::Cuda(format!("no kernel module named {module}")))?;
            let (major, minor) = image.min_compute_capability;
            let (have_major, have_minor) = kernels.compute_capability;
            if image.arch_specific && kernels.compute_capability != image.min_compute_capability {
                return Err(Error::UnsupportedDevice(format!(
                    "kernel {function} (module {module}) is built for compute capability \
                     {major}.{minor} only; this GPU has {have_major}.{have_minor}"
                )));
            }
            if kernels.compute_capability < image.min_compute_capability {
                return Err(Error::UnsupportedDevice(format!(
                    "kernel {function} (module {module}) is built for compute capability \
                     {major}.{minor} and newer; this GPU has {have_major}.{have_minor}"
                )));
            }
            let loaded = ctx.load_module(Ptx::from_binary(image.fatbin.to_vec()))?;
            kernels.modules.insert(module, loaded);
        }
        let f = kernels.modules[module]
            .load_function(function)
            .map_err(|e| Error::Cuda(format!("kernel {function} in module {module}: {e}")))?;
        kernels.functions.insert(key, f.clone());
        Ok(f)
    })
}

/// Loads every kernel module this build has for the stream's GPU, so that later calls load
/// nothing: call it before capturing fusedrop calls into a CUDA graph (module loading is illegal
/// during stream capture; a call that would load a module then returns an error instead).
/// Modules the GPU is too old for, or that this build left out, are skipped.
pub fn warm_up(stream: &Arc<CudaStream>) -> Result<()> {
    let images = KERNEL_IMAGES.ok_or(Error::KernelsNotBuilt)?;
    let ctx = stream.context();
    with_context(ctx, |kernels| {
        for image in images {
            let runs_here = if image.arch_specific {
                kernels.compute_capability == image.min_compute_capability
            } else {
                kernels.compute_capability >= image.min_compute_capability
            };
            if runs_here && !kernels.modules.contains_key(image.name) {
                let loaded = ctx.load_module(Ptx::from_binary(image.fatbin.to_vec()))?;
                kernels.modules.insert(image.name, loaded);
            }
        }
        Ok(())
    })
}

/// The mask parameters every kernel takes by value; mirrors `struct MaskParams` in
/// kernels/mask.cuh field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaskParams {
    pub seed: u64,
    pub stream: u64,
    pub seed_stream: u64,
    pub threshold: u64,
    pub row_offset: u64,
    pub col_offset: u64,
    pub n_global: u64,
    pub scale_bits: u32,
    pub pad: u32,
    pub record: u64,
}

// SAFETY: MaskParams is #[repr(C)], holds only plain integers, and matches the layout of the
// kernels' `struct MaskParams` (seven 8-byte fields, two 4-byte fields, one 8-byte field; 72
// bytes, 8-aligned; tests/philox_host.rs checks the C++ side).
unsafe impl DeviceRepr for MaskParams {}

impl MaskParams {
    /// Parameters for a call whose output has `n` columns, with (seed, stream) from the host.
    pub(crate) fn new(dropout: &Dropout, geometry: &Geometry, n: usize) -> Self {
        Self {
            seed: dropout.seed,
            stream: dropout.stream,
            seed_stream: 0,
            threshold: mask::threshold(dropout.p),
            row_offset: geometry.row_offset,
            col_offset: geometry.col_offset,
            n_global: geometry.n_global_for(n),
            scale_bits: mask::scale(dropout.p).to_bits(),
            pad: 0,
            record: 0,
        }
    }

    /// Points the kernel at `seed`'s device buffers when it has them, so that it reads
    /// (seed, stream) at run time (and, for [`SeedSource::DeviceRecorded`], writes the pair it
    /// used). The returned guards (cudarc's stream-ordering records for the buffers) must stay
    /// alive until the launch is queued.
    pub(crate) fn read_seed_from<'a>(
        &mut self,
        seed: SeedSource<'a>,
        stream: &'a CudaStream,
    ) -> [Option<SyncOnDrop<'a>>; 2] {
        match seed {
            SeedSource::Device(view) => {
                let (ptr, guard) = view.device_ptr(stream);
                self.seed_stream = ptr;
                [Some(guard), None]
            }
            SeedSource::DeviceRecorded { next, record } => {
                let (ptr, guard) = next.device_ptr(stream);
                let (record_ptr, record_guard) = record.device_ptr_mut(stream);
                self.seed_stream = ptr;
                self.record = record_ptr;
                [Some(guard), Some(record_guard)]
            }
            SeedSource::Host => [None, None],
        }
    }
}

/// Where a launch takes its (seed, stream) pair from.
#[derive(Debug)]
pub enum SeedSource<'a> {
    /// The values in [`Dropout::seed`] and [`Dropout::stream`], fixed at launch.
    Host,
    /// A device buffer holding exactly two u64, `[seed, stream]`, read by the kernel when it
    /// runs. A captured CUDA graph then replays with fresh masks when the caller advances the
    /// buffer (as PyTorch does for graph-safe dropout). The `seed`/`stream` fields of
    /// [`Dropout`] are ignored.
    Device(&'a CudaView<'a, u64>),
    /// Forward and standalone dropout only: like [`SeedSource::Device`] with `next`, and the
    /// kernel also writes the pair it used into `record` (two u64). The backward of that call
    /// then takes `SeedSource::Device(record)` and gets the forward's mask even when `next` was
    /// advanced in between (a CUDA graph that bumps the stream after each forward). Give each
    /// layer call its own `record`. The backward rejects this variant.
    DeviceRecorded {
        /// `[seed, stream]`, read when the kernel runs.
        next: &'a CudaView<'a, u64>,
        /// Receives the `[seed, stream]` the kernel used (a separate allocation, so the borrow
        /// rules already keep it apart from `next`).
        record: &'a mut CudaSlice<u64>,
    },
}

/// Checks a device seed buffer's length.
pub(crate) fn check_seed_source(source: &SeedSource<'_>) -> Result<()> {
    match source {
        SeedSource::Host => {}
        SeedSource::Device(view) => {
            crate::validate::check_len(
                "seed_stream buffer",
                view.len(),
                2,
                "[seed, stream] as u64",
            )?;
        }
        SeedSource::DeviceRecorded { next, record } => {
            crate::validate::check_len(
                "seed_stream buffer",
                next.len(),
                2,
                "[seed, stream] as u64",
            )?;
            crate::validate::check_len(
                "seed record buffer",
                record.len(),
                2,
                "[seed, stream] as u64",
            )?;
        }
    }
    Ok(())
}
