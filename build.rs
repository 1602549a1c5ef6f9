//! Compiles every `kernels/*.cu` into a fatbin with nvcc and embeds them in the crate.
//!
//! - nvcc is looked up in `NVCC`, then `CUDA_HOME`/`CUDA_PATH` (`bin/nvcc`), then `PATH`.
//! - `FUSEDROP_CUDA_ARCHS` (default `80,86,89,90`) lists the SASS targets; modules that need no
//!   sm_80 instruction also get sm_75. PTX for each module's lowest target is embedded too, so
//!   newer GPUs can JIT it, and the wrappers refuse a GPU older than a module's lowest target
//!   with `Error::UnsupportedDevice`.
//! - The Hopper modules (wgmma, TMA, setmaxnreg) compile for `sm_90a` alone, and only when the
//!   list has 90: architecture-specific code has no PTX that a later GPU could JIT, so they
//!   serve compute capability 9.0 only and are left out of builds without 90.
//! - Every kernel is compiled with `-Xptxas -v`; a kernel that uses local memory (spilled
//!   registers or a stack frame), whose wgmmas ptxas serializes or whose `setmaxnreg` it ignores
//!   fails the build. The full report goes to `$OUT_DIR/<kernel>.ptxas.txt`.
//! - The launch numbers of every kernel configuration live in src/cuda/launch_table.rs; this
//!   script writes them to `$OUT_DIR/include/fusedrop_launch_table.h` (always, with or without
//!   nvcc), which the kernels `static_assert` their config structs against, and exports the
//!   directory as `FUSEDROP_GENERATED_INCLUDE` for the CPU harness.
//! - `FUSEDROP_MBARRIER_WAIT_LIMIT_NS` overrides how long a Hopper kernel's mbarrier wait lasts
//!   before it traps (default 20 s; `0` for no limit, as under a debugger): build/options.rs.
//! - `FUSEDROP_NVCC_CACHE=<dir>` keeps each module's fatbin and ptxas report in `<dir>`, keyed by
//!   nvcc's path and version, `NVCC_PREPEND_FLAGS`, `NVCC_APPEND_FLAGS` and `NVCC_CCBIN`, the
//!   flags, every file under kernels/ and the launch header, so that a build under another
//!   profile, feature set or target directory takes them from there instead of running nvcc
//!   again (build/nvcc_cache.rs; scripts/test.sh uses `.cache/nvcc-outputs`). Off when unset.
//!   Entries are never evicted: delete the directory to reclaim the space.
//! - Without nvcc the crate still builds (with a warning) and every GPU entry point returns
//!   `Error::KernelsNotBuilt`, unless `FUSEDROP_REQUIRE_NVCC=1` makes that a build error.
//! - Dependent crates' build scripts read `DEP_FUSEDROP_DYNAMIC_LINKING` (`1` with the
//!   `dynamic-linking` feature, else `0`) to know which cudarc linking mode they compile against.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &str = "80,86,89,90";

/// Environment variables that nvcc itself reads and that change what it compiles: extra flags
/// before and after the command line's, and the host compiler.
const NVCC_OWN_VARS: &[&str] = &["NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN"];

#[path = "src/cuda/launch_table.rs"]
mod launch_table;

#[path = "build/nvcc_cache.rs"]
mod nvcc_cache;

#[path = "build/options.rs"]
mod options;

