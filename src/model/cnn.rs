//! `type: cnn`: the CNN notebook's model: embedding, a convolution over
//! time per kernel width (one by default, several as in Kim 2014), ReLU, the
//! maximum over time of each, concatenated, then the shared head.

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
    /// Output channels per kernel width (default 10).
    pub num_filters: usize,
    /// Kernel widths (`filter_size`, default 3, or `filter_sizes: [3, 4, 5]`).
    pub filter_sizes: Vec<usize>,
    /// Zero padding on each side (default: half of each width, keeping the length).
    pub padding: Option<usize>,
    /// LayerNorm, MLP head and initialisation.
    pub head: HeadSpec,
}

impl CnnConfig {
    /// Checks sizes; returns the key and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.filter_sizes.is_empty() {
            return Err(("filter_sizes", "list at least one kernel width".into()));
        }
        let mut sizes = vec![("num_filters", self.num_filters)];
        sizes.extend(self.filter_sizes.iter().map(|&w| ("filter_sizes", w)));
        super::check_parts(&self.embedding, &self.head, &sizes)
    }

    /// About how many parameters the network has over `vocab_size` tokens.
    pub fn parameters(&self, vocab_size: usize) -> f64 {
        let (dim, filters) = (self.embedding.dim as f64, self.num_filters as f64);
        let convolutions: f64 = self
            .filter_sizes
            .iter()
            .map(|&w| filters * (dim * w as f64 + 1.0))
            .sum();
        vocab_size as f64 * dim
            + convolutions
            + super::head_parameters(filters * self.filter_sizes.len() as f64, &self.head)
    }

    /// Checks the kernel against the longest row of the data: a kernel wider
    /// than every padded row could only ever see padding.
    pub fn check_width(&self, width: usize) -> Result<(), (&'static str, String)> {
        for &size in &self.filter_sizes {
            if size > width + 2 * self.padding(size) {
                let key = if self.filter_sizes.len() == 1 {
                    "filter_size"
                } else {
                    "filter_sizes"
                };
                return Err((
                    key,
                    format!(
                        "{size} is wider than the longest row ({width} tokens) plus the padding ({} on each side)",
                        self.padding(size)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The zero padding on each side of a kernel `size` wide.
    fn padding(&self, size: usize) -> usize {
        self.padding.unwrap_or(size / 2)
    }

    /// A freshly initialised CNN; `setup.glove` replaces the random embedding table.
    pub fn init(&self, setup: &Setup, device: &Device) -> Cnn {
        let shape = setup.shape;
        let init = Initializer::new(setup.seed, self.head.init, device);
        let dim = self.embedding.dim;
        let embedding = embedding_table(&init, &self.embedding, shape.vocab_size, setup.glove);
        // The first width is `conv` (its names are those of one-width CNNs),
        // the others `conv1`, `conv2`, ...
        let mut convs: Vec<Conv1d> = self
            .filter_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let name = if i == 0 { "conv".to_string() } else { format!("conv{i}") };
                let fan_in = dim * size;
                let bound = 1.0 / (fan_in as f32).sqrt();
                let padding = self.padding(size);
                let mut conv = Conv1dConfig::new(dim, self.num_filters, size)
                    .with_padding(PaddingConfig1d::Explicit(padding, padding))
                    .init(device);
                conv.weight = init.weight(
                    &format!("{name}.weight"),
                    [self.num_filters, dim, size],
                    fan_in,
                    self.num_filters * size,
                    bound,
                );
                conv.bias = Some(init.bias(&format!("{name}.bias"), self.num_filters, bound));
                conv
            })
            .collect();
        let conv = convs.remove(0);
        let pooled = self.num_filters * self.filter_sizes.len();
        // Parameters are numbered in creation order, which the saved records keep.
        let (head, width) = hidden_layers(&init, pooled, &self.head.hidden);
        let input_norm = layer_norm(&init, self.head.layer_norm, dim, device);
        let pooled_norm = layer_norm(&init, self.head.layer_norm, pooled, device);
        Cnn {
            embedding,
            input_norm,
            conv,
            more_convs: convs,
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
    more_convs: Vec<Conv1d>,
    pooled_norm: Option<LayerNorm>,
    head: Vec<Linear>,
    output: Linear,
    #[module(skip)]
    config: CnnConfig,
}

impl Classifier for Cnn {
    fn forward(&self, inputs: &Inputs, dropout: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let x = embed(Some(&self.embedding), self.input_norm.as_ref(), inputs);
        let pooled: Vec<Tensor<2>> = std::iter::once(&self.conv)
            .chain(&self.more_convs)
            .zip(&self.config.filter_sizes)
            .map(|(conv, &size)| pool_over_time(x.clone(), conv, size, self.config.padding(size)))
            .collect();
        let pooled = if pooled.len() == 1 {
            pooled.into_iter().next().expect("one width")
        } else {
            Tensor::cat(pooled, 1)
        };
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

/// ReLU of one convolution `size` wide over `x: [batch, time, dim]`, then its
/// maximum over time: `[batch, filters]`. A batch of rows shorter than the
/// kernel is zero-padded to its width, as the convolution's own padding is.
fn pool_over_time(x: Tensor<3>, conv: &Conv1d, size: usize, padding: usize) -> Tensor<2> {
    let [batch, time, dim] = x.dims();
    let short = size.saturating_sub(time + 2 * padding);
    let x = if short > 0 {
        let zeros = Tensor::zeros([batch, short, dim], &x.device());
        Tensor::cat(vec![x, zeros], 1)
    } else {
        x
    };
    let bias = conv.bias.as_ref().expect("the conv has a bias").val();
    let features = relu(convolution::conv_over_time(x, conv.weight.val(), bias, padding));
    let [batch, _, filters] = features.dims();
    features.max_dim(1).reshape([batch, filters])
}
