//! `stages.train.model`: one config type per architecture, chosen by `type`.
//!
//! The CNN and the recurrent networks keep the flat form they were written in
//! before the split ([`Flat`]): every key of those four architectures, each
//! with its default where it does not apply. That form is what cache keys and
//! `train.json` hold, so entries made before the split stay valid. A key that
//! does not apply to the chosen `type` (`dropout` on a CNN) must keep its
//! default: any other value is an error, not a silent change of the key.
//! Newer architectures (`bert`) serialize only their own keys.

use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

use crate::spec::nested;

use super::bert::BertConfig;
use super::bow::BowConfig;
use super::cnn::CnnConfig;
use super::init::{EmbeddingInit, Init, RecurrentInit};
use super::recurrent::Cell;
use super::rnn::RnnConfig;
use super::{Activation, Nonlinearity, Pooling};

/// `stages.train.model`: the network, by `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `type: cnn`.
    Cnn(CnnConfig),
    /// `type: rnn | lstm | gru`.
    Rnn(RnnConfig),
    /// `type: bert`: a pretrained encoder read from a checkpoint.
    Bert(BertConfig),
    /// `type: bow`: bag-of-words logistic regression, the linear baseline.
    Bow(BowConfig),
}

/// The names `type` takes.
const TYPES: &[&str] = &["cnn", "rnn", "lstm", "gru", "bert", "bow"];

/// The token embedding shared by the CNN and the recurrent networks.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    /// Width of the token embeddings.
    pub dim: usize,
    /// Pretrained vectors for the vocabulary's words (GloVe text format).
    pub glove: Option<String>,
    /// Keep the embedding fixed during training.
    pub freeze: bool,
    /// How a learned table starts.
    pub init: EmbeddingInit,
}

/// What follows pooling in the CNN and the recurrent networks.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadSpec {
    /// LayerNorm on the embeddings and on the pooled vector.
    pub layer_norm: bool,
    /// Hidden layer sizes of the MLP before the output layer.
    pub hidden: Vec<usize>,
    /// Activation of the hidden layers.
    pub activation: Activation,
    /// Weight initialisation of every layer.
    pub init: Init,
    /// Dropout on the pooled vector, before the head (training only).
    pub dropout: f64,
}

