//! The candle op and module (feature `candle`) on CPU tensors: gradients through
//! `Tensor::backward` against candle's own matmul + relu at p = 0, against the same candle ops
//! times the mask at p > 0, and against the CPU reference bit for bit, every dtype, with and
//! without bias; views (transposed, sliced, offset) against their contiguous copies; untracked
//! and frozen operands; the ReLU's gradient at exactly zero; the module's training and evaluation
//! modes; and the errors for inputs the op does not take.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fusedrop::candle::{fused_linear, fused_linear_layer, FusedLinear};
use fusedrop::{reference, DropoutSpec, Element, LayerSpec, LinearShape, Nonlinearity};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

type Result<T> = candle_core::Result<T>;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
/// (m, n, k): odd sizes, a single row and column, one more than a power of two.
const SHAPES: [(usize, usize, usize); 3] = [(7, 5, 3), (1, 1, 1), (33, 17, 65)];

/// A `[rows, cols]` tensor of uniform values in [-1, 1), rounded to `dtype`.
fn random(rows: usize, cols: usize, dtype: DType, seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_dtype(dtype)
}

fn values_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::REL_L2_TOLERANCE,
        DType::F16 => f16::REL_L2_TOLERANCE,
        _ => bf16::REL_L2_TOLERANCE,
    }
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, dtype: DType) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let error = reference::relative_l2_error(&values_f64(got)?, &values_f64(want)?);
    assert!(
        error <= tolerance(dtype),
        "{what} ({dtype:?}): relative L2 error {error:e} above {:e}",
        tolerance(dtype)
    );
    Ok(())
}

/// The operands of one test call: X, W and b as variables, and the weights `r` of the loss
/// `sum(Y * r)` (so that dY = r, different for every element).
struct Operands {
    x: Var,
    w: Var,
    b: Var,
    r: Tensor,
}

fn operands(m: usize, n: usize, k: usize, dtype: DType, seed: u64) -> Result<Operands> {
    Ok(Operands {
        x: Var::from_tensor(&random(m, k, dtype, seed)?)?,
        w: Var::from_tensor(&random(n, k, dtype, seed + 1)?)?,
        b: Var::from_tensor(&random(1, n, dtype, seed + 2)?.reshape(n)?)?,
        r: random(m, n, dtype, seed + 3)?,
    })
}

