//! `type: bow`: the linear baseline the course measures its networks
//! against: a bag of words over the tokenizer's vocabulary (token counts,
//! presence, or TF-IDF as scikit-learn's `TfidfVectorizer` computes it),
//! optionally with bigrams hashed into extra buckets, and logistic
//! regression on it with L1 and L2 penalties (the elastic net).

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::init::Initializer;
use super::{Classifier, Inputs, Setup, embedding};
use crate::data::batches::{Side, SplitTensors};

/// What a row's vector holds per vocabulary entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BowFeatures {
    /// How often the token (or bigram) occurs.
    #[default]
    Counts,
    /// 1 when it occurs.
    Binary,
    /// Counts times `ln((1 + n) / (1 + df)) + 1` over the train split's `n`
    /// rows, the row scaled to unit L2 norm.
    Tfidf,
}

/// The bag-of-words logistic regression's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BowConfig {
    /// `counts` (default), `binary` or `tfidf`.
    #[serde(default)]
    pub features: BowFeatures,
    /// 1: single tokens (default); 2: and pairs of neighbouring tokens.
    #[serde(default = "default_ngrams")]
    pub ngrams: usize,
    /// Hash buckets for the bigrams (default 2^18).
    #[serde(default = "default_buckets")]
    pub buckets: usize,
    /// The L1 penalty: `l1 * sum |w|` is added to the loss (default 0).
    #[serde(default)]
    pub l1: f64,
    /// The L2 penalty: `l2 / 2 * sum w^2` is added to the loss (default 0).
    #[serde(default)]
    pub l2: f64,
}

fn default_ngrams() -> usize {
    1
}
fn default_buckets() -> usize {
    1 << 18
}

impl BowConfig {
    /// Checks values; returns the key and message of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=2).contains(&self.ngrams) {
            return Err(("ngrams", "must be 1 (tokens) or 2 (and bigrams)".into()));
        }
        if self.ngrams == 2 && self.buckets == 0 {
            return Err(("buckets", "must be at least 1".into()));
        }
        for (key, value) in [("l1", self.l1), ("l2", self.l2)] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err((key, "must be a finite number, 0 or more".into()));
            }
        }
        Ok(())
    }

    /// Rows of the weight table: the vocabulary, then the bigram buckets.
    fn rows(&self, vocab_size: usize) -> usize {
        vocab_size + if self.ngrams == 2 { self.buckets } else { 0 }
    }

    /// About how many parameters the model has over `vocab_size` tokens (2 outputs).
    pub fn parameters(&self, vocab_size: usize) -> f64 {
        self.rows(vocab_size) as f64 * 3.0 + 2.0
    }

    /// A model with zero weights (as scikit-learn starts); with `tfidf`, the
    /// inverse document frequencies of `setup.train` (ones without it: an
    /// evaluation loads them with the weights).
    pub fn init(&self, setup: &Setup, device: &Device) -> Bow {
        let shape = setup.shape;
        let init = Initializer::new(setup.seed, Default::default(), device);
        let rows = self.rows(shape.vocab_size);
        let idf = match (self.features, setup.train) {
            (BowFeatures::Tfidf, Some(train)) => self.idf(train, shape.vocab_size, shape.padding),
            _ => vec![1.0; rows],
        };
        Bow {
            weight: init.constant([rows, shape.outputs], 0.0),
            bias: init.constant([shape.outputs], 0.0),
            idf: init.param(idf, [rows]).set_require_grad(false),
            config: self.clone(),
            vocab_size: shape.vocab_size,
            padding: shape.padding,
        }
    }

    /// `ln((1 + n) / (1 + df)) + 1` per row of the table over the `n` rows of `train`.
    fn idf(&self, train: &SplitTensors, vocab_size: usize, padding: Side) -> Vec<f32> {
        let rows = self.rows(vocab_size);
        let mut df = vec![0u32; rows];
        for row in 0..train.rows() {
            let length = train.lengths[row] as usize;
            let ids = &train.ids[row * train.width..(row + 1) * train.width];
            for id in self.bag(real(ids, length, padding), vocab_size).keys() {
                df[*id as usize] += 1;
            }
        }
        let n = train.rows() as f64;
        df.iter()
            .map(|&d| (((1.0 + n) / (1.0 + f64::from(d))).ln() + 1.0) as f32)
            .collect()
    }

    /// A row's table entries and their counts, in id order.
    fn bag(&self, tokens: &[u32], vocab_size: usize) -> BTreeMap<u32, f32> {
        let mut bag = BTreeMap::new();
        for &id in tokens {
            *bag.entry(id).or_insert(0.0) += 1.0;
        }
        if self.ngrams == 2 {
            for pair in tokens.windows(2) {
                let bucket = vocab_size + bigram_hash(pair[0], pair[1]) % self.buckets;
                *bag.entry(bucket as u32).or_insert(0.0) += 1.0;
            }
        }
        bag
    }
}

