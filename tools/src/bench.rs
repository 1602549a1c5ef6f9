//! Benchmark machinery shared by `cargo bench` (benches/) and `fusedrop bench`: the shape suite
//! of the performance targets, random operands rotated among buffers larger than L2, CUDA-event
//! timing, the floors measured in the same run (copy bandwidth, matrix rate), and the table and
//! its CSV. The method is described in docs/PERF.md.
//!
//! Every figure is a GPU time between two CUDA events recorded on the stream around the
//! launches; nothing here is meaningful on a machine without a GPU, where [`run_table`] returns
//! the error of [`fusedrop::cuda::open_device`].
//!
//! ```no_run
//! use fusedrop_tools::bench::{run_table, TableOptions};
//! let table = run_table(&TableOptions::quick(), &mut |row| println!("{}", row.impl_name))?;
//! let mut csv = Vec::new();
//! fusedrop_tools::bench::write_csv(&table.rows, &mut csv)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys::{
    CUdevice_attribute, CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use cudarc::driver::{CudaContext, CudaGraph, CudaSlice, CudaStream, CudaView, CudaViewMut};
use half::{bf16, f16};
use rand::{RngCore, SeedableRng};
use serde::{Serialize, Serializer};

use crate::baseline::{cublaslt_version, Blas, GemmOp, GemmPlan};
use crate::invalid;
use fusedrop::cuda::backward::{self, BackwardKernel, BackwardOptions, GradientsMut};
use fusedrop::cuda::forward::{choose_config, hopper_operands_fit, ForwardConfig, ForwardOptions};
use fusedrop::cuda::{LayerKernels, LoadOptions, SeedSource};
use fusedrop::Element;
use fusedrop::{DropoutSpec, Geometry, LayerSpec, LinearShape, Nonlinearity};
use fusedrop::{Error, Result};

// ---------------------------------------------------------------------------------------------
// The suite

/// An element type of a benchmark row (the runtime twin of [`Element`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `f32`, true fp32 (no TF32).
    F32,
    /// `f16`, f32 accumulation.
    F16,
    /// `bf16`, f32 accumulation.
    Bf16,
}

impl DType {
    /// Every dtype, in the order the table lists them.
    pub const ALL: [DType; 3] = [DType::Bf16, DType::F16, DType::F32];

    /// The name used in tables, CSVs and on the command line (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// Parses a name as printed by [`DType::name`].
    pub fn parse(name: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| invalid!("dtype {name:?} is unknown; expected one of f32, f16, bf16"))
    }
}

/// One shape of the suite in docs (targets.md): X `[m, k]`, W `[n, k]`, Y `[m, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteShape {
    /// Short name used in tables and on the command line.
    pub name: &'static str,
    /// Rows of X (tokens).
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Whether the f32 rows are part of the suite for this shape (f32 is for sq, small and odd
    /// only).
    pub with_f32: bool,
    /// What the shape stresses.
    pub purpose: &'static str,
}

impl SuiteShape {
    /// The layer shape.
    pub fn shape(&self) -> LinearShape {
        LinearShape::new(self.m, self.n, self.k)
    }

    /// The dtypes this shape is measured in.
    pub fn dtypes(&self) -> Vec<DType> {
        DType::ALL
            .into_iter()
            .filter(|&d| d != DType::F32 || self.with_f32)
            .collect()
    }
}

/// The shape suite of the performance targets (`M`, `K`, `N` in that document's order).
pub const SUITE: [SuiteShape; 6] = [
    SuiteShape {
        name: "up",
        m: 8192,
        k: 4096,
        n: 16384,
        with_f32: false,
        purpose: "transformer MLP up-projection, compute-bound",
    },
    SuiteShape {
        name: "down",
        m: 8192,
        k: 16384,
        n: 4096,
        with_f32: false,
        purpose: "long K, compute-bound",
    },
    SuiteShape {
        name: "sq",
        m: 4096,
        k: 4096,
        n: 4096,
        with_f32: true,
        purpose: "square",
    },
    SuiteShape {
        name: "small",
        m: 64,
        k: 4096,
        n: 4096,
        with_f32: true,
        purpose: "inference-sized batch, bound by reading W",
    },
    SuiteShape {
        name: "wide",
        m: 32768,
        k: 256,
        n: 1024,
        with_f32: false,
        purpose: "short K: the epilogue dominates",
    },
    SuiteShape {
        name: "odd",
        m: 1000,
        k: 1000,
        n: 1000,
        with_f32: true,
        purpose: "no dimension a multiple of any tile",
    },
];

/// Looks a suite shape up by name.
pub fn suite_shape(name: &str) -> Result<SuiteShape> {
    SUITE.into_iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<_> = SUITE.iter().map(|s| s.name).collect();
        invalid!(
            "shape {name:?} is unknown; expected one of {}",
            names.join(", ")
        )
    })
}

/// The dropout probabilities of the suite: 0.1 (the default), 0 (the fast path) and 0.5.
pub const P_VALUES: [f32; 3] = [0.1, 0.0, 0.5];

/// Small shapes for the CPU reference benches that run where there is no GPU.
pub const CPU_SHAPES: [LinearShape; 2] =
    [LinearShape::new(64, 256, 128), LinearShape::new(37, 61, 53)];

/// The seed of every benchmark's dropout; the Philox subsequence is the launch index, so each
/// launch draws a fresh mask as it would in training.
pub const BENCH_SEED: u64 = 0x5eed_f00d;

/// `2·m·n·k`: the multiply-adds of the forward product, counted as two operations.
pub fn forward_flops(s: LinearShape) -> f64 {
    2.0 * s.m as f64 * s.n as f64 * s.k as f64
}

/// `4·m·n·k`: the two products of the backward pass (dX and dW).
pub fn backward_flops(s: LinearShape) -> f64 {
    2.0 * forward_flops(s)
}

/// The bytes a forward must move at least: read X, W, b once, write Y once.
pub fn forward_bytes(s: LinearShape, dtype: DType) -> f64 {
    let (m, n, k) = (s.m as f64, s.n as f64, s.k as f64);
    (m * k + n * k + n + m * n) * dtype.size() as f64
}

/// The bytes a backward must move at least: read X, W, dY and the saved Y once, write dX, dW
/// and db once.
pub fn backward_bytes(s: LinearShape, dtype: DType) -> f64 {
    let (m, n, k) = (s.m as f64, s.n as f64, s.k as f64);
    (2.0 * m * k + 2.0 * n * k + 2.0 * m * n + n) * dtype.size() as f64
}

// ---------------------------------------------------------------------------------------------
// Operands

/// `len` random values, none of them zero: magnitudes uniform in `[0.5, 1)`, random signs.
/// Zeros are avoided because tensor cores draw less power (and may run faster) on them, and a
/// kernel that skips work on zeros would be flattered.
pub fn random_nonzero<T: Element>(len: usize, seed: u64) -> Vec<T> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let bits = rng.next_u64();
        for lane in 0..4 {
            if out.len() == len {
                break;
            }
            let word = (bits >> (16 * lane)) as u16;
            let magnitude = 0.5 + f32::from(word & 0x7fff) / 65536.0;
            let value = if word & 0x8000 != 0 {
                -magnitude
            } else {
                magnitude
            };
            out.push(T::from_f32(value));
        }
    }
    out
}

/// The buffers of one launch of every benchmarked path, forward and backward.
#[derive(Debug)]
pub struct OperandSet<T> {
    /// Input `[m, k]`.
    pub x: CudaSlice<T>,
    /// Weights `[n, k]`.
    pub w: CudaSlice<T>,
    /// Bias `[n]`.
    pub b: CudaSlice<T>,
    /// Forward output `[m, n]`.
    pub y: CudaSlice<T>,
    /// Upstream gradient `[m, n]`.
    pub dy: CudaSlice<T>,
    /// A saved forward output `[m, n]` for the backward pass: random, about half of it zero as
    /// after ReLU (the backward's cost does not depend on which elements are zero).
    pub y_saved: CudaSlice<T>,
    /// dZ `[m, n]`, the elementwise pass's output in the unfused backward.
    pub dz: CudaSlice<T>,
    /// Gradient of X `[m, k]`.
    pub dx: CudaSlice<T>,
    /// Gradient of W `[n, k]`.
    pub dw: CudaSlice<T>,
    /// Gradient of b `[n]`.
    pub db: CudaSlice<T>,
}

/// Several [`OperandSet`]s that launches cycle through, so that no launch finds its operands in
/// L2 from the previous one: together the sets hold at least four times the L2 size of what a
/// forward reads and writes (at least two sets, at most 32).
#[derive(Debug)]
pub struct Operands<T> {
    shape: LinearShape,
    sets: Vec<OperandSet<T>>,
}

impl<T: Element> Operands<T> {
    /// Allocates and fills the sets for `shape` on `stream`. Fails (instead of exhausting the
    /// GPU) when two sets would not fit in half of the free memory.
    pub fn new(
        stream: &Arc<CudaStream>,
        shape: LinearShape,
        l2_bytes: usize,
        seed: u64,
    ) -> Result<Self> {
        let sizes = fusedrop::validate::check_shape(shape)?;
        let elem = std::mem::size_of::<T>();
        let touched = (sizes.x + sizes.w + shape.n + sizes.y) * elem;
        let per_set = (sizes.x * 2 + sizes.w * 2 + shape.n * 2 + sizes.y * 4) * elem;
        let (free, _) = stream.context().mem_get_info()?;
        let fit = (free / 2) / per_set.max(1);
        if fit < 2 {
            return Err(invalid!(
                "shape m={}, n={}, k={} in {} needs 2 x {} MB of operands; {} MB of GPU memory \
                 are free",
                shape.m,
                shape.n,
                shape.k,
                T::NAME,
                per_set >> 20,
                free >> 20
            ));
        }
        let count = (4 * l2_bytes)
            .div_ceil(touched.max(1))
            .clamp(2, 32)
            .min(fit);
        // Every buffer of set i is a window of one random pool starting at 512·i + a few elements,
        // so sets differ element for element while the host draws the pool only once.
        let pool_len = sizes.x.max(sizes.w).max(sizes.y) + 512 * count + 64;
        let pool = random_nonzero::<T>(pool_len, seed);
        let upload = |len: usize, offset: usize| -> Result<CudaSlice<T>> {
            Ok(stream.clone_htod(&pool[offset..offset + len])?)
        };
        let mut sets = Vec::with_capacity(count);
        for i in 0..count {
            let base = 512 * i;
            let relu: Vec<T> = pool[base + 40..base + 40 + sizes.y]
                .iter()
                .map(|v| {
                    if v.to_f32() > 0.0 {
                        *v
                    } else {
                        T::from_f32(0.0)
                    }
                })
                .collect();
            sets.push(OperandSet {
                x: upload(sizes.x, base)?,
                w: upload(sizes.w, base + 8)?,
                b: upload(shape.n, base + 16)?,
                y: stream.alloc_zeros(sizes.y)?,
                dy: upload(sizes.y, base + 24)?,
                y_saved: stream.clone_htod(&relu)?,
                dz: stream.alloc_zeros(sizes.y)?,
                dx: stream.alloc_zeros(sizes.x)?,
                dw: stream.alloc_zeros(sizes.w)?,
                db: stream.alloc_zeros(shape.n)?,
            });
        }
        stream.synchronize()?;
        Ok(Self { shape, sets })
    }

    /// The shape the sets were made for.
    pub fn shape(&self) -> LinearShape {
        self.shape
    }

    /// How many sets launches rotate through.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Always false: there are at least two sets.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The set launch number `launch` uses.
    pub fn set_mut(&mut self, launch: u64) -> &mut OperandSet<T> {
        let count = self.sets.len() as u64;
        &mut self.sets[(launch % count) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Queues `count` launches (`launch(i)` for i in `0..count`) between two CUDA events on
/// `stream` and returns the GPU time between the events. This is the routine criterion's
/// `iter_custom` calls.
pub fn time_launches(
    stream: &Arc<CudaStream>,
    count: u64,
    mut launch: impl FnMut(u64) -> Result<()>,
) -> Result<Duration> {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags)?;
    for i in 0..count {
        launch(i)?;
    }
    let end = stream.record_event(flags)?;
    let ms = start.elapsed_ms(&end)?;
    Ok(Duration::from_secs_f64(f64::from(ms) / 1e3))
}

/// How long [`measure`] works on one figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effort {
    /// Launches before timing starts (module loading, clocks, caches of the heuristics).
    pub warmup: u64,
    /// Timed repetitions; the figure is their median.
    pub reps: usize,
    /// GPU time each repetition should last, by adjusting its number of launches.
    pub rep_time: Duration,
}

impl Effort {
    /// The effort of the full table.
    pub const FULL: Effort = Effort {
        warmup: 5,
        reps: 15,
        rep_time: Duration::from_millis(20),
    };
    /// The effort of `--quick`.
    pub const QUICK: Effort = Effort {
        warmup: 3,
        reps: 5,
        rep_time: Duration::from_millis(5),
    };
}

/// One measured figure: the median GPU time per launch over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median of the repetitions' time divided by their launch count.
    pub per_launch: Duration,
    /// Fastest repetition, per launch.
    pub min: Duration,
    /// Slowest repetition, per launch.
    pub max: Duration,
    /// Launches per repetition.
    pub launches: u64,
}

impl Timing {
    /// The figure in microseconds per call, as the table and the CSV carry it.
    pub fn micros(&self) -> Micros {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Micros {
            median: us(self.per_launch),
            fastest: us(self.min),
            slowest: us(self.max),
        }
    }
}

/// A measured time per call in microseconds: the median repetition's and the range of the
/// repetitions, so that a comparison can tell a difference from the noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Micros {
    /// The median repetition's time per call.
    pub median: f64,
    /// The fastest repetition's.
    pub fastest: f64,
    /// The slowest repetition's.
    pub slowest: f64,
}

impl std::ops::Add for Micros {
    type Output = Micros;

    /// Two passes one after the other: the medians added, and the range as wide as the two
    /// ranges together could make it.
    fn add(self, other: Micros) -> Micros {
        Micros {
            median: self.median + other.median,
            fastest: self.fastest + other.fastest,
            slowest: self.slowest + other.slowest,
        }
    }
}

