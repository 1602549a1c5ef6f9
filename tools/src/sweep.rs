//! `fusedrop sweep`: the tuning variants of the forward timed against the production kernels on
//! the GPU it runs on, in three families:
//!
//! - mma.sync (kernels/forward_tc_sweep.cu, [`FORWARD_SWEEP`]; compute capability 8.0 and newer):
//!   the production kernel is the mma.sync configuration the library's heuristic picks for the
//!   shape ([`choose_config`], forced through [`ForwardOptions::config`], so that it runs even
//!   where the Hopper kernel would be chosen), then every variant;
//! - Hopper (kernels/forward_sm90_sweep.cu, [`FORWARD_SM90_SWEEP`]; compute capability 9.0 and a
//!   build with the sm_90a modules): for each production config of [`HOPPER_PRODUCTION`]
//!   (forced), that config, then the variants with its column tile (stages, TMA-store epilogue,
//!   W multicast over clusters of 2, ping-pong consumers, the tile order's group, per-lane mask
//!   draws, stream-K);
//! - f32 (kernels/forward_f32_sweep.cu, [`FORWARD_F32_SWEEP`]): the SIMT configuration the
//!   heuristic picks, then every variant, on [`F32_SHAPES`] only.
//!
//! For each shape of [`SHAPES`] (from the bench suite), bf16 and f16 (and f32 on
//! [`F32_SHAPES`]), ReLU, p = [`P`]. Each figure
//! is the median of repetitions between CUDA events, every kernel of a shape and dtype timed in
//! the same rounds ([`measure_interleaved`], operands rotated so that no launch finds them in L2,
//! as in `fusedrop bench`), after each kernel's launch 0 has been checked. Each variant's output
//! of launch 0 is compared
//! with the production row above it, on the same inputs and mask: every variant takes the same
//! mma sequence and epilogue arithmetic for every output element as that production config, so
//! the outputs must be bit-identical; a variant that differs is reported with the count of
//! differing elements, its relative L2 distance to production and where they lie (rows,
//! columns, positions within 64 x 64 blocks, the first few), and fails the run. The exception is
//! stream-K (`*_sk`, [`LaunchNumbers::stream_k`]), which adds a shared tile's partial sums in
//! another order: every element must lie within one unit in the dtype's last place of
//! production's (or 10^-3 of the output's root mean square, for values rounded near zero;
//! reported as "sums reordered"), and it runs with a zero-filled workspace (one per shape, which
//! the stream-K variants share), whose flags its launch 0 must leave zero. A variant
//! whose shared memory exceeds the GPU's per-block limit is listed as not run. A row whose
//! launch, copy or timing fails is listed with the error and fails the run; the sweep goes on
//! with the next row unless the error left the CUDA context unusable (a kernel that trapped),
//! in which case it stops there and says so, with the rows of the shapes measured before in the
//! table (the rows of a shape print once all of its kernels are timed; a kernel that traps while
//! they are timed fails the shape's other rows with it, and the message names it). The variants
//! after a failed production row are timed but not compared.
//!
//! `--family` and `--shapes` run a part of it (a short GPU lease times the Hopper family first:
//! `fusedrop sweep --quick --family hopper`).

use clap::Args;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::CudaSlice;
use fusedrop::cuda::forward::{
    choose_config, sweep_workspace_bytes, ForwardConfig, ForwardOptions,
};
use fusedrop::cuda::launch_table::{
    LaunchNumbers, FORWARD_F32_SWEEP, FORWARD_SM90_SWEEP, FORWARD_SWEEP, STREAM_K_MAX_BLOCKS,
};
use fusedrop::cuda::{module_built, open_device, LayerKernels};
use fusedrop::{reference, Element, Error, LinearShape, Nonlinearity, Result};
use half::{bf16, f16};

use crate::bench::{
    bench_spec, forward_flops, measure_interleaved, suite_shape, DType, Effort, Operands,
    BENCH_SEED,
};

/// Exit code: a variant's output differs from the production kernel's, or a launch failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: nothing could be measured, for want of a GPU, driver or the sweep's kernels.
pub const EXIT_NO_GPU: i32 = 3;

/// The bench suite's shapes the sweep runs on: two compute-bound ones, and `wide` (k = 256),
/// where the epilogue is a large share of each tile's time.
pub const SHAPES: [&str; 3] = ["sq", "up", "wide"];
/// The shapes the f32 variants run on: `sq`, where issue 12 sets the f32 forward's goal.
pub const F32_SHAPES: [&str; 1] = ["sq"];
/// The dropout probability of every launch.
pub const P: f32 = 0.1;
/// The Hopper production configs the Hopper variants are compared with: each variant follows the
/// config with its `block_n` (the wgmma N of its consumer warpgroups: 256 or 128).
pub const HOPPER_PRODUCTION: [ForwardConfig; 2] =
    [ForwardConfig::Wg128x256, ForwardConfig::Wg128x128];

