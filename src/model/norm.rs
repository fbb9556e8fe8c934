//! LayerNorm over the last dimension as one operation with a hand-written
//! backward pass.
//!
//! burn's `layer_norm` under autodiff is composed from some ten tensor
//! operations (mean, centring, variance, square root, division, scale,
//! shift), each a pass over the activations with a node of its own in the
//! backward graph. Here the forward pass is one pass per row, and the
//! backward pass another, from the normalised rows and reciprocal standard
//! deviations saved on the way. Rows are independent and every sum runs in
//! order, so results do not depend on the thread count.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::LayerNorm;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::kernels::{HostValues, column_sums, host, register_host_grads, runs_fused};

/// Rows per rayon task.
const ROWS_PER_TASK: usize = 64;

/// LayerNorm as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait NormOps: Backend {
    /// `x: [rows, width]` normalised per row (biased variance, `epsilon`
    /// added under the square root), times `gamma: [width]`, plus `beta: [width]`.
    fn normalize(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let device = x.device();
        let shape = x.shape();
        let (output, _) = forward::<Self>([x, gamma, beta], epsilon);
        Self::float_from_data(TensorData::new(output, shape), &device)
    }
}

impl NormOps for Flex {}

/// `norm` applied to `x: [..., width]`: see [`NormOps::normalize`]; burn's
/// `LayerNorm` off the flex backend. `epsilon` must be the one `norm` was
/// built with (burn keeps it private).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    if !runs_fused(&x.device()) {
        return norm.forward(x);
    }
    let dims = x.dims();
    let width = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let flat: Tensor<2> = x.reshape([rows, width]);
    let beta = match &norm.beta {
        Some(beta) => beta.val(),
        None => Tensor::zeros([width], &flat.device()),
    };
    let out: Tensor<2> = Tensor::from_dispatch(<Dispatch as NormOps>::normalize(
        flat.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ));
    out.reshape(dims)
}

/// What the backward pass reads.
#[derive(Debug)]
struct Saved {
    /// `(x - mean) * rstd`, row by row.
    normalized: Vec<f32>,
    /// `1 / sqrt(var + epsilon)` of every row.
    rstd: Vec<f32>,
    gamma: HostValues,
}

/// The normalised, scaled and shifted rows, and what the backward pass reads.
fn forward<B: Backend>([x, gamma, beta]: [FloatTensor<B>; 3], epsilon: f64) -> (Vec<f32>, Saved) {
    let shape = x.shape();
    let width = *shape.as_slice().last().expect("x has a last dimension");
    assert_eq!(gamma.shape().as_slice(), [width], "gamma is [width]");
    assert_eq!(beta.shape().as_slice(), [width], "beta is [width]");
    let (x, gamma, beta) = (host::<B>(x), host::<B>(gamma), host::<B>(beta));
    let rows = x.len() / width.max(1);
    let mut normalized = vec![0.0f32; x.len()];
    let mut output = vec![0.0f32; x.len()];
    let mut rstd = vec![0.0f32; rows];
    let task = ROWS_PER_TASK * width;
    normalized
        .par_chunks_mut(task)
        .zip(output.par_chunks_mut(task))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(task))
        .for_each(|(((normalized, output), rstd), x)| {
            for (((x, n), o), r) in x
                .chunks_exact(width)
                .zip(normalized.chunks_exact_mut(width))
                .zip(output.chunks_exact_mut(width))
                .zip(rstd.iter_mut())
            {
                let mean = x.iter().sum::<f32>() / width as f32;
                let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                *r = 1.0 / (var + epsilon as f32).sqrt();
                for i in 0..width {
                    n[i] = (x[i] - mean) * *r;
                    o[i] = n[i] * gamma[i] + beta[i];
                }
            }
        });
    (
        output,
        Saved {
            normalized,
            rstd,
            gamma,
        },
    )
}