/// Warms up, sizes a repetition to `effort.rep_time`, and returns the median of
/// `effort.reps` repetitions. `launch` receives a running launch number (for input rotation
/// and fresh dropout subsequences) that keeps counting across the warm-up and every repetition.
pub fn measure(
    stream: &Arc<CudaStream>,
    effort: Effort,
    mut launch: impl FnMut(u64) -> Result<()>,
) -> Result<Timing> {
    // One contender, one result.
    measure_interleaved(stream, effort, 1, |_, i| launch(i)).remove(0)
}

/// [`measure`] for `contenders` figures at once, in the same rounds: each is warmed up and
/// sized on its own, then every round times one repetition of each in turn, so that a drift of
/// the clocks or of the GPU's temperature during the run moves all of them alike and their
/// ratios stay fair. `launch(c, i)` queues launch `i` of contender `c`; the launch numbers
/// count across the contenders, so that consecutive launches, of one contender or two, take
/// different operand sets ([`Operands::set_mut`]). A contender that fails is left out of the
/// later rounds and reported by its error; the others go on. (A kernel that traps leaves the
/// CUDA context unusable, so the others then fail too: one such kernel costs every figure of
/// its pass, where measured one after another the figures before it would have been kept.)
pub fn measure_interleaved(
    stream: &Arc<CudaStream>,
    effort: Effort,
    contenders: usize,
    mut launch: impl FnMut(usize, u64) -> Result<()>,
) -> Vec<Result<Timing>> {
    let mut next = 0u64;
    let mut step = |c: usize| {
        let i = next;
        next += 1;
        launch(c, i)
    };
    let mut timed = |c: usize, count: u64| time_launches(stream, count, |_| step(c));
    in_rounds(effort, contenders, |c, phase| match phase {
        Phase::Warmup => {
            timed(c, effort.warmup)?;
            Ok(Duration::ZERO)
        }
        Phase::Time(count) => timed(c, count),
    })
}

/// What [`in_rounds`] asks its timer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Queue the warm-up launches (their time is not used).
    Warmup,
    /// Queue this many launches and return the GPU time they took.
    Time(u64),
}

/// The schedule of [`measure_interleaved`], apart from the GPU: for each contender in turn a
/// warm-up and a probe of 3 launches that sizes its repetitions to `effort.rep_time`, then
/// `effort.reps` rounds, each timing one repetition of every contender that has not failed.
fn in_rounds(
    effort: Effort,
    contenders: usize,
    mut time: impl FnMut(usize, Phase) -> Result<Duration>,
) -> Vec<Result<Timing>> {
    let mut sizes: Vec<Result<u64>> = (0..contenders)
        .map(|c| {
            time(c, Phase::Warmup)?;
            let probe = time(c, Phase::Time(3))? / 3;
            Ok(
                (effort.rep_time.as_secs_f64() / probe.as_secs_f64().max(1e-7))
                    .ceil()
                    .clamp(1.0, 2000.0) as u64,
            )
        })
        .collect();
    let mut per: Vec<Vec<Duration>> = vec![Vec::with_capacity(effort.reps); contenders];
    for _ in 0..effort.reps.max(1) {
        for c in 0..contenders {
            let Ok(launches) = sizes[c] else { continue };
            match time(c, Phase::Time(launches)) {
                Ok(t) => per[c].push(t / launches as u32),
                Err(e) => sizes[c] = Err(e),
            }
        }
    }
    sizes
        .into_iter()
        .zip(per)
        .map(|(launches, mut per)| {
            let launches = launches?;
            per.sort();
            Ok(Timing {
                per_launch: per[per.len() / 2],
                min: per[0],
                max: per[per.len() - 1],
                launches,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The GPU and its floors

/// What the table header says about the GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// The device name the driver reports.
    pub name: String,
    /// The kernel driver version (from /proc/driver/nvidia/version), or the CUDA version the
    /// driver API reports when that file is absent.
    pub driver: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: i32,
    /// L2 cache size in bytes.
    pub l2_bytes: usize,
    /// cuBLASLt version number.
    pub cublaslt: usize,
}

/// The driver version: the kernel module's ("580.95.05") when Linux exposes it, else the CUDA
/// version of the driver API ("CUDA 13.0").
pub fn driver_version() -> String {
    if let Ok(text) = std::fs::read_to_string("/proc/driver/nvidia/version") {
        let version = text.lines().next().and_then(|line| {
            line.split_whitespace()
                .find(|t| t.contains('.') && t.chars().all(|c| c.is_ascii_digit() || c == '.'))
        });
        if let Some(v) = version {
            return v.to_string();
        }
    }
    if !fusedrop::cuda::driver_present() {
        return "none".into();
    }
    let mut v = 0i32;
    // SAFETY: the driver library is present (checked above); cuDriverGetVersion writes one int
    // through a valid pointer and needs no initialised context.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if status == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
    } else {
        "unknown".into()
    }
}

/// Reads the [`GpuInfo`] of a context (and the cuBLASLt version, which must be loadable).
pub fn gpu_info(ctx: &Arc<CudaContext>) -> Result<GpuInfo> {
    let cc = ctx.compute_capability()?;
    Ok(GpuInfo {
        name: ctx.name()?,
        driver: driver_version(),
        compute_capability: cc,
        sm_count: ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        l2_bytes: ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?
            .max(0) as usize,
        cublaslt: cublaslt_version()?,
    })
}

/// Everything a GPU benchmark needs, opened once: the context, the fused kernels on its default
/// stream, a cuBLASLt handle on that stream and the [`GpuInfo`].
#[derive(Debug)]
pub struct BenchGpu {
    /// The device's context.
    pub ctx: Arc<CudaContext>,
    /// The fused kernels on the stream every benchmark launches on (`kernels.stream()`, the
    /// context's default stream: one stream, so cudarc records no cross-stream events around
    /// launches).
    pub kernels: LayerKernels,
    /// cuBLASLt on `kernels.stream()`.
    pub blas: Blas,
    /// Name, driver, L2 size.
    pub info: GpuInfo,
}

impl BenchGpu {
    /// Opens GPU `ordinal`, loading the kernel modules `load` allows. Fails, without panicking,
    /// when the kernels were not built, there is no driver or no such GPU, or cuBLASLt cannot be
    /// loaded.
    pub fn open(ordinal: usize, load: LoadOptions) -> Result<Self> {
        let ctx = fusedrop::cuda::open_device(ordinal)?;
        let kernels = LayerKernels::with_options(ctx.default_stream(), load)?;
        let blas = Blas::new(kernels.stream())?;
        let info = gpu_info(&ctx)?;
        Ok(Self {
            ctx,
            kernels,
            blas,
            info,
        })
    }
}

/// The floors measured at the start of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Floors {
    /// Device-to-device copy of a buffer far larger than L2, counted as bytes read plus bytes
    /// written, per second, in GB/s (1e9).
    pub copy_gbps: f64,
    /// cuBLASLt GEMM rate (no epilogue) in TFLOP/s per dtype: 8192³ for bf16/f16, 4096³ for f32.
    pub rate_tflops: HashMap<DType, f64>,
}

fn measure_copy(stream: &Arc<CudaStream>, l2_bytes: usize, effort: Effort) -> Result<f64> {
    let bytes = (16 * l2_bytes).clamp(256 << 20, 1 << 30);
    // One random mebibyte tiled over the buffer: random enough that no memory compression
    // could apply, and cheap to make on the host.
    let mut block = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut block);
    let host: Vec<u8> = block.iter().copied().cycle().take(bytes).collect();
    let src = stream.clone_htod(&host)?;
    let mut dst = stream.alloc_zeros::<u8>(bytes)?;
    let t = measure(stream, effort, |_| Ok(stream.memcpy_dtod(&src, &mut dst)?))?;
    Ok(2.0 * bytes as f64 / t.per_launch.as_secs_f64() / 1e9)
}

fn measure_rate<T: Element>(blas: &Blas, size: usize, effort: Effort) -> Result<f64> {
    let stream = blas.stream();
    let shape = LinearShape::new(size, size, size);
    let plan = blas.plan::<T>(GemmOp::Forward, shape)?;
    let x = stream.clone_htod(&random_nonzero::<T>(size * size, 21))?;
    let w = stream.clone_htod(&random_nonzero::<T>(size * size, 22))?;
    let mut y = stream.alloc_zeros::<T>(size * size)?;
    let t = measure(stream, effort, |_| plan.forward(&x, &w, &mut y))?;
    Ok(forward_flops(shape) / t.per_launch.as_secs_f64() / 1e12)
}

// ---------------------------------------------------------------------------------------------
// The table

/// One pass of the layer, as a criterion bench (tools/benches/) times it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Y from X, W and b.
    Forward,
    /// dX, dW and db from dY (and the saved Y).
    Backward,
}

impl Pass {
    /// The first part of every benchmark group's name.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        }
    }
}

/// Which passes a table measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passes {
    /// Forward only.
    Forward,
    /// Backward only.
    Backward,
    /// Both, plus the derived forward+backward rows.
    Both,
}

/// What [`run_table`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct TableOptions {
    /// Shapes, in order.
    pub shapes: Vec<SuiteShape>,
    /// Dtypes; a shape is measured only in the dtypes of the suite ([`SuiteShape::dtypes`]).
    pub dtypes: Vec<DType>,
    /// Dropout probabilities.
    pub probabilities: Vec<f32>,
    /// Forward, backward or both.
    pub passes: Passes,
    /// How long each figure is measured.
    pub effort: Effort,
    /// The GPU ordinal.
    pub device: usize,
    /// The shapes (by name) whose fused forward, and forward+backward when both passes are
    /// measured, are also timed as CUDA graph replays (the `fused_graph` rows, issue 15): the
    /// launch overhead shows where the GPU work is short. A name not in `shapes` is not measured.
    pub graph_shapes: Vec<&'static str>,
    /// Which kernel modules the library loads (`LoadOptions { hopper: false }`: the `fused` rows
    /// are the mma.sync / SIMT kernels on a Hopper GPU too, and no Hopper variant rows
    /// (`fused_hopper`, `fused_hop*`, `fused_wg*`) are measured).
    pub load: LoadOptions,
}

impl TableOptions {
    /// The whole suite: every shape, dtype and probability, both passes, graph replays on
    /// `small`.
    pub fn full() -> Self {
        Self {
            shapes: SUITE.to_vec(),
            dtypes: DType::ALL.to_vec(),
            probabilities: P_VALUES.to_vec(),
            passes: Passes::Both,
            effort: Effort::FULL,
            device: 0,
            graph_shapes: vec!["small"],
            load: LoadOptions::default(),
        }
    }

    /// A subset that runs in well under two minutes on an H100: bf16 on up, sq, small, wide and
    /// odd, plus f32 on those of them that take it (sq, small, odd); p = 0.1; both passes;
    /// graph replays on `small`; short measurements.
    pub fn quick() -> Self {
        let names = ["up", "sq", "small", "wide", "odd"];
        Self {
            shapes: SUITE
                .into_iter()
                .filter(|s| names.contains(&s.name))
                .collect(),
            dtypes: vec![DType::Bf16, DType::F32],
            probabilities: vec![0.1],
            passes: Passes::Both,
            effort: Effort::QUICK,
            device: 0,
            graph_shapes: vec!["small"],
            load: LoadOptions::default(),
        }
    }
}

/// One line of the table and of the CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Who measured it: `fusedrop` here, `torch` in the peer script's CSV.
    pub source: String,
    /// Suite shape name.
    pub shape: String,
    /// Sizes.
    pub dims: LinearShape,
    /// Element type.
    pub dtype: DType,
    /// Dropout probability; `None` for rows that do not depend on it (the GEMM floor).
    pub p: Option<f32>,
    /// `forward`, `backward` or `forward+backward` (a sum of the two measured rows, except
    /// `fused_graph`'s, which is measured as one replay).
    pub pass: &'static str,
    /// `fused` (ours), `gemm_floor` (cuBLASLt products alone), `unfused` (cuBLASLt with its
    /// epilogue, plus the standalone dropout kernel), or a variant of `fused`: a [`Variant`]'s
    /// name (`fused_mma_sync`, `fused_wg*`, `fused_hopper`, `fused_hop256`, `fused_hop128`,
    /// `fused_hop_ts`, `fused_hop_dz`, `fused_hop_tw`, `fused_hop_1l`, `fused_id_dz`,
    /// `fused_id_tw`,
    /// `fused_identity`,
    /// `fused_ident_ws`, `fused_mma_split`,
    /// `fused_simt_split`) or
    /// [`GRAPH_IMPL`].
    pub impl_name: &'static str,
    /// Median GPU time per call, in microseconds: the median repetition's (repetitions of many
    /// calls, see [`Effort`]).
    pub time_us: f64,
    /// The fastest repetition's time per call, in microseconds (for a sum of two passes, the
    /// sum of theirs).
    pub fastest_us: f64,
    /// The slowest repetition's, likewise.
    pub slowest_us: f64,
    /// Useful arithmetic (2mnk forward, 4mnk backward) per second, in TFLOP/s.
    pub tflops: f64,
    /// Bytes that must move (see [`forward_bytes`], [`backward_bytes`]) per second, in GB/s.
    pub gbps: f64,
    /// Time over the GEMM floor's time for the same shape, dtype and pass.
    pub vs_gemm_floor: Option<f64>,
    /// Time over the unfused path's time for the same shape, dtype, p and pass (`None` for the
    /// GEMM floor, which has no p).
    pub vs_unfused: Option<f64>,
    /// `gbps` as a percentage of the copy bandwidth measured in the same run.
    pub pct_copy_bw: f64,
    /// `tflops` as a percentage of the GEMM rate measured in the same run for this dtype.
    pub pct_matmul_rate: f64,
    /// Free text (what the unfused path contained, fallbacks taken).
    pub note: String,
}

/// The result of [`run_table`].
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The GPU it ran on.
    pub gpu: GpuInfo,
    /// Floors measured at the start of the run.
    pub floors: Floors,
    /// Every measured row, in the order measured.
    pub rows: Vec<Row>,
    /// One line per figure that could not be measured (the rest of the table still is).
    pub failures: Vec<String>,
}

