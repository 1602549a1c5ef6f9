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
use fusedrop_tools::bench::{
    forward_flops, fused_forward, random_nonzero, BaselinePlans, BenchGpu, DType, Operands,
    SuiteShape, CPU_SHAPES, P_VALUES, SUITE,
};
use half::{bf16, f16};

use common::gpu_bench;

fn main() {
    let mut c = common::criterion();
    match BenchGpu::open(0) {
        Ok(gpu) => {
            println!(
                "forward benches on {} (driver {}, cuBLASLt {})",
                gpu.info.name, gpu.info.driver, gpu.info.cublaslt
            );
            for shape in SUITE {
                for dtype in shape.dtypes() {
                    match dtype {
                        DType::Bf16 => gpu_group::<bf16>(&mut c, &gpu, &shape, dtype),
                        DType::F16 => gpu_group::<f16>(&mut c, &gpu, &shape, dtype),
                        DType::F32 => gpu_group::<f32>(&mut c, &gpu, &shape, dtype),
                    }
                }
            }
        }
        Err(e) => {
            println!(
                "forward: GPU groups skipped ({e}); running the CPU reference on small shapes"
            );
            cpu_group::<f32>(&mut c);
            cpu_group::<bf16>(&mut c);
        }
    }
    c.final_summary();
}

fn gpu_group<T: Element>(c: &mut Criterion, gpu: &BenchGpu, shape: &SuiteShape, dtype: DType) {
    let dims = shape.shape();
    let name = format!("forward/{}/{}", shape.name, dtype.name());
    let mut ops = match Operands::<T>::new(gpu.kernels.stream(), dims, gpu.info.l2_bytes, 7) {
        Ok(ops) => ops,
        Err(e) => {
            println!("{name}: skipped: {e}");
            return;
        }
    };
    let plans = BaselinePlans::<T>::new(&gpu.blas, dims);
    let kernels = &gpu.kernels;
    let mut group = c.benchmark_group(&name);
    group.throughput(Throughput::Elements(forward_flops(dims) as u64));
    gpu_bench(&mut group, gpu, &name, "gemm_floor", &mut |i| {
        plans.gemm_forward(ops.set_mut(i))
    });
    for p in P_VALUES {
        gpu_bench(&mut group, gpu, &name, &format!("fused/p={p}"), &mut |i| {
            fused_forward(kernels, ops.set_mut(i), dims, p, i)
        });
        gpu_bench(
            &mut group,
            gpu,
            &name,
            &format!("unfused/p={p}"),
            &mut |i| plans.unfused_forward(kernels, ops.set_mut(i), p, i),
        );
    }
    group.finish();
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
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}
