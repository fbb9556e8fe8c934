//! The text classifiers of the course notebooks as burn modules, one file
//! per architecture, each with its config type ([`config::ModelConfig`]
//! picks one by `type`) and an `init` that builds its [`Classifier`]:
//! a CNN ([`cnn`]) and Elman / LSTM / GRU networks ([`rnn`]) with a choice
//! of pooling over time, optional LayerNorm, an MLP head and pretrained
//! (GloVe) embeddings, and pretrained BERT-family encoders ([`bert`]).
//! The parts the CNN and the recurrent networks share are below.

pub mod bert;
pub mod bow;
pub mod cnn;
pub mod composed;
pub mod config;
pub mod convolution;
pub mod dense;
pub mod embedding;
pub mod gelu;
pub mod glove;
pub mod init;
pub mod kernels;
pub mod layer;
pub mod norm;
pub mod recurrent;
pub mod rnn;
pub mod sigmoid;
pub mod softmax;
pub mod tanh;

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, relu, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use config::ModelConfig;

use crate::data::batches::{Batch, Side, SplitTensors};
use crate::data::rng;
use config::{EmbeddingSpec, HeadSpec};
use init::Initializer;

/// Builds the network `config` ([`ModelConfig`]) describes and evaluates
/// `body` with it bound to `model`: the one place that matches on the
/// architecture, since each is a type of its own.
macro_rules! with_model {
    ($config:expr, $setup:expr, $device:expr, |$model:ident| $body:expr) => {
        match $config {
            $crate::model::ModelConfig::Cnn(c) => {
                let $model = c.init($setup, $device);
                $body
            }
            $crate::model::ModelConfig::Rnn(c) => {
                let $model = c.init($setup, $device);
                $body
            }
            $crate::model::ModelConfig::Bert(c) => {
                let $model = c.init($setup, $device)?;
                $body
            }
            $crate::model::ModelConfig::Bow(c) => {
                let $model = c.init($setup, $device);
                $body
            }
        }
    };
}
pub(crate) use with_model;

impl ModelConfig {
    /// Checks sizes; returns the key path (below `model`) and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            ModelConfig::Cnn(c) => c.check(),
            ModelConfig::Rnn(c) => c.check(),
            ModelConfig::Bert(c) => c.check(),
            ModelConfig::Bow(c) => c.check(),
        }
    }

    /// Checks the model against the longest row of its data; returns the key
    /// path (below `model`) and message of the first problem.
    pub fn check_width(&self, width: usize) -> Result<(), (&'static str, String)> {
        match self {
            ModelConfig::Cnn(c) => c.check_width(width),
            ModelConfig::Rnn(_) | ModelConfig::Bert(_) | ModelConfig::Bow(_) => Ok(()),
        }
    }

    /// Checks that training the model over `vocab_size` tokens fits in this
    /// machine's memory: f32 weights, gradients and the optimizer's two
    /// moments, 16 bytes a parameter (a pretrained model is sized by its
    /// checkpoint). Returns the message when it does not.
    pub fn check_memory(&self, vocab_size: usize) -> Result<(), String> {
        let parameters = match self {
            ModelConfig::Cnn(c) => c.parameters(vocab_size),
            ModelConfig::Rnn(c) => c.parameters(vocab_size),
            ModelConfig::Bow(c) => c.parameters(vocab_size),
            ModelConfig::Bert(_) => return Ok(()),
        };
        let needed = parameters * 16.0;
        let available = memory_bytes();
        if needed > available {
            return Err(format!(
                "is too large to train: it needs about {} ({:.3e} parameters x 16 bytes: weights, gradients \
                 and the optimizer's two moments), more than this machine's {}",
                bytes_text(needed),
                parameters,
                bytes_text(available)
            ));
        }
        Ok(())
    }

    /// The token embedding, for architectures that learn one.
    pub fn embedding(&self) -> Option<&EmbeddingSpec> {
        match self {
            ModelConfig::Cnn(c) => Some(&c.embedding),
            ModelConfig::Rnn(c) => Some(&c.embedding),
            ModelConfig::Bert(_) | ModelConfig::Bow(_) => None,
        }
    }
}

/// A network that maps a batch to logits; what training and evaluation need of a model.
pub trait Classifier: Module + Sized {
    /// Logits `[batch, outputs]`. With `dropout` (a seeded stream) the model
    /// is in training mode; without it, in evaluation mode.
    fn forward(&self, inputs: &Inputs, dropout: Option<&mut ChaCha8Rng>) -> Tensor<2>;

