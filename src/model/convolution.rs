//! A 1-D convolution over time as one operation with a hand-written backward
//! pass.
//!
//! burn-flex runs `conv1d` through its 3-D convolution with layout copies on
//! the way in and out, and its backward through a transposed convolution:
//! for the course CNN that was some 40 % of a training step. Here the
//! convolution reads the embeddings as they are, `[batch, time, channels]`,
//! and every output is a sum of small matrix products in a fixed order.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::module::conv1d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use super::kernels::{
    HostValues, column_sums, host, matmul_add, matmul_tn_add, register_host_grads, runs_fused, transpose,
};

/// The convolution as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait ConvOps: Backend {
    /// Convolves `x: [batch, time, channels]` with `weight: [filters,
    /// channels, width]` (burn's and PyTorch's `Conv1d` layout) plus
    /// `bias: [filters]`, stride 1, `padding` zeros on each side. Returns
    /// `[batch, time + 2 * padding - width + 1, filters]`.
    fn conv_over_time(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        let device = x.device();
        let inputs = Inputs::read::<Self>([x, weight, bias], padding);
        let dims = inputs.dims;
        Self::float_from_data(
            TensorData::new(forward(&inputs), [dims.batch, dims.time_out, dims.filters]),
            &device,
        )
    }
}

impl ConvOps for Flex {}

/// See [`ConvOps::conv_over_time`]; burn's `conv1d` off the flex backend.
pub fn conv_over_time(x: Tensor<3>, weight: Tensor<3>, bias: Tensor<1>, padding: usize) -> Tensor<3> {
    if !runs_fused(&x.device()) {
        let options = ConvOptions::new([1], [padding], [1], 1);
        return conv1d(x.swap_dims(1, 2), weight, Some(bias), options).swap_dims(1, 2);
    }
    Tensor::from_dispatch(<Dispatch as ConvOps>::conv_over_time(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        padding,
    ))
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    time: usize,
    channels: usize,
    filters: usize,
    width: usize,
    padding: usize,
    time_out: usize,
}

impl Dims {
    /// For kernel tap `k`: the output steps that read an input step, and the
    /// input step of the first of them.
    fn rows(&self, k: usize) -> (std::ops::Range<usize>, usize) {
        // Output step t reads input step t + k - padding when that exists.
        let first = self.padding.saturating_sub(k);
        let last = (self.time + self.padding).saturating_sub(k).min(self.time_out);
        if last <= first {
            // A tap that only ever meets padding (a kernel wider than the sequence).
            return (first..first, 0);
        }
        (first..last, first + k - self.padding)
    }
}

/// The convolution's inputs on the host; the weight as `[width, channels, filters]`.
#[derive(Debug)]
struct Inputs {
    dims: Dims,
    x: HostValues,
    taps: Vec<f32>,
    bias: HostValues,
}

impl Inputs {
    fn read<B: Backend>([x, weight, bias]: [FloatTensor<B>; 3], padding: usize) -> Inputs {
        let [batch, time, channels] = x.shape().as_slice().try_into().expect("x is [batch, time, channels]");
        let [filters, weight_channels, width] = weight
            .shape()
            .as_slice()
            .try_into()
            .expect("weight is [filters, channels, width]");
        assert_eq!(weight_channels, channels, "weight and input channels differ");
        assert_eq!(bias.shape().as_slice(), [filters], "bias is [filters]");
        assert!(time + 2 * padding >= width, "the sequence is shorter than the kernel");
        let dims = Dims {
            batch,
            time,
            channels,
            filters,
            width,
            padding,
            time_out: time + 2 * padding - width + 1,
        };
        let taps = swap_outer_axes(&host::<B>(weight), [filters, channels, width]);
        Inputs {
            dims,
            x: host::<B>(x),
            taps,
            bias: host::<B>(bias),
        }
    }

    /// Tap `k` of the weight, `[channels, filters]`.
    fn tap(&self, k: usize) -> &[f32] {
        let size = self.dims.channels * self.dims.filters;
        &self.taps[k * size..(k + 1) * size]
    }
}

/// `values: [a, b, c]` as `[c, b, a]`: burn's `[filters, channels, width]`
/// weight as per-tap `[width, channels, filters]` matrices, and back.
fn swap_outer_axes(values: &[f32], [a, b, c]: [usize; 3]) -> Vec<f32> {
    let mut swapped = vec![0.0f32; values.len()];
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                swapped[(k * b + j) * a + i] = values[(i * b + j) * c + k];
            }
        }
    }
    swapped
}

/// `[batch, time_out, filters]`: the bias plus, tap by tap, the shifted input times the tap.
fn forward(inputs: &Inputs) -> Vec<f32> {
    let Dims {
        batch,
        time,
        channels,
        filters,
        width,
        time_out,
        ..
    } = inputs.dims;
    let mut out = vec![0.0f32; batch * time_out * filters];
    for row in out.chunks_exact_mut(filters) {
        row.copy_from_slice(&inputs.bias);
    }
    for b in 0..batch {
        let x = &inputs.x[b * time * channels..(b + 1) * time * channels];
        let y = &mut out[b * time_out * filters..(b + 1) * time_out * filters];
        for k in 0..width {
            let (rows, input_start) = inputs.dims.rows(k);
            let n = rows.len();
            matmul_add(
                &x[input_start * channels..(input_start + n) * channels],
                inputs.tap(k),
                &mut y[rows.start * filters..rows.end * filters],
                channels,
                filters,
            );
        }
    }
    out
}

