//! The kernels' own CUDA source, run on the CPU (docs/HARNESS.md).
//!
//! Each test compiles a driver from tests/harness/ that `#include`s a real kernels/*.cu file with
//! the host C++ compiler against kernels/host/cuda_host.h, feeds it random inputs with the
//! outputs poisoned (NaN), launches every entry point with its configuration's own launch numbers
//! and compares the outputs with `fusedrop::reference` as the GPU tests do: masks exactly, values
//! by relative L2 error within `T::REL_L2_TOLERANCE`.
//!
//! Environment:
//! - `FUSEDROP_HARNESS_SANITIZE=address` builds the drivers with AddressSanitizer (scripts/test.sh
//!   runs this target once that way), so an out-of-bounds access in a kernel fails the test;
//! - `FUSEDROP_HARNESS_KERNELS=<dir>` takes the kernel sources from `<dir>` instead of kernels/
//!   (to run a patched copy, e.g. with a planted bug; scripts/plant-faults.sh does this), and
//!   `FUSEDROP_HARNESS_DRIVERS=<dir>` the drivers from `<dir>` instead of tests/harness/;
//! - `FUSEDROP_HARNESS_SWITCH=ucontext` makes the drivers switch threads with `swapcontext`, the
//!   form other architectures than x86-64 use (scripts/test.sh runs a few tests that way, so the
//!   fallback is not only compiled where nobody runs it);
//! - `CXX` names the host compiler (default `g++`).
//!
//! Skipped, with a message, when the crate was built without nvcc (no CUDA headers to compile
//! the kernels' half-precision types against).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use fusedrop::cuda::backward::{
    backward_plan, product_plan, BackwardBuffers, BackwardKernel, BackwardMask, BackwardProduct,
    ProductOperands,
};
use fusedrop::cuda::dropout::dropout_plan;
use fusedrop::cuda::forward::{forward_plan, forward_sweep_plan, ForwardConfig};
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
            ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
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

