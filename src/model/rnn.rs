//! `type: rnn | lstm | gru`: embedding (or a frozen encoder's features, from
//! an `encode` stage), a stack of recurrent layers
//! ([`super::recurrent`]), the states pooled over time, then the shared head.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;

use super::config::{EmbeddingSpec, HeadSpec};
use super::init::{Initializer, RecurrentInit};
use super::recurrent::{Cell, Recurrent};
use super::{
    Classifier, Inputs, Pooling, Setup, apply_dropout, classify, embed, embedding_table, hidden_layers, layer_norm,
    linear,
};
use crate::data::batches::Side;

/// The recurrent networks' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RnnConfig {
    /// The cell: `rnn` is Elman with `nonlinearity` tanh (default) or relu.
    pub cell: Cell,
    /// The token embedding.
    pub embedding: EmbeddingSpec,
    /// Units per direction (default 64).
    pub hidden_size: usize,
    /// Stacked layers (default 1).
    pub num_layers: usize,
    /// Run a second, backward direction (default false).
    pub bidirectional: bool,
    /// Dropout between layers (default 0).
    pub dropout: f64,
    /// How states become one vector: `last` (default), `mean`, `max`, `attention`.
    pub pooling: Pooling,
    /// Hidden-to-hidden weights: `default` (as `init`) or `orthogonal`.
    pub recurrent_init: RecurrentInit,
    /// LayerNorm, MLP head and initialisation.
    pub head: HeadSpec,
}

impl RnnConfig {
    /// Checks sizes; returns the key and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let sizes = [("hidden_size", self.hidden_size), ("num_layers", self.num_layers)];
        super::check_parts(&self.embedding, &self.head, &sizes)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("dropout", "must be in [0, 1)".into()));
        }
        Ok(())
    }

    /// About how many parameters the network has over `vocab_size` tokens.
    pub fn parameters(&self, vocab_size: usize) -> f64 {
        let (dim, hidden) = (self.embedding.dim as f64, self.hidden_size as f64);
        let directions = if self.bidirectional { 2.0 } else { 1.0 };
        let gates = self.cell.gates() as f64;
        let layers: f64 = (0..self.num_layers.min(1 << 20))
            .map(|layer| {
                let input = if layer == 0 { dim } else { hidden * directions };
                directions * gates * hidden * (input + hidden + 2.0)
            })
            .sum();
        vocab_size as f64 * dim + layers + super::head_parameters(hidden * directions, &self.head)
    }

    /// A freshly initialised network; `setup.glove` replaces the random embedding table.
    pub fn init(&self, setup: &Setup, device: &Device) -> Rnn {
        let shape = setup.shape;
        let init = Initializer::new(setup.seed, self.head.init, device).with_recurrent(self.recurrent_init);
        let (embedding, dim) = match setup.features {
            Some(dim) => (None, dim),
            None => (
                Some(embedding_table(&init, &self.embedding, shape.vocab_size, setup.glove)),
                self.embedding.dim,
            ),
        };
        let recurrent = Recurrent::new(
            &init,
            self.cell,
            dim,
            self.hidden_size,
            self.num_layers,
            self.bidirectional,
        );
        let features = recurrent.output_size();
        // Parameters are numbered in creation order, which the saved records keep.
        let (head, width) = hidden_layers(&init, features, &self.head.hidden);
        let input_norm = layer_norm(&init, self.head.layer_norm, dim, device);
        let pooled_norm = layer_norm(&init, self.head.layer_norm, features, device);
        Rnn {
            embedding,
            input_norm,
            recurrent,
            pooled_norm,
            head,
            output: linear(&init, "output", width, shape.outputs),
            config: self.clone(),
            padding: shape.padding,
        }
    }
}

