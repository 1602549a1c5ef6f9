//! The README's example: one fused forward call on GPU 0, checked against the CPU reference.
//!
//!     cargo run --release --example quickstart
//!
//! Exit codes: 0 the result is within f32's tolerance of the reference, 1 it is not (or a call
//! failed on the GPU), 3 no usable GPU (no driver or GPU, kernels not built, a GPU too old).

use fusedrop::cuda::{self, forward::ForwardOptions, LayerKernels};
use fusedrop::{reference, DropoutGenerator, Element, Error, LayerSpec, LinearShape, Nonlinearity};

/// Runs the call and compares it; `Ok(false)` when the result is outside the tolerance.
fn run() -> fusedrop::Result<bool> {
    let ctx = cuda::open_device(0)?; // an error, never a panic, without a driver
    let kernels = LayerKernels::new(ctx.default_stream())?; // loads the kernels once
    let stream = kernels.stream();
    let (m, n, k) = (512, 1024, 768);
    let x_host: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) / 7.0).collect();
    let w_host: Vec<f32> = (0..n * k).map(|i| ((i % 11) as f32 - 5.0) / 50.0).collect();
    let b_host: Vec<f32> = (0..n).map(|i| (i % 5) as f32 / 10.0).collect();
    let x = stream.clone_htod(&x_host)?;
    let w = stream.clone_htod(&w_host)?;
    let b = stream.clone_htod(&b_host)?;
    let mut y = stream.alloc_zeros::<f32>(m * n)?;

    let mut rng = DropoutGenerator::new(1234); // a fresh Philox subsequence for every call
    let spec = LayerSpec::new(LinearShape::new(m, n, k), Nonlinearity::Relu, rng.next(0.1));
    kernels.forward(
        &spec,
        &x,
        &w,
        Some(&b.as_view()),
        &mut y,
        ForwardOptions::default(),
    )?;
    let y_gpu = stream.clone_dtoh(&y)?; // the caller decides when to synchronise

    let y_cpu = reference::forward_f64(&spec, &x_host, &w_host, Some(&b_host))?;
    let got: Vec<f64> = y_gpu.iter().map(|&v| f64::from(v)).collect();
    let kept = y_gpu.iter().filter(|&&v| v != 0.0).count();
    let error = reference::relative_l2_error(&got, &y_cpu);
    println!(
        "{m}x{n}x{k} f32, p = 0.1: {kept} of {} outputs non-zero, relative L2 error against the \
         CPU reference {error:.1e} (f32's tolerance: {:.0e})",
        m * n,
        f32::REL_L2_TOLERANCE
    );
    Ok(error < f32::REL_L2_TOLERANCE)
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("quickstart: the GPU result is outside f32's tolerance");
            std::process::exit(1);
        }
        Err(
            e
            @ (Error::KernelsNotBuilt | Error::DriverUnavailable(_) | Error::UnsupportedDevice(_)),
        ) => {
            eprintln!("quickstart: no usable GPU: {e}");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::exit(1);
        }
    }
}
