//! The shared validation layer (src/validate.rs), exercised through the CPU reference and
//! directly: one test per kind of bad input, each checking the error variant and that the
//! message names the problem, plus a sweep of malformed calls that must never panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fusedrop::reference;
use fusedrop::validate::{self, BackwardLens, ForwardLens, GradientLens};
use fusedrop::{DropoutSpec, Error, Geometry, LayerSpec, LinearShape, Nonlinearity};
use half::f16;

/// Asserts `result` is an `InvalidArgument` whose message contains every one of `needles`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: fusedrop::Result<T>, needles: &[&str]) {
    match result {
        Err(Error::InvalidArgument(msg)) => {
            for needle in needles {
                assert!(
                    msg.contains(needle),
                    "message {msg:?} does not mention {needle:?}"
                );
            }
            // The Display form carries the message too.
            assert!(Error::InvalidArgument(msg.clone())
                .to_string()
                .contains(&msg));
        }
        other => panic!("expected InvalidArgument mentioning {needles:?}, got {other:?}"),
    }
}

const M: usize = 3;
const N: usize = 5;
const K: usize = 4;

fn layer(nonlinearity: Nonlinearity, p: f32) -> LayerSpec {
    LayerSpec::new(
        LinearShape::new(M, N, K),
        nonlinearity,
        DropoutSpec::new(p, 1, 2),
    )
}

fn buffers() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        vec![0.5; M * K],
        vec![-0.25; N * K],
        vec![0.125; N],
        vec![0.75; M * N],
    )
}

#[test]
fn well_formed_calls_succeed() {
    let (x, w, b, dy) = buffers();
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        let spec = layer(nonlinearity, 0.5);
        let y = reference::forward(&spec, &x, &w, Some(&b)).unwrap();
        assert_eq!(y.len(), M * N);
        let g = reference::backward(&spec, &x, &w, &dy, Some(&y)).unwrap();
        assert_eq!((g.dx.len(), g.dw.len(), g.db.len()), (M * K, N * K, N));
    }
}

#[test]
fn wrong_x_length() {
    let (x, w, b, dy) = buffers();
    let spec = layer(Nonlinearity::Relu, 0.1);
    assert_invalid(
        reference::forward(&spec, &x[1..], &w, Some(&b)),
        &["X has 11 elements", "expected 12", "m*k = 3*4"],
    );
    assert_invalid(
        reference::backward(&spec, &x[1..], &w, &dy, Some(&dy)),
        &["X has 11 elements", "expected 12"],
    );
}

#[test]
fn wrong_w_length() {
    let (x, mut w, b, dy) = buffers();
    w.push(1.0);
    let spec = layer(Nonlinearity::Identity, 0.1);
    assert_invalid(
        reference::forward(&spec, &x, &w, Some(&b)),
        &["W has 21 elements", "expected 20", "n*k = 5*4"],
    );
    assert_invalid(
        reference::backward(&spec, &x, &w, &dy, None),
        &["W has 21 elements", "expected 20"],
    );
    assert_invalid(
        reference::preactivation_f64(spec.shape, &x, &w, None),
        &["W has 21 elements"],
    );
}

#[test]
fn wrong_bias_length() {
    let (x, w, b, _) = buffers();
    let spec = layer(Nonlinearity::Relu, 0.0);
    assert_invalid(
        reference::forward(&spec, &x, &w, Some(&b[..4])),
        &[
            "b has 4 elements",
            "expected 5",
            "one bias per output feature",
        ],
    );
    assert_invalid(
        reference::forward(&spec, &x, &w, Some(&[])),
        &["b has 0 elements"],
    );
}

#[test]
fn wrong_output_length() {
    // The reference allocates its own output; the GPU wrappers take Y from the caller.
    let lens = ForwardLens {
        x: M * K,
        w: N * K,
        b: None,
        y: M * N + 1,
    };
    let result =
        validate::check_forward(LinearShape::new(M, N, K), 0.5, &Geometry::UNSHARDED, lens);
    assert_invalid(result, &["Y has 16 elements", "expected 15", "m*n = 3*5"]);
}

#[test]
fn wrong_dy_length() {
    let (x, w, _, dy) = buffers();
    let spec = layer(Nonlinearity::Identity, 0.3);
    assert_invalid(
        reference::backward(&spec, &x, &w, &dy[..14], None),
        &["dY has 14 elements", "expected 15", "m*n = 3*5"],
    );
}

