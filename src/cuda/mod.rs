//! The CUDA side: device probing, the kernel handle [`LayerKernels`], and the safe wrappers
//! over each kernel, its methods (forward in [`forward`], backward in [`backward`], standalone
//! dropout in [`dropout`]). Every launch is built as data first ([`launch_plan`]), so that
//! the CPU harness can run exactly what the wrappers would queue.
//!
//! Callers bring their own [`CudaStream`] and buffers ([`CudaSlice`],
//! [`CudaView`], [`CudaViewMut`](cudarc::driver::CudaViewMut)); nothing here creates a hidden
//! context or synchronises behind the caller's back. Every check runs before a launch.
//!
//! ```no_run
//! # fn main() -> fusedrop::Result<()> {
//! let ctx = fusedrop::cuda::open_device(0)?; // errors (never panics) without a driver
//! let kernels = fusedrop::cuda::LayerKernels::new(ctx.default_stream())?; // loads the modules
//! # let _ = kernels;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUcontext, CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtr,
    DevicePtrMut, DeviceRepr, DeviceSlice, LaunchConfig, SyncOnDrop,
};
use cudarc::nvrtc::Ptx;

use crate::error::{invalid, Error, Result};
use crate::layer::{DropoutSpec, Geometry};
use crate::mask;

pub use cudarc;

pub mod backward;
pub mod dropout;
pub mod forward;
pub mod launch_plan;
pub mod launch_table;
mod tensor_map;

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

impl KernelImage {
    /// Whether this module's code runs on a GPU of compute capability `cc`: exactly its own for
    /// architecture-specific code (sm_90a), its own or newer otherwise.
    fn runs_on(&self, cc: (i32, i32)) -> bool {
        if self.arch_specific {
            cc == self.min_compute_capability
        } else {
            cc >= self.min_compute_capability
        }
    }
}

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
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
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

/// The fused layer's kernels on one CUDA stream: the handle every launch goes through.
///
/// [`LayerKernels::new`] reads the GPU's compute capability and multiprocessor count once and
/// loads every kernel module this build has for that GPU, so that no later call loads anything:
/// calls can be captured into a CUDA graph right after `new`. The loaded modules are shared (an
/// `Arc`) by every handle made from this one with [`LayerKernels::on_stream`], and are unloaded
/// when the last of them is dropped. Cloning a handle is cheap.
///
/// ```no_run
/// # fn main() -> fusedrop::Result<()> {
/// use fusedrop::cuda::{self, LayerKernels};
/// let ctx = cuda::open_device(0)?;
/// let kernels = LayerKernels::new(ctx.default_stream())?; // once per context
/// let side = kernels.on_stream(ctx.new_stream()?)?; // the same modules, another stream
/// # let _ = side;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LayerKernels {
    stream: Arc<CudaStream>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LayerKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut modules: Vec<_> = self.shared.modules.keys().collect();
        modules.sort();
        f.debug_struct("LayerKernels")
            .field("compute_capability", &self.shared.compute_capability)
            .field("sm_count", &self.shared.sm_count)
            .field("resident_clusters", &self.shared.resident_clusters)
            .field("modules", &modules)
            .finish_non_exhaustive()
    }
}

/// How many thread block clusters of each size the GPU runs at once, for kernels of one
/// 384-thread block per multiprocessor with most of its shared memory (every Hopper kernel):
/// what the Hopper kernels' persistent grids and their split-K choices are sized by.
///
/// A cluster's blocks run on the multiprocessors of one GPC (graphics processing cluster), so
/// where a GPC's multiprocessor count is not a multiple of the cluster size some
/// multiprocessors cannot take part, and fewer than `sm_count / size` clusters run at once.
/// A grid of more clusters than that runs the rest in a second wave, after the first. This is
/// why CUTLASS sizes its persistent grids by `cudaOccupancyMaxActiveClusters`;
/// [`LayerKernels::new`] asks the driver the same (`cuOccupancyMaxActiveClusters`) for clusters
/// of 2, 4 and 8 blocks on a compute capability 9.0 GPU with the Hopper modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentClusters {
    sm_count: usize,
    /// The driver's counts of clusters of 2, 4 and 8 blocks, where it was asked and answered.
    driver: [Option<usize>; 3],
}

