//! The CPU reference (src/reference.rs) checked against first principles: finite differences for
//! the gradients, a naive triple loop for the forward pass, shards against the unsharded layer,
//! the p = 0 and p = 1 limits, rounding once into each element type, and NaN and infinities as
//! docs/mask-contract.md ("Non-finite values", "Backward without a mask") defines them.

use fusedrop::reference::{self, relative_l2_error, to_f64};
use fusedrop::{mask, DropoutSpec, Element, Geometry, LayerSpec, LinearShape, Nonlinearity};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fresh random generator for this run, its seed printed so a failure can be reproduced.
fn test_rng(what: &str) -> StdRng {
    let seed: u64 = rand::random();
    println!("{what}: random inputs from StdRng::seed_from_u64({seed:#x})");
    StdRng::seed_from_u64(seed)
}

/// `len` values uniform in [-1, 1], rounded into `T`.
fn random<T: Element>(rng: &mut StdRng, len: usize) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f64(rng.random_range(-1.0..=1.0)))
        .collect()
}

/// `len` nonzero multiples of 1/256 in [-1, 1]: exact in f32 even after adding ±1/512.
fn dyadic(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(1..=256) as f32 / 256.0;
            if rng.random() {
                v
            } else {
                -v
            }
        })
        .collect()
}

/// The layer written as plainly as possible, in f64: a check of the reference's tiling,
/// threading and mask runs. Sums run over k in order from 0, as the reference documents.
fn naive_forward<T: Element>(spec: &LayerSpec, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<f64> {
    let LinearShape { m, n, k } = spec.shape;
    let d = spec.dropout;
    let scale = f64::from(mask::scale(d.p));
    let mut y = vec![0.0; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut z = 0.0f64;
            for t in 0..k {
                z += x[r * k + t].to_f64() * w[c * k + t].to_f64();
            }
            if let Some(b) = b {
                z += b[c].to_f64();
            }
            // ReLU passes NaN and positive values (docs/mask-contract.md, "Non-finite values").
            let a = match spec.nonlinearity {
                Nonlinearity::Relu if !(z > 0.0 || z.is_nan()) => 0.0,
                _ => z,
            };
            let kept = mask::keep(
                d.seed,
                d.subsequence,
                d.p,
                spec.geometry.linear_index(n, r, c),
            );
            y[r * n + c] = a * if kept { scale } else { 0.0 };
        }
    }
    y
}

fn spec(
    m: usize,
    n: usize,
    k: usize,
    nonlinearity: Nonlinearity,
    p: f32,
    rng: &mut StdRng,
) -> LayerSpec {
    LayerSpec::new(
        LinearShape::new(m, n, k),
        nonlinearity,
        DropoutSpec::new(p, rng.random(), rng.random()),
    )
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|e| e.to_f64().to_bits()).collect()
}

#[test]
fn forward_equals_the_naive_triple_loop() {
    let mut rng = test_rng("naive");
    // Odd shapes, one large enough to be split over threads, with and without bias.
    for (m, n, k) in [(1, 1, 1), (3, 5, 7), (37, 29, 13), (131, 257, 67)] {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            for p in [0.0, 0.1, 0.5, 1.0] {
                let spec = spec(m, n, k, nonlinearity, p, &mut rng);
                let x = random::<f32>(&mut rng, m * k);
                let w = random::<f32>(&mut rng, n * k);
                let b = random::<f32>(&mut rng, n);
                for bias in [None, Some(b.as_slice())] {
                    let got = reference::forward_f64(&spec, &x, &w, bias).unwrap();
                    let want = naive_forward(&spec, &x, &w, bias);
                    let bits_of = |v: &[f64]| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits_of(&got),
                        bits_of(&want),
                        "{m}x{n}x{k} {nonlinearity:?} p {p} bias {}",
                        bias.is_some()
                    );
                }
            }
        }
    }
}

