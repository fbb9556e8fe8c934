//! `encode`: a frozen pretrained encoder's last hidden states for every row
//! of a `vectorize` stage's splits, computed once and cached, so that a head
//! trained on them (`type: gru` and friends in a train stage that needs this
//! one) never runs the encoder, and every trial of a sweep shares them.
//! Writes `<split>.safetensors` with `features` `[rows, width, hidden]`
//! (f16 by default, zero at padding) beside the ids, lengths and labels,
//! and the vectorize stage's `batching.json`, `tokens.json` and `table.json`.

use serde::{Deserialize, Serialize};

use super::train::{Vectorized, open_checkpoint};
use crate::backend;
use crate::data::batches::{FeatureValues, Features};
use crate::model::bert::{BertConfig, BertHead, BertPooling};
use crate::model::{Inputs, Setup, Shape};
use crate::stage::{Invalid, Output, Stage, StageContext, StageOutcome};

/// The `encode` stage kind.
pub struct Encode;

/// `kind: encode`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    /// The needed stage whose output holds the checkpoint (`config.json`, `model.safetensors`).
    pub checkpoint: String,
    /// Splits to encode (default: all).
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    /// `f16` (default: half the size, as the encoder's outputs need no more) or `f32`.
    #[serde(default)]
    pub dtype: FeatureType,
    /// Rows per forward pass (default 32).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// CPU threads (default: every thread of `--jobs`). Outputs never depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// The stored precision of features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureType {
    /// Half precision.
    #[default]
    F16,
    /// Single precision.
    F32,
}

fn default_batch_size() -> usize {
    32
}

impl Stage for Encode {
    type Config = EncodeConfig;
    const KIND: &'static str = "encode";
    const OUTPUTS: &'static [Output] = &[Output::Features];
    const VERSION: u32 = 1;

    fn validate(&self, config: &EncodeConfig) -> Result<(), Invalid> {
        if config.batch_size == 0 {
            return Err(Invalid::at("batch_size", "must be at least 1"));
        }
        if config.threads == Some(0) {
            return Err(Invalid::at("threads", "must be at least 1"));
        }
        if config.splits.as_ref().is_some_and(Vec::is_empty) {
            return Err(Invalid::at("splits", "list at least one split"));
        }
        Ok(())
    }

    fn uses_device(&self, _config: &EncodeConfig) -> bool {
        true
    }

    fn threads(&self, config: &EncodeConfig) -> usize {
        config.threads.unwrap_or(usize::MAX)
    }

    fn run(&self, config: &EncodeConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let data = Vectorized::find(ctx)?;
        let splits = data.chosen_splits(config.splits.as_deref(), |_| true)?;
        let checkpoint = open_checkpoint(&config.checkpoint, &data, &data.batching, ctx)?;
        let device = backend::device(ctx.device)?;
        let setup = Setup {
            shape: Shape {
                vocab_size: data.tokens.vocab_size,
                outputs: 1,
                padding: data.batching.padding,
            },
            seed: 0,
            glove: None,
            checkpoint: Some(&checkpoint),
            features: None,
            train: None,
        };
        let encoder = BertConfig {
            checkpoint: config.checkpoint.clone(),
            pooling: BertPooling::Cls,
            head: BertHead::Classification,
            classifier_dropout: None,
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(ctx.threads).build()?;
        let model = pool.install(|| encoder.init(&setup, &device))?;
        let hidden = checkpoint.architecture.hidden_size;
        let mut batching = data.batching.clone();
        batching.batch_size = config.batch_size;
        let mut tensors = Vec::with_capacity(splits.len());
        for split in &splits {
            tensors.push((split, data.split(split)?));
        }
        ctx.progress
            .set_total(tensors.iter().map(|(_, t)| t.rows() as u64).sum(), "rows");
        let mut outcome = StageOutcome::default();
        let mut total = 0;
        for (split, mut split_tensors) in tensors {
            let width = split_tensors.width;
            let mut values = vec![0.0f32; split_tensors.rows() * width * hidden];
            for rows in batching.plan(&split_tensors.lengths, 0, 0, false) {
                ctx.check_cancelled()?;
                let batch = batching.batch(&split_tensors, &rows);
                let states = pool.install(|| model.encode(&Inputs::new(&batch, &device), &mut None));
                let states = states.into_data().try_into_vec::<f32>().expect("states are f32");
                for (i, &row) in rows.iter().enumerate() {
                    // Real tokens only: padding stays zero, whatever the batch's width was.
                    let length = batch.lengths[i] as usize;
                    let from = i * batch.width * hidden;
                    let to = row as usize * width * hidden;
                    values[to..to + length * hidden].copy_from_slice(&states[from..from + length * hidden]);
                }
                ctx.progress.advance(rows.len() as u64);
            }
            let features = Features {
                dim: hidden,
                values: match config.dtype {
                    FeatureType::F16 => FeatureValues::F16(values.iter().map(|&v| half::f16::from_f32(v)).collect()),
                    FeatureType::F32 => FeatureValues::F32(values),
                },
            };
            total += features.bytes();
            outcome
                .metrics
                .insert(format!("bytes.{split}"), features.bytes() as f64);
            split_tensors.features = Some(features);
            split_tensors.save(&ctx.out_dir.join(format!("{split}.safetensors")))?;
        }
        outcome.metrics.insert("bytes".into(), total as f64);
        data.write_meta(ctx.out_dir, &splits)?;
        Ok(outcome)
    }
}
