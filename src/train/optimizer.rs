//! Fused optimizers with PyTorch's update rules and defaults.
//!
//! burn's optimizers make many full tensor passes per parameter, which
//! dominates the step of the small text models (the embedding table is most
//! of their weights). Here every parameter is updated in one pass over plain
//! `f32` slices that fuses gradient clipping, weight decay, the moment updates
//! and the parameter update, split into fixed chunks across the thread pool
//! (element-wise, so results do not depend on the thread count).
//!
//! Off the host (libtorch, `cuda:N`) the same rules run as tensor operations
//! on the device: parameters, gradients and moments never leave it, and a
//! step reads back at most one number (the global gradient norm).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::kernels::{runs_fused, widest_simd};

/// Elements per chunk of the parallel passes; fixed so sums do not depend on threads.
const CHUNK: usize = 1 << 15;

/// `stages.train.optimizer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `sgd`, `adam`, `adamw` (default) or `rmsprop`.
    #[serde(rename = "type", default)]
    pub kind: OptimizerKind,
    /// Peak learning rate (default 1e-3).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Weight decay: decoupled for `adamw`, an L2 term in the gradient otherwise (default 0, as the HF Trainer).
    #[serde(default)]
    pub weight_decay: f64,
    /// `sgd` and `rmsprop` momentum (default 0).
    #[serde(default)]
    pub momentum: f64,
    /// `sgd`: Nesterov momentum (default false).
    #[serde(default)]
    pub nesterov: bool,
    /// `adam`/`adamw` moment decay rates (default [0.9, 0.999]).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// `adam`/`adamw`/`rmsprop` denominator term (default 1e-8).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// `rmsprop` smoothing constant (default 0.99).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_alpha() -> f64 {
    0.99
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::default(),
            lr: default_lr(),
            weight_decay: 0.0,
            momentum: 0.0,
            nesterov: false,
            betas: default_betas(),
            eps: default_eps(),
            alpha: default_alpha(),
        }
    }
}

/// The update rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, optionally with momentum.
    Sgd,
    /// Adam (weight decay as L2).
    Adam,
    /// Adam with decoupled weight decay.
    #[default]
    Adamw,
    /// RMSprop.
    Rmsprop,
}

impl OptimizerConfig {
    /// Checks ranges; returns the key and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(("lr", "must be a positive number".into()));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(("betas", "both must be in [0, 1)".into()));
        }
        if !(0.0..1.0).contains(&self.alpha) {
            return Err(("alpha", "must be in [0, 1)".into()));
        }
        if self.weight_decay < 0.0 || self.momentum < 0.0 || self.eps < 0.0 {
            return Err((
                "weight_decay",
                "weight_decay, momentum and eps cannot be negative".into(),
            ));
        }
        Ok(())
    }
}

/// How gradients are clipped before the update.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clipping {
    /// Scale all gradients so that their global L2 norm is at most this.
    pub max_norm: Option<f64>,
    /// Clamp every gradient value to `[-v, v]`.
    pub max_value: Option<f64>,
}

/// Per-parameter optimizer state (moments or momentum buffers): on the host,
/// or flattened on the device for parameters that live there.
#[derive(Default)]
struct Slot {
    first: Vec<f32>,
    second: Vec<f32>,
    on_device: Option<[Tensor<1>; 2]>,
}

/// An optimizer's state (see [`Optimizer::state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Steps taken.
    pub steps: i32,
    /// Per parameter, in visiting order, its two buffers (the moments, or
    /// the momentum buffer and nothing; empty before its first update).
    pub buffers: Vec<[Vec<f32>; 2]>,
}

/// An optimizer over a module's parameters, in the module's visiting order.
///
/// Parameter values and gradients move between burn and plain vectors
/// without copies where burn allows it (uniquely owned, contiguous tensors).
pub struct Optimizer {
    config: OptimizerConfig,
    slots: Vec<Slot>,
    steps: i32,
    decays: Vec<bool>,
}

impl Optimizer {
    /// A fresh optimizer; `decays` says per parameter, in visiting order,
    /// whether weight decay applies to it (all do when it is shorter).
    pub fn new(config: OptimizerConfig, decays: Vec<bool>) -> Optimizer {
        Optimizer {
            config,
            slots: Vec::new(),
            steps: 0,
            decays,
        }
    }

    /// What the optimizer holds after the steps so far, for a training run
    /// that stops and goes on later; `None` when some of it lives on a
    /// device (a run there starts over instead).
    pub fn state(&self) -> Option<OptimizerState> {
        if self.slots.iter().any(|slot| slot.on_device.is_some()) {
            return None;
        }
        Some(OptimizerState {
            steps: self.steps,
            buffers: self
                .slots
                .iter()
                .map(|slot| [slot.first.clone(), slot.second.clone()])
                .collect(),
        })
    }