#[test]
fn preactivation_is_the_affine_map() {
    let mut rng = test_rng("preactivation");
    let (m, n, k) = (9, 11, 6);
    let x = random::<bf16>(&mut rng, m * k);
    let w = random::<bf16>(&mut rng, n * k);
    let b = random::<bf16>(&mut rng, n);
    let shape = LinearShape::new(m, n, k);
    let z = reference::preactivation_f64(shape, &x, &w, Some(&b)).unwrap();
    let identity = LayerSpec::new(shape, Nonlinearity::Identity, DropoutSpec::NONE);
    assert_eq!(z, naive_forward(&identity, &x, &w, Some(&b)));
    assert_eq!(
        z,
        reference::forward_f64(&identity, &x, &w, Some(&b)).unwrap()
    );
}

#[test]
fn p_zero_is_plain_linear_and_activation() {
    let mut rng = test_rng("p = 0");
    let (m, n, k) = (23, 19, 17);
    let x = random::<f32>(&mut rng, m * k);
    let w = random::<f32>(&mut rng, n * k);
    let b = random::<f32>(&mut rng, n);
    let shape = LinearShape::new(m, n, k);
    let z = reference::preactivation_f64(shape, &x, &w, Some(&b)).unwrap();
    assert!(z.iter().any(|&v| v < 0.0) && z.iter().any(|&v| v > 0.0));
    for (nonlinearity, act) in [
        (Nonlinearity::Relu, (|v: f64| v.max(0.0)) as fn(f64) -> f64),
        (Nonlinearity::Identity, |v| v),
    ] {
        // Any seed and subsequence: with p = 0 nothing is dropped and nothing is scaled.
        let spec = LayerSpec::new(
            shape,
            nonlinearity,
            DropoutSpec::new(0.0, rng.random(), rng.random()),
        );
        let y = reference::forward_f64(&spec, &x, &w, Some(&b)).unwrap();
        let want: Vec<f64> = z.iter().map(|&v| act(v)).collect();
        assert_eq!(y, want, "{nonlinearity:?}");
    }
}

#[test]
fn p_one_gives_zero_output_and_zero_gradients() {
    let mut rng = test_rng("p = 1");
    let (m, n, k) = (13, 21, 5);
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        let spec = spec(m, n, k, nonlinearity, 1.0, &mut rng);
        let x = random::<f16>(&mut rng, m * k);
        let w = random::<f16>(&mut rng, n * k);
        let b = random::<f16>(&mut rng, n);
        let y = reference::forward(&spec, &x, &w, Some(&b)).unwrap();
        assert_eq!(y.len(), m * n);
        assert!(
            y.iter().all(|v| v.to_f64() == 0.0),
            "{nonlinearity:?}: forward not all zero"
        );
        let dy = random::<f16>(&mut rng, m * n);
        let g = reference::backward(&spec, &x, &w, &dy, Some(&y)).unwrap();
        for (name, v) in [("dx", &g.dx), ("dw", &g.dw), ("db", &g.db)] {
            assert!(
                v.iter().all(|v| v.to_f64() == 0.0),
                "{nonlinearity:?}: {name} not all zero"
            );
        }
    }
}