    /// Whether weight decay applies to the parameter at `path` (a
    /// [`parameter_names`] entry). Default: every parameter, as PyTorch's optimizers.
    fn decays(&self, _path: &str) -> bool {
        true
    }

    /// A penalty on the weights added to the training loss (the elastic
    /// net's L1 and L2 terms). Default: none.
    fn penalty(&self) -> Option<Tensor<1>> {
        None
    }
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

/// What building a model needs besides its config.
pub struct Setup<'a> {
    /// The data's shape.
    pub shape: Shape,
    /// Seeds new weights.
    pub seed: u64,
    /// Pretrained vectors for the embedding table (GloVe), `vocab_size x dim`.
    pub glove: Option<&'a [f32]>,
    /// The checkpoint of a pretrained encoder (`type: bert`).
    pub checkpoint: Option<&'a bert::Checkpoint>,
    /// The width of a frozen encoder's features, when the model reads those
    /// (`encode`) instead of embedding token ids.
    pub features: Option<usize>,
    /// The train split, for models that fit statistics of it before training
    /// (TF-IDF's document frequencies); `None` when loading trained weights.
    pub train: Option<&'a SplitTensors>,
}

/// A batch on the device: ids `[batch, time]`, segment ids for sentence
/// pairs, and the true lengths that pooling and attention masks need.
pub struct Inputs {
    ids: Tensor<2, Int>,
    type_ids: Option<Tensor<2, Int>>,
    features: Option<Tensor<3>>,
    lengths: Vec<usize>,
    width: usize,
}

impl Inputs {
    /// Moves a batch's ids (and segment ids) to `device`.
    pub fn new(batch: &Batch, device: &Device) -> Inputs {
        let rows = batch.lengths.len();
        let matrix = |values: &[u32]| {
            let values: Vec<i64> = values.iter().map(|&id| i64::from(id)).collect();
            Tensor::from_data(TensorData::new(values, [rows, batch.width]), device)
        };
        Inputs {
            ids: matrix(&batch.ids),
            type_ids: batch.type_ids.as_deref().map(matrix),
            features: batch.features.as_ref().map(|(values, dim)| {
                Tensor::from_data(TensorData::new(values.clone(), [rows, batch.width, *dim]), device)
            }),
            lengths: batch
                .lengths
                .iter()
                .map(|&l| (l as usize).clamp(1, batch.width))
                .collect(),
            width: batch.width,
        }
    }
}

/// Parameters of the hidden layers and output layer (2 outputs) after a pooled vector of `input` values.
fn head_parameters(input: f64, head: &HeadSpec) -> f64 {
    let mut width = input;
    let mut total = 0.0;
    for &size in head.hidden.iter().chain([&2]) {
        total += (width + 1.0) * size as f64;
        width = size as f64;
    }
    total
}

/// This machine's memory (`MemTotal`), or infinity where it cannot be read;
/// read once per process (a sweep checks every trial's model).
fn memory_bytes() -> f64 {
    static TOTAL: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024.0)
            })
            .unwrap_or(f64::INFINITY)
    })
}

