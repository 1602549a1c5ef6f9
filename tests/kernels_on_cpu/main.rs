//! The kernels' own CUDA source, run on the CPU (docs/HARNESS.md).
//!
//! Each test compiles a driver from tests/harness/ that `#include`s a real kernels/*.cu file with
//! the host C++ compiler against kernels/host/cuda_host.h, feeds it random inputs with the
//! outputs poisoned (NaN), launches every entry point with its configuration's own launch numbers
//! and compares the outputs with `fusedrop::reference` as the GPU tests do: masks exactly, values
//! by relative L2 error within `T::REL_L2_TOLERANCE`.
//!
//! Environment:
//! - `FUSEDROP_HARNESS_SANITIZE=address` builds the drivers with AddressSanitizer and
//!   UndefinedBehaviorSanitizer (scripts/test.sh runs this target once that way, less the
//!   `_bf16_` twins of `_f16_` tests), so an
//!   out-of-bounds access in a kernel, or undefined behaviour (a shift by the type's width or more,
//!   a signed overflow), fails the test;
//! - `FUSEDROP_HARNESS_KERNELS=<dir>` takes the kernel sources from `<dir>` instead of kernels/
//!   (to run a patched copy, e.g. with a planted bug; scripts/plant-faults.sh does this), and
//!   `FUSEDROP_HARNESS_DRIVERS=<dir>` the drivers from `<dir>` instead of tests/harness/;
//! - `FUSEDROP_HARNESS_BUILD_DIR=<dir>` builds the drivers in `<dir>` instead of the target's
//!   shared directory (scripts/plant-faults.sh gives each run its own, so that runs going on at
//!   the same time never remove each other's drivers as stale);
//! - `FUSEDROP_HARNESS_SWITCH=ucontext` makes the drivers switch threads with `swapcontext`, the
//!   form other architectures than x86-64 use (scripts/test.sh runs a few tests that way, so the
//!   fallback is not only compiled where nobody runs it);
//! - `CXX` names the host compiler (default `g++`).
//!
//! Without CUDA headers (a crate built without nvcc) the tests fail, saying why, unless
//! `FUSEDROP_HARNESS_SKIP=1` asks them to skip with a message.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[path = "../../build/source_digest.rs"]
mod source_digest;

