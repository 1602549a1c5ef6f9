//! Compiles every `kernels/*.cu` into a fatbin with nvcc and embeds them in the crate.
//!
//! - nvcc is looked up in `NVCC`, then `CUDA_HOME`/`CUDA_PATH` (`bin/nvcc`), then `PATH`.
//! - `FUSEDROP_CUDA_ARCHS` (default `80,86,89,90`) lists the SASS targets; PTX for the lowest
//!   one is embedded too, so newer GPUs can JIT it.
//! - Every kernel is compiled with `-Xptxas -v`; a kernel that spills registers to local memory
//!   fails the build. The full report goes to `$OUT_DIR/<kernel>.ptxas.txt`.
//! - Without nvcc the crate still builds (with a warning) and every GPU entry point returns
//!   `Error::KernelsNotBuilt`, unless `FUSEDROP_REQUIRE_NVCC=1` makes that a build error.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &str = "80,86,89,90";

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "FUSEDROP_CUDA_ARCHS",
        "FUSEDROP_REQUIRE_NVCC",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rustc-check-cfg=cfg(fusedrop_kernels)");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
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
            Some(compile_all(&nvcc, include.as_deref(), &units, &out_dir))
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

fn arch_flags() -> Vec<String> {
    let list = env::var("FUSEDROP_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let archs: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    assert!(
        !archs.is_empty() && archs.iter().all(|a| a.chars().all(|c| c.is_ascii_digit())),
        "FUSEDROP_CUDA_ARCHS must be a comma-separated list of compute capabilities such as \
         80,86,89,90; got {list:?}"
    );
    let mut flags: Vec<String> = archs
        .iter()
        .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
        .collect();
    let lowest = archs
        .iter()
        .min_by_key(|a| a.parse::<u32>().unwrap_or(u32::MAX))
        .expect("non-empty");
    flags.push(format!(
        "-gencode=arch=compute_{lowest},code=compute_{lowest}"
    ));
    flags
}

/// Compiles every unit in parallel; returns (kernel name, fatbin path).
fn compile_all(
    nvcc: &Path,
    include: Option<&Path>,
    units: &[&PathBuf],
    out_dir: &Path,
) -> Vec<(String, PathBuf)> {
    let archs = arch_flags();
    let cccl = include.map(|i| i.join("cccl")).filter(|c| c.is_dir());
    let jobs: Vec<_> = units
        .iter()
        .map(|unit| {
            let name = unit.file_stem().unwrap().to_string_lossy().into_owned();
            let fatbin = out_dir.join(format!("{name}.fatbin"));
            let mut cmd = Command::new(nvcc);
            cmd.arg("-fatbin")
                .args([
                    "-std=c++17",
                    "-O3",
                    "-lineinfo",
                    "-Xptxas",
                    "-v",
                    "--threads",
                    "2",
                ])
                // Compressed fatbins are a tenth of the size; the driver inflates them at load.
                .args(["-Xfatbin", "-compress-all"])
                .args(&archs)
                .arg("-Ikernels");
            if let Some(cccl) = &cccl {
                cmd.arg(format!("-I{}", cccl.display()));
            }
            cmd.arg(unit.as_os_str()).arg("-o").arg(&fatbin);
            (name, fatbin, cmd)
        })
        .collect();
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(name, fatbin, mut cmd)| {
            let handle = std::thread::spawn(move || cmd.output());
            (name, fatbin, handle)
        })
        .collect();
    let mut images = Vec::new();
    for (name, fatbin, handle) in handles {
        let output = handle
            .join()
            .expect("nvcc thread")
            .unwrap_or_else(|e| panic!("could not run nvcc at {}: {e}", nvcc.display()));
        let report = String::from_utf8_lossy(&output.stderr).into_owned();
        fs::write(out_dir.join(format!("{name}.ptxas.txt")), &report).expect("write report");
        if !output.status.success() {
            panic!("nvcc failed on kernels/{name}.cu:\n{report}");
        }
        check_no_spills(&name, &report);
        images.push((name, fatbin));
    }
    images
}

/// Fails the build when ptxas reports spill stores or loads for any function.
fn check_no_spills(name: &str, report: &str) {
    let mut function = "";
    let mut spilling = Vec::new();
    for line in report.lines() {
        if let Some(pos) = line.find("Compiling entry function '") {
            function = &line[pos + 26..];
        }
        if line.contains("bytes spill stores") {
            let counts: Vec<u64> = line
                .split(',')
                .filter(|part| part.contains("spill"))
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            if counts.iter().any(|&c| c > 0) {
                spilling.push(format!("{function}: {}", line.trim()));
            }
        }
    }
    if !spilling.is_empty() {
        panic!(
            "kernels/{name}.cu spills registers to local memory:\n{}",
            spilling.join("\n")
        );
    }
}

fn write_image_table(out_dir: &Path, images: Option<&[(String, PathBuf)]>) {
    let mut code = String::new();
    match images {
        Some(images) => {
            code.push_str(
                "/// (module name, fatbin) for every kernels/*.cu, compiled by build.rs.\n",
            );
            code.push_str("pub(crate) const KERNEL_IMAGES: Option<&[(&str, &[u8])]> = Some(&[\n");
            for (name, path) in images {
                writeln!(
                    code,
                    "    ({name:?}, include_bytes!({:?})),",
                    path.display().to_string()
                )
                .unwrap();
            }
            code.push_str("]);\n");
        }
        None => {
            code.push_str("/// No nvcc at build time: no kernels.\n");
            code.push_str("pub(crate) const KERNEL_IMAGES: Option<&[(&str, &[u8])]> = None;\n");
        }
    }
    fs::write(out_dir.join("kernel_images.rs"), code).expect("write kernel_images.rs");
}
