//! Recurrent layers (Elman, LSTM, GRU) on burn tensors, with PyTorch's
//! equations and parameter layout.
//!
//! The input projection of all time steps is one matrix product before the
//! loop; each step then adds the recurrent product and applies the cell. Like
//! PyTorch without packed sequences, padding steps are processed too; the
//! pooling step reads the states by true length.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid, tanh};
use serde::{Deserialize, Serialize};

use super::init::Initializer;

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    /// Elman: `h_t = tanh(W x_t + b_ih + U h_{t-1} + b_hh)`.
    Tanh,
    /// Elman with ReLU.
    Relu,
    /// LSTM, gates in PyTorch's order `i, f, g, o`.
    Lstm,
    /// GRU, gates in PyTorch's order `r, z, n`.
    Gru,
}

impl Cell {
    /// Rows of the stacked gate matrices, in units of the hidden size.
    fn gates(self) -> usize {
        match self {
            Cell::Tanh | Cell::Relu => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

/// One direction of one layer. Weights are stored `[input, gates * hidden]`
/// (PyTorch's `weight_ih_l0` transposed).
#[derive(Module, Debug)]
pub struct Direction {
    w_ih: Param<Tensor<2>>,
    w_hh: Param<Tensor<2>>,
    b_ih: Param<Tensor<1>>,
    b_hh: Param<Tensor<1>>,
}

/// One layer: a forward direction and, when bidirectional, a backward one.
#[derive(Module, Debug)]
pub struct Layer {
    forward: Direction,
    backward: Option<Direction>,
}

/// A stack of recurrent layers.
#[derive(Module, Debug)]
pub struct Recurrent {
    layers: Vec<Layer>,
    #[module(skip)]
    cell: Cell,
    #[module(skip)]
    hidden: usize,
}

impl Direction {
    fn new(init: &Initializer, name: &str, cell: Cell, input: usize, hidden: usize) -> Direction {
        let bound = 1.0 / (hidden as f32).sqrt();
        let width = cell.gates() * hidden;
        Direction {
            w_ih: init.weight(&format!("{name}.w_ih"), [input, width], input, width, bound),
            w_hh: init.weight(&format!("{name}.w_hh"), [hidden, width], hidden, width, bound),
            b_ih: init.bias(&format!("{name}.b_ih"), width, bound),
            b_hh: init.bias(&format!("{name}.b_hh"), width, bound),
        }
    }

    /// Runs over `x: [batch, time, input]`, returning every state `[batch, time, hidden]`.
    fn run(&self, cell: Cell, hidden: usize, x: Tensor<3>, reverse: bool) -> Tensor<3> {
        let [batch, time, input] = x.dims();
        let device = x.device();
        let width = cell.gates() * hidden;
        let mut bias = self.b_ih.val();
        if cell != Cell::Gru {
            // Only the GRU needs b_hh inside the reset gate; elsewhere both biases add up front.
            bias = bias + self.b_hh.val();
        }
        // Time-major `[time * batch, width]`: one `narrow` gives a step's rows.
        let projected = (x.reshape([batch * time, input]).matmul(self.w_ih.val()) + bias.unsqueeze::<2>())
            .reshape([batch, time, width])
            .swap_dims(0, 1)
            .reshape([time * batch, width]);
        // The backward of a `narrow` writes a zero tensor of the input's size, so
        // slicing every step straight from `projected` would cost O(time^2); two
        // levels (blocks of about sqrt(time) steps, then steps) cost O(time^1.5).
        let block = (time as f64).sqrt().ceil() as usize;
        let w_hh = self.w_hh.val();
        let b_hh = self.b_hh.val().unsqueeze::<2>();
        let mut h: Tensor<2> = Tensor::zeros([batch, hidden], &device);
        let mut c: Tensor<2> = Tensor::zeros([batch, hidden], &device);
        let mut states: Vec<Option<Tensor<2>>> = vec![None; time];
        let mut current: Option<(usize, Tensor<2>)> = None;
        for step in 0..time {
            let t = if reverse { time - 1 - step } else { step };
            let start = t / block * block;
            if current.as_ref().is_none_or(|(s, _)| *s != start) {
                let length = block.min(time - start);
                current = Some((start, projected.clone().narrow(0, start * batch, length * batch)));
            }
            let rows = &current.as_ref().expect("a block").1;
            let x_t = rows.clone().narrow(0, (t - start) * batch, batch);
            let recurrent = h.clone().matmul(w_hh.clone());
            h = match cell {
                Cell::Tanh => tanh(x_t + recurrent),
                Cell::Relu => relu(x_t + recurrent),
                Cell::Lstm => {
                    let mut gates = (x_t + recurrent).chunk(4, 1).into_iter();
                    let mut next = || gates.next().expect("four gates");
                    let (i, f, g, o) = (sigmoid(next()), sigmoid(next()), tanh(next()), sigmoid(next()));
                    c = f * c + i * g;
                    o * tanh(c.clone())
                }
                Cell::Gru => {
                    let mut xs = x_t.chunk(3, 1).into_iter();
                    let mut hs = (recurrent + b_hh.clone()).chunk(3, 1).into_iter();
                    let mut pair = || (xs.next().expect("three gates"), hs.next().expect("three gates"));
                    let (xr, hr) = pair();
                    let (xz, hz) = pair();
                    let (xn, hn) = pair();
                    let r = sigmoid(xr + hr);
                    let z = sigmoid(xz + hz);
                    let n = tanh(xn + r * hn);
                    n.clone() + z * (h - n)
                }
            };
            states[t] = Some(h.clone());
        }
        let states: Vec<Tensor<2>> = states.into_iter().map(|s| s.expect("every step ran")).collect();
        Tensor::cat(states, 0).reshape([time, batch, hidden]).swap_dims(0, 1)
    }
}

impl Recurrent {
    /// `layers` layers of `cell` with `hidden` units per direction.
    pub fn new(
        init: &Initializer,
        cell: Cell,
        input: usize,
        hidden: usize,
        layers: usize,
        bidirectional: bool,
    ) -> Recurrent {
        let directions = if bidirectional { 2 } else { 1 };
        let layers = (0..layers)
            .map(|l| {
                let width = if l == 0 { input } else { hidden * directions };
                Layer {
                    forward: Direction::new(init, &format!("recurrent.{l}.forward"), cell, width, hidden),
                    backward: bidirectional
                        .then(|| Direction::new(init, &format!("recurrent.{l}.backward"), cell, width, hidden)),
                }
            })
            .collect();
        Recurrent { layers, cell, hidden }
    }

    /// Runs every layer over `x: [batch, time, input]`; `between` is applied to
    /// the output of every layer but the last (dropout).
    pub fn forward(&self, mut x: Tensor<3>, mut between: impl FnMut(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
        for (index, layer) in self.layers.iter().enumerate() {
            if index > 0 {
                x = between(x);
            }
            let forward = layer.forward.run(self.cell, self.hidden, x.clone(), false);
            x = match &layer.backward {
                Some(backward) => Tensor::cat(vec![forward, backward.run(self.cell, self.hidden, x, true)], 2),
                None => forward,
            };
        }
        x
    }

    /// Width of the output states (hidden size times directions).
    pub fn output_size(&self) -> usize {
        let directions = if self.layers.first().is_some_and(|l| l.backward.is_some()) {
            2
        } else {
            1
        };
        self.hidden * directions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::Init;
    use burn::nn::{GateController, GruConfig, Linear, LstmConfig};
    use burn::tensor::{Device, TensorData};

    const INPUT: usize = 3;
    const HIDDEN: usize = 4;

    /// burn's gate from gate `k` of our stacked weights.
    fn gate(d: &Direction, k: usize) -> GateController {
        let part = |w: Tensor<2>| Param::from_tensor(w.narrow(1, k * HIDDEN, HIDDEN).detach());
        let bias = |b: Tensor<1>| Some(Param::from_tensor(b.narrow(0, k * HIDDEN, HIDDEN).detach()));
        GateController {
            input_transform: Linear {
                weight: part(d.w_ih.val()),
                bias: bias(d.b_ih.val()),
            },
            hidden_transform: Linear {
                weight: part(d.w_hh.val()),
                bias: bias(d.b_hh.val()),
            },
        }
    }

    fn input(device: &Device) -> Tensor<3> {
        let values: Vec<f32> = (0..2 * 5 * INPUT).map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0).collect();
        Tensor::from_data(TensorData::new(values, [2, 5, INPUT]), device).require_grad()
    }

    /// Outputs and input gradients of ours and burn's layer agree.
    fn assert_same(ours: impl Fn(Tensor<3>) -> Tensor<3>, theirs: impl Fn(Tensor<3>) -> Tensor<3>) {
        let device = Device::flex().autodiff();
        let (x1, x2) = (input(&device), input(&device));
        let (a, b) = (ours(x1.clone()), theirs(x2.clone()));
        let close = |p: Vec<f32>, q: Vec<f32>| {
            assert_eq!(p.len(), q.len());
            for (u, v) in p.iter().zip(&q) {
                assert!((u - v).abs() < 1e-5, "{p:?}\n{q:?}");
            }
        };
        close(
            a.to_data().try_into_vec::<f32>().unwrap(),
            b.to_data().try_into_vec::<f32>().unwrap(),
        );
        let ga = x1.grad(&(a * 1.5).sum().backward()).unwrap();
        let gb = x2.grad(&(b * 1.5).sum().backward()).unwrap();
        close(
            ga.into_data().try_into_vec::<f32>().unwrap(),
            gb.into_data().try_into_vec::<f32>().unwrap(),
        );
    }

    #[test]
    fn lstm_matches_burns_lstm() {
        let device = Device::flex().autodiff();
        let init = Initializer::new(3, Init::Default, &device);
        let ours = Direction::new(&init, "t", Cell::Lstm, INPUT, HIDDEN);
        let mut theirs = LstmConfig::new(INPUT, HIDDEN, true)
            .with_batch_first(true)
            .init(&device);
        theirs.input_gate = gate(&ours, 0);
        theirs.forget_gate = Some(gate(&ours, 1));
        theirs.cell_gate = gate(&ours, 2);
        theirs.output_gate = gate(&ours, 3);
        assert_same(
            |x| ours.run(Cell::Lstm, HIDDEN, x, false),
            |x| theirs.forward(x, None).0,
        );
    }

    #[test]
    fn gru_matches_burns_gru_with_reset_after() {
        let device = Device::flex().autodiff();
        let init = Initializer::new(4, Init::Default, &device);
        let ours = Direction::new(&init, "t", Cell::Gru, INPUT, HIDDEN);
        let mut theirs = GruConfig::new(INPUT, HIDDEN, true).with_reset_after(true).init(&device);
        theirs.reset_gate = gate(&ours, 0);
        theirs.update_gate = gate(&ours, 1);
        theirs.new_gate = gate(&ours, 2);
        assert_same(|x| ours.run(Cell::Gru, HIDDEN, x, false), |x| theirs.forward(x, None));
    }

    #[test]
    fn reverse_direction_is_the_forward_run_of_the_flipped_sequence() {
        let device = Device::flex().autodiff();
        let init = Initializer::new(5, Init::Default, &device);
        let d = Direction::new(&init, "t", Cell::Tanh, INPUT, HIDDEN);
        assert_same(
            |x| d.run(Cell::Tanh, HIDDEN, x, true),
            |x| d.run(Cell::Tanh, HIDDEN, x.flip([1]), false).flip([1]),
        );
    }
}
