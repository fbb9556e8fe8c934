//! `train`: fits a model (see [`crate::model`]) on a `vectorize` stage's
//! train split, evaluating on another split every `eval_steps`, with early
//! stopping and the best checkpoint kept. Writes `model.safetensors` (tensor
//! names in [`crate::model::parameter_names`]; the best evaluated weights with
//! `load_best_at_end`, else the last, the best then also in `best.safetensors`),
//! burn's record `model.bpk`, `train.json` (what evaluation needs to rebuild the
//! model) and `history.csv`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::tokenize::{TOKENS_FILE, TokensMeta};
use crate::backend;
use crate::data::batches::{Batching, Side, SplitTensors};
use crate::data::table::TableMeta;
use crate::model::bert::{Architecture, Checkpoint};
use crate::model::{self, Classifier, ModelConfig, Setup, Shape, with_model};
use crate::spec::paths;
use crate::stage::{InputFile, Invalid, Output, Stage, StageContext, StageOutcome};
use crate::train::history::HISTORY_FILE;
use crate::train::optimizer::{Clipping, OptimizerConfig};
use crate::train::schedule::Schedule;
use crate::train::{self, Data, Fitted, Loss, Plan, Selection};

/// The `train` stage kind.
pub struct Train;

/// `kind: train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelConfig,
    /// The optimizer (default `adamw`, lr 1e-3, weight decay 0).
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule: `constant` (default), `linear`, `cosine`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up steps (default 0).
    #[serde(default)]
    pub warmup_steps: usize,
    /// Warm-up as a fraction of all steps (used when `warmup_steps` is 0).
    #[serde(default)]
    pub warmup_ratio: f64,
    /// `cross_entropy` (default) or `bce_with_logits`.
    #[serde(default)]
    pub loss: Loss,
    /// Stop after this many optimizer steps (overrides `epochs`, as the Trainer's `max_steps`).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Passes over the train split (default 1 when `max_steps` is not set).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Rows per batch (default: the `vectorize` stage's).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Steps between history rows (default 50).
    #[serde(default = "default_logging_steps")]
    pub logging_steps: usize,
    /// Steps between evaluations (default: once per epoch and at the end).
    #[serde(default)]
    pub eval_steps: Option<usize>,
    /// The split evaluated during training (default `validation`; absent: no evaluation).
    #[serde(default = "default_eval_split")]
    pub eval_split: String,
    /// The metric that picks the best checkpoint and drives early stopping (default `eval_loss`).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// `min` or `max` (default: `min` for losses, `max` otherwise).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Stop after this many evaluations without improvement (default: never).
    #[serde(default)]
    pub patience: Option<usize>,
    /// The least change that counts as an improvement (default 0).
    #[serde(default)]
    pub min_delta: f64,
    /// End with the best evaluated weights rather than the last (default false).
    #[serde(default)]
    pub load_best_at_end: bool,
    /// Clip the global gradient norm to this (default: no clipping).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Clamp every gradient value to `[-v, v]` (default: no clamping).
    #[serde(default)]
    pub clip_grad_value: Option<f64>,
    /// CPU threads (default: every thread of the run's `--jobs`; a sweep
    /// gives each trial its share of the cores). Outputs never depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// Whether a smaller or larger metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Smaller is better.
    Min,
    /// Larger is better.
    Max,
}

fn default_logging_steps() -> usize {
    50
}
fn default_eval_split() -> String {
    "validation".into()
}
fn default_metric() -> String {
    "eval_loss".into()
}

/// `train.json`: what evaluation and reports need to know about a trained model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainInfo {
    /// The stage's config, defaults filled in (`threads` left out: outputs do not depend on it).
    pub config: TrainConfig,
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Label names by id.
    pub labels: Vec<String>,
    /// The padding side the model was trained with.
    pub padding: Side,
    /// Optimizer steps taken.
    pub steps: usize,
    /// The step of the best evaluation and its metric value.
    pub best: Option<(usize, f64)>,
    /// Whether the saved weights are the best evaluated ones.
    pub saved_best: bool,
    /// The pretrained encoder's architecture (`type: bert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Architecture>,
    /// The width of the encoder features the model was trained on (`encode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<usize>,
}