    /// Goes on from `state` (of an optimizer with the same config and
    /// parameters): the next step is the one after its last.
    pub fn restore(&mut self, state: OptimizerState) {
        self.steps = state.steps;
        self.slots = state
            .buffers
            .into_iter()
            .map(|[first, second]| Slot {
                first,
                second,
                on_device: None,
            })
            .collect();
    }

    /// Applies one update at learning rate `lr`; returns the updated module
    /// and, when clipping by norm or when `want_norm`, the global gradient
    /// norm before clipping.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
        lr: f64,
        clipping: Clipping,
        want_norm: bool,
    ) -> (M, Option<f64>) {
        let mut gather = Gather {
            grads: &mut grads,
            found: Vec::new(),
        };
        module.visit(&mut gather);
        let mut found = gather.found;
        if self.slots.len() < found.len() {
            self.slots.resize_with(found.len(), Slot::default);
        }
        let norm = (want_norm || clipping.max_norm.is_some()).then(|| global_norm(&found));
        let scale = match (clipping.max_norm, norm) {
            (Some(max), Some(norm)) => (max / (norm + 1e-6)).min(1.0) as f32,
            _ => 1.0,
        };
        self.steps += 1;
        let rule = Rule::new(&self.config, lr, self.steps, scale, clipping.max_value);
        let mut apply = Apply {
            slots: &mut self.slots,
            grads: &mut found,
            rule,
            decays: &self.decays,
            index: 0,
        };
        (module.map(&mut apply), norm)
    }
}

/// The L2 norm of all gradients together. Host gradients are summed in fixed
/// chunks so that it does not depend on the thread count; device gradients
/// are summed on their device and read back once.
fn global_norm(grads: &[Option<Grad>]) -> f64 {
    let mut on_device: Option<Tensor<1>> = None;
    let mut squares = 0.0;
    for grad in grads.iter().flatten() {
        match grad {
            Grad::Host(_) => {
                let parts: Vec<f64> = grad
                    .values()
                    .par_chunks(CHUNK)
                    .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
                    .collect();
                squares += parts.iter().sum::<f64>();
            }
            Grad::Device(g) => {
                let sum = (g.clone() * g.clone()).sum();
                on_device = Some(match on_device {
                    Some(total) => total + sum,
                    None => sum,
                });
            }
        }
    }
    if let Some(total) = on_device {
        squares += f64::from(total.into_scalar::<f32>());
    }
    squares.sqrt()
}

/// A gradient: its values owned by burn's buffer on the host (no copy out of
/// the tensor), or flattened on its device.
enum Grad {
    Host(TensorData),
    Device(Tensor<1>),
}

impl Grad {
    fn values(&self) -> &[f32] {
        match self {
            Grad::Host(data) => data.as_slice::<f32>().expect("gradients are f32"),
            Grad::Device(_) => unreachable!("device gradients stay on the device"),
        }
    }
}

/// Takes every float parameter's gradient (or `None`) in visiting order.
struct Gather<'a> {
    grads: &'a mut GradientsParams,
    found: Vec<Option<Grad>>,
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = self.grads.remove::<D>(param.id).map(|g| {
            if runs_fused(&g.device()) {
                Grad::Host(g.into_data())
            } else {
                let n = g.shape().num_elements();
                Grad::Device(g.reshape([n]))
            }
        });
        self.found.push(grad);
    }
}

/// Updates every parameter that has a gradient.
struct Apply<'a> {
    slots: &'a mut [Slot],
    grads: &'a mut [Option<Grad>],
    rule: Rule,
    decays: &'a [bool],
    index: usize,
}

impl ModuleMapper for Apply<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let index = self.index;
        self.index += 1;
        let Some(grad) = self.grads[index].take() else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let mut rule = self.rule;
        if !self.decays.get(index).copied().unwrap_or(true) {
            rule.weight_decay = 0.0;
        }
        let slot = &mut self.slots[index];
        if let Grad::Device(grad) = grad {
            let shape = tensor.shape();
            let values = tensor.inner().reshape([shape.num_elements()]);
            let moments = slot.on_device.get_or_insert_with(|| {
                let zeros = || values.zeros_like();
                [zeros(), zeros()]
            });
            let updated = rule.apply_on_device(values, moments, grad).reshape(shape);
            return Param::from_mapped_value(id, updated.autodiff().require_grad(), mapper);
        }
        let device = tensor.device();
        // Updated in burn's own buffer: no copy when the tensor is uniquely owned.
        let mut data = tensor.into_data();
        let values = data.as_mut_slice::<f32>().expect("parameters are f32");
        if slot.first.is_empty() {
            slot.first = vec![0.0; values.len()];
            if self.rule.needs_second() {
                slot.second = vec![0.0; values.len()];
            }
        }
        rule.apply(values, slot, grad.values());
        let updated = Tensor::<D>::from_data(data, &device).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// One step's update rule with its scalars resolved.
