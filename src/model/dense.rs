//! A dense layer `x W + b` as one operation whose three matrix products
//! (forward, and the input's and weight's gradients) run in our packed,
//! register-tiled kernels with fused multiply-adds
//! ([`Packed::fused_matmul_add`]), the left operand read through strides.
//!
//! On a BERT layer's `[1024, 384] x [384, 1536]` on one core of an Intel
//! Xeon, `matrixmultiply` (used here before) ran at 110-133 GFLOP/s,
//! `torch.mm` at 164, the `gemm` crate under burn-flex's matmul with its
//! AVX-512 kernels at 163 (a feature that would change flex's bits for the
//! other models too) and our tiles' scheme with fused multiply-adds at
//! 137-158. A transposed left operand is read in place; a transposed right
//! operand is transposed once before packing. Every output element sums
//! over the shared dimension in order whichever rows a thread takes, so
//! results do not depend on the thread count.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::kernels::{HostValues, Packed, column_sums, host, register_host_grads, runs_fused, transpose};

/// The dense layer as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait DenseOps: Backend {
    /// `x: [rows, input]` times `weight: [input, output]` (burn's `Linear`
    /// layout) plus `bias: [output]`, as `[rows, output]`.
    fn dense(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let device = x.device();
        let inputs = Inputs::read::<Self>([x, weight, bias]);
        let rows = inputs.rows();
        let output = inputs.output();
        Self::float_from_data(TensorData::new(forward(&inputs), [rows, output]), &device)
    }
}

impl DenseOps for Flex {}

/// `x W + b` for `x: [..., input]`, `weight: [input, output]`, `bias:
/// [output]`: see [`DenseOps::dense`]; burn's matmul off the flex backend.
pub fn dense<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    let mut dims = x.dims();
    let [input, output] = weight.dims();
    let rows = dims[..D - 1].iter().product();
    let flat: Tensor<2> = x.reshape([rows, input]);
    let result: Tensor<2> = if runs_fused(&flat.device()) {
        Tensor::from_dispatch(<Dispatch as DenseOps>::dense(
            flat.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
        ))
    } else {
        flat.matmul(weight) + bias.unsqueeze::<2>()
    };
    dims[D - 1] = output;
    result.reshape(dims)
}

/// A dense layer's operands on the host.
#[derive(Debug)]
struct Inputs {
    x: HostValues,
    weight: HostValues,
    bias: HostValues,
}

impl Inputs {
    fn read<B: Backend>([x, weight, bias]: [FloatTensor<B>; 3]) -> Inputs {
        let [_, input] = x.shape().as_slice().try_into().expect("x is [rows, input]");
        let [weight_input, output] = weight.shape().as_slice().try_into().expect("weight is [input, output]");
        assert_eq!(weight_input, input, "x and weight disagree on the input width");
        assert_eq!(bias.shape().as_slice(), [output], "bias is [output]");
        Inputs {
            x: host::<B>(x),
            weight: host::<B>(weight),
            bias: host::<B>(bias),
        }
    }

    fn input(&self) -> usize {
        self.weight.len() / self.bias.len()
    }

    fn output(&self) -> usize {
        self.bias.len()
    }

    fn rows(&self) -> usize {
        self.x.len() / self.input()
    }
}

/// A row-major or strided view of a matrix operand.
#[derive(Clone, Copy)]
struct View<'a> {
    values: &'a [f32],
    row_stride: usize,
    column_stride: usize,
}

