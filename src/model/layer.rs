//! One direction of one recurrent layer as a single operation with a
//! hand-written backward pass.
//!
//! Built from burn tensor ops, a recurrent layer costs some 40 autodiff nodes
//! per time step, and on the CPU such a step is bound by per-op overhead
//! rather than arithmetic. Here the layer (input projection and recurrence)
//! is one node: the forward pass loops over time on host memory and keeps
//! what the backward pass needs (states, gate activations); the backward pass
//! runs backpropagation through time in one loop. Every sum runs in a fixed
//! order, so results are bit-identical from run to run.
//!
//! The operation is a burn backend extension ([`LayerOps`]): the `flex` CPU
//! backend runs the host loops directly, and burn's autodiff wrapper records
//! one node whose backward is [`backward`].

use std::ops::Range;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::composed;
use super::kernels::{
    FlushDenormals, HostValues, Packed, column_sums, host, matmul_tn_add, register_host_grads, runs_fused, transpose,
};
use super::recurrent::Cell;
use super::sigmoid::sigmoid_in_place;
use super::tanh::tanh_in_place;

/// The recurrent layer as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait LayerOps: Backend {
    /// Runs `cell` over `x: [batch, time, input]` with input weights
    /// `w_ih: [input, gates * hidden]`, recurrent weights
    /// `w_hh: [hidden, gates * hidden]` and biases `b_ih`, `b_hh`
    /// (`[gates * hidden]`), from a zero state, last step first when
    /// `reverse`. Returns every state, `[batch, time, hidden]`.
    fn recurrent_layer(
        x: FloatTensor<Self>,
        w_ih: FloatTensor<Self>,
        b_ih: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        b_hh: FloatTensor<Self>,
        cell: Cell,
        reverse: bool,
    ) -> FloatTensor<Self> {
        let device = x.device();
        let inputs = Inputs::read::<Self>([x, w_ih, b_ih, w_hh, b_hh], cell);
        let dims = inputs.dims;
        let saved = forward(&inputs, cell, reverse, false);
        Self::float_from_data(
            TensorData::new(saved.states, [dims.batch, dims.time, dims.hidden]),
            &device,
        )
    }
}

impl LayerOps for Flex {}

/// Every state of a recurrent layer on burn tensors: see
/// [`LayerOps::recurrent_layer`]; composed from burn ops off the flex backend.
pub fn recurrent_layer(
    x: Tensor<3>,
    [w_ih, w_hh]: [Tensor<2>; 2],
    [b_ih, b_hh]: [Tensor<1>; 2],
    cell: Cell,
    reverse: bool,
) -> Tensor<3> {
    if !runs_fused(&x.device()) {
        return composed::recurrent_layer(x, [w_ih, w_hh], [b_ih, b_hh], cell, reverse);
    }
    Tensor::from_dispatch(<Dispatch as LayerOps>::recurrent_layer(
        x.into_dispatch(),
        w_ih.into_dispatch(),
        b_ih.into_dispatch(),
        w_hh.into_dispatch(),
        b_hh.into_dispatch(),
        cell,
        reverse,
    ))
}

/// Sizes of one layer run.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    time: usize,
    input: usize,
    hidden: usize,
    /// `gates * hidden`.
    width: usize,
}

/// The layer's inputs as host vectors.
#[derive(Debug)]
struct Inputs {
    dims: Dims,
    x: HostValues,
    w_ih: HostValues,
    b_ih: HostValues,
    w_hh: HostValues,
    b_hh: HostValues,
}

impl Inputs {
    /// Reads `[x, w_ih, b_ih, w_hh, b_hh]` to the host, checking their shapes.
    fn read<B: Backend>([x, w_ih, b_ih, w_hh, b_hh]: [FloatTensor<B>; 5], cell: Cell) -> Inputs {
        let [batch, time, input] = x.shape().as_slice().try_into().expect("x is [batch, time, input]");
        let width = w_ih.shape()[1];
        let dims = Dims {
            batch,
            time,
            input,
            hidden: width / cell.gates(),
            width,
        };
        assert_eq!(
            w_ih.shape().as_slice(),
            [input, width],
            "w_ih is [input, gates * hidden]"
        );
        assert_eq!(
            w_hh.shape().as_slice(),
            [dims.hidden, width],
            "w_hh is [hidden, gates * hidden]"
        );
        assert_eq!(b_ih.shape().as_slice(), [width], "b_ih is [gates * hidden]");
        assert_eq!(b_hh.shape().as_slice(), [width], "b_hh is [gates * hidden]");
        Inputs {
            dims,
            x: host::<B>(x),
            w_ih: host::<B>(w_ih),
            b_ih: host::<B>(b_ih),
            w_hh: host::<B>(w_hh),
            b_hh: host::<B>(b_hh),
        }
    }
}