/// Every file under `dir`, sorted, for the build cache key.
fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            source_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Compiles tests/harness/<name>.cpp (once per process, and reused across runs while the
/// sources and flags are unchanged); `None` when the CUDA headers are unknown.
fn driver(name: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let Some(include) = option_env!("FUSEDROP_CUDA_INCLUDE") else {
        eprintln!(
            "skipping the CPU harness: the crate was built without nvcc, so there are no CUDA \
             headers (cuda_fp16.h) to compile the kernels against"
        );
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

    let mut files = Vec::new();
    source_files(&kernels, &mut files);
    source_files(&harness, &mut files);
    // The launch table header build.rs generates from src/cuda/launch_table.rs.
    source_files(Path::new(env!("FUSEDROP_GENERATED_INCLUDE")), &mut files);
    let mut hasher = DefaultHasher::new();
    (name, &cxx, &flags, include, &kernels).hash(&mut hasher);
    for file in &files {
        file.hash(&mut hasher);
        fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    // Drivers of patched copies (scripts/plant-faults.sh) live apart, so that removing stale
    // drivers below never deletes the drivers of a plain run going on at the same time.
    let patched = std::env::var_os("FUSEDROP_HARNESS_KERNELS").is_some()
        || std::env::var_os("FUSEDROP_HARNESS_DRIVERS").is_some();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(if patched {
        "harness-patched"
    } else {
        "harness"
    });
    fs::create_dir_all(&dir).expect("create the harness build directory");
    let flavour = driver_flavour();
    let exe = dir.join(format!("{name}-{:016x}{flavour}", hasher.finish()));
    if exe.is_file() {
        return exe;
    }
    // Drivers of the same flavour built from older sources are of no further use.
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let stale = file
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| {
                rest.len() == 16 + flavour.len()
                    && rest[..16].bytes().all(|b| b.is_ascii_hexdigit())
                    && rest[16..] == flavour
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

/// Checks a dropout layer output: every finite dropped element exactly zero and every kept
/// element of clearly non-zero value non-zero (the mask, exactly), then the class of every
/// element (NaN, +-inf) and the finite values by relative L2 error.
fn check_layer_output<T: Element>(
    what: &str,
    got: &[T],
    want: &[f64],
    dropout: &DropoutSpec,
    geometry: &Geometry,
    n: usize,
) {
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
        "cp.async.wait_group 1",
        "a missing __syncthreads",
        "encode_tensor_map_2d rejects an inner box of 256 bytes",
        "tma_load_2d: the destination is undefined",
        "tma_store_2d: the second store of a thread lands at wait_group.read 0",
        "tma_load_2d_multicast: each block of a cluster of 2 loads half a box for both",
        "mbarrier: six full/empty phases",
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
        ("misaligned_ldmatrix", &["not 16-byte aligned"]),
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
        ("mbarrier_over_arrival", &["more arrivals than its count"]),
        ("wgmma_without_fence", &["without a wgmma_fence"]),
        ("wgmma_no_fence_after_wait", &["without a wgmma_fence"]),
        (
            "wgmma_unfenced_operand",
            &["wgmma: element", "after the last fence.proxy.async"],
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

// ---------------------------------------------------------------------------------------------
// kernels/dropout.cu

/// One dropout launch; `nonfinite` plants NaN and infinities in the input.
#[allow(clippy::too_many_arguments)]
fn dropout_launch<T: Raw>(
    m: usize,
    n: usize,
    dropout: DropoutSpec,
    geometry: Geometry,
    grid_x: Option<u32>,
    device_seed: bool,
    nonfinite: bool,
    rng: &mut StdRng,
) -> (Launch, Vec<T>) {
    let mut y = random_values::<T>(m * n, rng);
    if nonfinite {
        let at: Vec<(usize, usize)> = (0..m)
            .flat_map(|r| (r % 4..n).step_by(4).map(move |c| (r, c)))
            .collect();
        plant(&mut y, n, &at);
    }
    let mut want = y.clone();
    reference::dropout_in_place(&mut want, m, n, &dropout, &geometry);
    let plan = dropout_plan::<T>(Operand::Y, Operand::Y, m, n);
    let mut launch = Launch::new(
        &plan.function,
        format!(
            "{m}x{n} p={} {geometry:?} grid_x={grid_x:?} device_seed={device_seed} \
             nonfinite={nonfinite}",
            dropout.p
        ),
        rng,
    );
    launch
        .plan(&plan)
        .mask(&dropout, &geometry, n, device_seed)
        .buffer("y", &y, 0, true);
    if let Some(g) = grid_x {
        launch.int("grid_x", g);
    }
    (launch, want)
}

fn check_dropout_type<T: Raw>(exe: &Path, rng: &mut StdRng) {
    let shard = Geometry {
        row_offset: 5,
        col_offset: 3,
        n_global: Some(1003),
    };
    let far = Geometry {
        row_offset: 1 << 33,
        col_offset: 1,
        n_global: Some(130),
    };
    let mut cases = Vec::new();
    for &(m, n) in &[(1, 1), (3, 5), (17, 101), (33, 97), (8, 64)] {
        for &p in &[0.0f32, 0.1, 0.5, 1.0] {
            cases.push((
                m,
                n,
                DropoutSpec::new(p, rng.random(), rng.random_range(0..8)),
                Geometry::UNSHARDED,
                None,
                false,
                false,
            ));
        }
    }
    // NaN and infinities in every fourth element (docs/mask-contract.md, "Non-finite values").
    for &p in &[0.0f32, 0.1, 0.5, 1.0] {
        cases.push((
            17,
            101,
            DropoutSpec::new(p, rng.random(), 3),
            Geometry::UNSHARDED,
            None,
            false,
            true,
        ));
    }
    // Keep-rule boundary vectors: one element's word equals the threshold (kept), or is one
    // below it (p_above: dropped).
    for b in boundaries() {
        for p in [b.p(), b.p_above()] {
            cases.push((
                17,
                101,
                DropoutSpec::new(p, b.seed, b.subsequence),
                Geometry::UNSHARDED,
                None,
                false,
                false,
            ));
        }
    }
    cases.push((
        33,
        97,
        DropoutSpec::new(0.3, 42, 7),
        shard,
        None,
        false,
        false,
    ));
    cases.push((9, 29, DropoutSpec::new(0.5, 7, 1), far, None, true, false));
    cases.push((
        40,
        77,
        DropoutSpec::new(0.5, 99, 2),
        shard,
        Some(1),
        false,
        false,
    ));
    cases.push((
        40,
        77,
        DropoutSpec::new(0.1, 98, 0),
        Geometry::UNSHARDED,
        Some(3),
        true,
        false,
    ));
    let mut kept_on_boundary = 0;
    let (launches, wants): (Vec<_>, Vec<_>) = cases
        .into_iter()
        .map(|(m, n, d, g, grid, dev, nonfinite)| {
            let (launch, want) = dropout_launch::<T>(m, n, d, g, grid, dev, nonfinite, rng);
            if d.p > 0.0 && d.p < 1.0 {
                kept_on_boundary += (0..m * n)
                    .filter(|&i| on_boundary(&d, &g, n, i / n, i % n) && want[i].to_f64() != 0.0)
                    .count();
            }
            (launch, want)
        })
        .unzip();
    run(exe, &launches);
    for (launch, want) in launches.iter().zip(&wants) {
        let got = launch.output::<T>("y");
        let differ = got
            .iter()
            .zip(want)
            .filter(|(g, w)| {
                let (g, w) = (g.to_f64(), w.to_f64());
                // NaN payloads differ between machines; NaN must stay NaN.
                g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan())
            })
            .count();
        assert_eq!(
            differ, 0,
            "{}: {differ} elements differ from the reference",
            launch.what
        );
    }
    // Each boundary vector must be met, with a non-zero value the kernel has to keep.
    assert_eq!(kept_on_boundary, boundaries().len());
}

#[test]
fn dropout_kernel_matches_reference_bit_for_bit() {
    let Some(exe) = driver("dropout") else { return };
    let mut rng = StdRng::seed_from_u64(0xD50);
    check_dropout_type::<f32>(&exe, &mut rng);
    check_dropout_type::<f16>(&exe, &mut rng);
    check_dropout_type::<bf16>(&exe, &mut rng);
}

// ---------------------------------------------------------------------------------------------
// Forward kernels

/// One forward case: shape, activation, bias, dropout, geometry, pointer misalignment (in
/// elements, for every buffer), folded grid rows, device seed, NaN and infinities planted in X,
/// W and b.
#[derive(Debug, Clone, Copy)]
struct ForwardCase {
    shape: LinearShape,
    nonlinearity: Nonlinearity,
    bias: bool,
    p: f32,
    geometry: Geometry,
    misalign: usize,
    grid_y: Option<u32>,
    device_seed: bool,
    nonfinite: bool,
    /// A fixed (seed, subsequence) instead of random ones (the keep-rule boundary vectors).
    seed_subsequence: Option<(u64, u64)>,
}

/// Shapes that are multiples of no tile, k both a multiple of 8 (16-byte rows) and not, with
/// every dropout rate, both activations and with/without bias spread over them.
fn forward_cases(rng: &mut StdRng) -> Vec<ForwardCase> {
    let shapes = [
        (1, 1, 1),
        (37, 29, 45),
        (70, 75, 64),
        (130, 66, 40),
        (33, 100, 97),
        (17, 140, 8),
    ];
    let combos = [
        (0.0f32, Nonlinearity::Relu, true),
        (0.1, Nonlinearity::Identity, false),
        (0.5, Nonlinearity::Relu, false),
        (1.0, Nonlinearity::Identity, true),
    ];
    let mut cases = Vec::new();
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for i in 0..combos.len() {
            // Rotate the pairing so that every shape meets every rate and both of the others.
            let (p, _, _) = combos[i];
            let (_, nonlinearity, _) = combos[(i + s) % combos.len()];
            let (_, _, bias) = combos[(i + 2 * s + 1) % combos.len()];
            cases.push(ForwardCase {
                shape: LinearShape::new(m, n, k),
                nonlinearity,
                bias,
                p,
                geometry: Geometry::UNSHARDED,
                misalign: 0,
                grid_y: None,
                device_seed: false,
                nonfinite: false,
                seed_subsequence: None,
            });
        }
    }
    let base = ForwardCase {
        shape: LinearShape::new(70, 75, 64),
        nonlinearity: Nonlinearity::Relu,
        bias: true,
        p: 0.5,
        geometry: Geometry::UNSHARDED,
        misalign: 0,
        grid_y: None,
        device_seed: false,
        nonfinite: false,
        seed_subsequence: None,
    };
    // Buffers that are not 16-byte aligned although k and n are multiples of 8, so only the
    // pointers' alignment keeps the kernels off their vector paths.
    cases.push(ForwardCase {
        shape: LinearShape::new(70, 72, 64),
        misalign: 2,
        ..base
    });
    cases.push(ForwardCase {
        shape: LinearShape::new(70, 72, 64),
        misalign: 1,
        nonlinearity: Nonlinearity::Identity,
        ..base
    });
    // A shard's geometry and (seed, subsequence) read from a device buffer.
    cases.push(ForwardCase {
        geometry: Geometry {
            row_offset: 3 + (rng.random::<u32>() as u64),
            col_offset: 11,
            n_global: Some(301),
        },
        device_seed: true,
        nonlinearity: Nonlinearity::Identity,
        ..base
    });
    // NaN and infinities in X, W and b: NaN must stay NaN through ReLU and a dropped element, a
    // dropped infinity must become NaN (docs/mask-contract.md, "Non-finite values"). Both the
    // vector path (70x72x64) and the element path (37x29x45), every rate, both activations.
    for (i, &p) in [0.0f32, 0.1, 0.5, 1.0].iter().enumerate() {
        for (shape, nonlinearity) in [
            (LinearShape::new(70, 72, 64), Nonlinearity::Relu),
            (LinearShape::new(37, 29, 45), Nonlinearity::Identity),
        ] {
            cases.push(ForwardCase {
                shape,
                nonlinearity,
                p,
                bias: i % 2 == 0 || nonlinearity == Nonlinearity::Relu,
                nonfinite: true,
                ..base
            });
        }
    }
    // Keep-rule boundary vectors: one element's Philox word equals the threshold (it must be
    // kept), and the next f32 p above (dropped). Identity, so the kept value is non-zero.
    for b in boundaries() {
        for p in [b.p(), b.p_above()] {
            cases.push(ForwardCase {
                nonlinearity: Nonlinearity::Identity,
                p,
                seed_subsequence: Some((b.seed, b.subsequence)),
                ..base
            });
        }
    }
    // Row tiles folded into fewer grid rows than there are tiles.
    cases.push(ForwardCase {
        shape: LinearShape::new(300, 40, 24),
        grid_y: Some(2),
        ..base
    });
    cases
}

/// A forward kernel a test launches, by name: a production configuration
/// ([`ForwardConfig::name`]) or a sweep variant (its launch table name without the
/// `forward_sweep_` prefix).
#[derive(Debug, Clone, Copy)]
enum Planned<'a> {
    Config(&'a str),
    Sweep(&'a str),
    /// What `LayerKernels::forward` picks itself on the GPU these facts describe
    /// (`forward_plan` without a configuration).
    Auto(GpuFacts),
}

impl Planned<'_> {
    /// The library's plan for `spec` with the operands at `addresses`, on a GPU that runs
    /// `blocks` of the kernel's clusters at once (the persistent grids' size; `None`: 132
    /// multiprocessors, for the kernels whose grid the output decides).
    fn plan<T: Element>(
        self,
        spec: &LayerSpec,
        addresses: &OperandAddresses,
        blocks: Option<u32>,
    ) -> LaunchPlan {
        let resident = |cluster: u32| {
            ResidentClusters::uniform(blocks.map_or(132, |b| (b * cluster) as usize))
        };
        let planned = match self {
            Planned::Config(name) => {
                let config = ForwardConfig::all_for::<T>()
                    .iter()
                    .chain(&ForwardConfig::HOPPER)
                    .find(|c| c.name() == name)
                    .unwrap_or_else(|| panic!("no forward config {name} for {}", T::NAME));
                config.launch_plan::<T>(spec, addresses, resident(config.splits()))
            }
            Planned::Sweep(name) => {
                let variant = launch_table::FORWARD_SWEEP
                    .iter()
                    .chain(&launch_table::FORWARD_SM90_SWEEP)
                    .chain(&launch_table::FORWARD_F32_SWEEP)
                    .find(|v| v.name.strip_prefix("forward_sweep_") == Some(name))
                    .unwrap_or_else(|| panic!("no forward sweep variant {name}"));
                forward_sweep_plan::<T>(variant, spec, addresses, resident(variant.cluster))
            }
            Planned::Auto(gpu) => forward_plan::<T>(spec, None, &gpu, addresses),
        };
        planned.unwrap_or_else(|e| panic!("{self:?} on {:?}: {e}", spec.shape))
    }
}

fn forward_launch<T: Raw>(
    kernel: Planned,
    case: &ForwardCase,
    blocks: Option<u32>,
    rng: &mut StdRng,
) -> (Launch, Vec<f64>, LayerSpec) {
    let LinearShape { m, n, k } = case.shape;
    let (seed, subsequence) = case
        .seed_subsequence
        .unwrap_or_else(|| (rng.random(), rng.random_range(0..16)));
    let dropout = DropoutSpec::new(case.p, seed, subsequence);
    let spec = LayerSpec::new(case.shape, case.nonlinearity, dropout).with_geometry(case.geometry);
    let mut x = random_values::<T>(m * k, rng);
    let mut w = random_values::<T>(n * k, rng);
    let mut b = random_values::<T>(n, rng);
    if case.nonfinite {
        // Rows of X with one non-finite element make whole rows of z NaN or +-inf (the sign from
        // W); one in W does the same to a column; the bias to a column.
        plant(
            &mut x,
            k,
            &[(1, k / 3), (m / 2, k - 1), (m - 1, 0), (m / 3, k / 2)],
        );
        plant(&mut w, k, &[(n - 2, k / 4), (n / 2, 1)]);
        plant(&mut b, n, &[(0, 2), (0, n / 3), (0, n - 1)]);
    }
    let want = reference::forward_f64(&spec, &x, &w, case.bias.then_some(&b[..]))
        .expect("valid reference inputs");
    // Addresses with the case's misalignment, for the plan's choices; the driver places the
    // buffers so.
    let offset = (case.misalign * T::BYTES) as u64;
    let addresses = OperandAddresses {
        x: 0x10_0000 + offset,
        w: 0x20_0000 + offset,
        b: case.bias.then_some(0x30_0000 + offset),
        y: 0x40_0000 + offset,
    };
    let plan = kernel.plan::<T>(&spec, &addresses, blocks);
    let mut launch = Launch::new(&plan.function, format!("{case:?}"), rng);
    launch
        .plan(&plan)
        .mask(&dropout, &case.geometry, n, case.device_seed)
        .buffer("x", &x, case.misalign, false)
        .buffer("w", &w, case.misalign, false)
        .buffer("y", &poisoned::<T>(m * n), case.misalign, true);
    if case.bias {
        launch.buffer("b", &b, case.misalign, false);
    }
    if let Some(g) = case.grid_y {
        launch.int("grid_y", g);
    }
    (launch, want, spec)
}

fn check_forward<T: Raw>(driver_name: &str, configs: &[&str], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<(ForwardCase, Option<u32>)> = forward_cases(&mut rng)
        .into_iter()
        .map(|c| (c, None))
        .collect();
    check_forward_cases::<T>(driver_name, configs, &cases, &mut rng);
}

/// Runs every case (with its persistent block count, for the Hopper driver) on every config and
/// checks the outputs against the reference, the mask and the boundary vectors.
fn check_forward_cases<T: Raw>(
    driver_name: &str,
    configs: &[&str],
    cases: &[(ForwardCase, Option<u32>)],
    rng: &mut StdRng,
) {
    let Some(exe) = driver(driver_name) else {
        return;
    };
    let mut launches = Vec::new();
    let mut expected = Vec::new();
    for config in configs {
        for (case, blocks) in cases {
            let (launch, want, spec) =
                forward_launch::<T>(Planned::Config(config), case, *blocks, rng);
            launches.push(launch);
            expected.push((want, spec));
        }
    }
    run(&exe, &launches);
    let mut kept_on_boundary = 0;
    for (launch, (want, spec)) in launches.iter().zip(&expected) {
        let got = launch.output::<T>("y");
        check_layer_output(
            &launch.what,
            &got,
            want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
        // check_layer_output lets a kept element of tiny value be 0; on the boundary vectors
        // the word == threshold element must be non-zero whatever its size.
        let (n, d) = (spec.shape.n, &spec.dropout);
        if d.p > 0.0 && d.p < 1.0 {
            for (i, g) in got.iter().enumerate() {
                if on_boundary(d, &spec.geometry, n, i / n, i % n) {
                    assert!(
                        g.to_f64() != 0.0 && want[i] != 0.0,
                        "{}: element {i} (word == threshold) was dropped",
                        launch.what
                    );
                    kept_on_boundary += 1;
                }
            }
        }
    }
    assert_eq!(kept_on_boundary, configs.len() * boundaries().len());
}

const FORWARD_TC_CONFIGS: [&str; 5] = ["tc128x256", "tc128x128", "tc64x128", "tc64x64", "tc64x32"];
const FORWARD_F32_CONFIGS: [&str; 3] = ["simt128x128", "simt64x64", "simt64x32"];

#[test]
fn forward_f32_matches_reference() {
    check_forward::<f32>("forward_f32", &FORWARD_F32_CONFIGS, 0xF32);
}

#[test]
fn forward_tc_f16_matches_reference() {
    check_forward::<f16>("forward_tc", &FORWARD_TC_CONFIGS, 0xF16);
}

#[test]
fn forward_tc_bf16_matches_reference() {
    check_forward::<bf16>("forward_tc", &FORWARD_TC_CONFIGS, 0xBF16);
}

/// The tuning variants of kernels/forward_tc_sweep.cu (`fusedrop_forward_sweep_<variant>_<dtype>`)
/// and the production config of the same tile, whose output each must reproduce bit for bit
/// (the same mma sequence for every output element).
const FORWARD_TC_SWEEP_VARIANTS: [(&str, &str); 13] = [
    ("tc128x128_bk32_f1", "tc128x128"),
    ("tc128x128_bk32_f2", "tc128x128"),
    ("tc128x128_bk64_f1", "tc128x128"),
    ("tc128x128_bk64_f2", "tc128x128"),
    ("tc128x256_bk32_f1", "tc128x256"),
    ("tc128x256_bk64_f1", "tc128x256"),
    ("tc128x256_bk64_f2", "tc128x256"),
    ("tc128x128_bk32_f1_spread", "tc128x128"),
    ("tc128x128_bk64_f1_spread", "tc128x128"),
    ("tc128x256_bk32_f1_spread", "tc128x256"),
    ("tc128x256_bk64_f1_spread", "tc128x256"),
    ("tc128x128_bk32_f1_interleaved", "tc128x128"),
    ("tc128x256_bk32_f1_interleaved", "tc128x256"),
];

/// The forward cases a sweep variant takes (X and W 16-byte aligned, k a multiple of 8, as its
/// callers guarantee), plus a reduction of many slices (k = 328: 11 slices of 32, 6 of 64, more
/// than the pipeline has stages, the last one partial) for the fragment prefetch across slices.
fn forward_sweep_cases(rng: &mut StdRng) -> Vec<ForwardCase> {
    let mut cases: Vec<ForwardCase> = forward_cases(rng)
        .into_iter()
        .filter(|c| c.misalign == 0 && c.shape.k % 8 == 0)
        .collect();
    cases.push(ForwardCase {
        shape: LinearShape::new(37, 45, 328),
        nonlinearity: Nonlinearity::Relu,
        bias: true,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        misalign: 0,
        grid_y: None,
        device_seed: false,
        nonfinite: false,
        seed_subsequence: None,
    });
    cases
}

/// Every mma.sync sweep variant against the reference and the production kernel.
fn check_forward_sweep<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<(ForwardCase, Option<u32>)> = forward_sweep_cases(&mut rng)
        .into_iter()
        .map(|c| (c, None))
        .collect();
    check_sweep_variants::<T>(
        ("forward_tc_sweep", "forward_tc"),
        &FORWARD_TC_SWEEP_VARIANTS,
        &|_, _| true,
        &cases,
        &mut rng,
    );
}

/// Every (variant, production config) pair on every case that `takes` admits for the variant
/// (with its persistent block count, for the Hopper drivers): the variant
/// `fusedrop_forward_sweep_<variant>_<dtype>` of driver `drivers.0` against the reference, and bit
/// for bit against `fusedrop_forward_<config>_<dtype>` of driver `drivers.1` on the same inputs,
/// mask and schedule seed.
fn check_sweep_variants<T: Raw>(
    drivers: (&str, &str),
    variants: &[(&str, &str)],
    takes: &dyn Fn(&str, &ForwardCase) -> bool,
    cases: &[(ForwardCase, Option<u32>)],
    rng: &mut StdRng,
) {
    let (Some(sweep), Some(production)) = (driver(drivers.0), driver(drivers.1)) else {
        return;
    };
    let mut variant_launches = Vec::new();
    let mut productions = Vec::new();
    let mut expected = Vec::new();
    for &(variant, config) in variants {
        for (case, blocks) in cases.iter().filter(|(c, _)| takes(variant, c)) {
            let launch_seed = rng.random::<u64>();
            let (launch, want, spec) = forward_launch::<T>(
                Planned::Sweep(variant),
                case,
                *blocks,
                &mut StdRng::seed_from_u64(launch_seed),
            );
            let (same, _, _) = forward_launch::<T>(
                Planned::Config(config),
                case,
                *blocks,
                &mut StdRng::seed_from_u64(launch_seed),
            );
            variant_launches.push(launch);
            productions.push(same);
            expected.push((want, spec));
        }
    }
    run(&sweep, &variant_launches);
    run(&production, &productions);
    let bits = |y: &[T]| {
        let mut out = Vec::with_capacity(y.len() * T::BYTES);
        for &v in y {
            v.put(&mut out);
        }
        out
    };
    for ((launch, same), (want, spec)) in variant_launches.iter().zip(&productions).zip(&expected) {
        let got = launch.output::<T>("y");
        check_layer_output(
            &launch.what,
            &got,
            want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
        let produced = same.output::<T>("y");
        let differ = bits(&got)
            .chunks_exact(T::BYTES)
            .zip(bits(&produced).chunks_exact(T::BYTES))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differ, 0,
            "{}: {differ} elements differ from {} (expected bit-identical outputs)",
            launch.what, same.what
        );
    }
}

/// The tuning variants of kernels/forward_f32_sweep.cu and the production config each must
/// reproduce bit for bit (the same FMA sequence for every output element).
const FORWARD_F32_SWEEP_VARIANTS: [(&str, &str); 4] = [
    ("simt128x128_f2", "simt128x128"),
    ("simt64x64_f2", "simt64x64"),
    ("simt128x128_bk16", "simt128x128"),
    ("simt128x128_bk16_f2", "simt128x128"),
];

/// Every f32 sweep variant against the reference and the production kernel, on every forward case
/// (the f32 kernels take any alignment) plus a reduction of many slices (k = 328: 41 slices of 8,
/// 21 of 16, the last partial).
#[test]
fn forward_f32_sweep_matches_reference_and_production() {
    let mut rng = StdRng::seed_from_u64(0x5EE9_0F32);
    let mut cases: Vec<(ForwardCase, Option<u32>)> = forward_sweep_cases(&mut rng)
        .into_iter()
        .map(|c| (c, None))
        .collect();
    cases.extend(
        forward_cases(&mut rng)
            .into_iter()
            .filter(|c| c.misalign != 0 || c.shape.k % 8 != 0)
            .map(|c| (c, None)),
    );
    check_sweep_variants::<f32>(
        ("forward_f32_sweep", "forward_f32"),
        &FORWARD_F32_SWEEP_VARIANTS,
        &|_, _| true,
        &cases,
        &mut rng,
    );
}

#[test]
fn forward_tc_sweep_f16_matches_reference_and_production() {
    check_forward_sweep::<f16>(0x5EE9_0F16);
}

#[test]
fn forward_tc_sweep_bf16_matches_reference_and_production() {
    check_forward_sweep::<bf16>(0x5EE9_0B16);
}

// ---------------------------------------------------------------------------------------------
// Backward kernels

#[derive(Debug, Clone, Copy)]
struct BackwardCase {
    shape: LinearShape,
    nonlinearity: Nonlinearity,
    p: f32,
    geometry: Geometry,
    accumulate: bool,
    weight_grad: bool,
    grid_x: Option<u32>,
    nonfinite: bool,
    /// A fixed (seed, subsequence) instead of random ones (the keep-rule boundary vectors).
    seed_subsequence: Option<(u64, u64)>,
    /// The (seed, subsequence) pair read from a device buffer (`MaskParams::seed_subsequence`).
    device_seed: bool,
    /// Blocks per output tile of the classic kernels' split-K (1: no split), each writing its
    /// share to a poisoned f32 workspace that the split sum then adds.
    splits: u32,
}

fn backward_cases() -> Vec<BackwardCase> {
    let mut cases = Vec::new();
    // m = 1 makes dW an outer product and n = 1 dX one: every element a single term, checked on
    // its own (check_elementwise), as every element of every case is.
    let shapes = [
        (1, 1, 1),
        (37, 29, 45),
        (70, 75, 64),
        (130, 66, 40),
        (1, 75, 64),
        (70, 1, 64),
    ];
    let rates = [0.0f32, 0.1, 0.5, 1.0];
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for (i, &p) in rates.iter().enumerate() {
            cases.push(BackwardCase {
                shape: LinearShape::new(m, n, k),
                nonlinearity: if (i + s) % 2 == 0 {
                    Nonlinearity::Relu
                } else {
                    Nonlinearity::Identity
                },
                p,
                geometry: Geometry::UNSHARDED,
                accumulate: (i + s) % 3 == 1,
                weight_grad: true,
                grid_x: None,
                nonfinite: false,
                seed_subsequence: None,
                device_seed: false,
                splits: 1,
            });
        }
    }
    let base = BackwardCase {
        shape: LinearShape::new(70, 75, 64),
        nonlinearity: Nonlinearity::Identity,
        p: 0.5,
        geometry: Geometry {
            row_offset: 7,
            col_offset: 5,
            n_global: Some(203),
        },
        accumulate: false,
        weight_grad: true,
        grid_x: Some(1),
        nonfinite: false,
        seed_subsequence: None,
        device_seed: false,
        splits: 1,
    };
    cases.push(base);
    cases.push(BackwardCase {
        grid_x: Some(3),
        accumulate: true,
        nonlinearity: Nonlinearity::Relu,
        ..base
    });
    cases.push(BackwardCase {
        weight_grad: false,
        grid_x: None,
        ..base
    });
    // Several row and column tiles of both products (4 x 4 of 64 x 64 for dX), walked by 3
    // blocks in the grouped tile order.
    cases.push(BackwardCase {
        shape: LinearShape::new(200, 75, 200),
        nonlinearity: Nonlinearity::Relu,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        grid_x: Some(3),
        ..base
    });
    // Keep-rule boundary vectors through the identity backward's redrawn mask (a 13x75 dY holds
    // every vector's index; dY is 1 there so the element weighs in every gradient).
    for b in boundaries() {
        for p in [b.p(), b.p_above()] {
            cases.push(BackwardCase {
                shape: LinearShape::new(13, 75, 8),
                p,
                geometry: Geometry::UNSHARDED,
                grid_x: None,
                seed_subsequence: Some((b.seed, b.subsequence)),
                ..base
            });
        }
    }
    // NaN and infinities in dY and (through X) in the saved Y, every rate, both activations:
    // docs/mask-contract.md, "Backward without a mask".
    for (i, &p) in [0.0f32, 0.1, 0.5, 1.0].iter().enumerate() {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            cases.push(BackwardCase {
                shape: LinearShape::new(70, 75, 64),
                nonlinearity,
                p,
                geometry: Geometry::UNSHARDED,
                accumulate: i == 1,
                grid_x: None,
                nonfinite: true,
                ..base
            });
        }
    }
    cases
}

/// Checks `fusedrop_backward_{dx,dw}_<config>_<dtype>` from tests/harness/<driver_name>.cpp.
fn check_backward<T: Raw>(driver_name: &str, config: &str, seed: u64) {
    check_backward_cases::<T>(driver_name, config, &backward_cases(), seed);
}

/// A backward product's launches (the product, then its split sums when `case.splits > 1`) as
/// the library plans them (`product_plan`), reading dY from `dy` (dY, or the workspace's dY
/// times the mask), Y for ReLU, writing dW when the case asks for it and db always; its buffers
/// and mask parameters still to add.
/// `config` names the configuration, with `_aligned` for the mma.sync kernels' entry points for
/// aligned operands. A Hopper configuration runs on a GPU that runs the case's `grid_x` (else 3)
/// of its blocks or clusters at once; a classic one takes `grid_x` as its grid when the case
/// gives one. The split-K partial sums go to a poisoned workspace `ws`, 256 bytes in.
fn backward_product_launch<T: Raw>(
    config: &str,
    product: BackwardProduct,
    spec: &LayerSpec,
    dy: Operand,
    case: &BackwardCase,
    what: String,
    rng: &mut StdRng,
) -> Launch {
    let (config, aligned) = match config.strip_suffix("_aligned") {
        Some(base) => (base, true),
        None => (config, false),
    };
    let hopper = config.starts_with("wg");
    let splits = if hopper { 1 } else { case.splits };
    assert!(
        splits == 1 || dy != Operand::Workspace,
        "a split product reading dY times the mask from the workspace is not modelled here"
    );
    let operands = ProductOperands {
        dy,
        y: spec.nonlinearity == Nonlinearity::Relu,
        out: product == BackwardProduct::Dx || case.weight_grad,
        db: product == BackwardProduct::Dw,
        aligned,
        partial_at: 256,
    };
    let plan_on = |blocks: usize| {
        product_plan::<T>(
            config,
            splits,
            product,
            spec,
            operands,
            case.accumulate,
            ResidentClusters::uniform(blocks),
        )
        .unwrap_or_else(|e| panic!("{config} {product:?} of {what}: {e}"))
    };
    let mut plans = plan_on(132);
    if hopper {
        plans = plan_on(case.grid_x.unwrap_or(3) as usize * plans[0].cluster as usize);
    }
    let mut launch = Launch::new(&plans[0].function, what, rng);
    for plan in &plans {
        launch.plan(plan);
    }
    if let (false, Some(g)) = (hopper, case.grid_x) {
        launch.int("grid_x", g);
    }
    if splits > 1 {
        let LinearShape { m, n, k } = spec.shape;
        let shares = match product {
            BackwardProduct::Dx => m * k,
            BackwardProduct::Dw => n * k + n,
        };
        launch.buffer(
            "ws",
            &poisoned::<f32>(64 + splits as usize * shares),
            0,
            false,
        );
    }
    launch
}

fn check_backward_cases<T: Raw>(
    driver_name: &str,
    config: &str,
    cases: &[BackwardCase],
    seed: u64,
) {
    let Some(exe) = driver(driver_name) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut launches = Vec::new();
    let mut expected = Vec::new();
    for &case in cases {
        let LinearShape { m, n, k } = case.shape;
        let (seed, subsequence) = case
            .seed_subsequence
            .unwrap_or_else(|| (rng.random(), rng.random_range(0..16)));
        let dropout = DropoutSpec::new(case.p, seed, subsequence);
        let spec =
            LayerSpec::new(case.shape, case.nonlinearity, dropout).with_geometry(case.geometry);
        let mut x = random_values::<T>(m * k, &mut rng);
        let w = random_values::<T>(n * k, &mut rng);
        let b = random_values::<T>(n, &mut rng);
        let mut dy = random_values::<T>(m * n, &mut rng);
        if case.nonfinite {
            // X rows 3 and 40 make whole rows of Y NaN or +-inf (so ReLU redraws the mask there);
            // dY gets single non-finite elements spread over rows and columns.
            plant(&mut x, k, &[(3, 5), (40, 0)]);
            let at: Vec<(usize, usize)> = (0..12).map(|i| (5 * i + 1, (7 * i + 2) % n)).collect();
            plant(&mut dy, n, &at);
        }
        if case.seed_subsequence.is_some() {
            for b in boundaries()
                .iter()
                .filter(|b| (b.seed, b.subsequence) == (seed, subsequence))
            {
                dy[b.index as usize] = T::from_f64(1.0);
            }
        }
        let relu = case.nonlinearity == Nonlinearity::Relu;
        let y = reference::forward(&spec, &x, &w, Some(&b)).expect("valid reference inputs");
        let grads = reference::backward_f64(&spec, &x, &w, &dy, relu.then_some(&y[..]))
            .expect("valid reference inputs");
        // The same reductions over absolute values (the mask and ReLU's activity unchanged):
        // each element's sum of |terms|, for the element-wise bound.
        let abs = |v: &[T]| -> Vec<T> { v.iter().map(|e| T::from_f64(e.to_f64().abs())).collect() };
        let abs_grads =
            reference::backward_f64(&spec, &abs(&x), &abs(&w), &abs(&dy), relu.then_some(&y[..]))
                .expect("valid reference inputs");
        let init = |len: usize, rng: &mut StdRng| {
            if case.accumulate {
                random_values::<T>(len, rng)
            } else {
                poisoned::<T>(len)
            }
        };
        let (dx0, dw0, db0) = (
            init(m * k, &mut rng),
            init(n * k, &mut rng),
            init(n, &mut rng),
        );
        let plus = |start: &[T], grad: &[f64]| -> Vec<f64> {
            if case.accumulate {
                start
                    .iter()
                    .zip(grad)
                    .map(|(s, g)| s.to_f64() + g)
                    .collect()
            } else {
                grad.to_vec()
            }
        };
        let want = (
            plus(&dx0, &grads.dx),
            plus(&dw0, &grads.dw),
            plus(&db0, &grads.db),
        );
        let abs_plus = |start: &[T], sums: &[f64]| -> Vec<f64> {
            let start = abs(start);
            plus(&start, sums)
        };
        let bounds = (
            abs_plus(&dx0, &abs_grads.dx),
            abs_plus(&dw0, &abs_grads.dw),
            abs_plus(&db0, &abs_grads.db),
        );

        let what = format!("{case:?}");
        let mut dx = backward_product_launch::<T>(
            config,
            BackwardProduct::Dx,
            &spec,
            Operand::DY,
            &case,
            what.clone(),
            &mut rng,
        );
        let mut dw = backward_product_launch::<T>(
            config,
            BackwardProduct::Dw,
            &spec,
            Operand::DY,
            &case,
            what,
            &mut rng,
        );
        for launch in [&mut dx, &mut dw] {
            launch
                .mask(&dropout, &case.geometry, n, case.device_seed)
                .buffer("dy", &dy, 0, false);
            if relu {
                launch.buffer("y", &y, 0, false);
            }
        }
        dx.buffer("w", &w, 0, false).buffer("dx", &dx0, 0, true);
        dw.buffer("x", &x, 0, false).buffer("db", &db0, 0, true);
        if case.weight_grad {
            dw.buffer("dw", &dw0, 0, true);
        }
        launches.push(dx);
        launches.push(dw);
        expected.push((case, want, bounds));
    }
    run(&exe, &launches);
    for (pair, (case, want, bounds)) in launches.chunks(2).zip(&expected) {
        let LinearShape { m, n, k } = case.shape;
        let mut outputs = vec![("dX", &pair[0], "dx", &want.0, &bounds.0, n, k)];
        if case.weight_grad {
            outputs.push(("dW", &pair[1], "dw", &want.1, &bounds.1, m, k));
        }
        outputs.push(("db", &pair[1], "db", &want.2, &bounds.2, m, n));
        for (name, launch, buffer, want, abs_sum, terms, cols) in outputs {
            let what = format!("{name} of {}", launch.what);
            let got = launch.output::<T>(buffer);
            check_close(&what, cols, &got, want);
            check_elementwise(&what, cols, &got, want, abs_sum, terms);
        }
    }
}

/// Every SIMT config in every dtype.
#[test]
fn backward_simt_matches_reference() {
    for (i, config) in ["simt128x128", "simt64x64", "simt64x32"].iter().enumerate() {
        let seed = 0xB320 + 4 * i as u64;
        check_backward::<f32>("backward_simt", config, seed);
        check_backward::<f16>("backward_simt", config, seed + 1);
        check_backward::<bf16>("backward_simt", config, seed + 2);
    }
}

/// Split-K on the SIMT kernels, as on the mma.sync ones: each output tile's reduction shared by
/// 2, 3 or 4 blocks whose f32 partial sums (in a poisoned workspace) the split sum adds, scales
/// and rounds, on every backward case and every tile (the wrapper splits only 64 x 64 and
/// 64 x 32; the kernel template is the same), shares of no slice among them (4 shares of a
/// 40-long reduction's 3 slices of 16, 3 shares of the 1-long one's single slice), grids of 1
/// and 3 blocks walking the work items, accumulation, db without dW.
#[test]
fn backward_simt_split_k_matches_reference() {
    let split = |splits: u32| -> Vec<BackwardCase> {
        backward_cases()
            .into_iter()
            .map(|c| BackwardCase { splits, ..c })
            .collect()
    };
    check_backward_cases::<f32>("backward_simt", "simt64x64", &split(2), 0x5B32);
    check_backward_cases::<f32>("backward_simt", "simt128x128", &split(3), 0x5B33);
    check_backward_cases::<f32>("backward_simt", "simt64x32", &split(4), 0x5B34);
    check_backward_cases::<bf16>("backward_simt", "simt64x64", &split(3), 0x5BBF);
}

#[test]
fn backward_tc_f16_matches_reference() {
    check_backward::<f16>("backward_tc", "tc128x128", 0xBC16);
    check_backward::<f16>("backward_tc", "tc64x64", 0xBC17);
}

#[test]
fn backward_tc_bf16_matches_reference() {
    check_backward::<bf16>("backward_tc", "tc128x128", 0xBCBF);
    check_backward::<bf16>("backward_tc", "tc64x64", 0xBCC0);
}

/// The backward cases the aligned mma.sync kernels take (`*_aligned`: the host promises 16-byte
/// aligned dY, Y and B with n and k multiples of 8): every case above with n and k rounded up to
/// multiples of 8, db-only calls included.
fn aligned_backward_cases() -> Vec<BackwardCase> {
    backward_cases()
        .into_iter()
        .map(|c| {
            let LinearShape { m, n, k } = c.shape;
            let shape = LinearShape::new(m, n.next_multiple_of(8), k.next_multiple_of(8));
            let n_global = c
                .geometry
                .n_global
                .map(|g| g.max(c.geometry.col_offset + shape.n as u64));
            BackwardCase {
                shape,
                geometry: Geometry {
                    n_global,
                    ..c.geometry
                },
                ..c
            }
        })
        .collect()
}

#[test]
fn backward_tc_aligned_matches_reference() {
    for (config, seed) in [("tc128x128_aligned", 0xBA16), ("tc64x64_aligned", 0xBA17)] {
        check_backward_cases::<f16>("backward_tc", config, &aligned_backward_cases(), seed);
        check_backward_cases::<bf16>("backward_tc", config, &aligned_backward_cases(), seed + 2);
    }
}

/// The narrow products' tile (64 x 32: B's MN-major tile 32 columns wide), general and aligned.
#[test]
fn backward_tc64x32_matches_reference() {
    check_backward::<f16>("backward_tc", "tc64x32", 0xBC32);
    check_backward::<bf16>("backward_tc", "tc64x32", 0xBC33);
    check_backward_cases::<f16>(
        "backward_tc",
        "tc64x32_aligned",
        &aligned_backward_cases(),
        0xBA32,
    );
    check_backward_cases::<bf16>(
        "backward_tc",
        "tc64x32_aligned",
        &aligned_backward_cases(),
        0xBA33,
    );
}

/// Split-K on the mma.sync kernels that can split (64 x 64, 64 x 32; general and aligned): each
/// output tile's reduction shared by 2, 3 or 4 blocks whose f32 partial sums (in a poisoned
/// workspace) the split sum adds, scales and rounds, on every backward case (shares of no slice
/// among them: 3 shares of a 40-long reduction's 2 slices; grids of 1 and 3 blocks walking the
/// work items; accumulation; db without dW).
#[test]
fn backward_tc_split_k_matches_reference() {
    let split = |cases: Vec<BackwardCase>, splits: u32| -> Vec<BackwardCase> {
        cases
            .into_iter()
            .map(|c| BackwardCase { splits, ..c })
            .collect()
    };
    check_backward_cases::<f16>(
        "backward_tc",
        "tc64x64",
        &split(backward_cases(), 2),
        0x5C16,
    );
    check_backward_cases::<bf16>(
        "backward_tc",
        "tc64x32",
        &split(backward_cases(), 3),
        0x5CBF,
    );
    check_backward_cases::<bf16>(
        "backward_tc",
        "tc64x64_aligned",
        &split(aligned_backward_cases(), 4),
        0x5CA1,
    );
    check_backward_cases::<f16>(
        "backward_tc",
        "tc64x32_aligned",
        &split(aligned_backward_cases(), 3),
        0x5CA2,
    );
}

/// The backward cases the Hopper kernels take: every case above with n and k rounded up to
/// multiples of 8 (TMA's row-stride rule; the wrapper sends other shapes to backward_tc) and dW
/// requested (db-only calls take backward_tc too), each on 3 persistent blocks unless it names a
/// grid; plus products with several tiles per block and reductions longer than the ring, with a
/// shard geometry and the seed read from a device buffer.
fn hopper_backward_cases() -> Vec<BackwardCase> {
    let mut cases: Vec<BackwardCase> = backward_cases()
        .into_iter()
        .filter(|c| c.weight_grad)
        .map(|c| {
            let LinearShape { m, n, k } = c.shape;
            BackwardCase {
                shape: LinearShape::new(m, n.next_multiple_of(8), k.next_multiple_of(8)),
                grid_x: c.grid_x.or(Some(3)),
                ..c
            }
        })
        .collect();
    let base = BackwardCase {
        // dX: 2 x 3 tiles, 5 k-blocks of n; dW: 3 x 3 tiles, 4 k-blocks of m. The rings (4
        // stages) wrap within and across tiles.
        shape: LinearShape::new(200, 264, 328),
        nonlinearity: Nonlinearity::Relu,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        accumulate: false,
        weight_grad: true,
        grid_x: Some(2),
        nonfinite: false,
        seed_subsequence: None,
        device_seed: false,
        splits: 1,
    };
    cases.push(base);
    cases.push(BackwardCase {
        nonlinearity: Nonlinearity::Identity,
        p: 0.5,
        accumulate: true,
        grid_x: Some(1),
        ..base
    });
    cases.push(BackwardCase {
        shape: LinearShape::new(131, 136, 72),
        nonlinearity: Nonlinearity::Identity,
        geometry: Geometry {
            row_offset: 5,
            col_offset: 7,
            n_global: Some(1001),
        },
        device_seed: true,
        splits: 1,
        ..base
    });
    // The identity's dX draws with the forward's paired draws (lane pairs share Philox calls when
    // n_global and col_offset are multiples of 4): a shard that allows them (col_offset 12) and
    // one whose n_global would but col_offset does not (6), at a large row offset.
    for col_offset in [12, 6] {
        cases.push(BackwardCase {
            shape: LinearShape::new(131, 136, 72),
            nonlinearity: Nonlinearity::Identity,
            p: 0.5,
            geometry: Geometry {
                row_offset: 3 << 32,
                col_offset,
                n_global: Some(1004),
            },
            ..base
        });
    }
    // NaN and infinities in Y under ReLU with a shard geometry whose pairs straddle two Philox
    // calls (the unsharded cases above have n a multiple of 8, so their pairs never do): the
    // mask redrawn where Y is NaN, at the shard's indices.
    cases.push(BackwardCase {
        shape: LinearShape::new(70, 80, 64),
        p: 0.5,
        geometry: Geometry {
            row_offset: 5,
            col_offset: 7,
            n_global: Some(1001),
        },
        nonfinite: true,
        ..base
    });
    cases
}

/// The Hopper backward's configurations without split-K.
const BACKWARD_SM90_CONFIGS: [&str; 2] = ["wg128x256", "wg128x128"];

fn check_backward_sm90<T: Raw>(seed: u64) {
    for (i, config) in BACKWARD_SM90_CONFIGS.iter().enumerate() {
        check_backward_cases::<T>(
            "backward_sm90",
            config,
            &hopper_backward_cases(),
            seed + i as u64,
        );
    }
}

#[test]
fn backward_sm90_f16_matches_reference() {
    check_backward_sm90::<f16>(0x9B16);
}

#[test]
fn backward_sm90_bf16_matches_reference() {
    check_backward_sm90::<bf16>(0x9BBF);
}

/// The split-K configurations (clusters of 2, 4 or 8 blocks per tile) and their cluster sizes.
const BACKWARD_SM90_SPLIT_CONFIGS: [(&str, usize); 3] =
    [("wg128x128s2", 2), ("wg128x128s4", 4), ("wg128x128s8", 8)];

/// The Hopper cases with both reductions (n for dX, m for dW) raised to `splits + 1` k-blocks,
/// which split unevenly over the blocks of a cluster (each gets at least one).
fn hopper_split_backward_cases(splits: usize) -> Vec<BackwardCase> {
    let least = (splits + 1) * 64 - 24;
    hopper_backward_cases()
        .into_iter()
        .map(|c| {
            let LinearShape { m, n, k } = c.shape;
            let n = n.max(least);
            // A shard's logical output keeps room for its wider columns.
            let n_global = c
                .geometry
                .n_global
                .map(|g| g.max(c.geometry.col_offset + n as u64));
            BackwardCase {
                shape: LinearShape::new(m.max(least), n, k),
                geometry: Geometry {
                    n_global,
                    ..c.geometry
                },
                ..c
            }
        })
        .collect()
}

fn check_backward_sm90_split<T: Raw>(seed: u64) {
    for (i, (config, splits)) in BACKWARD_SM90_SPLIT_CONFIGS.iter().enumerate() {
        check_backward_cases::<T>(
            "backward_sm90",
            config,
            &hopper_split_backward_cases(*splits),
            seed + i as u64,
        );
    }
}

#[test]
fn backward_sm90_split_f16_matches_reference() {
    check_backward_sm90_split::<f16>(0x5B16);
}

#[test]
fn backward_sm90_split_bf16_matches_reference() {
    check_backward_sm90_split::<bf16>(0x5BBF);
}

// ---------------------------------------------------------------------------------------------
// The wrapper's whole backward (LayerKernels::backward's choices, backward_plan) on the harness

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

/// One call of the backward as the wrapper would plan it on a described GPU.
struct PlannedBackward {
    what: &'static str,
    spec: LayerSpec,
    kernel: BackwardKernel,
    gpu: GpuFacts,
    /// dW asked for (db always is).
    weight_grad: bool,
    /// The workspace's length in bytes, when the call passes one.
    workspace: Option<usize>,
    /// The entry points the plan must launch, in order (so that the test cannot drift to other
    /// kernels than the ones it means to run).
    expected: &'static [&'static str],
}

/// Plans `call` with `backward_plan` and runs its launches in order, each in the driver of its
/// module with the mask parameters the wrapper would give it, the workspace (poisoned) and the
/// gradients (poisoned) carried from one driver's request to the next; then checks every
/// gradient against the reference.
fn check_planned_backward<T: Raw>(call: &PlannedBackward, rng: &mut StdRng) {
    let LinearShape { m, n, k } = call.spec.shape;
    let relu = call.spec.nonlinearity == Nonlinearity::Relu;
    let x = random_values::<T>(m * k, rng);
    let w = random_values::<T>(n * k, rng);
    let b = random_values::<T>(n, rng);
    let dy = random_values::<T>(m * n, rng);
    let y = reference::forward(&call.spec, &x, &w, Some(&b)).expect("valid reference inputs");
    let want = reference::backward_f64(&call.spec, &x, &w, &dy, relu.then_some(&y[..]))
        .expect("valid reference inputs");
    // Addresses as a GPU allocator would give them (16-byte aligned, apart); the harness places
    // each buffer 16-byte aligned too.
    let at = |i: u64| Some(i << 24);
    let buffers = BackwardBuffers {
        dy: 1 << 24,
        y: if relu { at(2) } else { None },
        w: at(3),
        x: if call.weight_grad { at(4) } else { None },
        dx: at(5),
        dw: if call.weight_grad { at(6) } else { None },
        db: at(7),
        workspace: call.workspace.map(|len| (8 << 24, len)),
    };
    let plans = backward_plan::<T>(&call.spec, false, call.kernel, &call.gpu, &buffers)
        .unwrap_or_else(|e| panic!("{}: {e}", call.what));
    let functions: Vec<&str> = plans
        .iter()
        .map(|(plan, _)| plan.function.as_str())
        .collect();
    let expected: Vec<String> = call
        .expected
        .iter()
        .map(|f| format!("{f}_{}", T::NAME))
        .collect();
    assert_eq!(functions, expected, "{}: the planned launches", call.what);

    let mut tensors: HashMap<&str, Vec<T>> = HashMap::new();
    tensors.insert("dy", dy);
    tensors.insert("w", w);
    tensors.insert("dx", poisoned::<T>(m * k));
    tensors.insert("db", poisoned::<T>(n));
    if relu {
        tensors.insert("y", y);
    }
    if call.weight_grad {
        tensors.insert("x", x);
        tensors.insert("dw", poisoned::<T>(n * k));
    }
    let mut workspace: Option<Vec<f32>> = call.workspace.map(|len| poisoned::<f32>(len / 4));
    let outputs = ["dx", "dw", "db"];
    let mut start = 0;
    while start < plans.len() {
        // Consecutive launches of one module with the same mask parameters share a request.
        let (first, mask) = (&plans[start].0, plans[start].1);
        let end = (start..plans.len())
            .find(|&i| plans[i].0.module != first.module || plans[i].1 != mask)
            .unwrap_or(plans.len());
        let mut launch = Launch::new(&first.function, call.what.to_string(), rng);
        for (plan, _) in &plans[start..end] {
            launch.plan(plan);
        }
        let d = &call.spec.dropout;
        match mask {
            BackwardMask::PrePass => {
                launch.mask_with(d, &call.spec.geometry, n, false, mask::threshold(d.p), 1.0)
            }
            BackwardMask::Redrawn => launch.mask(d, &call.spec.geometry, n, false),
            BackwardMask::Premasked => {
                launch.mask_with(d, &call.spec.geometry, n, false, 0, mask::scale(d.p))
            }
        };
        let mut names: Vec<&&str> = tensors.keys().collect();
        names.sort();
        for name in names {
            launch.buffer(name, &tensors[*name], 0, outputs.contains(name));
        }
        if let Some(ws) = &workspace {
            launch.buffer("ws", ws, 0, true);
        }
        let exe = driver(first.module).expect("the driver of a planned module");
        run(&exe, std::slice::from_ref(&launch));
        for name in outputs {
            if tensors.contains_key(name) {
                tensors.insert(name, launch.output::<T>(name));
            }
        }
        if workspace.is_some() {
            workspace = Some(launch.output::<f32>("ws"));
        }
        start = end;
    }
    check_close(&format!("dX of {}", call.what), k, &tensors["dx"], &want.dx);
    check_close(&format!("db of {}", call.what), n, &tensors["db"], &want.db);
    if call.weight_grad {
        check_close(&format!("dW of {}", call.what), k, &tensors["dw"], &want.dw);
    }
}

/// What `LayerKernels::backward` itself decides, run: the kernels, tiles and split-K it picks on
/// an A100-like GPU (compute capability 8.0, 108 multiprocessors) and on a small Hopper GPU
/// (9.0, 8 multiprocessors, so that small shapes take the Hopper kernels), the identity's
/// pre-pass into the workspace and the products reading it, the partial sums placed after the
/// mask area in a workspace of exactly the bytes the call needs, db without dW. Each call's
/// launches are checked by name first.
#[test]
fn backward_plans_of_the_wrapper_match_reference() {
    let (Some(_), Some(_), Some(_), Some(_)) = (
        driver("dropout"),
        driver("backward_tc"),
        driver("backward_simt"),
        driver("backward_sm90"),
    ) else {
        return;
    };
    let (a100, small_hopper) = (A100, SMALL_HOPPER);
    let spec = |(m, n, k), nonlinearity, p, seed| {
        LayerSpec::new(
            LinearShape::new(m, n, k),
            nonlinearity,
            DropoutSpec::new(p, seed, 3),
        )
    };
    let mut rng = StdRng::seed_from_u64(0xB1A2);
    // 1024 x 64 x 64: dX (32 tiles of 64 x 32) has too short a reduction to split; dW's one
    // row of 64 x 32 tiles splits its 1024-long reduction in 4. Workspace: dY times the mask
    // (131072 bytes), then dW's and db's shares (4 x (64 x 64 + 64) f32).
    let identity_narrow = spec((1024, 64, 64), Nonlinearity::Identity, 0.5, 11);
    let narrow_workspace = 131_072 + 4 * (64 * 64 + 64) * 4;
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, A100, workspace",
            spec: identity_narrow,
            kernel: BackwardKernel::Auto,
            gpu: a100,
            weight_grad: true,
            workspace: Some(narrow_workspace),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_tc64x32_aligned",
                "fusedrop_backward_dw_tc64x32_aligned",
                "fusedrop_backward_split_sum",
                "fusedrop_backward_split_sum",
            ],
        },
        &mut rng,
    );
    check_planned_backward::<f32>(
        &PlannedBackward {
            what: "identity, f32, A100, workspace",
            spec: identity_narrow,
            kernel: BackwardKernel::Auto,
            gpu: a100,
            weight_grad: true,
            workspace: Some(2 * 131_072 + 4 * (64 * 64 + 64) * 4),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_simt64x32",
                "fusedrop_backward_dw_simt64x32",
                "fusedrop_backward_split_sum",
                "fusedrop_backward_split_sum",
            ],
        },
        &mut rng,
    );
    // db without dW, ReLU: the dW kernel with the product switched off, unsplit.
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU db only, A100",
            spec: spec((1024, 64, 64), Nonlinearity::Relu, 0.1, 12),
            kernel: BackwardKernel::Auto,
            gpu: a100,
            weight_grad: false,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_tc64x32_aligned",
                "fusedrop_backward_dw_tc64x32_aligned",
            ],
        },
        &mut rng,
    );
    // 512 x 64 x 512 on 8 multiprocessors: dX has 8 tiles of 128 x 256, dW 4 of 128 x 128.
    check_planned_backward::<bf16>(
        &PlannedBackward {
            what: "ReLU, small Hopper",
            spec: spec((512, 64, 512), Nonlinearity::Relu, 0.1, 13),
            kernel: BackwardKernel::Auto,
            gpu: small_hopper,
            weight_grad: true,
            workspace: None,
            expected: &[
                "fusedrop_backward_dx_wg128x256",
                "fusedrop_backward_dw_wg128x128",
            ],
        },
        &mut rng,
    );
    // 512 x 128 x 128: dX 4 tiles of 128 x 128 (half a wave); dW one tile, its reduction of 8
    // k-blocks split over clusters of 2; both read dY times the mask from the workspace.
    check_planned_backward::<f16>(
        &PlannedBackward {
            what: "identity, small Hopper, workspace",
            spec: spec((512, 128, 128), Nonlinearity::Identity, 0.5, 14),
            kernel: BackwardKernel::Auto,
            gpu: small_hopper,
            weight_grad: true,
            workspace: Some(512 * 128 * 2),
            expected: &[
                "fusedrop_dropout",
                "fusedrop_backward_dx_wg128x128",
                "fusedrop_backward_dw_wg128x128s2",
            ],
        },
        &mut rng,
    );
}