#[path = "build/source_digest.rs"]
mod source_digest;

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "FUSEDROP_CUDA_ARCHS",
        "FUSEDROP_REQUIRE_NVCC",
        options::MBARRIER_WAIT_LIMIT_VAR,
        nvcc_cache::NVCC_CACHE_VAR,
    ]
    .iter()
    .chain(NVCC_OWN_VARS)
    {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/launch_table.rs");
    println!("cargo:rerun-if-changed=build/options.rs");
    println!("cargo:rerun-if-changed=build/nvcc_cache.rs");
    println!("cargo:rerun-if-changed=build/source_digest.rs");
    println!("cargo:rustc-check-cfg=cfg(fusedrop_kernels)");
    // Metadata for the build scripts of crates that depend on fusedrop (`links` in Cargo.toml
    // makes it `DEP_FUSEDROP_DYNAMIC_LINKING`): cudarc's run-time loading API (`is_culib_present`,
    // `culib`) exists only when `dynamic-linking` is off, and the tools probe cuBLASLt with it.
    println!(
        "cargo:dynamic_linking={}",
        u8::from(env::var_os("CARGO_FEATURE_DYNAMIC_LINKING").is_some())
    );

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = write_launch_header(&out_dir);
    println!(
        "cargo:rustc-env=FUSEDROP_GENERATED_INCLUDE={}",
        generated.display()
    );
    let kernels_dir = Path::new("kernels");
    let mut sources: Vec<PathBuf> = fs::read_dir(kernels_dir)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let units: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();

    // Read with or without nvcc, so that a malformed value fails every build alike.
    let wait_limit = env::var_os(options::MBARRIER_WAIT_LIMIT_VAR)
        .map(|value| value.to_string_lossy().into_owned());
    let defines: Vec<String> = options::mbarrier_wait_limit_flag(wait_limit.as_deref())
        .unwrap_or_else(|message| panic!("{message}"))
        .into_iter()
        .collect();
    let images = match find_nvcc() {
        Some(nvcc) => {
            let include = nvcc
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join("include"));
            if let Some(include) = include.as_ref().filter(|i| i.join("cuda_fp16.h").exists()) {
                println!(
                    "cargo:rustc-env=FUSEDROP_CUDA_INCLUDE={}",
                    include.display()
                );
            }
            println!("cargo:rustc-env=FUSEDROP_NVCC={}", nvcc.display());
            println!("cargo:rustc-cfg=fusedrop_kernels");
            Some(compile_all(
                &nvcc,
                include.as_deref(),
                &generated,
                &defines,
                &units,
                &out_dir,
            ))
        }
        None => {
            if env::var("FUSEDROP_REQUIRE_NVCC").is_ok_and(|v| v == "1") {
                panic!(
                    "FUSEDROP_REQUIRE_NVCC=1 but no nvcc was found (looked in NVCC, \
                     CUDA_HOME/bin, CUDA_PATH/bin and PATH)"
                );
            }
            println!(
                "cargo:warning=fusedrop: no nvcc found (NVCC, CUDA_HOME, CUDA_PATH, PATH); \
                 building without CUDA kernels: every GPU entry point will return KernelsNotBuilt"
            );
            None
        }
    };
    write_image_table(&out_dir, images.as_deref());
}

/// Writes `fusedrop_launch_table.h` (the launch numbers of src/cuda/launch_table.rs as C++
/// constants, and `launch::matches`, which a kernel file `static_assert`s for each config) into
/// `$OUT_DIR/include`, and returns that directory.
fn write_launch_header(out_dir: &Path) -> PathBuf {
    let dir = out_dir.join("include");
    fs::create_dir_all(&dir).expect("create $OUT_DIR/include");
    let mut h = String::from(
        "// Generated by build.rs from src/cuda/launch_table.rs: edit that file, not this one.\n\
         #pragma once\n\n\
         namespace fusedrop {\n\
         namespace launch {\n\n\
         struct Numbers {\n    int block_m;\n    int block_n;\n    int threads;\n    int smem_bytes;\n    \
         int cluster;\n    bool tma_store;\n    bool stream_k;\n};\n\n",
    );
    for c in launch_table::ALL {
        writeln!(
            h,
            "constexpr Numbers {} = {{{}, {}, {}, {}, {}, {}, {}}};",
            c.name,
            c.block_m,
            c.block_n,
            c.threads,
            c.smem_bytes,
            c.cluster,
            c.tma_store,
            c.stream_k
        )
        .unwrap();
    }
    writeln!(
        h,
        "constexpr int backward_max_blocks = {};\n\
         constexpr int split_sum_threads = {};\n\
         constexpr int stream_k_max_blocks = {};\n\n\
         // Whether a config struct's launch numbers are the table's.\n\
         template <class C>\n\
         constexpr bool matches(const Numbers& n) {{\n    \
         return C::kBlockM == n.block_m && C::kBlockN == n.block_n && C::kThreads == n.threads &&\n           \
         C::kSmemBytes == n.smem_bytes;\n}}\n\n\
         // The same, and the cluster size of a clustered config struct (kClusterBlocks).\n\
         template <class C>\n\
         constexpr bool matches_clustered(const Numbers& n) {{\n    \
         return matches<C>(n) && C::kClusterBlocks == n.cluster;\n}}\n\n\
         // The same, and whether a Hopper config stores its output by TMA (kTmaStore).\n\
         template <class C>\n\
         constexpr bool matches_stores(const Numbers& n) {{\n    \
         return matches_clustered<C>(n) && C::kTmaStore == n.tma_store;\n}}\n\n\
         // The same, and whether a Hopper forward config schedules stream-K (kStreamK).\n\
         template <class C>\n\
         constexpr bool matches_schedule(const Numbers& n) {{\n    \
         return matches_stores<C>(n) && C::kStreamK == n.stream_k;\n}}\n\n\
         }}  // namespace launch\n\
         }}  // namespace fusedrop",
        launch_table::BACKWARD_MAX_BLOCKS,
        launch_table::SPLIT_SUM_THREADS,
        launch_table::STREAM_K_MAX_BLOCKS
    )
    .unwrap();
    let path = dir.join("fusedrop_launch_table.h");
    // Rewritten only when it changes, so that its timestamp does not trigger rebuilds.
    if fs::read_to_string(&path).ok().as_deref() != Some(h.as_str()) {
        fs::write(&path, h).expect("write fusedrop_launch_table.h");
    }
    dir
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(path) = env::var("NVCC") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        println!(
            "cargo:warning=fusedrop: NVCC={} is not a file",
            path.display()
        );
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = env::var(var) {
            let candidate = Path::new(&root).join("bin").join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("nvcc"))
            .find(|candidate| candidate.is_file())
    })
}