/// What the forward pass leaves for the backward pass.
#[derive(Debug)]
struct Saved {
    /// Every state `[batch, time, hidden]`.
    states: Vec<f32>,
    /// Per step and row, the activated gates (`i f g o` for the LSTM, `r z n`
    /// for the GRU) `[batch, time, gates * hidden]`; empty for Elman cells.
    gates: Vec<f32>,
    /// LSTM cell states and their `tanh` `[batch, time, 2 * hidden]`, GRU
    /// `h W_hn + b_hn` `[batch, time, hidden]` ([`extra_width`]); empty for
    /// Elman cells.
    extra: Vec<f32>,
}

/// Values per row and step in [`Saved::extra`].
fn extra_width(cell: Cell, hidden: usize) -> usize {
    if cell == Cell::Lstm { 2 * hidden } else { hidden }
}

/// The time index of processing step `step`.
fn time_at(step: usize, time: usize, reverse: bool) -> usize {
    if reverse { time - 1 - step } else { step }
}

/// Runs `task` on groups of batch rows as parallel tasks, the rows spread
/// evenly over the pool's threads; each task gets its rows and their pieces
/// of `buffers` (`(buffer, values per row)`; a buffer left empty because it is
/// not kept gives empty pieces). Rows never meet inside a layer and every sum
/// runs in the same order whatever the split, so results do not depend on the
/// thread count.
fn in_row_groups(batch: usize, buffers: [(&mut [f32], usize); 3], task: impl Fn(Range<usize>, [&mut [f32]; 3]) + Sync) {
    let rows = batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let groups = batch.div_ceil(rows);
    let [first, second, third] = buffers.map(|(buffer, per_row)| {
        if buffer.is_empty() {
            (0..groups).map(|_| <&mut [f32]>::default()).collect::<Vec<_>>()
        } else {
            buffer.chunks_mut(rows * per_row).collect()
        }
    });
    first
        .into_par_iter()
        .zip(second)
        .zip(third)
        .enumerate()
        .for_each(|(group, ((a, b), c))| {
            let start = group * rows;
            task(start..(start + rows).min(batch), [a, b, c]);
        });
}

/// Runs the layer; with `save`, keeps the gates the backward pass needs.
/// Groups of batch rows run as parallel tasks.
fn forward(inputs: &Inputs, cell: Cell, reverse: bool, save: bool) -> Saved {
    let Dims {
        batch,
        time,
        hidden,
        width,
        ..
    } = inputs.dims;
    let keeps_gates = save && matches!(cell, Cell::Lstm | Cell::Gru);
    let kept = |len: usize| if keeps_gates { vec![0.0; len] } else { Vec::new() };
    let mut saved = Saved {
        states: vec![0.0; batch * time * hidden],
        gates: kept(batch * time * width),
        extra: kept(batch * time * extra_width(cell, hidden)),
    };
    let weights = [
        Packed::new(&inputs.w_ih, inputs.dims.input, width),
        Packed::new(&inputs.w_hh, hidden, width),
    ];
    in_row_groups(
        batch,
        [
            (&mut saved.states, time * hidden),
            (&mut saved.gates, time * width),
            (&mut saved.extra, time * extra_width(cell, hidden)),
        ],
        |rows, pieces| forward_rows(inputs, &weights, rows, cell, reverse, pieces),
    );
    saved
}

