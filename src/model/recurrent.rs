//! Recurrent layers (Elman, LSTM, GRU) on burn tensors, with PyTorch's
//! equations and parameter layout.
//!
//! Each direction of each layer (input projection and recurrence) is one
//! fused operation with a hand-written backward pass ([`super::layer`]).
//! Like PyTorch without packed sequences, padding steps are processed too; the
//! pooling step reads the states by true length.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::init::Initializer;
use super::layer;

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
    pub(crate) fn gates(self) -> usize {
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
            w_hh: init.recurrent(&format!("{name}.w_hh"), hidden, cell.gates(), bound),
            b_ih: init.bias(&format!("{name}.b_ih"), width, bound),
            b_hh: init.bias(&format!("{name}.b_hh"), width, bound),
        }
    }

    /// Runs over `x: [batch, time, input]`, returning every state `[batch, time, hidden]`.
    fn run(&self, cell: Cell, x: Tensor<3>, reverse: bool) -> Tensor<3> {
        layer::recurrent_layer(
            x,
            [self.w_ih.val(), self.w_hh.val()],
            [self.b_ih.val(), self.b_hh.val()],
            cell,
            reverse,
        )
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
            let forward = layer.forward.run(self.cell, x.clone(), false);
            x = match &layer.backward {
                Some(backward) => Tensor::cat(vec![forward, backward.run(self.cell, x, true)], 2),
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
    use crate::model::kernels::testing::values;
    use burn::nn::{GateController, GruConfig, Linear, LstmConfig};
    use burn::tensor::Gradients;
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

    fn input(device: &Device, batch: usize, time: usize) -> Tensor<3> {
        let values: Vec<f32> = (0..batch * time * INPUT)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0)
            .collect();
        Tensor::from_data(TensorData::new(values, [batch, time, INPUT]), device).require_grad()
    }

    /// The outputs, then the gradients of the input and of `w_ih, w_hh, b_ih,
    /// b_hh` (each flattened), of a weighted sum of a layer's states.
    type Run = (Vec<f32>, Vec<Vec<f32>>);

    fn differentiate(x: Tensor<3>, states: Tensor<3>, params: impl Fn(&Gradients) -> Vec<Vec<f32>>) -> Run {
        let n = states.dims().iter().product::<usize>();
        let weights: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let weights = Tensor::<3>::from_data(TensorData::new(weights, states.dims()), &states.device());
        let grads = (states.clone() * weights).sum().backward();
        let mut all = vec![values(x.grad(&grads).unwrap())];
        all.extend(params(&grads));
        (values(states), all)
    }

    /// The gradients of a direction's `w_ih, w_hh, b_ih, b_hh`, flattened.
    fn direction_grads(d: &Direction, g: &Gradients) -> Vec<Vec<f32>> {
        let grad = |p: &Param<Tensor<2>>| values(p.val().grad(g).unwrap());
        let grad1 = |p: &Param<Tensor<1>>| values(p.val().grad(g).unwrap());
        vec![grad(&d.w_ih), grad(&d.w_hh), grad1(&d.b_ih), grad1(&d.b_hh)]
    }

    fn ours(d: &Direction, cell: Cell, x: Tensor<3>, reverse: bool) -> Run {
        let states = d.run(cell, x.clone(), reverse);
        differentiate(x, states, |g| direction_grads(d, g))
    }

    fn assert_close(ours: &Run, theirs: &Run) {
        let close = |p: &[f32], q: &[f32]| {
            assert_eq!(p.len(), q.len());
            for (u, v) in p.iter().zip(q) {
                assert!((u - v).abs() < 1e-5, "{p:?}\n{q:?}");
            }
        };
        close(&ours.0, &theirs.0);
        assert_eq!(ours.1.len(), theirs.1.len());
        for (a, b) in ours.1.iter().zip(&theirs.1) {
            close(a, b);
        }
    }

    /// Gradients of burn's gate controllers in our stacked layout: `[w_ih, w_hh, b_ih, b_hh]`.
    fn gate_grads(gates: &[&GateController], g: &Gradients) -> Vec<Vec<f32>> {
        let weight = |l: &Linear| l.weight.val().grad(g).unwrap();
        let bias = |l: &Linear| l.bias.as_ref().unwrap().val().grad(g).unwrap();
        let stack2 =
            |f: &dyn Fn(&GateController) -> Tensor<2>| values(Tensor::cat(gates.iter().map(|c| f(c)).collect(), 1));
        let stack1 =
            |f: &dyn Fn(&GateController) -> Tensor<1>| values(Tensor::cat(gates.iter().map(|c| f(c)).collect(), 0));
        vec![
            stack2(&|c| weight(&c.input_transform)),
            stack2(&|c| weight(&c.hidden_transform)),
            stack1(&|c| bias(&c.input_transform)),
            stack1(&|c| bias(&c.hidden_transform)),
        ]
    }

    #[test]
    fn lstm_states_and_every_gradient_match_burns_lstm() {
        let device = Device::flex().autodiff();
        let init = Initializer::new(3, Init::Default, &device);
        let ours_layer = Direction::new(&init, "t", Cell::Lstm, INPUT, HIDDEN);
        let mut theirs = LstmConfig::new(INPUT, HIDDEN, true)
            .with_batch_first(true)
            .init(&device);
        theirs.input_gate = gate(&ours_layer, 0);
        theirs.forget_gate = Some(gate(&ours_layer, 1));
        theirs.cell_gate = gate(&ours_layer, 2);
        theirs.output_gate = gate(&ours_layer, 3);
        let x = input(&device, 3, 7);
        let states = theirs.forward(x.clone(), None).0;
        let expected = differentiate(x, states, |g| {
            let forget = theirs.forget_gate.as_ref().unwrap();
            gate_grads(&[&theirs.input_gate, forget, &theirs.cell_gate, &theirs.output_gate], g)
        });
        assert_close(&ours(&ours_layer, Cell::Lstm, input(&device, 3, 7), false), &expected);
    }

    #[test]
    fn gru_states_and_every_gradient_match_burns_gru_with_reset_after() {
        let device = Device::flex().autodiff();
        let init = Initializer::new(4, Init::Default, &device);
        let ours_layer = Direction::new(&init, "t", Cell::Gru, INPUT, HIDDEN);
        let mut theirs = GruConfig::new(INPUT, HIDDEN, true).with_reset_after(true).init(&device);
        theirs.reset_gate = gate(&ours_layer, 0);
        theirs.update_gate = gate(&ours_layer, 1);
        theirs.new_gate = gate(&ours_layer, 2);
        let x = input(&device, 3, 7);
        let states = theirs.forward(x.clone(), None);
        let expected = differentiate(x, states, |g| {
            gate_grads(&[&theirs.reset_gate, &theirs.update_gate, &theirs.new_gate], g)
        });
        assert_close(&ours(&ours_layer, Cell::Gru, input(&device, 3, 7), false), &expected);
    }

    /// The same layer composed from burn tensor ops (what backends other
    /// than flex run), differentiated by burn's autodiff.
    fn composed(d: &Direction, cell: Cell, x: Tensor<3>, reverse: bool) -> Run {
        let weights = [d.w_ih.val(), d.w_hh.val()];
        let states =
            super::super::composed::recurrent_layer(x.clone(), weights, [d.b_ih.val(), d.b_hh.val()], cell, reverse);
        differentiate(x, states, |g| direction_grads(d, g))
    }

    #[test]
    fn every_cell_matches_its_composition_from_burn_ops_in_both_directions() {
        let device = Device::flex().autodiff();
        for (seed, cell) in [(5, Cell::Tanh), (6, Cell::Relu), (14, Cell::Lstm), (15, Cell::Gru)] {
            let init = Initializer::new(seed, Init::Default, &device);
            let d = Direction::new(&init, "t", cell, INPUT, HIDDEN);
            for reverse in [false, true] {
                let expected = composed(&d, cell, input(&device, 3, 7), reverse);
                assert_close(&ours(&d, cell, input(&device, 3, 7), reverse), &expected);
            }
        }
    }

    #[test]
    fn a_reverse_direction_is_the_forward_run_of_the_flipped_sequence() {
        let device = Device::flex().autodiff();
        for (seed, cell) in [(7, Cell::Lstm), (8, Cell::Gru)] {
            let init = Initializer::new(seed, Init::Default, &device);
            let d = Direction::new(&init, "t", cell, INPUT, HIDDEN);
            let x = input(&device, 2, 6);
            let flipped = d.run(cell, x.clone().flip([1]), false).flip([1]);
            let expected = differentiate(x, flipped, |g| direction_grads(&d, g));
            assert_close(&ours(&d, cell, input(&device, 2, 6), true), &expected);
        }
    }

    #[test]
    fn without_autodiff_the_scan_gives_the_same_states() {
        let device = Device::flex().autodiff();
        let init = Initializer::new(9, Init::Default, &device);
        let d = Direction::new(&init, "t", Cell::Gru, INPUT, HIDDEN);
        let tracked = values(d.run(Cell::Gru, input(&device, 2, 5), true));
        let plain = d.valid();
        let x = Tensor::<3>::from_data(input(&device, 2, 5).into_data(), &Device::flex());
        let untracked = values(plain.run(Cell::Gru, x, true));
        assert_eq!(tracked, untracked);
    }

    #[test]
    fn every_cell_gives_the_same_bits_on_one_thread_and_on_several() {
        let device = Device::flex().autodiff();
        for (seed, cell) in [(10, Cell::Tanh), (11, Cell::Relu), (12, Cell::Lstm), (13, Cell::Gru)] {
            let init = Initializer::new(seed, Init::Default, &device);
            let d = Direction::new(&init, "t", cell, INPUT, HIDDEN);
            for reverse in [false, true] {
                // Five rows: groups of 5 on one thread, of 2, 2 and 1 on three.
                let on = |threads| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| ours(&d, cell, input(&device, 5, 6), reverse))
                };
                assert_eq!(on(1), on(3), "{cell:?}, reverse {reverse}");
            }
        }
    }
}
