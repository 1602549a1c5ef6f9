//! The cuBLASLt baselines (tools/src/baseline.rs) against f64 products on odd shapes, in every
//! dtype, and their refusals of bad calls. Needs a GPU and cuBLASLt: skipped with a message
//! without them, except under `FUSEDROP_REQUIRE_GPU=1` (scripts/gpu-check.sh, which runs every
//! `gpu_*` test executable of the bundle), where not reaching them is a failure.

use fusedrop::reference::{relative_l2_error, to_f64};
use fusedrop::{Element, Error, LinearShape, Result};
use fusedrop_tools::baseline::{Blas, GemmOp, GemmPlan};
use fusedrop_tools::bench::random_nonzero;
use half::{bf16, f16};

#[path = "../../tests/common/gpu_open.rs"]
mod gpu_open;
use gpu_open::open_or_skip;

fn blas() -> Option<Blas> {
    open_or_skip("the cuBLASLt baseline checks", || {
        let ctx = fusedrop::cuda::open_device(0)?;
        Blas::new(&ctx.default_stream())
    })
}

/// `out[r, c] = Σ_i a[r, i] · b[c, i]` for row-major `a` `[rows, inner]`, `b` `[cols, inner]`.
fn abt(a: &[f64], b: &[f64], rows: usize, cols: usize, inner: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = (0..inner)
                .map(|i| a[r * inner + i] * b[c * inner + i])
                .sum();
        }
    }
    out
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

fn assert_close<T: Element>(what: &str, got: &[T], want: &[f64]) {
    let err = relative_l2_error(&to_f64(got), want);
    assert!(
        err < T::REL_L2_TOLERANCE,
        "{what} in {}: relative L2 error {err:e} >= {:e}",
        T::NAME,
        T::REL_L2_TOLERANCE
    );
}

/// Runs `run` with each algorithm the plan's heuristic offered (the bench launches the fastest
/// of them, so every one must be right).
fn each_algorithm<T: Element>(
    plan: &mut GemmPlan<'_, T>,
    mut run: impl FnMut(&GemmPlan<'_, T>, usize) -> Result<()>,
) -> Result<()> {
    assert!(plan.candidates() >= 1, "a plan has an algorithm");
    for index in 0..plan.candidates() {
        plan.choose(index)?;
        run(plan, index)?;
    }
    Ok(())
}

fn check<T: Element>(blas: &Blas, shape: LinearShape) -> Result<()> {
    let LinearShape { m, n, k } = shape;
    let stream = blas.stream();
    let (x, w, b, dz) = (
        random_nonzero::<T>(m * k, 1),
        random_nonzero::<T>(n * k, 2),
        random_nonzero::<T>(n, 3),
        random_nonzero::<T>(m * n, 4),
    );
    let (xf, wf, bf, dzf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dz));
    let (x_d, w_d, b_d, dz_d) = (
        stream.clone_htod(&x)?,
        stream.clone_htod(&w)?,
        stream.clone_htod(&b)?,
        stream.clone_htod(&dz)?,
    );
    let nan = T::from_f32(f32::NAN);
    let mut y = stream.clone_htod(&vec![nan; m * n])?;
    let mut dx = stream.clone_htod(&vec![nan; m * k])?;
    let mut dw = stream.clone_htod(&vec![nan; n * k])?;
    let mut db = stream.clone_htod(&vec![nan; n])?;

    // Each output poisoned again before each algorithm runs, so that one writing nothing fails.
    let z = abt(&xf, &wf, m, n, k);
    each_algorithm(&mut blas.plan::<T>(GemmOp::Forward, shape)?, |plan, i| {
        stream.memcpy_htod(&vec![nan; m * n], &mut y)?;
        plan.forward(&x_d, &w_d, &mut y)?;
        assert_close(&format!("X·Wᵀ, algorithm {i}"), &stream.clone_dtoh(&y)?, &z);
        Ok(())
    })?;

    let relu: Vec<f64> = (0..m * n).map(|i| (z[i] + bf[i % n]).max(0.0)).collect();
    each_algorithm(
        &mut blas.plan::<T>(GemmOp::ForwardReluBias, shape)?,
        |plan, i| {
            stream.memcpy_htod(&vec![nan; m * n], &mut y)?;
            plan.forward_relu_bias(&x_d, &w_d, &b_d, &mut y)?;
            let what = format!("relu(X·Wᵀ + b), algorithm {i}");
            assert_close(&what, &stream.clone_dtoh(&y)?, &relu);
            Ok(())
        },
    )?;

    let dx_want = abt(&dzf, &transpose(&wf, n, k), m, k, n);
    each_algorithm(
        &mut blas.plan::<T>(GemmOp::BackwardData, shape)?,
        |plan, i| {
            stream.memcpy_htod(&vec![nan; m * k], &mut dx)?;
            plan.backward_data(&dz_d, &w_d, &mut dx)?;
            assert_close(
                &format!("dZ·W, algorithm {i}"),
                &stream.clone_dtoh(&dx)?,
                &dx_want,
            );
            Ok(())
        },
    )?;

    let dw_want = abt(&transpose(&dzf, m, n), &transpose(&xf, m, k), n, k, m);
    each_algorithm(
        &mut blas.plan::<T>(GemmOp::BackwardWeight, shape)?,
        |plan, i| {
            stream.memcpy_htod(&vec![nan; n * k], &mut dw)?;
            plan.backward_weight(&dz_d, &x_d, &mut dw)?;
            assert_close(
                &format!("dZᵀ·X, algorithm {i}"),
                &stream.clone_dtoh(&dw)?,
                &dw_want,
            );
            Ok(())
        },
    )?;

    let db_want: Vec<f64> = (0..n)
        .map(|c| (0..m).map(|r| dzf[r * n + c]).sum())
        .collect();
    match blas.plan::<T>(GemmOp::BackwardWeightBiasGrad, shape) {
        Ok(mut plan) => each_algorithm(&mut plan, |plan, i| {
            let mut dw2 = stream.clone_htod(&vec![nan; n * k])?;
            stream.memcpy_htod(&vec![nan; n], &mut db)?;
            plan.backward_weight_bias_grad(&dz_d, &x_d, &mut dw2, &mut db)?;
            let what = format!("dZᵀ·X with BGRADB, algorithm {i}");
            assert_close(&what, &stream.clone_dtoh(&dw2)?, &dw_want);
            assert_close(
                &format!("BGRADB db, algorithm {i}"),
                &stream.clone_dtoh(&db)?,
                &db_want,
            );
            Ok(())
        })?,
        // cuBLASLt may offer no BGRADB algorithm for a type (the bench then times dW without db
        // and its rows' note says so); any other error is a fault of the plan.
        Err(e) => {
            assert!(
                e.to_string().contains("CUBLAS_STATUS_NOT_SUPPORTED"),
                "BGRADB plan for {} {shape:?}: {e}",
                T::NAME
            );
            println!("BGRADB not offered for {} {shape:?}: {e}", T::NAME);
        }
    }
    Ok(())
}