/// Σ dy ⊙ forward_f64(x, w, b): the scalar loss whose gradients backward computes.
fn loss(spec: &LayerSpec, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> f64 {
    let y = reference::forward_f64(spec, x, w, Some(b)).unwrap();
    y.iter().zip(dy).map(|(y, g)| y * f64::from(*g)).sum()
}

/// Central differences of the loss with respect to each element of `which` (0: x, 1: w, 2: b).
fn numeric_gradient(spec: &LayerSpec, inputs: [&[f32]; 3], dy: &[f32], which: usize) -> Vec<f64> {
    // A power of two, so that every perturbed dyadic input is exact in f32.
    let h = 1.0f32 / 512.0;
    (0..inputs[which].len())
        .map(|j| {
            let at = |delta: f32| {
                let mut v = inputs.map(<[f32]>::to_vec);
                v[which][j] += delta;
                loss(spec, &v[0], &v[1], &v[2], dy)
            };
            (at(h) - at(-h)) / (2.0 * f64::from(h))
        })
        .collect()
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = test_rng("finite differences");
    let (m, n, k) = (5, 7, 3);
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        for p in [0.0, 0.3] {
            let spec = spec(m, n, k, nonlinearity, p, &mut rng);
            // The layer is piecewise linear, so central differences are exact away from ReLU's
            // kink: draw inputs until every pre-activation is clear of it by far more than the
            // step can move it (at most 3 * 1/512 here).
            let (x, w, b) = (0..1000)
                .map(|_| {
                    (
                        dyadic(&mut rng, m * k),
                        dyadic(&mut rng, n * k),
                        dyadic(&mut rng, n),
                    )
                })
                .find(|(x, w, b)| {
                    let z = reference::preactivation_f64(spec.shape, x, w, Some(b)).unwrap();
                    z.iter().all(|v| v.abs() > 0.05)
                })
                .expect("inputs clear of the ReLU kink within 1000 draws");
            let dy = dyadic(&mut rng, m * n);
            let y = reference::forward(&spec, &x, &w, Some(&b)).unwrap();
            let g = reference::backward_f64(&spec, &x, &w, &dy, Some(&y)).unwrap();
            for (which, name, analytic) in [(0, "dx", &g.dx), (1, "dw", &g.dw), (2, "db", &g.db)] {
                let numeric = numeric_gradient(&spec, [&x, &w, &b], &dy, which);
                assert!(
                    numeric.iter().any(|&v| v != 0.0),
                    "{name}: gradient all zero"
                );
                let err = relative_l2_error(analytic, &numeric);
                assert!(
                    err < 1e-9,
                    "{nonlinearity:?} p {p} {name}: relative error {err:e}"
                );
            }
        }
    }
}

#[test]
fn identity_backward_ignores_y_saved_and_relu_backward_reads_it() {
    let mut rng = test_rng("y_saved");
    let (m, n, k) = (6, 10, 4);
    let x = random::<f32>(&mut rng, m * k);
    let w = random::<f32>(&mut rng, n * k);
    let dy = random::<f32>(&mut rng, m * n);
    let identity = spec(m, n, k, Nonlinearity::Identity, 0.5, &mut rng);
    let y = reference::forward(&identity, &x, &w, None).unwrap();
    let with = reference::backward_f64(&identity, &x, &w, &dy, Some(&y)).unwrap();
    let without = reference::backward_f64(&identity, &x, &w, &dy, None).unwrap();
    assert_eq!(with, without);

    // ReLU: the gate is [y_saved > 0], nothing else; a saved output of all ones passes every
    // element through, scaled.
    let relu = LayerSpec {
        nonlinearity: Nonlinearity::Relu,
        ..identity
    };
    let ones = vec![1.0f32; m * n];
    let open = reference::backward_f64(&relu, &x, &w, &dy, Some(&ones)).unwrap();
    let db: Vec<f64> = (0..n)
        .map(|c| (0..m).map(|r| f64::from(dy[r * n + c]) * 2.0).sum())
        .collect();
    assert_eq!(open.db, db);
}

