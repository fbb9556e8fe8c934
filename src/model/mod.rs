//! The text classifiers of the course notebooks as burn modules: a CNN and
//! Elman / LSTM / GRU networks with a choice of pooling over time, optional
//! LayerNorm, an MLP head and pretrained (GloVe) embeddings.

pub mod composed;
pub mod convolution;
pub mod embedding;
pub mod glove;
pub mod init;
pub mod kernels;
pub mod layer;
pub mod recurrent;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, PaddingConfig1d};
use burn::tensor::activation::{gelu, relu, softmax, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::batches::{Batch, Side};
use crate::data::rng;
use init::{EmbeddingInit, Init, Initializer, RecurrentInit};
use recurrent::{Cell, Recurrent};

/// `stages.train.model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `cnn`, `rnn`, `lstm` or `gru`.
    #[serde(rename = "type")]
    pub kind: ModelKind,
    /// Width of the token embeddings (default 64).
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: usize,
    /// Pretrained vectors for the vocabulary's words (GloVe text format, `.gz` allowed).
    #[serde(default)]
    pub glove: Option<String>,
    /// Keep the embedding fixed during training (default false).
    #[serde(default)]
    pub freeze: bool,
    /// CNN: output channels (default 10).
    #[serde(default = "default_num_filters")]
    pub num_filters: usize,
    /// CNN: kernel width (default 3).
    #[serde(default = "default_filter_size")]
    pub filter_size: usize,
    /// CNN: zero padding on each side (default `filter_size / 2`, keeping the length).
    #[serde(default)]
    pub padding: Option<usize>,
    /// Recurrent: units per direction (default 64).
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Recurrent: stacked layers (default 1).
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    /// `rnn`: `tanh` (default) or `relu`.
    #[serde(default)]
    pub nonlinearity: Nonlinearity,
    /// Recurrent: run a second, backward direction (default false).
    #[serde(default)]
    pub bidirectional: bool,
    /// Dropout between recurrent layers (default 0).
    #[serde(default)]
    pub dropout: f64,
    /// Recurrent: how states become one vector: `last` (default), `mean`, `max`, `attention`.
    /// The CNN always takes the maximum over time.
    #[serde(default)]
    pub pooling: Pooling,
    /// LayerNorm on the embeddings and on the pooled vector (default false).
    #[serde(default)]
    pub layer_norm: bool,
    /// Hidden layer sizes of the MLP head before the output layer (default none).
    #[serde(default)]
    pub head: Vec<usize>,
    /// Activation of the head's hidden layers: `relu` (default), `tanh`, `gelu`.
    #[serde(default)]
    pub activation: Activation,
    /// Weight initialisation: `default`, `xavier_uniform`, `kaiming_uniform`.
    #[serde(default)]
    pub init: Init,
    /// Hidden-to-hidden weights: `default` (as `init`) or `orthogonal`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub recurrent_init: RecurrentInit,
    /// A learned embedding table: `normal` (default, N(0, 1)) or `uniform` (U(-0.05, 0.05), Keras').
    #[serde(default, skip_serializing_if = "is_default")]
    pub embedding_init: EmbeddingInit,
}

/// Keeps keys added with their default value out of cache keys made before they existed.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_embedding_dim() -> usize {
    64
}
fn default_num_filters() -> usize {
    10
}
fn default_filter_size() -> usize {
    3
}
fn default_hidden_size() -> usize {
    64
}
fn default_num_layers() -> usize {
    1
}

/// The model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Embedding, Conv1d, ReLU, max over time.
    Cnn,
    /// Elman recurrent network.
    Rnn,
    /// Long short-term memory.
    Lstm,
    /// Gated recurrent unit.
    Gru,
}

/// The Elman network's activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nonlinearity {
    /// `tanh`.
    #[default]
    Tanh,
    /// `relu`.
    Relu,
}

/// Pooling of recurrent states over time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The state at the last real token (the first real token for a backward direction).
    #[default]
    Last,
    /// Mean over real tokens.
    Mean,
    /// Maximum over real tokens.
    Max,
    /// Softmax of each state's dot product with the last one, padding masked, as weights.
    Attention,
}

/// Activation of the MLP head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// GELU.
    Gelu,
}

impl ModelConfig {
    /// Checks sizes; returns the key path and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("embedding_dim", self.embedding_dim),
            ("num_filters", self.num_filters),
            ("filter_size", self.filter_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("dropout", "must be in [0, 1)".into()));
        }
        if self.head.contains(&0) {
            return Err(("head", "layer sizes must be at least 1".into()));
        }
        if self.freeze && self.glove.is_none() {
            return Err(("freeze", "freezing needs pretrained vectors (`glove`)".into()));
        }
        if self.embedding_init != EmbeddingInit::default() && self.glove.is_some() {
            return Err((
                "embedding_init",
                "applies to a learned table; GloVe tables start from the vectors".into(),
            ));
        }
        Ok(())
    }
}