impl ResidentClusters {
    /// Every multiprocessor takes part: `sm_count / size` clusters of each size (what a GPU
    /// whose GPCs all hold multiples of 8 multiprocessors runs, and the assumption wherever the
    /// driver was not asked).
    pub const fn uniform(sm_count: usize) -> Self {
        Self::new(sm_count, [None; 3])
    }

    /// `sm_count` multiprocessors, and the driver's counts of clusters of 2, 4 and 8 blocks that
    /// run at once (`None` where it was not asked or did not answer).
    pub const fn new(sm_count: usize, driver: [Option<usize>; 3]) -> Self {
        Self {
            sm_count: if sm_count == 0 { 1 } else { sm_count },
            driver,
        }
    }

    /// The multiprocessor count.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// What the driver answered for clusters of `size` (2, 4 or 8) blocks, `None` where it was
    /// not asked or did not answer.
    pub fn driver_count(&self, size: u32) -> Option<usize> {
        match size {
            2 => self.driver[0],
            4 => self.driver[1],
            8 => self.driver[2],
            _ => None,
        }
    }

    /// Whether clusters of `size` blocks can run at all: false only where the driver counted
    /// none (a GPU whose multiprocessors are restricted, under MPS or in a small MIG slice, for
    /// example), which the heuristics then pass over instead of choosing a launch that fails.
    pub fn can_place(&self, size: u32) -> bool {
        self.driver_count(size) != Some(0)
    }

    /// How many clusters of `size` blocks run at once (1: single blocks, one per
    /// multiprocessor): the driver's count where it gave one between 1 and `sm_count / size`,
    /// else `sm_count / size` (a count of 0 says no such cluster could be placed at all: see
    /// [`ResidentClusters::can_place`]; a launch forced there fails with the driver's reason);
    /// at least 1.
    pub fn of(&self, size: u32) -> u64 {
        let size = size.max(1) as usize;
        let every_multiprocessor = self.sm_count / size;
        let count = match self.driver_count(size as u32) {
            Some(count) if (1..every_multiprocessor).contains(&count) => count,
            _ => every_multiprocessor,
        };
        count.max(1) as u64
    }

    /// The persistent grid of a Hopper kernel (forward or backward) over `tiles` tiles of a
    /// block, or of a cluster of `cluster` blocks: min(tiles, the clusters of that size that run
    /// at once) clusters, at least one.
    pub(crate) fn persistent_launch(
        &self,
        tiles: u64,
        cluster: u32,
        threads: u32,
        smem_bytes: u32,
    ) -> LaunchConfig {
        let clusters = tiles.clamp(1, self.of(cluster)) as u32;
        LaunchConfig {
            grid_dim: (clusters * cluster, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem_bytes,
        }
    }
}

/// What the wrappers' choices take from the GPU and the build, so that they can be planned
/// without one ([`forward::forward_plan`], [`backward::backward_plan`]):
/// [`LayerKernels::gpu_facts`] gives the handle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuFacts {
    /// The compute capability, `(major, minor)`.
    pub compute_capability: (i32, i32),
    /// The multiprocessors, and the clusters of the Hopper kernels that run at once.
    pub resident: ResidentClusters,
    /// Whether the Hopper forward module (kernels/forward_sm90.cu, sm_90a) was built and loaded
    /// for this GPU.
    pub forward_sm90_loaded: bool,
    /// Whether the Hopper backward module (kernels/backward_sm90.cu, sm_90a) was built and
    /// loaded for this GPU.
    pub backward_sm90_loaded: bool,
}

impl GpuFacts {
    /// Fails with [`Error::UnsupportedDevice`] when the GPU is older than `needed`.
    pub(crate) fn require_compute_capability(&self, needed: (i32, i32), what: &str) -> Result<()> {
        let have = self.compute_capability;
        if have < needed {
            return Err(Error::UnsupportedDevice(format!(
                "{what} needs compute capability {}.{} or newer; this GPU has {}.{}",
                needed.0, needed.1, have.0, have.1
            )));
        }
        Ok(())
    }
}

/// A clustered kernel (its f16 entry point) that [`LayerKernels::new`] asks the driver about.
pub(crate) struct ClusterProbe {
    module: &'static str,
    function: String,
    threads: u32,
    smem_bytes: u32,
    /// Blocks per cluster (the kernel's `__cluster_dims__`).
    cluster: u32,
}

