//! The recurrent layer of [`super::layer`] composed from burn tensor ops,
//! for backends without the fused operation (libtorch on a GPU): one matrix
//! product and a few element-wise ops per time step, differentiated by
//! burn's autodiff. Same equations and parameter layout as the fused layer.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid, tanh};

use super::recurrent::Cell;

/// Every state `[batch, time, hidden]` of `cell` over `x: [batch, time,
/// input]`, from a zero state, last step first when `reverse`: see
/// [`super::layer::recurrent_layer`].
pub fn recurrent_layer(
    x: Tensor<3>,
    [w_ih, w_hh]: [Tensor<2>; 2],
    [b_ih, b_hh]: [Tensor<1>; 2],
    cell: Cell,
    reverse: bool,
) -> Tensor<3> {
    let [batch, time, input] = x.dims();
    let [hidden, width] = w_hh.dims();
    let device = x.device();
    let projected =
        (x.reshape([batch * time, input]).matmul(w_ih) + b_ih.unsqueeze::<2>()).reshape([batch, time, width]);
    let b_hh = b_hh.unsqueeze::<2>();
    let gate = |v: &Tensor<2>, k: usize| v.clone().narrow(1, k * hidden, hidden);
    let mut h = Tensor::<2>::zeros([batch, hidden], &device);
    let mut c = h.clone();
    let mut states: Vec<Option<Tensor<3>>> = vec![None; time];
    let order: Vec<usize> = if reverse {
        (0..time).rev().collect()
    } else {
        (0..time).collect()
    };
    for t in order {
        let from_x = projected.clone().narrow(1, t, 1).reshape([batch, width]);
        let from_h = h.clone().matmul(w_hh.clone()) + b_hh.clone();
        h = match cell {
            Cell::Tanh => tanh(from_x + from_h),
            Cell::Relu => relu(from_x + from_h),
            Cell::Lstm => {
                let a = from_x + from_h;
                let input_gate = sigmoid(gate(&a, 0));
                let forget = sigmoid(gate(&a, 1));
                let candidate = tanh(gate(&a, 2));
                let output = sigmoid(gate(&a, 3));
                c = forget * c + input_gate * candidate;
                output * tanh(c.clone())
            }
            Cell::Gru => {
                let reset = sigmoid(gate(&from_x, 0) + gate(&from_h, 0));
                let update = sigmoid(gate(&from_x, 1) + gate(&from_h, 1));
                let new = tanh(gate(&from_x, 2) + reset * gate(&from_h, 2));
                update.clone().neg().add_scalar(1.0) * new + update * h
            }
        };
        states[t] = Some(h.clone().unsqueeze_dim::<3>(1));
    }
    Tensor::cat(states.into_iter().flatten().collect(), 1)
}
