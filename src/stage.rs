//! The stage-kind interface. A stage kind is one type implementing [`Stage`];
//! the executor reaches it only through the [`Registry`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::spec::{Node, Source, SpecError};

/// One kind of stage (download, tokenize, train, ...).
///
/// Its `Config` is the stage's YAML body without `kind` and `needs`; it should
/// use `#[serde(deny_unknown_fields)]` and `#[serde(default)]` for optional
/// keys, so that unknown keys and missing ones get located errors.
pub trait Stage: Send + Sync + 'static {
    /// The stage's typed configuration.
    type Config: Serialize + DeserializeOwned;

    /// The kind's name, as written after `kind:`.
    const KIND: &'static str;

    /// Bumped whenever a code change alters the kind's output; part of every key.
    const VERSION: u32;

    /// Output files worth reviewing in experiment tracking (MLflow artifacts):
    /// names, or `*.ext` for every file with that extension.
    const ARTIFACTS: &'static [&'static str] = &[];

    /// Output files a finished run points the user to, as (what, file name):
    /// `("report", "report.html")`. Default: none.
    const HEADLINE_FILES: &'static [(&'static str, &'static str)] = &[];

    /// What the kind's output holds. Stages that need it find it by this
    /// ([`StageContext::providing`]), never by probing for file names.
    const OUTPUTS: &'static [Output] = &[];

    /// Checks values that types alone cannot (ranges, combinations).
    fn validate(&self, _config: &Self::Config) -> Result<(), Invalid> {
        Ok(())
    }

    /// Whether the pipeline seed affects the output (then it is part of the key).
    fn uses_seed(&self, _config: &Self::Config) -> bool {
        false
    }

    /// Whether the pipeline's name appears in the output (a page title; then
    /// it is part of the key).
    fn uses_pipeline_name(&self, _config: &Self::Config) -> bool {
        false
    }

    /// Whether the pipeline device affects the output (then it is part of the key).
    fn uses_device(&self, _config: &Self::Config) -> bool {
        false
    }

    /// Files outside the store that the stage reads, relative to the pipeline
    /// file's directory; their content hashes are part of the key.
    fn input_files(&self, _config: &Self::Config) -> Vec<InputFile> {
        Vec::new()
    }

    /// How many CPU threads the stage keeps busy (its share of `--jobs`).
    /// A config key called `threads` is left out of the cache key: outputs
    /// must not depend on it.
    fn threads(&self, _config: &Self::Config) -> usize {
        1
    }

    /// Produces the stage's outputs in `ctx.out_dir`.
    fn run(&self, config: &Self::Config, ctx: &StageContext) -> anyhow::Result<StageOutcome>;
}

/// A value that failed [`Stage::validate`]: the key path inside the stage's
/// config and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Path of the offending key, e.g. `["optimizer", "lr"]`.
    pub path: Vec<String>,
    /// What is wrong, e.g. "must be greater than 0".
    pub message: String,
    /// A suggestion, e.g. "did you mean `text`?".
    pub help: Option<String>,
}

impl Invalid {
    /// An invalid value at `path` (dot-separated).
    pub fn at(path: &str, message: impl Into<String>) -> Self {
        Invalid {
            path: path.split('.').map(str::to_string).collect(),
            message: message.into(),
            help: None,
        }
    }

    /// Adds a suggestion.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A stage may also return an [`Invalid`] from [`Stage::run`], when only its
/// input shows that a config value is wrong (a column the table lacks): the
/// run then ends as a usage error located at that key.
impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.path.join("."), self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// What a finished stage reports besides its files.
#[derive(Debug, Default, Clone)]
pub struct StageOutcome {
    /// Headline metrics, recorded in the manifest and the lock file.
    pub metrics: BTreeMap<String, f64>,
}

/// What a stage kind's output holds, as declared in [`Stage::OUTPUTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A table: one parquet file per split and `table.json` ([`crate::data::table`]).
    Table,
    /// Token ids in that table, `tokens.json` and the `tokenizer.json` that made them.
    Tokens,
    /// Padded id tensors per split and the batching settings (`vectorize`).
    Vectors,
    /// A trained model: `model.safetensors` and `train.json`.
    Model,
    /// Scores per split: `metrics.json` and the predictions.
    Evaluation,
    /// A frozen encoder's features per split, laid out as vectorized data (`encode`).
    Features,
}

impl Output {
    /// What the output is, in words, for error messages.
    fn describe(self) -> &'static str {
        match self {
            Output::Table => "a table (load, shuffle, split or tokenize)",
            Output::Tokens => "token ids (tokenize)",
            Output::Vectors => "vectorized data (vectorize)",
            Output::Model => "a trained model (train)",
            Output::Evaluation => "evaluation metrics (evaluate)",
            Output::Features => "encoder features (encode)",
        }
    }
}

/// The output of an upstream stage, as seen by a stage that needs it.
#[derive(Debug, Clone)]
pub struct StageInput {
    /// The upstream stage's name in the pipeline.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// What its output holds ([`Stage::OUTPUTS`] of its kind).
    pub outputs: &'static [Output],
    /// The directory holding its output files.
    pub dir: PathBuf,
}