use fusedrop::cuda::backward::{
    backward_plan, product_plan, BackwardBuffers, BackwardKernel, BackwardMask, BackwardProduct,
    ProductOperands,
};
use fusedrop::cuda::dropout::dropout_plan;
use fusedrop::cuda::forward::{
    forward_plan, forward_sweep_plan, sweep_workspace_bytes, ForwardConfig,
};
use fusedrop::cuda::launch_plan::{KernelArg, LaunchPlan, Operand, OperandAddresses};
use fusedrop::cuda::{launch_table, GpuFacts, ResidentClusters};
use fusedrop::{
    mask, reference, DropoutSpec, Element, Geometry, LayerSpec, LinearShape, Nonlinearity,
};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Building the drivers.

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kernels_dir() -> PathBuf {
    std::env::var_os("FUSEDROP_HARNESS_KERNELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("kernels"))
}

/// The drivers' sources: tests/harness/, or `$FUSEDROP_HARNESS_DRIVERS` (a patched copy, e.g.
/// with a fault planted in the Hopper test kernel of ptx_unit.cpp).
fn harness_dir() -> PathBuf {
    std::env::var_os("FUSEDROP_HARNESS_DRIVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("tests").join("harness"))
}

fn sanitize() -> bool {
    std::env::var("FUSEDROP_HARNESS_SANITIZE").is_ok_and(|v| v == "address")
}

fn ucontext() -> bool {
    std::env::var("FUSEDROP_HARNESS_SWITCH").is_ok_and(|v| v == "ucontext")
}

/// What ends a driver's file name after its hash: which of the optional builds it is.
fn driver_flavour() -> String {
    format!(
        "{}{}",
        if sanitize() { "-asan" } else { "" },
        if ucontext() { "-ucontext" } else { "" }
    )
}

fn compiler_flags() -> Vec<String> {
    // A misaligned vector access through a cast pointer faults on the GPU but not on x86, so
    // UBSan's alignment check stands in for the fault in every build.
    let mut flags: Vec<String> = [
        "-std=c++20",
        "-Wall",
        "-Wextra",
        "-Wno-unknown-pragmas",
        "-fsanitize=alignment",
        "-fno-sanitize-recover=alignment",
        // The harness switches fibers by swapping stacks (kernels/host/cuda_host.h), which a
        // hardware shadow stack would refuse; a driver not marked as shadow-stack compatible
        // never runs with one.
        "-fcf-protection=none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if sanitize() {
        flags.extend(
            [
                "-O1",
                // Line tables only: a report still names file and line, and the drivers compile
                // in three fifths of the time `-g` takes (backward_sm90: 77 s against 125 s).
                "-g1",
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    } else {
        flags.push("-O2".to_string());
    }
    if ucontext() {
        flags.push("-DFUSEDROP_HOST_UCONTEXT".to_string());
    }
    flags
}

/// Compiles tests/harness/<name>.cpp (once per process, and reused across runs while the
/// sources and flags are unchanged). Without the CUDA headers (a build without nvcc) the test
/// fails, saying so, unless FUSEDROP_HARNESS_SKIP=1 asks for a skip (`None`): a CPU test that
/// passes without checking anything would look like a check.
fn driver(name: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let Some(include) = option_env!("FUSEDROP_CUDA_INCLUDE") else {
        let why = "the crate was built without nvcc, so there are no CUDA headers (cuda_fp16.h) \
                   to compile the kernels against";
        assert!(
            std::env::var("FUSEDROP_HARNESS_SKIP").is_ok_and(|v| v == "1"),
            "the CPU harness cannot run: {why}; expected nvcc at build time (set NVCC, or run \
             scripts/test.sh, which installs one), or FUSEDROP_HARNESS_SKIP=1 to skip it"
        );
        eprintln!("skipping the CPU harness (FUSEDROP_HARNESS_SKIP=1): {why}");
        return None;
    };
    let cell = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone();
    Some(cell.get_or_init(|| build_driver(name, include)).clone())
}

fn build_driver(name: &str, include: &str) -> PathBuf {
    let harness = harness_dir();
    let kernels = kernels_dir();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let flags = compiler_flags();

    // The driver's key: its name, the compiler and flags, the include directories, and every
    // file it can include from them (build/source_digest.rs, as build.rs keys nvcc's outputs);
    // the launch table header is the one build.rs generates from src/cuda/launch_table.rs.
    let generated = Path::new(env!("FUSEDROP_GENERATED_INCLUDE"));
    let tree = |dir: &Path| {
        source_digest::tree_contents(dir).unwrap_or_else(|e| {
            panic!("could not read {} for the driver's key: {e}", dir.display())
        })
    };
    let key = source_digest::digest(&[
        name.as_bytes(),
        cxx.as_bytes(),
        flags.join("\n").as_bytes(),
        include.as_bytes(),
        kernels.as_os_str().as_encoded_bytes(),
        harness.as_os_str().as_encoded_bytes(),
        &tree(&kernels),
        &tree(&harness),
        &tree(generated),
    ]);
    // Drivers of patched copies live apart, so that removing stale drivers below never deletes
    // the drivers of a plain run going on at the same time; a directory of the caller's own
    // (scripts/plant-faults.sh: one per run) keeps two patched runs apart too.
    let patched = std::env::var_os("FUSEDROP_HARNESS_KERNELS").is_some()
        || std::env::var_os("FUSEDROP_HARNESS_DRIVERS").is_some();
    let dir = match std::env::var_os("FUSEDROP_HARNESS_BUILD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join(if patched {
            "harness-patched"
        } else {
            "harness"
        }),
    };
    fs::create_dir_all(&dir).expect("create the harness build directory");
    let flavour = driver_flavour();
    let exe = dir.join(format!("{name}-{key}{flavour}"));
    if exe.is_file() {
        return exe;
    }
    // Drivers of the same flavour built from older sources are of no further use.
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let stale = file
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.strip_suffix(flavour.as_str()))
            .is_some_and(|hash| {
                hash.len() == key.len() && hash.bytes().all(|b| b.is_ascii_hexdigit())
            });
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    let output = Command::new(&cxx)
        .args(&flags)
        .arg("-I")
        .arg(&kernels)
        .arg("-I")
        .arg(&harness)
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(env!("FUSEDROP_GENERATED_INCLUDE"))
        .arg(harness.join(format!("{name}.cpp")))
        .arg("-o")
        .arg(&partial)
        .output()
        .unwrap_or_else(|e| panic!("could not run the host compiler {cxx}: {e}"));
    assert!(
        output.status.success(),
        "{cxx} failed to compile tests/harness/{name}.cpp against {}:\n{}",
        kernels.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&partial, &exe).expect("move the driver into place");
    exe
}

// ---------------------------------------------------------------------------------------------
// Launch requests (the format is documented in tests/harness/driver.h).

/// The raw little-endian bytes of an element type.
trait Raw: Element {
    const BYTES: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

impl Raw for f32 {
    const BYTES: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

impl Raw for f16 {
    const BYTES: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f16::from_le_bytes(bytes.try_into().expect("2 bytes"))
    }
}

impl Raw for bf16 {
    const BYTES: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        bf16::from_le_bytes(bytes.try_into().expect("2 bytes"))
    }
}

struct Launch {
    dir: PathBuf,
    what: String,
    request: String,
}

impl Launch {
    fn new(kernel: &str, what: String, rng: &mut StdRng) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("harness-runs")
            .join(format!(
                "{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
        fs::create_dir_all(&dir).expect("create a request directory");
        let mut request = String::new();
        writeln!(request, "schedule {}", rng.random::<u64>()).unwrap();
        Launch {
            dir,
            what: format!("{kernel} {what}"),
            request,
        }
    }

    fn int(&mut self, name: &str, value: impl Into<i64>) -> &mut Self {
        writeln!(self.request, "i64 {name} {}", value.into()).unwrap();
        self
    }

    /// Another schedule seed for the same launch (the driver takes the request's last).
    fn schedule(&mut self, seed: u64) -> &mut Self {
        writeln!(self.request, "schedule {seed}").unwrap();
        self
    }

    /// The MaskParams of a call with `n` output columns, as src/cuda/mod.rs builds them.
    fn mask(
        &mut self,
        dropout: &DropoutSpec,
        geometry: &Geometry,
        n: usize,
        device: bool,
    ) -> &mut Self {
        let threshold = mask::threshold(dropout.p);
        self.mask_with(
            dropout,
            geometry,
            n,
            device,
            threshold,
            mask::scale(dropout.p),
        )
    }

    /// MaskParams with the threshold and scale given apart from `dropout.p`, as the backward's
    /// workspace path builds them (the pre-pass: p's threshold, scale 1; the products: threshold
    /// 0, p's scale).
    fn mask_with(
        &mut self,
        dropout: &DropoutSpec,
        geometry: &Geometry,
        n: usize,
        device: bool,
        threshold: u64,
        scale: f32,
    ) -> &mut Self {
        writeln!(
            self.request,
            "mp {} {} {} {} {} {} {} {}",
            dropout.seed,
            dropout.subsequence,
            threshold,
            geometry.row_offset,
            geometry.col_offset,
            geometry.n_global_for(n),
            scale.to_bits(),
            u8::from(device)
        )
        .unwrap();
        self
    }

    /// A buffer argument, placed `misalign` elements past a 16-byte boundary.
    fn buffer<T: Raw>(
        &mut self,
        name: &str,
        data: &[T],
        misalign: usize,
        output: bool,
    ) -> &mut Self {
        let mut bytes = Vec::with_capacity(data.len() * T::BYTES);
        for &v in data {
            v.put(&mut bytes);
        }
        fs::write(self.dir.join(format!("{name}.bin")), &bytes).expect("write a buffer");
        writeln!(
            self.request,
            "buffer {name} {} {} {}",
            bytes.len(),
            misalign * T::BYTES,
            u8::from(output)
        )
        .unwrap();
        self
    }

    /// A two-u64 output buffer `rec`, poisoned, that MaskParams::record points at.
    fn record(&mut self) -> &mut Self {
        fs::write(self.dir.join("rec.bin"), [0xFFu8; 16]).expect("write a buffer");
        writeln!(self.request, "buffer rec 16 0 1").unwrap();
        writeln!(self.request, "record rec").unwrap();
        self
    }

    /// The (seed, subsequence) pair the kernel wrote to `rec`.
    fn recorded(&self) -> (u64, u64) {
        let bytes = fs::read(self.dir.join("rec.out"))
            .unwrap_or_else(|e| panic!("{}: no record: {e}", self.what));
        let word = |i: usize| u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap());
        (word(0), word(1))
    }

    /// A launch the Rust wrapper would queue: the plan's entry point, grid and arguments in
    /// order, which the driver converts to the kernel's parameter types (tests/harness/driver.h).
    /// A request's launches run in order.
    fn plan(&mut self, plan: &LaunchPlan) -> &mut Self {
        let (gx, gy, gz) = plan.grid;
        writeln!(
            self.request,
            "launch {} {gx} {gy} {gz} {} {} {}",
            plan.function, plan.threads, plan.smem_bytes, plan.cluster
        )
        .unwrap();
        for arg in &plan.args {
            let line = match *arg {
                KernelArg::Pointer(operand) => format!("ptr {}", operand.name()),
                KernelArg::Null => "null".into(),
                KernelArg::WorkspaceAt(offset) => format!("wsat {offset}"),
                KernelArg::TensorMap {
                    operand,
                    rows,
                    cols,
                    box_rows,
                } => format!("map {} {rows} {cols} {box_rows}", operand.name()),
                KernelArg::UnusedTensorMap => "map0".into(),
                KernelArg::I64(v) => format!("i64 {v}"),
                KernelArg::I32(v) => format!("i32 {v}"),
                KernelArg::F32(v) => format!("f32 {}", v.to_bits()),
                KernelArg::MaskParams => "mask".into(),
            };
            writeln!(self.request, "arg {line}").unwrap();
        }
        self
    }

    fn output<T: Raw>(&self, name: &str) -> Vec<T> {
        let bytes = fs::read(self.dir.join(format!("{name}.out")))
            .unwrap_or_else(|e| panic!("{}: no output {name}: {e}", self.what));
        bytes.chunks_exact(T::BYTES).map(T::get).collect()
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs every launch through the driver (one process); panics with the harness's report.
fn run(driver: &Path, launches: &[Launch]) {
    for launch in launches {
        fs::write(launch.dir.join("request.txt"), &launch.request).expect("write a request");
    }
    let output = Command::new(driver)
        .args(launches.iter().map(|l| &l.dir))
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", driver.display()));
    if !output.status.success() {
        let done = launches
            .iter()
            .filter(|l| {
                l.dir.read_dir().is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.path().extension().is_some_and(|x| x == "out"))
                })
            })
            .count();
        panic!(
            "the harness failed ({}) at launch {} of {}: {}\n{}",
            output.status,
            done + 1,
            launches.len(),
            launches.get(done).map_or("?", |l| l.what.as_str()),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs and comparisons.

fn random_values<T: Element>(len: usize, rng: &mut StdRng) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f64(rng.random_range(-1.0..1.0)))
        .collect()
}

/// NaN, +inf and -inf, in the order `plant` places them.
const NONFINITE: [f64; 3] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];