/// The forward pass of batch rows `rows` into their pieces of the saved
/// `[states, gates, extra]` (gates and extra empty unless kept), with
/// `w_ih` and `w_hh` packed.
fn forward_rows(
    inputs: &Inputs,
    [w_ih, w_hh]: &[Packed; 2],
    rows: Range<usize>,
    cell: Cell,
    reverse: bool,
    [states, gates, extra]: [&mut [f32]; 3],
) {
    let _flush = FlushDenormals::start();
    let Dims {
        time,
        input,
        hidden,
        width,
        ..
    } = inputs.dims;
    let batch = rows.len();
    let keeps_gates = !gates.is_empty();
    let mut projected = vec![0.0f32; batch * time * width];
    for row in projected.chunks_exact_mut(width) {
        row.copy_from_slice(&inputs.b_ih);
    }
    let x = &inputs.x[rows.start * time * input..rows.end * time * input];
    w_ih.matmul_add(x, &mut projected);
    let mut h = vec![0.0f32; batch * hidden];
    let mut c = vec![0.0f32; batch * hidden];
    let mut recurrent = vec![0.0f32; batch * width];
    // A row's activated gates and the tanh of its LSTM cell state.
    let mut activated = vec![0.0f32; width];
    let mut tanh_c = vec![0.0f32; hidden];
    for step in 0..time {
        let t = time_at(step, time, reverse);
        for row in recurrent.chunks_exact_mut(width) {
            row.copy_from_slice(&inputs.b_hh);
        }
        w_hh.matmul_add(&h, &mut recurrent);
        for b in 0..batch {
            let at = (b * time + t) * width;
            let x = &projected[at..at + width];
            let r = &recurrent[b * width..(b + 1) * width];
            let h_b = &mut h[b * hidden..(b + 1) * hidden];
            let state = (b * time + t) * hidden;
            match cell {
                Cell::Tanh => {
                    for j in 0..hidden {
                        h_b[j] = x[j] + r[j];
                    }
                    tanh_in_place(h_b);
                }
                Cell::Relu => {
                    for j in 0..hidden {
                        h_b[j] = (x[j] + r[j]).max(0.0);
                    }
                }
                Cell::Lstm => {
                    // i, f, g, o, then tanh of the new cell state.
                    for j in 0..width {
                        activated[j] = x[j] + r[j];
                    }
                    sigmoid_in_place(&mut activated[..2 * hidden]);
                    sigmoid_in_place(&mut activated[3 * hidden..]);
                    tanh_in_place(&mut activated[2 * hidden..3 * hidden]);
                    let c_b = &mut c[b * hidden..(b + 1) * hidden];
                    for j in 0..hidden {
                        c_b[j] = activated[hidden + j] * c_b[j] + activated[j] * activated[2 * hidden + j];
                    }
                    tanh_c.copy_from_slice(c_b);
                    tanh_in_place(&mut tanh_c);
                    for j in 0..hidden {
                        h_b[j] = activated[3 * hidden + j] * tanh_c[j];
                    }
                    if keeps_gates {
                        gates[at..at + width].copy_from_slice(&activated);
                        let kept = &mut extra[2 * state..2 * (state + hidden)];
                        kept[..hidden].copy_from_slice(c_b);
                        kept[hidden..].copy_from_slice(&tanh_c);
                    }
                }
                Cell::Gru => {
                    // r, z, then n.
                    for j in 0..2 * hidden {
                        activated[j] = x[j] + r[j];
                    }
                    sigmoid_in_place(&mut activated[..2 * hidden]);
                    for j in 0..hidden {
                        activated[2 * hidden + j] = x[2 * hidden + j] + activated[j] * r[2 * hidden + j];
                    }
                    tanh_in_place(&mut activated[2 * hidden..]);
                    for j in 0..hidden {
                        let (update, n) = (activated[hidden + j], activated[2 * hidden + j]);
                        h_b[j] = n + update * (h_b[j] - n);
                    }
                    if keeps_gates {
                        gates[at..at + width].copy_from_slice(&activated);
                        extra[state..state + hidden].copy_from_slice(&r[2 * hidden..]);
                    }
                }
            }
            states[state..state + hidden].copy_from_slice(h_b);
        }
    }
}

/// Gradients of the layer's inputs, in the order of [`Inputs::read`].
struct Grads {
    x: Vec<f32>,
    w_ih: Vec<f32>,
    b_ih: Vec<f32>,
    w_hh: Vec<f32>,
    b_hh: Vec<f32>,
}

