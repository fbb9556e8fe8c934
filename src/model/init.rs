//! Seeded weight initialisation. Every tensor draws from its own ChaCha8
//! stream (seed + parameter name), so weights do not depend on burn's global
//! generator, on thread count or on which other trials run in the process.

use std::cell::Cell;

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::rng;

/// `model.init`: how weight matrices are initialised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// burn's (and PyTorch's) defaults: linear and conv weights and biases
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`; recurrent weights and biases
    /// `U(-1/sqrt(hidden), 1/sqrt(hidden))`; embeddings `N(0, 1)`.
    #[default]
    Default,
    /// Glorot: weights `U(-a, a)` with `a = sqrt(6 / (fan_in + fan_out))`, biases 0.
    XavierUniform,
    /// He: weights `U(-a, a)` with `a = sqrt(6 / fan_in)`, biases 0.
    KaimingUniform,
}

/// `model.recurrent_init`: how hidden-to-hidden weights start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecurrentInit {
    /// As `init` says for every other weight.
    #[default]
    Default,
    /// Each gate's `[hidden, hidden]` block an orthogonal matrix: the Q of a
    /// seeded standard normal matrix's QR decomposition with R's diagonal
    /// made positive (`torch.nn.init.orthogonal_`; Keras' recurrent default).
    Orthogonal,
}

/// `model.embedding_init`: how a learned embedding table starts (a GloVe
/// table follows its own rule, see `model::glove`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingInit {
    /// `N(0, 1)`: PyTorch's `nn.Embedding` and burn's default.
    #[default]
    Normal,
    /// `U(-0.05, 0.05)`: Keras' `Embedding` default. Small vectors move
    /// quickly under per-weight adaptive steps (RMSprop, Adam).
    Uniform,
}

/// The bound of [`EmbeddingInit::Uniform`].
const KERAS_EMBEDDING_BOUND: f32 = 0.05;

/// Draws parameters from per-name streams under one seed. Parameter ids are
/// numbered in creation order (burn's are random), so saved records are
/// reproducible too.
pub struct Initializer<'a> {
    seed: u64,
    rule: Init,
    recurrent: RecurrentInit,
    device: &'a Device,
    next_id: Cell<u64>,
}

impl<'a> Initializer<'a> {
    /// Parameters for `seed` under `rule` on `device`.
    pub fn new(seed: u64, rule: Init, device: &'a Device) -> Initializer<'a> {
        Initializer {
            seed,
            rule,
            recurrent: RecurrentInit::Default,
            device,
            next_id: Cell::new(1),
        }
    }

    /// The same, with hidden-to-hidden weights drawn per `recurrent`.
    pub fn with_recurrent(self, recurrent: RecurrentInit) -> Initializer<'a> {
        Initializer { recurrent, ..self }
    }

    /// Hidden-to-hidden weights `[hidden, gates * hidden]`; `default_bound` as for [`Initializer::weight`].
    pub fn recurrent(&self, name: &str, hidden: usize, gates: usize, default_bound: f32) -> Param<Tensor<2>> {
        let width = gates * hidden;
        if self.recurrent == RecurrentInit::Default {
            return self.weight(name, [hidden, width], hidden, width, default_bound);
        }
        let mut stream = rng::stream(self.seed, &format!("init/{name}"));
        let mut values = vec![0.0f32; hidden * width];
        for gate in 0..gates {
            let q = orthogonal(hidden, || f64::from(rng::normal(&mut stream)));
            for (row, q_row) in q.chunks_exact(hidden).enumerate() {
                let at = row * width + gate * hidden;
                for (v, &x) in values[at..at + hidden].iter_mut().zip(q_row) {
                    *v = x as f32;
                }
            }
        }
        self.param(values, [hidden, width])
    }

    /// A weight of `shape` with the given fans; `default_bound` is the bound of the default rule.
    pub fn weight<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        fan_in: usize,
        fan_out: usize,
        default_bound: f32,
    ) -> Param<Tensor<D>> {
        let bound = match self.rule {
            Init::Default => default_bound,
            Init::XavierUniform => (6.0 / (fan_in + fan_out) as f32).sqrt(),
            Init::KaimingUniform => (6.0 / fan_in as f32).sqrt(),
        };
        self.uniform(name, shape, bound)
    }

    /// A bias: `U(-default_bound, default_bound)` under the default rule, else zeros.
    pub fn bias(&self, name: &str, size: usize, default_bound: f32) -> Param<Tensor<1>> {
        match self.rule {
            Init::Default => self.uniform(name, [size], default_bound),
            _ => self.constant([size], 0.0),
        }
    }

    /// `U(-bound, bound)` values.
    pub fn uniform<const D: usize>(&self, name: &str, shape: [usize; D], bound: f32) -> Param<Tensor<D>> {
        let mut stream = rng::stream(self.seed, &format!("init/{name}"));
        let n = shape.iter().product();
        let values = (0..n).map(|_| (rng::unit(&mut stream) * 2.0 - 1.0) * bound).collect();
        self.param(values, shape)
    }

    /// A learned embedding table `[vocab, dim]` drawn per `rule`.
    pub fn embedding(&self, name: &str, shape: [usize; 2], rule: EmbeddingInit) -> Param<Tensor<2>> {
        match rule {
            EmbeddingInit::Normal => self.normal(name, shape),
            EmbeddingInit::Uniform => self.uniform(name, shape, KERAS_EMBEDDING_BOUND),
        }
    }

    /// `N(0, 1)` values.
    pub fn normal<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<Tensor<D>> {
        let mut stream = rng::stream(self.seed, &format!("init/{name}"));
        let n = shape.iter().product();
        self.param((0..n).map(|_| rng::normal(&mut stream)).collect(), shape)
    }

    /// Every value equal to `value`.
    pub fn constant<const D: usize>(&self, shape: [usize; D], value: f32) -> Param<Tensor<D>> {
        self.param(vec![value; shape.iter().product()], shape)
    }

    /// A trainable parameter holding `values`.
    pub fn param<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Param<Tensor<D>> {
        let id = self.next_id.replace(self.next_id.get() + 1);
        let mut tensor = Tensor::from_data(TensorData::new(values, shape), self.device);
        if self.device.is_autodiff() {
            tensor = tensor.require_grad();
        }
        Param::initialized(ParamId::from(id), tensor)
    }
}

/// An `n x n` orthogonal matrix, row-major: modified Gram-Schmidt (in f64) on
/// the columns of a matrix drawn from `draw`, which leaves the diagonal of R
/// positive, as `torch.nn.init.orthogonal_`'s sign correction does.
fn orthogonal(n: usize, mut draw: impl FnMut() -> f64) -> Vec<f64> {
    let mut columns: Vec<Vec<f64>> = (0..n).map(|_| (0..n).map(|_| draw()).collect()).collect();
    for j in 0..n {
        for i in 0..j {
            let dot: f64 = columns[i].iter().zip(&columns[j]).map(|(a, b)| a * b).sum();
            let (done, rest) = columns.split_at_mut(j);
            for (x, q) in rest[0].iter_mut().zip(&done[i]) {
                *x -= dot * q;
            }
        }
        let norm = columns[j].iter().map(|x| x * x).sum::<f64>().sqrt();
        columns[j].iter_mut().for_each(|x| *x /= norm);
    }
    let mut matrix = vec![0.0; n * n];
    for (j, column) in columns.iter().enumerate() {
        for (i, &x) in column.iter().enumerate() {
            matrix[i * n + j] = x;
        }
    }
    matrix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_recurrent_blocks_are_orthogonal_and_seeded() {
        let device = Device::flex();
        let init = Initializer::new(7, Init::Default, &device).with_recurrent(RecurrentInit::Orthogonal);
        let (hidden, gates) = (6, 3);
        let draw = || {
            let param = init.recurrent("w", hidden, gates, 0.1);
            param.val().into_data().try_into_vec::<f32>().unwrap()
        };
        let w = draw();
        for gate in 0..gates {
            let at = |r: usize, c: usize| f64::from(w[r * gates * hidden + gate * hidden + c]);
            for a in 0..hidden {
                for b in 0..hidden {
                    let dot: f64 = (0..hidden).map(|r| at(r, a) * at(r, b)).sum();
                    let expected = if a == b { 1.0 } else { 0.0 };
                    assert!(
                        (dot - expected).abs() < 1e-5,
                        "gate {gate}: columns {a}, {b} give {dot}"
                    );
                }
            }
        }
        assert_eq!(w, draw());
    }

    #[test]
    fn uniform_embeddings_stay_within_the_keras_bound_and_are_seeded() {
        let device = Device::flex();
        let init = Initializer::new(7, Init::Default, &device);
        let draw = |rule| {
            let param = init.embedding("embedding", [500, 8], rule);
            param.val().into_data().try_into_vec::<f32>().unwrap()
        };
        let uniform = draw(EmbeddingInit::Uniform);
        assert!(uniform.iter().all(|v| v.abs() <= 0.05));
        let largest = uniform.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(largest > 0.049, "{largest}: the draws fill the range");
        assert_eq!(uniform, draw(EmbeddingInit::Uniform));
        let normal = draw(EmbeddingInit::Normal);
        let spread = (normal.iter().map(|v| v * v).sum::<f32>() / normal.len() as f32).sqrt();
        assert!(
            (0.9..1.1).contains(&spread),
            "N(0, 1) has a standard deviation of {spread}"
        );
    }
}