#[test]
fn wrong_y_saved_length() {
    let (x, w, _, dy) = buffers();
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        let spec = layer(nonlinearity, 0.3);
        assert_invalid(
            reference::backward(&spec, &x, &w, &dy, Some(&dy[..10])),
            &["y_saved has 10 elements", "expected 15"],
        );
    }
}

#[test]
fn wrong_gradient_lengths() {
    let shape = LinearShape::new(M, N, K);
    let all = GradientLens {
        dx: Some(M * K),
        dw: Some(N * K),
        db: Some(N),
    };
    assert!(validate::check_gradients(shape, all).is_ok());
    let none = GradientLens {
        dx: None,
        dw: None,
        db: None,
    };
    assert!(validate::check_gradients(shape, none).is_ok());
    assert_invalid(
        validate::check_gradients(
            shape,
            GradientLens {
                dx: Some(M * K + 1),
                ..all
            },
        ),
        &["dX has 13 elements", "expected 12 (m*k = 3*4)"],
    );
    assert_invalid(
        validate::check_gradients(
            shape,
            GradientLens {
                dw: Some(N * K - 1),
                ..none
            },
        ),
        &["dW has 19 elements", "expected 20 (n*k = 5*4)"],
    );
    assert_invalid(
        validate::check_gradients(
            shape,
            GradientLens {
                db: Some(M),
                ..none
            },
        ),
        &["db has 3 elements", "expected 5 (n = 5"],
    );
    // A shape whose dX would hold 2^64 elements is refused, not multiplied into a wrapped 0.
    assert_invalid(
        validate::check_gradients(
            LinearShape::new(1 << 33, 1, 1 << 31),
            GradientLens {
                dx: Some(0),
                ..none
            },
        ),
        &["m*k (elements of X) = 8589934592 x 2147483648 overflows"],
    );
}

#[test]
fn relu_backward_without_y_saved() {
    let (x, w, _, dy) = buffers();
    let spec = layer(Nonlinearity::Relu, 0.3);
    assert_invalid(
        reference::backward(&spec, &x, &w, &dy, None),
        &["ReLU backward needs y_saved", "got none"],
    );
    let lens = BackwardLens {
        x: M * K,
        w: N * K,
        dy: M * N,
        y_saved: None,
    };
    assert_invalid(validate::check_backward(&spec, lens), &["y_saved"]);
    // Identity backward regenerates the mask and needs no saved output.
    let identity = layer(Nonlinearity::Identity, 0.3);
    assert!(reference::backward(&identity, &x, &w, &dy, None).is_ok());
}

#[test]
fn zero_input_features_is_an_error() {
    let spec = LayerSpec::new(
        LinearShape::new(M, N, 0),
        Nonlinearity::Relu,
        DropoutSpec::NONE,
    );
    assert_invalid(
        reference::forward::<f32>(&spec, &[], &[], None),
        &["k = 0", "expected k >= 1"],
    );
    assert_invalid(
        reference::backward::<f32>(&spec, &[], &[], &[0.0; M * N], Some(&[0.0; M * N])),
        &["k = 0"],
    );
    assert_invalid(
        reference::preactivation_f64::<f32>(spec.shape, &[], &[], None),
        &["k = 0"],
    );
}

#[test]
fn empty_output_is_a_no_op() {
    let w = vec![0.5f32; N * K];
    let b = vec![0.25f32; N];
    let x = vec![0.5f32; M * K];
    // m = 0: no rows. The forward output is empty; dX is empty; dW and db are zeros.
    let spec = LayerSpec::new(
        LinearShape::new(0, N, K),
        Nonlinearity::Relu,
        DropoutSpec::new(0.5, 1, 2),
    );
    assert_eq!(
        reference::forward(&spec, &[], &w, Some(&b)).unwrap(),
        Vec::<f32>::new()
    );
    let g = reference::backward::<f32>(&spec, &[], &w, &[], Some(&[])).unwrap();
    assert!(g.dx.is_empty());
    assert_eq!(g.dw, vec![0.0; N * K]);
    assert_eq!(g.db, vec![0.0; N]);
    // n = 0: no output features. dX is zeros; dW and db are empty.
    let spec = LayerSpec::new(
        LinearShape::new(M, 0, K),
        Nonlinearity::Identity,
        DropoutSpec::new(0.5, 1, 2),
    );
    assert_eq!(
        reference::forward(&spec, &x, &[], Some(&[])).unwrap(),
        Vec::<f32>::new()
    );
    let g = reference::backward::<f32>(&spec, &x, &[], &[], None).unwrap();
    assert_eq!(g.dx, vec![0.0; M * K]);
    assert!(g.dw.is_empty() && g.db.is_empty());
    // The validation layer tells backends there is nothing to launch.
    let lens = ForwardLens {
        x: M * K,
        w: 0,
        b: None,
        y: 0,
    };
    assert_eq!(
        validate::check_forward(spec.shape, 0.5, &Geometry::UNSHARDED, lens),
        Ok(false)
    );
    let lens = BackwardLens {
        x: M * K,
        w: 0,
        dy: 0,
        y_saved: None,
    };
    assert_eq!(validate::check_backward(&spec, lens), Ok(false));
}