/// Kernel modules that use sm_80 instructions (mma.sync on f16/bf16, ldmatrix, cp.async) are built
/// only for the listed architectures; every other module also gets SASS and PTX for sm_75, the
/// oldest architecture CUDA 13 compiles for, so that f32 and the dropout kernel run on Turing too.
const SM80_MODULES: &[&str] = &["forward_tc", "forward_tc_sweep", "backward_tc"];
const OLDEST_ARCH: u32 = 75;
/// Kernel modules that use sm_90a instructions (wgmma, setmaxnreg): built as `sm_90a` SASS only.
const SM90A_MODULES: &[&str] = &["forward_sm90", "forward_sm90_sweep", "backward_sm90"];
const HOPPER_ARCH: u32 = 90;

/// The SASS architectures for `module` (sorted, deduplicated), from `FUSEDROP_CUDA_ARCHS` or the
/// default list, plus sm_75 for modules that do not need sm_80; for a Hopper module `[90]` when
/// the list has 90 and nothing otherwise.
fn module_archs(module: &str) -> Vec<u32> {
    let list = env::var("FUSEDROP_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let parsed: Option<Vec<u32>> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().ok())
        .collect();
    let mut archs = match parsed {
        Some(archs) if !archs.is_empty() => archs,
        _ => panic!(
            "FUSEDROP_CUDA_ARCHS must be a comma-separated list of compute capabilities such as \
             80,86,89,90; got {list:?}"
        ),
    };
    if SM90A_MODULES.contains(&module) {
        archs.retain(|&a| a == HOPPER_ARCH);
    } else if SM80_MODULES.contains(&module) {
        archs.retain(|&a| a >= 80);
        assert!(
            !archs.is_empty(),
            "FUSEDROP_CUDA_ARCHS={list:?} lists no architecture of 80 or newer, which the \
             tensor-core module {module} needs"
        );
    } else {
        archs.push(OLDEST_ARCH);
        archs.retain(|&a| a >= OLDEST_ARCH);
    }
    archs.sort_unstable();
    archs.dedup();
    archs
}

/// nvcc's -gencode flags: SASS for every architecture, PTX for the lowest; for a Hopper module
/// `sm_90a` SASS alone.
fn arch_flags(module: &str, archs: &[u32]) -> Vec<String> {
    if SM90A_MODULES.contains(&module) {
        return vec![format!(
            "-gencode=arch=compute_{HOPPER_ARCH}a,code=sm_{HOPPER_ARCH}a"
        )];
    }
    let mut flags: Vec<String> = archs
        .iter()
        .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
        .collect();
    let lowest = archs[0];
    flags.push(format!(
        "-gencode=arch=compute_{lowest},code=compute_{lowest}"
    ));
    flags
}

/// A compiled module: its name, the lowest architecture it runs on, and its fatbin.
struct Image {
    name: String,
    min_arch: u32,
    /// Architecture-specific SASS (sm_90a): runs on `min_arch` exactly.
    arch_specific: bool,
    fatbin: PathBuf,
}

/// Compiles every unit in parallel, or takes it from the cache that `FUSEDROP_NVCC_CACHE`
/// names (build/nvcc_cache.rs), keyed by nvcc's path and version, the environment variables
/// nvcc reads, the unit, its flags, every file under kernels/ and the generated launch header.
fn compile_all(
    nvcc: &Path,
    include: Option<&Path>,
    generated: &Path,
    defines: &[String],
    units: &[&PathBuf],
    out_dir: &Path,
) -> Vec<Image> {
    let cccl = include.map(|i| i.join("cccl")).filter(|c| c.is_dir());
    let cache = env::var_os(nvcc_cache::NVCC_CACHE_VAR)
        .filter(|dir| !dir.is_empty())
        .map(nvcc_cache::NvccCache::new);
    // What every unit's key shares; computed only when there is a cache.
    let shared_key_parts = cache.as_ref().map(|_| {
        let version = Command::new(nvcc)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("could not run nvcc at {}: {e}", nvcc.display()))
            .stdout;
        let sources = source_digest::tree_contents(Path::new("kernels"))
            .unwrap_or_else(|e| panic!("could not read kernels/ for the nvcc cache key: {e}"));
        let header = fs::read(generated.join("fusedrop_launch_table.h"))
            .expect("read the generated launch header");
        let mut environment = String::new();
        for var in NVCC_OWN_VARS {
            if let Some(value) = env::var_os(var) {
                writeln!(environment, "{var}={}", value.to_string_lossy()).unwrap();
            }
        }
        (version, environment, sources, header)
    });
    let mut images = Vec::new();
    let mut jobs = Vec::new();
    for unit in units {
        let name = unit.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out_dir.join(format!("{name}.fatbin"));
        let archs = module_archs(&name);
        if archs.is_empty() {
            // A Hopper module in a build without 90: the wrappers report it as not built.
            continue;
        }
        let mut flags: Vec<String> = [
            "-fatbin",
            "-std=c++17",
            "-O3",
            "-lineinfo",
            "-Xptxas",
            "-v",
            "--threads",
            "2",
            // Compressed fatbins are a tenth of the size; the driver inflates them at load.
            "-Xfatbin",
            "-compress-all",
        ]
        .map(String::from)
        .to_vec();
        flags.extend(arch_flags(&name, &archs));
        flags.push("-Ikernels".to_string());
        flags.extend(defines.iter().cloned());
        if let Some(cccl) = &cccl {
            flags.push(format!("-I{}", cccl.display()));
        }
        let image = Image {
            arch_specific: SM90A_MODULES.contains(&name.as_str()),
            name,
            min_arch: archs[0],
            fatbin,
        };
        // The key leaves out the paths under $OUT_DIR (the generated include directory and the
        // output), which differ between profiles and target directories; the header's contents
        // are in it instead.
        let key = shared_key_parts
            .as_ref()
            .map(|(version, environment, sources, header)| {
                let flag_bytes = flags.join("\n");
                source_digest::digest(&[
                    b"fusedrop nvcc cache 1",
                    nvcc.as_os_str().as_encoded_bytes(),
                    version,
                    environment.as_bytes(),
                    image.name.as_bytes(),
                    flag_bytes.as_bytes(),
                    sources,
                    header,
                ])
            });
        if let (Some(cache), Some(key)) = (&cache, &key) {
            if let Some(report) = cache.fetch(key, &image.fatbin) {
                fs::write(out_dir.join(format!("{}.ptxas.txt", image.name)), &report)
                    .expect("write report");
                check_ptxas_report(&image.name, &report);
                images.push(image);
                continue;
            }
        }
        let mut cmd = Command::new(nvcc);
        cmd.args(&flags)
            .arg(format!("-I{}", generated.display()))
            .arg(unit.as_os_str())
            .arg("-o")
            .arg(&image.fatbin);
        jobs.push((image, key, std::thread::spawn(move || cmd.output())));
    }
    for (image, key, handle) in jobs {
        let output = handle
            .join()
            .expect("nvcc thread")
            .unwrap_or_else(|e| panic!("could not run nvcc at {}: {e}", nvcc.display()));
        let name = &image.name;
        let report = String::from_utf8_lossy(&output.stderr).into_owned();
        fs::write(out_dir.join(format!("{name}.ptxas.txt")), &report).expect("write report");
        if !output.status.success() {
            panic!("nvcc failed on kernels/{name}.cu:\n{report}");
        }
        check_ptxas_report(name, &report);
        if let (Some(cache), Some(key)) = (&cache, &key) {
            if let Err(e) = cache.store(key, &image.fatbin, &report) {
                println!("cargo:warning=fusedrop: could not store {name} in the nvcc cache: {e}");
            }
        }
        images.push(image);
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    images
}

/// Fails the build when ptxas reports, for any function, spill stores or loads or a stack frame
/// (local memory: a register array indexed at run time, or a call that could not be inlined),
/// serialized wgmma instructions, or an ignored `setmaxnreg`. Every kernel keeps its state in
/// registers, its wgmmas in flight and its register split; anything else is a performance bug.
fn check_ptxas_report(name: &str, report: &str) {
    let mut function = "";
    let mut spilling = Vec::new();
    for line in report.lines() {
        if let Some(pos) = line.find("Compiling entry function '") {
            function = &line[pos + 26..];
        }
        if line.contains("bytes stack frame") {
            let counts: Vec<u64> = line
                .split(',')
                .filter(|part| part.contains("spill") || part.contains("stack frame"))
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            if counts.iter().any(|&c| c > 0) {
                spilling.push(format!("{function}: {}", line.trim()));
            }
        }
    }
    if !spilling.is_empty() {
        panic!(
            "kernels/{name}.cu uses local memory (a stack frame or register spills):\n{}",
            spilling.join("\n")
        );
    }
    // ptxas's "Potential Performance Loss" notes. C7513 / C7515: wgmmas serialized (each waits
    // for the previous one) because ptxas could not prove a register safe to touch while a wgmma
    // is in flight. C7508: `setmaxnreg` ignored because the entry's
    // register count is unknown (a Hopper kernel without `__launch_bounds__(threads, 1)`), which
    // silently undoes the producer / consumer register split.
    let losses: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("Potential Performance Loss"))
        .collect();
    if !losses.is_empty() {
        panic!(
            "kernels/{name}.cu: ptxas reports a potential performance loss (serialized wgmmas \
             or an ignored setmaxnreg):\n{}",
            losses.join("\n")
        );
    }
}