fn shard_check<T: Element>(rng: &mut StdRng) {
    let (m, n, k) = (19, 103, 37);
    // Column shard widths, none a multiple of 4: shard edges fall inside Philox calls.
    let widths = [13, 1, 50, 39];
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        for p in [0.3, 0.5] {
            let full = spec(m, n, k, nonlinearity, p, rng);
            let x = random::<T>(rng, m * k);
            let w = random::<T>(rng, n * k);
            let b = random::<T>(rng, n);
            let dy = random::<T>(rng, m * n);
            let y = reference::forward(&full, &x, &w, Some(&b)).unwrap();
            let g = reference::backward(&full, &x, &w, &dy, Some(&y)).unwrap();
            let mut c0 = 0;
            for width in widths {
                let shard = full.with_geometry(Geometry {
                    row_offset: 0,
                    col_offset: c0 as u64,
                    n_global: Some(n as u64),
                });
                let shard = LayerSpec {
                    shape: LinearShape::new(m, width, k),
                    ..shard
                };
                let ws = &w[c0 * k..(c0 + width) * k];
                let ys = reference::forward(&shard, &x, ws, Some(&b[c0..c0 + width])).unwrap();
                let cols = |v: &[T]| -> Vec<T> {
                    (0..m)
                        .flat_map(|r| v[r * n + c0..r * n + c0 + width].to_vec())
                        .collect()
                };
                let what = format!(
                    "{} {nonlinearity:?} p {p} columns {c0}..{}",
                    T::NAME,
                    c0 + width
                );
                assert_eq!(bits(&ys), bits(&cols(&y)), "forward, {what}");
                // A shard's weight and bias gradients depend on its own columns only.
                let gs = reference::backward(&shard, &x, ws, &cols(&dy), Some(&cols(&y))).unwrap();
                assert_eq!(
                    bits(&gs.dw),
                    bits(&g.dw[c0 * k..(c0 + width) * k]),
                    "dW, {what}"
                );
                assert_eq!(bits(&gs.db), bits(&g.db[c0..c0 + width]), "db, {what}");
                c0 += width;
            }
            // Row shards reproduce rows of the output and of dX.
            for (r0, rows) in [(0, 7), (7, 11), (18, 1)] {
                let shard = LayerSpec {
                    shape: LinearShape::new(rows, n, k),
                    ..full.with_geometry(Geometry {
                        row_offset: r0 as u64,
                        col_offset: 0,
                        n_global: None,
                    })
                };
                let xs = &x[r0 * k..(r0 + rows) * k];
                let ys = reference::forward(&shard, xs, &w, Some(&b)).unwrap();
                let what = format!(
                    "{} {nonlinearity:?} p {p} rows {r0}..{}",
                    T::NAME,
                    r0 + rows
                );
                assert_eq!(
                    bits(&ys),
                    bits(&y[r0 * n..(r0 + rows) * n]),
                    "forward, {what}"
                );
                let gs = reference::backward(
                    &shard,
                    xs,
                    &w,
                    &dy[r0 * n..(r0 + rows) * n],
                    Some(&y[r0 * n..(r0 + rows) * n]),
                )
                .unwrap();
                assert_eq!(
                    bits(&gs.dx),
                    bits(&g.dx[r0 * k..(r0 + rows) * k]),
                    "dX, {what}"
                );
            }
        }
    }
}

#[test]
fn shards_reproduce_the_unsharded_layer_bit_for_bit() {
    let mut rng = test_rng("shards");
    shard_check::<f32>(&mut rng);
    shard_check::<f16>(&mut rng);
    shard_check::<bf16>(&mut rng);
}

/// Whether `rounded` is within half a unit in the last place of T of `exact` (what rounding to
/// nearest guarantees), from T's precision and smallest normal exponent, independently of the
/// conversion `Element::from_f64` under test.
fn within_half_ulp<T: Element>(rounded: f64, exact: f64) -> bool {
    let (precision, min_exponent) = match T::NAME {
        "f32" => (24, -126),
        "f16" => (11, -14),
        _ => (8, -126),
    };
    let exponent = if exact == 0.0 {
        min_exponent
    } else {
        (exact.abs().log2().floor() as i32).max(min_exponent)
    };
    (rounded - exact).abs() <= f64::powi(2.0, exponent - precision)
}

fn rounding_check<T: Element>(rng: &mut StdRng) {
    let (m, n, k) = (17, 33, 45);
    for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
        for p in [0.0, 0.1, 0.5] {
            let spec = spec(m, n, k, nonlinearity, p, rng);
            let x = random::<T>(rng, m * k);
            let w = random::<T>(rng, n * k);
            let b = random::<T>(rng, n);
            let dy = random::<T>(rng, m * n);
            let exact = reference::forward_f64(&spec, &x, &w, Some(&b)).unwrap();
            let y = reference::forward(&spec, &x, &w, Some(&b)).unwrap();
            let what = format!("{} {nonlinearity:?} p {p}", T::NAME);
            // Each output is the f64 value rounded to nearest...
            for (i, (&got, &want)) in to_f64(&y).iter().zip(&exact).enumerate() {
                assert!(
                    within_half_ulp::<T>(got, want),
                    "forward, {what}: element {i} is {got}, more than half an ulp from {want}"
                );
            }
            assert_eq!(y.len(), exact.len(), "forward, {what}");
            // ...which is well inside the accuracy a kernel must reach.
            let err = relative_l2_error(&to_f64(&y), &exact);
            assert!(err < T::REL_L2_TOLERANCE / 2.0, "forward, {what}: {err:e}");

            let exact = reference::backward_f64(&spec, &x, &w, &dy, Some(&y)).unwrap();
            let g = reference::backward(&spec, &x, &w, &dy, Some(&y)).unwrap();
            for (name, got, want) in [
                ("dx", &g.dx, &exact.dx),
                ("dw", &g.dw, &exact.dw),
                ("db", &g.db, &exact.db),
            ] {
                assert_eq!(got.len(), want.len(), "{name}, {what}");
                for (i, (&g, &w)) in to_f64(got).iter().zip(want).enumerate() {
                    assert!(
                        within_half_ulp::<T>(g, w),
                        "{name}, {what}: element {i} is {g}, more than half an ulp from {w}"
                    );
                }
                let err = relative_l2_error(&to_f64(got), want);
                assert!(err < T::REL_L2_TOLERANCE / 2.0, "{name}, {what}: {err:e}");
            }
        }
    }
}