/// What [`LayerKernels::with_options`] loads. `Default` is what [`LayerKernels::new`] loads:
/// every module this build has for the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoadOptions {
    /// Whether to load the Hopper (sm_90a) modules on a GPU of compute capability 9.0 (default
    /// `true`). With `false` every call takes the kernels other GPUs take (mma.sync for f16 and
    /// bf16, SIMT for f32), as in a build without the sm_90a modules, and a Hopper
    /// configuration asked for by name is an [`Error::UnsupportedDevice`]: a way to keep working
    /// past a fault in a Hopper kernel, or to measure the fallback path on a Hopper GPU.
    pub hopper: bool,
}

impl LoadOptions {
    /// The default, as a constant (for statics).
    pub(crate) const DEFAULT: Self = Self { hopper: true };
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What every handle on one context shares: read or loaded once by [`LayerKernels::new`].
struct Shared {
    context: Arc<CudaContext>,
    /// What the handle was asked to load.
    options: LoadOptions,
    compute_capability: (i32, i32),
    sm_count: usize,
    resident_clusters: ResidentClusters,
    /// The modules this GPU can run, by name (a `kernels/<name>.cu` file).
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// Kernels looked up so far, by module and entry point (the split sums have one name in two
    /// modules), with their dynamic shared memory limit already raised where they need it.
    /// Filled on first use: looking a function up and setting its attribute are not stream
    /// operations, so they are legal during stream capture (unlike loading a module), and the
    /// lock is what the lazily set attribute needs.
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
}

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

impl LayerKernels {
    /// Loads the kernels for `stream`'s GPU: checks that the kernels were built and the driver
    /// is present, reads the compute capability and multiprocessor count, and loads every
    /// module this build has for this GPU (modules it is too old for, or that the build left
    /// out, are skipped; calls that need them return [`Error::UnsupportedDevice`]). With the
    /// Hopper modules loaded it also asks the driver how many clusters of the split-K kernels
    /// run at once ([`ResidentClusters`], [`LayerKernels::resident_clusters`]).
    ///
    /// Module loading may synchronise the context, and is illegal during stream capture: call
    /// `new` before capturing, once per context, and [`LayerKernels::on_stream`] for other
    /// streams of that context.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        Self::with_options(stream, LoadOptions::default())
    }

    /// [`LayerKernels::new`], loading what `options` allows of the modules this build has for
    /// the GPU (for example no Hopper modules: [`LoadOptions::hopper`]).
    pub fn with_options(stream: Arc<CudaStream>, options: LoadOptions) -> Result<Self> {
        let images = KERNEL_IMAGES.ok_or(Error::KernelsNotBuilt)?;
        if !driver_present() {
            return Err(Error::DriverUnavailable(
                "libcuda could not be loaded (no NVIDIA driver installed, or not on the loader \
                 path)"
                    .into(),
            ));
        }
        let context = stream.context().clone();
        let compute_capability = context.compute_capability()?;
        let sm_count =
            context.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let mut modules = HashMap::new();
        for image in images.iter().filter(|image| {
            image.runs_on(compute_capability) && (options.hopper || !image.arch_specific)
        }) {
            let module = context
                .load_module(Ptx::from_binary(image.fatbin.to_vec()))
                .map_err(|e| Error::Cuda(format!("loading kernel module {}: {e}", image.name)))?;
            modules.insert(image.name, module);
        }
        let sm_count = usize::try_from(sm_count).unwrap_or(1).max(1);
        let mut kernels = LayerKernels {
            stream,
            shared: Arc::new(Shared {
                context,
                options,
                compute_capability,
                sm_count,
                resident_clusters: ResidentClusters::uniform(sm_count),
                modules,
                functions: Mutex::new(HashMap::new()),
            }),
        };
        // Asked through the handle (its kernel table sets each kernel's shared memory limit,
        // which the driver's count depends on); the handle is the Arc's only owner yet.
        let resident_clusters = kernels.ask_resident_clusters();
        if let Some(shared) = Arc::get_mut(&mut kernels.shared) {
            shared.resident_clusters = resident_clusters;
        }
        Ok(kernels)
    }