// ---------------------------------------------------------------------------------------------
// The identity backward's workspace path (src/cuda/backward.rs): kernels/dropout.cu with scale 1
// writes dY * keep once, and the backward kernels read it with the mask switched off.

/// For each identity case with dropout: the pre-pass through the dropout driver (checked
/// against the mask bit for bit), then `config`'s dX and dW kernels on its output with
/// threshold 0 and p's scale, which must give exactly the bits of the same kernels redrawing
/// the mask from dY themselves.
fn check_backward_workspace<T: Raw>(
    driver_name: &str,
    config: &str,
    cases: &[BackwardCase],
    seed: u64,
) {
    let (Some(dropout_exe), Some(backward_exe)) = (driver("dropout"), driver(driver_name)) else {
        return;
    };
    let cases: Vec<BackwardCase> = cases
        .iter()
        .copied()
        .filter(|c| c.nonlinearity == Nonlinearity::Identity && c.p > 0.0)
        .collect();
    assert!(
        cases.len() >= 8,
        "{} identity cases with dropout",
        cases.len()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut prepasses = Vec::new();
    let mut inputs = Vec::new();
    for case in &cases {
        let LinearShape { m, n, k } = case.shape;
        let dropout = DropoutSpec::new(case.p, rng.random(), rng.random_range(0..16));
        let x = random_values::<T>(m * k, &mut rng);
        let w = random_values::<T>(n * k, &mut rng);
        let mut dy = random_values::<T>(m * n, &mut rng);
        if case.nonfinite {
            let at: Vec<(usize, usize)> = (0..12).map(|i| (5 * i + 1, (7 * i + 2) % n)).collect();
            plant(&mut dy, n, &at);
        }
        let init = |len: usize, rng: &mut StdRng| {
            if case.accumulate {
                random_values::<T>(len, rng)
            } else {
                poisoned::<T>(len)
            }
        };
        let grads0 = [
            init(m * k, &mut rng),
            init(n * k, &mut rng),
            init(n, &mut rng),
        ];
        let plan = dropout_plan::<T>(Operand::DY, Operand::Workspace, m, n);
        let mut prepass = Launch::new(
            &plan.function,
            format!("workspace pre-pass of {case:?}"),
            &mut rng,
        );
        prepass
            .plan(&plan)
            .mask_with(
                &dropout,
                &case.geometry,
                n,
                case.device_seed,
                mask::threshold(case.p),
                1.0,
            )
            .buffer("dy", &dy, 0, false)
            .buffer("ws", &poisoned::<T>(m * n), 0, true);
        prepasses.push(prepass);
        inputs.push((dropout, x, w, dy, grads0));
    }
    run(&dropout_exe, &prepasses);

    let mut launches = Vec::new();
    for ((case, prepass), (dropout, x, w, dy, grads0)) in cases.iter().zip(&prepasses).zip(&inputs)
    {
        let LinearShape { m, n, .. } = case.shape;
        let masked = prepass.output::<T>("ws");
        let want: Vec<u64> = (0..m * n)
            .map(|i| {
                let index = case.geometry.linear_index(n, i / n, i % n);
                let keep = mask::keep(dropout.seed, dropout.subsequence, dropout.p, index);
                class_bits(T::from_f64(dy[i].to_f64() * if keep { 1.0 } else { 0.0 }))
            })
            .collect();
        let got: Vec<u64> = masked.iter().map(|&v| class_bits(v)).collect();
        assert!(
            got == want,
            "{}: dY * keep differs from the mask",
            prepass.what
        );
        // Direct (the kernels redraw the mask) and from the workspace (threshold 0, p's scale,
        // no seed needed).
        for workspace in [false, true] {
            let spec = LayerSpec::new(case.shape, Nonlinearity::Identity, *dropout)
                .with_geometry(case.geometry);
            for (product, b_name, b, outputs) in [
                (BackwardProduct::Dx, "w", w, vec![("dx", &grads0[0])]),
                (
                    BackwardProduct::Dw,
                    "x",
                    x,
                    vec![("dw", &grads0[1]), ("db", &grads0[2])],
                ),
            ] {
                let dy_operand = if workspace {
                    Operand::Workspace
                } else {
                    Operand::DY
                };
                let mut launch = backward_product_launch::<T>(
                    config,
                    product,
                    &spec,
                    dy_operand,
                    case,
                    format!("{case:?} workspace={workspace}"),
                    &mut rng,
                );
                launch.buffer(b_name, b, 0, false);
                if workspace {
                    launch.mask_with(dropout, &case.geometry, n, false, 0, mask::scale(case.p));
                    launch.buffer(dy_operand.name(), &masked, 0, false);
                } else {
                    launch.mask(dropout, &case.geometry, n, case.device_seed);
                    launch.buffer("dy", dy, 0, false);
                }
                for (name, start) in outputs {
                    if name != "dw" || case.weight_grad {
                        launch.buffer(name, start, 0, true);
                    }
                }
                launches.push(launch);
            }
        }
    }
    run(&backward_exe, &launches);
    for (case, pair) in cases.iter().zip(launches.chunks(4)) {
        let (direct, from_workspace) = (&pair[..2], &pair[2..]);
        let mut outputs = vec![(0, "dx"), (1, "db")];
        if case.weight_grad {
            outputs.push((1, "dw"));
        }
        for (launch, name) in outputs {
            let a: Vec<u64> = direct[launch]
                .output::<T>(name)
                .into_iter()
                .map(class_bits)
                .collect();
            let b: Vec<u64> = from_workspace[launch]
                .output::<T>(name)
                .into_iter()
                .map(class_bits)
                .collect();
            assert!(
                a == b,
                "{name} of {}: differs with the workspace",
                from_workspace[launch].what
            );
        }
    }
}

/// A value's bits with every NaN the same (NaN payloads are not part of the contract).
fn class_bits<T: Raw>(v: T) -> u64 {
    let v = v.to_f64();
    if v.is_nan() {
        u64::MAX
    } else {
        v.to_bits()
    }
}

#[test]
fn backward_workspace_matches_the_redrawn_mask_bit_for_bit() {
    check_backward_workspace::<f32>("backward_simt", "simt128x128", &backward_cases(), 0xA32);
    check_backward_workspace::<f16>("backward_simt", "simt64x64", &backward_cases(), 0xA16);
    check_backward_workspace::<bf16>("backward_tc", "tc64x64", &backward_cases(), 0xABF);
    check_backward_workspace::<f16>("backward_tc", "tc128x128", &backward_cases(), 0xAC16);
}

#[test]
fn backward_sm90_workspace_matches_the_redrawn_mask_bit_for_bit() {
    check_backward_workspace::<f16>(
        "backward_sm90",
        "wg128x128",
        &hopper_backward_cases(),
        0xA90,
    );
    check_backward_workspace::<bf16>(
        "backward_sm90",
        "wg128x256",
        &hopper_backward_cases(),
        0xA91,
    );
    check_backward_workspace::<bf16>(
        "backward_sm90",
        "wg128x128s2",
        &hopper_split_backward_cases(2),
        0xA92,
    );
}

#[path = "common/elementwise.rs"]
mod elementwise;
use elementwise::check_elementwise;
#[path = "common/keep_boundary.rs"]
mod keep_boundary;
use keep_boundary::boundaries;

/// Whether element `(r, c)` of a call draws a Philox word exactly equal to its threshold.
fn on_boundary(dropout: &DropoutSpec, geometry: &Geometry, n: usize, r: usize, c: usize) -> bool {
    let index = geometry.linear_index(n, r, c);
    u64::from(mask::word(dropout.seed, dropout.subsequence, index)) == mask::threshold(dropout.p)
}

// ---------------------------------------------------------------------------------------------
// kernels/forward_sm90.cu (Hopper: TMA, mbarrier ring, wgmma, persistent grid)

const FORWARD_SM90_CONFIGS: [&str; 3] = ["wg128x256", "wg128x128", "wg64x128"];

/// The forward cases the Hopper kernel takes (k a multiple of 8, 16-byte aligned X and W; the
/// wrapper sends the others to forward_tc: so every case above with such a shape, non-finite
/// inputs and boundary vectors included), each with a persistent block count, plus shapes with
/// many tiles per block so that the ring wraps across tiles, and a long reduction. Odd n takes
/// the element stores instead of the pair stores.
fn hopper_forward_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    let mut cases: Vec<(ForwardCase, Option<u32>)> = forward_cases(rng)
        .into_iter()
        .filter(|c| c.shape.k % 8 == 0 && c.misalign == 0 && c.grid_y.is_none())
        .map(|c| (c, Some(3)))
        .collect();
    let base = ForwardCase {
        shape: LinearShape::new(300, 300, 200),
        nonlinearity: Nonlinearity::Relu,
        bias: true,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        misalign: 0,
        grid_y: None,
        device_seed: false,
        nonfinite: false,
        seed_subsequence: None,
    };
    // 15 tiles of 64 x 128 (or 6 of 128 x 128, 6 of 128 x 256) over 2 blocks, and over one:
    // every block walks several tiles and the ring wraps several times.
    cases.push((base, Some(2)));
    cases.push((
        ForwardCase {
            p: 0.5,
            nonlinearity: Nonlinearity::Identity,
            bias: false,
            ..base
        },
        Some(1),
    ));
    // A reduction of 9 k-blocks (more than some rings have stages), odd n, a shard geometry with
    // the seed read from a device buffer.
    cases.push((
        ForwardCase {
            shape: LinearShape::new(129, 131, 568),
            geometry: Geometry {
                row_offset: 5 + u64::from(rng.random::<u32>()),
                col_offset: 7,
                n_global: Some(1001),
            },
            device_seed: true,
            ..base
        },
        Some(2),
    ));
    // Shards at a large row offset whose columns keep each lane pair's four columns in one
    // Philox call (n_global and col_offset multiples of 4: paired draws, gemm/sm90/epilogue.cuh),
    // and whose n_global would allow it but col_offset does not (every pair straddles two calls).
    for col_offset in [12, 6] {
        cases.push((
            ForwardCase {
                shape: LinearShape::new(129, 200, 136),
                geometry: Geometry {
                    row_offset: 3 + u64::from(rng.random::<u32>()),
                    col_offset,
                    n_global: Some(1004),
                },
                p: 0.5,
                ..base
            },
            Some(2),
        ));
    }
    cases
}

