//! GELU with the error function, `x * Φ(x)`, as one operation whose error
//! function vectorizes.
//!
//! burn-flex computes GELU and its derivative element by element with
//! `libm`'s scalar `erff`: in a MiniLM forward pass that was some 14 % of
//! the time. Here `erf` is the Chebyshev fit of `erfc` from Numerical
//! Recipes over an `exp` from a range reduction and a polynomial (both
//! within 5e-7 of `libm`, see the tests), written in plain multiplies and adds that
//! LLVM turns into vector code. Every element is computed on its own with
//! separate multiplies and adds (Rust never fuses them), so results are the
//! same bits at any thread count and vector width.

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

/// Elements per rayon task.
const TASK: usize = 1 << 14;

/// GELU as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait GeluOps: Backend {
    /// `x * Φ(x)` element by element, `Φ` the standard normal distribution function.
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let device = x.device();
        let shape = x.shape();
        Self::float_from_data(TensorData::new(forward(&host::<Self>(x)), shape), &device)
    }
}

impl GeluOps for Flex {}

/// See [`GeluOps::gelu_erf`]; burn's `gelu` off the flex backend.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !runs_fused(&x.device()) {
        return activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as GeluOps>::gelu_erf(x.into_dispatch()))
}

/// `erf(x)`: `1 - erfc(|x|)` with the sign of `x`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const C: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_23,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut poly = C[9];
    for &c in C[..9].iter().rev() {
        poly = poly * t + c;
    }
    let erfc = t * exp_negative(-z * z + poly);
    (1.0 - erfc).copysign(x)
}

/// `Φ(x) = (1 + erf(x / √2)) / 2`.
#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `x * Φ(x)` of every element.
fn forward(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(TASK).zip(x.par_chunks(TASK)).for_each(|(out, x)| {
        widest_simd(
            #[inline(always)]
            || {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * cdf(v);
                }
            },
        )
    });
    out
}

/// `d_out * (Φ(x) + x φ(x))`, `φ` the standard normal density.
fn backward(x: &[f32], d_out: &[f32]) -> Vec<f32> {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let mut d_x = vec![0.0f32; x.len()];
    d_x.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .zip(d_out.par_chunks(TASK))
        .for_each(|((d_x, x), d_out)| {
            widest_simd(
                #[inline(always)]
                || {
                    for ((d, &v), &g) in d_x.iter_mut().zip(x).zip(d_out) {
                        let density = INV_SQRT_2PI * exp_negative(-0.5 * v * v);
                        *d = g * (cdf(v) + v * density);
                    }
                },
            )
        });
    d_x
}

/// The autodiff node of a GELU.
#[derive(Debug)]
struct GeluBackward;

impl<B: Backend> Backward<B, 1> for GeluBackward {
    /// The input and its shape.
    type State = Arc<(HostValues, Vec<usize>)>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let device = d_out.device();
        let [parent] = ops.parents.map(|p| p.map(|node| node.id));
        let (x, shape) = &*ops.state;
        let d_x = backward(x, &host::<B>(d_out));
        register_host_grads::<B>(grads, [parent], [(d_x, shape.clone())], &device);
    }
}

impl<B: Backend + GeluOps, C: CheckpointStrategy> GeluOps for Autodiff<B, C> {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let node = x.node();
        let x = x.into_primitive();
        let device = x.device();
        let shape = x.shape();
        let values = host::<B>(x);
        let output = B::float_from_data(TensorData::new(forward(&values), shape.clone()), &device);
        match GeluBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(Arc::new((values, shape.as_slice().to_vec())), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn erf_and_exp_stay_close_to_libm() {
        for i in -40_000i32..=40_000 {
            let x = i as f32 / 4000.0;
            let (ours, theirs) = (erf(x), libm::erff(x));
            assert!((ours - theirs).abs() <= 5e-7, "erf({x}) = {ours}, libm {theirs}");
            let y = -(i.abs() as f32) / 460.0;
            let (ours, theirs) = (exp_negative(y), y.exp());
            assert!(
                (ours - theirs).abs() <= 3e-7 * theirs,
                "exp({y}) = {ours}, libm {theirs}"
            );
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(20.0), 1.0);
        assert_eq!(erf(-20.0), -1.0);
    }

    #[test]
    fn output_and_gradient_equal_burns_gelu() {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..2 * 500).map(|i| (i as f32 - 500.0) / 61.0).collect();
        let x = Tensor::<2>::from_data(TensorData::new(values, [2, 500]), &device);
        let (x1, x2) = (x.clone().require_grad(), x.require_grad());
        let theirs = activation::gelu(x1.clone());
        let ours = gelu(x2.clone());
        let weights: Vec<f32> = (0..1000).map(|i| ((i * 7) % 13) as f32 / 5.0 - 1.2).collect();
        let w = Tensor::<2>::from_data(TensorData::new(weights, [2, 500]), &device);
        let close = |a: Tensor<2>, b: Tensor<2>, what: &str| {
            let (a, b) = (
                a.into_data().try_into_vec::<f32>().unwrap(),
                b.into_data().try_into_vec::<f32>().unwrap(),
            );
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-6 * (1.0 + v.abs()), "{what}: {u} vs {v}");
            }
        };
        close(ours.clone(), theirs.clone(), "output");
        let g_theirs = (theirs * w.clone()).sum().backward();
        let g_ours = (ours * w).sum().backward();
        close(x2.grad(&g_ours).unwrap(), x1.grad(&g_theirs).unwrap(), "gradient");
    }
}