/// Progress reporting for long stages: a bar on a terminal, log lines otherwise.
pub trait Progress: Send + Sync {
    /// Sets the amount of work, in `unit`s (e.g. "rows", "steps").
    fn set_total(&self, total: u64, unit: &str);
    /// Records `n` more units done.
    fn advance(&self, n: u64);
    /// Shows a short status message.
    fn message(&self, text: &str);
    /// Records step metrics as the stage logs them (they reach experiment
    /// tracking live); a stage reports here exactly the rows of its `history.csv`.
    fn metrics(&self, _step: u64, _values: &[(&str, f64)]) {}
}

/// Everything a stage's run may use.
pub struct StageContext<'a> {
    /// Directory to write outputs into; it becomes the cache entry.
    pub out_dir: &'a Path,
    /// Outputs of the stages this one needs, in `needs` order.
    pub inputs: &'a [StageInput],
    /// Directory of the pipeline file, for relative paths in the config.
    pub pipeline_dir: &'a Path,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The pipeline seed.
    pub seed: u64,
    /// The pipeline device (`cpu`, `cuda:0`, ...).
    pub device: &'a str,
    /// Threads the stage may use.
    pub threads: usize,
    /// Where to report progress.
    pub progress: &'a dyn Progress,
    /// Set when the run is being interrupted.
    pub cancel: &'a AtomicBool,
    /// Where a stage that can stop partway keeps what it needs to go on
    /// later (a pruned `train` saves its state here): one folder per key,
    /// kept across runs until the key's entry is stored, then removed.
    /// Created by the stage when it needs it.
    pub state_dir: &'a Path,
    /// Asked after each evaluation whether to go on (a sweep's early
    /// stopping); `None`: always go on.
    pub pruner: Option<&'a dyn Pruner>,
}

/// Whether a stage goes on after an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Train on.
    Continue,
    /// Stop here: the stage saves its state and ends as [`Pruned`].
    Prune,
}

/// Decides after each evaluation of a stage whether it goes on
/// (`early_terminate` of a sweep, see [`crate::search::asha`]).
pub trait Pruner: Sync {
    /// The evaluation at `step` gave `metrics`; `last`: it is the stage's
    /// final one (the stage ends anyway). May block until the trials this
    /// one is compared with have been evaluated as far.
    fn evaluated(&self, step: usize, metrics: &BTreeMap<String, f64>, last: bool) -> Verdict;
}

impl StageContext<'_> {
    /// The output of the needed stage called `name`.
    pub fn input(&self, name: &str) -> anyhow::Result<&StageInput> {
        self.inputs
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow::anyhow!("this stage does not need a stage called `{name}`"))
    }

    /// The one needed stage whose output holds `output`; an error naming the
    /// needed stages when none or several do.
    pub fn providing(&self, output: Output) -> anyhow::Result<&StageInput> {
        let found: Vec<&StageInput> = self.inputs.iter().filter(|i| i.outputs.contains(&output)).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => anyhow::bail!(
                "this stage needs {}, but none of the stages it needs ({}) produces it; add one to `needs`",
                output.describe(),
                self.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            several => anyhow::bail!(
                "this stage needs exactly one stage with {}, but it needs {}",
                output.describe(),
                several.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Like [`StageContext::providing`], but `None` when no needed stage has `output`.
    pub fn optional(&self, output: Output) -> anyhow::Result<Option<&StageInput>> {
        if self.inputs.iter().any(|i| i.outputs.contains(&output)) {
            self.providing(output).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails with [`Cancelled`] once the run is interrupted; long stages call
    /// it regularly so that Ctrl-C stops them promptly.
    pub fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Cancelled.into())
        } else {
            Ok(())
        }
    }
}

/// The error a stage returns when its [`Pruner`] stopped it: it saved its
/// state in [`StageContext::state_dir`] (with its `history.csv` so far) and
/// stored no entry.
#[derive(Debug)]
pub struct Pruned {
    /// The step of the evaluation that stopped it.
    pub step: usize,
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pruned at step {}", self.step)
    }
}

impl std::error::Error for Pruned {}

/// The error a stage returns when it stops because the run was interrupted.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Cancelled {}

/// A stage's configuration after validation, with the facts the key needs.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// See [`Stage::VERSION`].
    pub version: u32,
    /// The config with every default filled in.
    pub config: Json,
    /// See [`Stage::uses_seed`].
    pub uses_seed: bool,
    /// See [`Stage::uses_pipeline_name`].
    pub uses_pipeline_name: bool,
    /// See [`Stage::uses_device`].
    pub uses_device: bool,
    /// See [`Stage::input_files`].
    pub input_files: Vec<InputFile>,
    /// See [`Stage::threads`].
    pub threads: usize,
}