fn check_forward_sm90<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = hopper_forward_cases(&mut rng);
    check_forward_cases::<T>("forward_sm90", &FORWARD_SM90_CONFIGS, &cases, &mut rng);
}

#[test]
fn forward_sm90_f16_matches_reference() {
    check_forward_sm90::<f16>(0x90F16);
}

#[test]
fn forward_sm90_bf16_matches_reference() {
    check_forward_sm90::<bf16>(0x90BF16);
}

/// The split-K configs (clusters of 2 or 4 blocks per tile, gemm/sm90/split_k.cuh).
const FORWARD_SM90_SPLIT_CONFIGS: [&str; 4] =
    ["wg64x128s2", "wg64x128s4", "wg128x128s2", "wg128x128s4"];

/// The Hopper cases with k raised to at least 5 k-blocks (the wrapper gives every block of a
/// cluster at least one; 5 splits unevenly over 2 and 4 blocks), each on its count of clusters:
/// with fewer clusters than tiles the partial areas and their barriers turn over several times.
fn hopper_split_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    hopper_forward_cases(rng)
        .into_iter()
        .map(|(case, blocks)| {
            let k = case.shape.k.max(5 * 64 - 24);
            let shape = LinearShape::new(case.shape.m, case.shape.n, k);
            (ForwardCase { shape, ..case }, blocks)
        })
        .collect()
}