#[test]
fn gradients_match_candle_matmul_and_relu_at_p_zero() -> Result<()> {
    for dtype in DTYPES {
        for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
            for with_bias in [false, true] {
                let ops = operands(m, n, k, dtype, 10 * i as u64)?;
                let bias = with_bias.then(|| ops.b.as_tensor());
                let y = fused_linear(
                    ops.x.as_tensor(),
                    &ops.w,
                    bias,
                    Nonlinearity::Relu,
                    DropoutSpec::NONE,
                )?;
                let grads = (&y * &ops.r)?.sum_all()?.backward()?;

                // candle's own ops, in f32 from the same rounded values.
                let x32 = Var::from_tensor(&ops.x.to_dtype(DType::F32)?)?;
                let w32 = Var::from_tensor(&ops.w.to_dtype(DType::F32)?)?;
                let b32 = Var::from_tensor(&ops.b.to_dtype(DType::F32)?)?;
                let mut z = x32.matmul(&w32.t()?)?;
                if with_bias {
                    z = z.broadcast_add(&b32)?;
                }
                let y32 = z.relu()?;
                let grads32 = (&y32 * ops.r.to_dtype(DType::F32)?)?
                    .sum_all()?
                    .backward()?;

                let case = format!("{m}x{n}x{k} bias={with_bias}");
                assert_eq!(y.dtype(), dtype);
                assert_close(&format!("Y {case}"), &y, &y32, dtype)?;
                let grad = |g: &candle_core::backprop::GradStore, v: &Var| {
                    g.get(v).cloned().expect("a gradient for every variable")
                };
                assert_close(
                    &format!("dX {case}"),
                    &grad(&grads, &ops.x),
                    &grad(&grads32, &x32),
                    dtype,
                )?;
                assert_close(
                    &format!("dW {case}"),
                    &grad(&grads, &ops.w),
                    &grad(&grads32, &w32),
                    dtype,
                )?;
                if with_bias {
                    assert_close(
                        &format!("db {case}"),
                        &grad(&grads, &ops.b),
                        &grad(&grads32, &b32),
                        dtype,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The op's output and gradients against `reference::forward`/`backward` for `T`, bit for bit
/// (the CPU op is the reference, so any difference is a wiring fault: operand order, layout,
/// which gradient lands where, the mask's (seed, subsequence)).
fn check_against_reference<T: Element + candle_core::WithDType>(dtype: DType) -> Result<()> {
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        for p in [0.1f32, 0.5, 1.0] {
            for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
                for with_bias in [false, true] {
                    let ops = operands(m, n, k, dtype, 100 + 10 * i as u64)?;
                    let dropout = DropoutSpec::new(p, 0x5eed + i as u64, 3);
                    let bias = with_bias.then(|| ops.b.as_tensor());
                    let y = fused_linear(ops.x.as_tensor(), &ops.w, bias, nonlinearity, dropout)?;
                    // Through a transpose, so that the gradient reaching the op is not
                    // contiguous.
                    let r_t = ops.r.t()?.contiguous()?;
                    let grads = (y.t()? * &r_t)?.sum_all()?.backward()?;

                    let spec = LayerSpec::new(LinearShape::new(m, n, k), nonlinearity, dropout);
                    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<T>();
                    let (x, w, b, r) = (flat(&ops.x)?, flat(&ops.w)?, flat(&ops.b)?, flat(&ops.r)?);
                    let b = with_bias.then_some(b.as_slice());
                    let y_want = reference::forward(&spec, &x, &w, b).unwrap();
                    let g_want = reference::backward(&spec, &x, &w, &r, Some(&y_want)).unwrap();

                    let case =
                        format!("{dtype:?} {m}x{n}x{k} p={p} {nonlinearity:?} bias={with_bias}");
                    assert_eq!(flat(&y)?, y_want, "Y {case}");
                    let grad = |v: &Var| flat(grads.get(v).expect("a gradient"));
                    assert_eq!(grad(&ops.x)?, g_want.dx, "dX {case}");
                    assert_eq!(grad(&ops.w)?, g_want.dw, "dW {case}");
                    if with_bias {
                        assert_eq!(grad(&ops.b)?, g_want.db, "db {case}");
                    }
                    if p == 1.0 {
                        // Every element dropped: the op's output and gradients are zeros.
                        let zero = |v: Vec<T>| v.iter().all(|&e| Element::to_f64(e) == 0.0);
                        assert!(zero(flat(&y)?), "p = 1: Y not all zero, {case}");
                        assert!(zero(grad(&ops.x)?), "p = 1: dX not all zero, {case}");
                        assert!(zero(grad(&ops.w)?), "p = 1: dW not all zero, {case}");
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn output_and_gradients_match_the_reference_at_p_above_zero() -> Result<()> {
    check_against_reference::<f32>(DType::F32)?;
    check_against_reference::<f16>(DType::F16)?;
    check_against_reference::<bf16>(DType::BF16)
}

#[test]
fn an_untracked_input_gets_no_gradient() -> Result<()> {
    let ops = operands(4, 3, 2, DType::F32, 7)?;
    let x = ops.x.as_tensor().detach();
    let y = fused_linear(
        &x,
        &ops.w,
        Some(&ops.b),
        Nonlinearity::Relu,
        DropoutSpec::NONE,
    )?;
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    assert_eq!(grads.get(&ops.w).expect("dW").dims(), &[3, 2]);
    assert_eq!(grads.get(&ops.b).expect("db").dims(), &[3]);
    // Frozen weights and bias (plain tensors): dX alone, and it is the same dX.
    let (w, b) = (ops.w.as_tensor().detach(), ops.b.as_tensor().detach());
    let y = fused_linear(&ops.x, &w, Some(&b), Nonlinearity::Relu, DropoutSpec::NONE)?;
    let frozen = y.sum_all()?.backward()?;
    assert!(frozen.get(&w).is_none() && frozen.get(&b).is_none());
    let y = fused_linear(
        &ops.x,
        &ops.w,
        Some(&ops.b),
        Nonlinearity::Relu,
        DropoutSpec::NONE,
    )?;
    let all = y.sum_all()?.backward()?;
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    assert_eq!(
        flat(frozen.get(&ops.x).expect("dX"))?,
        flat(all.get(&ops.x).expect("dX"))?
    );
    Ok(())
}

/// Transposed, sliced and offset operands (views candle does not store row-major, or stores
/// from an offset) give the output and gradients of their contiguous copies, bit for bit, and
/// the gradients reach the variables the views were taken from.
#[test]
fn views_give_what_their_contiguous_copies_give() -> Result<()> {
    let (m, n, k) = (6, 5, 7);
    let dropout = DropoutSpec::new(0.3, 41, 2);
    // X as the transpose of a [k, m] variable, W as rows 2..2+n of a [n + 3, k] variable, b as
    // elements 1..1+n of a [n + 2] variable.
    let x_src = Var::from_tensor(&random(k, m, DType::F32, 51)?)?;
    let w_src = Var::from_tensor(&random(n + 3, k, DType::F32, 52)?)?;
    let b_src = Var::from_tensor(&random(1, n + 2, DType::F32, 53)?.reshape(n + 2)?)?;
    let r = random(m, n, DType::F32, 54)?;
    let (x, w, b) = (x_src.t()?, w_src.narrow(0, 2, n)?, b_src.narrow(0, 1, n)?);
    assert!(!x.is_contiguous());
    let y = fused_linear(&x, &w, Some(&b), Nonlinearity::Relu, dropout)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;

    let x_copy = Var::from_tensor(&x.contiguous()?)?;
    let w_copy = Var::from_tensor(&w.contiguous()?)?;
    let b_copy = Var::from_tensor(&b.contiguous()?)?;
    let y_copy = fused_linear(&x_copy, &w_copy, Some(&b_copy), Nonlinearity::Relu, dropout)?;
    let grads_copy = (&y_copy * &r)?.sum_all()?.backward()?;

    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let grad = |g: &candle_core::backprop::GradStore, v: &Var| -> Result<Tensor> {
        Ok(g.get(v).expect("a gradient").clone())
    };
    assert_eq!(flat(&y)?, flat(&y_copy)?, "Y");
    assert_eq!(
        flat(&grad(&grads, &x_src)?.t()?)?,
        flat(&grad(&grads_copy, &x_copy)?)?,
        "dX"
    );
    assert_eq!(
        flat(&grad(&grads, &w_src)?.narrow(0, 2, n)?)?,
        flat(&grad(&grads_copy, &w_copy)?)?,
        "dW"
    );
    assert_eq!(
        flat(&grad(&grads, &b_src)?.narrow(0, 1, n)?)?,
        flat(&grad(&grads_copy, &b_copy)?)?,
        "db"
    );
    // The rows and elements outside the views get zero gradient.
    let dw_outside = grad(&grads, &w_src)?.narrow(0, 0, 2)?;
    assert!(flat(&dw_outside)?.iter().all(|&v| v == 0.0));
    Ok(())
}

/// An independent check of the gradients at p > 0: the same layer written with candle's own
/// ops (matmul, bias, relu, times the mask tensor from `fusedrop::mask::keep` and the scale),
/// differentiated by candle, against the op. Every dtype, ReLU and identity, with bias.
#[test]
fn gradients_match_candle_ops_times_the_mask_at_p_above_zero() -> Result<()> {
    for dtype in DTYPES {
        for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
            for nonlinearity in [Nonlinearity::Relu, Nonlinearity::Identity] {
                let ops = operands(m, n, k, dtype, 300 + 10 * i as u64)?;
                let dropout = DropoutSpec::new(0.4, 0xabc + i as u64, 5);
                let y = fused_linear(&ops.x, &ops.w, Some(&ops.b), nonlinearity, dropout)?;
                let grads = (&y * &ops.r)?.sum_all()?.backward()?;

                let factor: Vec<f32> = (0..m * n)
                    .map(|e| {
                        let kept = fusedrop::mask::keep(
                            dropout.seed,
                            dropout.subsequence,
                            dropout.p,
                            e as u64,
                        );
                        if kept {
                            fusedrop::mask::scale(dropout.p)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let factor = Tensor::from_vec(factor, (m, n), &Device::Cpu)?;
                let x32 = Var::from_tensor(&ops.x.to_dtype(DType::F32)?)?;
                let w32 = Var::from_tensor(&ops.w.to_dtype(DType::F32)?)?;
                let b32 = Var::from_tensor(&ops.b.to_dtype(DType::F32)?)?;
                let z = x32.matmul(&w32.t()?)?.broadcast_add(&b32)?;
                let a = match nonlinearity {
                    Nonlinearity::Relu => z.relu()?,
                    Nonlinearity::Identity => z,
                };
                let y32 = (a * &factor)?;
                let grads32 = (&y32 * ops.r.to_dtype(DType::F32)?)?
                    .sum_all()?
                    .backward()?;

                let case = format!("{dtype:?} {m}x{n}x{k} {nonlinearity:?}");
                assert_close(&format!("Y {case}"), &y, &y32, dtype)?;
                for (name, ours, theirs) in [
                    ("dX", &ops.x, &x32),
                    ("dW", &ops.w, &w32),
                    ("db", &ops.b, &b32),
                ] {
                    assert_close(
                        &format!("{name} {case}"),
                        grads.get(ours).expect("a gradient"),
                        grads32.get(theirs).expect("a gradient"),
                        dtype,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The ReLU's gradient where the pre-activation is exactly zero follows PyTorch (none passes),
/// not candle's `relu` (which passes it): with X = 0 and b = 0 every pre-activation is 0, so dW
/// and db are zero (the module docs say so).
#[test]
fn the_relu_passes_no_gradient_at_exactly_zero() -> Result<()> {
    let x = Var::from_tensor(&Tensor::zeros((3, 4), DType::F32, &Device::Cpu)?)?;
    let w = Var::from_tensor(&random(2, 4, DType::F32, 61)?)?;
    let b = Var::from_tensor(&Tensor::zeros(2, DType::F32, &Device::Cpu)?)?;
    let y = fused_linear(&x, &w, Some(&b), Nonlinearity::Relu, DropoutSpec::NONE)?;
    let grads = y.sum_all()?.backward()?;
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    assert!(flat(grads.get(&b).expect("db"))?.iter().all(|&v| v == 0.0));
    assert!(flat(grads.get(&x).expect("dX"))?.iter().all(|&v| v == 0.0));
    // candle's relu, for contrast, passes the gradient at zero.
    let candle_y = x.matmul(&w.t()?)?.broadcast_add(&b)?.relu()?;
    let candle_grads = candle_y.sum_all()?.backward()?;
    assert!(flat(candle_grads.get(&b).expect("db"))?
        .iter()
        .all(|&v| v == 3.0));
    Ok(())
}

fn expect_error(result: Result<Tensor>, needle: &str) {
    match result {
        Ok(t) => panic!(
            "expected an error containing {needle:?}, got a tensor {:?}",
            t.dims()
        ),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(needle),
                "error {text:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors_that_say_what_was_expected() -> Result<()> {
    let x = random(4, 3, DType::F32, 1)?;
    let w = random(5, 3, DType::F32, 2)?;
    let b = random(1, 5, DType::F32, 3)?.reshape(5)?;
    let relu = Nonlinearity::Relu;
    let none = DropoutSpec::NONE;
    // Mismatched sizes and ranks.
    expect_error(
        fused_linear(&x, &random(5, 4, DType::F32, 6)?, None, relu, none),
        "expected [n, k] with k = 3",
    );
    expect_error(
        fused_linear(
            &x,
            &w,
            Some(&random(1, 4, DType::F32, 7)?.reshape(4)?),
            relu,
            none,
        ),
        "expected [5]",
    );
    expect_error(
        fused_linear(&x.reshape((2, 2, 3))?, &w, None, relu, none),
        "rank 2",
    );
    // No input features: X [m, 0] and W [n, 0] hold nothing, whatever m and n say.
    let no_features = |rows| Tensor::zeros((rows, 0), DType::F32, &Device::Cpu);
    expect_error(
        fused_linear(&no_features(4)?, &no_features(5)?, None, relu, none),
        "expected k >= 1",
    );
    expect_error(
        fused_linear(
            &no_features(1 << 40)?,
            &no_features(1 << 40)?,
            None,
            relu,
            none,
        ),
        "expected k >= 1",
    );
    // Mixed and unsupported dtypes.
    expect_error(
        fused_linear(&x, &w.to_dtype(DType::F16)?, None, relu, none),
        "one dtype",
    );
    expect_error(
        fused_linear(&x, &w, Some(&b.to_dtype(DType::BF16)?), relu, none),
        "one dtype",
    );
    expect_error(
        fused_linear(
            &x.to_dtype(DType::F64)?,
            &w.to_dtype(DType::F64)?,
            None,
            relu,
            none,
        ),
        "F32, F16 or BF16",
    );
    // The probability.
    for p in [-0.1, 1.5, f32::NAN] {
        expect_error(
            fused_linear(&x, &w, None, relu, DropoutSpec::new(p, 1, 0)),
            "is outside [0, 1]",
        );
        match FusedLinear::new(w.clone(), None, relu, p, 1) {
            Ok(_) => panic!("p = {p}: FusedLinear::new accepted it"),
            Err(e) => assert!(e.to_string().contains("is outside [0, 1]"), "p = {p}: {e}"),
        }
    }
    // A scalar into the module, and an input of the wrong width: refused in training without
    // using up a mask subsequence.
    let layer = FusedLinear::new(w.clone(), Some(b.clone()), relu, 0.5, 1)?;
    expect_error(
        layer.forward_t(&Tensor::new(1f32, &Device::Cpu)?, true),
        "scalar",
    );
    expect_error(
        layer.forward_t(&random(4, 2, DType::F32, 8)?, true),
        "expected [n, k] with k = 2",
    );
    assert_eq!(
        layer.next_subsequence(),
        0,
        "a refused call took a subsequence"
    );
    layer.forward_t(&x, true)?;
    assert_eq!(layer.next_subsequence(), 1);
    Ok(())
}

#[test]
fn the_module_drops_in_training_with_a_fresh_subsequence_per_call_and_not_in_evaluation(
) -> Result<()> {
    let (m, n, k) = (16, 24, 8);
    let x = random(m, k, DType::F32, 21)?;
    let w = random(n, k, DType::F32, 22)?;
    let b = random(1, n, DType::F32, 23)?.reshape(n)?;
    let p = 0.5;
    let seed = 99;
    let layer = FusedLinear::new(w.clone(), Some(b.clone()), Nonlinearity::Relu, p, seed)?;
    assert_eq!(layer.next_subsequence(), 0);

    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (xv, wv, bv) = (flat(&x)?, flat(&w)?, flat(&b)?);
    let want = |dropout: DropoutSpec| {
        let spec = LayerSpec::new(LinearShape::new(m, n, k), Nonlinearity::Relu, dropout);
        reference::forward(&spec, &xv, &wv, Some(&bv)).unwrap()
    };

    // Evaluation: no dropout, the same output every time, the generator stays.
    let eval = flat(&layer.forward_t(&x, false)?)?;
    assert_eq!(eval, want(DropoutSpec::NONE));
    assert_eq!(flat(&layer.forward_t(&x, false)?)?, eval);
    assert_eq!(layer.next_subsequence(), 0);

    // Training: subsequences 0, 1, ... of the layer's seed, one per call.
    let first = flat(&layer.forward_t(&x, true)?)?;
    let second = flat(&layer.forward_t(&x, true)?)?;
    assert_eq!(layer.next_subsequence(), 2);
    assert_eq!(first, want(DropoutSpec::new(p, seed, 0)));
    assert_eq!(second, want(DropoutSpec::new(p, seed, 1)));
    assert_ne!(first, second, "two training calls share a mask");
    // Kept elements are the evaluation output scaled by 1/(1-p), dropped ones are zero, and
    // some of each occur.
    let (mut kept, mut dropped) = (0, 0);
    for (&t, &e) in first.iter().zip(&eval) {
        if e > 0.0 {
            if t == 0.0 {
                dropped += 1;
            } else {
                assert_eq!(t, e * 2.0);
                kept += 1;
            }
        }
    }
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");

    // Resuming from a checkpointed subsequence reproduces that call's mask.
    layer.resume_at_subsequence(1);
    assert_eq!(flat(&layer.forward_t(&x, true)?)?, second);

    // Leading dimensions: [2, 8, k] -> [2, 8, n], row for row the 2-D result.
    let eval_3d = layer.forward_t(&x.reshape((2, m / 2, k))?, false)?;
    assert_eq!(eval_3d.dims(), &[2, m / 2, n]);
    assert_eq!(flat(&eval_3d)?, eval);
    Ok(())
}

#[test]
fn a_layer_from_a_var_builder_trains_its_variables() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = fused_linear_layer(6, 4, Nonlinearity::Relu, 0.25, 5, vb.pp("fc"))?;
    assert_eq!(layer.weight().dims(), &[4, 6]);
    assert_eq!(layer.bias().map(Tensor::dims), Some(&[4][..]));
    let vars = varmap.all_vars();
    assert_eq!(vars.len(), 2);
    let x = random(10, 6, DType::F32, 31)?;
    let grads = layer.forward_t(&x, true)?.sum_all()?.backward()?;
    for var in &vars {
        let grad = grads
            .get(var)
            .expect("a gradient for every variable of the layer");
        assert_eq!(grad.dims(), var.dims());
    }
    Ok(())
}