/// Measures the table: opens the GPU, measures the floors, then every (shape, dtype, p, pass)
/// of `options`. `progress` sees each row as it is measured. Fails only when the GPU, the
/// kernels or cuBLASLt cannot be opened; a figure that fails is recorded in
/// [`Table::failures`] and the run goes on, unless the failure left the CUDA context unusable
/// (a kernel that trapped): then the table ends with the shape and dtype it happened in.
pub fn run_table(options: &TableOptions, progress: &mut dyn FnMut(&Row)) -> Result<Table> {
    let BenchGpu {
        kernels,
        blas,
        info: gpu,
        ..
    } = BenchGpu::open(options.device, options.load)?;
    let effort = options.effort;
    let copy_gbps = measure_copy(kernels.stream(), gpu.l2_bytes, effort)?;
    let mut rate_tflops = HashMap::new();
    let mut failures = Vec::new();
    for &dtype in &options.dtypes {
        let rate = match dtype {
            DType::Bf16 => measure_rate::<bf16>(&blas, 8192, effort),
            DType::F16 => measure_rate::<f16>(&blas, 8192, effort),
            DType::F32 => measure_rate::<f32>(&blas, 4096, effort),
        };
        match rate {
            Ok(r) => {
                rate_tflops.insert(dtype, r);
            }
            Err(e) => failures.push(format!("matmul rate {}: {e}", dtype.name())),
        }
    }
    let floors = Floors {
        copy_gbps,
        rate_tflops,
    };
    let mut table = Table {
        gpu,
        floors,
        rows: Vec::new(),
        failures,
    };
    'shapes: for shape in &options.shapes {
        for dtype in shape.dtypes() {
            if !options.dtypes.contains(&dtype) {
                continue;
            }
            let failures_before = table.failures.len();
            let result = match dtype {
                DType::Bf16 => measure_shape::<bf16>(
                    &kernels, &blas, shape, dtype, options, &mut table, progress,
                ),
                DType::F16 => measure_shape::<f16>(
                    &kernels, &blas, shape, dtype, options, &mut table, progress,
                ),
                DType::F32 => measure_shape::<f32>(
                    &kernels, &blas, shape, dtype, options, &mut table, progress,
                ),
            };
            if let Err(e) = result {
                table
                    .failures
                    .push(format!("{} {}: {e}", shape.name, dtype.name()));
            }
            // A kernel that trapped leaves the context unusable: every later figure would fail
            // the same way, so the run ends here with what it has.
            if table.failures.len() > failures_before {
                if let Err(e) = kernels.stream().synchronize() {
                    table.failures.push(format!(
                        "the CUDA context is unusable after {} {} ({e}); the rest of the \
                         table was not measured",
                        shape.name,
                        dtype.name()
                    ));
                    break 'shapes;
                }
            }
        }
    }
    Ok(table)
}

/// The spec of benchmark launch number `launch`: `activation`, dropout `p`, [`BENCH_SEED`],
/// Philox subsequence = `launch` (a fresh mask per launch, as in training).
pub fn bench_spec(dims: LinearShape, nonlinearity: Nonlinearity, p: f32, launch: u64) -> LayerSpec {
    LayerSpec::new(dims, nonlinearity, DropoutSpec::new(p, BENCH_SEED, launch))
}

/// Our fused forward on one operand set: `y = dropout_p(relu(x·wᵀ + b))`, one launch.
pub fn fused_forward<T: Element>(
    kernels: &LayerKernels,
    set: &mut OperandSet<T>,
    dims: LinearShape,
    p: f32,
    launch: u64,
) -> Result<()> {
    fused_forward_with(kernels, set, dims, None, Nonlinearity::Relu, p, launch)
}

/// [`fused_forward`] with `activation`, and the configuration the library chooses (`None`) or a
/// forced one.
pub fn fused_forward_with<T: Element>(
    kernels: &LayerKernels,
    set: &mut OperandSet<T>,
    dims: LinearShape,
    config: Option<ForwardConfig>,
    nonlinearity: Nonlinearity,
    p: f32,
    launch: u64,
) -> Result<()> {
    let spec = bench_spec(dims, nonlinearity, p, launch);
    let b = set.b.as_view();
    let options = ForwardOptions {
        config,
        ..ForwardOptions::default()
    };
    kernels.forward(&spec, &set.x, &set.w, Some(&b), &mut set.y, options)
}

/// Our backward on one operand set: dX, dW and db from dY and the saved Y (ReLU, the library's
/// choice of kernels).
pub fn fused_backward<T: Element>(
    kernels: &LayerKernels,
    set: &mut OperandSet<T>,
    dims: LinearShape,
    p: f32,
    launch: u64,
) -> Result<()> {
    fused_backward_with(
        kernels,
        set,
        dims,
        BackwardKernel::Auto,
        Nonlinearity::Relu,
        p,
        launch,
        None,
    )
}

/// [`fused_backward`] with `activation` (the saved Y is passed for ReLU only: the identity's
/// backward redraws the mask instead), the kernel family `kernel` and optionally a workspace
/// ([`BackwardOptions::workspace`]: where the identity's mask is applied to dY once, and narrow
/// mma.sync and SIMT products keep their split-K partial sums).
#[allow(clippy::too_many_arguments)]
pub fn fused_backward_with<T: Element>(
    kernels: &LayerKernels,
    set: &mut OperandSet<T>,
    dims: LinearShape,
    kernel: BackwardKernel,
    nonlinearity: Nonlinearity,
    p: f32,
    launch: u64,
    workspace: Option<CudaViewMut<'_, u8>>,
) -> Result<()> {
    let spec = bench_spec(dims, nonlinearity, p, launch);
    let grads = GradientsMut {
        dx: Some(set.dx.as_view_mut()),
        dw: Some(set.dw.as_view_mut()),
        db: Some(set.db.as_view_mut()),
    };
    let y_saved = (nonlinearity == Nonlinearity::Relu).then(|| set.y_saved.as_view());
    kernels.backward(
        &spec,
        &set.x,
        &set.w,
        &set.dy,
        y_saved.as_ref(),
        grads,
        BackwardOptions {
            kernel,
            workspace,
            ..BackwardOptions::default()
        },
    )
}

/// What a variant row changes in the library's own call (the `fused` row: ReLU, kernels chosen
/// by the library).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// The forward with this configuration instead of the library's choice.
    Config(ForwardConfig),
    /// The backward with this kernel family instead of [`BackwardKernel::Auto`].
    Kernel(BackwardKernel),
    /// The identity activation instead of ReLU, kernels chosen by the library.
    Identity,
    /// The identity activation with a backward workspace: dY times the mask written once and
    /// read by both products (backward only).
    IdentityWorkspace,
    /// The backward of this classic family (mma.sync or SIMT) with the workspace
    /// `backward_workspace_bytes` asks for, so that its narrow products split their reduction
    /// (backward only).
    SplitWorkspace(BackwardKernel),
    /// [`BackwardKernel::HopperDzFromDx`] with the workspace it needs: dX writes dZ once, dW
    /// reads it (backward only).
    DzFromDx,
    /// The identity activation with this backward kernel family (backward only), and for
    /// [`BackwardKernel::HopperDzFromDx`] the workspace it needs.
    IdentityKernel(BackwardKernel),
}

impl Forced {
    /// The forward configuration to force, if any.
    pub fn config(self) -> Option<ForwardConfig> {
        match self {
            Forced::Config(config) => Some(config),
            _ => None,
        }
    }

    /// The backward kernel family to run ([`BackwardKernel::Auto`] unless one is forced).
    pub fn kernel(self) -> BackwardKernel {
        match self {
            Forced::Kernel(kernel) => kernel,
            Forced::SplitWorkspace(kernel) => kernel,
            Forced::IdentityKernel(kernel) => kernel,
            Forced::DzFromDx => BackwardKernel::HopperDzFromDx,
            _ => BackwardKernel::Auto,
        }
    }

    /// The activation of the call.
    pub fn nonlinearity(self) -> Nonlinearity {
        match self {
            Forced::Identity | Forced::IdentityWorkspace | Forced::IdentityKernel(_) => {
                Nonlinearity::Identity
            }
            _ => Nonlinearity::Relu,
        }
    }

    /// The note of the variant's rows.
    pub fn note(self) -> String {
        match self {
            Forced::Config(config) => format!("forced config {}", config.name()),
            Forced::Kernel(kernel) => format!("forced BackwardKernel::{kernel:?}"),
            Forced::Identity => IDENTITY_NOTE.to_string(),
            Forced::IdentityWorkspace => IDENTITY_WORKSPACE_NOTE.to_string(),
            Forced::SplitWorkspace(kernel) => format!(
                "forced BackwardKernel::{kernel:?} with the workspace backward_workspace_bytes \
                 asks for: narrow products split their reduction (split-K)"
            ),
            Forced::DzFromDx => DZ_FROM_DX_NOTE.to_string(),
            Forced::IdentityKernel(BackwardKernel::HopperDzFromDx) => format!(
                "identity activation, {}",
                DZ_FROM_DX_NOTE.trim_start_matches("forced ")
            ),
            Forced::IdentityKernel(kernel) => {
                format!("identity activation, BackwardKernel::{kernel:?}")
            }
        }
    }
}

/// The note of the `fused_identity` rows.
pub const IDENTITY_NOTE: &str = "identity activation instead of ReLU: its backward redraws \
    the Philox mask, ReLU's reads it from the saved Y's sign";

/// The note of the `fused_ident_ws` rows.
pub const IDENTITY_WORKSPACE_NOTE: &str = "identity activation with a backward workspace: dY \
    times the mask written once, both products read it instead of redrawing the mask";

/// The note of the `fused_hop_dz` rows.
pub const DZ_FROM_DX_NOTE: &str = "forced BackwardKernel::HopperDzFromDx: the dX launch writes \
    dZ to a workspace once, dW and db read it (no Y, no mask, no forming in dW's stages)";

/// A variant of the fused pass, timed beside `fused`: its impl name and what it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The `impl` column of its rows.
    pub name: &'static str,
    /// What it changes in the library's own call.
    pub forced: Forced,
}

impl Variant {
    /// The identity activation, at every p > 0 (issue 11: beside ReLU, whose backward reads the
    /// mask from Y where the identity's redraws it; at p = 0 there is no mask to draw).
    pub const IDENTITY: Variant = Variant {
        name: "fused_identity",
        forced: Forced::Identity,
    };

    /// The identity backward with a workspace, at every p > 0 (issue 11: the mask drawn once
    /// per element of dY, beside [`Variant::IDENTITY`] which redraws it per column tile).
    pub const IDENTITY_WORKSPACE: Variant = Variant {
        name: "fused_ident_ws",
        forced: Forced::IdentityWorkspace,
    };

    /// Whether the variant is measured at dropout probability `p`: the identity's at every
    /// p > 0 (at p = 0 there is no mask to draw); the forced Hopper backward tiles, the TMA
    /// store, dZ from dX, the transform warps and the one launch likewise (their cost hardly
    /// depends on p, so
    /// leaving p = 0 out saves the bench's time).
    pub fn runs_at(self, p: f32) -> bool {
        let only_with_dropout = matches!(
            self.forced,
            Forced::Identity
                | Forced::IdentityWorkspace
                | Forced::IdentityKernel(_)
                | Forced::DzFromDx
                | Forced::Kernel(
                    BackwardKernel::HopperWg128x256
                        | BackwardKernel::HopperWg128x128
                        | BackwardKernel::HopperTmaStore
                        | BackwardKernel::HopperTransformWarps
                        | BackwardKernel::HopperOneLaunch
                )
        );
        !only_with_dropout || p > 0.0
    }
}

/// The impl name of the rows replayed from CUDA graphs (see [`TableOptions::graph_shapes`]).
pub const GRAPH_IMPL: &str = "fused_graph";

/// The forward variants timed beside `fused` (whatever the library chooses), given what the
/// library chooses (`chosen`), the mma.sync configuration it would choose without the Hopper
/// kernel (`mma_sync`) and whether the Hopper kernel can run for the dtype on this GPU
/// (`hopper`):
/// - `fused_mma_sync`: the mma.sync kernel that the library would run if the Hopper kernel were
///   not there, where it chooses the Hopper kernel (so the fallback's progress and cost show in
///   every run);
/// - `fused_wg128x256`, `fused_wg128x128`, `fused_wg64x128`: every Hopper configuration forced,
///   where the Hopper kernel can run this shape (the tuning sweep of its heuristic); where the
///   library chooses split-K, also every split-K configuration k allows (`fused_wg64x128s4`,
///   ...);
/// - `fused_identity` ([`Variant::IDENTITY`]).
pub fn forward_variants_given(
    dims: LinearShape,
    chosen: ForwardConfig,
    mma_sync: ForwardConfig,
    hopper: bool,
) -> Vec<Variant> {
    let mut variants = Vec::new();
    if chosen.is_hopper() {
        variants.push(Variant {
            name: "fused_mma_sync",
            forced: Forced::Config(mma_sync),
        });
    }
    // Whole allocations are 16-byte aligned; only k decides whether TMA can read them.
    if hopper && hopper_operands_fit(dims, 0, 0) {
        // Split-K configurations where the library splits (a shape with few tiles), and only
        // those for which k gives every block of a cluster a k-block.
        let split = chosen.splits() > 1;
        for config in ForwardConfig::HOPPER
            .into_iter()
            .filter(|c| (c.splits() == 1 || split) && dims.k >= c.min_k())
        {
            // Every configuration named, so that a new one cannot be timed under another's name.
            let name = match config {
                ForwardConfig::Wg128x256 => "fused_wg128x256",
                ForwardConfig::Wg128x128 => "fused_wg128x128",
                ForwardConfig::Wg64x128 => "fused_wg64x128",
                ForwardConfig::Wg128x128S2 => "fused_wg128x128s2",
                ForwardConfig::Wg128x128S4 => "fused_wg128x128s4",
                ForwardConfig::Wg64x128S2 => "fused_wg64x128s2",
                ForwardConfig::Wg64x128S4 => "fused_wg64x128s4",
                ForwardConfig::Tc128x256
                | ForwardConfig::Tc128x128
                | ForwardConfig::Tc64x128
                | ForwardConfig::Tc64x64
                | ForwardConfig::Tc64x32
                | ForwardConfig::Simt128x128
                | ForwardConfig::Simt64x64
                | ForwardConfig::Simt64x32 => continue, // not in ForwardConfig::HOPPER
            };
            variants.push(Variant {
                name,
                forced: Forced::Config(config),
            });
        }
    }
    variants.push(Variant::IDENTITY);
    variants
}