/// Backpropagation through time: from `d_states` (`[batch, time, hidden]`)
/// to the gradients of every input. Groups of batch rows run back through
/// time as parallel tasks; the weight gradients then sum over every row and
/// step in order.
fn backward(inputs: &Inputs, saved: &Saved, d_states: &[f32], cell: Cell, reverse: bool) -> Grads {
    let _flush = FlushDenormals::start();
    let Dims {
        batch,
        time,
        input,
        hidden,
        width,
    } = inputs.dims;
    // Gradients of the input projection `x w_ih + b_ih` and of the recurrent
    // term `h w_hh + b_hh` at every step; they differ only in the GRU's `n` gate.
    let mut d_projected = vec![0.0f32; batch * time * width];
    let mut d_recurrent = if cell == Cell::Gru {
        vec![0.0f32; batch * time * width]
    } else {
        Vec::new()
    };
    let mut d_x = vec![0.0f32; batch * time * input];
    let pass = Pass {
        inputs,
        saved,
        d_states,
        w_hh_t: Packed::new(&transpose(&inputs.w_hh, hidden, width), width, hidden),
        w_ih_t: Packed::new(&transpose(&inputs.w_ih, input, width), width, input),
        cell,
        reverse,
    };
    in_row_groups(
        batch,
        [
            (&mut d_projected, time * width),
            (&mut d_recurrent, time * width),
            (&mut d_x, time * input),
        ],
        |rows, pieces| pass.backward_rows(rows, pieces),
    );
    // Parameter gradients as single products over every step: the state each
    // step started from, `[batch * time, hidden]`, against the step's gradient.
    let state = |b: usize, t: usize| (b * time + t) * hidden;
    let mut h_prev = vec![0.0f32; batch * time * hidden];
    for b in 0..batch {
        for step in 1..time {
            let (t, p) = (time_at(step, time, reverse), time_at(step - 1, time, reverse));
            h_prev[state(b, t)..state(b, t) + hidden].copy_from_slice(&saved.states[state(b, p)..state(b, p) + hidden]);
        }
    }
    let d_recurrent = if cell == Cell::Gru { &d_recurrent } else { &d_projected };
    let mut grads = Grads {
        x: d_x,
        w_ih: vec![0.0; input * width],
        b_ih: column_sums(&d_projected, width),
        w_hh: vec![0.0; hidden * width],
        b_hh: column_sums(d_recurrent, width),
    };
    rayon::join(
        || {
            let _flush = FlushDenormals::start();
            matmul_tn_add(&h_prev, d_recurrent, &mut grads.w_hh, hidden, width);
        },
        || {
            let _flush = FlushDenormals::start();
            matmul_tn_add(&inputs.x, &d_projected, &mut grads.w_ih, input, width);
        },
    );
    grads
}

/// What backpropagation through a group of rows reads.
struct Pass<'a> {
    inputs: &'a Inputs,
    saved: &'a Saved,
    d_states: &'a [f32],
    /// `w_hh` and `w_ih` transposed and packed, once for every group.
    w_hh_t: Packed,
    w_ih_t: Packed,
    cell: Cell,
    reverse: bool,
}

impl Pass<'_> {
    /// Backpropagation through time for batch rows `rows`, into their pieces
    /// of the gradients of the input projection, of the recurrent term (GRU
    /// only, else empty) and of `x`.
    fn backward_rows(&self, rows: Range<usize>, [d_projected, d_recurrent_all, d_x]: [&mut [f32]; 3]) {
        let _flush = FlushDenormals::start();
        let Pass {
            inputs,
            saved,
            d_states,
            ref w_hh_t,
            ref w_ih_t,
            cell,
            reverse,
        } = *self;
        let Dims {
            time, hidden, width, ..
        } = inputs.dims;
        let batch = rows.len();
        // Indices into the whole batch (reads) and into this group's pieces (writes).
        let state = |b: usize, t: usize| (b * time + t) * hidden;
        let own = |b: usize, t: usize| ((b - rows.start) * time + t) * width;
        let zeros = vec![0.0f32; hidden];
        // Gradients flowing into the previous step's state (and LSTM cell).
        let mut dh_carry = vec![0.0f32; batch * hidden];
        let mut dc_carry = vec![0.0f32; batch * hidden];
        let mut d_recurrent = vec![0.0f32; batch * width];
        let mut dh = vec![0.0f32; hidden];
        for step in (0..time).rev() {
            let t = time_at(step, time, reverse);
            let previous = (step > 0).then(|| time_at(step - 1, time, reverse));
            for b in rows.clone() {
                let local = b - rows.start;
                let at = state(b, t);
                let h = &saved.states[at..at + hidden];
                let carry = &mut dh_carry[local * hidden..(local + 1) * hidden];
                for j in 0..hidden {
                    dh[j] = d_states[at + j] + carry[j];
                    carry[j] = 0.0;
                }
                let gate_at = (b * time + t) * width;
                let dx = &mut d_projected[own(b, t)..own(b, t) + width];
                let dr = &mut d_recurrent[local * width..(local + 1) * width];
                match cell {
                    Cell::Tanh => {
                        for j in 0..hidden {
                            dx[j] = dh[j] * (1.0 - h[j] * h[j]);
                        }
                        dr.copy_from_slice(dx);
                    }
                    Cell::Relu => {
                        for j in 0..hidden {
                            dx[j] = if h[j] > 0.0 { dh[j] } else { 0.0 };
                        }
                        dr.copy_from_slice(dx);
                    }
                    Cell::Lstm => {
                        let gates = &saved.gates[gate_at..gate_at + width];
                        // This step's tanh(c) and the step before's c (`extra` holds c, then tanh(c)).
                        let tanh_c = &saved.extra[2 * at + hidden..2 * (at + hidden)];
                        let c_prev =
                            previous.map_or(&zeros[..], |p| &saved.extra[2 * state(b, p)..2 * state(b, p) + hidden]);
                        let dc_b = &mut dc_carry[local * hidden..(local + 1) * hidden];
                        for j in 0..hidden {
                            let (i, f, g, o) = (
                                gates[j],
                                gates[hidden + j],
                                gates[2 * hidden + j],
                                gates[3 * hidden + j],
                            );
                            let tanh_c = tanh_c[j];
                            let dc = dc_b[j] + dh[j] * o * (1.0 - tanh_c * tanh_c);
                            dx[j] = dc * g * i * (1.0 - i);
                            dx[hidden + j] = dc * c_prev[j] * f * (1.0 - f);
                            dx[2 * hidden + j] = dc * i * (1.0 - g * g);
                            dx[3 * hidden + j] = dh[j] * tanh_c * o * (1.0 - o);
                            dc_b[j] = dc * f;
                        }
                        dr.copy_from_slice(dx);
                    }
                    Cell::Gru => {
                        let gates = &saved.gates[gate_at..gate_at + width];
                        let hn = &saved.extra[at..at + hidden];
                        let h_prev = previous.map_or(&zeros[..], |p| &saved.states[state(b, p)..state(b, p) + hidden]);
                        for j in 0..hidden {
                            let (reset, update, n) = (gates[j], gates[hidden + j], gates[2 * hidden + j]);
                            let dn = dh[j] * (1.0 - update) * (1.0 - n * n);
                            let dz = dh[j] * (h_prev[j] - n) * update * (1.0 - update);
                            let d_reset = dn * hn[j] * reset * (1.0 - reset);
                            (dx[j], dx[hidden + j], dx[2 * hidden + j]) = (d_reset, dz, dn);
                            (dr[j], dr[hidden + j], dr[2 * hidden + j]) = (d_reset, dz, dn * reset);
                            carry[j] = dh[j] * update;
                        }
                        d_recurrent_all[own(b, t)..own(b, t) + width].copy_from_slice(dr);
                    }
                }
            }
            // The previous step's state gradient: d_recurrent w_hh^T.
            w_hh_t.matmul_add(&d_recurrent, &mut dh_carry);
        }
        w_ih_t.matmul_add(d_projected, d_x);
    }
}