/// A fixed hash of a token pair (the same on every machine and run).
fn bigram_hash(a: u32, b: u32) -> usize {
    let x = (u64::from(a) << 32 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 32) as usize
}

/// The `length` real tokens of a padded row.
fn real(ids: &[u32], length: usize, padding: Side) -> &[u32] {
    let length = length.min(ids.len());
    match padding {
        Side::Right => &ids[..length],
        Side::Left => &ids[ids.len() - length..],
    }
}

/// The bag-of-words logistic regression; see [`BowConfig`].
#[derive(Module, Debug)]
pub struct Bow {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
    idf: Param<Tensor<1>>,
    #[module(skip)]
    config: BowConfig,
    #[module(skip)]
    vocab_size: usize,
    #[module(skip)]
    padding: Side,
}

impl Classifier for Bow {
    fn forward(&self, inputs: &Inputs, _dropout: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let device = self.weight.val().device();
        let batch = inputs.lengths.len();
        let ids: Vec<u32> = inputs
            .ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("ids are integers")
            .into_iter()
            .map(|id| id as u32)
            .collect();
        let bags: Vec<BTreeMap<u32, f32>> = (0..batch)
            .map(|r| {
                let row = &ids[r * inputs.width..(r + 1) * inputs.width];
                self.config
                    .bag(real(row, inputs.lengths[r], self.padding), self.vocab_size)
            })
            .collect();
        // Every bag padded to the longest with entry 0 at value 0.
        let width = bags.iter().map(BTreeMap::len).max().unwrap_or(0).max(1);
        let mut entries = Vec::with_capacity(batch * width);
        let mut values = Vec::with_capacity(batch * width);
        for bag in &bags {
            for (&id, &count) in bag {
                entries.push(i64::from(id));
                values.push(if self.config.features == BowFeatures::Binary {
                    1.0
                } else {
                    count
                });
            }
            for _ in bag.len()..width {
                entries.push(0);
                values.push(0.0);
            }
        }
        let entries = Tensor::<2, Int>::from_data(TensorData::new(entries, [batch, width]), &device);
        let mut values = Tensor::<2>::from_data(TensorData::new(values, [batch, width]), &device);
        if self.config.features == BowFeatures::Tfidf {
            let idf = self.idf.val().select(0, entries.clone().reshape([batch * width]));
            values = values * idf.reshape([batch, width]);
            let norm = values.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
            values = values / norm;
        }
        let outputs = self.weight.dims()[1];
        let weights = embedding::embedding_lookup(self.weight.val(), entries);
        let logits = (weights * values.reshape([batch, width, 1]))
            .sum_dim(1)
            .reshape([batch, outputs]);
        logits + self.bias.val().reshape([1, outputs])
    }

    fn penalty(&self) -> Option<Tensor<1>> {
        let (l1, l2) = (self.config.l1, self.config.l2);
        if l1 == 0.0 && l2 == 0.0 {
            return None;
        }
        let weight = self.weight.val();
        let l1_term = weight.clone().abs().sum() * l1;
        let l2_term = weight.powi_scalar(2).sum() * (l2 / 2.0);
        Some(l1_term + l2_term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bags_count_tokens_and_hashed_bigrams_in_id_order() {
        let config = BowConfig {
            features: BowFeatures::Counts,
            ngrams: 2,
            buckets: 8,
            l1: 0.0,
            l2: 0.0,
        };
        let bag = config.bag(&[5, 3, 5], 10);
        assert_eq!(bag[&5], 2.0);
        assert_eq!(bag[&3], 1.0);
        let bigrams: f32 = bag.iter().filter(|(id, _)| **id >= 10).map(|(_, c)| c).sum();
        assert_eq!(bigrams, 2.0, "two pairs");
        assert!(bag.keys().all(|&id| id < 18));
        assert_eq!(bigram_hash(5, 3), bigram_hash(5, 3));
        assert_ne!(bigram_hash(5, 3), bigram_hash(3, 5));
        assert_eq!(real(&[1, 2, 0, 0], 2, Side::Right), [1, 2]);
        assert_eq!(real(&[0, 0, 1, 2], 2, Side::Left), [1, 2]);
    }
}
