//! The demonstration's MLP: every layer is one call of the library's layer
//! (`dropout_p(act(X·Wᵀ + b))`) forward and backward, on the CPU reference or the CUDA kernels;
//! the softmax cross-entropy head and the Adam optimiser run on the host.

use fusedrop::{DropoutGenerator, DropoutSpec, LayerSpec, LinearShape, Nonlinearity};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::backend::Backend;
use crate::data::{Images, CLASSES};

/// The gradient of one layer's parameters: `(dW, db)`.
type LayerGrads = (Vec<f32>, Vec<f32>);

/// One linear layer's parameters: `w` is `[outputs, inputs]` (the `nn.Linear` layout).
#[derive(Debug, Clone)]
pub struct Layer {
    /// Weights, `[outputs, inputs]`.
    pub w: Vec<f32>,
    /// Bias, `[outputs]`.
    pub b: Vec<f32>,
    /// Input features.
    pub inputs: usize,
    /// Output features.
    pub outputs: usize,
}

/// A multi-layer perceptron: ReLU (then dropout, when enabled) on every hidden layer, identity
/// and no dropout on the last.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Layer>,
}

/// The loss and accuracy of a model on a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Fraction of images classified correctly.
    pub accuracy: f64,
}

impl Mlp {
    /// A network with layer widths `sizes` (input first), initialised from `seed`: uniform
    /// Kaiming initialisation for the ReLU layers, `U(±1/sqrt(inputs))` for the last, zero
    /// biases. The same seed gives the same weights.
    pub fn new(sizes: &[usize], seed: u64) -> Mlp {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1417_5EED);
        let last = sizes.len() - 2;
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                let (inputs, outputs) = (io[0], io[1]);
                let gain = if i == last { 1.0 } else { 6.0 };
                let bound = (gain / inputs as f64).sqrt() as f32;
                Layer {
                    w: (0..inputs * outputs)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect(),
                    b: vec![0.0; outputs],
                    inputs,
                    outputs,
                }
            })
            .collect();
        Mlp { layers }
    }

    /// The layer specs of one pass over `m` rows: ReLU and a fresh dropout subsequence from `gen`
    /// for every hidden layer, identity and no dropout for the last.
    fn specs(&self, m: usize, dropout: Option<(&mut DropoutGenerator, f32)>) -> Vec<LayerSpec> {
        let last = self.layers.len() - 1;
        let mut dropout = dropout;
        self.layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let shape = LinearShape::new(m, layer.outputs, layer.inputs);
                if i == last {
                    return LayerSpec::new(shape, Nonlinearity::Identity, DropoutSpec::NONE);
                }
                let drop = match dropout.as_mut() {
                    Some((gen, p)) => gen.next(*p),
                    None => DropoutSpec::NONE,
                };
                LayerSpec::new(shape, Nonlinearity::Relu, drop)
            })
            .collect()
    }

    /// The outputs of every layer for the `m` rows of `x`, in layer order.
    fn forward(
        &self,
        backend: &Backend,
        specs: &[LayerSpec],
        x: &[f32],
    ) -> fusedrop::Result<Vec<Vec<f32>>> {
        let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        for (layer, spec) in self.layers.iter().zip(specs) {
            let input = outputs.last().map_or(x, Vec::as_slice);
            let y = backend.forward(spec, input, &layer.w, &layer.b)?;
            outputs.push(y);
        }
        Ok(outputs)
    }

    /// Loss and accuracy on `images`, with dropout off (p = 0), as a trained network is used.
    pub fn evaluate(&self, backend: &Backend, images: &Images) -> fusedrop::Result<Score> {
        let specs = self.specs(images.len(), None);
        let outputs = self.forward(backend, &specs, &images.x)?;
        let logits = outputs.last().expect("an MLP has at least one layer");
        let head = softmax_cross_entropy(logits, &images.labels);
        Ok(Score {
            loss: head.loss,
            accuracy: head.correct as f64 / images.len() as f64,
        })
    }

    /// One optimiser step on the batch `x` (`[labels.len(), inputs]`): forward with dropout `p` on
    /// the hidden layers (subsequences from `gen`), backward through the same masks, Adam update.
    /// Returns the batch's mean loss (under dropout).
    pub fn train_step(
        &mut self,
        backend: &Backend,
        adam: &mut Adam,
        x: &[f32],
        labels: &[u8],
        gen: &mut DropoutGenerator,
        p: f32,
    ) -> fusedrop::Result<f64> {
        let specs = self.specs(labels.len(), Some((gen, p)));
        let (loss, grads) = self.gradients(backend, &specs, x, labels)?;
        adam.step(&mut self.layers, &grads);
        Ok(loss)
    }

    /// The mean loss of the batch under `specs` and its gradient `(dW, db)` for every layer:
    /// each layer's backward call gets the same spec (so the same mask) as its forward call.
    fn gradients(
        &self,
        backend: &Backend,
        specs: &[LayerSpec],
        x: &[f32],
        labels: &[u8],
    ) -> fusedrop::Result<(f64, Vec<LayerGrads>)> {
        let outputs = self.forward(backend, specs, x)?;
        let head = softmax_cross_entropy(outputs.last().expect("non-empty"), labels);
        let mut dy = head.dlogits;
        let mut grads = Vec::with_capacity(self.layers.len());
        for i in (0..self.layers.len()).rev() {
            let input = if i == 0 { x } else { &outputs[i - 1] };
            let layer = &self.layers[i];
            let g = backend.backward(&specs[i], input, &layer.w, &dy, &outputs[i])?;
            dy = g.dx;
            grads.push((g.dw, g.db));
        }
        grads.reverse();
        Ok((head.loss, grads))
    }
}