#[test]
fn outputs_are_rounded_once_into_each_type() {
    let mut rng = test_rng("rounding");
    rounding_check::<f32>(&mut rng);
    rounding_check::<f16>(&mut rng);
    rounding_check::<bf16>(&mut rng);
}

#[test]
fn large_layer_matches_naive_sums_at_sampled_elements() {
    // The size the kernels are benchmarked at; the reference must handle it in seconds.
    let mut rng = test_rng("large");
    let (m, n, k) = (512, 1024, 1024);
    let spec = spec(m, n, k, Nonlinearity::Relu, 0.1, &mut rng);
    let x = random::<f32>(&mut rng, m * k);
    let w = random::<f32>(&mut rng, n * k);
    let b = random::<f32>(&mut rng, n);
    let dy = random::<f32>(&mut rng, m * n);
    let y = reference::forward_f64(&spec, &x, &w, Some(&b)).unwrap();
    let y_saved = reference::from_f64::<f32>(&y);
    let g = reference::backward_f64(&spec, &x, &w, &dy, Some(&y_saved)).unwrap();
    let scale = f64::from(mask::scale(spec.dropout.p));
    let dz = |r: usize, c: usize| {
        if y_saved[r * n + c] > 0.0 {
            f64::from(dy[r * n + c]) * scale
        } else {
            0.0
        }
    };
    for _ in 0..50 {
        let (r, c, t) = (
            rng.random_range(0..m),
            rng.random_range(0..n),
            rng.random_range(0..k),
        );
        let z: f64 = (0..k)
            .map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j]))
            .sum::<f64>()
            + f64::from(b[c]);
        let kept = mask::keep(
            spec.dropout.seed,
            spec.dropout.subsequence,
            0.1,
            (r * n + c) as u64,
        );
        let want = if kept { z.max(0.0) * scale } else { 0.0 };
        assert!(
            (y[r * n + c] - want).abs() <= 1e-12 * want.abs().max(1.0),
            "y[{r}, {c}]"
        );
        let dx: f64 = (0..n).map(|j| dz(r, j) * f64::from(w[j * k + t])).sum();
        assert!(
            (g.dx[r * k + t] - dx).abs() <= 1e-12 * dx.abs().max(1.0),
            "dx[{r}, {t}]"
        );
        let dw: f64 = (0..m).map(|i| dz(i, c) * f64::from(x[i * k + t])).sum();
        assert!(
            (g.dw[c * k + t] - dw).abs() <= 1e-12 * dw.abs().max(1.0),
            "dw[{c}, {t}]"
        );
        let db: f64 = (0..m).map(|i| dz(i, c)).sum();
        assert!((g.db[c] - db).abs() <= 1e-12 * db.abs().max(1.0), "db[{c}]");
    }
}