    /// The driver's counts of clusters of 2, 4 and 8 blocks that run at once, asked of the
    /// Hopper split-K kernels of those sizes (every production Hopper kernel has the
    /// same block: 384 threads, over 190 KiB of shared memory, one per multiprocessor). `None` (so
    /// `sm_count / size`) for a size whose kernel is not loaded (no Hopper modules, another GPU)
    /// or whose query fails.
    fn ask_resident_clusters(&self) -> ResidentClusters {
        let ask = |probe: ClusterProbe| {
            if !self.shared.modules.contains_key(probe.module) {
                return None;
            }
            let one_cluster = LaunchConfig {
                grid_dim: (probe.cluster, 1, 1),
                block_dim: (probe.threads, 1, 1),
                shared_mem_bytes: probe.smem_bytes,
            };
            self.function(probe.module, &probe.function, probe.smem_bytes)
                .ok()
                .and_then(|f| {
                    f.occupancy_max_active_clusters(one_cluster, &self.stream)
                        .ok()
                })
                .map(|count| count as usize)
        };
        ResidentClusters::new(
            self.shared.sm_count,
            [
                ask(forward::ForwardConfig::Wg128x128S2.cluster_probe()),
                ask(forward::ForwardConfig::Wg128x128S4.cluster_probe()),
                ask(backward::cluster_of_8_probe()),
            ],
        )
    }

    /// A handle that launches on `stream` with this handle's loaded modules (nothing is loaded).
    /// `stream` must belong to the same CUDA context.
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Result<Self> {
        self.check_context("the stream", &stream)?;
        Ok(LayerKernels {
            stream,
            shared: Arc::clone(&self.shared),
        })
    }

    /// An error unless `what` (a buffer, by the stream cudarc allocated it on, or a stream)
    /// belongs to this handle's CUDA context: another context's pointer would reach the kernel
    /// as an illegal address, which poisons the context for every later call.
    pub(crate) fn check_context(&self, what: &str, stream: &CudaStream) -> Result<()> {
        same_context(
            what,
            stream.context().cu_ctx(),
            self.shared.context.cu_ctx(),
        )
    }

    /// The seed buffers' lengths ([`check_seed_lengths`]) and CUDA context.
    pub(crate) fn check_seed_source(&self, source: &SeedSource<'_>) -> Result<()> {
        check_seed_lengths(source)?;
        match source {
            SeedSource::Host => Ok(()),
            SeedSource::Device(view) => {
                self.check_context("the seed_subsequence buffer", view.stream())
            }
            SeedSource::DeviceRecorded { next, record } => {
                self.check_context("the seed_subsequence buffer", next.stream())?;
                self.check_context("the seed record buffer", record.stream())
            }
        }
    }

    /// The stream every call of this handle queues its launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The compute capability of the handle's GPU, `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.shared.compute_capability
    }

    /// The number of multiprocessors of the handle's GPU (what the tile heuristics take).
    pub fn sm_count(&self) -> usize {
        self.shared.sm_count
    }

    /// How many clusters of the Hopper kernels run at once on the handle's GPU (what their
    /// persistent grids and split-K choices take), as the driver answered [`LayerKernels::new`].
    pub fn resident_clusters(&self) -> ResidentClusters {
        self.shared.resident_clusters
    }

    /// What the wrappers' choices take from the handle's GPU and build ([`GpuFacts`]).
    pub fn gpu_facts(&self) -> GpuFacts {
        GpuFacts {
            compute_capability: self.shared.compute_capability,
            resident: self.shared.resident_clusters,
            forward_sm90_loaded: self.module_loaded("forward_sm90"),
            backward_sm90_loaded: self.module_loaded("backward_sm90"),
        }
    }

    /// Fails with [`Error::UnsupportedDevice`] when the GPU is older than `needed`.
    pub(crate) fn require_compute_capability(&self, needed: (i32, i32), what: &str) -> Result<()> {
        self.gpu_facts().require_compute_capability(needed, what)
    }

    /// Whether module `name` was built and loaded for this GPU.
    pub(crate) fn module_loaded(&self, name: &str) -> bool {
        self.shared.modules.contains_key(name)
    }

    /// The kernel `function` of module `module` (a `kernels/<module>.cu` file), with its dynamic
    /// shared memory limit raised to `smem_bytes` when that exceeds the default. Looked up once
    /// per context; errors say why a module is missing.
    pub(crate) fn function(
        &self,
        module: &'static str,
        function: &str,
        smem_bytes: u32,
    ) -> Result<CudaFunction> {
        let mut functions = self
            .shared
            .functions
            .lock()
            .map_err(|_| Error::Cuda("the kernel table lock was poisoned by a panic".into()))?;
        let key = (module, function.to_string());
        if let Some(f) = functions.get(&key) {
            return Ok(f.clone());
        }
        // Looking a function up and setting its attribute are driver calls on the context that
        // cudarc does not make current itself (only its launches do), and a handle may be used
        // from a thread that has never touched the context.
        self.shared
            .context
            .bind_to_thread()
            .map_err(|e| Error::Cuda(format!("making the handle's CUDA context current: {e}")))?;
        let loaded = self
            .shared
            .modules
            .get(module)
            .ok_or_else(|| self.missing_module(module, function))?;
        let f = loaded
            .load_function(function)
            .map_err(|e| Error::Cuda(format!("kernel {function} in module {module}: {e}")))?;
        if smem_bytes > DEFAULT_SMEM_LIMIT {
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_bytes as i32,
            )
            .map_err(|e| {
                Error::Cuda(format!(
                    "{function}: raising the dynamic shared memory limit to {smem_bytes} bytes: {e}"
                ))
            })?;
        }
        functions.insert(key, f.clone());
        Ok(f)
    }

    /// Why `new` did not load `module`: not built, or not for this GPU.
    fn missing_module(&self, module: &str, function: &str) -> Error {
        let Some(image) = KERNEL_IMAGES
            .into_iter()
            .flatten()
            .find(|image| image.name == module)
        else {
            return Error::UnsupportedDevice(format!(
                "kernel {function} is in module {module}, which this build left out (the \
                 Hopper modules need 90 in FUSEDROP_CUDA_ARCHS)"
            ));
        };
        let (major, minor) = image.min_compute_capability;
        let (have_major, have_minor) = self.shared.compute_capability;
        if image.runs_on(self.shared.compute_capability) {
            return Error::UnsupportedDevice(format!(
                "kernel {function} (module {module}) was not loaded: this handle was made with \
                 {:?}",
                self.shared.options
            ));
        }
        let which = if image.arch_specific {
            "only"
        } else {
            "and newer"
        };
        Error::UnsupportedDevice(format!(
            "kernel {function} (module {module}) is built for compute capability {major}.{minor} \
             {which}; this GPU has {have_major}.{have_minor}"
        ))
    }
}