/// The result of the softmax cross-entropy head on a batch.
pub struct Head {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// How many rows the argmax classifies correctly.
    pub correct: usize,
    /// The gradient of the mean loss with respect to the logits.
    pub dlogits: Vec<f32>,
}

/// Softmax cross-entropy of `logits` (`[labels.len(), CLASSES]`), computed in f64 with the
/// maximum subtracted so large logits cannot overflow.
pub fn softmax_cross_entropy(logits: &[f32], labels: &[u8]) -> Head {
    let m = labels.len();
    let mut loss = 0.0;
    let mut correct = 0;
    let mut dlogits = vec![0.0f32; logits.len()];
    for (r, &label) in labels.iter().enumerate() {
        let row = &logits[r * CLASSES..(r + 1) * CLASSES];
        let (argmax, max) = row
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (c, &v)| {
                if v > best.1 {
                    (c, v)
                } else {
                    best
                }
            });
        correct += usize::from(argmax == usize::from(label));
        let exps: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        loss += sum.ln() - f64::from(row[usize::from(label)] - max);
        for (c, e) in exps.iter().enumerate() {
            let target = if c == usize::from(label) { 1.0 } else { 0.0 };
            dlogits[r * CLASSES + c] = ((e / sum - target) / m as f64) as f32;
        }
    }
    Head {
        loss: loss / m as f64,
        correct,
        dlogits,
    }
}

/// The Adam optimiser (Kingma & Ba), one moment pair per parameter tensor.
pub struct Adam {
    lr: f32,
    t: i32,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPSILON: f32 = 1e-8;

impl Adam {
    /// An optimiser with learning rate `lr` for the parameters of `model`.
    pub fn new(model: &Mlp, lr: f32) -> Adam {
        let moments = model
            .layers
            .iter()
            .flat_map(|l| [l.w.len(), l.b.len()])
            .map(|len| (vec![0.0; len], vec![0.0; len]))
            .collect();
        Adam { lr, t: 0, moments }
    }