/// [`forward_variants_given`] for element type `T` on the stream's GPU. f32 has no variant
/// but the identity (one kernel family, nothing to force).
pub fn forward_variants<T: Element>(
    kernels: &LayerKernels,
    dims: LinearShape,
) -> Result<Vec<Variant>> {
    if !T::NEEDS_SM80 {
        return Ok(vec![Variant::IDENTITY]);
    }
    Ok(forward_variants_given(
        dims,
        kernels.forward_config_for::<T>(dims),
        choose_config::<T>(dims, kernels.sm_count()),
        kernels.hopper_available::<T>(),
    ))
}

/// Whether the Hopper backward kernels can run `dims`, given that they are available for the
/// dtype on this GPU (`hopper`): TMA reads dY, the saved Y, W and X, so n and k must be
/// multiples of 8 (whole allocations are 16-byte aligned) and m at least 1.
pub fn hopper_backward_fits(dims: LinearShape, hopper: bool) -> bool {
    hopper && dims.m > 0 && dims.n > 0 && dims.k > 0 && dims.n % 8 == 0 && dims.k % 8 == 0
}

/// What two of the Hopper backward variants would run for a shape, as
/// [`LayerKernels::backward_kernels_for`] says: rows where they would run `fused_hopper`'s
/// kernels again are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopperVariantsRun {
    /// [`BackwardKernel::HopperOneLaunch`] runs both products in one launch (neither splits).
    pub one_launch: bool,
    /// [`BackwardKernel::HopperTmaStore`] stores a gradient by TMA (a product is unsplit).
    pub tma_store: bool,
}

/// The backward variants timed beside `fused` (whatever [`BackwardKernel::Auto`] runs), given
/// whether the Hopper backward kernels are available for the dtype on this GPU (`hopper`), the
/// kernels `Auto` runs for dX and dW (`auto`, as [`LayerKernels::backward_kernels_for`] names
/// them) and what the one launch and the TMA store would run (`runs`):
/// - `fused_mma_sync`: [`BackwardKernel::TensorCore`] forced where `Auto` takes the Hopper
///   kernels for a product of this shape (the fallback's cost, as for the forward);
/// - `fused_hopper`: [`BackwardKernel::Hopper`] forced where the Hopper kernels can run the
///   shape (both products on them, even where `Auto` leaves one to mma.sync);
/// - `fused_hop256`, `fused_hop128`: [`BackwardKernel::HopperWg128x256`] and
///   [`BackwardKernel::HopperWg128x128`] forced (both products on that tile, unsplit) where
///   `Auto` takes the Hopper kernels and does not already run both products on that tile: the
///   tuning data of its choice of tile;
/// - `fused_hop_ts`: [`BackwardKernel::HopperTmaStore`] where the Hopper kernels can run the
///   shape and a product is unsplit (`fused_hopper` with each unsplit product's gradient stored
///   by TMA, against it);
/// - `fused_hop_dz`: [`BackwardKernel::HopperDzFromDx`] with its workspace, where the Hopper
///   kernels can run the shape (dZ written once by dX and read by dW, against `fused_hopper`'s
///   forming it in dW's stages);
/// - `fused_hop_tw`: [`BackwardKernel::HopperTransformWarps`] likewise (dW's dZᵀ formed by the
///   producer warpgroup's transform warps instead of by its consumers);
/// - `fused_hop_1l`: [`BackwardKernel::HopperOneLaunch`] where it runs one launch (elsewhere it
///   is `fused_hopper`);
/// - `fused_id_dz`, `fused_id_tw`: those two with the identity activation, beside
///   `fused_identity` and `fused_ident_ws` (where the identity's mask is drawn twice, or applied
///   by a pre-pass; forming dZ costs Philox draws there, not a bit test);
/// - `fused_identity` ([`Variant::IDENTITY`]);
/// - `fused_ident_ws` ([`Variant::IDENTITY_WORKSPACE`]).
pub fn backward_variants_given(
    dims: LinearShape,
    hopper: bool,
    auto: (&str, &str),
    runs: HopperVariantsRun,
) -> Vec<Variant> {
    let auto_takes_hopper = auto.0.starts_with("wg") || auto.1.starts_with("wg");
    let mut variants = Vec::new();
    if auto_takes_hopper {
        variants.push(Variant {
            name: "fused_mma_sync",
            forced: Forced::Kernel(BackwardKernel::TensorCore),
        });
    }
    if hopper_backward_fits(dims, hopper) {
        variants.push(Variant {
            name: "fused_hopper",
            forced: Forced::Kernel(BackwardKernel::Hopper),
        });
        for (name, tile, kernel) in [
            ("fused_hop256", "wg128x256", BackwardKernel::HopperWg128x256),
            ("fused_hop128", "wg128x128", BackwardKernel::HopperWg128x128),
        ] {
            if auto_takes_hopper && auto != (tile, tile) {
                variants.push(Variant {
                    name,
                    forced: Forced::Kernel(kernel),
                });
            }
        }
        if runs.tma_store {
            variants.push(Variant {
                name: "fused_hop_ts",
                forced: Forced::Kernel(BackwardKernel::HopperTmaStore),
            });
        }
        variants.push(Variant {
            name: "fused_hop_dz",
            forced: Forced::DzFromDx,
        });
        variants.push(Variant {
            name: "fused_hop_tw",
            forced: Forced::Kernel(BackwardKernel::HopperTransformWarps),
        });
        if runs.one_launch {
            variants.push(Variant {
                name: "fused_hop_1l",
                forced: Forced::Kernel(BackwardKernel::HopperOneLaunch),
            });
        }
        variants.push(Variant {
            name: "fused_id_dz",
            forced: Forced::IdentityKernel(BackwardKernel::HopperDzFromDx),
        });
        variants.push(Variant {
            name: "fused_id_tw",
            forced: Forced::IdentityKernel(BackwardKernel::HopperTransformWarps),
        });
    }
    variants.push(Variant::IDENTITY);
    variants.push(Variant::IDENTITY_WORKSPACE);
    variants
}

/// [`backward_variants_given`] for element type `T` on the stream's GPU (the Hopper kernels as
/// [`LayerKernels::hopper_available`] says), and `fused_mma_split` (f16, bf16) or
/// `fused_simt_split` (f32) where the mma.sync or SIMT kernels split a product of `dims` when
/// given the workspace (split-K's cost beside the unsplit run of `fused` or `fused_mma_sync`).
pub fn backward_variants<T: Element>(
    kernels: &LayerKernels,
    dims: LinearShape,
) -> Result<Vec<Variant>> {
    let hopper = kernels.hopper_available::<T>();
    let auto = kernels.backward_kernels_for::<T>(dims, Nonlinearity::Relu, BackwardKernel::Auto)?;
    let fits = hopper_backward_fits(dims, hopper);
    let choice = |kernel| kernels.backward_kernels_for::<T>(dims, Nonlinearity::Relu, kernel);
    let runs = HopperVariantsRun {
        one_launch: fits && choice(BackwardKernel::HopperOneLaunch)?.one_launch,
        tma_store: fits && {
            let stored = choice(BackwardKernel::HopperTmaStore)?;
            stored.dx.ends_with("_tmastore") || stored.dw.ends_with("_tmastore")
        },
    };
    let mut variants = backward_variants_given(dims, hopper, (auto.dx, auto.dw), runs);
    let (name, kernel) = if T::NEEDS_SM80 {
        ("fused_mma_split", BackwardKernel::TensorCore)
    } else {
        ("fused_simt_split", BackwardKernel::Simt)
    };
    let choice =
        kernels.backward_kernels_with_workspace_for::<T>(dims, Nonlinearity::Relu, kernel)?;
    if choice.dx_splits > 1 || choice.dw_splits > 1 {
        variants.push(Variant {
            name,
            forced: Forced::SplitWorkspace(kernel),
        });
    }
    Ok(variants)
}

/// Graphs of fused launches captured for [`measure_graph`]: one per operand set, each reading
/// its own `[seed, subsequence]` pair from `seeds`.
struct Graphs {
    graphs: Vec<CudaGraph>,
    // Declared after `graphs`, so dropped after them: the graphs hold its address.
    _seeds: CudaSlice<u64>,
}

/// Captures on `capture` (a stream that can capture: not the legacy default stream) one graph per
/// operand set of `ops`: the fused forward (ReLU, dropout `p`), followed by the fused backward when
/// `with_backward` (reading the forward's Y as its saved Y, as in training). Every call takes its
/// (seed, subsequence) from a device buffer ([`SeedSource::Device`]); graph `i` reads pair
/// `[BENCH_SEED, i]`, so consecutive replays draw different masks.
fn capture_graphs<T: Element>(
    capture: &LayerKernels,
    ops: &mut Operands<T>,
    p: f32,
    with_backward: bool,
) -> Result<Graphs> {
    let dims = ops.shape();
    let count = ops.len();
    let pairs: Vec<u64> = (0..count as u64).flat_map(|i| [BENCH_SEED, i]).collect();
    let seeds = capture.stream().clone_htod(&pairs)?;
    // The Dropout's seed and subsequence are placeholders: the kernels read the pair from `seeds`.
    let spec = bench_spec(dims, Nonlinearity::Relu, p, 0);
    let mut graphs = Vec::with_capacity(count);
    for i in 0..count {
        let seed = seeds.slice(2 * i..2 * i + 2);
        let set = ops.set_mut(i as u64);
        capture
            .stream()
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let queued = queue_graph_step(capture, set, &spec, &seed, with_backward);
        // The capture is ended even when a call failed, so that the stream is usable again.
        let ended = capture.stream().end_capture(CUgraphInstantiate_flags(0));
        queued?;
        let graph = ended?.ok_or_else(|| {
            Error::Cuda("the stream capture of the fused launches recorded no graph".into())
        })?;
        graphs.push(graph);
    }
    Ok(Graphs {
        graphs,
        _seeds: seeds,
    })
}

/// The launches one graph of [`capture_graphs`] holds.
fn queue_graph_step<T: Element>(
    kernels: &LayerKernels,
    set: &mut OperandSet<T>,
    spec: &LayerSpec,
    seed: &CudaView<'_, u64>,
    with_backward: bool,
) -> Result<()> {
    kernels.forward(
        spec,
        &set.x,
        &set.w,
        Some(&set.b.as_view()),
        &mut set.y,
        ForwardOptions {
            seed: SeedSource::Device(seed),
            ..ForwardOptions::default()
        },
    )?;
    if !with_backward {
        return Ok(());
    }
    let grads = GradientsMut {
        dx: Some(set.dx.as_view_mut()),
        dw: Some(set.dw.as_view_mut()),
        db: Some(set.db.as_view_mut()),
    };
    kernels.backward(
        spec,
        &set.x,
        &set.w,
        &set.dy,
        Some(&set.y.as_view()),
        grads,
        BackwardOptions {
            seed: SeedSource::Device(seed),
            ..BackwardOptions::default()
        },
    )
}

/// Times the fused forward (and backward, when `with_backward`) replayed from CUDA graphs, one
/// graph launch per launch number, graphs rotating with the operand sets (issue 15: the launch
/// overhead beside the plain launches). `kernels.stream()` is the benchmark's stream, the context's
/// legacy default stream, on which CUDA cannot capture; the graphs are captured and replayed on the
/// context's per-thread default stream, which orders itself after the legacy stream's work and
/// leaves cudarc in single-stream mode (no events recorded around the other rows' launches). The
/// capture stream shares `kernels`' loaded modules ([`LayerKernels::on_stream`]), so nothing is
/// loaded during a capture.
pub fn measure_graph<T: Element>(
    kernels: &LayerKernels,
    ops: &mut Operands<T>,
    p: f32,
    with_backward: bool,
    effort: Effort,
) -> Result<Timing> {
    let capture = kernels.on_stream(kernels.stream().context().per_thread_stream())?;
    let graphs = capture_graphs(&capture, ops, p, with_backward)?;
    let count = graphs.graphs.len() as u64;
    measure(capture.stream(), effort, |i| {
        Ok(graphs.graphs[(i % count) as usize].launch()?)
    })
}

/// What the unfused forward contains (the note of its rows).
pub const FORWARD_UNFUSED_NOTE: &str =
    "cuBLASLt RELU_BIAS then the standalone dropout kernel in place (no mask byte written)";
/// What the unfused backward contains (the note of its rows).
pub const BACKWARD_UNFUSED_NOTE: &str =
    "dropout kernel from dY into dZ (no ReLU gate), then cuBLASLt dX and dW (BGRADB for db)";

/// Launches each of a plan's algorithm candidates times over when choosing among them.
pub const TUNING_LAUNCHES: u64 = 3;

/// Makes `plan` launch the fastest of its candidates, `launch(plan, i)` queuing launch `i` (see
/// [`BaselinePlans::choose_fastest`]); the first when every candidate fails.
fn choose_fastest_algorithm<T: Element>(
    plan: &mut GemmPlan<'_, T>,
    stream: &Arc<CudaStream>,
    mut launch: impl FnMut(&GemmPlan<'_, T>, u64) -> Result<()>,
) {
    let mut fastest: Option<(Duration, usize)> = None;
    for index in 0..plan.candidates() {
        if plan.choose(index).is_err() {
            break;
        }
        let plan = &*plan;
        let timed = launch(plan, 0)
            .and_then(|()| time_launches(stream, TUNING_LAUNCHES, |i| launch(plan, i + 1)));
        if let Ok(time) = timed {
            if fastest.is_none_or(|(best, _)| time < best) {
                fastest = Some((time, index));
            }
        }
    }
    // Index 0 always exists: a plan has at least one candidate.
    let _ = plan.choose(fastest.map_or(0, |(_, index)| index));
}

/// The cuBLASLt plans of one shape and dtype, and the baseline paths built from them. A plan
/// cuBLASLt refuses is kept as its error, so that the other paths still run.
pub struct BaselinePlans<'a, T: Element> {
    dims: LinearShape,
    forward: Result<GemmPlan<'a, T>>,
    relu_bias: Result<GemmPlan<'a, T>>,
    data: Result<GemmPlan<'a, T>>,
    weight: Result<GemmPlan<'a, T>>,
    weight_bias_grad: Result<GemmPlan<'a, T>>,
}

