//! What the forward and backward benches share: criterion's settings, GPU benchmarks whose
//! iterations are launches timed by CUDA events, and the whole bench (`run`) for either `Pass`.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use fusedrop::cuda::LoadOptions;
use fusedrop::{Element, Error};
use fusedrop_tools::bench::{
    backward_flops, forward_flops, fused_backward, fused_forward, time_launches, BaselinePlans,
    BenchGpu, DType, Operands, Pass, SuiteShape, P_VALUES, SUITE,
};
use half::{bf16, f16};

/// Short settings: GPU figures settle quickly, and the suite is large.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// One launch of a benchmarked path; the argument is the running launch number.
pub type Launch<'a> = dyn FnMut(u64) -> fusedrop::Result<()> + 'a;

/// Runs `launch` once and waits, so that a path which cannot run here (no kernel for this GPU,
/// a shape cuBLASLt offers no algorithm for) is reported and left out instead of failing inside
/// criterion. Any other error (a launch that fails, a kernel fault) panics: `cargo bench` must
/// not pass over a broken path.
fn preflight(gpu: &BenchGpu, id: &str, launch: &mut Launch<'_>) -> bool {
    match launch(0).and_then(|()| Ok(gpu.kernels.stream().synchronize()?)) {
        Ok(()) => true,
        Err(e) if cannot_run_here(&e) => {
            println!("{id}: skipped: {e}");
            false
        }
        Err(e) => panic!("{id} failed: {e}"),
    }
}

/// Whether `e` says that something cannot run on this machine (no driver, GPU, kernels or
/// cuBLASLt, a GPU too old, a shape cuBLASLt has no algorithm for) rather than that it failed.
fn cannot_run_here(e: &Error) -> bool {
    match e {
        Error::DriverUnavailable(_) | Error::KernelsNotBuilt | Error::UnsupportedDevice(_) => true,
        Error::Cuda(message) => message.contains("CUBLAS_STATUS_NOT_SUPPORTED"),
        Error::InvalidArgument(_) => false,
    }
}

/// Registers one GPU benchmark: each criterion iteration is one `launch(i)`, and a sample is
/// the GPU time between two CUDA events around its iterations. The launch number keeps
/// counting across samples, so the operand sets rotate and each launch draws a fresh mask.
pub fn gpu_bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    gpu: &BenchGpu,
    group_name: &str,
    name: &str,
    launch: &mut Launch<'_>,
) {
    if !preflight(gpu, &format!("{group_name}/{name}"), launch) {
        return;
    }
    let mut next = 1u64;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let first = next;
            next += iters;
            time_launches(gpu.kernels.stream(), iters, |i| launch(first + i))
                .unwrap_or_else(|e| panic!("{group_name}/{name} failed after its preflight: {e}"))
        })
    });
}

/// The bench's main: every shape and dtype of the suite on GPU 0, each group putting our kernel
/// beside the cuBLASLt GEMM floor and the unfused path; or, without a GPU (or without the
/// compiled kernels, or cuBLASLt), a line saying why, then `cpu_groups` (the CPU reference on
/// small shapes), so that `cargo bench` works anywhere.
pub fn run(pass: Pass, cpu_groups: &[fn(&mut Criterion)]) {
    let mut c = criterion();
    match BenchGpu::open(0, LoadOptions::default()) {
        Ok(gpu) => {
            println!(
                "{} benches on {} (driver {}, cuBLASLt {})",
                pass.name(),
                gpu.info.name,
                gpu.info.driver,
                gpu.info.cublaslt
            );
            for shape in SUITE {
                for dtype in shape.dtypes() {
                    match dtype {
                        DType::Bf16 => gpu_group::<bf16>(&mut c, &gpu, pass, &shape, dtype),
                        DType::F16 => gpu_group::<f16>(&mut c, &gpu, pass, &shape, dtype),
                        DType::F32 => gpu_group::<f32>(&mut c, &gpu, pass, &shape, dtype),
                    }
                }
            }
        }
        Err(e) if cannot_run_here(&e) => {
            println!(
                "{}: GPU groups skipped ({e}); running the CPU reference on small shapes",
                pass.name()
            );
            for group in cpu_groups {
                group(&mut c);
            }
        }
        Err(e) => panic!(
            "{}: opening the GPU, its kernels or cuBLASLt failed: {e}",
            pass.name()
        ),
    }
    c.final_summary();
}

/// One shape and dtype: the GEMM floor (the forward's GEMM, or the backward's two), then per p
/// our kernel and the unfused path. Throughput is in FLOP, 2mnk per forward and 4mnk per
/// backward, given to criterion as elements (it has no FLOP unit), so its "elem/s" are FLOP/s.
fn gpu_group<T: Element>(
    c: &mut Criterion,
    gpu: &BenchGpu,
    pass: Pass,
    shape: &SuiteShape,
    dtype: DType,
) {
    let dims = shape.shape();
    let name = format!("{}/{}/{}", pass.name(), shape.name, dtype.name());
    let (operand_seed, flops) = match pass {
        Pass::Forward => (7, forward_flops(dims)),
        Pass::Backward => (8, backward_flops(dims)),
    };
    let stream = gpu.kernels.stream();
    let mut ops = match Operands::<T>::new(stream, dims, gpu.info.l2_bytes, operand_seed) {
        Ok(ops) => ops,
        Err(e) => {
            println!("{name}: skipped: {e}");
            return;
        }
    };
    let mut plans = BaselinePlans::<T>::new(&gpu.blas, dims);
    plans.choose_fastest(stream, &mut ops);
    if let Pass::Backward = pass {
        println!("{name}: unfused = {}", plans.backward_note());
    }
    let kernels = &gpu.kernels;
    let mut group = c.benchmark_group(&name);
    group.throughput(Throughput::Elements(flops as u64));
    gpu_bench(&mut group, gpu, &name, "gemm_floor", &mut |i| match pass {
        Pass::Forward => plans.gemm_forward(ops.set_mut(i)),
        Pass::Backward => plans.gemm_backward(ops.set_mut(i)),
    });
    for p in P_VALUES {
        gpu_bench(
            &mut group,
            gpu,
            &name,
            &format!("fused/p={p}"),
            &mut |i| match pass {
                Pass::Forward => fused_forward(kernels, ops.set_mut(i), dims, p, i),
                Pass::Backward => fused_backward(kernels, ops.set_mut(i), dims, p, i),
            },
        );
        gpu_bench(
            &mut group,
            gpu,
            &name,
            &format!("unfused/p={p}"),
            &mut |i| match pass {
                Pass::Forward => plans.unfused_forward(kernels, ops.set_mut(i), p, i),
                Pass::Backward => plans.unfused_backward(kernels, ops.set_mut(i), p, i),
            },
        );
    }
    group.finish();
}