/// Writes NaN, +inf, -inf, NaN, .. at the given (row, column) positions of a row-major matrix
/// with `cols` columns (positions outside it are skipped, so small shapes can share the list).
fn plant<T: Element>(v: &mut [T], cols: usize, at: &[(usize, usize)]) {
    for (&(r, c), &value) in at.iter().zip(NONFINITE.iter().cycle()) {
        if c < cols && r * cols + c < v.len() {
            v[r * cols + c] = T::from_f64(value);
        }
    }
}

fn poisoned<T: Element>(len: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); len]
}

fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|e| e.to_f64()).collect()
}

/// Checks `got` against the unrounded reference `want`: every element of the same class (NaN,
/// +inf, -inf, finite), and the relative L2 error over the finite ones within the type's
/// tolerance. `cols` is the row length of the row-major result, for a message that says where
/// the wrong elements lie.
fn check_close<T: Element>(what: &str, cols: usize, got: &[T], want: &[f64]) {
    let got = to_f64(got);
    let rows = got.len() / cols.max(1);
    let wrong_class = |i: usize| !reference::same_class(got[i], want[i]);
    assert!(
        got.len() == want.len() && !(0..got.len()).any(wrong_class),
        "{what}: elements of the wrong class (NaN, +-inf, finite): {}",
        reference::describe_differences(rows, cols, &got, want, wrong_class)
    );
    let error = reference::relative_l2_error_nonfinite(&got, want);
    assert!(
        error <= T::REL_L2_TOLERANCE,
        "{what}: relative L2 error {error:e} exceeds the {} tolerance {:e}; elements off by more \
         than 1 %: {}",
        T::NAME,
        T::REL_L2_TOLERANCE,
        reference::describe_differences(rows, cols, &got, want, |i| {
            reference::off_by_more_than(got[i], want[i], 0.01)
        })
    );
}

