//! Attention's softmax, `softmax(scores * scale + key_bias)` over the keys,
//! as one operation with a hand-written backward pass.
//!
//! Composed from burn's operations this is a scalar multiply, a broadcast
//! add, softmax's max, subtraction, `exp`, sum and division, and in the
//! backward pass as many again, each a pass over `[batch, heads, queries,
//! keys]` scores (6 MB a layer for MiniLM at 8 x 128 tokens), with `libm`'s
//! scalar `expf` and, for several of them, on one thread. Here each row of
//! keys is one pass forward and one backward, rows split between rayon's
//! threads, with the vectorized `exp` of [`exp_negative`]. A row's sums run
//! in 16 lanes, a fixed order, so results do not depend on the thread count.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::activation;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::kernels::{HostValues, exp_negative, host, register_host_grads, runs_fused, widest_simd};

/// Rows of keys per rayon task.
const ROWS_PER_TASK: usize = 64;

/// Partial sums (and maxima) per row: one AVX-512 vector of f32.
const LANES: usize = 16;

/// Attention's softmax as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait SoftmaxOps: Backend {
    /// `scores: [batch, heads, queries, keys]` times `scale`, plus `key_bias:
    /// [batch, keys]` (the same for every head and query), through a softmax
    /// over the keys. `key_bias` takes no gradient.
    fn attention_softmax(scores: FloatTensor<Self>, key_bias: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let device = scores.device();
        let shape = scores.shape();
        let keys = *shape.as_slice().last().expect("scores have a keys dimension");
        let probs = forward(&host::<Self>(scores), &host::<Self>(key_bias), keys, scale as f32);
        Self::float_from_data(TensorData::new(probs, shape), &device)
    }
}

impl SoftmaxOps for Flex {}

/// See [`SoftmaxOps::attention_softmax`]; burn's operations off the flex backend.
pub fn attention_softmax(scores: Tensor<4>, key_bias: Tensor<2>, scale: f64) -> Tensor<4> {
    if !runs_fused(&scores.device()) {
        let [batch, keys] = key_bias.dims();
        return activation::softmax(scores.mul_scalar(scale) + key_bias.reshape([batch, 1, 1, keys]), 3);
    }
    Tensor::from_dispatch(<Dispatch as SoftmaxOps>::attention_softmax(
        scores.into_dispatch(),
        key_bias.into_dispatch(),
        scale,
    ))
}

/// The probabilities of every row of `keys` scores; `key_bias` holds one
/// row of `keys` per batch entry.
fn forward(scores: &[f32], key_bias: &[f32], keys: usize, scale: f32) -> Vec<f32> {
    let mut probs = vec![0.0f32; scores.len()];
    if scores.is_empty() {
        return probs;
    }
    assert!(
        key_bias.len().is_multiple_of(keys) && scores.len().is_multiple_of(key_bias.len()),
        "key_bias is [batch, keys] for scores [batch, ..., keys]"
    );
    let rows_per_batch = scores.len() / key_bias.len();
    let task = ROWS_PER_TASK * keys;
    probs
        .par_chunks_mut(task)
        .zip(scores.par_chunks(task))
        .enumerate()
        .for_each(|(chunk, (probs, scores))| {
            widest_simd(
                #[inline(always)]
                || {
                    for (i, (p, s)) in probs.chunks_exact_mut(keys).zip(scores.chunks_exact(keys)).enumerate() {
                        let row = chunk * ROWS_PER_TASK + i;
                        let bias = &key_bias[row / rows_per_batch * keys..][..keys];
                        for ((p, &s), &b) in p.iter_mut().zip(s).zip(bias) {
                            *p = s * scale + b;
                        }
                        let max = lanes(p, f32::NEG_INFINITY, |lane, &v| lane.max(v))
                            .into_iter()
                            .fold(f32::NEG_INFINITY, f32::max);
                        for p in p.iter_mut() {
                            let y = *p - max;
                            // Padded keys (a bias near f32::MIN) get exactly 0, as libm's expf gives.
                            *p = if y < -87.0 { 0.0 } else { exp_negative(y) };
                        }
                        let sum: f32 = lanes(p, 0.0, |lane, &v| lane + v).into_iter().sum();
                        for p in p.iter_mut() {
                            *p /= sum;
                        }
                    }
                },
            )
        });
    probs
}

/// `d_scores = scale * p * (d_p - sum(d_p * p))` row by row.
fn backward(probs: &[f32], d_probs: &[f32], keys: usize, scale: f32) -> Vec<f32> {
    let mut d_scores = vec![0.0f32; probs.len()];
    let task = ROWS_PER_TASK * keys.max(1);
    d_scores
        .par_chunks_mut(task)
        .zip(probs.par_chunks(task))
        .zip(d_probs.par_chunks(task))
        .for_each(|((d_scores, probs), d_probs)| {
            widest_simd(
                #[inline(always)]
                || {
                    for ((d, p), g) in d_scores
                        .chunks_exact_mut(keys)
                        .zip(probs.chunks_exact(keys))
                        .zip(d_probs.chunks_exact(keys))
                    {
                        let products = lanes2(p, g, |lane, &p, &g| lane + p * g);
                        let dot: f32 = products.into_iter().sum();
                        for ((d, &p), &g) in d.iter_mut().zip(p).zip(g) {
                            *d = scale * (p * (g - dot));
                        }
                    }
                },
            )
        });
    d_scores
}