/// The flat wire form of `cnn`, `rnn`, `lstm` and `gru` (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flat {
    #[serde(rename = "type")]
    kind: FlatKind,
    #[serde(default = "default_embedding_dim")]
    embedding_dim: usize,
    #[serde(default)]
    glove: Option<String>,
    #[serde(default)]
    freeze: bool,
    #[serde(default = "default_num_filters")]
    num_filters: usize,
    #[serde(default = "default_filter_size")]
    filter_size: usize,
    #[serde(default)]
    padding: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    filter_sizes: Vec<usize>,
    #[serde(default = "default_hidden_size")]
    hidden_size: usize,
    #[serde(default = "default_num_layers")]
    num_layers: usize,
    #[serde(default)]
    nonlinearity: Nonlinearity,
    #[serde(default)]
    bidirectional: bool,
    #[serde(default)]
    dropout: f64,
    #[serde(default)]
    pooling: Pooling,
    #[serde(default)]
    layer_norm: bool,
    #[serde(default)]
    head: Vec<usize>,
    #[serde(default)]
    activation: Activation,
    #[serde(default)]
    init: Init,
    #[serde(default, skip_serializing_if = "is_default")]
    recurrent_init: RecurrentInit,
    #[serde(default, skip_serializing_if = "is_default")]
    embedding_init: EmbeddingInit,
    #[serde(default, skip_serializing_if = "is_default")]
    head_dropout: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FlatKind {
    Cnn,
    Rnn,
    Lstm,
    Gru,
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

impl Flat {
    /// Every key at its default, for `kind`.
    fn defaults(kind: FlatKind) -> Flat {
        let mut map = Map::new();
        map.insert("type".into(), serde_json::to_value(kind).expect("kinds serialize"));
        serde_json::from_value(Json::Object(map)).expect("every key but `type` has a default")
    }

    /// The keys `kind` does not use.
    fn unused_keys(kind: FlatKind) -> &'static [&'static str] {
        match kind {
            FlatKind::Cnn => &[
                "hidden_size",
                "num_layers",
                "bidirectional",
                "dropout",
                "pooling",
                "recurrent_init",
                "nonlinearity",
            ],
            FlatKind::Rnn => &["num_filters", "filter_size", "filter_sizes", "padding"],
            FlatKind::Lstm | FlatKind::Gru => {
                &["num_filters", "filter_size", "filter_sizes", "padding", "nonlinearity"]
            }
        }
    }

    /// The keys set to something other than their default that `self.kind` does not use.
    fn inapplicable(&self) -> Vec<&'static str> {
        let (set, defaults) = (self.to_map(), Flat::defaults(self.kind).to_map());
        Flat::unused_keys(self.kind)
            .iter()
            .copied()
            .filter(|key| set.get(*key) != defaults.get(*key))
            .collect()
    }

    fn to_map(&self) -> Map<String, Json> {
        match serde_json::to_value(self) {
            Ok(Json::Object(map)) => map,
            _ => unreachable!("the flat form serializes to a mapping"),
        }
    }

    fn into_config(self) -> ModelConfig {
        let embedding = EmbeddingSpec {
            dim: self.embedding_dim,
            glove: self.glove,
            freeze: self.freeze,
            init: self.embedding_init,
        };
        let head = HeadSpec {
            layer_norm: self.layer_norm,
            hidden: self.head,
            activation: self.activation,
            init: self.init,
            dropout: self.head_dropout,
        };
        let cell = match (self.kind, self.nonlinearity) {
            (FlatKind::Cnn, _) => {
                let filter_sizes = if self.filter_sizes.is_empty() {
                    vec![self.filter_size]
                } else {
                    self.filter_sizes
                };
                return ModelConfig::Cnn(CnnConfig {
                    embedding,
                    num_filters: self.num_filters,
                    filter_sizes,
                    padding: self.padding,
                    head,
                });
            }
            (FlatKind::Lstm, _) => Cell::Lstm,
            (FlatKind::Gru, _) => Cell::Gru,
            (FlatKind::Rnn, Nonlinearity::Tanh) => Cell::Tanh,
            (FlatKind::Rnn, Nonlinearity::Relu) => Cell::Relu,
        };
        ModelConfig::Rnn(RnnConfig {
            cell,
            embedding,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            bidirectional: self.bidirectional,
            dropout: self.dropout,
            pooling: self.pooling,
            recurrent_init: self.recurrent_init,
            head,
        })
    }

    fn from_config(config: &ModelConfig) -> Option<Flat> {
        let (kind, embedding, head) = match config {
            ModelConfig::Cnn(c) => (FlatKind::Cnn, &c.embedding, &c.head),
            ModelConfig::Rnn(c) => {
                let kind = match c.cell {
                    Cell::Tanh | Cell::Relu => FlatKind::Rnn,
                    Cell::Lstm => FlatKind::Lstm,
                    Cell::Gru => FlatKind::Gru,
                };
                (kind, &c.embedding, &c.head)
            }
            ModelConfig::Bert(_) | ModelConfig::Bow(_) => return None,
        };
        let mut flat = Flat::defaults(kind);
        flat.embedding_dim = embedding.dim;
        flat.glove = embedding.glove.clone();
        flat.freeze = embedding.freeze;
        flat.embedding_init = embedding.init;
        flat.layer_norm = head.layer_norm;
        flat.head = head.hidden.clone();
        flat.activation = head.activation;
        flat.init = head.init;
        flat.head_dropout = head.dropout;
        match config {
            ModelConfig::Cnn(c) => {
                flat.num_filters = c.num_filters;
                // One width keeps the `filter_size` form (and the keys made with it).
                match c.filter_sizes.as_slice() {
                    [one] => flat.filter_size = *one,
                    several => flat.filter_sizes = several.to_vec(),
                }
                flat.padding = c.padding;
            }
            ModelConfig::Rnn(c) => {
                flat.hidden_size = c.hidden_size;
                flat.num_layers = c.num_layers;
                flat.bidirectional = c.bidirectional;
                flat.dropout = c.dropout;
                flat.pooling = c.pooling;
                flat.recurrent_init = c.recurrent_init;
                if c.cell == Cell::Relu {
                    flat.nonlinearity = Nonlinearity::Relu;
                }
            }
            ModelConfig::Bert(_) | ModelConfig::Bow(_) => unreachable!("returned above"),
        }
        Some(flat)
    }
}