/// The mask parameters every kernel takes by value; mirrors `struct MaskParams` in
/// kernels/mask.cuh field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaskParams {
    pub seed: u64,
    pub subsequence: u64,
    pub seed_subsequence: u64,
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
// bytes, 8-aligned; tests/philox_host.rs checks the C++ side, this module's tests the Rust side).
unsafe impl DeviceRepr for MaskParams {}

impl MaskParams {
    /// Parameters for a call whose output has `n` columns, with (seed, subsequence) from the host.
    pub(crate) fn new(dropout: &DropoutSpec, geometry: &Geometry, n: usize) -> Self {
        Self {
            seed: dropout.seed,
            subsequence: dropout.subsequence,
            seed_subsequence: 0,
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
    /// (seed, subsequence) at run time (and, for [`SeedSource::DeviceRecorded`], writes the pair it
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
                self.seed_subsequence = ptr;
                [Some(guard), None]
            }
            SeedSource::DeviceRecorded { next, record } => {
                let (ptr, guard) = next.device_ptr(stream);
                let (record_ptr, record_guard) = record.device_ptr_mut(stream);
                self.seed_subsequence = ptr;
                self.record = record_ptr;
                [Some(guard), Some(record_guard)]
            }
            SeedSource::Host => [None, None],
        }
    }
}

/// Where a launch takes its (seed, subsequence) pair from.
#[derive(Debug, Default)]
pub enum SeedSource<'a> {
    /// The values in [`DropoutSpec::seed`] and [`DropoutSpec::subsequence`], fixed at launch.
    #[default]
    Host,
    /// A device buffer holding exactly two u64, `[seed, subsequence]`, read by the kernel when it
    /// runs. A captured CUDA graph then replays with fresh masks when the caller advances the
    /// buffer (as PyTorch does for graph-safe dropout). The `seed`/`subsequence` fields of
    /// [`DropoutSpec`] are ignored.
    Device(&'a CudaView<'a, u64>),
    /// Forward and standalone dropout only: like [`SeedSource::Device`] with `next`, and the
    /// kernel also writes the pair it used into `record` (two u64) whenever a kernel is launched:
    /// the standalone dropout launches nothing for p = 0 or an empty buffer and then leaves
    /// `record` unwritten (the forward writes it at p = 0 too, and launches nothing only for an
    /// empty output). The backward of that call
    /// then takes `SeedSource::Device(record)` and gets the forward's mask even when `next` was
    /// advanced in between (a CUDA graph that bumps the subsequence after each forward). Give each
    /// layer call its own `record`. The backward rejects this variant.
    DeviceRecorded {
        /// `[seed, subsequence]`, read when the kernel runs.
        next: &'a CudaView<'a, u64>,
        /// Receives the `[seed, subsequence]` the kernel used (a separate allocation, so the borrow
        /// rules already keep it apart from `next`).
        record: &'a mut CudaSlice<u64>,
    },
}