fn plan_ref<'p, 'a, T: Element>(plan: &'p Result<GemmPlan<'a, T>>) -> Result<&'p GemmPlan<'a, T>> {
    plan.as_ref().map_err(Clone::clone)
}

impl<'a, T: Element> BaselinePlans<'a, T> {
    /// Plans every product of the layer `dims` on `blas`.
    pub fn new(blas: &'a Blas, dims: LinearShape) -> Self {
        Self {
            dims,
            forward: blas.plan::<T>(GemmOp::Forward, dims),
            relu_bias: blas.plan::<T>(GemmOp::ForwardReluBias, dims),
            data: blas.plan::<T>(GemmOp::BackwardData, dims),
            weight: blas.plan::<T>(GemmOp::BackwardWeight, dims),
            weight_bias_grad: blas.plan::<T>(GemmOp::BackwardWeightBiasGrad, dims),
        }
    }

    /// Makes each plan launch the fastest of the algorithms cuBLASLt's heuristic offered for it
    /// ([`GemmPlan::candidates`]) on these operands, each timed over [`TUNING_LAUNCHES`] launches
    /// after one untimed: the floor and the unfused path are then the best cuBLASLt does, not
    /// its heuristic's first guess (what a framework launches). A candidate that fails is passed
    /// over; a plan whose every candidate fails keeps the first, for its measurement to report.
    pub fn choose_fastest(&mut self, stream: &Arc<CudaStream>, ops: &mut Operands<T>) {
        if let Ok(plan) = self.forward.as_mut() {
            choose_fastest_algorithm(plan, stream, |p, i| {
                let s = ops.set_mut(i);
                p.forward(&s.x, &s.w, &mut s.y)
            });
        }
        if let Ok(plan) = self.relu_bias.as_mut() {
            choose_fastest_algorithm(plan, stream, |p, i| {
                let s = ops.set_mut(i);
                p.forward_relu_bias(&s.x, &s.w, &s.b, &mut s.y)
            });
        }
        if let Ok(plan) = self.data.as_mut() {
            choose_fastest_algorithm(plan, stream, |p, i| {
                let s = ops.set_mut(i);
                p.backward_data(&s.dy, &s.w, &mut s.dx)
            });
        }
        if let Ok(plan) = self.weight.as_mut() {
            choose_fastest_algorithm(plan, stream, |p, i| {
                let s = ops.set_mut(i);
                p.backward_weight(&s.dy, &s.x, &mut s.dw)
            });
        }
        if let Ok(plan) = self.weight_bias_grad.as_mut() {
            choose_fastest_algorithm(plan, stream, |p, i| {
                let s = ops.set_mut(i);
                p.backward_weight_bias_grad(&s.dy, &s.x, &mut s.dw, &mut s.db)
            });
        }
    }

    /// The algorithm each plan launches, as `(chosen, candidates)` (0: the heuristic's first),
    /// in the order forward, RELU_BIAS, dX, dW, dW with BGRADB; `None` for a plan cuBLASLt
    /// refused.
    pub fn algorithms(&self) -> [Option<(usize, usize)>; 5] {
        [
            &self.forward,
            &self.relu_bias,
            &self.data,
            &self.weight,
            &self.weight_bias_grad,
        ]
        .map(|plan| plan.as_ref().ok().map(|p| (p.chosen(), p.candidates())))
    }

    /// The forward GEMM floor: `y = x·wᵀ`, no epilogue.
    pub fn gemm_forward(&self, set: &mut OperandSet<T>) -> Result<()> {
        plan_ref(&self.forward)?.forward(&set.x, &set.w, &mut set.y)
    }

    /// The best unfused forward from NVIDIA's libraries: cuBLASLt RELU_BIAS, then the standalone
    /// dropout kernel in place on Y.
    pub fn unfused_forward(
        &self,
        kernels: &LayerKernels,
        set: &mut OperandSet<T>,
        p: f32,
        launch: u64,
    ) -> Result<()> {
        let plan = plan_ref(&self.relu_bias)?;
        let LinearShape { m, n, .. } = self.dims;
        let spec = bench_spec(self.dims, Nonlinearity::Relu, p, launch);
        plan.forward_relu_bias(&set.x, &set.w, &set.b, &mut set.y)?;
        kernels.dropout_in_place(
            &mut set.y,
            m,
            n,
            &spec.dropout,
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )
    }

    /// The backward GEMM floor: `dx = dy·w` and `dw = dyᵀ·x`, no epilogue, no elementwise pass.
    pub fn gemm_backward(&self, set: &mut OperandSet<T>) -> Result<()> {
        plan_ref(&self.data)?.backward_data(&set.dy, &set.w, &mut set.dx)?;
        plan_ref(&self.weight)?.backward_weight(&set.dy, &set.x, &mut set.dw)
    }

    /// The unfused backward: the elementwise pass (the dropout kernel from dY into dZ, out of
    /// place; at p = 0 a device copy), then cuBLASLt `dx = dz·w` and `dw = dzᵀ·x` with db from
    /// the BGRADB epilogue (without db when cuBLASLt refuses BGRADB: see
    /// [`BaselinePlans::backward_note`]).
    pub fn unfused_backward(
        &self,
        kernels: &LayerKernels,
        set: &mut OperandSet<T>,
        p: f32,
        launch: u64,
    ) -> Result<()> {
        let data = plan_ref(&self.data)?;
        let LinearShape { m, n, .. } = self.dims;
        let spec = bench_spec(self.dims, Nonlinearity::Relu, p, launch);
        kernels.dropout(
            &set.dy,
            &mut set.dz,
            m,
            n,
            &spec.dropout,
            &Geometry::UNSHARDED,
            SeedSource::Host,
        )?;
        data.backward_data(&set.dz, &set.w, &mut set.dx)?;
        match &self.weight_bias_grad {
            Ok(plan) => plan.backward_weight_bias_grad(&set.dz, &set.x, &mut set.dw, &mut set.db),
            Err(_) => plan_ref(&self.weight)?.backward_weight(&set.dz, &set.x, &mut set.dw),
        }
    }

    /// The note of the unfused backward rows: what it contains, and whether db was left out.
    pub fn backward_note(&self) -> String {
        match &self.weight_bias_grad {
            Ok(_) => BACKWARD_UNFUSED_NOTE.to_string(),
            Err(e) => {
                format!("{BACKWARD_UNFUSED_NOTE}; db NOT computed: cuBLASLt refused BGRADB ({e})")
            }
        }
    }
}

/// The measured times of one pass of one (shape, dtype): the floor, then per p the fused and
/// unfused times (`None` when that figure failed).
#[derive(Debug)]
struct PassTimes {
    floor: Option<Micros>,
    /// For each p of the run, in order: the fused and the unfused figures.
    per_p: Vec<(f32, Option<Micros>, Option<Micros>)>,
    /// The variant rows of the fused pass (forced kernels, the identity activation, graph
    /// replays), in the order measured.
    variants: Vec<VariantTime>,
    /// The kernels the library chose for the fused pass, as the note of its rows
    /// (`config wg128x256`, `kernels dX wg128x256, dW tc64x64`).
    chosen: Option<String>,
    /// The note of the floor's row: which cuBLASLt algorithms it ran ([`floor_note`]).
    floor_note: String,
}

impl PassTimes {
    /// Nothing measured yet, at each of `probabilities`.
    fn at(probabilities: &[f32]) -> Self {
        Self {
            floor: None,
            per_p: probabilities.iter().map(|&p| (p, None, None)).collect(),
            variants: Vec::new(),
            chosen: None,
            floor_note: String::new(),
        }
    }

    /// The fused and unfused figures at `p` (added at the end if `p` is new).
    fn figures_at(&mut self, p: f32) -> &mut (f32, Option<Micros>, Option<Micros>) {
        let at = match self.per_p.iter().position(|f| f.0 == p) {
            Some(at) => at,
            None => {
                self.per_p.push((p, None, None));
                self.per_p.len() - 1
            }
        };
        &mut self.per_p[at]
    }
}

/// What one pass of one shape times, all in the same rounds ([`measure_interleaved`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Contender {
    /// The cuBLASLt products alone.
    Floor,
    /// The library's own call at this p.
    Fused(f32),
    /// The variant at this index of the pass's list, at this p.
    Variant(f32, usize),
    /// The unfused path at this p.
    Unfused(f32),
}

impl Contender {
    /// Every figure of a pass: the floor, then for each p the fused call, the variants that run
    /// at p (of those `usable` admits, by index) and the unfused path.
    fn of_pass(
        probabilities: &[f32],
        variants: &[Variant],
        usable: impl Fn(usize) -> bool,
    ) -> Vec<Contender> {
        let mut out = vec![Contender::Floor];
        for &p in probabilities {
            out.push(Contender::Fused(p));
            out.extend(
                (0..variants.len())
                    .filter(|&v| usable(v) && variants[v].runs_at(p))
                    .map(|v| Contender::Variant(p, v)),
            );
            out.push(Contender::Unfused(p));
        }
        out
    }

    /// How a failure of its figure is reported: pass, impl and p.
    fn label(self, pass: &str, variants: &[Variant]) -> String {
        match self {
            Contender::Floor => format!("{pass} gemm_floor"),
            Contender::Fused(p) => format!("{pass} fused p={p}"),
            Contender::Variant(p, v) => format!("{pass} {} p={p}", variants[v].name),
            Contender::Unfused(p) => format!("{pass} unfused p={p}"),
        }
    }
}

/// A pass's figures, measured in the same rounds ([`measure_interleaved`]: one result per
/// contender, in the order of `contenders`), sorted into its table's parts: the floor, the fused
/// and unfused figures at each of `probabilities`, and the variant rows. A figure that failed is
/// left out and handed to `fail` with its label ([`Contender::label`]).
fn sort_figures(
    probabilities: &[f32],
    pass: &str,
    contenders: &[Contender],
    results: Vec<Result<Timing>>,
    variants: &[Variant],
    mut fail: impl FnMut(String, Error),
) -> PassTimes {
    let mut times = PassTimes::at(probabilities);
    for (&contender, result) in contenders.iter().zip(results) {
        let time = match result {
            Ok(t) => t.micros(),
            Err(e) => {
                fail(contender.label(pass, variants), e);
                continue;
            }
        };
        match contender {
            Contender::Floor => times.floor = Some(time),
            Contender::Fused(p) => times.figures_at(p).1 = Some(time),
            Contender::Unfused(p) => times.figures_at(p).2 = Some(time),
            Contender::Variant(p, v) => times.variants.push(VariantTime {
                p,
                name: variants[v].name,
                note: variants[v].forced.note(),
                time,
            }),
        }
    }
    times
}

/// The workspace a backward variant runs with: none, or one large enough for each p of
/// `probabilities` it runs at.
fn variant_workspace<T: Element>(
    kernels: &LayerKernels,
    stream: &Arc<CudaStream>,
    dims: LinearShape,
    variant: &Variant,
    probabilities: &[f32],
) -> Result<Option<CudaSlice<u8>>> {
    let (kernel, nonlinearity) = (variant.forced.kernel(), variant.forced.nonlinearity());
    let mut bytes = 0;
    for &p in probabilities.iter().filter(|&&p| variant.runs_at(p)) {
        let spec = bench_spec(dims, nonlinearity, p, 0);
        bytes = bytes.max(match variant.forced {
            Forced::IdentityWorkspace => backward::workspace_bytes::<T>(&spec),
            Forced::SplitWorkspace(_)
            | Forced::DzFromDx
            | Forced::IdentityKernel(BackwardKernel::HopperDzFromDx) => {
                kernels.backward_workspace_bytes::<T>(&spec, kernel)?
            }
            _ => return Ok(None),
        });
    }
    if bytes == 0 {
        return Ok(None);
    }
    Ok(Some(stream.alloc_zeros::<u8>(bytes)?))
}

/// The note of a GEMM floor row: the products it runs and, for each, which of the algorithms
/// cuBLASLt's heuristic offered was the fastest (`products`: a name and
/// [`BaselinePlans::algorithms`]' entry).
fn floor_note(products: &[(&str, Option<(usize, usize)>)]) -> String {
    let algorithms: Vec<String> = products
        .iter()
        .filter_map(|(name, algorithm)| {
            let (chosen, candidates) = (*algorithm)?;
            Some(format!("{name}: #{} of {candidates}", chosen + 1))
        })
        .collect();
    format!(
        "cuBLASLt products alone, no epilogue; each the fastest of its heuristic's algorithms \
         ({})",
        algorithms.join(", ")
    )
}

/// One measured variant of the fused pass at one p.
#[derive(Debug, Clone, PartialEq)]
struct VariantTime {
    p: f32,
    name: &'static str,
    note: String,
    time: Micros,
}

/// The note of the forward+backward rows that add the two measured passes.
const SUM_NOTE: &str = "sum of the forward and backward rows";

/// The forward+backward variant rows that are sums: each variant measured under the same name
/// and p in both passes.
fn summed_variants(forward: &[VariantTime], backward: &[VariantTime]) -> Vec<VariantTime> {
    forward
        .iter()
        .filter_map(|f| {
            let b = backward.iter().find(|b| b.p == f.p && b.name == f.name)?;
            Some(VariantTime {
                p: f.p,
                name: f.name,
                note: SUM_NOTE.into(),
                time: f.time + b.time,
            })
        })
        .collect()
}