impl<'a> View<'a> {
    fn rows(values: &'a [f32], columns: usize) -> View<'a> {
        View {
            values,
            row_stride: columns,
            column_stride: 1,
        }
    }

    fn transposed(values: &'a [f32], columns: usize) -> View<'a> {
        View {
            values,
            row_stride: 1,
            column_stride: columns,
        }
    }
}

/// `out: [m, n] += a: [m, depth] * b: [depth, n]`: `b` packed once, then
/// the rows of `out` split between rayon's threads, each element summing over
/// `depth` in order with fused multiply-adds ([`Packed::fused_matmul_add`]),
/// so the split leaves every sum as it is.
fn product_add(a: View, b: View, out: &mut [f32], depth: usize, n: usize) {
    let m = out.len() / n.max(1);
    if m == 0 || n == 0 {
        return;
    }
    let packed = if b.column_stride == 1 {
        Packed::new(&b.values[..depth * n], depth, n)
    } else {
        // `b` is a row-major `[n, depth]` read transposed.
        Packed::new(&transpose(&b.values[..depth * n], n, depth), depth, n)
    };
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = m.div_ceil(threads).next_multiple_of(8);
    out.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(task, chunk)| {
            let a_start = task * rows_per_task * a.row_stride;
            packed.fused_matmul_add(&a.values[a_start..], a.row_stride, a.column_stride, chunk);
        });
}

/// `x W + b`, each row started from the bias.
fn forward(inputs: &Inputs) -> Vec<f32> {
    let (input, output) = (inputs.input(), inputs.output());
    let mut out = inputs.bias.repeat(inputs.rows());
    product_add(
        View::rows(&inputs.x, input),
        View::rows(&inputs.weight, output),
        &mut out,
        input,
        output,
    );
    out
}

/// `d_x = d_out W^T`, computed only when `x` is tracked.
fn input_grad(inputs: &Inputs, d_out: &[f32]) -> Vec<f32> {
    let (input, output) = (inputs.input(), inputs.output());
    let mut d_x = vec![0.0f32; inputs.rows() * input];
    product_add(
        View::rows(d_out, output),
        View::transposed(&inputs.weight, output),
        &mut d_x,
        output,
        input,
    );
    d_x
}

/// `d_W = x^T d_out`.
fn weight_grad(inputs: &Inputs, d_out: &[f32]) -> Vec<f32> {
    let (input, output) = (inputs.input(), inputs.output());
    let mut d_weight = vec![0.0f32; input * output];
    product_add(
        View::transposed(&inputs.x, input),
        View::rows(d_out, output),
        &mut d_weight,
        inputs.rows(),
        output,
    );
    d_weight
}

/// The autodiff node of a dense layer.
#[derive(Debug)]
struct DenseBackward;

impl<B: Backend> Backward<B, 3> for DenseBackward {
    type State = Arc<Inputs>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let device = d_out.device();
        let inputs = ops.state;
        let d_out = host::<B>(d_out);
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let (input, output) = (inputs.input(), inputs.output());
        let tracked = |i: usize| parents[i].is_some();
        let values = [
            (
                if tracked(0) {
                    input_grad(&inputs, &d_out)
                } else {
                    Vec::new()
                },
                vec![inputs.rows(), input],
            ),
            (
                if tracked(1) {
                    weight_grad(&inputs, &d_out)
                } else {
                    Vec::new()
                },
                vec![input, output],
            ),
            (
                if tracked(2) {
                    column_sums(&d_out, output)
                } else {
                    Vec::new()
                },
                vec![output],
            ),
        ];
        register_host_grads::<B>(grads, parents, values, &device);
    }
}

impl<B: Backend + DenseOps, C: CheckpointStrategy> DenseOps for Autodiff<B, C> {
    fn dense(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let primitives = [x, weight, bias].map(|t| t.into_primitive());
        let device = primitives[0].device();
        let inputs = Inputs::read::<B>(primitives);
        let output = B::float_from_data(
            TensorData::new(forward(&inputs), [inputs.rows(), inputs.output()]),
            &device,
        );
        match DenseBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(Arc::new(inputs), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{assert_close, assert_same_on_threads, tensor, values};
    use burn::tensor::Device;

    #[test]
    fn output_and_every_gradient_equal_burns_matmul() {
        let device = Device::flex().autodiff();
        for (rows, input, output) in [(1, 1, 1), (3, 5, 2), (17, 9, 33), (40, 24, 7)] {
            let x = tensor([2, rows, input], 1, &device);
            let weight = tensor([input, output], 2, &device).require_grad();
            let bias = tensor([output], 3, &device).require_grad();
            let (x1, x2) = (x.clone().require_grad(), x.require_grad());
            let theirs = x1.clone().matmul(weight.clone().unsqueeze::<3>()) + bias.clone().unsqueeze::<3>();
            let ours = dense(x2.clone(), weight.clone(), bias.clone());
            let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
                assert_close(&a, &b, 1e-4, &format!("{what} {rows}x{input}x{output}"))
            };
            close(values(ours.clone()), values(theirs.clone()), "output");
            let w = tensor([2, rows, output], 4, &device);
            let g_theirs = (theirs * w.clone()).sum().backward();
            let g_ours = (ours * w).sum().backward();
            close(
                values(x2.grad(&g_ours).unwrap()),
                values(x1.grad(&g_theirs).unwrap()),
                "d_x",
            );
            close(
                values(weight.grad(&g_ours).unwrap()),
                values(weight.grad(&g_theirs).unwrap()),
                "d_weight",
            );
            close(
                values(bias.grad(&g_ours).unwrap()),
                values(bias.grad(&g_theirs).unwrap()),
                "d_bias",
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        assert_same_on_threads(&[2, 3, 4], || {
            let device = Device::flex().autodiff();
            let x = tensor([93, 70], 5, &device).require_grad();
            let weight = tensor([70, 45], 6, &device).require_grad();
            let bias = tensor([45], 7, &device).require_grad();
            let out = dense(x.clone(), weight.clone(), bias);
            let grads = (out.clone() * tensor([93, 45], 8, &device)).sum().backward();
            (
                values(out),
                values(x.grad(&grads).unwrap()),
                values(weight.grad(&grads).unwrap()),
            )
        });
    }
}
