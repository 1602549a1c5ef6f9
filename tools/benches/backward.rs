//! Backward benchmarks (criterion): for every shape and dtype of the suite (docs/PERF.md), our
//! backward (dX, dW, db in one call), the two cuBLASLt GEMMs alone (the floor), and the unfused
//! path (the elementwise pass, then cuBLASLt dX and dW with db from the BGRADB epilogue), timed
//! with CUDA events around the launches (`iter_custom`), inputs rotated among sets larger than
//! L2. Throughput is in FLOP (4mnk per call).
//!
//! Without a GPU (or without the compiled kernels, or cuBLASLt) the GPU groups say once why they
//! are skipped and the CPU reference backward runs on small shapes instead. Filter as usual:
//! `cargo bench --bench backward -- backward/sq/bf16`.

mod common;

use criterion::{Criterion, Throughput};
use fusedrop::{reference, DropoutSpec, Element, LayerSpec, Nonlinearity};
use fusedrop_tools::bench::{backward_flops, random_nonzero, Pass, CPU_SHAPES};
use half::bf16;

fn main() {
    common::run(Pass::Backward, &[cpu_group::<f32>, cpu_group::<bf16>]);
}

fn cpu_group<T: Element>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("cpu_reference/backward/{}", T::NAME));
    for dims in CPU_SHAPES {
        let x = random_nonzero::<T>(dims.m * dims.k, 1);
        let w = random_nonzero::<T>(dims.n * dims.k, 2);
        let dy = random_nonzero::<T>(dims.m * dims.n, 3);
        let spec = LayerSpec::new(dims, Nonlinearity::Relu, DropoutSpec::new(0.1, 5, 0));
        let y = reference::forward(&spec, &x, &w, None).expect("valid operands");
        let label = format!("{}x{}x{}", dims.m, dims.n, dims.k);
        group.throughput(Throughput::Elements(backward_flops(dims) as u64));
        group.bench_function(format!("backward/{label}"), |bench| {
            bench
                .iter(|| reference::backward(&spec, &x, &w, &dy, Some(&y)).expect("valid operands"))
        });
    }
    group.finish();
}