/// A family of tuning variants, each timed against its own production kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// kernels/forward_tc_sweep.cu against the mma.sync production config (issue 12).
    MmaSync,
    /// kernels/forward_sm90_sweep.cu against the Hopper production configs (issue 10;
    /// compute capability 9.0).
    Hopper,
    /// kernels/forward_f32_sweep.cu against the SIMT production config, on `sq` only.
    F32,
}

/// The sweep's flags.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Short measurements (5 repetitions of 5 ms instead of 15 of 20 ms)
    #[arg(long)]
    pub quick: bool,
    /// GPU ordinal
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = crate::gpu_ordinal
    )]
    pub device: usize,
    /// Only these families, comma-separated: mma-sync, hopper, f32 (default: every one)
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_enum)]
    pub family: Vec<Family>,
    /// Only these shapes, comma-separated, of sq, up, wide (default: every one; the f32 family
    /// runs on sq only)
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = sweep_shape_name)]
    pub shapes: Vec<&'static str>,
}

impl Family {
    /// Every family, in the order the sweep runs them.
    pub const ALL: [Family; 3] = [Family::MmaSync, Family::Hopper, Family::F32];

    /// The family's name, as `--family` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Family::MmaSync => "mma-sync",
            Family::Hopper => "hopper",
            Family::F32 => "f32",
        }
    }

    /// Why this family cannot run on `kernels`' GPU with this build, or `None` where it can.
    fn cannot_run(self, kernels: &LayerKernels) -> Option<Error> {
        let (major, minor) = kernels.compute_capability();
        match self {
            Family::MmaSync if !module_built("forward_tc_sweep") => Some(Error::KernelsNotBuilt),
            Family::MmaSync if major < 8 => Some(Error::UnsupportedDevice(format!(
                "the mma.sync variants need compute capability 8.0 or newer; this GPU has \
                 {major}.{minor}"
            ))),
            Family::Hopper if !module_built("forward_sm90_sweep") => {
                Some(Error::UnsupportedDevice(
                    "the Hopper variants need the sm_90a modules (90 in FUSEDROP_CUDA_ARCHS)"
                        .into(),
                ))
            }
            Family::Hopper if !kernels.hopper_available::<bf16>() => {
                Some(Error::UnsupportedDevice(format!(
                    "the Hopper variants need compute capability 9.0 and the Hopper kernels \
                     loaded; this GPU has {major}.{minor}"
                )))
            }
            Family::F32 if !module_built("forward_f32_sweep") => Some(Error::KernelsNotBuilt),
            _ => None,
        }
    }
}

impl Options {
    /// Whether the run asks for `family` (every family when `--family` is not given).
    fn runs(&self, family: Family) -> bool {
        self.family.is_empty() || self.family.contains(&family)
    }

    /// Refuses flags that ask for nothing to be measured: `--family f32` (alone) with `--shapes`
    /// that name none of [`F32_SHAPES`], or `--family` / `--shapes` naming an item twice.
    pub fn check(&self) -> Result<()> {
        let only_f32 = !self.family.is_empty() && self.family.iter().all(|f| *f == Family::F32);
        if only_f32 && !F32_SHAPES.iter().any(|s| self.runs_shape(s)) {
            return Err(Error::InvalidArgument(format!(
                "--family f32 runs on {} only, and --shapes {} names none of them",
                F32_SHAPES.join(", "),
                self.shapes.join(",")
            )));
        }
        if let Some(f) = crate::first_repeated(&self.family) {
            return Err(Error::InvalidArgument(format!(
                "--family names {} twice",
                f.name()
            )));
        }
        if let Some(s) = crate::first_repeated(&self.shapes) {
            return Err(Error::InvalidArgument(format!("--shapes names {s} twice")));
        }
        Ok(())
    }

    /// Whether the run includes the suite shape `name`.
    fn runs_shape(&self, name: &str) -> bool {
        self.shapes.is_empty() || self.shapes.contains(&name)
    }
}

/// `--shapes`' parser: a name of [`SHAPES`].
fn sweep_shape_name(name: &str) -> std::result::Result<&'static str, String> {
    SHAPES
        .iter()
        .copied()
        .find(|s| *s == name.trim())
        .ok_or_else(|| {
            format!(
                "unknown sweep shape {name:?}; expected one of {}",
                SHAPES.join(", ")
            )
        })
}

