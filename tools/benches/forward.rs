//! Forward benchmarks (criterion): for every shape and dtype of the suite (docs/PERF.md), our
//! fused forward, the cuBLASLt GEMM floor, and the unfused path (cuBLASLt RELU_BIAS + the
//! standalone dropout kernel), each timed with CUDA events around the launches (`iter_custom`),
//! inputs rotated among sets larger than L2. Throughput is in FLOP (2mnk per call).
//!
//! Without a GPU (or without the compiled kernels, or cuBLASLt) the GPU groups say once why they
//! are skipped and the CPU reference runs on small shapes instead, so `cargo bench` works
//! anywhere. Filter as usual: `cargo bench --bench forward -- forward/sq/bf16`.

mod common;

use criterion::{BatchSize, Criterion, Throughput};
use fusedrop::{reference, DropoutSpec, Element, Geometry, LayerSpec, Nonlinearity};
use fusedrop_tools::bench::{forward_flops, random_nonzero, Pass, CPU_SHAPES};
use half::bf16;

fn main() {
    common::run(Pass::Forward, &[cpu_group::<f32>, cpu_group::<bf16>]);
}

fn cpu_group<T: Element>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("cpu_reference/forward/{}", T::NAME));
    for dims in CPU_SHAPES {
        let x = random_nonzero::<T>(dims.m * dims.k, 1);
        let w = random_nonzero::<T>(dims.n * dims.k, 2);
        let b = random_nonzero::<T>(dims.n, 3);
        let y = random_nonzero::<T>(dims.m * dims.n, 4);
        let spec = LayerSpec::new(dims, Nonlinearity::Relu, DropoutSpec::new(0.1, 5, 0));
        let label = format!("{}x{}x{}", dims.m, dims.n, dims.k);
        group.throughput(Throughput::Elements(forward_flops(dims) as u64));
        group.bench_function(format!("forward/{label}"), |bench| {
            bench.iter(|| reference::forward(&spec, &x, &w, Some(&b)).expect("valid operands"))
        });
        group.throughput(Throughput::Elements((dims.m * dims.n) as u64));
        group.bench_function(format!("dropout_in_place/{label}"), |bench| {
            bench.iter_batched_ref(
                || y.clone(),
                |y| {
                    reference::dropout_in_place(
                        y,
                        dims.m,
                        dims.n,
                        &spec.dropout,
                        &Geometry::UNSHARDED,
                    )
                    .expect("valid operands")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}
