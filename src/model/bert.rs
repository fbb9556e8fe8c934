//! `type: bert`: a pretrained BERT-family encoder from a Hugging Face
//! checkpoint (`config.json` + `model.safetensors`) with a classification
//! head, as `transformers`' `BertForSequenceClassification`.
//!
//! The architecture is read from `config.json` ([`Architecture`]); weights
//! are loaded with burn's safetensors store, Hugging Face names mapped to
//! this module's ([`load_checkpoint`]). Post-LayerNorm layers, absolute
//! positions `0..L`, segment ids from the batch (0 when the data has none),
//! padded keys masked with the most negative f32 as `transformers` does.
//! Dropout masks come from the seeded stream, as everywhere in training.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::activation::{gelu_approximate, relu, tanh};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dense::dense;
use super::gelu::gelu;
use super::init::{Init, Initializer};
use super::norm::layer_norm;
use super::softmax::attention_softmax;
use super::{Classifier, Inputs, Setup, apply_dropout, embedding};
use crate::data::rng;

/// The settings of `type: bert` in `stages.train.model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    /// The needed stage whose output holds the checkpoint (`config.json`,
    /// `model.safetensors`), e.g. a `download` of `hf://OWNER/MODEL`.
    pub checkpoint: String,
    /// How token states become one vector: `pooler` (default: dense + tanh
    /// on `[CLS]`, as `BertForSequenceClassification`), `cls` or `mean`.
    #[serde(default)]
    pub pooling: BertPooling,
    /// What follows pooling: `classification` (default: dropout, then a
    /// linear layer drawn from N(0, `initializer_range`) with zero bias).
    #[serde(default)]
    pub head: BertHead,
    /// Dropout before the classifier (default: the checkpoint's
    /// `classifier_dropout`, else its `hidden_dropout_prob`).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

/// `pooling` of `type: bert`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BertPooling {
    /// The checkpoint's pooler: `tanh(dense(h_[CLS]))`.
    #[default]
    Pooler,
    /// The `[CLS]` token's last hidden state.
    Cls,
    /// The mean of the real tokens' last hidden states.
    Mean,
}

/// `head` of `type: bert`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BertHead {
    /// Dropout and one linear layer to the outputs.
    #[default]
    Classification,
}

/// The encoder's activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// GELU with the error function.
    Gelu,
    /// GELU's tanh approximation.
    GeluNew,
    /// `max(0, x)`.
    Relu,
}

/// The architecture, as a checkpoint's `config.json` gives it (other keys ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Must be `bert`.
    pub model_type: String,
    /// The `transformers` classes the checkpoint was saved from (`BertModel`, ...).
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Rows of the word embedding.
    pub vocab_size: usize,
    /// Width of every token state.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// The feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: HiddenAct,
    /// Positions the position embedding has.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Segment ids the type embedding has.
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// LayerNorm's epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Dropout on embeddings, attention outputs and feed-forward outputs.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Dropout before a classifier, when the checkpoint sets one.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Standard deviation of new weights.
    #[serde(default = "default_range")]
    pub initializer_range: f64,
    /// Only `absolute` is supported.
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_positions() -> usize {
    512
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_range() -> f64 {
    0.02
}
fn default_position_type() -> String {
    "absolute".into()
}

/// The file names a checkpoint directory holds.
pub const CONFIG_FILE: &str = "config.json";
/// See [`CONFIG_FILE`].
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A checkpoint: its architecture and, when training starts from it, its weights.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// From `config.json`.
    pub architecture: Architecture,
    /// `model.safetensors`, loaded over the new model; `None` when the
    /// caller loads trained weights instead.
    pub weights: Option<PathBuf>,
}

impl Checkpoint {
    /// Reads `config.json` in `dir`; the weights stay on disk until the model is built.
    pub fn open(dir: &Path) -> anyhow::Result<Checkpoint> {
        let path = dir.join(CONFIG_FILE);
        anyhow::ensure!(
            path.exists(),
            "the checkpoint has no {CONFIG_FILE} (looked in {}); a BERT checkpoint needs {CONFIG_FILE} and {WEIGHTS_FILE}",
            dir.display()
        );
        let text =
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let architecture = Architecture::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
        let weights = dir.join(WEIGHTS_FILE);
        anyhow::ensure!(
            weights.exists(),
            "the checkpoint has no {WEIGHTS_FILE} (looked in {})",
            dir.display()
        );
        Ok(Checkpoint {
            architecture,
            weights: Some(weights),
        })
    }
}