fn check_forward_sm90_split<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = hopper_split_cases(&mut rng);
    check_forward_cases::<T>(
        "forward_sm90",
        &FORWARD_SM90_SPLIT_CONFIGS,
        &cases,
        &mut rng,
    );
}

#[test]
fn forward_sm90_split_f16_matches_reference() {
    check_forward_sm90_split::<f16>(0x5F16);
}

#[test]
fn forward_sm90_split_bf16_matches_reference() {
    check_forward_sm90_split::<bf16>(0x5BF16);
}

/// What `LayerKernels::forward` picks itself (`forward_plan` without a configuration), run: on
/// an A100-like GPU (compute capability 8.0, 108 multiprocessors) the mma.sync kernel's entry
/// point for aligned operands or for any, and the f32 kernel; on a small Hopper-like GPU (9.0, 8
/// multiprocessors, so that small shapes take the Hopper kernels) the 128 x 256 tile (8 tiles),
/// a split-K cluster for one tile over a long k, and the mma.sync fallback for a k that TMA
/// cannot read.
/// Each call's entry point is checked by name before its output.
#[test]
fn forward_plans_of_the_wrapper_match_reference() {
    let (a100, small_hopper) = (A100, SMALL_HOPPER);
    let case = |(m, n, k), misalign| ForwardCase {
        shape: LinearShape::new(m, n, k),
        nonlinearity: Nonlinearity::Relu,
        bias: true,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        misalign,
        grid_y: None,
        device_seed: false,
        nonfinite: false,
        seed_subsequence: None,
    };
    let mut rng = StdRng::seed_from_u64(0xF0A2);
    fn run_one<T: Raw>(
        gpu: GpuFacts,
        case: &ForwardCase,
        expected: &str,
        driver_name: &str,
        rng: &mut StdRng,
    ) {
        let Some(exe) = driver(driver_name) else {
            return;
        };
        let (launch, want, spec) = forward_launch::<T>(Planned::Auto(gpu), case, None, rng);
        let function = format!("{expected}_{}", T::NAME);
        assert!(
            launch.what.starts_with(&format!("{function} ")),
            "{}: expected {function}",
            launch.what
        );
        run(&exe, std::slice::from_ref(&launch));
        check_layer_output(
            &launch.what,
            &launch.output::<T>("y"),
            &want,
            &spec.dropout,
            &spec.geometry,
            spec.shape.n,
        );
    }
    let shape = (300, 200, 64);
    run_one::<f16>(
        a100,
        &case(shape, 0),
        "fusedrop_forward_tc64x32_aligned",
        "forward_tc",
        &mut rng,
    );
    run_one::<f16>(
        a100,
        &case(shape, 1),
        "fusedrop_forward_tc64x32",
        "forward_tc",
        &mut rng,
    );
    run_one::<f32>(
        a100,
        &case(shape, 0),
        "fusedrop_forward_simt64x32",
        "forward_f32",
        &mut rng,
    );
    run_one::<bf16>(
        small_hopper,
        &case((256, 1024, 128), 0),
        "fusedrop_forward_wg128x256",
        "forward_sm90",
        &mut rng,
    );
    run_one::<bf16>(
        small_hopper,
        &case((64, 128, 1024), 0),
        "fusedrop_forward_wg64x128s4",
        "forward_sm90",
        &mut rng,
    );
    run_one::<f16>(
        small_hopper,
        &case((256, 512, 60), 0),
        "fusedrop_forward_tc64x64",
        "forward_tc",
        &mut rng,
    );
}