#[derive(Clone, Copy)]
struct Rule {
    kind: OptimizerKind,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    nesterov: bool,
    beta1: f32,
    beta2: f32,
    eps: f32,
    alpha: f32,
    /// `1 - beta1^t` and `sqrt(1 - beta2^t)`.
    correction1: f32,
    correction2_sqrt: f32,
    scale: f32,
    max_value: Option<f32>,
}

impl Rule {
    fn new(config: &OptimizerConfig, lr: f64, steps: i32, scale: f32, max_value: Option<f64>) -> Rule {
        let [beta1, beta2] = config.betas;
        Rule {
            kind: config.kind,
            lr: lr as f32,
            weight_decay: config.weight_decay as f32,
            momentum: config.momentum as f32,
            nesterov: config.nesterov,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: config.eps as f32,
            alpha: config.alpha as f32,
            correction1: (1.0 - beta1.powi(steps)) as f32,
            correction2_sqrt: (1.0 - beta2.powi(steps)).sqrt() as f32,
            scale,
            max_value: max_value.map(|v| v as f32),
        }
    }

    fn needs_second(&self) -> bool {
        match self.kind {
            OptimizerKind::Adam | OptimizerKind::Adamw => true,
            OptimizerKind::Rmsprop => self.momentum != 0.0,
            OptimizerKind::Sgd => false,
        }
    }

    /// Updates one parameter's `values` in place, chunk by chunk in parallel.
    fn apply(&self, values: &mut [f32], slot: &mut Slot, grad: &[f32]) {
        let rule = *self;
        let second: &mut [f32] = if slot.second.is_empty() {
            &mut []
        } else {
            &mut slot.second
        };
        if second.is_empty() {
            values
                .par_chunks_mut(CHUNK)
                .zip(slot.first.par_chunks_mut(CHUNK))
                .zip(grad.par_chunks(CHUNK))
                .for_each(|((p, m), g)| rule.update(p, m, &mut [], g));
        } else {
            values
                .par_chunks_mut(CHUNK)
                .zip(slot.first.par_chunks_mut(CHUNK))
                .zip(second.par_chunks_mut(CHUNK))
                .zip(grad.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| rule.update(p, m, v, g));
        }
    }

    /// The update of one parameter on its device, flattened: `p` and `g` are
    /// its values and gradient, `moments` the rule's two buffers. The same
    /// rules as [`Rule::update_portable`], as tensor operations.
    fn apply_on_device(&self, p: Tensor<1>, moments: &mut [Tensor<1>; 2], g: Tensor<1>) -> Tensor<1> {
        let mut g = if self.scale != 1.0 { g.mul_scalar(self.scale) } else { g };
        if let Some(c) = self.max_value {
            g = g.clamp(-c, c);
        }
        let [m, v] = moments;
        match self.kind {
            OptimizerKind::Sgd => {
                let d = g + p.clone().mul_scalar(self.weight_decay);
                *m = m.clone().mul_scalar(self.momentum) + d.clone();
                let step = if self.nesterov {
                    d + m.clone().mul_scalar(self.momentum)
                } else {
                    m.clone()
                };
                p - step.mul_scalar(self.lr)
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let (decay, l2) = if self.kind == OptimizerKind::Adamw {
                    (1.0 - self.lr * self.weight_decay, 0.0)
                } else {
                    (1.0, self.weight_decay)
                };
                let d = g + p.clone().mul_scalar(l2);
                *m = m.clone().mul_scalar(self.beta1) + d.clone().mul_scalar(1.0 - self.beta1);
                *v = v.clone().mul_scalar(self.beta2) + (d.clone() * d).mul_scalar(1.0 - self.beta2);
                let denominator = v.clone().sqrt().div_scalar(self.correction2_sqrt).add_scalar(self.eps);
                p.mul_scalar(decay) - (m.clone() / denominator).mul_scalar(self.lr / self.correction1)
            }
            OptimizerKind::Rmsprop => {
                let d = g + p.clone().mul_scalar(self.weight_decay);
                *m = m.clone().mul_scalar(self.alpha) + (d.clone() * d.clone()).mul_scalar(1.0 - self.alpha);
                let scaled = d / m.clone().sqrt().add_scalar(self.eps);
                if self.momentum == 0.0 {
                    p - scaled.mul_scalar(self.lr)
                } else {
                    *v = v.clone().mul_scalar(self.momentum) + scaled;
                    p - v.clone().mul_scalar(self.lr)
                }
            }
        }
    }

