//! The candle op and module (feature `candle`) on CPU tensors: gradients through
//! `Tensor::backward` against candle's own matmul + relu at p = 0 and against the CPU reference
//! at p > 0, every dtype, with and without bias; the module's training and evaluation modes; and
//! the errors for inputs the op does not take.

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
                } else {
                    assert!(grads.get(&ops.b).is_none(), "no bias, no db");
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
                        assert!(
                            y_want.iter().all(|&v| Element::to_f64(v) == 0.0),
                            "p = 1 drops all: {case}"
                        );
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
    // Not contiguous: the transpose of a [3, 4] tensor.
    let x_t = random(3, 4, DType::F32, 4)?.t()?;
    expect_error(fused_linear(&x_t, &w, Some(&b), relu, none), "contiguous");
    let w_t = random(3, 5, DType::F32, 5)?.t()?;
    expect_error(fused_linear(&x, &w_t, None, relu, none), "contiguous");
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
            "p",
        );
        assert!(
            FusedLinear::new(w.clone(), None, relu, p, 1).is_err(),
            "p = {p}"
        );
    }
    // A scalar into the module.
    let layer = FusedLinear::new(w.clone(), Some(b.clone()), relu, 0.5, 1)?;
    expect_error(
        layer.forward_t(&Tensor::new(1f32, &Device::Cpu)?, true),
        "scalar",
    );
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
