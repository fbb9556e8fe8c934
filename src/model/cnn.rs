//! `type: cnn`: the CNN notebook's model: embedding, one convolution over
//! time, ReLU, the maximum over time, then the shared head.

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Embedding, LayerNorm, Linear, PaddingConfig1d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;

use super::config::{EmbeddingSpec, HeadSpec};
use super::init::Initializer;
use super::{
    Classifier, Inputs, Setup, classify, convolution, embed, embedding_table, hidden_layers, layer_norm, linear,
};

/// The CNN's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CnnConfig {
    /// The token embedding.
    pub embedding: EmbeddingSpec,
    /// Output channels (default 10).
    pub num_filters: usize,
    /// Kernel width (default 3).
    pub filter_size: usize,
    /// Zero padding on each side (default `filter_size / 2`, keeping the length).
    pub padding: Option<usize>,
    /// LayerNorm, MLP head and initialisation.
    pub head: HeadSpec,
}

impl CnnConfig {
    /// Checks sizes; returns the key and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let sizes = [("num_filters", self.num_filters), ("filter_size", self.filter_size)];
        super::check_parts(&self.embedding, &self.head, &sizes)
    }

    /// About how many parameters the network has over `vocab_size` tokens.
    pub fn parameters(&self, vocab_size: usize) -> f64 {
        let (dim, filters) = (self.embedding.dim as f64, self.num_filters as f64);
        vocab_size as f64 * dim
            + filters * (dim * self.filter_size as f64 + 1.0)
            + super::head_parameters(filters, &self.head)
    }

    /// Checks the kernel against the longest row of the data: a kernel wider
    /// than every padded row could only ever see padding.
    pub fn check_width(&self, width: usize) -> Result<(), (&'static str, String)> {
        if self.filter_size > width + 2 * self.padding() {
            return Err((
                "filter_size",
                format!(
                    "{} is wider than the longest row ({width} tokens) plus the padding ({} on each side)",
                    self.filter_size,
                    self.padding()
                ),
            ));
        }
        Ok(())
    }

    fn padding(&self) -> usize {
        self.padding.unwrap_or(self.filter_size / 2)
    }

    /// A freshly initialised CNN; `setup.glove` replaces the random embedding table.
    pub fn init(&self, setup: &Setup, device: &Device) -> Cnn {
        let shape = setup.shape;
        let init = Initializer::new(setup.seed, self.head.init, device);
        let dim = self.embedding.dim;
        let embedding = embedding_table(&init, &self.embedding, shape.vocab_size, setup.glove);
        let fan_in = dim * self.filter_size;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let padding = self.padding();
        let mut conv = Conv1dConfig::new(dim, self.num_filters, self.filter_size)
            .with_padding(PaddingConfig1d::Explicit(padding, padding))
            .init(device);
        conv.weight = init.weight(
            "conv.weight",
            [self.num_filters, dim, self.filter_size],
            fan_in,
            self.num_filters * self.filter_size,
            bound,
        );
        conv.bias = Some(init.bias("conv.bias", self.num_filters, bound));
        // Parameters are numbered in creation order, which the saved records keep.
        let (head, width) = hidden_layers(&init, self.num_filters, &self.head.hidden);
        let input_norm = layer_norm(&init, self.head.layer_norm, dim, device);
        let pooled_norm = layer_norm(&init, self.head.layer_norm, self.num_filters, device);
        Cnn {
            embedding,
            input_norm,
            conv,
            pooled_norm,
            head,
            output: linear(&init, "output", width, shape.outputs),
            config: self.clone(),
        }
    }
}

/// The CNN; see [`CnnConfig`].
#[derive(Module, Debug)]
pub struct Cnn {
    embedding: Embedding,
    input_norm: Option<LayerNorm>,
    conv: Conv1d,
    pooled_norm: Option<LayerNorm>,
    head: Vec<Linear>,
    output: Linear,
    #[module(skip)]
    config: CnnConfig,
}

impl Classifier for Cnn {
    fn forward(&self, inputs: &Inputs, dropout: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let x = embed(Some(&self.embedding), self.input_norm.as_ref(), inputs);
        // A batch of rows shorter than the kernel is zero-padded to its width,
        // as the convolution's own padding is.
        let [batch, time, dim] = x.dims();
        let short = self.config.filter_size.saturating_sub(time + 2 * self.config.padding());
        let x = if short > 0 {
            let zeros = Tensor::zeros([batch, short, dim], &x.device());
            Tensor::cat(vec![x, zeros], 1)
        } else {
            x
        };
        let bias = self.conv.bias.as_ref().expect("the conv has a bias").val();
        let features = relu(convolution::conv_over_time(
            x,
            self.conv.weight.val(),
            bias,
            self.config.padding(),
        ));
        let [batch, _, filters] = features.dims();
        let pooled = features.max_dim(1).reshape([batch, filters]);
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