/// What a forward launch must produce: the unrounded reference, and what bounds each element's
/// error (`check_elementwise`): per element the sum of the absolute values of its k products and
/// its bias, times the dropout scale (the same layer on |X|, |W|, |b|), over k + 1 terms.
pub(crate) struct ForwardWant {
    pub(crate) y: Vec<f64>,
    pub(crate) abs_sum: Vec<f64>,
    pub(crate) terms: usize,
}

impl ForwardWant {
    pub(crate) fn of<T: Element>(spec: &LayerSpec, x: &[T], w: &[T], b: Option<&[T]>) -> Self {
        let y = reference::forward_f64(spec, x, w, b).expect("valid reference inputs");
        let abs = |v: &[T]| -> Vec<T> { v.iter().map(|e| T::from_f64(e.to_f64().abs())).collect() };
        let scale = f64::from(mask::scale(spec.dropout.p));
        let abs_sum =
            reference::preactivation_f64(spec.shape, &abs(x), &abs(w), b.map(abs).as_deref())
                .expect("valid reference inputs")
                .into_iter()
                .map(|s| s * scale)
                .collect();
        Self {
            y,
            abs_sum,
            terms: spec.shape.k + 1,
        }
    }
}

/// Checks a dropout layer output: every finite dropped element exactly zero and every kept
/// element of clearly non-zero value non-zero (the mask, exactly), then the class of every
/// element (NaN, +-inf), the finite values by relative L2 error, and every finite element
/// within its own rounding bound (which an L2 norm over the whole output could hide).
fn check_layer_output<T: Element>(
    what: &str,
    got: &[T],
    want: &ForwardWant,
    dropout: &DropoutSpec,
    geometry: &Geometry,
    n: usize,
) {
    let ForwardWant {
        y: want,
        abs_sum,
        terms,
    } = want;
    let finite = want.iter().filter(|v| v.is_finite());
    let rms = (finite.clone().map(|v| v * v).sum::<f64>() / finite.count().max(1) as f64).sqrt();
    let values = to_f64(got);
    let disagrees = |i: usize| {
        let keep = mask::keep(
            dropout.seed,
            dropout.subsequence,
            dropout.p,
            geometry.linear_index(n, i / n, i % n),
        );
        let (g, w) = (values[i], want[i]);
        w.is_finite() && ((!keep && g != 0.0) || (keep && w.abs() > 1e-2 * rms && g == 0.0))
    };
    assert!(
        !(0..values.len().min(want.len())).any(disagrees),
        "{what}: elements disagree with the mask: {}",
        reference::describe_differences(values.len() / n, n, &values, want, disagrees)
    );
    check_close(what, n, got, want);
    check_elementwise(what, n, got, want, abs_sum, *terms);
}