impl Architecture {
    /// Parses a `config.json`; errors start with the line they are about.
    pub fn parse(text: &str) -> Result<Architecture, String> {
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.contains(&format!("\"{key}\"")))
                .map_or(1, |i| i + 1)
        };
        let architecture: Architecture = serde_json::from_str(text).map_err(|e| format!("{}: {e}", e.line()))?;
        if architecture.model_type != "bert" {
            return Err(format!(
                "{}: `model_type` is `{}`; `type: bert` reads BERT checkpoints (`model_type: bert`)",
                line_of("model_type"),
                architecture.model_type
            ));
        }
        if let Some(other) = architecture.architectures.iter().find(|a| !a.starts_with("Bert")) {
            return Err(format!(
                "{}: `architectures` names `{other}`; `type: bert` reads checkpoints of `BertModel` and the `BertFor*` classes",
                line_of("architectures")
            ));
        }
        if architecture.position_embedding_type != "absolute" {
            return Err(format!(
                "{}: `position_embedding_type` is `{}`; only `absolute` is supported",
                line_of("position_embedding_type"),
                architecture.position_embedding_type
            ));
        }
        let sizes = [
            ("vocab_size", architecture.vocab_size),
            ("hidden_size", architecture.hidden_size),
            ("num_hidden_layers", architecture.num_hidden_layers),
            ("num_attention_heads", architecture.num_attention_heads),
            ("intermediate_size", architecture.intermediate_size),
            ("max_position_embeddings", architecture.max_position_embeddings),
            ("type_vocab_size", architecture.type_vocab_size),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{}: `{key}` must be at least 1", line_of(key)));
        }
        if !architecture
            .hidden_size
            .is_multiple_of(architecture.num_attention_heads)
        {
            return Err(format!(
                "{}: `hidden_size` {} is not a multiple of `num_attention_heads` {}",
                line_of("hidden_size"),
                architecture.hidden_size,
                architecture.num_attention_heads
            ));
        }
        Ok(architecture)
    }

    /// Parameters of the encoder and pooler.
    pub fn parameters(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h;
        embeddings + self.num_hidden_layers * layer + h * h + h
    }
}

impl BertConfig {
    /// Checks values; returns the key path and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.checkpoint.is_empty() {
            return Err(("checkpoint", "must name a stage this one needs".into()));
        }
        if self.classifier_dropout.is_some_and(|p| !(0.0..1.0).contains(&p)) {
            return Err(("classifier_dropout", "must be in [0, 1)".into()));
        }
        Ok(())
    }

    /// The model for `setup.checkpoint`: the checkpoint's weights when it
    /// names them, a new classifier drawn from `setup.seed`.
    pub fn init(&self, setup: &Setup, device: &Device) -> anyhow::Result<Bert> {
        let checkpoint = setup
            .checkpoint
            .ok_or_else(|| anyhow::anyhow!("`type: bert` needs its checkpoint"))?;
        let a = &checkpoint.architecture;
        let init = Initializer::new(setup.seed, Init::Default, device);
        let zeros2 = |shape: [usize; 2]| init.constant(shape, 0.0);
        let linear = |input: usize, output: usize| Linear {
            weight: zeros2([input, output]),
            bias: Some(init.constant([output], 0.0)),
        };
        let norm = |size: usize| {
            let mut norm = LayerNormConfig::new(size).with_epsilon(a.layer_norm_eps).init(device);
            norm.gamma = init.constant([size], 1.0);
            norm.beta = Some(init.constant([size], 0.0));
            norm
        };
        let h = a.hidden_size;
        let embeddings = Embeddings {
            word_embeddings: Embedding {
                weight: zeros2([a.vocab_size, h]),
            },
            position_embeddings: Embedding {
                weight: zeros2([a.max_position_embeddings, h]),
            },
            token_type_embeddings: Embedding {
                weight: zeros2([a.type_vocab_size, h]),
            },
            layer_norm: norm(h),
        };
        let layers = (0..a.num_hidden_layers)
            .map(|_| Layer {
                attention: Attention {
                    query: linear(h, h),
                    key: linear(h, h),
                    value: linear(h, h),
                    output: linear(h, h),
                    layer_norm: norm(h),
                },
                intermediate: linear(h, a.intermediate_size),
                output: linear(a.intermediate_size, h),
                output_norm: norm(h),
            })
            .collect();
        let pooler = (self.pooling == BertPooling::Pooler).then(|| linear(h, h));
        // New weights as `transformers` draws them: N(0, initializer_range), zero bias.
        let outputs = setup.shape.outputs;
        let mut stream = rng::stream(setup.seed, "init/classifier.weight");
        let std = a.initializer_range as f32;
        let values = (0..h * outputs).map(|_| rng::normal(&mut stream) * std).collect();
        let classifier = Linear {
            weight: init.param(values, [h, outputs]),
            bias: Some(init.constant([outputs], 0.0)),
        };
        let mut model = Bert {
            embeddings,
            encoder: Encoder { layer: layers },
            pooler,
            classifier,
            settings: Settings {
                heads: a.num_attention_heads,
                layer_norm_eps: a.layer_norm_eps,
                act: a.hidden_act,
                hidden_dropout: a.hidden_dropout_prob,
                attention_dropout: a.attention_probs_dropout_prob,
                classifier_dropout: self
                    .classifier_dropout
                    .or(a.classifier_dropout)
                    .unwrap_or(a.hidden_dropout_prob),
                pooling: self.pooling,
            },
        };
        if let Some(weights) = &checkpoint.weights {
            model = load_checkpoint(model, weights)?;
        }
        Ok(model)
    }
}