/// `1.2 GB`-style sizes.
fn bytes_text(bytes: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// Checks the parts shared by the CNN and the recurrent networks, and that
/// each of the architecture's `sizes` is at least 1.
fn check_parts(
    embedding: &EmbeddingSpec,
    head: &HeadSpec,
    sizes: &[(&'static str, usize)],
) -> Result<(), (&'static str, String)> {
    let embedding_dim = [("embedding_dim", embedding.dim)];
    if let Some((key, _)) = embedding_dim.iter().chain(sizes).find(|(_, v)| *v == 0) {
        return Err((key, "must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&head.dropout) {
        return Err(("head_dropout", "must be in [0, 1)".into()));
    }
    if head.hidden.contains(&0) {
        return Err(("head", "layer sizes must be at least 1".into()));
    }
    if embedding.freeze && embedding.glove.is_none() {
        return Err(("freeze", "freezing needs pretrained vectors (`glove`)".into()));
    }
    if embedding.init != init::EmbeddingInit::default() && embedding.glove.is_some() {
        return Err((
            "embedding_init",
            "applies to a learned table; GloVe tables start from the vectors".into(),
        ));
    }
    Ok(())
}

/// The embedding table: `pretrained` values, or drawn per `spec.init`.
fn embedding_table(
    init: &Initializer,
    spec: &EmbeddingSpec,
    vocab_size: usize,
    pretrained: Option<&[f32]>,
) -> Embedding {
    let shape = [vocab_size, spec.dim];
    let mut weight = match pretrained {
        Some(values) => init.param(values.to_vec(), shape),
        None => init.embedding("embedding", shape, spec.init),
    };
    if spec.freeze {
        weight = weight.set_require_grad(false);
    }
    Embedding { weight }
}

/// A LayerNorm over `size` features (ones and zeros) when `enabled`.
fn layer_norm(init: &Initializer, enabled: bool, size: usize, device: &Device) -> Option<LayerNorm> {
    enabled.then(|| {
        let mut norm = LayerNormConfig::new(size).init(device);
        norm.gamma = init.constant([size], 1.0);
        norm.beta = Some(init.constant([size], 0.0));
        norm
    })
}

/// A linear layer `input -> output` named `name` (PyTorch's default bounds).
fn linear(init: &Initializer, name: &str, input: usize, output: usize) -> Linear {
    let bound = 1.0 / (input as f32).sqrt();
    Linear {
        weight: init.weight(&format!("{name}.weight"), [input, output], input, output, bound),
        bias: Some(init.bias(&format!("{name}.bias"), output, bound)),
    }
}

/// The MLP head's hidden layers over `features` inputs, and the width they end with.
fn hidden_layers(init: &Initializer, features: usize, sizes: &[usize]) -> (Vec<Linear>, usize) {
    let mut width = features;
    let layers = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let layer = linear(init, &format!("head.{i}"), width, size);
            width = size;
            layer
        })
        .collect();
    (layers, width)
}

/// Embeds ids (or takes the batch's encoder features when there is no
/// embedding) and normalises them when the model has an input LayerNorm.
fn embed(embedding: Option<&Embedding>, norm: Option<&LayerNorm>, inputs: &Inputs) -> Tensor<3> {
    let x = match embedding {
        Some(embedding) => embedding::embedding_lookup(embedding.weight.val(), inputs.ids.clone()),
        None => inputs
            .features
            .clone()
            .expect("a model without an embedding is trained on features"),
    };
    match norm {
        Some(norm) => norm.forward(x),
        None => x,
    }
}

/// Pooled features to logits: LayerNorm, dropout (training only), the MLP
/// head, the output layer.
fn classify(
    mut pooled: Tensor<2>,
    norm: Option<&LayerNorm>,
    dropout: (f64, Option<&mut ChaCha8Rng>),
    head: &[Linear],
    activation: Activation,
    output: &Linear,
) -> Tensor<2> {
    if let Some(norm) = norm {
        pooled = norm.forward(pooled);
    }
    if let (p, Some(stream)) = dropout
        && p > 0.0
    {
        pooled = apply_dropout(pooled, p, stream);
    }
    for layer in head {
        pooled = match activation {
            Activation::Relu => relu(layer.forward(pooled)),
            Activation::Tanh => tanh(layer.forward(pooled)),
            Activation::Gelu => gelu(layer.forward(pooled)),
        };
    }
    output.forward(pooled)
}

/// Inverted dropout with a mask drawn from `stream`.
fn apply_dropout<const D: usize>(x: Tensor<D>, p: f64, stream: &mut ChaCha8Rng) -> Tensor<D> {
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
pub fn parameter_names<M: Module>(model: &M) -> Vec<String> {
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
fn parameter_bytes<M: Module>(model: &M) -> Vec<(Vec<usize>, Vec<u8>)> {
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

/// Writes every parameter of `model` as little-endian f32 under its [`parameter_names`] name.
pub fn save_safetensors<M: Module>(model: &M, path: &std::path::Path) -> anyhow::Result<()> {
    use safetensors::{Dtype, tensor::TensorView};
    let parameters = parameter_bytes(model);
    let mut views = Vec::with_capacity(parameters.len());
    for (name, (shape, data)) in parameter_names(model).into_iter().zip(&parameters) {
        views.push((name, TensorView::new(Dtype::F32, shape.clone(), data)?));
    }
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Replaces every parameter of `model` with the tensor of the same name in a
/// file written by [`save_safetensors`].
pub fn load_safetensors<M: Module>(model: M, path: &std::path::Path) -> anyhow::Result<M> {
    use burn::module::ModuleMapper;
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not safetensors: {e}", path.display()))?;
    let names = parameter_names(&model);
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
    let model = model.map(&mut load);
    if let Some(problem) = load.mismatch {
        anyhow::bail!("{}: a tensor has {problem}", path.display());
    }
    Ok(model)
}
