//! Opening a GPU never panics: without the kernels or without a driver it is an error that says
//! which, and with both it succeeds. The assertions differ by machine, but every machine asserts.

use fusedrop::cuda;
use fusedrop::Error;

#[test]
fn open_device_errors_instead_of_panicking() {
    let result = std::panic::catch_unwind(|| cuda::open_device(0));
    let result = result.expect("open_device(0) panicked; it must return an error instead");
    match (cuda::kernels_built(), cuda::driver_present()) {
        (false, _) => {
            // Checked first: a build without kernels cannot use a GPU even if one is present.
            let err = result.expect_err("a build without kernels must not open a device");
            assert_eq!(err, Error::KernelsNotBuilt);
            assert!(err.to_string().contains("kernels were not built"), "{err}");
            println!("kernels not built: open_device(0) returned {err}");
        }
        (true, false) => {
            let err = result.expect_err("open_device(0) without a driver must fail");
            match &err {
                Error::DriverUnavailable(msg) => assert!(msg.contains("libcuda"), "{msg}"),
                other => panic!("expected DriverUnavailable, got {other:?}"),
            }
            assert!(
                err.to_string().starts_with("no usable CUDA driver"),
                "{err}"
            );
            println!("no driver: open_device(0) returned {err}");
        }
        (true, true) => {
            // A driver is present: with a GPU, GPU 0 must open; a driver that sees no GPU (a
            // container without devices) must still give an error, not a panic.
            let gpus = cuda::cudarc::driver::CudaContext::device_count().unwrap_or(0);
            if gpus > 0 {
                let ctx =
                    result.unwrap_or_else(|e| panic!("{gpus} GPU(s) but open_device(0): {e}"));
                // The handle reads what the driver reports, and loads the modules for it.
                let kernels = cuda::LayerKernels::new(ctx.default_stream())
                    .unwrap_or_else(|e| panic!("GPU 0 opened but LayerKernels::new: {e}"));
                let (major, minor) = ctx.compute_capability().expect("query compute capability");
                assert_eq!(kernels.compute_capability(), (major, minor));
                assert!(major >= 1, "implausible compute capability {major}.{minor}");
                assert!(kernels.sm_count() >= 1);
                let other = ctx.new_stream().expect("a second stream");
                let side = kernels
                    .on_stream(other.clone())
                    .unwrap_or_else(|e| panic!("on_stream of the same context: {e}"));
                assert!(std::sync::Arc::ptr_eq(side.stream(), &other));
                println!("GPU 0 opened: compute capability {major}.{minor}, {kernels:?}");
            } else {
                let err = result.expect_err("a driver with no GPU must not open GPU 0");
                assert!(matches!(err, Error::DriverUnavailable(_)), "{err:?}");
                println!("driver present but no GPU: {err}");
            }
        }
    }
}

#[test]
fn an_out_of_range_ordinal_is_an_error() {
    let result = std::panic::catch_unwind(|| cuda::open_device(usize::MAX));
    let err = result
        .expect("open_device(usize::MAX) panicked")
        .expect_err("no machine has usize::MAX GPUs");
    assert!(
        matches!(err, Error::KernelsNotBuilt | Error::DriverUnavailable(_)),
        "{err:?}"
    );
}