/// What became of one kernel on one shape and dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Timed; `differ` elements of its output differ from the production kernel's (0 for the
    /// production row itself), at relative L2 distance `distance`.
    Measured {
        /// Median GPU time per launch, in microseconds.
        time_us: f64,
        /// Elements whose bits differ from the production kernel's output.
        differ: usize,
        /// Relative L2 distance to the production kernel's output.
        distance: f64,
        /// Where the differing elements lie (`reference::describe_differences`); empty when
        /// none differs.
        differences: String,
        /// A stream-K variant, whose partial sums add in another order: `differ` then counts
        /// the elements farther from production's than one unit in the dtype's last place (or
        /// 10^-3 of the output's root mean square, for values rounded near zero), not those
        /// whose bits differ.
        reordered: bool,
    },
    /// Timed, but not compared: the production row above it failed.
    Unchecked {
        /// Median GPU time per launch, in microseconds.
        time_us: f64,
    },
    /// Not run: its shared memory exceeds what a block may use on this GPU.
    DoesNotFit {
        /// The variant's dynamic shared memory in bytes.
        needs: u32,
        /// The GPU's per-block opt-in limit in bytes.
        limit: u32,
    },
    /// Its launch, the copy of its output or its timing failed.
    Failed {
        /// The error, as the library reported it.
        error: String,
    },
}

/// One row of the sweep's table.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    /// Suite shape name.
    pub shape: &'static str,
    /// Element type.
    pub dtype: DType,
    /// `production <config>` or the variant's name.
    pub kernel: String,
    /// The measurement, or why there is none.
    pub outcome: Outcome,
}

/// Runs `fusedrop sweep`: prints the table and returns the exit code (0 every variant
/// bit-identical to production, 1 some variant differs or a row failed, 3 no usable GPU or a
/// named family that cannot run here). The command line refuses flags that ask for nothing
/// ([`Options::check`]) before this runs (exit 2).
pub fn run(options: &Options) -> i32 {
    eprintln!(
        "fusedrop sweep: timing the forward's tuning variants (a shape's rows print once its \
         kernels are timed, together)"
    );
    let mut rows = Vec::new();
    let outcome = sweep(options, &mut rows, &mut |row| {
        eprintln!("  {}", format_row(row, None))
    });
    if let Ok(left_out) = &outcome {
        for line in left_out {
            eprintln!("fusedrop sweep: not run here: {line}");
        }
    }
    if let Err(
        e @ (Error::DriverUnavailable(_) | Error::KernelsNotBuilt | Error::UnsupportedDevice(_)),
    ) = &outcome
    {
        eprintln!(
            "fusedrop sweep: needs a GPU of compute capability 8.0 or newer and the kernels of \
             kernels/forward_tc_sweep.cu (and for the Hopper variants compute capability 9.0 \
             and kernels/forward_sm90_sweep.cu); nothing was measured: {e}"
        );
        return EXIT_NO_GPU;
    }
    if !rows.is_empty() {
        println!("{}", format_table(&rows));
    }
    if let Err(e) = &outcome {
        eprintln!("fusedrop sweep: stopped: {e}");
    }
    exit_code(&rows, outcome.is_err())
}

/// The exit code of a sweep that measured `rows` (and `stopped` early on an error): 0 when every
/// row ran or did not fit and every variant is bit-identical to production, else 1.
fn exit_code(rows: &[SweepRow], stopped: bool) -> i32 {
    let failed = rows.iter().any(|r| match r.outcome {
        Outcome::Measured { differ, .. } => differ > 0,
        Outcome::Failed { .. } => true,
        Outcome::Unchecked { .. } | Outcome::DoesNotFit { .. } => false,
    });
    if failed || stopped {
        EXIT_FAILED
    } else {
        0
    }
}

/// The families a sweep with `options` measures on `kernels`' GPU, and a line for each family
/// left out because it cannot run here. A family `--family` names that cannot run here is an
/// error, and so is none of the families running here.
pub fn families_here(
    options: &Options,
    kernels: &LayerKernels,
) -> Result<(Vec<Family>, Vec<String>)> {
    let mut families = Vec::new();
    let mut left_out = Vec::new();
    for family in Family::ALL.into_iter().filter(|f| options.runs(*f)) {
        match family.cannot_run(kernels) {
            None => families.push(family),
            Some(e) if options.family.is_empty() => {
                left_out.push(format!("{}: {e}", family.name()))
            }
            Some(e) => return Err(e),
        }
    }
    if families.is_empty() {
        return Err(Error::UnsupportedDevice(format!(
            "no sweep family runs here: {}",
            left_out.join("; ")
        )));
    }
    Ok((families, left_out))
}

