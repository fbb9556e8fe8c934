//! `evaluate`: scores a `train` stage's model on splits of its data: loss,
//! accuracy, precision, recall and F1 (binary and macro), the confusion
//! matrix (`metrics.json`) and every prediction with its class probabilities
//! (`predictions-<split>.parquet`).

use std::collections::BTreeMap;

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use super::train::{TrainInfo, Vectorized};
use crate::backend;
use crate::data::batches::Batching;
use crate::data::table;
use crate::model::bert::Checkpoint;
use crate::model::{self, Classifier, Setup, with_model};
use crate::report::SplitScores;
use crate::stage::{Invalid, Output, Stage, StageContext, StageOutcome};
use crate::train;
use burn::tensor::Device;

/// The `evaluate` stage kind.
pub struct Evaluate;

/// `kind: evaluate`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// Splits to score (default: every split but `train`).
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    /// Rows per batch (default: the train stage's, so that its evaluation of
    /// the train stage's `eval_split` is the train stage's own, to the bit:
    /// with dynamic padding a row's logits depend on the width of its batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// The file with the per-split [`SplitScores`].
pub const METRICS_FILE: &str = "metrics.json";

impl Stage for Evaluate {
    type Config = EvaluateConfig;
    const KIND: &'static str = "evaluate";
    const OUTPUTS: &'static [Output] = &[Output::Evaluation];
    const VERSION: u32 = 1;
    const ARTIFACTS: &'static [&'static str] = &["metrics.json"];

    fn validate(&self, config: &EvaluateConfig) -> Result<(), Invalid> {
        if config.batch_size == Some(0) {
            return Err(Invalid::at("batch_size", "must be at least 1"));
        }
        if config.splits.as_ref().is_some_and(Vec::is_empty) {
            return Err(Invalid::at("splits", "list at least one split"));
        }
        Ok(())
    }

    fn uses_device(&self, _config: &EvaluateConfig) -> bool {
        true
    }

    fn run(&self, config: &EvaluateConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let trained = ctx.providing(Output::Model)?;
        let info = TrainInfo::read(&trained.dir)?;
        let data = Vectorized::find(ctx)?;
        let splits = data.chosen_splits(config.splits.as_deref(), |s| s != "train")?;
        anyhow::ensure!(
            !splits.is_empty(),
            "there is no split to evaluate besides `train`; set `splits`"
        );
        let device = backend::device(ctx.device)?;
        let mut batching = data.batching.clone();
        if let Some(size) = config.batch_size.or(info.config.batch_size) {
            batching.batch_size = size;
        }
        let checkpoint = info.checkpoint.clone().map(|architecture| Checkpoint {
            architecture,
            weights: None,
        });
        let setup = Setup {
            shape: info.shape(),
            seed: 0,
            glove: None,
            checkpoint: checkpoint.as_ref(),
            features: info.features,
            train: None,
        };
        let (reports, outcome) = with_model!(&info.config.model, &setup, &device, |model| {
            let model = model::load_safetensors(model, &trained.dir.join("model.safetensors"))?;
            score_splits(&model, &splits, &data, &batching, &info, &device, ctx)?
        });
        std::fs::write(ctx.out_dir.join(METRICS_FILE), serde_json::to_vec_pretty(&reports)?)?;
        Ok(outcome)
    }
}

/// Scores `model` on each of `splits`, writing `predictions-<split>.parquet`.
fn score_splits<M: Classifier>(
    model: &M,
    splits: &[String],
    data: &Vectorized,
    batching: &Batching,
    info: &TrainInfo,
    device: &Device,
    ctx: &StageContext,
) -> anyhow::Result<(BTreeMap<String, SplitScores>, StageOutcome)> {
    let labels = info.labels.len();
    let mut reports = BTreeMap::new();
    let mut outcome = StageOutcome::default();
    for split in splits {
        ctx.check_cancelled()?;
        let tensors = data.split(split)?;
        let evaluation = train::predict(model, &tensors, batching, info.config.loss, labels, device);
        let metrics = evaluation.metrics("");
        for (name, value) in &metrics {
            outcome.metrics.insert(format!("{split}_{name}"), *value);
        }
        let rows: Vec<u32> = (0..tensors.rows() as u32).collect();
        let mut columns = vec![
            Column::new("row".into(), &rows),
            Column::new("label".into(), &tensors.labels),
            Column::new("prediction".into(), &evaluation.predicted),
        ];
        for (class, name) in info.labels.iter().enumerate() {
            let probabilities: Vec<f64> = evaluation.probabilities.iter().map(|p| p[class]).collect();
            columns.push(Column::new(format!("probability_{name}").into(), &probabilities));
        }
        let mut frame = DataFrame::new_infer_height(columns)?;
        table::write_split(&mut frame, ctx.out_dir, &format!("predictions-{split}"))?;
        reports.insert(
            split.clone(),
            SplitScores {
                metrics,
                confusion: evaluation.scores.confusion.clone(),
            },
        );
    }
    Ok((reports, outcome))
}
