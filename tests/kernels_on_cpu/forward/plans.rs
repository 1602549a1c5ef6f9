//! The wrapper's whole forward (`forward_plan`: what `LayerKernels::forward` picks) on the
//! harness.

use super::*;

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
        misalign,
        ..ForwardCase::relu(LinearShape::new(m, n, k))
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