/// Hugging Face's tensor names -> this module's, applied in order.
const RENAMES: &[(&str, &str)] = &[
    (r"^bert\.", ""),
    (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (r"^(encoder\.layer\.\d+)\.attention\.self\.", "$1.attention."),
    (
        r"^(encoder\.layer\.\d+)\.attention\.output\.dense\.",
        "$1.attention.output.",
    ),
    (
        r"^(encoder\.layer\.\d+)\.attention\.output\.LayerNorm\.",
        "$1.attention.layer_norm.",
    ),
    (r"^(encoder\.layer\.\d+)\.intermediate\.dense\.", "$1.intermediate."),
    (r"^(encoder\.layer\.\d+)\.output\.dense\.", "$1.output."),
    (r"^(encoder\.layer\.\d+)\.output\.LayerNorm\.", "$1.output_norm."),
    (r"^pooler\.dense\.", "pooler."),
];

/// Loads the encoder (and pooler) from a Hugging Face `model.safetensors`:
/// with or without the `bert.` prefix, `[out, in]` linear weights transposed,
/// f16/bf16 cast to f32, integer buffers and other heads ignored. A missing
/// or mis-shaped tensor is an error naming it and the file.
pub fn load_checkpoint(mut model: Bert, path: &Path) -> anyhow::Result<Bert> {
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
        .with_regex(r"^(embeddings|encoder|pooler)\.")
        .allow_partial(true)
        .validate(true);
    for (from, to) in RENAMES {
        store = store.with_key_remapping(*from, *to);
    }
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot read the checkpoint {}: {e}", path.display()))?;
    if let Some(error) = result.errors.first() {
        anyhow::bail!("the checkpoint {} does not fit the model: {error}", path.display());
    }
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| !name.starts_with("classifier."))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the checkpoint {} has no tensor for {} (named here after mapping Hugging Face's names: {})",
            path.display(),
            missing.join(", "),
            hugging_face_name(&missing[0])
        );
    }
    Ok(model)
}

