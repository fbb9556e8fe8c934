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

/// Draws parameters from per-name streams under one seed. Parameter ids are
/// numbered in creation order (burn's are random), so saved records are
/// reproducible too.
pub struct Initializer<'a> {
    seed: u64,
    rule: Init,
    device: &'a Device,
    next_id: Cell<u64>,
}

impl<'a> Initializer<'a> {
    /// Parameters for `seed` under `rule` on `device`.
    pub fn new(seed: u64, rule: Init, device: &'a Device) -> Initializer<'a> {
        Initializer {
            seed,
            rule,
            device,
            next_id: Cell::new(1),
        }
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