/// The file with [`TrainInfo`].
pub const TRAIN_FILE: &str = "train.json";

impl TrainInfo {
    /// Reads `train.json` from a train stage's output.
    pub fn read(dir: &Path) -> anyhow::Result<TrainInfo> {
        let path = dir.join(TRAIN_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a train.json", path.display()))
    }

    /// The model shape.
    pub fn shape(&self) -> Shape {
        Shape {
            vocab_size: self.vocab_size,
            outputs: self.config.loss.outputs(self.labels.len()),
            padding: self.padding,
        }
    }
}

/// Vectorized data as written by the `vectorize` stage.
pub struct Vectorized {
    /// Its directory.
    pub dir: PathBuf,
    /// Batch settings.
    pub batching: Batching,
    /// Vocabulary size and padding id.
    pub tokens: TokensMeta,
    /// Splits and label names.
    pub table: TableMeta,
}

impl Vectorized {
    /// Finds the needed `encode` output (features), else the `vectorize` one.
    pub fn find(ctx: &StageContext) -> anyhow::Result<Vectorized> {
        let input = match ctx.optional(Output::Features)? {
            Some(features) => features,
            None => ctx.providing(Output::Vectors)?,
        };
        let dir = input.dir.clone();
        let batching = serde_json::from_slice(&std::fs::read(dir.join("batching.json"))?)?;
        let tokens = TokensMeta::read(&dir)?;
        let table = TableMeta::read(&dir)?;
        Ok(Vectorized {
            dir,
            batching,
            tokens,
            table,
        })
    }

    /// The splits a stage's `splits:` key names (each must exist), or by
    /// default those of the data that `default` keeps.
    pub fn chosen_splits(
        &self,
        wanted: Option<&[String]>,
        default: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let all = &self.table.splits;
        match wanted {
            Some(wanted) => {
                if let Some(unknown) = wanted.iter().find(|s| !all.contains(s)) {
                    anyhow::bail!(
                        "`splits`: there is no split `{unknown}`; the splits are {}",
                        all.join(", ")
                    );
                }
                Ok(wanted.to_vec())
            }
            None => Ok(all.iter().filter(|s| default(s)).cloned().collect()),
        }
    }

    /// Writes the batching, tokens and table files for `splits` into `dir`,
    /// for a stage that lays out data like this one.
    pub fn write_meta(&self, dir: &Path, splits: &[String]) -> anyhow::Result<()> {
        std::fs::write(dir.join("batching.json"), serde_json::to_vec_pretty(&self.batching)?)?;
        std::fs::write(dir.join(TOKENS_FILE), serde_json::to_vec_pretty(&self.tokens)?)?;
        TableMeta {
            splits: splits.to_vec(),
            ..self.table.clone()
        }
        .write(dir)
    }

    /// Loads one split's tensors.
    pub fn split(&self, name: &str) -> anyhow::Result<SplitTensors> {
        SplitTensors::load(&self.dir.join(format!("{name}.safetensors")))
    }

    /// Label names: the table's, or the ids `0..=max` of integer labels in `train` (at least two).
    pub fn labels(&self, train: &SplitTensors) -> Vec<String> {
        match &self.table.label_names {
            Some(names) if !names.is_empty() => names.clone(),
            _ => {
                let max = train.labels.iter().copied().max().unwrap_or(1).max(1);
                (0..=max).map(|l| l.to_string()).collect()
            }
        }
    }
}

impl Stage for Train {
    type Config = TrainConfig;
    const KIND: &'static str = "train";
    const OUTPUTS: &'static [Output] = &[Output::Model];
    const VERSION: u32 = 5;
    const ARTIFACTS: &'static [&'static str] = &["model.safetensors", "history.csv", "train.json"];
    const HEADLINE_FILES: &'static [(&'static str, &'static str)] = &[("model", "model.safetensors")];