    /// Applies one update; `grads[i]` is `(dw, db)` of layer `i`.
    fn step(&mut self, layers: &mut [Layer], grads: &[LayerGrads]) {
        self.t += 1;
        let correction1 = 1.0 - BETA1.powi(self.t);
        let correction2 = 1.0 - BETA2.powi(self.t);
        let params = layers.iter_mut().flat_map(|l| [&mut l.w, &mut l.b]);
        let gradients = grads.iter().flat_map(|(dw, db)| [dw, db]);
        for ((param, grad), (m, v)) in params.zip(gradients).zip(&mut self.moments) {
            for i in 0..param.len() {
                m[i] = BETA1 * m[i] + (1.0 - BETA1) * grad[i];
                v[i] = BETA2 * v[i] + (1.0 - BETA2) * grad[i] * grad[i];
                let m_hat = m[i] / correction1;
                let v_hat = v[i] / correction2;
                param[i] -= self.lr * m_hat / (v_hat.sqrt() + EPSILON);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: usize, inputs: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = (0..rows * inputs)
            .map(|_| rng.random_range(0.0..1.0))
            .collect();
        let labels = (0..rows)
            .map(|_| rng.random_range(0..CLASSES as u8))
            .collect();
        (x, labels)
    }

    #[test]
    fn softmax_gradient_matches_finite_differences() {
        let (logits, labels) = batch(3, CLASSES, 5);
        let logits: Vec<f32> = logits.iter().map(|v| 4.0 * v - 2.0).collect();
        let head = softmax_cross_entropy(&logits, &labels);
        for i in [0, 7, 13, 29] {
            let eps = 1e-3;
            let mut plus = logits.clone();
            plus[i] += eps;
            let mut minus = logits.clone();
            minus[i] -= eps;
            let numeric = (softmax_cross_entropy(&plus, &labels).loss
                - softmax_cross_entropy(&minus, &labels).loss)
                / (2.0 * f64::from(eps));
            let analytic = f64::from(head.dlogits[i]);
            assert!(
                (numeric - analytic).abs() < 1e-4,
                "logit {i}: numeric {numeric} analytic {analytic}"
            );
        }
    }

    #[test]
    fn softmax_of_huge_logits_stays_finite() {
        let mut logits = vec![0.0f32; CLASSES];
        logits[3] = 1e30;
        let head = softmax_cross_entropy(&logits, &[3]);
        assert_eq!(head.correct, 1);
        assert!(head.loss.is_finite() && head.dlogits.iter().all(|g| g.is_finite()));
    }

    /// The MLP's gradients, through the library's CPU reference forward and backward, agree
    /// with finite differences of the loss, with and without dropout (the masks held fixed by
    /// reusing the same specs).
    #[test]
    fn mlp_gradients_match_finite_differences() {
        let backend = Backend::Cpu;
        let mut model = Mlp::new(&[9, 7, 6, CLASSES], 3);
        // Non-zero biases so that their gradients are exercised too.
        for layer in &mut model.layers {
            for (i, b) in layer.b.iter_mut().enumerate() {
                *b = 0.05 * (i as f32 % 3.0) - 0.02;
            }
        }
        let (x, labels) = batch(5, 9, 11);
        for p in [0.0, 0.3] {
            let mut gen = DropoutGenerator::new(17);
            let specs = model.specs(labels.len(), Some((&mut gen, p)));
            let (_, grads) = model.gradients(&backend, &specs, &x, &labels).unwrap();
            let loss_at = |m: &Mlp| {
                let outputs = m.forward(&backend, &specs, &x).unwrap();
                softmax_cross_entropy(outputs.last().unwrap(), &labels).loss
            };
            for (layer, (dw, db)) in grads.iter().enumerate() {
                for (tensor, index) in [(0, 0), (0, 11), (1, 2)] {
                    let eps = 1e-2f32;
                    let mut plus = model.clone();
                    let mut minus = model.clone();
                    let (p_param, m_param) = if tensor == 0 {
                        (&mut plus.layers[layer].w, &mut minus.layers[layer].w)
                    } else {
                        (&mut plus.layers[layer].b, &mut minus.layers[layer].b)
                    };
                    p_param[index] += eps;
                    m_param[index] -= eps;
                    let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * f64::from(eps));
                    let analytic = f64::from(if tensor == 0 { dw[index] } else { db[index] });
                    assert!(
                        (numeric - analytic).abs() < 2e-3 + 2e-2 * analytic.abs(),
                        "p {p} layer {layer} tensor {tensor} index {index}: numeric {numeric} \
                         analytic {analytic}"
                    );
                }
            }
        }
    }

    #[test]
    fn adam_moves_every_parameter_against_its_gradient() {
        let mut model = Mlp::new(&[4, 3, CLASSES], 1);
        let before = model.clone();
        let mut adam = Adam::new(&model, 0.01);
        let grads: Vec<LayerGrads> = model
            .layers
            .iter()
            .map(|l| (vec![1.0; l.w.len()], vec![-1.0; l.b.len()]))
            .collect();
        adam.step(&mut model.layers, &grads);
        for (after, before) in model.layers.iter().zip(&before.layers) {
            // The first bias-corrected Adam step has size lr in the direction of -sign(grad).
            for (a, b) in after.w.iter().zip(&before.w) {
                assert!((b - a - 0.01).abs() < 1e-6);
            }
            for (a, b) in after.b.iter().zip(&before.b) {
                assert!((a - b - 0.01).abs() < 1e-6);
            }
        }
    }
}
