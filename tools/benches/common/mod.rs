//! What the forward and backward benches share: criterion's settings, and GPU benchmarks whose
//! iterations are launches timed by CUDA events.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use fusedrop_tools::bench::{time_launches, BenchGpu};

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
/// a shape cuBLASLt refuses) is reported and left out instead of failing inside criterion.
fn preflight(gpu: &BenchGpu, id: &str, launch: &mut Launch<'_>) -> bool {
    let result = launch(0).and_then(|()| Ok(gpu.kernels.stream().synchronize()?));
    if let Err(e) = &result {
        println!("{id}: skipped: {e}");
    }
    result.is_ok()
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