/// The tuning variants of kernels/forward_sm90_sweep.cu and the production config whose output
/// each must reproduce bit for bit (the same wgmma m64nNk16 sequence and epilogue arithmetic for
/// every output element: the config with the same column tile).
const FORWARD_SM90_SWEEP_VARIANTS: [(&str, &str); 12] = [
    ("wg128x256_st3", "wg128x256"),
    ("wg128x256_tmastore", "wg128x256"),
    ("wg128x256_mc2", "wg128x256"),
    ("wg128x256_mc2_tmastore", "wg128x256"),
    ("wg128x128_tmastore", "wg128x128"),
    ("wg128x128_mc2", "wg128x128"),
    ("wg64x256_pp", "wg128x256"),
    ("wg64x256_pp_tmastore", "wg128x256"),
    ("wg128x256_g4", "wg128x256"),
    ("wg128x256_g16", "wg128x256"),
    ("wg128x128_g16", "wg128x128"),
    ("wg128x256_unpaired", "wg128x256"),
];

/// The Hopper cases, plus shapes for the clusters of the multicast variants: an odd number of
/// row tiles (the last cluster's second block has no rows of Y, but still loads its half of W
/// for the first) with a partial last column tile, over fewer clusters than cluster tiles so
/// each walks several; a reduction longer than every ring, on one cluster; and more row tiles than
/// a group of the tile order holds at 4 (6 row tiles), over fewer blocks than tiles. The
/// TMA-store variants take the cases whose Y rows start 16-byte aligned (n a multiple of 8).
fn hopper_sweep_cases(rng: &mut StdRng) -> Vec<(ForwardCase, Option<u32>)> {
    let mut cases = hopper_forward_cases(rng);
    let base = ForwardCase {
        shape: LinearShape::new(300, 520, 200),
        nonlinearity: Nonlinearity::Relu,
        bias: true,
        p: 0.1,
        geometry: Geometry::UNSHARDED,
        misalign: 0,
        grid_y: None,
        device_seed: false,
        nonfinite: false,
        seed_subsequence: None,
    };
    cases.push((base, Some(2)));
    cases.push((
        ForwardCase {
            shape: LinearShape::new(129, 136, 568),
            nonlinearity: Nonlinearity::Identity,
            p: 0.5,
            bias: false,
            ..base
        },
        Some(1),
    ));
    cases.push((
        ForwardCase {
            shape: LinearShape::new(650, 264, 64),
            nonlinearity: Nonlinearity::Identity,
            ..base
        },
        Some(5),
    ));
    cases
}