#[test]
fn sizes_whose_index_arithmetic_overflows() {
    let huge = 1usize << 40;
    for (shape, needle) in [
        (LinearShape::new(huge, 1, huge), "m*k"),
        (LinearShape::new(1, huge, huge), "n*k"),
        (LinearShape::new(huge, huge, 1), "m*n"),
        (LinearShape::new(usize::MAX, 1, 2), "m*k"),
        (LinearShape::new(1, 1, usize::MAX), "m*k"),
    ] {
        let spec = LayerSpec::new(shape, Nonlinearity::Relu, DropoutSpec::NONE);
        assert_invalid(
            reference::forward::<f32>(&spec, &[1.0], &[1.0], None),
            &[needle, "overflows 64-bit index arithmetic"],
        );
        assert_invalid(
            reference::backward::<f32>(&spec, &[1.0], &[1.0], &[1.0], Some(&[1.0])),
            &[needle, "overflows"],
        );
        assert_invalid(validate::check_shape(shape), &[needle, "overflows"]);
    }
    // 2^63 elements is one too many even though it fits a u64.
    assert_invalid(
        validate::check_shape(LinearShape::new(1 << 32, 1 << 31, 1)),
        &["m*n", "overflows"],
    );
}

#[test]
fn a_reference_result_beyond_host_memory_is_an_error() {
    // A valid shape with one input feature: X and W hold 2^23 elements each, Y would hold 2^46
    // (512 TiB of f64), more than any host's address space or memory.
    let side = 1usize << 23;
    let one = vec![f16::ONE; side];
    let spec = LayerSpec::new(
        LinearShape::new(side, side, 1),
        Nonlinearity::Relu,
        DropoutSpec::NONE,
    );
    assert_invalid(
        reference::forward::<f16>(&spec, &one, &one, None),
        &[
            "cannot be allocated",
            "expected a shape whose f64 result fits",
        ],
    );
}

#[test]
fn geometry_out_of_range() {
    let (x, w, b, dy) = buffers();
    let base = layer(Nonlinearity::Identity, 0.5);
    let cases = [
        (
            Geometry {
                row_offset: 0,
                col_offset: 1,
                n_global: Some(N as u64),
            },
            vec!["col_offset 1 + n 5 exceeds n_global 5"],
        ),
        (
            Geometry {
                row_offset: 0,
                col_offset: 0,
                n_global: Some(4),
            },
            vec!["exceeds n_global 4"],
        ),
        (
            Geometry {
                row_offset: 0,
                col_offset: u64::MAX,
                n_global: Some(u64::MAX),
            },
            vec!["col_offset", "exceeds n_global"],
        ),
        (
            Geometry {
                row_offset: u64::MAX - 1,
                col_offset: 0,
                n_global: None,
            },
            vec!["row_offset", "overflows the 63-bit mask index"],
        ),
        (
            Geometry {
                row_offset: 1 << 40,
                col_offset: 0,
                n_global: Some(1 << 30),
            },
            vec!["row_offset", "overflows"],
        ),
    ];
    for (geometry, needles) in cases {
        let spec = base.with_geometry(geometry);
        assert_invalid(reference::forward(&spec, &x, &w, Some(&b)), &needles);
        assert_invalid(reference::backward(&spec, &x, &w, &dy, None), &needles);
        assert_invalid(validate::check_geometry(&geometry, M, N), &needles);
    }
    // The largest valid logical output is accepted.
    let last = Geometry {
        row_offset: (i64::MAX as u64) / (N as u64) - M as u64,
        col_offset: 0,
        n_global: None,
    };
    assert!(reference::forward(&base.with_geometry(last), &x, &w, Some(&b)).is_ok());
}