    fn validate(&self, config: &TrainConfig) -> Result<(), Invalid> {
        if let Err((key, message)) = config.model.check() {
            return Err(Invalid::at(&format!("model.{key}"), message));
        }
        // The vocabulary is not known yet: one row is a lower bound.
        if let Err(message) = config.model.check_memory(1) {
            return Err(Invalid::at("model", message));
        }
        if let Err((key, message)) = config.optimizer.check() {
            return Err(Invalid::at(&format!("optimizer.{key}"), message));
        }
        let positive = [
            ("max_steps", config.max_steps),
            ("epochs", config.epochs),
            ("batch_size", config.batch_size),
            ("eval_steps", config.eval_steps),
            ("patience", config.patience),
            ("logging_steps", Some(config.logging_steps)),
            ("threads", config.threads),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == Some(0)) {
            return Err(Invalid::at(key, "must be at least 1"));
        }
        if !(0.0..1.0).contains(&config.warmup_ratio) {
            return Err(Invalid::at("warmup_ratio", "must be in [0, 1)"));
        }
        for (key, value) in [
            ("clip_grad_norm", config.clip_grad_norm),
            ("clip_grad_value", config.clip_grad_value),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(Invalid::at(key, "must be a positive number"));
            }
        }
        if !config.metric.starts_with("eval_") {
            return Err(Invalid::at(
                "metric",
                "must be an evaluation metric such as `eval_loss` or `eval_accuracy`",
            ));
        }
        Ok(())
    }

    fn uses_seed(&self, _config: &TrainConfig) -> bool {
        true
    }

    fn uses_device(&self, _config: &TrainConfig) -> bool {
        true
    }

    fn input_files(&self, config: &TrainConfig) -> Vec<InputFile> {
        config
            .model
            .embedding()
            .and_then(|e| e.glove.clone())
            .map(|path| InputFile::new("model.glove", path))
            .into_iter()
            .collect()
    }

    fn threads(&self, config: &TrainConfig) -> usize {
        config.threads.unwrap_or(usize::MAX)
    }

    fn run(&self, config: &TrainConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let data = Vectorized::find(ctx)?;
        let train_split = data.split("train").context("the train stage needs a `train` split")?;
        let labels = data.labels(&train_split);
        if config.loss == Loss::BceWithLogits && labels.len() != 2 {
            anyhow::bail!(
                "`loss: bce_with_logits` needs two labels; the data has {}",
                labels.len()
            );
        }
        let mut batching = data.batching.clone();
        if let Some(size) = config.batch_size {
            batching.batch_size = size;
        }
        let eval_split = if data.table.splits.contains(&config.eval_split) {
            Some(data.split(&config.eval_split)?)
        } else {
            None
        };
        if eval_split.is_none() && (config.patience.is_some() || config.load_best_at_end) {
            anyhow::bail!(
                "`patience` and `load_best_at_end` need evaluation, but there is no `{}` split (splits: {}); \
                 set `eval_split`",
                config.eval_split,
                data.table.splits.join(", ")
            );
        }
        let per_epoch = batching.plan(&train_split.lengths, 0, 0, false).len().max(1);
        let total_steps = config.max_steps.unwrap_or(per_epoch * config.epochs.unwrap_or(1));
        let warmup_steps = if config.warmup_steps > 0 {
            config.warmup_steps
        } else {
            (config.warmup_ratio * total_steps as f64).ceil() as usize
        };
        let plan = Plan {
            optimizer: config.optimizer.clone(),
            schedule: config.schedule,
            warmup_steps,
            loss: config.loss,
            total_steps,
            logging_steps: config.logging_steps,
            eval_steps: if eval_split.is_some() {
                config.eval_steps.unwrap_or(per_epoch)
            } else {
                0
            },
            selection: Selection {
                maximize: config.mode.map_or(!config.metric.ends_with("loss"), |m| m == Mode::Max),
                metric: config.metric.clone(),
                patience: config.patience,
                min_delta: config.min_delta,
            },
            clipping: Clipping {
                max_norm: config.clip_grad_norm,
                max_value: config.clip_grad_value,
            },
            seed: ctx.seed,
        };
        let shape = Shape {
            vocab_size: data.tokens.vocab_size,
            outputs: config.loss.outputs(labels.len()),
            padding: batching.padding,
        };
        let embedding = match config.model.embedding() {
            Some(spec) => spec
                .glove
                .as_deref()
                .map(|glove| pretrained(glove, spec.dim, ctx, data.tokens.pad_id, shape.vocab_size))
                .transpose()?,
            None => None,
        };
        let checkpoint = match &config.model {
            ModelConfig::Bert(bert) => Some(open_checkpoint(&bert.checkpoint, &data, &batching, ctx)?),
            _ => None,
        };
        if let Err((key, message)) = config.model.check_width(train_split.width) {
            anyhow::bail!("`model.{key}`: {message}");
        }
        if let Err(message) = config.model.check_memory(shape.vocab_size) {
            anyhow::bail!("`model` {message}");
        }
        let features = train_split.features.as_ref().map(|f| f.dim);
        if features.is_some() {
            check_feature_head(&config.model)?;
        }
        let device = backend::device(ctx.device)?.autodiff();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(ctx.threads).build()?;
        let inputs = Data {
            train: &train_split,
            eval: eval_split.as_ref(),
            batching: &batching,
            labels: labels.len(),
        };
        let fitted = pool.install(|| {
            let setup = Setup {
                shape,
                seed: ctx.seed,
                glove: embedding.as_deref(),
                checkpoint: checkpoint.as_ref(),
                features,
                train: Some(&train_split),
            };
            with_model!(&config.model, &setup, &device, |model| {
                let fitted = train::fit(model, &inputs, &plan, &device, ctx)?;
                save(fitted, config.load_best_at_end, ctx.out_dir)
            })
        })?;
        let best = fitted.best;
        let saved_best = config.load_best_at_end && best.is_some();
        let info = TrainInfo {
            config: TrainConfig {
                threads: None,
                ..config.clone()
            },
            vocab_size: shape.vocab_size,
            labels,
            padding: batching.padding,
            steps: fitted.steps,
            best,
            saved_best,
            checkpoint: checkpoint.map(|c| c.architecture),
            features,
        };
        std::fs::write(ctx.out_dir.join(TRAIN_FILE), serde_json::to_vec_pretty(&info)?)?;
        let mut outcome = StageOutcome::default();
        outcome.metrics.insert("steps".into(), fitted.steps as f64);
        outcome
            .metrics
            .insert("stopped_early".into(), f64::from(u8::from(fitted.stopped_early)));
        if let Some(loss) = fitted.history.series("loss").last() {
            outcome.metrics.insert("train_loss".into(), loss.1);
        }
        if let Some((step, value)) = best {
            outcome.metrics.insert("best_step".into(), step as f64);
            outcome.metrics.insert(format!("best_{}", config.metric), value);
        }
        // The evaluation of the weights the stage keeps, named as the Trainer does (`eval_accuracy`).
        let kept_step = best.filter(|_| config.load_best_at_end).map(|(step, _)| step);
        if let Some(row) = fitted.history.last_evaluation(kept_step) {
            outcome.metrics.extend(
                row.values
                    .iter()
                    .filter(|(k, _)| k.starts_with("eval_"))
                    .map(|(k, &v)| (k.clone(), v)),
            );
        }
        Ok(outcome)
    }
}