/// The Hugging Face name a module path comes from, for error messages.
fn hugging_face_name(path: &str) -> String {
    let mut name = path.to_string();
    for (ours, theirs) in [
        (".attention.layer_norm.", ".attention.output.LayerNorm."),
        (".output_norm.", ".output.LayerNorm."),
        ("embeddings.layer_norm.", "embeddings.LayerNorm."),
    ] {
        name = name.replace(ours, theirs);
    }
    for (module, dense) in [(".intermediate.", ".intermediate.dense."), ("pooler.", "pooler.dense.")] {
        name = name.replacen(module, dense, 1);
    }
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias");
    if let Some(rest) = name.strip_suffix(".weight").or(name.strip_suffix(".bias")) {
        let end = &name[rest.len()..];
        for (ours, theirs) in [
            (".attention.output", ".attention.output.dense"),
            (".attention.query", ".attention.self.query"),
            (".attention.key", ".attention.self.key"),
            (".attention.value", ".attention.self.value"),
        ] {
            if let Some(prefix) = rest.strip_suffix(ours) {
                return format!("{prefix}{theirs}{end}");
            }
        }
        if let Some(prefix) = rest.strip_suffix(".output").filter(|p| !p.ends_with(".attention")) {
            return format!("{prefix}.output.dense{end}");
        }
    }
    name
}

/// A BERT encoder with a classification head; see [`BertConfig`].
#[derive(Module, Debug)]
pub struct Bert {
    embeddings: Embeddings,
    encoder: Encoder,
    pooler: Option<Linear>,
    classifier: Linear,
    #[module(skip)]
    settings: Settings,
}

/// What the forward pass needs besides the weights.
#[derive(Debug, Clone)]
struct Settings {
    heads: usize,
    layer_norm_eps: f64,
    act: HiddenAct,
    hidden_dropout: f64,
    attention_dropout: f64,
    classifier_dropout: f64,
    pooling: BertPooling,
}

/// Word, position and segment embeddings, summed and normalised.
#[derive(Module, Debug)]
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

/// The layer stack.
#[derive(Module, Debug)]
struct Encoder {
    layer: Vec<Layer>,
}

/// Self-attention with its output projection and LayerNorm.
#[derive(Module, Debug)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    layer_norm: LayerNorm,
}

/// One encoder layer.
#[derive(Module, Debug)]
struct Layer {
    attention: Attention,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// `layer` applied to `x` as one fused operation (every layer here has a bias).
fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bias = layer.bias.as_ref().expect("built with a bias").val();
    dense(x, layer.weight.val(), bias)
}

/// Dropout with a mask from `stream` (training); the identity without one.
fn dropout<const D: usize>(x: Tensor<D>, p: f64, stream: &mut Option<&mut ChaCha8Rng>) -> Tensor<D> {
    match stream.as_deref_mut() {
        Some(stream) if p > 0.0 => apply_dropout(x, p, stream),
        _ => x,
    }
}

impl Bert {
    /// The last hidden states `[batch, time, hidden]` of the encoder.
    pub fn encode(&self, inputs: &Inputs, stream: &mut Option<&mut ChaCha8Rng>) -> Tensor<3> {
        let s = &self.settings;
        let [batch, time] = inputs.ids.dims();
        let device = inputs.ids.device();
        let positions = Tensor::<1, Int>::arange(0..time as i64, &device)
            .reshape([1, time])
            .expand([batch, time]);
        let types = match &inputs.type_ids {
            Some(types) => types.clone(),
            None => Tensor::<2, Int>::zeros([batch, time], &device),
        };
        let e = &self.embeddings;
        let x = embedding::embedding_lookup(e.word_embeddings.weight.val(), inputs.ids.clone())
            + embedding::embedding_lookup(e.position_embeddings.weight.val(), positions)
            + embedding::embedding_lookup(e.token_type_embeddings.weight.val(), types);
        let mut x = dropout(layer_norm(&e.layer_norm, s.layer_norm_eps, x), s.hidden_dropout, stream);
        // Padded keys get the most negative f32 added to their scores, as in `transformers`.
        let mut bias = Vec::with_capacity(batch * time);
        for &length in &inputs.lengths {
            bias.extend((0..time).map(|t| if t < length { 0.0 } else { f32::MIN }));
        }
        let bias = Tensor::<2>::from_data(TensorData::new(bias, [batch, time]), &device);
        let hidden = x.dims()[2];
        let head = hidden / s.heads;
        let scale = 1.0 / (head as f64).sqrt();
        for layer in &self.encoder.layer {
            let a = &layer.attention;
            let split = |t: Tensor<3>| t.reshape([batch, time, s.heads, head]).swap_dims(1, 2);
            let q = split(linear(&a.query, x.clone()));
            let k = split(linear(&a.key, x.clone()));
            let v = split(linear(&a.value, x.clone()));
            let probs = attention_softmax(q.matmul(k.swap_dims(2, 3)), bias.clone(), scale);
            let probs = dropout(probs, s.attention_dropout, stream);
            let context = probs.matmul(v).swap_dims(1, 2).reshape([batch, time, hidden]);
            let attended = dropout(linear(&a.output, context), s.hidden_dropout, stream);
            x = layer_norm(&a.layer_norm, s.layer_norm_eps, attended + x);
            let inner = linear(&layer.intermediate, x.clone());
            let inner = match s.act {
                HiddenAct::Gelu => gelu(inner),
                HiddenAct::GeluNew => gelu_approximate(inner),
                HiddenAct::Relu => relu(inner),
            };
            let out = dropout(linear(&layer.output, inner), s.hidden_dropout, stream);
            x = layer_norm(&layer.output_norm, s.layer_norm_eps, out + x);
        }
        x
    }