#[test]
fn relative_l2_error_conventions() {
    assert_eq!(relative_l2_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
    assert!((relative_l2_error(&[3.0, 4.0], &[0.0, 5.0]) - 10.0f64.sqrt() / 5.0).abs() < 1e-15);
    assert_eq!(relative_l2_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    assert_eq!(
        relative_l2_error(&[f64::NAN, 1.0], &[1.0, 1.0]),
        f64::INFINITY
    );
    assert_eq!(relative_l2_error(&[f64::INFINITY], &[1.0]), f64::INFINITY);
    assert_eq!(relative_l2_error(&[1.0], &[f64::NAN]), f64::INFINITY);
    // An all-zero reference must be matched exactly.
    assert_eq!(relative_l2_error(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
    assert_eq!(relative_l2_error(&[0.0, 1e-30], &[0.0, 0.0]), f64::INFINITY);
    assert_eq!(relative_l2_error(&[], &[]), 0.0);
}

/// The pre-activations every non-finite test plants: one of each IEEE class ReLU and dropout
/// treat differently, repeated over many elements so both keep decisions occur at 0 < p < 1.
const PLANTED: [f32; 6] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.75, -0.75, 0.0];

/// Compares two f64 values as the contract's table does: both NaN, or equal (with 0 == -0).
fn same_value(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || got == want
}

/// The forward table of docs/mask-contract.md, "Non-finite values", entry by entry: X = 0 and
/// W = 1 with k = 1 make z the bias, which holds every class of `PLANTED`.
#[test]
fn forward_follows_the_non_finite_table() {
    let (m, n) = (16, 6 * 7);
    let b: Vec<f32> = (0..n).map(|c| PLANTED[c % PLANTED.len()]).collect();
    let x = vec![0.0f32; m];
    let w = vec![1.0f32; n];
    for p in [0.0f32, 0.1, 0.5, 1.0] {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let spec = LayerSpec::new(
                LinearShape::new(m, n, 1),
                nonlinearity,
                DropoutSpec::new(p, 0x5eed + u64::from(p.to_bits()), 3),
            );
            let y = reference::forward_f64(&spec, &x, &w, Some(&b)).unwrap();
            let scale = f64::from(mask::scale(p));
            let (mut kept_nonfinite, mut dropped_nonfinite) = (0, 0);
            for r in 0..m {
                for c in 0..n {
                    let z = f64::from(b[c]);
                    let kept = mask::keep(spec.dropout.seed, 3, p, (r * n + c) as u64);
                    let a = match nonlinearity {
                        Nonlinearity::Relu
                            if z == f64::NEG_INFINITY || (z.is_finite() && z <= 0.0) =>
                        {
                            0.0
                        }
                        _ => z,
                    };
                    let want = if !kept && !a.is_finite() {
                        f64::NAN
                    } else if !kept {
                        0.0
                    } else {
                        a * scale
                    };
                    if !a.is_finite() {
                        if kept {
                            kept_nonfinite += 1;
                        } else {
                            dropped_nonfinite += 1;
                        }
                    }
                    let got = y[r * n + c];
                    assert!(
                        same_value(got, want),
                        "{nonlinearity:?} p {p}: z {z} kept {kept} gave {got}, the table says {want}"
                    );
                }
            }
            // Both columns of the table are exercised where p allows them.
            assert_eq!(kept_nonfinite > 0, p < 1.0, "{nonlinearity:?} p {p}");
            assert_eq!(dropped_nonfinite > 0, p > 0.0, "{nonlinearity:?} p {p}");
        }
    }
}

#[test]
fn relu_and_apply_keep_keep_nan() {
    assert!(reference::relu(f64::NAN).is_nan());
    assert_eq!(reference::relu(f64::NEG_INFINITY), 0.0);
    assert_eq!(reference::relu(f64::INFINITY), f64::INFINITY);
    assert_eq!(reference::relu(-0.0).to_bits(), 0.0f64.to_bits());
    assert_eq!(reference::relu(-2.0), 0.0);
    assert_eq!(reference::relu(2.0), 2.0);
    assert!(reference::apply_keep(f64::NAN, false, 2.0).is_nan());
    assert!(reference::apply_keep(f64::INFINITY, false, 2.0).is_nan());
    assert!(reference::apply_keep(f64::NEG_INFINITY, false, 0.0).is_nan());
    assert_eq!(
        reference::apply_keep(f64::INFINITY, true, 2.0),
        f64::INFINITY
    );
    assert_eq!(reference::apply_keep(3.0, false, 2.0), 0.0);
    assert_eq!(reference::apply_keep(3.0, true, 2.0), 6.0);
}

/// The standalone dropout keeps NaN through a kept or dropped element, turns a dropped infinity
/// into NaN, and leaves everything in place at p = 0.
#[test]
fn dropout_in_place_follows_the_non_finite_table() {
    let (m, n) = (8, 6 * 5);
    for p in [0.0f32, 0.1, 0.5, 1.0] {
        let d = DropoutSpec::new(p, 77, 9);
        let y: Vec<f16> = (0..m * n)
            .map(|i| f16::from_f32(PLANTED[i % PLANTED.len()]))
            .collect();
        let mut got = y.clone();
        reference::dropout_in_place(&mut got, m, n, &d, &Geometry::UNSHARDED).unwrap();
        let scale = mask::scale(p);
        for (i, (g, v)) in got.iter().zip(&y).enumerate() {
            let v = v.to_f32();
            let kept = mask::keep(77, 9, p, i as u64);
            let want = match (kept, v.is_finite()) {
                (true, _) => f16::from_f32(v * scale).to_f32(),
                (false, true) => 0.0,
                (false, false) => f32::NAN,
            };
            assert!(
                same_value(f64::from(g.to_f32()), f64::from(want)),
                "p {p} element {i}: {v} kept {kept} gave {g}, want {want}"
            );
        }
    }
}

/// dZ as docs/mask-contract.md defines it, read through db (m = 1, so db = dZ's only row) and dW
/// (k = 1 and X = 1, so dW = dZ too): identity multiplies dY by the redrawn factor; ReLU passes
/// dY * scale where Y > 0, redraws the mask where Y is NaN, and gives 0 elsewhere.
#[test]
fn backward_follows_the_non_finite_rule() {
    let n = 6 * 6 * 40;
    // z (through the bias) and dY both run over every class, in all 36 pairings.
    let b: Vec<f32> = (0..n).map(|c| PLANTED[c % 6]).collect();
    let dy: Vec<f32> = (0..n).map(|c| PLANTED[(c / 6) % 6]).collect();
    let (x, w) = (vec![1.0f32], vec![0.0f32; n]);
    for p in [0.0f32, 0.1, 0.5, 1.0] {
        for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
            let spec = LayerSpec::new(
                LinearShape::new(1, n, 1),
                nonlinearity,
                DropoutSpec::new(p, 1234, 5),
            );
            let y = reference::forward(&spec, &x, &w, Some(&b)).unwrap();
            let g = reference::backward_f64(&spec, &x, &w, &dy, Some(&y)).unwrap();
            let scale = f64::from(mask::scale(p));
            for c in 0..n {
                let kept = mask::keep(1234, 5, p, c as u64);
                let d = f64::from(dy[c]);
                let yc = f64::from(y[c]);
                let factor = if kept { scale } else { 0.0 };
                let want = match nonlinearity {
                    Nonlinearity::Identity => d * factor,
                    Nonlinearity::Relu if yc > 0.0 => d * scale,
                    Nonlinearity::Relu if yc.is_nan() => d * factor,
                    Nonlinearity::Relu => 0.0,
                };
                for (name, got) in [("db", g.db[c]), ("dW", g.dw[c])] {
                    assert!(
                        same_value(got, want),
                        "{nonlinearity:?} p {p}: z {} dy {d} y {yc} kept {kept}: {name} {got}, want {want}",
                        b[c]
                    );
                }
            }
            // A NaN dY at a dropped element stays NaN for identity (as PyTorch's dropout
            // backward), for every p > 0.
            if nonlinearity == Nonlinearity::Identity && p > 0.0 {
                assert!((0..n).any(|c| !mask::keep(1234, 5, p, c as u64)
                    && dy[c].is_nan()
                    && g.db[c].is_nan()));
            }
        }
    }
}

#[test]
fn relative_l2_error_nonfinite_compares_classes_then_finite_values() {
    use reference::relative_l2_error_nonfinite as err;
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    assert_eq!(err(&[nan, inf, -inf, 3.0], &[nan, inf, -inf, 3.0]), 0.0);
    assert_eq!(err(&[nan, 1.0], &[1.0, 1.0]), inf);
    assert_eq!(err(&[1.0, 1.0], &[nan, 1.0]), inf);
    assert_eq!(err(&[inf], &[-inf]), inf);
    assert_eq!(err(&[inf], &[nan]), inf);
    assert_eq!(err(&[1.0], &[1.0, 2.0]), inf);
    assert!((err(&[nan, 3.0, 4.0], &[nan, 0.0, 5.0]) - 10.0f64.sqrt() / 5.0).abs() < 1e-15);
    assert!(reference::same_class(nan, -nan));
    assert!(!reference::same_class(0.0, nan));
}

#[test]
fn describe_differences_names_the_tile_and_the_rows_within_blocks() {
    use reference::describe_differences as describe;
    let (m, n) = (300, 520);
    let mut rng = test_rng("describe_differences");
    let want: Vec<f64> = (0..m * n).map(|_| rng.random_range(0.5..1.5)).collect();

    // One 64 x 128 output tile (rows 64-127, columns 256-383) whose rows 8-15 of each 16 are
    // wrong: 32 rows x 128 columns.
    let mut got = want.clone();
    for r in (64..128).filter(|r| r % 16 >= 8) {
        for c in 256..384 {
            got[r * n + c] = -1.0;
        }
    }
    let text = describe(m, n, &got, &want, |i| got[i] != want[i]);
    assert!(
        text.starts_with(
            "4096 of 156000 elements differ, in rows 72-79, 88-95, 104-111, 120-127 (32 of 300) \
             and columns 256-383 (128 of 520); within 64 x 64 blocks: rows 8-15, 24-31, 40-47, \
             56-63, columns 0-63; first: [72, 256] is -1 (want "
        ),
        "{text}"
    );
    assert_eq!(text.matches(" is -1 (want ").count(), 4, "{text}");

    // The predicate decides, not the values: a mask check marks elements whose values agree.
    assert_eq!(
        describe(2, 3, &[1.0; 6], &[1.0; 6], |i| i == 4),
        "1 of 6 elements differ, in rows 1 (1 of 2) and columns 1 (1 of 3); within 64 x 64 \
         blocks: rows 1, columns 1; first: [1, 1] is 1 (want 1)"
    );
    assert_eq!(
        describe(2, 3, &[1.0; 6], &[1.0; 6], |_| false),
        "no element of 2 x 3 differs"
    );

    // Every other column: more runs than are shown.
    let every_other = describe(1, 40, &[0.0; 40], &[1.0; 40], |i| i % 2 == 0);
    assert!(
        every_other.contains("columns 0, 2, 4, 6, 8, 10, 12, 14 and 12 more runs (20 of 40)"),
        "{every_other}"
    );

    assert_eq!(
        describe(2, 3, &[1.0; 5], &[1.0; 6], |_| true),
        "lengths differ from 2 x 3 = 6: 5 computed, 6 expected"
    );
    // Sizes no buffer can have: described, not a panic.
    assert_eq!(
        describe(usize::MAX, 0, &[], &[], |_| true),
        format!("no element of {} x 0 differs", usize::MAX)
    );
    assert_eq!(
        describe(usize::MAX, 2, &[], &[], |_| true),
        format!(
            "lengths differ from {} x 2 = more than usize::MAX: 0 computed, 0 expected",
            usize::MAX
        )
    );
}

#[test]
fn off_by_more_than_compares_classes_then_relative_distance() {
    use reference::off_by_more_than as off;
    assert!(!off(1.005, 1.0, 0.01));
    assert!(off(1.02, 1.0, 0.01));
    assert!(off(-0.98, -1.0, 0.01));
    assert!(off(f64::NAN, 1.0, 0.01));
    assert!(off(1.0, f64::NAN, 0.01));
    assert!(off(f64::INFINITY, -f64::INFINITY, 0.01));
    assert!(!off(f64::NAN, f64::NAN, 0.01));
    assert!(!off(f64::INFINITY, f64::INFINITY, 0.01));
    assert!(off(1e-300, 0.0, 0.01));
    assert!(!off(0.0, 0.0, 0.01));
}