/// Gradients of `x`, `weight` (burn's layout) and `bias` from the output's.
fn backward(inputs: &Inputs, d_out: &[f32]) -> [Vec<f32>; 3] {
    let Dims {
        batch,
        time,
        channels,
        filters,
        width,
        time_out,
        ..
    } = inputs.dims;
    let mut dx = vec![0.0f32; batch * time * channels];
    let mut d_taps = vec![0.0f32; width * channels * filters];
    let taps_t: Vec<Vec<f32>> = (0..width)
        .map(|k| transpose(inputs.tap(k), channels, filters))
        .collect();
    for b in 0..batch {
        let x = &inputs.x[b * time * channels..(b + 1) * time * channels];
        let dy = &d_out[b * time_out * filters..(b + 1) * time_out * filters];
        let dx_b = &mut dx[b * time * channels..(b + 1) * time * channels];
        for k in 0..width {
            let (rows, input_start) = inputs.dims.rows(k);
            let n = rows.len();
            let dy_rows = &dy[rows.start * filters..rows.end * filters];
            let x_rows = &x[input_start * channels..(input_start + n) * channels];
            let size = channels * filters;
            matmul_tn_add(
                x_rows,
                dy_rows,
                &mut d_taps[k * size..(k + 1) * size],
                channels,
                filters,
            );
            matmul_add(
                dy_rows,
                &taps_t[k],
                &mut dx_b[input_start * channels..(input_start + n) * channels],
                filters,
                channels,
            );
        }
    }
    let d_weight = swap_outer_axes(&d_taps, [width, channels, filters]);
    [dx, d_weight, column_sums(d_out, filters)]
}

/// The autodiff node of a convolution.
#[derive(Debug)]
struct ConvBackward;

impl<B: Backend> Backward<B, 3> for ConvBackward {
    type State = Arc<Inputs>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let device = d_out.device();
        let inputs = ops.state;
        let Dims {
            batch,
            time,
            channels,
            filters,
            width,
            ..
        } = inputs.dims;
        let shapes = [
            vec![batch, time, channels],
            vec![filters, channels, width],
            vec![filters],
        ];
        let values = backward(&inputs, &host::<B>(d_out));
        register_host_grads::<B>(
            grads,
            ops.parents.map(|p| p.map(|node| node.id)),
            values.into_iter().zip(shapes),
            &device,
        );
    }
}

impl<B: Backend + ConvOps, C: CheckpointStrategy> ConvOps for Autodiff<B, C> {
    fn conv_over_time(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let primitives = [x, weight, bias].map(|t| t.into_primitive());
        let device = primitives[0].device();
        let inputs = Inputs::read::<B>(primitives, padding);
        let dims = inputs.dims;
        let output = B::float_from_data(
            TensorData::new(forward(&inputs), [dims.batch, dims.time_out, dims.filters]),
            &device,
        );
        match ConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(Arc::new(inputs), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::values;
    use burn::nn::PaddingConfig1d;
    use burn::nn::conv::Conv1dConfig;
    use burn::tensor::Device;

    #[test]
    fn output_and_every_gradient_equal_burns_conv1d() {
        let device = Device::flex().autodiff();
        for (width, padding) in [(3, 1), (3, 0), (2, 1), (5, 2), (4, 3)] {
            let conv = Conv1dConfig::new(4, 3, width)
                .with_padding(PaddingConfig1d::Explicit(padding, padding))
                .init(&device);
            let x: Vec<f32> = (0..2 * 6 * 4).map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0).collect();
            let x = Tensor::<3>::from_data(TensorData::new(x, [2, 6, 4]), &device);
            let (x1, x2) = (x.clone().require_grad(), x.require_grad());
            let theirs = conv.forward(x1.clone().swap_dims(1, 2)).swap_dims(1, 2);
            let bias = conv.bias.as_ref().unwrap().val();
            let ours = conv_over_time(x2.clone(), conv.weight.val(), bias.clone(), padding);
            assert_eq!(ours.dims(), theirs.dims());
            let n = ours.dims().iter().product::<usize>();
            let w: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let w = Tensor::<3>::from_data(TensorData::new(w, ours.dims()), &device);
            let close = |a: Vec<f32>, b: Vec<f32>| {
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() < 1e-5, "width {width} padding {padding}: {a:?}\n{b:?}");
                }
            };
            close(values(ours.clone()), values(theirs.clone()));
            let g_theirs = (theirs * w.clone()).sum().backward();
            let g_ours = (ours * w).sum().backward();
            close(values(x2.grad(&g_ours).unwrap()), values(x1.grad(&g_theirs).unwrap()));
            let weight = conv.weight.val();
            close(
                values(weight.grad(&g_ours).unwrap()),
                values(weight.grad(&g_theirs).unwrap()),
            );
            close(
                values(bias.grad(&g_ours).unwrap()),
                values(bias.grad(&g_theirs).unwrap()),
            );
        }
    }
}