/// The checkpoint in the output of the needed stage `stage`, checked against
/// the data before any training: the tokenizer's vocabulary, the longest
/// sequence, segment ids and the padding side must fit it.
pub fn open_checkpoint(
    stage: &str,
    data: &Vectorized,
    batching: &Batching,
    ctx: &StageContext,
) -> anyhow::Result<Checkpoint> {
    let input = ctx.input(stage).map_err(|_| {
        anyhow::anyhow!("`model.checkpoint` names `{stage}`, which this stage does not need; add it to `needs`")
    })?;
    let checkpoint = Checkpoint::open(&input.dir).with_context(|| format!("`model.checkpoint` (stage `{stage}`)"))?;
    let a = &checkpoint.architecture;
    anyhow::ensure!(
        data.tokens.vocab_size == a.vocab_size,
        "the tokenizer has {} ids but the checkpoint's config.json says `vocab_size: {}`; tokenize with the \
         checkpoint's own tokenizer (`tokenizer: {{from_stage: {stage}}}`)",
        data.tokens.vocab_size,
        a.vocab_size
    );
    anyhow::ensure!(
        data.tokens.max_length <= a.max_position_embeddings,
        "`max_length` of the tokenize stage is {}, but the checkpoint has {} positions \
         (`max_position_embeddings` in its config.json); set `max_length` to at most {}",
        data.tokens.max_length,
        a.max_position_embeddings,
        a.max_position_embeddings
    );
    anyhow::ensure!(
        !data.table.pairs || a.type_vocab_size >= 2,
        "the data holds sentence pairs, but the checkpoint has `type_vocab_size: {}` (one segment)",
        a.type_vocab_size
    );
    anyhow::ensure!(
        batching.padding == Side::Right,
        "`type: bert` reads `[CLS]` at position 0: set `padding: right` in the vectorize stage"
    );
    Ok(checkpoint)
}