/// Measures every shape, dtype and kernel into `rows`; `progress` sees each row once all kernels
/// of its shape and dtype are timed (together). Returns a line for each family left out because it cannot run here
/// ([`families_here`]). An error ends the sweep with the rows measured until then in `rows`.
pub fn sweep(
    options: &Options,
    rows: &mut Vec<SweepRow>,
    progress: &mut dyn FnMut(&SweepRow),
) -> Result<Vec<String>> {
    options.check()?;
    let ctx = open_device(options.device)?;
    let kernels = LayerKernels::new(ctx.default_stream())?;
    let (families, left_out) = families_here(options, &kernels)?;
    let effort = if options.quick {
        Effort::QUICK
    } else {
        Effort::FULL
    };
    let candidates = candidates(&families);
    let run = Run {
        gpu: Gpu::read(&kernels)?,
        candidates,
        kernels,
        effort,
    };
    // No f16 / bf16 rows when only the f32 family runs.
    let half_shapes = SHAPES
        .into_iter()
        .filter(|s| options.runs_shape(s) && !run.candidates.is_empty());
    for name in half_shapes {
        let suite = suite_shape(name)?;
        sweep_shape::<bf16>(
            &run,
            &run.candidates,
            suite.name,
            DType::Bf16,
            rows,
            progress,
        )?;
        sweep_shape::<f16>(
            &run,
            &run.candidates,
            suite.name,
            DType::F16,
            rows,
            progress,
        )?;
    }
    if families.contains(&Family::F32) {
        let f32_candidates = f32_candidates();
        for name in F32_SHAPES.into_iter().filter(|s| options.runs_shape(s)) {
            let suite = suite_shape(name)?;
            sweep_shape::<f32>(
                &run,
                &f32_candidates,
                suite.name,
                DType::F32,
                rows,
                progress,
            )?;
        }
    }
    Ok(left_out)
}

/// What every shape of one sweep shares.
struct Run {
    kernels: LayerKernels,
    gpu: Gpu,
    /// The f16 / bf16 rows of every shape.
    candidates: Vec<Kernel>,
    effort: Effort,
}

/// The f16 / bf16 rows of every shape, in order, of `families`: the mma.sync production row
/// (`None`: the heuristic's choice for the shape) and its variants, then each Hopper production
/// config and the variants of its tile.
fn candidates(families: &[Family]) -> Vec<Kernel> {
    let mut out = Vec::new();
    if families.contains(&Family::MmaSync) {
        out.push(Kernel::Production(None));
        out.extend(FORWARD_SWEEP.iter().map(Kernel::Variant));
    }
    if families.contains(&Family::Hopper) {
        for config in HOPPER_PRODUCTION {
            out.push(Kernel::Production(Some(config)));
            out.extend(
                FORWARD_SM90_SWEEP
                    .iter()
                    .filter(|v| v.block_n as usize == config.block_n())
                    .map(Kernel::Variant),
            );
        }
    }
    out
}

/// What the f32 sweep runs on each shape, in order: the SIMT configuration the heuristic picks,
/// then every f32 variant.
fn f32_candidates() -> Vec<Kernel> {
    std::iter::once(Kernel::Production(None))
        .chain(FORWARD_F32_SWEEP.iter().map(Kernel::Variant))
        .collect()
}

/// What the sweep reads of the GPU once.
struct Gpu {
    sm_count: usize,
    l2_bytes: usize,
    smem_optin: u32,
}

impl Gpu {
    fn read(kernels: &LayerKernels) -> Result<Self> {
        let ctx = kernels.stream().context();
        let attribute = |a| -> Result<usize> { Ok(ctx.attribute(a)?.max(0) as usize) };
        Ok(Self {
            sm_count: kernels.sm_count(),
            l2_bytes: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            smem_optin: attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as u32,
        })
    }
}

/// The kernel a row times: a production config (`None`: the mma.sync or, for f32, SIMT config the
/// heuristic picks for the shape), or a sweep variant.
#[derive(Clone, Copy)]
enum Kernel {
    Production(Option<ForwardConfig>),
    Variant(&'static LaunchNumbers),
}

impl Kernel {
    /// The production config on `dims`, or `None` for a variant.
    fn production<T: Element>(self, dims: LinearShape, sm_count: usize) -> Option<ForwardConfig> {
        match self {
            Kernel::Production(config) => {
                Some(config.unwrap_or_else(|| choose_config::<T>(dims, sm_count)))
            }
            Kernel::Variant(_) => None,
        }
    }

