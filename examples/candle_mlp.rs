//! The digits MLP in candle, twice: once with fusedrop's fused layer (`FusedLinear`, its
//! forward and backward through `Tensor::backward`) and once from candle-nn's `Linear`, `relu`
//! and `Dropout`; both start from the same weights, see the same batches, and their held-out
//! accuracies are printed side by side.
//!
//!     cargo run --release --example candle_mlp --features candle
//!
//! On the CPU the fused layer runs the CPU reference. With `--features candle-cuda` (and
//! fusedrop's default features off, as an application beside candle's CUDA backend builds it)
//! both models run on GPU 0 when one is usable. Exits with 1 when either accuracy is 0.9 or less.

use std::io::Read;

use candle_core::{DType, Device, ModuleT, Tensor, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use fusedrop::candle::{fused_linear_layer, FusedLinear};
use fusedrop::Nonlinearity;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

const PIXELS: usize = 64;
const CLASSES: usize = 10;
const HIDDEN: usize = 256;
const DROP_P: f32 = 0.5;
const EPOCHS: usize = 30;
const BATCH: usize = 64;
const HELD_OUT: usize = 600;
const SEED: u64 = 2024;

/// The 1797 digits of data/digits.csv.gz: pixels scaled to [0, 1] and labels.
fn load_digits() -> Result<(Vec<f32>, Vec<u32>), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != PIXELS + 1 {
            return Err(format!("{path}: a row of {} fields; expected 65", fields.len()).into());
        }
        for field in &fields[..PIXELS] {
            pixels.push(field.parse::<f32>()? / 16.0);
        }
        labels.push(fields[PIXELS].parse()?);
    }
    Ok((pixels, labels))
}

/// 64 → 256 → 256 → 10 with fused layers: ReLU + dropout twice, then the identity without
/// dropout for the logits.
struct FusedMlp {
    layers: [FusedLinear; 3],
}

impl FusedMlp {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            layers: [
                fused_linear_layer(
                    PIXELS,
                    HIDDEN,
                    Nonlinearity::Relu,
                    DROP_P,
                    SEED,
                    vb.pp("fc1"),
                )?,
                fused_linear_layer(
                    HIDDEN,
                    HIDDEN,
                    Nonlinearity::Relu,
                    DROP_P,
                    SEED + 1,
                    vb.pp("fc2"),
                )?,
                fused_linear_layer(
                    HIDDEN,
                    CLASSES,
                    Nonlinearity::Identity,
                    0.0,
                    SEED + 2,
                    vb.pp("fc3"),
                )?,
            ],
        })
    }
}

impl ModuleT for FusedMlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |h, layer| layer.forward_t(&h, train))
    }
}

/// The same network from candle-nn's pieces.
struct CandleMlp {
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
    fc3: candle_nn::Linear,
    dropout: candle_nn::Dropout,
}

impl CandleMlp {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(PIXELS, HIDDEN, vb.pp("fc1"))?,
            fc2: candle_nn::linear(HIDDEN, HIDDEN, vb.pp("fc2"))?,
            fc3: candle_nn::linear(HIDDEN, CLASSES, vb.pp("fc3"))?,
            dropout: candle_nn::Dropout::new(DROP_P),
        })
    }
}

impl ModuleT for CandleMlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self
            .dropout
            .forward_t(&xs.apply(&self.fc1)?.relu()?, train)?;
        let h = self
            .dropout
            .forward_t(&h.apply(&self.fc2)?.relu()?, train)?;
        h.apply(&self.fc3)
    }
}