/// An error unless `theirs`, the context of `what`, is `ours`, the handle's.
fn same_context(what: &str, theirs: CUcontext, ours: CUcontext) -> Result<()> {
    if theirs != ours {
        return Err(invalid!(
            "{what} belongs to CUDA context {theirs:p}; expected context {ours:p}, whose modules \
             this handle loaded (allocate it on a stream of that context, or make a \
             LayerKernels::new for the other context)"
        ));
    }
    Ok(())
}

/// Checks a device seed buffer's length.
fn check_seed_lengths(source: &SeedSource<'_>) -> Result<()> {
    match source {
        SeedSource::Host => {}
        SeedSource::Device(view) => {
            crate::validate::check_len(
                "seed_subsequence buffer",
                view.len(),
                2,
                "[seed, subsequence] as u64",
            )?;
        }
        SeedSource::DeviceRecorded { next, record } => {
            crate::validate::check_len(
                "seed_subsequence buffer",
                next.len(),
                2,
                "[seed, subsequence] as u64",
            )?;
            crate::validate::check_len(
                "seed record buffer",
                record.len(),
                2,
                "[seed, subsequence] as u64",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_params_has_the_layout_of_the_kernels_struct() {
        use std::mem::{align_of, offset_of, size_of};
        // The same numbers as the C++ struct's in tests/philox_host.rs
        // (`mask_params_layout_is_the_one_rust_mirrors`): size, alignment, then the offsets of
        // seed, subsequence, seed_subsequence, threshold, row_offset, col_offset, n_global,
        // scale, pad, record.
        let layout = [
            size_of::<MaskParams>(),
            align_of::<MaskParams>(),
            offset_of!(MaskParams, seed),
            offset_of!(MaskParams, subsequence),
            offset_of!(MaskParams, seed_subsequence),
            offset_of!(MaskParams, threshold),
            offset_of!(MaskParams, row_offset),
            offset_of!(MaskParams, col_offset),
            offset_of!(MaskParams, n_global),
            offset_of!(MaskParams, scale_bits),
            offset_of!(MaskParams, pad),
            offset_of!(MaskParams, record),
        ];
        assert_eq!(layout, [72, 8, 0, 8, 16, 24, 32, 40, 48, 56, 60, 64]);
    }

    #[test]
    fn another_contexts_buffer_is_refused_by_name() {
        let [ours, theirs] = [0x1000usize, 0x2000].map(|a| a as CUcontext);
        assert!(same_context("X", ours, ours).is_ok());
        let e = same_context("X", theirs, ours).unwrap_err().to_string();
        for needle in [
            "X belongs to CUDA context 0x2000",
            "expected context 0x1000",
        ] {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn resident_clusters_take_the_drivers_counts_within_the_multiprocessors() {
        let uniform = ResidentClusters::uniform(132);
        assert_eq!([1, 2, 4, 8].map(|size| uniform.of(size)), [132, 66, 33, 16]);
        // The driver's counts where they are below sm_count / size; none, 0 (no cluster could
        // be placed) and counts above it (impossible) fall back to sm_count / size.
        let asked = ResidentClusters::new(132, [Some(64), Some(0), Some(20)]);
        assert_eq!([1, 2, 4, 8].map(|size| asked.of(size)), [132, 64, 33, 16]);
        assert_eq!(asked.driver_count(4), Some(0));
        assert_eq!(
            [1, 2, 4, 8].map(|size| asked.can_place(size)),
            [true, true, false, true]
        );
        let asked = ResidentClusters::new(132, [Some(66), Some(30), None]);
        assert_eq!([1, 2, 4, 8].map(|size| asked.of(size)), [132, 66, 30, 16]);
        assert_eq!(asked.driver_count(8), None);
        // Never below one cluster, even on a GPU smaller than the cluster.
        assert_eq!(ResidentClusters::uniform(4).of(8), 1);
        assert_eq!(ResidentClusters::uniform(0).of(1), 1);
    }
}