    /// The pooled vector `[batch, hidden]` of the last hidden states.
    pub fn pool(&self, states: Tensor<3>, inputs: &Inputs) -> Tensor<2> {
        let [batch, time, hidden] = states.dims();
        let first = || {
            states
                .clone()
                .slice([0..batch, 0..1, 0..hidden])
                .reshape([batch, hidden])
        };
        match self.settings.pooling {
            BertPooling::Pooler => tanh(linear(self.pooler.as_ref().expect("built with a pooler"), first())),
            BertPooling::Cls => first(),
            BertPooling::Mean => {
                let mut mask = Vec::with_capacity(batch * time);
                for &length in &inputs.lengths {
                    mask.extend((0..time).map(|t| if t < length { 1.0 / length as f32 } else { 0.0 }));
                }
                let mask = Tensor::<3>::from_data(TensorData::new(mask, [batch, time, 1]), &states.device());
                (states * mask).sum_dim(1).reshape([batch, hidden])
            }
        }
    }
}

impl Classifier for Bert {
    fn forward(&self, inputs: &Inputs, dropout_stream: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let mut stream = dropout_stream;
        let states = self.encode(inputs, &mut stream);
        let pooled = self.pool(states, inputs);
        let pooled = dropout(pooled, self.settings.classifier_dropout, &mut stream);
        linear(&self.classifier, pooled)
    }

    /// Not biases and LayerNorm weights, as the Trainer's parameter groups.
    fn decays(&self, path: &str) -> bool {
        !(path.ends_with(".bias") || path.ends_with(".beta") || path.ends_with(".gamma"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
  "architectures": ["BertModel"],
  "hidden_size": 32,
  "intermediate_size": 37,
  "model_type": "bert",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "vocab_size": 100
}"#;

    #[test]
    fn checkpoint_configs_are_read_with_transformers_defaults() {
        let a = Architecture::parse(CONFIG).unwrap();
        assert_eq!((a.max_position_embeddings, a.type_vocab_size), (512, 2));
        assert_eq!((a.layer_norm_eps, a.hidden_dropout_prob), (1e-12, 0.1));
        assert_eq!(a.hidden_act, HiddenAct::Gelu);
    }

    #[test]
    fn other_models_are_errors_that_name_the_line() {
        let roberta = CONFIG.replace(r#""model_type": "bert""#, r#""model_type": "roberta""#);
        let err = Architecture::parse(&roberta).unwrap_err();
        assert!(err.starts_with("5: `model_type` is `roberta`"), "{err}");
        let gpt = CONFIG.replace("BertModel", "GPT2Model");
        assert!(
            Architecture::parse(&gpt)
                .unwrap_err()
                .starts_with("2: `architectures` names `GPT2Model`")
        );
        let heads = CONFIG.replace(r#""num_attention_heads": 4"#, r#""num_attention_heads": 5"#);
        assert!(
            Architecture::parse(&heads)
                .unwrap_err()
                .starts_with("3: `hidden_size` 32 is not a multiple")
        );
        let act = CONFIG.replace(r#""vocab_size": 100"#, r#""vocab_size": 100, "hidden_act": "swish""#);
        assert!(
            Architecture::parse(&act)
                .unwrap_err()
                .contains("unknown variant `swish`")
        );
    }
}