/// The fraction of `x`'s rows whose largest logit is their label.
fn accuracy(model: &impl ModuleT, x: &Tensor, labels: &Tensor) -> candle_core::Result<f32> {
    let predicted = model.forward_t(x, false)?.argmax(D::Minus1)?;
    let correct = predicted.eq(labels)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(correct.to_scalar::<f32>()? / labels.dim(0)? as f32)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::cuda_if_available(0)?;
    let (pixels, labels) = load_digits()?;
    let count = labels.len();
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut StdRng::seed_from_u64(SEED));
    let select = |rows: &[usize]| -> candle_core::Result<(Tensor, Tensor)> {
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&i| pixels[i * PIXELS..(i + 1) * PIXELS].iter().copied())
            .collect();
        let y: Vec<u32> = rows.iter().map(|&i| labels[i]).collect();
        Ok((
            Tensor::from_vec(x, (rows.len(), PIXELS), &device)?,
            Tensor::from_vec(y, rows.len(), &device)?,
        ))
    };
    let (train_rows, held_out_rows) = order.split_at(count - HELD_OUT);
    let (x_held_out, y_held_out) = select(held_out_rows)?;

    let fused_vars = VarMap::new();
    let fused = FusedMlp::new(VarBuilder::from_varmap(&fused_vars, DType::F32, &device))?;
    let candle_vars = VarMap::new();
    let reference = CandleMlp::new(VarBuilder::from_varmap(&candle_vars, DType::F32, &device))?;
    // The same starting weights: copy the fused model's initial values into the other.
    {
        let from = fused_vars
            .data()
            .lock()
            .expect("no panic holds the var map");
        for (name, var) in candle_vars
            .data()
            .lock()
            .expect("no panic holds the var map")
            .iter()
        {
            var.set(from[name].as_tensor())?;
        }
    }
    let params = candle_nn::ParamsAdamW {
        lr: 1e-3,
        ..Default::default()
    };
    let mut fused_opt = candle_nn::AdamW::new(fused_vars.all_vars(), params.clone())?;
    let mut candle_opt = candle_nn::AdamW::new(candle_vars.all_vars(), params)?;

    println!(
        "digits: {} training, {} held-out images; {PIXELS}-{HIDDEN}-{HIDDEN}-{CLASSES} MLP, \
         dropout p = {DROP_P}, {EPOCHS} epochs of batches of {BATCH}, AdamW; device {device:?}",
        train_rows.len(),
        HELD_OUT
    );
    println!("epoch  loss fused  loss candle-nn  held-out fused  held-out candle-nn");
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let mut epoch_order = train_rows.to_vec();
    for epoch in 1..=EPOCHS {
        epoch_order.shuffle(&mut rng);
        let (mut fused_loss, mut candle_loss, mut batches) = (0.0, 0.0, 0);
        for batch in epoch_order.chunks(BATCH) {
            let (x, y) = select(batch)?;
            let loss = candle_nn::loss::cross_entropy(&fused.forward_t(&x, true)?, &y)?;
            fused_opt.backward_step(&loss)?;
            fused_loss += loss.to_scalar::<f32>()?;
            let loss = candle_nn::loss::cross_entropy(&reference.forward_t(&x, true)?, &y)?;
            candle_opt.backward_step(&loss)?;
            candle_loss += loss.to_scalar::<f32>()?;
            batches += 1;
        }
        if epoch % 5 == 0 || epoch == 1 {
            println!(
                "{epoch:>5}  {:>10.4}  {:>14.4}  {:>14.3}  {:>18.3}",
                fused_loss / batches as f32,
                candle_loss / batches as f32,
                accuracy(&fused, &x_held_out, &y_held_out)?,
                accuracy(&reference, &x_held_out, &y_held_out)?
            );
        }
    }
    let fused_accuracy = accuracy(&fused, &x_held_out, &y_held_out)?;
    let candle_accuracy = accuracy(&reference, &x_held_out, &y_held_out)?;
    println!(
        "held-out accuracy: fusedrop FusedLinear {fused_accuracy:.3}, candle-nn \
         Linear + relu + Dropout {candle_accuracy:.3}"
    );
    if fused_accuracy <= 0.9 || candle_accuracy <= 0.9 {
        eprintln!("an accuracy is not above 0.9");
        std::process::exit(1);
    }
    Ok(())
}