fn check_forward_sm90_sweep<T: Raw>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = hopper_sweep_cases(&mut rng);
    check_sweep_variants::<T>(
        ("forward_sm90_sweep", "forward_sm90"),
        &FORWARD_SM90_SWEEP_VARIANTS,
        &|variant, case| !variant.contains("tmastore") || case.shape.n % 8 == 0,
        &cases,
        &mut rng,
    );
}

#[test]
fn forward_sm90_sweep_f16_matches_reference_and_production() {
    check_forward_sm90_sweep::<f16>(0x5EE9_90F1);
}

#[test]
fn forward_sm90_sweep_bf16_matches_reference_and_production() {
    check_forward_sm90_sweep::<bf16>(0x5EE9_90BF);
}

// ---------------------------------------------------------------------------------------------
// The device-seed record (SeedSource::DeviceRecorded)

/// A forward whose (seed, subsequence) comes from a device buffer writes the pair it used to its
/// record buffer; a backward that reads the record gets the forward's mask although the buffer was
/// advanced in between (as a CUDA graph does), while one that read the advanced buffer would not.
#[test]
fn forward_records_the_seed_it_used_for_the_backward() {
    let (Some(f32_forward), Some(tc_forward), Some(dropout), Some(backward)) = (
        driver("forward_f32"),
        driver("forward_tc"),
        driver("dropout"),
        driver("backward_simt"),
    ) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(0x5EED_5EED);
    let shape = LinearShape::new(37, 29, 45);
    let LinearShape { m, n, k } = shape;
    let used = DropoutSpec::new(0.5, 0x1234_5678_9abc_def0, 41);
    let spec = LayerSpec::new(shape, Nonlinearity::Identity, used);

    // Every kernel that takes a record writes the pair it read from the device buffer (the
    // by-value fields hold garbage in device-seed launches).
    let case = ForwardCase {
        shape,
        nonlinearity: Nonlinearity::Identity,
        bias: false,
        p: used.p,
        geometry: Geometry::UNSHARDED,
        misalign: 0,
        grid_y: None,
        device_seed: true,
        nonfinite: false,
        seed_subsequence: Some((used.seed, used.subsequence)),
    };
    let (mut f32_launch, f32_want, _) =
        forward_launch::<f32>(Planned::Config("simt64x64"), &case, None, &mut rng);
    f32_launch.record();
    let (mut tc_launch, _, _) =
        forward_launch::<f16>(Planned::Config("tc64x64"), &case, None, &mut rng);
    tc_launch.record();
    let (mut dropout_launch, _) = dropout_launch::<f32>(
        m,
        n,
        used,
        Geometry::UNSHARDED,
        Some(3),
        true,
        false,
        &mut rng,
    );
    dropout_launch.record();
    run(&f32_forward, std::slice::from_ref(&f32_launch));
    run(&tc_forward, std::slice::from_ref(&tc_launch));
    run(&dropout, std::slice::from_ref(&dropout_launch));
    // The Hopper forward, on a shape it takes (k a multiple of 8).
    let sm90_case = ForwardCase {
        shape: LinearShape::new(m, n, 48),
        ..case
    };
    let (mut sm90_launch, _, _) =
        forward_launch::<bf16>(Planned::Config("wg64x128"), &sm90_case, Some(3), &mut rng);
    sm90_launch.record();
    if let Some(sm90_forward) = driver("forward_sm90") {
        run(&sm90_forward, std::slice::from_ref(&sm90_launch));
    }
    for launch in [&f32_launch, &tc_launch, &dropout_launch, &sm90_launch] {
        assert_eq!(
            launch.recorded(),
            (used.seed, used.subsequence),
            "{}: the record does not hold the pair the kernel used",
            launch.what
        );
    }
    check_layer_output(
        &f32_launch.what,
        &f32_launch.output::<f32>("y"),
        &f32_want,
        &used,
        &Geometry::UNSHARDED,
        n,
    );

    // The graph advances the buffer to the next call's subsequence before the backward runs.
    let (seed, subsequence) = f32_launch.recorded();
    let recorded = DropoutSpec::new(used.p, seed, subsequence);
    let advanced = DropoutSpec::new(used.p, used.seed, used.subsequence + 1);
    let x = random_values::<f32>(m * k, &mut rng);
    let w = random_values::<f32>(n * k, &mut rng);
    let dy = random_values::<f32>(m * n, &mut rng);
    let want = reference::backward_f64(&spec, &x, &w, &dy, None).expect("valid inputs");
    let launches: Vec<Launch> = [recorded, advanced]
        .iter()
        .map(|pair| {
            let case = BackwardCase {
                shape,
                nonlinearity: Nonlinearity::Identity,
                p: pair.p,
                geometry: Geometry::UNSHARDED,
                accumulate: false,
                weight_grad: false,
                grid_x: None,
                nonfinite: false,
                seed_subsequence: None,
                device_seed: true,
                splits: 1,
            };
            let mut dx = backward_product_launch::<f32>(
                "simt64x64",
                BackwardProduct::Dx,
                &LayerSpec::new(shape, Nonlinearity::Identity, *pair),
                Operand::DY,
                &case,
                format!("device seed {pair:?}"),
                &mut rng,
            );
            dx.mask(pair, &Geometry::UNSHARDED, n, true)
                .buffer("dy", &dy, 0, false)
                .buffer("w", &w, 0, false)
                .buffer("dx", &poisoned::<f32>(m * k), 0, true);
            dx
        })
        .collect();
    run(&backward, &launches);
    check_close(
        "dX from the recorded pair",
        k,
        &launches[0].output::<f32>("dx"),
        &want.dx,
    );
    let stale = reference::relative_l2_error(&to_f64(&launches[1].output::<f32>("dx")), &want.dx);
    assert!(
        stale > 0.1,
        "dX from the advanced buffer should have the wrong mask (relative L2 error {stale})"
    );
}