#[test]
fn probability_below_zero_above_one_or_not_a_number() {
    let (x, w, b, dy) = buffers();
    for p in [
        -0.1f32,
        -0.0 - f32::MIN_POSITIVE,
        1.0001,
        2.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let spec = layer(nonlinearity, p);
            let shown = format!("p = {p}");
            let needles = [shown.as_str(), "outside [0, 1]", "expected 0 <= p <= 1"];
            assert_invalid(reference::forward(&spec, &x, &w, Some(&b)), &needles);
            assert_invalid(reference::backward(&spec, &x, &w, &dy, Some(&dy)), &needles);
        }
        assert_invalid(validate::check_probability(p), &["outside [0, 1]"]);
    }
    for p in [0.0f32, -0.0, 1e-30, 0.5, 1.0] {
        assert_eq!(validate::check_probability(p), Ok(()));
    }
}

#[test]
fn reference_dropout_checks_its_arguments() {
    let dropout = DropoutSpec::new(0.5, 1, 2);
    let mut y = vec![1.0f32; M * N];
    assert!(
        reference::dropout_in_place(&mut y, M, N, &dropout, &Geometry::UNSHARDED).is_ok(),
        "a well-formed call"
    );
    assert_invalid(
        reference::dropout_in_place(&mut y[1..], M, N, &dropout, &Geometry::UNSHARDED),
        &["Y has 14 elements", "expected 15"],
    );
    assert_invalid(
        reference::dropout_in_place(
            &mut y,
            M,
            N,
            &DropoutSpec::new(1.5, 1, 2),
            &Geometry::UNSHARDED,
        ),
        &["p = 1.5", "expected 0 <= p <= 1"],
    );
    assert_invalid(
        reference::dropout_in_place(&mut y, usize::MAX, 2, &dropout, &Geometry::UNSHARDED),
        &["overflows", "expected at most 2^63-1"],
    );
    // A shard of n columns from column 1 of a logical output n wide.
    let outside = Geometry {
        row_offset: 0,
        col_offset: 1,
        n_global: Some(N as u64),
    };
    assert_invalid(
        reference::dropout_in_place(&mut y, M, N, &dropout, &outside),
        &["col_offset 1 + n 5 exceeds n_global 5"],
    );
}

#[test]
fn no_malformed_call_panics() {
    // Every combination of odd sizes, wrong lengths, bad probabilities and geometries: each call
    // must return (Ok or Err), never panic.
    let sizes = [0usize, 1, 3, 1 << 33, usize::MAX];
    let probabilities = [0.0f32, 0.5, 1.0, -1.0, f32::NAN];
    let geometries = [
        Geometry::UNSHARDED,
        Geometry {
            row_offset: 2,
            col_offset: 1,
            n_global: Some(4),
        },
        Geometry {
            row_offset: u64::MAX,
            col_offset: u64::MAX,
            n_global: Some(0),
        },
    ];
    let data = [f16::from_f32(0.5); 16];
    let lens = [0usize, 1, 3, 9];
    let mut calls = 0;
    for &m in &sizes {
        for &n in &sizes {
            for &k in &sizes {
                for &p in &probabilities {
                    for geometry in geometries {
                        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
                            let spec = LayerSpec::new(
                                LinearShape::new(m, n, k),
                                nonlinearity,
                                DropoutSpec::new(p, 9, 9),
                            )
                            .with_geometry(geometry);
                            for &len in &lens {
                                let s = &data[..len];
                                let outcome = catch_unwind(AssertUnwindSafe(|| {
                                    let _ = reference::forward(&spec, s, s, Some(s));
                                    let _ = reference::forward(&spec, s, s, None);
                                    let _ = reference::backward(&spec, s, s, s, Some(s));
                                    let _ = reference::backward(&spec, s, s, s, None);
                                    let _ = reference::preactivation_f64(spec.shape, s, s, Some(s));
                                }));
                                assert!(
                                    outcome.is_ok(),
                                    "panicked on {spec:?} with buffers of {len}"
                                );
                                calls += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(calls, 5 * 5 * 5 * 5 * 3 * 2 * 4);
}