/// A head trained on encoder features reads them instead of token ids:
/// only the recurrent networks take them, without embedding settings.
fn check_feature_head(model: &ModelConfig) -> anyhow::Result<()> {
    let ModelConfig::Rnn(rnn) = model else {
        anyhow::bail!("a train stage on encoder features (an `encode` stage) takes `type: rnn`, `lstm` or `gru`");
    };
    let e = &rnn.embedding;
    anyhow::ensure!(
        e.glove.is_none() && !e.freeze && e.init == Default::default() && e.dim == 64,
        "`model.embedding_dim`, `glove`, `freeze` and `embedding_init` do not apply on encoder features: \
         the recurrent layers read the encoder's states"
    );
    Ok(())
}

/// What [`save`] leaves of a training run once its models are written.
struct Saved {
    history: crate::train::history::History,
    steps: usize,
    stopped_early: bool,
    best: Option<(usize, f64)>,
}

/// Writes the kept weights as `model.safetensors` and `model.bpk` (the best
/// evaluated ones with `load_best_at_end`; else the last, the best beside
/// them in `best.safetensors`) and the history as `history.csv`.
fn save<M: Classifier>(fitted: Fitted<M>, load_best_at_end: bool, out_dir: &Path) -> anyhow::Result<Saved> {
    let best = fitted.best.as_ref().map(|(_, step, value)| (*step, *value));
    let model = match fitted.best {
        Some((best, _, _)) if load_best_at_end => best,
        Some((best, _, _)) => {
            model::save_safetensors(&best, &out_dir.join("best.safetensors"))?;
            fitted.final_model
        }
        None => fitted.final_model,
    };
    model::save_safetensors(&model, &out_dir.join("model.safetensors"))?;
    model
        .valid()
        .save_file(out_dir.join("model.bpk"))
        .map_err(|e| anyhow::anyhow!("cannot save the burn record: {e:?}"))?;
    fitted.history.write_csv(&out_dir.join(HISTORY_FILE))?;
    Ok(Saved {
        history: fitted.history,
        steps: fitted.steps,
        stopped_early: fitted.stopped_early,
        best,
    })
}

/// The embedding table from the GloVe file `glove` (relative to the pipeline
/// file), for the vocabulary of the needed tokenizer.
fn pretrained(
    glove: &str,
    dim: usize,
    ctx: &StageContext,
    pad_id: Option<u32>,
    vocab_size: usize,
) -> anyhow::Result<Vec<f32>> {
    let path = paths::local(ctx.pipeline_dir, glove)?;
    let input = ctx
        .providing(Output::Tokens)
        .context("GloVe vectors are matched to the words of the tokenizer")?;
    let tokenizer = tokenizers::Tokenizer::from_file(input.dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", input.dir.join("tokenizer.json").display()))?;
    let vocab = tokenizer.get_vocab(true);
    let loaded = model::glove::load(&path, dim, &vocab, pad_id, ctx.seed)?;
    tracing::info!(found = loaded.found, vocab = vocab_size, "GloVe vectors");
    anyhow::ensure!(
        loaded.values.len() == vocab_size * dim,
        "the tokenizer's vocabulary has {} entries but the data says {vocab_size}",
        loaded.values.len() / dim
    );
    Ok(loaded.values)
}