/// `bert`'s wire form: `type`, then its own keys.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    config: &'a T,
}

impl ModelConfig {
    /// The config as a user reads it: the keys of its architecture only
    /// (the flat form without those its `type` does not use).
    pub fn applicable(&self) -> Json {
        match Flat::from_config(self) {
            Some(flat) => {
                let mut map = flat.to_map();
                for key in Flat::unused_keys(flat.kind) {
                    map.remove(*key);
                }
                Json::Object(map)
            }
            None => serde_json::to_value(self).expect("model configs serialize"),
        }
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self, Flat::from_config(self)) {
            (_, Some(flat)) => flat.serialize(serializer),
            (ModelConfig::Bert(config), None) => Tagged { kind: "bert", config }.serialize(serializer),
            (ModelConfig::Bow(config), None) => Tagged { kind: "bow", config }.serialize(serializer),
            (_, None) => unreachable!("only bert and bow have no flat form"),
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Json::deserialize(deserializer)?;
        let Json::Object(mut map) = json else {
            return Err(de::Error::invalid_type(unexpected(&json), &"a mapping"));
        };
        let kind = match map.get("type") {
            None => return Err(de::Error::missing_field("type")),
            Some(Json::String(kind)) => kind.clone(),
            Some(other) => {
                return Err(nested::<D::Error>(
                    "type",
                    &format!("invalid type: {}, expected a string", unexpected(other)),
                ));
            }
        };
        match kind.as_str() {
            "bert" => {
                map.remove("type");
                Ok(ModelConfig::Bert(located(Json::Object(map))?))
            }
            "bow" => {
                map.remove("type");
                Ok(ModelConfig::Bow(located(Json::Object(map))?))
            }
            "cnn" | "rnn" | "lstm" | "gru" => {
                let flat: Flat = located(Json::Object(map))?;
                if !flat.filter_sizes.is_empty() && flat.filter_size != default_filter_size() {
                    return Err(nested::<D::Error>(
                        "filter_sizes",
                        "set either `filter_size` (one width) or `filter_sizes` (several), not both",
                    ));
                }
                if let Some(key) = flat.inapplicable().first() {
                    return Err(nested::<D::Error>(
                        key,
                        &format!("does not apply to `type: {kind}`; remove it"),
                    ));
                }
                Ok(flat.into_config())
            }
            other => Err(nested::<D::Error>(
                "type",
                &format!(
                    "unknown variant `{other}`, expected one of {}",
                    TYPES.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

/// Deserializes `json` into `T`, keeping the path of an error below this point
/// (see [`nested`]).
fn located<T: DeserializeOwned, E: de::Error>(json: Json) -> Result<T, E> {
    serde_path_to_error::deserialize(json).map_err(|err| {
        let path: Vec<String> = err
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = err.into_inner().to_string();
        if path.is_empty() {
            E::custom(message)
        } else {
            nested(&path.join("."), &message)
        }
    })
}

fn unexpected(json: &Json) -> de::Unexpected<'_> {
    match json {
        Json::Null => de::Unexpected::Unit,
        Json::Bool(b) => de::Unexpected::Bool(*b),
        Json::Number(n) => n
            .as_f64()
            .map_or(de::Unexpected::Other("a number"), de::Unexpected::Float),
        Json::String(s) => de::Unexpected::Str(s),
        Json::Array(_) => de::Unexpected::Seq,
        Json::Object(_) => de::Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ModelConfig, String> {
        let json: Json = serde_yaml::from_str(yaml).unwrap();
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn flat_architectures_keep_their_wire_form() {
        let config = parse("{type: gru, hidden_size: 8, bidirectional: true}").unwrap();
        let json = serde_json::to_value(&config).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "type",
                "embedding_dim",
                "glove",
                "freeze",
                "num_filters",
                "filter_size",
                "padding",
                "hidden_size",
                "num_layers",
                "nonlinearity",
                "bidirectional",
                "dropout",
                "pooling",
                "layer_norm",
                "head",
                "activation",
                "init"
            ]
        );
        assert_eq!(json["num_filters"], 10);
        assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), config);
        let relu = parse("{type: rnn, nonlinearity: relu}").unwrap();
        assert!(matches!(&relu, ModelConfig::Rnn(c) if c.cell == Cell::Relu));
        assert_eq!(parse(&serde_json::to_string(&relu).unwrap()).unwrap(), relu);
    }

    #[test]
    fn keys_of_other_architectures_are_errors_unless_at_their_default() {
        assert_eq!(
            parse("{type: cnn, dropout: 0.5}").unwrap_err(),
            "below `dropout`: does not apply to `type: cnn`; remove it"
        );
        assert_eq!(
            parse("{type: lstm, nonlinearity: relu}").unwrap_err(),
            "below `nonlinearity`: does not apply to `type: lstm`; remove it"
        );
        assert!(parse("{type: cnn, dropout: 0.0, hidden_size: 64}").is_ok());
        assert!(parse("{type: rnn, num_filters: 11}").is_err());
    }

    #[test]
    fn a_cnn_takes_several_kernel_widths() {
        let config = parse("{type: cnn, filter_sizes: [3, 4, 5]}").unwrap();
        assert!(matches!(&config, ModelConfig::Cnn(c) if c.filter_sizes == [3, 4, 5]));
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["filter_sizes"], serde_json::json!([3, 4, 5]));
        assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), config);
        // One width keeps the form (and the cache keys) of `filter_size`.
        let one = serde_json::to_value(parse("{type: cnn, filter_sizes: [4]}").unwrap()).unwrap();
        assert_eq!(
            one,
            serde_json::to_value(parse("{type: cnn, filter_size: 4}").unwrap()).unwrap()
        );
        assert!(one.get("filter_sizes").is_none());
        assert!(
            parse("{type: cnn, filter_size: 4, filter_sizes: [3, 5]}")
                .unwrap_err()
                .contains("either `filter_size`")
        );
        assert!(
            parse("{type: gru, filter_sizes: [3]}")
                .unwrap_err()
                .contains("does not apply")
        );
    }

    #[test]
    fn bert_serializes_only_its_own_keys() {
        let config = parse("{type: bert, checkpoint: minilm}").unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "bert", "checkpoint": "minilm", "pooling": "pooler",
                "head": "classification", "classifier_dropout": null})
        );
        assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), config);
        assert!(
            parse("{type: bert, checkpoint: m, hidden_size: 3}")
                .unwrap_err()
                .starts_with("below `hidden_size`: unknown field")
        );
    }

    #[test]
    fn errors_below_the_model_keep_their_path() {
        assert!(
            parse("{type: cnn, num_filters: many}")
                .unwrap_err()
                .starts_with("below `num_filters`: invalid type")
        );
        assert!(
            parse("{type: transformer}")
                .unwrap_err()
                .starts_with("below `type`: unknown variant `transformer`")
        );
        assert_eq!(parse("{hidden_size: 3}").unwrap_err(), "missing field `type`");
    }
}