fn write_image_table(out_dir: &Path, images: Option<&[Image]>) {
    let mut code = String::new();
    code.push_str(
        "/// A kernel module compiled by build.rs: its name (the kernels/*.cu file stem), the\n\
         /// oldest compute capability it has code for, and its fatbin.\n\
         pub(crate) struct KernelImage {\n    \
         pub(crate) name: &'static str,\n    \
         pub(crate) min_compute_capability: (i32, i32),\n    \
         /// Architecture-specific code (sm_90a): runs on `min_compute_capability` only.\n    \
         pub(crate) arch_specific: bool,\n    \
         pub(crate) fatbin: &'static [u8],\n}\n\n",
    );
    match images {
        Some(images) => {
            code.push_str("/// Every kernels/*.cu, compiled by build.rs.\n");
            code.push_str("pub(crate) const KERNEL_IMAGES: Option<&[KernelImage]> = Some(&[\n");
            for image in images {
                writeln!(
                    code,
                    "    KernelImage {{ name: {:?}, min_compute_capability: ({}, {}), arch_specific: {}, fatbin: include_bytes!({:?}) }},",
                    image.name,
                    image.min_arch / 10,
                    image.min_arch % 10,
                    image.arch_specific,
                    image.fatbin.display().to_string()
                )
                .unwrap();
            }
            code.push_str("]);\n");
        }
        None => {
            code.push_str("/// No nvcc at build time: no kernels.\n");
            code.push_str("pub(crate) const KERNEL_IMAGES: Option<&[KernelImage]> = None;\n");
        }
    }
    fs::write(out_dir.join("kernel_images.rs"), code).expect("write kernel_images.rs");
}