    /// The fused update of one chunk. `m` is Adam's first moment, SGD's
    /// momentum buffer or RMSprop's square average; `v` is Adam's second
    /// moment or RMSprop's momentum buffer (empty when unused).
    ///
    /// Compiled for AVX-512 and AVX2 too, used when the CPU has them (see
    /// [`widest_simd`]): every instruction set gives the same bits.
    fn update(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        widest_simd(
            #[inline(always)]
            || self.update_portable(p, m, v, g),
        )
    }

    /// [`Rule::update`] for any instruction set. Options are folded into
    /// coefficients so that the loops have no branches and vectorise.
    #[inline(always)]
    fn update_portable(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let (lo, hi) = self.max_value.map_or((f32::NEG_INFINITY, f32::INFINITY), |c| (-c, c));
        let scale = self.scale;
        let clip = move |x: f32| (x * scale).max(lo).min(hi);
        match self.kind {
            OptimizerKind::Sgd => {
                // buf = momentum * buf + d (buf starts at 0, so the first step gives d);
                // step = d + momentum * buf with Nesterov, buf otherwise.
                let (a, b) = if self.nesterov {
                    (1.0, self.momentum)
                } else {
                    (0.0, 1.0)
                };
                let (lr, wd, momentum) = (self.lr, self.weight_decay, self.momentum);
                for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
                    let d = clip(g) + wd * *p;
                    *m = momentum * *m + d;
                    *p -= lr * (a * d + b * *m);
                }
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                // AdamW decays the weights (decay < 1, l2 = 0); Adam adds an L2 term (decay = 1).
                let (decay, l2) = if self.kind == OptimizerKind::Adamw {
                    (1.0 - self.lr * self.weight_decay, 0.0)
                } else {
                    (1.0, self.weight_decay)
                };
                let step_size = self.lr / self.correction1;
                let (b1, b2, c2, eps) = (self.beta1, self.beta2, self.correction2_sqrt, self.eps);
                for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                    let d = clip(g) + l2 * *p;
                    *p *= decay;
                    *m = b1 * *m + (1.0 - b1) * d;
                    *v = b2 * *v + (1.0 - b2) * d * d;
                    *p -= step_size * *m / (v.sqrt() / c2 + eps);
                }
            }
            OptimizerKind::Rmsprop => {
                let (lr, wd, alpha, eps, momentum) = (self.lr, self.weight_decay, self.alpha, self.eps, self.momentum);
                if v.is_empty() {
                    for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
                        let d = clip(g) + wd * *p;
                        *m = alpha * *m + (1.0 - alpha) * d * d;
                        *p -= lr * d / (m.sqrt() + eps);
                    }
                } else {
                    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                        let d = clip(g) + wd * *p;
                        *m = alpha * *m + (1.0 - alpha) * d * d;
                        *v = momentum * *v + d / (m.sqrt() + eps);
                        *p -= lr * *v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: OptimizerKind, steps: i32, scale: f32) -> Rule {
        let config = OptimizerConfig {
            kind,
            weight_decay: 0.1,
            momentum: 0.9,
            ..OptimizerConfig::default()
        };
        Rule::new(&config, 0.01, steps, scale, None)
    }

    #[test]
    fn adamw_matches_pytorch_first_steps() {
        // torch.optim.AdamW([p], lr=0.01, weight_decay=0.1) with p=1, g=0.5 then g=-0.25:
        // step 1: p = 1*(1-0.001) - 0.01 * 1 / (1 + 1e-8/0.5) = 0.989
        // step 2: m = 0.9*0.05 - 0.025 = 0.02, v = 0.999*0.00025 + 0.001*0.0625
        let mut p = vec![1.0];
        let mut slot = Slot {
            first: vec![0.0],
            second: vec![0.0],
            on_device: None,
        };
        rule(OptimizerKind::Adamw, 1, 1.0).apply(&mut p, &mut slot, &[0.5]);
        assert!((p[0] - 0.989).abs() < 1e-6, "{}", p[0]);
        rule(OptimizerKind::Adamw, 2, 1.0).apply(&mut p, &mut slot, &[-0.25]);
        let (m, v): (f64, f64) = (0.02, 0.999 * 0.00025 + 0.001 * 0.0625);
        let expected = 0.989 * (1.0 - 0.001) - 0.01 / (1.0 - 0.81) * m / ((v / (1.0 - 0.998001)).sqrt() + 1e-8);
        assert!((f64::from(p[0]) - expected).abs() < 1e-6, "{} vs {expected}", p[0]);
    }