// The table's state (options, table, progress) plus what one (shape, dtype) measures with.
#[allow(clippy::too_many_arguments)]
fn measure_shape<T: Element>(
    kernels: &LayerKernels,
    blas: &Blas,
    shape: &SuiteShape,
    dtype: DType,
    options: &TableOptions,
    table: &mut Table,
    progress: &mut dyn FnMut(&Row),
) -> Result<()> {
    let stream = blas.stream().clone();
    let dims = shape.shape();
    let mut ops = Operands::<T>::new(&stream, dims, table.gpu.l2_bytes, 0xda7a ^ dims.m as u64)?;
    let mut plans = BaselinePlans::<T>::new(blas, dims);
    plans.choose_fastest(&stream, &mut ops);
    let effort = options.effort;
    let graphs = options.graph_shapes.contains(&shape.name);
    let fail = |table: &mut Table, label: &str, e: Error| {
        table
            .failures
            .push(format!("{} {} {label}: {e}", shape.name, dtype.name()));
    };
    let record = |table: &mut Table, label: String, r: Result<Timing>| -> Option<Micros> {
        match r {
            Ok(t) => Some(t.micros()),
            Err(e) => {
                fail(table, &label, e);
                None
            }
        }
    };
    // A graph replay's row, measured on its own stream after the pass's other figures.
    let record_graph = |table: &mut Table,
                        times: &mut PassTimes,
                        pass: &str,
                        (p, note): (f32, &str),
                        r: Result<Timing>| {
        if let Some(time) = record(table, format!("{pass} {GRAPH_IMPL} p={p}"), r) {
            times.variants.push(VariantTime {
                p,
                name: GRAPH_IMPL,
                note: note.into(),
                time,
            });
        }
    };
    let mut forward_times = None;
    let mut backward_times = None;
    if options.passes != Passes::Backward {
        let variants = forward_variants::<T>(kernels, dims).unwrap_or_else(|e| {
            fail(table, "forward variants", e);
            Vec::new()
        });
        let contenders = Contender::of_pass(&options.probabilities, &variants, |_| true);
        let results = measure_interleaved(&stream, effort, contenders.len(), |c, i| {
            let set = ops.set_mut(i);
            match contenders[c] {
                Contender::Floor => plans.gemm_forward(set),
                Contender::Fused(p) => fused_forward(kernels, set, dims, p, i),
                Contender::Variant(p, v) => {
                    let forced = variants[v].forced;
                    let (config, nonlinearity) = (forced.config(), forced.nonlinearity());
                    fused_forward_with(kernels, set, dims, config, nonlinearity, p, i)
                }
                Contender::Unfused(p) => plans.unfused_forward(kernels, set, p, i),
            }
        });
        let mut times = sort_figures(
            &options.probabilities,
            "forward",
            &contenders,
            results,
            &variants,
            |label, e| fail(table, &label, e),
        );
        if graphs {
            for &p in &options.probabilities {
                let r = measure_graph(kernels, &mut ops, p, false, effort);
                record_graph(table, &mut times, "forward", (p, GRAPH_FORWARD_NOTE), r);
            }
        }
        times.chosen = Some(format!(
            "config {}",
            kernels.forward_config_for::<T>(dims).name()
        ));
        times.floor_note = floor_note(&[("Y", plans.algorithms()[0])]);
        emit_pass(
            table,
            shape,
            dtype,
            "forward",
            &times,
            progress,
            FORWARD_UNFUSED_NOTE,
        );
        forward_times = Some(times);
    }
    if options.passes != Passes::Forward {
        let variants = backward_variants::<T>(kernels, dims).unwrap_or_else(|e| {
            fail(table, "backward variants", e);
            Vec::new()
        });
        // Each variant's workspace, sized for the largest any p of the run asks for (a larger
        // workspace than needed is allowed); a variant whose workspace cannot be had is recorded
        // as not measured, and the others still are.
        let mut workspaces = Vec::with_capacity(variants.len());
        let mut usable = Vec::with_capacity(variants.len());
        for v in &variants {
            match variant_workspace::<T>(kernels, &stream, dims, v, &options.probabilities) {
                Ok(workspace) => {
                    workspaces.push(workspace);
                    usable.push(true);
                }
                Err(e) => {
                    fail(table, &format!("backward {} workspace", v.name), e);
                    workspaces.push(None);
                    usable.push(false);
                }
            }
        }
        let contenders = Contender::of_pass(&options.probabilities, &variants, |v| usable[v]);
        let results = measure_interleaved(&stream, effort, contenders.len(), |c, i| {
            let set = ops.set_mut(i);
            match contenders[c] {
                Contender::Floor => plans.gemm_backward(set),
                Contender::Fused(p) => fused_backward(kernels, set, dims, p, i),
                Contender::Variant(p, v) => {
                    let forced = variants[v].forced;
                    let (kernel, nonlinearity) = (forced.kernel(), forced.nonlinearity());
                    let workspace = workspaces[v].as_mut().map(|w| w.as_view_mut());
                    fused_backward_with(kernels, set, dims, kernel, nonlinearity, p, i, workspace)
                }
                Contender::Unfused(p) => plans.unfused_backward(kernels, set, p, i),
            }
        });
        let mut times = sort_figures(
            &options.probabilities,
            "backward",
            &contenders,
            results,
            &variants,
            |label, e| fail(table, &label, e),
        );
        times.chosen = kernels
            .backward_kernels_for::<T>(dims, Nonlinearity::Relu, BackwardKernel::Auto)
            .ok()
            .map(|c| format!("kernels {c}"));
        times.floor_note =
            floor_note(&[("dX", plans.algorithms()[2]), ("dW", plans.algorithms()[3])]);
        let note = plans.backward_note();
        emit_pass(table, shape, dtype, "backward", &times, progress, &note);
        backward_times = Some(times);
    }
    if let (Some(f), Some(b)) = (forward_times, backward_times) {
        let sum = |a: Option<Micros>, b: Option<Micros>| Some(a? + b?);
        let per_p = f
            .per_p
            .iter()
            .zip(&b.per_p)
            .map(|(fp, bp)| (fp.0, sum(fp.1, bp.1), sum(fp.2, bp.2)))
            .collect();
        let mut times = PassTimes {
            floor: sum(f.floor, b.floor),
            per_p,
            variants: summed_variants(&f.variants, &b.variants),
            chosen: None,
            floor_note: SUM_NOTE.into(),
        };
        if graphs {
            for &p in &options.probabilities {
                let r = measure_graph(kernels, &mut ops, p, true, effort);
                record_graph(
                    table,
                    &mut times,
                    "forward+backward",
                    (p, GRAPH_STEP_NOTE),
                    r,
                );
            }
        }
        emit_pass(
            table,
            shape,
            dtype,
            "forward+backward",
            &times,
            progress,
            SUM_NOTE,
        );
    }
    Ok(())
}

/// The note of the forward `fused_graph` rows.
pub const GRAPH_FORWARD_NOTE: &str = "the fused forward captured in a CUDA graph (seed from a \
    device buffer), one graph launch per call";
/// The note of the forward+backward `fused_graph` rows (measured, not a sum).
pub const GRAPH_STEP_NOTE: &str = "the fused forward then backward captured in one CUDA graph \
    (seed from a device buffer), one graph launch per call; measured, not a sum";

fn emit_pass(
    table: &mut Table,
    shape: &SuiteShape,
    dtype: DType,
    pass: &'static str,
    times: &PassTimes,
    progress: &mut dyn FnMut(&Row),
    unfused_note: &str,
) {
    let dims = shape.shape();
    let (flops, bytes) = match pass {
        "forward" => (forward_flops(dims), forward_bytes(dims, dtype)),
        "backward" => (backward_flops(dims), backward_bytes(dims, dtype)),
        _ => (
            forward_flops(dims) + backward_flops(dims),
            forward_bytes(dims, dtype) + backward_bytes(dims, dtype),
        ),
    };
    let copy = table.floors.copy_gbps;
    let rate = table.floors.rate_tflops.get(&dtype).copied();
    let make = |impl_name: &'static str,
                p: Option<f32>,
                time: Micros,
                unfused: Option<Micros>,
                note: &str| {
        let time_us = time.median;
        let tflops = flops / time_us / 1e6;
        let gbps = bytes / time_us / 1e3;
        Row {
            source: "fusedrop".into(),
            shape: shape.name.into(),
            dims,
            dtype,
            p,
            pass,
            impl_name,
            time_us,
            fastest_us: time.fastest,
            slowest_us: time.slowest,
            tflops,
            gbps,
            vs_gemm_floor: times.floor.map(|f| time_us / f.median),
            vs_unfused: unfused.map(|u| time_us / u.median),
            pct_copy_bw: 100.0 * gbps / copy,
            pct_matmul_rate: rate.map_or(f64::NAN, |r| 100.0 * tflops / r),
            note: note.into(),
        }
    };
    let mut rows = Vec::new();
    if let Some(floor) = times.floor {
        // No vs_unfused: the floor has no p, and the unfused path one time per p.
        rows.push(make("gemm_floor", None, floor, None, &times.floor_note));
    }
    for &(p, fused, unfused) in &times.per_p {
        if let Some(t) = fused {
            let note = times.chosen.clone().unwrap_or_default();
            rows.push(make("fused", Some(p), t, unfused, &note));
        }
        if let Some(t) = unfused {
            rows.push(make("unfused", Some(p), t, unfused, unfused_note));
        }
        for v in times.variants.iter().filter(|v| v.p == p) {
            rows.push(make(v.name, Some(p), v.time, unfused, &v.note));
        }
    }
    for row in rows {
        progress(&row);
        table.rows.push(row);
    }
}

// ---------------------------------------------------------------------------------------------
// Output

/// `v` with `digits` decimals, or nothing when there is none or it is not finite.
fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or(String::new(), |x| format!("{x:.digits$}"))
}

/// One line of the CSV. The field names are the header; the PyTorch peer script
/// (benches/peers/torch_peer.py) writes the same columns.
#[derive(Serialize)]
struct CsvRecord<'a> {
    source: &'a str,
    gpu: &'a str,
    driver: &'a str,
    shape: &'a str,
    m: usize,
    n: usize,
    k: usize,
    dtype: &'static str,
    p: Option<f32>,
    pass: &'static str,
    #[serde(rename = "impl")]
    impl_name: &'static str,
    time_us: Fixed<2>,
    fastest_us: Fixed<2>,
    slowest_us: Fixed<2>,
    tflops: Fixed<2>,
    gbps: Fixed<1>,
    vs_gemm_floor: Fixed<3>,
    vs_unfused: Fixed<3>,
    pct_copy_bw: Fixed<1>,
    pct_matmul_rate: Fixed<1>,
    copy_gbps: Fixed<1>,
    rate_tflops: Fixed<1>,
    note: &'a str,
}

impl<'a> CsvRecord<'a> {
    fn new(
        row: &'a Row,
        gpu: &'a str,
        driver: &'a str,
        copy: Option<f64>,
        rate: Option<f64>,
    ) -> Self {
        Self {
            source: &row.source,
            gpu,
            driver,
            shape: &row.shape,
            m: row.dims.m,
            n: row.dims.n,
            k: row.dims.k,
            dtype: row.dtype.name(),
            p: row.p,
            pass: row.pass,
            impl_name: row.impl_name,
            time_us: Fixed(Some(row.time_us)),
            fastest_us: Fixed(Some(row.fastest_us)),
            slowest_us: Fixed(Some(row.slowest_us)),
            tflops: Fixed(Some(row.tflops)),
            gbps: Fixed(Some(row.gbps)),
            vs_gemm_floor: Fixed(row.vs_gemm_floor),
            vs_unfused: Fixed(row.vs_unfused),
            pct_copy_bw: Fixed(Some(row.pct_copy_bw)),
            pct_matmul_rate: Fixed(Some(row.pct_matmul_rate)),
            copy_gbps: Fixed(copy),
            rate_tflops: Fixed(rate),
            note: &row.note,
        }
    }
}

/// A figure written with `DIGITS` decimals (a measurement's precision, not the float's), or an
/// empty field when there is none or it is not finite.
struct Fixed<const DIGITS: usize>(Option<f64>);

impl<const DIGITS: usize> Serialize for Fixed<DIGITS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&opt(self.0, DIGITS))
    }
}

/// Writes the header and one line per row. `gpu` and the floors come from `table`, which is
/// why [`write_table_csv`] is the usual entry point; this one takes bare rows (GPU columns
/// empty) for callers that have no table.
pub fn write_csv(rows: &[Row], out: impl io::Write) -> io::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    for row in rows {
        csv.serialize(CsvRecord::new(row, "", "", None, None))?;
    }
    csv.flush()
}

/// Writes the CSV of a measured table: the header, then every row with the GPU name, driver
/// and the floors of the run.
pub fn write_table_csv(table: &Table, out: impl io::Write) -> io::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    for row in &table.rows {
        csv.serialize(CsvRecord::new(
            row,
            &table.gpu.name,
            &table.gpu.driver,
            Some(table.floors.copy_gbps),
            table.floors.rate_tflops.get(&row.dtype).copied(),
        ))?;
    }
    csv.flush()
}