/// `[d_x, d_gamma, d_beta]` for the output gradient `d_out`.
fn backward(saved: &Saved, d_out: &[f32], want_x: bool) -> [Vec<f32>; 3] {
    let width = saved.gamma.len();
    let mut d_x = Vec::new();
    if want_x {
        d_x = vec![0.0f32; d_out.len()];
        let task = ROWS_PER_TASK * width;
        d_x.par_chunks_mut(task)
            .zip(d_out.par_chunks(task))
            .zip(saved.normalized.par_chunks(task))
            .zip(saved.rstd.par_chunks(ROWS_PER_TASK))
            .for_each(|(((d_x, d_out), normalized), rstd)| {
                for (((d_x, d_out), n), &r) in d_x
                    .chunks_exact_mut(width)
                    .zip(d_out.chunks_exact(width))
                    .zip(normalized.chunks_exact(width))
                    .zip(rstd)
                {
                    // With g = d_out * gamma: d_x = rstd * (g - mean(g) - n * mean(g * n)).
                    let (mut sum_g, mut sum_gn) = (0.0f32, 0.0f32);
                    for i in 0..width {
                        let g = d_out[i] * saved.gamma[i];
                        sum_g += g;
                        sum_gn += g * n[i];
                    }
                    let (mean_g, mean_gn) = (sum_g / width as f32, sum_gn / width as f32);
                    for i in 0..width {
                        let g = d_out[i] * saved.gamma[i];
                        d_x[i] = r * (g - mean_g - n[i] * mean_gn);
                    }
                }
            });
    }
    let scaled: Vec<f32> = d_out.iter().zip(&saved.normalized).map(|(d, n)| d * n).collect();
    [d_x, column_sums(&scaled, width), column_sums(d_out, width)]
}

/// The autodiff node of a LayerNorm.
#[derive(Debug)]
struct NormBackward;

impl<B: Backend> Backward<B, 3> for NormBackward {
    type State = Arc<Saved>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let device = d_out.device();
        let shape = d_out.shape().as_slice().to_vec();
        let saved = ops.state;
        let width = saved.gamma.len();
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let values = backward(&saved, &host::<B>(d_out), parents[0].is_some());
        let shapes = [shape, vec![width], vec![width]];
        register_host_grads::<B>(grads, parents, values.into_iter().zip(shapes), &device);
    }
}

impl<B: Backend + NormOps, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn normalize(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let primitives = [x, gamma, beta].map(|t| t.into_primitive());
        let device = primitives[0].device();
        let shape = primitives[0].shape();
        let (output, saved) = forward::<B>(primitives, epsilon);
        let output = B::float_from_data(TensorData::new(output, shape), &device);
        match NormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(Arc::new(saved), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{assert_close, assert_same_on_threads, tensor, values};
    use burn::nn::LayerNormConfig;
    use burn::tensor::Device;

    fn norm(width: usize, device: &Device) -> LayerNorm {
        let mut norm = LayerNormConfig::new(width).with_epsilon(1e-12).init(device);
        norm.gamma = burn::module::Param::from_tensor(tensor([width], 3, device).add_scalar(2.0));
        norm.beta = Some(burn::module::Param::from_tensor(tensor([width], 4, device)));
        norm
    }

    #[test]
    fn output_and_every_gradient_equal_burns_layer_norm() {
        let device = Device::flex().autodiff();
        for (rows, width) in [(1, 1), (3, 5), (70, 33), (130, 8)] {
            let norm = norm(width, &device);
            let x = tensor([2, rows, width], 1, &device);
            let (x1, x2) = (x.clone().require_grad(), x.require_grad());
            let theirs = norm.forward(x1.clone());
            let ours = layer_norm(&norm, 1e-12, x2.clone());
            let close =
                |a: Vec<f32>, b: Vec<f32>, what: &str| assert_close(&a, &b, 1e-4, &format!("{what} {rows}x{width}"));
            close(values(ours.clone()), values(theirs.clone()), "output");
            let w = tensor([2, rows, width], 5, &device);
            let g_theirs = (theirs * w.clone()).sum().backward();
            let g_ours = (ours * w).sum().backward();
            close(
                values(x2.grad(&g_ours).unwrap()),
                values(x1.grad(&g_theirs).unwrap()),
                "d_x",
            );
            let gamma = norm.gamma.val();
            close(
                values(gamma.grad(&g_ours).unwrap()),
                values(gamma.grad(&g_theirs).unwrap()),
                "d_gamma",
            );
            let beta = norm.beta.as_ref().unwrap().val();
            close(
                values(beta.grad(&g_ours).unwrap()),
                values(beta.grad(&g_theirs).unwrap()),
                "d_beta",
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        assert_same_on_threads(&[2, 3], || {
            let device = Device::flex().autodiff();
            let norm = norm(40, &device);
            let x = tensor([300, 40], 6, &device).require_grad();
            let out = layer_norm(&norm, 1e-12, x.clone());
            let grads = (out.clone() * tensor([300, 40], 7, &device)).sum().backward();
            (
                values(out),
                values(x.grad(&grads).unwrap()),
                values(norm.gamma.val().grad(&grads).unwrap()),
            )
        });
    }
}