/// Lanes of a row reduced with `step`: element `i` goes to lane `i % LANES`,
/// so the reduction vectorizes and its order is fixed by the row's length
/// alone.
#[inline(always)]
fn lanes(values: &[f32], start: f32, step: impl Fn(f32, &f32) -> f32) -> [f32; LANES] {
    let mut lanes = [start; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = step(*lane, v);
        }
    }
    for (lane, v) in lanes.iter_mut().zip(rest) {
        *lane = step(*lane, v);
    }
    lanes
}

/// [`lanes`] over two rows element by element.
#[inline(always)]
fn lanes2(a: &[f32], b: &[f32], step: impl Fn(f32, &f32, &f32) -> f32) -> [f32; LANES] {
    let mut lanes = [0.0; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for ((lane, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane = step(*lane, x, y);
        }
    }
    for ((lane, x), y) in lanes.iter_mut().zip(rest_a).zip(rest_b) {
        *lane = step(*lane, x, y);
    }
    lanes
}

/// The autodiff node of attention's softmax.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend> Backward<B, 1> for SoftmaxBackward {
    /// The probabilities, the number of keys and the scale.
    type State = Arc<(HostValues, usize, f32)>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_probs = grads.consume::<B>(&ops.node);
        let device = d_probs.device();
        let shape = d_probs.shape().as_slice().to_vec();
        let [parent] = ops.parents.map(|p| p.map(|node| node.id));
        let (probs, keys, scale) = &*ops.state;
        let d_scores = backward(probs, &host::<B>(d_probs), *keys, *scale);
        register_host_grads::<B>(grads, [parent], [(d_scores, shape)], &device);
    }
}

impl<B: Backend + SoftmaxOps, C: CheckpointStrategy> SoftmaxOps for Autodiff<B, C> {
    fn attention_softmax(scores: FloatTensor<Self>, key_bias: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let node = scores.node();
        let (scores, key_bias) = (scores.into_primitive(), key_bias.into_primitive());
        let device = scores.device();
        let shape = scores.shape();
        let keys = *shape.as_slice().last().expect("scores have a keys dimension");
        let probs = forward(&host::<B>(scores), &host::<B>(key_bias), keys, scale as f32);
        let output = B::float_from_data(TensorData::new(probs, shape), &device);
        match SoftmaxBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let saved = (host::<B>(output.clone()), keys, scale as f32);
                prep.finish(Arc::new(saved), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{assert_close, assert_same_on_threads, tensor, values};
    use burn::tensor::Device;

    /// A key bias with the last `padded[b]` keys of batch entry `b` masked as BERT masks them.
    fn key_bias(keys: usize, padded: &[usize], device: &Device) -> Tensor<2> {
        let bias: Vec<f32> = padded
            .iter()
            .flat_map(|&p| (0..keys).map(move |k| if k + p >= keys { f32::MIN } else { 0.0 }))
            .collect();
        Tensor::from_data(TensorData::new(bias, [padded.len(), keys]), device)
    }

    #[test]
    fn output_and_gradient_equal_burns_softmax() {
        let device = Device::flex().autodiff();
        for (heads, queries, keys, padded) in [(1, 1, 1, vec![0]), (2, 3, 5, vec![0, 2]), (3, 70, 33, vec![32, 0])] {
            let batch = padded.len();
            let scores = tensor([batch, heads, queries, keys], 1, &device).mul_scalar(3.0);
            let bias = key_bias(keys, &padded, &device);
            let (s1, s2) = (scores.clone().require_grad(), scores.require_grad());
            let theirs = activation::softmax(
                s1.clone().mul_scalar(0.25) + bias.clone().reshape([batch, 1, 1, keys]),
                3,
            );
            let ours = attention_softmax(s2.clone(), bias, 0.25);
            let what = format!("{heads}x{queries}x{keys}");
            let ours_values = values(ours.clone());
            assert_close(
                &ours_values,
                &values(theirs.clone()),
                1e-6,
                &format!("probabilities {what}"),
            );
            for (row, p) in ours_values.chunks(keys).enumerate() {
                let padded = padded[row / (heads * queries)];
                assert!(
                    p[keys - padded..].iter().all(|&p| p == 0.0),
                    "padded keys of row {row} {what}"
                );
            }
            let w = tensor([batch, heads, queries, keys], 2, &device);
            let g_theirs = (theirs * w.clone()).sum().backward();
            let g_ours = (ours * w).sum().backward();
            assert_close(
                &values(s2.grad(&g_ours).unwrap()),
                &values(s1.grad(&g_theirs).unwrap()),
                1e-6,
                &format!("d_scores {what}"),
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        assert_same_on_threads(&[2, 3, 4], || {
            let device = Device::flex().autodiff();
            let scores = tensor([3, 4, 50, 40], 3, &device).require_grad();
            let out = attention_softmax(scores.clone(), key_bias(40, &[0, 7, 39], &device), 0.125);
            let grads = (out.clone() * tensor([3, 4, 50, 40], 4, &device)).sum().backward();
            (values(out), values(scores.grad(&grads).unwrap()))
        });
    }
}