/// A file outside the store that a stage reads ([`Stage::input_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// The config key that names it, dotted (`source`, `model.glove`): where
    /// an error about it points.
    pub key: &'static str,
    /// The path, relative to the pipeline file's directory.
    pub path: String,
}

impl InputFile {
    /// The file `path`, named by `key`.
    pub fn new(key: &'static str, path: String) -> InputFile {
        InputFile { key, path }
    }
}

/// Object-safe face of [`Stage`], implemented for every stage kind.
pub trait DynStage: Send + Sync {
    /// See [`Stage::KIND`].
    fn kind(&self) -> &'static str;
    /// See [`Stage::VERSION`].
    fn version(&self) -> u32;
    /// See [`Stage::ARTIFACTS`].
    fn artifacts(&self) -> &'static [&'static str];
    /// See [`Stage::OUTPUTS`].
    fn outputs(&self) -> &'static [Output];
    /// See [`Stage::HEADLINE_FILES`].
    fn headline_files(&self) -> &'static [(&'static str, &'static str)];
    /// Types and validates a stage body; `what` names the stage in errors.
    fn resolve(&self, source: &Source, body: &Node, what: &str) -> Result<ResolvedConfig, SpecError>;
    /// Runs the stage on a resolved config.
    fn run(&self, config: &Json, ctx: &StageContext) -> anyhow::Result<StageOutcome>;
}

impl<S: Stage> DynStage for S {
    fn kind(&self) -> &'static str {
        S::KIND
    }

    fn version(&self) -> u32 {
        S::VERSION
    }

    fn artifacts(&self) -> &'static [&'static str] {
        S::ARTIFACTS
    }

    fn outputs(&self) -> &'static [Output] {
        S::OUTPUTS
    }

    fn headline_files(&self) -> &'static [(&'static str, &'static str)] {
        S::HEADLINE_FILES
    }

    fn resolve(&self, source: &Source, body: &Node, what: &str) -> Result<ResolvedConfig, SpecError> {
        let config: S::Config = source.deserialize(body, &[], what)?;
        if let Err(invalid) = self.validate(&config) {
            let origin = body.locate(invalid.path.iter().map(String::as_str));
            let message = format!("`{}` of {what} {}", invalid.path.join("."), invalid.message);
            return Err(source.error(origin, message));
        }
        let mut json = serde_json::to_value(&config).expect("stage configs serialize to JSON");
        if let Some(map) = json.as_object_mut() {
            // `threads` only schedules the work (outputs are identical for any
            // count), so it stays out of the key: a sweep may give trials
            // fewer threads and still share entries with single runs.
            map.remove("threads");
        }
        Ok(ResolvedConfig {
            version: S::VERSION,
            config: json,
            uses_seed: self.uses_seed(&config),
            uses_pipeline_name: self.uses_pipeline_name(&config),
            uses_device: self.uses_device(&config),
            input_files: self.input_files(&config),
            threads: self.threads(&config).max(1),
        })
    }

    fn run(&self, config: &Json, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let config: S::Config = serde_json::from_value(config.clone())?;
        Stage::run(self, &config, ctx)
    }
}

/// The stage kinds a pipeline may use, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn DynStage>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage kind.
    pub fn with<S: Stage>(mut self, stage: S) -> Self {
        self.kinds.insert(S::KIND, Arc::new(stage));
        self
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynStage>> {
        self.kinds.get(name)
    }

    /// All kind names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().map(|k| k.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Silent;
    impl Progress for Silent {
        fn set_total(&self, _total: u64, _unit: &str) {}
        fn advance(&self, _n: u64) {}
        fn message(&self, _text: &str) {}
    }

    fn input(name: &str, outputs: &'static [Output]) -> StageInput {
        StageInput {
            name: name.into(),
            kind: name.into(),
            outputs,
            dir: PathBuf::from(name),
        }
    }

    #[test]
    fn inputs_are_found_by_what_they_hold() {
        let inputs = [
            input("tokenize", &[Output::Table, Output::Tokens]),
            input("train", &[Output::Model]),
            input("split", &[Output::Table]),
        ];
        let cancel = AtomicBool::new(false);
        let ctx = StageContext {
            out_dir: Path::new("out"),
            inputs: &inputs,
            pipeline_dir: Path::new("."),
            pipeline: "p",
            seed: 0,
            device: "cpu",
            threads: 1,
            progress: &Silent,
            cancel: &cancel,
            state_dir: Path::new("state"),
            pruner: None,
        };
        assert_eq!(ctx.providing(Output::Tokens).unwrap().name, "tokenize");
        assert_eq!(ctx.providing(Output::Model).unwrap().name, "train");
        let several = ctx.providing(Output::Table).unwrap_err().to_string();
        assert!(
            several.contains("exactly one") && several.contains("tokenize, split"),
            "{several}"
        );
        let none = ctx.providing(Output::Vectors).unwrap_err().to_string();
        assert!(
            none.contains("vectorized data") && none.contains("tokenize, train, split"),
            "{none}"
        );
        assert!(ctx.optional(Output::Evaluation).unwrap().is_none());
    }
}