/// The autodiff node of a layer run.
#[derive(Debug)]
struct LayerBackward;

/// What the backward pass of a layer run needs.
#[derive(Debug, Clone)]
struct LayerState {
    inputs: Arc<Inputs>,
    saved: Arc<Saved>,
    cell: Cell,
    reverse: bool,
}

impl<B: Backend> Backward<B, 5> for LayerBackward {
    type State = LayerState;

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let d_states = grads.consume::<B>(&ops.node);
        let device = d_states.device();
        let LayerState {
            inputs,
            saved,
            cell,
            reverse,
        } = ops.state;
        let result = backward(&inputs, &saved, &host::<B>(d_states), cell, reverse);
        let Dims {
            batch,
            time,
            input,
            hidden,
            width,
        } = inputs.dims;
        let values = [
            (result.x, vec![batch, time, input]),
            (result.w_ih, vec![input, width]),
            (result.b_ih, vec![width]),
            (result.w_hh, vec![hidden, width]),
            (result.b_hh, vec![width]),
        ];
        register_host_grads::<B>(grads, ops.parents.map(|p| p.map(|node| node.id)), values, &device);
    }
}

impl<B: Backend + LayerOps, C: CheckpointStrategy> LayerOps for Autodiff<B, C> {
    fn recurrent_layer(
        x: FloatTensor<Self>,
        w_ih: FloatTensor<Self>,
        b_ih: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        b_hh: FloatTensor<Self>,
        cell: Cell,
        reverse: bool,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), w_ih.node(), b_ih.node(), w_hh.node(), b_hh.node()];
        let primitives = [x, w_ih, b_ih, w_hh, b_hh].map(|t| t.into_primitive());
        let device = primitives[0].device();
        let inputs = Inputs::read::<B>(primitives, cell);
        let dims = inputs.dims;
        let prep = LayerBackward.prepare::<C>(nodes).compute_bound().stateful();
        let tracked = matches!(prep, OpsKind::Tracked(_));
        let saved = forward(&inputs, cell, reverse, tracked);
        let output = B::float_from_data(
            TensorData::new(saved.states.clone(), [dims.batch, dims.time, dims.hidden]),
            &device,
        );
        match prep {
            OpsKind::Tracked(prep) => prep.finish(
                LayerState {
                    inputs: Arc::new(inputs),
                    saved: Arc::new(saved),
                    cell,
                    reverse,
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}