    /// Queues launch number `launch` (its operand set and dropout subsequence) on the handle's
    /// stream; a stream-K variant with `workspace` (zero-filled once, its flags left zero by
    /// every launch; `None` where no candidate of the shape needs one).
    fn launch<T: Element>(
        self,
        kernels: &LayerKernels,
        ops: &mut Operands<T>,
        workspace: &mut Option<CudaSlice<u8>>,
        dims: LinearShape,
        launch: u64,
    ) -> Result<()> {
        let spec = bench_spec(dims, Nonlinearity::Relu, P, launch);
        let set = ops.set_mut(launch);
        let b = set.b.as_view();
        match self {
            Kernel::Production(_) => kernels.forward(
                &spec,
                &set.x,
                &set.w,
                Some(&b),
                &mut set.y,
                ForwardOptions {
                    config: self.production::<T>(dims, kernels.sm_count()),
                    ..ForwardOptions::default()
                },
            ),
            Kernel::Variant(v) => kernels.forward_sweep_variant(
                &spec,
                v,
                &set.x,
                &set.w,
                Some(&b),
                &mut set.y,
                workspace.as_mut().map(|ws| ws.as_view_mut()),
            ),
        }
    }
}

/// Every kernel of `candidates` on suite shape `shape` in `dtype` (whose element type is `T`),
/// into `rows`: first each kernel's launch 0, its output compared with the production row's
/// above it; then every kernel that ran timed in the same rounds (`measure_interleaved`), so
/// that a drift of the clocks during the sweep moves a variant and its production config alike.
fn sweep_shape<T: Element>(
    run: &Run,
    candidates: &[Kernel],
    shape: &'static str,
    dtype: DType,
    rows: &mut Vec<SweepRow>,
    progress: &mut dyn FnMut(&SweepRow),
) -> Result<()> {
    let Run {
        kernels,
        gpu,
        effort,
        ..
    } = run;
    let dims = suite_shape(shape)?.shape();
    let stream = kernels.stream();
    let mut ops = Operands::<T>::new(stream, dims, gpu.l2_bytes, BENCH_SEED)?;
    // The largest workspace a candidate needs (the stream-K variants': a partial tile and two
    // flags per block), zero-filled; none where no candidate needs one.
    let mut workspace_bytes = 0;
    for kernel in candidates {
        if let Kernel::Variant(v) = kernel {
            workspace_bytes =
                workspace_bytes.max(sweep_workspace_bytes(v, dims, kernels.resident_clusters())?);
        }
    }
    let mut workspace = match workspace_bytes {
        0 => None,
        bytes => Some(stream.alloc_zeros::<u8>(bytes)?),
    };
    let label = |kernel: Kernel| match kernel {
        Kernel::Variant(v) => v.name.trim_start_matches("forward_").to_string(),
        Kernel::Production(_) => format!(
            "production {}",
            kernel
                .production::<T>(dims, gpu.sm_count)
                .map_or("?", |c| c.name())
        ),
    };
    // A row of the table, printed as it is added.
    let mut emit = |kernel: Kernel, outcome: Outcome| {
        let row = SweepRow {
            shape,
            dtype,
            kernel: label(kernel),
            outcome,
        };
        progress(&row);
        rows.push(row);
    };
    // The output of the production row above the current one, if it ran.
    let mut production_y: Option<Vec<f64>> = None;
    let mut checked = Vec::with_capacity(candidates.len());
    for &kernel in candidates {
        if kernel.production::<T>(dims, gpu.sm_count).is_some() {
            production_y = None;
        }
        let state = match kernel {
            Kernel::Variant(v) if v.smem_bytes > gpu.smem_optin => Err(Outcome::DoesNotFit {
                needs: v.smem_bytes,
                limit: gpu.smem_optin,
            }),
            _ => check_kernel(
                kernels,
                kernel,
                &mut ops,
                &mut workspace,
                dims,
                &mut production_y,
            )
            .map_err(|e| Outcome::Failed {
                error: e.to_string(),
            }),
        };
        // A launch refused before it ran leaves the context as it was; a kernel that trapped
        // leaves it unusable, and every later call would fail the same way.
        let lost = match &state {
            Err(Outcome::Failed { .. }) => stream.synchronize().err(),
            _ => None,
        };
        if let Some(e) = lost {
            if let Err(outcome) = state {
                emit(kernel, outcome);
            }
            return Err(Error::Cuda(format!(
                "the CUDA context is unusable after {shape} {} {} failed ({e}); the other rows \
                 of {shape} {} were not measured",
                dtype.name(),
                label(kernel),
                dtype.name()
            )));
        }
        checked.push(state);
    }
    let ready: Vec<usize> = (0..candidates.len())
        .filter(|&c| checked[c].is_ok())
        .collect();
    let mut timings = measure_interleaved(stream, *effort, ready.len(), |c, i| {
        candidates[ready[c]].launch(kernels, &mut ops, &mut workspace, dims, i)
    })
    .into_iter();
    // The first kernel whose timing failed: with a trap, the one that broke the context (the
    // others of the shape then fail after it).
    let mut first_failed: Option<String> = None;
    for (&kernel, state) in candidates.iter().zip(checked) {
        let timed = state.is_ok();
        let outcome = match state {
            Err(outcome) => outcome,
            Ok(comparison) => match timings.next() {
                Some(Ok(timing)) => comparison.outcome(timing.micros().median),
                Some(Err(e)) => Outcome::Failed {
                    error: e.to_string(),
                },
                None => Outcome::Failed {
                    error: "not timed".into(),
                },
            },
        };
        if timed && first_failed.is_none() && matches!(outcome, Outcome::Failed { .. }) {
            first_failed = Some(label(kernel));
        }
        emit(kernel, outcome);
    }
    if let Some(kernel) = first_failed {
        if let Err(e) = stream.synchronize() {
            return Err(Error::Cuda(format!(
                "the CUDA context is unusable after the timing of {shape} {} {kernel} failed \
                 ({e}): the shape's kernels are timed together, so its other rows failed with \
                 it, and the shapes after it were not measured",
                dtype.name()
            )));
        }
    }
    Ok(())
}

/// What a kernel's launch 0 showed against the production row's output.
enum Comparison {
    /// It is the production row.
    Production,
    /// The production row above it failed: nothing to compare with.
    Unchecked,
    /// `differ` elements differ from the production row's output, at relative L2 distance
    /// `distance`, where `differences` says; `reordered` as [`Outcome::Measured`]'s.
    Compared {
        differ: usize,
        distance: f64,
        differences: String,
        reordered: bool,
    },
}

impl Comparison {
    /// The row's outcome once the kernel was timed at `time_us` per launch.
    fn outcome(self, time_us: f64) -> Outcome {
        match self {
            Comparison::Production => Outcome::Measured {
                time_us,
                differ: 0,
                distance: 0.0,
                differences: String::new(),
                reordered: false,
            },
            Comparison::Unchecked => Outcome::Unchecked { time_us },
            Comparison::Compared {
                differ,
                distance,
                differences,
                reordered,
            } => Outcome::Measured {
                time_us,
                differ,
                distance,
                differences,
                reordered,
            },
        }
    }
}

/// Runs `kernel`'s launch 0 and compares its output with the production row's
/// (`production_y`, which a production kernel's check sets). A stream-K variant must leave its
/// workspace's flags zero, as the next launch (its own, or the next stream-K variant's, which
/// shares the workspace) needs them: one that does not is a failure, and the workspace is
/// zero-filled again for the next.
fn check_kernel<T: Element>(
    kernels: &LayerKernels,
    kernel: Kernel,
    ops: &mut Operands<T>,
    workspace: &mut Option<CudaSlice<u8>>,
    dims: LinearShape,
    production_y: &mut Option<Vec<f64>>,
) -> Result<Comparison> {
    let stream = kernels.stream();
    kernel.launch(kernels, ops, workspace, dims, 0)?;
    if let (Kernel::Variant(v), Some(ws)) = (kernel, workspace.as_mut()) {
        if v.stream_k {
            // The flags: two u32 per block of the largest grid, first (src/cuda/forward.rs).
            let flag_bytes = 8 * STREAM_K_MAX_BLOCKS as usize;
            let flags: Vec<u8> = stream.clone_dtoh(&ws.slice(..flag_bytes))?;
            let set = flags
                .chunks_exact(4)
                .filter(|f| f.iter().any(|&b| b != 0))
                .count();
            if set > 0 {
                stream.memset_zeros(ws)?;
                return Err(Error::Cuda(format!(
                    "{} left {set} of its workspace's flags set (each launch must leave them \
                     zero)",
                    v.name
                )));
            }
        }
    }
    let y: Vec<f64> = stream
        .clone_dtoh(&ops.set_mut(0).y)?
        .into_iter()
        .map(|v: T| v.to_f64())
        .collect();
    if matches!(kernel, Kernel::Production(_)) {
        *production_y = Some(y);
        return Ok(Comparison::Production);
    }
    let Some(want) = production_y.as_ref() else {
        return Ok(Comparison::Unchecked);
    };
    let reordered = matches!(kernel, Kernel::Variant(v) if v.stream_k);
    let finite: Vec<f64> = want.iter().copied().filter(|v| v.is_finite()).collect();
    let rms = (finite.iter().map(|v| v * v).sum::<f64>() / finite.len().max(1) as f64).sqrt();
    let floor = 1e-3 * rms;
    let ulp = relative_ulp::<T>();
    let differs = |i: usize| {
        let (a, b) = (y[i], want[i]);
        if !reordered || !a.is_finite() || !b.is_finite() {
            a.to_bits() != b.to_bits()
        } else {
            (a - b).abs() > (ulp * a.abs().max(b.abs())).max(floor)
        }
    };
    let differ = (0..y.len()).filter(|&i| differs(i)).count();
    Ok(Comparison::Compared {
        reordered,
        differ,
        distance: reference::relative_l2_error_nonfinite(&y, want),
        differences: if differ == 0 {
            String::new()
        } else {
            reference::describe_differences(dims.m, dims.n, &y, want, differs)
        },
    })
}

/// One unit in the last place of `T`, relative to a value's magnitude: the spacing of its
/// values just above a power of two.
fn relative_ulp<T: Element>() -> f64 {
    match T::NAME {
        "bf16" => 2f64.powi(-7),
        "f16" => 2f64.powi(-10),
        _ => 2f64.powi(-23),
    }
}

/// One line of the table; `production_us` (the production row's time of the same shape and
/// dtype) gives the ratio column.
pub fn format_row(row: &SweepRow, production_us: Option<f64>) -> String {
    let head = format!(
        "{:<5} {:<5} {:<26}",
        row.shape,
        row.dtype.name(),
        row.kernel
    );
    match row.outcome {
        Outcome::Measured {
            time_us,
            differ,
            distance,
            ref differences,
            reordered,
        } => {
            let dims = suite_shape(row.shape).map(|s| s.shape());
            let tflops = dims.map_or(f64::NAN, |d| forward_flops(d) / (time_us * 1e-6) / 1e12);
            let ratio = production_us.map_or("-".to_string(), |p| format!("{:.3}", p / time_us));
            let check = if differ == 0 && reordered {
                format!("sums reordered: within one ulp of production, rel. L2 {distance:.2e}")
            } else if differ == 0 {
                "bit-identical".to_string()
            } else if reordered {
                format!(
                    "DIFFERS: {differ} elements beyond one ulp, rel. L2 {distance:.2e}; \
                     {differences}"
                )
            } else {
                format!("DIFFERS: {differ} elements, rel. L2 {distance:.2e}; {differences}")
            };
            format!("{head} {time_us:>10.1} {tflops:>8.1} {ratio:>7}  {check}")
        }
        Outcome::Unchecked { time_us } => {
            let dims = suite_shape(row.shape).map(|s| s.shape());
            let tflops = dims.map_or(f64::NAN, |d| forward_flops(d) / (time_us * 1e-6) / 1e12);
            format!(
                "{head} {time_us:>10.1} {tflops:>8.1} {:>7}  not compared: the production row \
                 failed",
                "-"
            )
        }
        Outcome::DoesNotFit { needs, limit } => format!(
            "{head} {:>10} {:>8} {:>7}  not run: needs {needs} B of shared memory, the GPU \
             allows {limit} B",
            "-", "-", "-"
        ),
        Outcome::Failed { ref error } => {
            format!("{head} {:>10} {:>8} {:>7}  FAILED: {error}", "-", "-", "-")
        }
    }
}

/// The table: one line per row, the ratio to production (production time / variant time, above
/// 1 = faster than production) of the same shape and dtype.
pub fn format_table(rows: &[SweepRow]) -> String {
    let mut out = format!(
        "{:<5} {:<5} {:<26} {:>10} {:>8} {:>7}  {}\n",
        "shape", "dtype", "kernel", "time (us)", "TFLOP/s", "ratio", "output vs production"
    );
    let mut production_us = None;
    for row in rows {
        if row.kernel.starts_with("production") {
            production_us = match row.outcome {
                Outcome::Measured { time_us, .. } => Some(time_us),
                _ => None,
            };
        }
        out.push_str(&format_row(row, production_us));
        out.push('\n');
    }
    out.push_str(&format!(
        "(p = {P}, ReLU, bias; TFLOP/s counts 2mnk; ratio = production time / kernel time)"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_gives_ratios_to_the_production_row_of_the_same_shape_and_dtype() {
        let row = |kernel: &str, outcome| SweepRow {
            shape: "sq",
            dtype: DType::Bf16,
            kernel: kernel.to_string(),
            outcome,
        };
        let rows = [
            row(
                "production tc128x256",
                Outcome::Measured {
                    time_us: 200.0,
                    differ: 0,
                    distance: 0.0,
                    differences: String::new(),
                    reordered: false,
                },
            ),
            row(
                "sweep_tc128x256_bk64_f2",
                Outcome::Measured {
                    time_us: 100.0,
                    differ: 3,
                    distance: 1e-3,
                    differences: "3 of 12 elements differ, in rows 1".to_string(),
                    reordered: false,
                },
            ),
            row(
                "sweep_tc128x256_bk64_f1",
                Outcome::DoesNotFit {
                    needs: 147_456,
                    limit: 101_376,
                },
            ),
        ];
        let table = format_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].contains("1.000") && lines[1].contains("bit-identical"),
            "{table}"
        );
        assert!(
            lines[2].contains("2.000")
                && lines[2].contains("DIFFERS: 3 elements")
                && lines[2].ends_with("; 3 of 12 elements differ, in rows 1"),
            "{table}"
        );
        assert!(lines[3].contains("not run: needs 147456 B"), "{table}");
    }

    #[test]
    fn failed_rows_are_listed_with_their_error_and_fail_the_run() {
        let row = |kernel: &str, outcome| SweepRow {
            shape: "up",
            dtype: DType::F16,
            kernel: kernel.to_string(),
            outcome,
        };
        let measured = |differ| Outcome::Measured {
            time_us: 100.0,
            differ,
            distance: 0.0,
            differences: String::new(),
            reordered: false,
        };
        let failed = row(
            "production wg128x256",
            Outcome::Failed {
                error: "CUDA error: CUDA_ERROR_ILLEGAL_INSTRUCTION".to_string(),
            },
        );
        let unchecked = row("sweep_wg128x256_st3", Outcome::Unchecked { time_us: 50.0 });
        let table = format_table(&[failed.clone(), unchecked.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].ends_with("FAILED: CUDA error: CUDA_ERROR_ILLEGAL_INSTRUCTION"),
            "{table}"
        );
        // No ratio without a production time, and no comparison without its output.
        assert!(
            lines[2].contains("    50.0")
                && lines[2].ends_with("not compared: the production row failed"),
            "{table}"
        );
        assert!(!lines[2].contains("2.000"), "{table}");

        let fine = row("production wg128x256", measured(0));
        let fits_not = row(
            "sweep_wg64x256_pp_tmastore",
            Outcome::DoesNotFit {
                needs: 231_424,
                limit: 101_376,
            },
        );
        assert_eq!(exit_code(&[fine.clone(), fits_not.clone()], false), 0);
        assert_eq!(exit_code(&[fine.clone(), unchecked], false), 0);
        assert_eq!(exit_code(&[fine.clone(), failed], false), EXIT_FAILED);
        assert_eq!(
            exit_code(&[fine.clone(), row("v", measured(1))], false),
            EXIT_FAILED
        );
        assert_eq!(
            exit_code(&[fine], true),
            EXIT_FAILED,
            "a sweep that stopped early"
        );
    }

    #[test]
    fn a_stream_k_row_passes_within_one_ulp_and_fails_beyond_it() {
        let row = |differ| SweepRow {
            shape: "sq",
            dtype: DType::Bf16,
            kernel: "sweep_wg128x256_sk".to_string(),
            outcome: Outcome::Measured {
                time_us: 97.0,
                differ,
                distance: 3e-4,
                differences: "40 of 16777216 elements differ".to_string(),
                reordered: true,
            },
        };
        let within = row(0);
        assert_eq!(exit_code(std::slice::from_ref(&within), false), 0);
        let line = format_row(&within, Some(100.0));
        assert!(line.contains("sums reordered: within one ulp"), "{line}");
        let beyond = row(40);
        assert_eq!(exit_code(std::slice::from_ref(&beyond), false), EXIT_FAILED);
        let line = format_row(&beyond, Some(100.0));
        assert!(
            line.contains("DIFFERS: 40 elements beyond one ulp"),
            "{line}"
        );
        assert_eq!(relative_ulp::<bf16>(), 1.0 / 128.0);
        assert_eq!(relative_ulp::<f16>(), 1.0 / 1024.0);
    }

    #[test]
    fn flags_select_families_and_shapes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let all = Cli::try_parse_from(["sweep"]).unwrap().options;
        for family in [Family::MmaSync, Family::Hopper, Family::F32] {
            assert!(all.runs(family));
        }
        assert!(SHAPES.iter().all(|s| all.runs_shape(s)));
        let some = Cli::try_parse_from(["sweep", "--family", "hopper,f32", "--shapes", "wide"])
            .unwrap()
            .options;
        assert!(some.runs(Family::Hopper) && some.runs(Family::F32));
        assert!(!some.runs(Family::MmaSync));
        assert!(some.runs_shape("wide") && !some.runs_shape("sq"));
        assert!(Cli::try_parse_from(["sweep", "--shapes", "odd"]).is_err());
        assert!(Cli::try_parse_from(["sweep", "--family", "tf32"]).is_err());
    }

    #[test]
    fn every_shape_is_in_the_suite() {
        for name in SHAPES {
            assert!(suite_shape(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn flags_that_ask_for_nothing_are_refused() {
        let options = |family: Vec<Family>, shapes: Vec<&'static str>| Options {
            quick: true,
            device: 0,
            family,
            shapes,
        };
        assert!(options(vec![], vec![]).check().is_ok());
        assert!(options(vec![Family::F32], vec!["sq"]).check().is_ok());
        // f32 runs on sq alone; with another family the shapes still measure something.
        let refused = options(vec![Family::F32], vec!["up", "wide"]).check();
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("f32 runs on")),
            "{refused:?}"
        );
        assert!(options(vec![Family::F32, Family::MmaSync], vec!["up"])
            .check()
            .is_ok());
        let twice = options(vec![Family::Hopper, Family::Hopper], vec![]).check();
        assert!(
            matches!(&twice, Err(Error::InvalidArgument(m)) if m.contains("hopper twice")),
            "{twice:?}"
        );
        let twice = options(vec![], vec!["sq", "up", "sq"]).check();
        assert!(
            matches!(&twice, Err(Error::InvalidArgument(m)) if m.contains("sq twice")),
            "{twice:?}"
        );
    }
}