/// What the model needs to know about the data.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Output units: the number of labels, or 1 for `bce_with_logits`.
    pub outputs: usize,
    /// The padding side of the inputs.
    pub padding: Side,
}

/// A classifier; see [`ModelConfig`].
#[derive(Module, Debug)]
pub struct Model {
    embedding: Embedding,
    input_norm: Option<LayerNorm>,
    conv: Option<Conv1d>,
    recurrent: Option<Recurrent>,
    pooled_norm: Option<LayerNorm>,
    head: Vec<Linear>,
    output: Linear,
    #[module(skip)]
    config: ModelConfig,
    #[module(skip)]
    padding: Side,
}

/// A batch on the device: ids `[batch, time]` plus what pooling needs.
pub struct Inputs {
    ids: Tensor<2, Int>,
    lengths: Vec<usize>,
    width: usize,
}

impl Inputs {
    /// Moves a batch's ids to `device`.
    pub fn new(batch: &Batch, device: &Device) -> Inputs {
        let ids: Vec<i64> = batch.ids.iter().map(|&id| i64::from(id)).collect();
        let rows = batch.lengths.len();
        Inputs {
            ids: Tensor::from_data(TensorData::new(ids, [rows, batch.width]), device),
            lengths: batch
                .lengths
                .iter()
                .map(|&l| (l as usize).clamp(1, batch.width))
                .collect(),
            width: batch.width,
        }
    }
}

impl Model {
    /// A freshly initialised model; `embedding` replaces the random embedding table.
    pub fn new(config: &ModelConfig, shape: Shape, seed: u64, embedding: Option<Vec<f32>>, device: &Device) -> Model {
        let init = Initializer::new(seed, config.init, device).with_recurrent(config.recurrent_init);
        let dim = config.embedding_dim;
        let mut weight = match embedding {
            Some(values) => init.param(values, [shape.vocab_size, dim]),
            None => init.embedding("embedding", [shape.vocab_size, dim], config.embedding_init),
        };
        if config.freeze {
            weight = weight.set_require_grad(false);
        }
        let layer_norm = |size| {
            config.layer_norm.then(|| {
                let mut norm = LayerNormConfig::new(size).init(device);
                norm.gamma = init.constant([size], 1.0);
                norm.beta = Some(init.constant([size], 0.0));
                norm
            })
        };
        let (conv, recurrent, features) = match config.kind {
            ModelKind::Cnn => {
                let fan_in = dim * config.filter_size;
                let bound = 1.0 / (fan_in as f32).sqrt();
                let padding = config.padding.unwrap_or(config.filter_size / 2);
                let mut conv = Conv1dConfig::new(dim, config.num_filters, config.filter_size)
                    .with_padding(PaddingConfig1d::Explicit(padding, padding))
                    .init(device);
                conv.weight = init.weight(
                    "conv.weight",
                    [config.num_filters, dim, config.filter_size],
                    fan_in,
                    config.num_filters * config.filter_size,
                    bound,
                );
                conv.bias = Some(init.bias("conv.bias", config.num_filters, bound));
                (Some(conv), None, config.num_filters)
            }
            kind => {
                let cell = match (kind, config.nonlinearity) {
                    (ModelKind::Lstm, _) => Cell::Lstm,
                    (ModelKind::Gru, _) => Cell::Gru,
                    (_, Nonlinearity::Tanh) => Cell::Tanh,
                    (_, Nonlinearity::Relu) => Cell::Relu,
                };
                let recurrent = Recurrent::new(
                    &init,
                    cell,
                    dim,
                    config.hidden_size,
                    config.num_layers,
                    config.bidirectional,
                );
                let size = recurrent.output_size();
                (None, Some(recurrent), size)
            }
        };
        let linear = |name: &str, input: usize, output: usize| {
            let bound = 1.0 / (input as f32).sqrt();
            Linear {
                weight: init.weight(&format!("{name}.weight"), [input, output], input, output, bound),
                bias: Some(init.bias(&format!("{name}.bias"), output, bound)),
            }
        };
        let mut width = features;
        let head = config
            .head
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let layer = linear(&format!("head.{i}"), width, size);
                width = size;
                layer
            })
            .collect();
        Model {
            embedding: Embedding { weight },
            input_norm: layer_norm(dim),
            conv,
            recurrent,
            pooled_norm: layer_norm(features),
            head,
            output: linear("output", width, shape.outputs),
            config: config.clone(),
            padding: shape.padding,
        }
    }

    /// Logits `[batch, outputs]`. With `dropout` (a seeded stream), dropout is
    /// applied between recurrent layers; without it the model is in evaluation mode.
    pub fn forward(&self, inputs: &Inputs, mut dropout: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let mut x = embedding::embedding_lookup(self.embedding.weight.val(), inputs.ids.clone());
        if let Some(norm) = &self.input_norm {
            x = norm.forward(x);
        }
        let mut pooled = if let Some(conv) = &self.conv {
            let bias = conv.bias.as_ref().expect("the conv has a bias").val();
            let padding = self.config.padding.unwrap_or(self.config.filter_size / 2);
            let features = relu(convolution::conv_over_time(x, conv.weight.val(), bias, padding));
            let [batch, _, filters] = features.dims();
            features.max_dim(1).reshape([batch, filters])
        } else {
            let recurrent = self.recurrent.as_ref().expect("a recurrent model");
            let p = self.config.dropout;
            let states = recurrent.forward(x, |t| match dropout.as_deref_mut() {
                Some(stream) if p > 0.0 => apply_dropout(t, p, stream),
                _ => t,
            });
            self.pool(states, inputs)
        };
        if let Some(norm) = &self.pooled_norm {
            pooled = norm.forward(pooled);
        }
        for layer in &self.head {
            pooled = match self.config.activation {
                Activation::Relu => relu(layer.forward(pooled)),
                Activation::Tanh => tanh(layer.forward(pooled)),
                Activation::Gelu => gelu(layer.forward(pooled)),
            };
        }
        self.output.forward(pooled)
    }

    /// Pools recurrent `states: [batch, time, size]` into `[batch, size]`.
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