#[test]
fn baselines_match_the_f64_products_on_odd_shapes() {
    let Some(blas) = blas() else { return };
    for shape in [LinearShape::new(37, 61, 53), LinearShape::new(64, 128, 96)] {
        check::<f32>(&blas, shape).expect("f32 baselines run");
        check::<f16>(&blas, shape).expect("f16 baselines run");
        check::<bf16>(&blas, shape).expect("bf16 baselines run");
    }
}

#[test]
fn plans_reject_empty_shapes_and_launches_reject_wrong_lengths() {
    let Some(blas) = blas() else { return };
    let stream = blas.stream();
    let empty = blas.plan::<f32>(GemmOp::Forward, LinearShape::new(0, 4, 4));
    assert!(matches!(empty, Err(Error::InvalidArgument(_))), "{empty:?}");
    let plan = blas
        .plan::<f32>(GemmOp::Forward, LinearShape::new(4, 4, 4))
        .expect("a 4x4x4 plan");
    let x = stream.alloc_zeros::<f32>(16).expect("alloc");
    let w = stream.alloc_zeros::<f32>(15).expect("alloc");
    let mut y = stream.alloc_zeros::<f32>(16).expect("alloc");
    let err = plan
        .forward(&x, &w, &mut y)
        .expect_err("W is one element short");
    assert!(err.to_string().contains("W has 15 elements"), "{err}");
    let err = plan
        .backward_data(&x, &x, &mut y)
        .expect_err("a Forward plan cannot run backward_data");
    assert!(err.to_string().contains("Forward"), "{err}");
    let mut plan = plan;
    let offered = plan.candidates();
    let err = plan
        .choose(offered)
        .expect_err("no algorithm past the heuristic's last");
    assert!(
        err.to_string()
            .contains(&format!("the heuristic offered {offered}")),
        "{err}"
    );
    assert_eq!(plan.chosen(), 0, "a refused choice keeps the algorithm");
}