    #[test]
    fn sgd_momentum_and_clipping_scale() {
        // torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=0.1), gradient scaled by 0.5:
        // d = 0.5*2 + 0.1*1 = 1.1; buf = d; p = 1 - 0.011.
        let mut p = vec![1.0];
        let mut slot = Slot {
            first: vec![0.0],
            second: Vec::new(),
            on_device: None,
        };
        rule(OptimizerKind::Sgd, 1, 0.5).apply(&mut p, &mut slot, &[2.0]);
        assert!((p[0] - 0.989).abs() < 1e-6);
        // d = 0.5*2 + 0.1*0.989; buf = 0.9*1.1 + d.
        rule(OptimizerKind::Sgd, 2, 0.5).apply(&mut p, &mut slot, &[2.0]);
        let d = 1.0 + 0.1 * 0.989;
        let expected = 0.989 - 0.01 * (0.9 * 1.1 + d);
        assert!((f64::from(p[0]) - expected).abs() < 1e-6);
    }

    /// The device rules (libtorch here) give the host rules' values.
    #[cfg(feature = "tch")]
    #[test]
    fn device_updates_match_the_host_updates() {
        let device = crate::backend::device("libtorch").unwrap();
        assert!(!runs_fused(&device));
        let tensor = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
        let host_grad = Some(Grad::Host(TensorData::new(vec![12.0f32], [1])));
        assert_eq!(global_norm(&[Some(Grad::Device(tensor(&[3.0, 4.0]))), host_grad]), 13.0);
        let grads: Vec<f32> = (0..37).map(|i| ((i * 7919) % 100) as f32 / 25.0 - 2.0).collect();
        for (kind, momentum, nesterov) in [
            (OptimizerKind::Sgd, 0.9, true),
            (OptimizerKind::Sgd, 0.0, false),
            (OptimizerKind::Adam, 0.0, false),
            (OptimizerKind::Adamw, 0.0, false),
            (OptimizerKind::Rmsprop, 0.0, false),
            (OptimizerKind::Rmsprop, 0.9, false),
        ] {
            let config = OptimizerConfig {
                kind,
                weight_decay: 0.1,
                momentum,
                nesterov,
                ..OptimizerConfig::default()
            };
            let mut host = vec![0.5f32; grads.len()];
            let needs_second = Rule::new(&config, 0.01, 1, 0.5, None).needs_second();
            let mut slot = Slot {
                first: vec![0.0; grads.len()],
                second: if needs_second {
                    vec![0.0; grads.len()]
                } else {
                    Vec::new()
                },
                on_device: None,
            };
            let mut on_device = tensor(&host);
            let mut moments = [on_device.zeros_like(), on_device.zeros_like()];
            for step in 1..=3 {
                let rule = Rule::new(&config, 0.01, step, 0.5, Some(0.8));
                rule.apply(&mut host, &mut slot, &grads);
                on_device = rule.apply_on_device(on_device, &mut moments, tensor(&grads));
            }
            let values = on_device.into_data().try_into_vec::<f32>().unwrap();
            for (a, b) in host.iter().zip(&values) {
                assert!((a - b).abs() <= 1e-6, "{kind:?}: host {host:?} device {values:?}");
            }
        }
    }

    #[test]
    fn global_norm_spans_all_parameters() {
        let grad = |v: Vec<f32>| Some(Grad::Host(TensorData::new(v.clone(), [v.len()])));
        assert_eq!(global_norm(&[grad(vec![3.0, 4.0]), None, grad(vec![12.0])]), 13.0);
    }

    #[test]
    fn chunked_updates_do_not_depend_on_threads() {
        let n = CHUNK * 3 + 17;
        let grad: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut p = vec![0.5; n];
                let mut slot = Slot {
                    first: vec![0.0; n],
                    second: vec![0.0; n],
                    on_device: None,
                };
                for step in 1..=3 {
                    rule(OptimizerKind::Adam, step, 1.0).apply(&mut p, &mut slot, &grad);
                }
                (p, global_norm(&[Some(Grad::Host(TensorData::new(grad.clone(), [n])))]))
            })
        };
        assert_eq!(run(1), run(2));
    }
}