/// Inverted dropout with a mask drawn from `stream`.
fn apply_dropout(x: Tensor<3>, p: f64, stream: &mut ChaCha8Rng) -> Tensor<3> {
    let dims = x.dims();
    let keep = 1.0 / (1.0 - p) as f32;
    let mask: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| if f64::from(rng::unit(stream)) < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_data(TensorData::new(mask, dims), &x.device());
    x * mask
}

/// Tensor names of a model's parameters, in visiting order, as written to
/// `model.safetensors` (e.g. `embedding.weight`, `conv.weight`,
/// `recurrent.layers.0.forward.w_ih`, `output.bias`).
pub fn parameter_names(model: &Model) -> Vec<String> {
    struct Names {
        path: Vec<String>,
        names: Vec<String>,
    }
    impl burn::module::ModuleVisitor for Names {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
            self.names.push(self.path.join("."));
        }
    }
    let mut names = Names {
        path: Vec::new(),
        names: Vec::new(),
    };
    model.visit(&mut names);
    names.names
}

/// Every parameter in visiting order: its shape and its values as little-endian f32 bytes.
fn parameter_bytes(model: &Model) -> Vec<(Vec<usize>, Vec<u8>)> {
    struct Values(Vec<(Vec<usize>, Vec<u8>)>);
    impl burn::module::ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            let values = data.as_slice::<f32>().expect("parameters are f32");
            let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.0.push((data.shape().to_vec(), bytes));
        }
    }
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    values.0
}

impl Model {
    /// Writes every parameter as little-endian f32 under its [`parameter_names`] name.
    pub fn save_safetensors(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use safetensors::{Dtype, tensor::TensorView};
        let parameters = parameter_bytes(self);
        let mut views = Vec::with_capacity(parameters.len());
        for (name, (shape, data)) in parameter_names(self).into_iter().zip(&parameters) {
            views.push((name, TensorView::new(Dtype::F32, shape.clone(), data)?));
        }
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// Replaces every parameter with the tensor of the same name in a file
    /// written by [`Model::save_safetensors`].
    pub fn load_safetensors(self, path: &std::path::Path) -> anyhow::Result<Model> {
        use burn::module::ModuleMapper;
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not safetensors: {e}", path.display()))?;
        let names = parameter_names(&self);
        let mut loaded = Vec::with_capacity(names.len());
        for name in &names {
            let view = file
                .tensor(name)
                .map_err(|_| anyhow::anyhow!("{} has no tensor `{name}`", path.display()))?;
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            loaded.push((view.shape().to_vec(), values));
        }
        struct Load {
            values: std::vec::IntoIter<(Vec<usize>, Vec<f32>)>,
            mismatch: Option<String>,
        }
        impl ModuleMapper for Load {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (shape, values) = self.values.next().expect("one tensor per parameter");
                let (id, tensor, mapper) = param.consume();
                if tensor.dims().as_slice() != shape.as_slice() {
                    self.mismatch = Some(format!("shape {shape:?}, expected {:?}", tensor.dims()));
                    return Param::from_mapped_value(id, tensor, mapper);
                }
                let mut updated = Tensor::<D>::from_data(TensorData::new(values, shape), &tensor.device());
                if tensor.is_require_grad() {
                    updated = updated.require_grad();
                }
                Param::from_mapped_value(id, updated, mapper)
            }
        }
        let mut load = Load {
            values: loaded.into_iter(),
            mismatch: None,
        };
        let model = self.map(&mut load);
        if let Some(problem) = load.mismatch {
            anyhow::bail!("{}: a tensor has {problem}", path.display());
        }
        Ok(model)
    }
}