/// A recurrent classifier; see [`RnnConfig`].
#[derive(Module, Debug)]
pub struct Rnn {
    embedding: Option<Embedding>,
    input_norm: Option<LayerNorm>,
    recurrent: Recurrent,
    pooled_norm: Option<LayerNorm>,
    head: Vec<Linear>,
    output: Linear,
    #[module(skip)]
    config: RnnConfig,
    #[module(skip)]
    padding: Side,
}

impl Classifier for Rnn {
    fn forward(&self, inputs: &Inputs, mut dropout: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let x = embed(self.embedding.as_ref(), self.input_norm.as_ref(), inputs);
        let p = self.config.dropout;
        let states = self.recurrent.forward(x, |t| match dropout.as_deref_mut() {
            Some(stream) if p > 0.0 => apply_dropout(t, p, stream),
            _ => t,
        });
        let pooled = self.pool(states, inputs);
        classify(
            pooled,
            self.pooled_norm.as_ref(),
            (self.config.head.dropout, dropout),
            &self.head,
            self.config.head.activation,
            &self.output,
        )
    }
}

impl Rnn {
    /// Pools `states: [batch, time, size]` into `[batch, size]`.
    fn pool(&self, states: Tensor<3>, inputs: &Inputs) -> Tensor<2> {
        let [batch, time, size] = states.dims();
        let device = states.device();
        match self.config.pooling {
            Pooling::Last => self.last(states, inputs),
            Pooling::Mean => {
                let mask = self.mask(inputs, 1.0, 0.0, &device);
                let lengths: Vec<f32> = inputs.lengths.iter().map(|&l| l as f32).collect();
                let lengths = Tensor::<2>::from_data(TensorData::new(lengths, [batch, 1]), &device);
                (states * mask).sum_dim(1).reshape([batch, size]) / lengths
            }
            Pooling::Max => {
                let bias = self.mask(inputs, 0.0, f32::NEG_INFINITY, &device);
                (states + bias).max_dim(1).reshape([batch, size])
            }
            Pooling::Attention => {
                let query = self.last(states.clone(), inputs);
                let scores = states.clone().matmul(query.reshape([batch, size, 1]))
                    + self.mask(inputs, 0.0, f32::NEG_INFINITY, &device);
                let weights = softmax(scores, 1);
                debug_assert_eq!(weights.dims(), [batch, time, 1]);
                (states * weights).sum_dim(1).reshape([batch, size])
            }
        }
    }

    /// The state after the last real token: for a backward direction, its
    /// state at the first real token.
    fn last(&self, states: Tensor<3>, inputs: &Inputs) -> Tensor<2> {
        let [batch, _, size] = states.dims();
        let bidirectional = self.config.bidirectional;
        let mut index = Vec::with_capacity(batch * size);
        for &length in &inputs.lengths {
            let real = self.real_tokens(length, inputs.width);
            for unit in 0..size {
                let backward = bidirectional && unit >= size / 2;
                index.push(if backward { real.start } else { real.end - 1 } as i64);
            }
        }
        let index = Tensor::<3, Int>::from_data(TensorData::new(index, [batch, 1, size]), &states.device());
        states.gather(1, index).reshape([batch, size])
    }

    /// `[batch, time, 1]` holding `real` at tokens and `pad` at padding.
    fn mask(&self, inputs: &Inputs, real: f32, pad: f32, device: &Device) -> Tensor<3> {
        let width = inputs.width;
        let mut values = Vec::with_capacity(inputs.lengths.len() * width);
        for &length in &inputs.lengths {
            let tokens = self.real_tokens(length, width);
            values.extend((0..width).map(|t| if tokens.contains(&t) { real } else { pad }));
        }
        Tensor::from_data(TensorData::new(values, [inputs.lengths.len(), width, 1]), device)
    }

    /// The positions of a row's `length` real tokens among `width`, after the padding side.
    fn real_tokens(&self, length: usize, width: usize) -> std::ops::Range<usize> {
        match self.padding {
            Side::Right => 0..length,
            Side::Left => width - length..width,
        }
    }
}