/// The table as text: a header with the GPU, driver and floors, then one line per row.
pub fn format_table(table: &Table) -> String {
    let g = &table.gpu;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GPU: {} (sm_{}{}, {} SMs, L2 {} MB), driver {}, cuBLASLt {}",
        g.name,
        g.compute_capability.0,
        g.compute_capability.1,
        g.sm_count,
        g.l2_bytes >> 20,
        g.driver,
        g.cublaslt
    );
    let mut rates: Vec<_> = table.floors.rate_tflops.iter().collect();
    rates.sort_by_key(|(d, _)| d.name());
    let rates: Vec<_> = rates
        .iter()
        .map(|(d, r)| format!("{} {r:.1} TFLOP/s", d.name()))
        .collect();
    let _ = writeln!(
        s,
        "Floors measured in this run: copy {:.0} GB/s (read+write); cuBLASLt GEMM {}",
        table.floors.copy_gbps,
        rates.join(", ")
    );
    let _ = writeln!(
        s,
        "{:<6} {:<5} {:>4} {:<16} {:<15} {:>10} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6}",
        "shape",
        "dtype",
        "p",
        "pass",
        "impl",
        "time_us",
        "TFLOP/s",
        "GB/s",
        "xfloor",
        "xunfused",
        "%copy",
        "%rate"
    );
    for r in &table.rows {
        let _ = writeln!(
            s,
            "{:<6} {:<5} {:>4} {:<16} {:<15} {:>10.1} {:>8.1} {:>8.0} {:>7} {:>8} {:>6.1} {:>6}",
            r.shape,
            r.dtype.name(),
            r.p.map_or("-".to_string(), |p| p.to_string()),
            r.pass,
            r.impl_name,
            r.time_us,
            r.tflops,
            r.gbps,
            opt(r.vs_gemm_floor, 3),
            opt(r.vs_unfused, 3),
            r.pct_copy_bw,
            opt(Some(r.pct_matmul_rate), 1),
        );
    }
    for f in &table.failures {
        let _ = writeln!(s, "NOT MEASURED: {f}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_operands_have_no_zeros_and_both_signs() {
        fn check<T: Element>() {
            let v = random_nonzero::<T>(100_003, 9);
            assert_eq!(v.len(), 100_003);
            assert!(v
                .iter()
                .all(|x| x.to_f32() != 0.0 && x.to_f32().abs() >= 0.5));
            assert!(v.iter().any(|x| x.to_f32() < 0.0) && v.iter().any(|x| x.to_f32() > 0.0));
        }
        check::<f32>();
        check::<f16>();
        check::<bf16>();
    }

    #[test]
    fn suite_matches_the_targets_and_names_parse() {
        let sq = suite_shape("sq").expect("sq is in the suite");
        assert_eq!(sq.shape(), LinearShape::new(4096, 4096, 4096));
        let up = suite_shape("up").expect("up is in the suite");
        assert_eq!((up.m, up.k, up.n), (8192, 4096, 16384));
        assert_eq!(up.dtypes(), vec![DType::Bf16, DType::F16]);
        assert!(suite_shape("huge").is_err());
        assert_eq!(DType::parse("bf16").expect("bf16"), DType::Bf16);
        assert!(DType::parse("f64").is_err());
    }

    /// A row of the odd shape, with a comma in its note.
    fn fake_row() -> Row {
        Row {
            source: "fusedrop".into(),
            shape: "odd".into(),
            dims: LinearShape::new(1000, 1000, 1000),
            dtype: DType::F16,
            p: Some(0.1),
            pass: "forward",
            impl_name: "unfused",
            time_us: 12.5,
            fastest_us: 12.25,
            slowest_us: 13.0,
            tflops: 160.0,
            gbps: 900.0,
            vs_gemm_floor: Some(1.25),
            vs_unfused: None,
            pct_copy_bw: 30.0,
            pct_matmul_rate: f64::NAN,
            note: "a note, with a comma".into(),
        }
    }

    #[test]
    fn csv_rows_have_the_header_columns_and_quote_commas() {
        let mut out = Vec::new();
        write_csv(&[fake_row()], &mut out).expect("writes to memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "source,gpu,driver,shape,m,n,k,dtype,p,pass,impl,time_us,fastest_us,slowest_us,\
             tflops,gbps,vs_gemm_floor,vs_unfused,pct_copy_bw,pct_matmul_rate,copy_gbps,\
             rate_tflops,note\n\
             fusedrop,,,odd,1000,1000,1000,f16,0.1,forward,unfused,12.50,12.25,13.00,160.00,\
             900.0,1.250,,30.0,,,,\"a note, with a comma\"\n"
        );
    }

    /// Both the one launch and the TMA store run (no product splits).
    const BOTH_RUN: HopperVariantsRun = HopperVariantsRun {
        one_launch: true,
        tma_store: true,
    };
    /// `small`'s: dX splits, dW does not.
    const SMALL_RUNS: HopperVariantsRun = HopperVariantsRun {
        one_launch: false,
        tma_store: true,
    };

    fn names(variants: &[Variant]) -> Vec<&'static str> {
        variants.iter().map(|v| v.name).collect()
    }

    #[test]
    fn backward_variants_follow_what_auto_would_run() {
        // Auto runs a product on the Hopper kernels (small's dW, for one): the mma.sync
        // fallback is timed beside it, and the Hopper kernels forced for both products.
        let small = LinearShape::new(64, 4096, 4096);
        let small_auto = ("wg128x128s4", "wg128x256");
        assert_eq!(
            names(&backward_variants_given(
                small, true, small_auto, SMALL_RUNS
            )),
            [
                "fused_mma_sync",
                "fused_hopper",
                "fused_hop256",
                "fused_hop128",
                "fused_hop_ts",
                "fused_hop_dz",
                "fused_hop_tw",
                "fused_id_dz",
                "fused_id_tw",
                "fused_identity",
                "fused_ident_ws"
            ]
        );
        let forced: Vec<_> = backward_variants_given(small, true, small_auto, SMALL_RUNS)
            .iter()
            .map(|v| v.forced.kernel())
            .collect();
        assert_eq!(
            forced,
            [
                BackwardKernel::TensorCore,
                BackwardKernel::Hopper,
                BackwardKernel::HopperWg128x256,
                BackwardKernel::HopperWg128x128,
                BackwardKernel::HopperTmaStore,
                BackwardKernel::HopperDzFromDx,
                BackwardKernel::HopperTransformWarps,
                BackwardKernel::HopperDzFromDx,
                BackwardKernel::HopperTransformWarps,
                BackwardKernel::Auto,
                BackwardKernel::Auto
            ]
        );
        // A forced tile is timed only where Auto does not already run both products on it.
        let sq = LinearShape::new(4096, 4096, 4096);
        for (auto, tiles) in [
            (("wg128x256", "wg128x256"), &["fused_hop128"][..]),
            (("wg128x128", "wg128x128"), &["fused_hop256"][..]),
            (
                ("wg128x256", "wg128x128"),
                &["fused_hop256", "fused_hop128"][..],
            ),
        ] {
            let got = names(&backward_variants_given(sq, true, auto, BOTH_RUN));
            let got: Vec<_> = got.iter().filter(|n| n.starts_with("fused_hop")).collect();
            let mut want = vec!["fused_hopper"];
            want.extend_from_slice(tiles);
            want.extend([
                "fused_hop_ts",
                "fused_hop_dz",
                "fused_hop_tw",
                "fused_hop_1l",
            ]);
            assert_eq!(got, want.iter().collect::<Vec<_>>(), "{auto:?}");
        }
        // Both products split: the one launch and the TMA store would run `fused_hopper`'s
        // kernels again, so neither is timed.
        let neither = HopperVariantsRun {
            one_launch: false,
            tma_store: false,
        };
        let got = names(&backward_variants_given(
            small,
            true,
            ("wg128x128s4", "wg128x128s2"),
            neither,
        ));
        assert!(
            got.contains(&"fused_hopper")
                && !got.contains(&"fused_hop_ts")
                && !got.contains(&"fused_hop_1l"),
            "{got:?}"
        );
        // One tile per product: Auto keeps mma.sync, the Hopper kernels can still be forced
        // (and no tile is weighed).
        let tiny = LinearShape::new(64, 128, 128);
        assert_eq!(
            names(&backward_variants_given(
                tiny,
                true,
                ("tc64x32", "tc64x32"),
                BOTH_RUN
            )),
            [
                "fused_hopper",
                "fused_hop_ts",
                "fused_hop_dz",
                "fused_hop_tw",
                "fused_hop_1l",
                "fused_id_dz",
                "fused_id_tw",
                "fused_identity",
                "fused_ident_ws"
            ]
        );
        // n or k not a multiple of 8: TMA cannot read the operands.
        for dims in [
            LinearShape::new(4096, 4100, 4096),
            LinearShape::new(4096, 4096, 4100),
        ] {
            assert!(!hopper_backward_fits(dims, true));
            assert_eq!(
                names(&backward_variants_given(
                    dims,
                    true,
                    ("tc128x128", "tc128x128"),
                    BOTH_RUN
                )),
                ["fused_identity", "fused_ident_ws"]
            );
        }
        // No Hopper kernels for the dtype, GPU or build: only the identity row.
        assert_eq!(
            names(&backward_variants_given(
                sq,
                false,
                ("tc128x128", "tc128x128"),
                BOTH_RUN
            )),
            ["fused_identity", "fused_ident_ws"]
        );
        // The suite's odd shape has n = k = 1000, multiples of 8.
        assert!(hopper_backward_fits(
            LinearShape::new(1000, 1000, 1000),
            true
        ));
    }

    #[test]
    fn forward_variants_follow_the_chosen_configuration() {
        let sq = LinearShape::new(4096, 4096, 4096);
        let variants =
            forward_variants_given(sq, ForwardConfig::Wg128x256, ForwardConfig::Tc128x256, true);
        assert_eq!(
            names(&variants),
            [
                "fused_mma_sync",
                "fused_wg128x256",
                "fused_wg128x128",
                "fused_wg64x128",
                "fused_identity"
            ]
        );
        assert_eq!(variants[0].forced.config(), Some(ForwardConfig::Tc128x256));
        assert_eq!(variants[0].forced.note(), "forced config tc128x256");
        // An inference batch: the library splits k, and every split configuration is timed.
        let small = LinearShape::new(64, 4096, 4096);
        let variants = forward_variants_given(
            small,
            ForwardConfig::Wg64x128S4,
            ForwardConfig::Tc64x32,
            true,
        );
        assert_eq!(
            names(&variants),
            [
                "fused_mma_sync",
                "fused_wg128x256",
                "fused_wg128x128",
                "fused_wg64x128",
                "fused_wg128x128s4",
                "fused_wg64x128s4",
                "fused_wg128x128s2",
                "fused_wg64x128s2",
                "fused_identity"
            ]
        );
        // Off Hopper: the library's mma.sync choice is the only kernel, nothing to force.
        let off = forward_variants_given(
            sq,
            ForwardConfig::Tc128x256,
            ForwardConfig::Tc128x256,
            false,
        );
        assert_eq!(names(&off), ["fused_identity"]);
        // On Hopper with k not a multiple of 8: the Hopper configurations cannot run it.
        let odd_k = LinearShape::new(1000, 1000, 1001);
        let variants = forward_variants_given(
            odd_k,
            ForwardConfig::Tc64x128,
            ForwardConfig::Tc64x128,
            true,
        );
        assert_eq!(names(&variants), ["fused_identity"]);
    }

    #[test]
    fn variants_name_their_rows_and_change_one_thing() {
        let identity = Variant::IDENTITY;
        assert!(!identity.runs_at(0.0) && identity.runs_at(0.1) && identity.runs_at(0.5));
        assert_eq!(identity.forced.nonlinearity(), Nonlinearity::Identity);
        assert_eq!(identity.forced.kernel(), BackwardKernel::Auto);
        assert_eq!(identity.forced.config(), None);
        let workspace = Variant::IDENTITY_WORKSPACE;
        assert!(!workspace.runs_at(0.0) && workspace.runs_at(0.1));
        assert_eq!(workspace.forced.nonlinearity(), Nonlinearity::Identity);
        assert_eq!(workspace.forced.kernel(), BackwardKernel::Auto);
        let hopper = Forced::Kernel(BackwardKernel::Hopper);
        assert_eq!(hopper.nonlinearity(), Nonlinearity::Relu);
        assert_eq!(hopper.note(), "forced BackwardKernel::Hopper");
        let mma_sync = Variant {
            name: "fused_mma_sync",
            forced: Forced::Config(ForwardConfig::Tc64x64),
        };
        assert!(mma_sync.runs_at(0.0));
        let whole_hopper = Variant {
            name: "fused_hopper",
            forced: hopper,
        };
        assert!(whole_hopper.runs_at(0.0));
        let tile = Variant {
            name: "fused_hop128",
            forced: Forced::Kernel(BackwardKernel::HopperWg128x128),
        };
        assert!(!tile.runs_at(0.0) && tile.runs_at(0.1) && tile.runs_at(0.5));
        assert_eq!(tile.forced.note(), "forced BackwardKernel::HopperWg128x128");
        let dz = Variant {
            name: "fused_hop_dz",
            forced: Forced::DzFromDx,
        };
        assert!(!dz.runs_at(0.0) && dz.runs_at(0.1));
        assert_eq!(dz.forced.nonlinearity(), Nonlinearity::Relu);
        assert_eq!(dz.forced.kernel(), BackwardKernel::HopperDzFromDx);
        let transform = Variant {
            name: "fused_hop_tw",
            forced: Forced::Kernel(BackwardKernel::HopperTransformWarps),
        };
        assert!(!transform.runs_at(0.0) && transform.runs_at(0.1));
        assert_eq!(
            transform.forced.note(),
            "forced BackwardKernel::HopperTransformWarps"
        );
        let tma_store = Variant {
            name: "fused_hop_ts",
            forced: Forced::Kernel(BackwardKernel::HopperTmaStore),
        };
        assert!(!tma_store.runs_at(0.0) && tma_store.runs_at(0.1));
        assert_eq!(
            tma_store.forced.note(),
            "forced BackwardKernel::HopperTmaStore"
        );
        let one_launch = Variant {
            name: "fused_hop_1l",
            forced: Forced::Kernel(BackwardKernel::HopperOneLaunch),
        };
        assert!(!one_launch.runs_at(0.0) && one_launch.runs_at(0.1));
        assert_eq!(
            one_launch.forced.note(),
            "forced BackwardKernel::HopperOneLaunch"
        );
        // The identity with each of the two: backward only, the workspace for dZ from dX.
        let identity_dz = Forced::IdentityKernel(BackwardKernel::HopperDzFromDx);
        assert_eq!(identity_dz.nonlinearity(), Nonlinearity::Identity);
        assert_eq!(identity_dz.kernel(), BackwardKernel::HopperDzFromDx);
        assert!(identity_dz.note().starts_with(
            "identity activation, BackwardKernel::HopperDzFromDx: the dX launch writes dZ"
        ));
        let identity_tw = Variant {
            name: "fused_id_tw",
            forced: Forced::IdentityKernel(BackwardKernel::HopperTransformWarps),
        };
        assert!(!identity_tw.runs_at(0.0) && identity_tw.runs_at(0.1));
        assert_eq!(
            identity_tw.forced.note(),
            "identity activation, BackwardKernel::HopperTransformWarps"
        );
        assert_eq!(dz.forced.note(), DZ_FROM_DX_NOTE);
        // Every impl name a bench row can carry: distinct, the variants and graph rows marked as
        // variants of `fused`, all within the table's impl column.
        let sq = LinearShape::new(4096, 4096, 4096);
        let mut all: Vec<&str> = vec!["gemm_floor", "fused", "unfused", GRAPH_IMPL];
        all.extend(names(&forward_variants_given(
            sq,
            ForwardConfig::Wg128x256,
            ForwardConfig::Tc128x256,
            true,
        )));
        all.extend(names(&backward_variants_given(
            sq,
            true,
            ("wg128x256", "wg128x128"),
            BOTH_RUN,
        )));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 19, "{all:?}");
        for name in all
            .iter()
            .filter(|n| !["gemm_floor", "fused", "unfused"].contains(n))
        {
            assert!(name.starts_with("fused_") && name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn graph_replays_are_measured_on_small_by_default() {
        for options in [TableOptions::full(), TableOptions::quick()] {
            assert_eq!(options.graph_shapes, ["small"]);
            assert!(options
                .shapes
                .iter()
                .any(|s| options.graph_shapes.contains(&s.name)));
        }
    }

    #[test]
    fn forward_backward_variant_rows_add_the_passes_under_the_same_name() {
        let time = |p: f32, name: &'static str, time_us: f64| VariantTime {
            p,
            name,
            note: String::new(),
            time: spread(time_us),
        };
        let forward = [
            time(0.1, "fused_mma_sync", 10.0),
            time(0.1, "fused_wg128x256", 8.0),
            time(0.1, "fused_identity", 9.0),
            time(0.5, "fused_identity", 9.5),
            time(0.1, GRAPH_IMPL, 7.0),
        ];
        let backward = [
            time(0.1, "fused_mma_sync", 20.0),
            time(0.1, "fused_hopper", 15.0),
            time(0.1, "fused_identity", 18.0),
            time(0.5, "fused_identity", 19.0),
        ];
        let sums = summed_variants(&forward, &backward);
        let got: Vec<_> = sums.iter().map(|v| (v.p, v.name, v.time)).collect();
        assert_eq!(
            got,
            [
                (0.1, "fused_mma_sync", spread(10.0) + spread(20.0)),
                (0.1, "fused_identity", spread(9.0) + spread(18.0)),
                (0.5, "fused_identity", spread(9.5) + spread(19.0)),
            ]
        );
        assert!(sums.iter().all(|v| v.note == SUM_NOTE));
    }

    /// A figure with a median of `us` and repetitions from 0.5 us faster to 1 us slower (exact
    /// in binary, so that sums compare exactly).
    fn spread(us: f64) -> Micros {
        Micros {
            median: us,
            fastest: us - 0.5,
            slowest: us + 1.0,
        }
    }

    /// A timer for `in_rounds` whose GPU slows by 1 % with every repetition timed (a clock
    /// that drifts), where every contender's launch takes the same 10 us; it logs the calls.
    fn drifting_timer(
        log: &mut Vec<(usize, Phase)>,
        fails_at: Option<(usize, usize)>,
    ) -> impl FnMut(usize, Phase) -> Result<Duration> + '_ {
        let mut timed = 0usize;
        let mut timed_of = HashMap::<usize, usize>::new();
        move |c, phase| {
            log.push((c, phase));
            let Phase::Time(count) = phase else {
                return Ok(Duration::ZERO);
            };
            let nth = timed_of.entry(c).or_default();
            *nth += 1;
            if fails_at == Some((c, *nth)) {
                return Err(Error::Cuda(format!("contender {c} failed")));
            }
            timed += 1;
            let per_launch = 10e-6 * (1.0 + 0.01 * timed as f64);
            Ok(Duration::from_secs_f64(per_launch * count as f64))
        }
    }

    #[test]
    fn interleaved_rounds_time_each_contender_in_turn_so_a_drift_moves_all_alike() {
        let effort = Effort {
            warmup: 2,
            reps: 15,
            rep_time: Duration::from_micros(100),
        };
        let mut log = Vec::new();
        let results = in_rounds(effort, 3, drifting_timer(&mut log, None));
        // Each warmed up and probed in turn, then rounds of one repetition each (10 launches:
        // 100 us of 10 us launches).
        let mut want = Vec::new();
        for c in 0..3 {
            want.extend([(c, Phase::Warmup), (c, Phase::Time(3))]);
        }
        for _ in 0..15 {
            want.extend((0..3).map(|c| (c, Phase::Time(10))));
        }
        assert_eq!(log, want);
        let medians: Vec<f64> = results
            .iter()
            .map(|r| r.as_ref().expect("measured").micros().median)
            .collect();
        // The same work: the medians differ by the drift of the rounds' neighbours (2 %), not by
        // that of a whole measurement (15 % if measured one after the other).
        assert!(medians[2] / medians[0] < 1.025, "{medians:?}");
        let t = results[0].as_ref().expect("measured");
        assert_eq!(t.launches, 10);
        assert!(t.min < t.per_launch && t.per_launch < t.max);
    }

    #[test]
    fn a_contender_that_fails_leaves_the_rounds_and_the_others_finish() {
        let effort = Effort {
            warmup: 1,
            reps: 5,
            rep_time: Duration::from_micros(30),
        };
        let mut log = Vec::new();
        // Contender 1's third timing (the probe, then its second repetition) fails.
        let results = in_rounds(effort, 3, drifting_timer(&mut log, Some((1, 3))));
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(
            matches!(&results[1], Err(Error::Cuda(why)) if why == "contender 1 failed"),
            "{:?}",
            results[1]
        );
        let timed = |c| {
            log.iter()
                .filter(|(d, p)| *d == c && *p != Phase::Warmup)
                .count()
        };
        assert_eq!((timed(0), timed(1), timed(2)), (6, 3, 6));
    }

    #[test]
    fn a_pass_measures_its_floor_then_each_p_s_fused_variants_and_unfused() {
        let variants = [
            Variant {
                name: "fused_mma_sync",
                forced: Forced::Kernel(BackwardKernel::TensorCore),
            },
            Variant::IDENTITY,
            Variant::IDENTITY_WORKSPACE,
        ];
        let contenders = Contender::of_pass(&[0.0, 0.1], &variants, |v| v != 2);
        use Contender as C;
        assert_eq!(
            contenders,
            [
                C::Floor,
                C::Fused(0.0),
                C::Variant(0.0, 0),
                C::Unfused(0.0),
                C::Fused(0.1),
                C::Variant(0.1, 0),
                C::Variant(0.1, 1),
                C::Unfused(0.1),
            ]
        );
        assert_eq!(
            contenders[6].label("backward", &variants),
            "backward fused_identity p=0.1"
        );
        let sum = spread(10.0) + spread(30.0);
        assert_eq!((sum.median, sum.fastest, sum.slowest), (40.0, 39.0, 42.0));
    }

    #[test]
    fn a_pass_s_figures_go_to_their_contenders_and_failures_are_reported() {
        let variants = [Variant::IDENTITY];
        let contenders = Contender::of_pass(&[0.0, 0.5], &variants, |_| true);
        // Floor, fused 0, unfused 0, fused 0.5, identity 0.5, unfused 0.5: each its own time
        // (microseconds = 10 x its position + 10), the identity's failed.
        let timing = |us: u64| Timing {
            per_launch: Duration::from_micros(us),
            min: Duration::from_micros(us - 1),
            max: Duration::from_micros(us + 2),
            launches: 7,
        };
        let results: Vec<Result<Timing>> = (0..contenders.len())
            .map(|c| {
                if contenders[c] == Contender::Variant(0.5, 0) {
                    Err(Error::Cuda("trapped".into()))
                } else {
                    Ok(timing(10 * c as u64 + 10))
                }
            })
            .collect();
        let mut failures = Vec::new();
        let times = sort_figures(
            &[0.0, 0.5],
            "backward",
            &contenders,
            results,
            &variants,
            |label, e| failures.push(format!("{label}: {e}")),
        );
        let us = |m: f64| Micros {
            median: m,
            fastest: m - 1.0,
            slowest: m + 2.0,
        };
        assert_eq!(times.floor, Some(us(10.0)));
        assert_eq!(
            times.per_p,
            [
                (0.0, Some(us(20.0)), Some(us(30.0))),
                (0.5, Some(us(40.0)), Some(us(60.0)))
            ]
        );
        assert!(times.variants.is_empty());
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].starts_with("backward fused_identity p=0.5: "),
            "{failures:?}"
        );
    }

    fn fake_table() -> Table {
        Table {
            gpu: GpuInfo {
                name: "Fake GPU".into(),
                driver: "1.0".into(),
                compute_capability: (9, 0),
                sm_count: 132,
                l2_bytes: 50 << 20,
                cublaslt: 130_000,
            },
            floors: Floors {
                copy_gbps: 4000.0,
                rate_tflops: HashMap::from([(DType::Bf16, 800.0)]),
            },
            rows: Vec::new(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn variant_rows_sit_beside_fused_in_the_table_and_csv() {
        let small = suite_shape("small").expect("small is in the suite");
        let mut table = fake_table();
        let variant = |p: f32, name: &'static str, note: &str, time_us: f64| VariantTime {
            p,
            name,
            note: note.into(),
            time: spread(time_us),
        };
        let times = PassTimes {
            floor: Some(spread(20.0)),
            per_p: vec![
                (0.0, Some(spread(50.0)), Some(spread(40.0))),
                (0.1, Some(spread(60.0)), Some(spread(48.0))),
            ],
            variants: vec![
                variant(0.0, "fused_hopper", "forced BackwardKernel::Hopper", 45.0),
                variant(0.1, "fused_hopper", "forced BackwardKernel::Hopper", 55.0),
                variant(0.1, "fused_identity", IDENTITY_NOTE, 66.0),
                variant(0.1, GRAPH_IMPL, GRAPH_STEP_NOTE, 30.0),
            ],
            chosen: None,
            floor_note: floor_note(&[("dX", Some((2, 8))), ("dW", Some((0, 5)))]),
        };
        let mut seen = Vec::new();
        emit_pass(
            &mut table,
            &small,
            DType::Bf16,
            "backward",
            &times,
            &mut |row| seen.push(row.impl_name),
            BACKWARD_UNFUSED_NOTE,
        );
        let rows: Vec<_> = table.rows.iter().map(|r| (r.p, r.impl_name)).collect();
        assert_eq!(
            rows,
            [
                (None, "gemm_floor"),
                (Some(0.0), "fused"),
                (Some(0.0), "unfused"),
                (Some(0.0), "fused_hopper"),
                (Some(0.1), "fused"),
                (Some(0.1), "unfused"),
                (Some(0.1), "fused_hopper"),
                (Some(0.1), "fused_identity"),
                (Some(0.1), "fused_graph"),
            ]
        );
        assert_eq!(seen.len(), rows.len(), "progress sees every row");
        assert_eq!(table.rows[0].vs_unfused, None, "the floor has no p");
        assert_eq!(
            table.rows[0].note,
            "cuBLASLt products alone, no epilogue; each the fastest of its heuristic's \
             algorithms (dX: #3 of 8, dW: #1 of 5)"
        );
        assert_eq!(table.rows[0].vs_gemm_floor, Some(1.0));
        let identity = &table.rows[7];
        assert_eq!(identity.vs_unfused, Some(66.0 / 48.0));
        assert_eq!(identity.vs_gemm_floor, Some(66.0 / 20.0));
        assert_eq!(identity.note, IDENTITY_NOTE);

        let mut out = Vec::new();
        write_table_csv(&table, &mut out).expect("writes to memory");
        let text = String::from_utf8(out).expect("utf-8");
        let mut lines = text.lines();
        let header: Vec<_> = lines.next().expect("a header").split(',').collect();
        let impl_col = header.iter().position(|c| *c == "impl").expect("impl");
        assert_eq!(header.len(), 23);
        let fastest_col = header
            .iter()
            .position(|c| *c == "fastest_us")
            .expect("fastest_us");
        let floor_line = text.lines().nth(1).expect("the floor's row");
        assert_eq!(floor_line.split(',').nth(fastest_col), Some("19.50"));
        let graph = lines.last().expect("rows");
        assert!(
            graph.starts_with("fusedrop,Fake GPU,1.0,small,64,4096,4096,bf16,0.1,backward,"),
            "{graph}"
        );
        assert_eq!(graph.split(',').nth(impl_col), Some("fused_graph"));
        // The note has commas, so the CSV quotes it.
        assert!(
            graph.ends_with(&format!("\"{GRAPH_STEP_NOTE}\"")),
            "{graph}"
        );

        let text = format_table(&table);
        assert!(text.contains("fused_identity"), "{text}");
        assert!(!text.contains("NOT MEASURED"), "{text}");
    }

    #[test]
    fn the_pytorch_peer_writes_the_columns_of_the_bench_csv() {
        let script = include_str!("../benches/peers/torch_peer.py");
        let list = script
            .split_once("COLUMNS = [")
            .and_then(|(_, rest)| rest.split_once(']'))
            .expect("torch_peer.py's COLUMNS list")
            .0;
        let peer: Vec<&str> = list
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .filter(|c| !c.is_empty())
            .collect();
        let mut out = Vec::new();
        write_csv(&[fake_row()], &mut out).expect("writes to memory");
        let text = String::from_utf8(out).expect("utf-8");
        let header: Vec<&str> = text.lines().next().expect("a header").split(',').collect();
        assert_eq!(peer, header);
    }

    #[test]
    fn flops_and_bytes_count_what_must_move() {
        let s = LinearShape::new(2, 3, 5);
        assert_eq!(forward_flops(s), 60.0);
        assert_eq!(backward_flops(s), 120.0);
        assert_eq!(
            forward_bytes(s, DType::Bf16),
            ((10 + 15 + 3 + 6) * 2) as f64
        );
        assert_eq!(
            backward_bytes(s, DType::F32),
            ((20 + 30 + 12 + 3) * 4) as f64
        );
    }
}