// ---------------------------------------------------------------------------------------------
// The host bodies of kernels/ptx.cuh and the harness's model.

#[test]
fn ptx_host_bodies_match_plain_matrix_products() {
    let Some(exe) = driver("ptx_unit") else {
        return;
    };
    let output = Command::new(&exe)
        .arg("checks")
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("run ptx_unit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "host bodies disagree with the PTX ISA:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The checks the driver must have run, so that a driver that skips them cannot pass.
    for check in [
        "mma.m16n8k16 f16",
        "mma.m16n8k16 bf16",
        "ldmatrix x4.trans",
        "stmatrix x4 rows hold lane 4r + c/2's register j",
        "stmatrix x4 writes 16 bytes per row and nothing else",
        "stmatrix x4 then ldmatrix x4 of the same rows returns the registers",
        "stmatrix x4 fenced by every lane, then a TMA store",
        "shfl.sync.bfly for every lane mask",
        "cp.async.wait_group 1",
        "a missing __syncthreads",
        "encode_tensor_map_2d rejects an inner box of 256 bytes",
        "tma_load_2d: the destination is undefined",
        "tma_store_2d: the second store of a thread lands at wait_group.read 0",
        "tma_load_2d_multicast: each block of a cluster of 2 loads half a box for both",
        "mbarrier: six full/empty phases",
        "flags: a chain of 4 blocks, each waiting for the one before, one after another",
        "flags: the same chain with the blocks co-resident under 8 schedules",
        "flags: a chain waiting for the next block completes when the blocks are co-resident",
        "flags: without the waits a co-resident launch reads unwritten values",
        "wgmma_ss f16 m64n256k16",
        "wgmma_ss bf16 m64n256k16 A M-major B N-major",
        "wgmma_rs bf16 m64n256k16",
        "for every N = 8, 16, .., 256",
        "wgmma.wait_group 1 retires the older group only",
        "producer warp + two consumer warpgroups",
        "cluster: ld.shared::cluster through mapa",
        "cluster: remote mbarrier arrivals",
        "relu pair f16: every 16-bit Y against form_dz4",
        "relu pair bf16: every 16-bit Y against form_dz4",
        "form_dz_quad f16: every 16-bit Y against form_dz4",
        "form_dz_quad bf16: every 16-bit Y against form_dz4",
    ] {
        assert!(
            stdout.contains(check),
            "ptx_unit did not report {check:?}:\n{stdout}"
        );
    }
}

#[test]
fn harness_rejects_misuse_the_gpu_would_not_forgive() {
    let Some(exe) = driver("ptx_unit") else {
        return;
    };
    let cases: &[(&str, &[&str])] = &[
        ("divergent_barrier", &["divergent __syncthreads"]),
        ("exited_lane_shfl", &["deadlock"]),
        ("partial_warp_shfl", &["partial warp"]),
        ("misaligned_cp_async", &["misaligned"]),
        (
            "misaligned_ldmatrix",
            &["ldmatrix: lane 0", "not 16-byte aligned"],
        ),
        (
            "misaligned_stmatrix",
            &["stmatrix: lane 0", "not 16-byte aligned"],
        ),
        (
            "stmatrix_bank_conflict",
            &[
                "stmatrix: matrix 0's rows from lanes 0 and 4",
                "fall in the same 16-byte slot of the 32 banks",
            ],
        ),
        (
            "stmatrix_rows_overlap",
            &["stmatrix: the rows of lanes 0 and 16", "overlap"],
        ),
        (
            "stmatrix_fenced_except_one_lane",
            // Row 1 of matrix 0, where lane 5's register 0 went (the first row it wrote to).
            &[
                "its source at shared address 1152 ",
                "after the last fence.proxy.async of the thread that stored it",
            ],
        ),
        (
            "ldmatrix_bank_conflict",
            &[
                "matrix 0's rows from lanes 0 and 4",
                "fall in the same 16-byte slot of the 32 banks",
            ],
        ),
        (
            "mbarrier_deadlock",
            &["deadlock", "waits on the mbarrier at shared address"],
        ),
        ("mbarrier_uninitialised", &["not initialised in this block"]),
        (
            "flag_wait_on_later_block",
            &[
                "deadlock",
                "waits for the global flag at",
                "a global flag that no running block sets",
            ],
        ),
        (
            "flag_in_shared_memory",
            &[
                "flag_store_release: the flag at shared address",
                "is in shared memory",
            ],
        ),
        (
            "co_resident_cluster_op",
            &["barrier.cluster in a co-resident launch"],
        ),
        (
            "named_barrier_shared",
            &[
                "bar.sync 3, 128 by warpgroups",
                "of one block: on a GPU their threads would count towards one barrier",
            ],
        ),
        ("mbarrier_over_arrival", &["more arrivals than its count"]),
        ("wgmma_without_fence", &["without a wgmma_fence"]),
        ("wgmma_no_fence_after_wait", &["without a wgmma_fence"]),
        (
            "wgmma_unfenced_operand",
            &["wgmma: element", "after the last fence.proxy.async"],
        ),
        (
            "wgmma_operand_fenced_by_one_thread",
            &[
                "wgmma: element",
                "after the last fence.proxy.async of the thread that stored it",
            ],
        ),
        (
            "wgmma_operand_fenced_after_arrive",
            &["wgmma: element", "only after it had released the bytes"],
        ),
        (
            "wgmma_operand_fenced_after_barrier",
            &["wgmma: element", "only after it had released the bytes"],
        ),
        (
            "wgmma_operand_written_in_flight",
            &[
                "wgmma: element (0, 0) of the B operand",
                "was 0 at the wgmma's issue and 1 at the wgmma_wait_group that retired it",
            ],
        ),
        (
            "wgmma_accumulators_unfenced_after_wait",
            &[
                "that wgmma_wait_group retired into this thread's registers were not fenced \
                 before its next operation",
                "call ptx::fence_registers",
            ],
        ),
        (
            "wgmma_registers_unfenced_before_fence",
            &[
                "accumulators at",
                "were not passed to ptx::fence_registers before the wgmma_fence",
            ],
        ),
        (
            "wgmma_unfenced_in_second_block",
            &[
                "block (1,0,0)",
                "were not passed to ptx::fence_registers before the wgmma_fence",
            ],
        ),
        (
            "warpgroup_missing_warp",
            &["missing from the warpgroup collective"],
        ),
        ("tma_misaligned_swizzle", &["is not aligned to 1024 bytes"]),
        ("wgmma_base_offset", &["base offset 3"]),
        ("tma_store_not_waited", &["never waited for"]),
        (
            "tma_store_source_overwritten",
            &["written between the store's issue and the tma_store_wait_read"],
        ),
        (
            "tma_load_over_unfenced_store",
            &[
                "tma_load_2d of the box at (0, 0): its destination",
                "after the last fence.proxy.async",
            ],
        ),
        (
            "tma_load_destination_written",
            &[
                "its destination at shared address",
                "was written while the load was in flight",
            ],
        ),
        (
            "tma_barrier_init_unpublished",
            &[
                "tma_load_2d of the box at (0, 0) completes on the mbarrier",
                "has not published the initialisation to the async proxy",
            ],
        ),
        (
            "tma_store_unfenced_source",
            &[
                "tma_store_2d of the box at (0, 0): its source",
                "after the last fence.proxy.async",
            ],
        ),
        (
            "tma_store_fenced_by_issuer_only",
            &[
                "tma_store_2d of the box at (0, 0): its source",
                "after the last fence.proxy.async of the thread that stored it",
            ],
        ),
        (
            "cluster_unmapped_address",
            &["not a shared::cluster address made by cluster_map"],
        ),
        (
            "cluster_exited_block",
            &["block rank 1 of the cluster has exited"],
        ),
        (
            "cluster_arrival_cta_wait",
            &[
                "block rank 1 of the cluster arrived on",
                "acquires at CTA scope only",
            ],
        ),
        (
            "cluster_barrier_init_unpublished",
            &["has not published the initialisation to the cluster"],
        ),
    ];
    for &(case, messages) in cases {
        let output = Command::new(&exe)
            .arg(case)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .expect("run ptx_unit");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{case}: expected the harness to abort; stdout {}; stderr {stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        for message in messages {
            assert!(
                stderr.contains(message),
                "{case}: expected {message:?} in:\n{stderr}"
            );
        }
    }
}

/// A kernel file without a driver would silently go unchecked.
#[test]
fn every_kernel_file_has_a_driver() {
    let harness = harness_dir();
    let mut missing = Vec::new();
    for entry in fs::read_dir(kernels_dir())
        .expect("read kernels/")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "cu") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if !harness.join(format!("{stem}.cpp")).is_file() {
                missing.push(stem);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "kernels without a CPU-harness driver (add tests/harness/<name>.cpp and a test): {missing:?}"
    );
}

#[path = "../common/elementwise.rs"]
mod elementwise;
use elementwise::check_elementwise;
#[path = "../common/keep_boundary.rs"]
mod keep_boundary;
use keep_boundary::boundaries;

/// Whether element `(r, c)` of a call draws a Philox word exactly equal to its threshold.
fn on_boundary(dropout: &DropoutSpec, geometry: &Geometry, n: usize, r: usize, c: usize) -> bool {
    let index = geometry.linear_index(n, r, c);
    u64::from(mask::word(dropout.seed, dropout.subsequence, index)) == mask::threshold(dropout.p)
}

// ---------------------------------------------------------------------------------------------
// The GPUs the wrappers' plans are made for

/// An A100-like GPU (compute capability 8.0, 108 multiprocessors), for planning the wrappers'
/// choices.
const A100: GpuFacts = GpuFacts {
    compute_capability: (8, 0),
    resident: ResidentClusters::uniform(108),
    forward_sm90_loaded: false,
    backward_sm90_loaded: false,
};

/// A Hopper-like GPU of 8 multiprocessors with the sm_90a modules, on which small shapes take
/// the Hopper kernels.
const SMALL_HOPPER: GpuFacts = GpuFacts {
    compute_capability: (9, 0),
    resident: ResidentClusters::uniform(8),
    forward_sm90_loaded: true,
    backward_sm90_loaded: true,
};

// ---------------------------------------------------------------------------------------------
// The tests, by kernel family

mod backward;
mod dropout;
mod forward;
mod seed_record;
