//! What a finished run shows at its end and `pipeline metrics` prints again:
//! the scores of every stage that evaluates a model, per split, and the files
//! worth opening (the report, the model).
//!
//! Scores come from stages whose kind provides [`Output::Evaluation`]; files
//! from each kind's [`Stage::HEADLINE_FILES`](crate::stage::Stage::HEADLINE_FILES).
//! Nothing here knows a stage kind by name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use anyhow::Context as _;

use crate::report::{SplitScores, fmt};
use crate::stage::{Output, Registry};
use crate::stages::METRICS_FILE;

/// Scores of one evaluating stage: per split, metric name to value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageScores {
    /// The stage's name in the pipeline.
    pub stage: String,
    /// Split to metric to value (`accuracy`, `f1`, `loss`, ...).
    pub splits: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The results of one pipeline run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Results {
    /// Every evaluating stage's scores, in pipeline order.
    pub scores: Vec<StageScores>,
    /// The files worth opening, in pipeline order.
    pub files: Vec<HeadlineFile>,
}

/// A file a run points the user to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadlineFile {
    /// What it is: `report`, `model`.
    pub what: String,
    /// The stage that wrote it.
    pub stage: String,
    /// Where it is.
    pub path: PathBuf,
}

/// One finished stage, as [`Results::collect`] reads it.
pub struct FinishedStage<'a> {
    /// Its name in the pipeline.
    pub name: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Its output directory; `None` when it did not finish.
    pub out_dir: Option<&'a Path>,
}

/// The metrics shown in the short table at the end of a run, when present
/// (macro F1 only without a binary one).
const HEADLINE: &[&str] = &["accuracy", "f1", "f1_macro", "loss"];

impl Results {
    /// The results of `stages` (one pipeline's, in order).
    pub fn collect<'a>(
        registry: &Registry,
        stages: impl IntoIterator<Item = FinishedStage<'a>>,
    ) -> anyhow::Result<Results> {
        let mut results = Results::default();
        for stage in stages {
            let (Some(kind), Some(dir)) = (registry.get(stage.kind), stage.out_dir) else {
                continue;
            };
            if kind.outputs().contains(&Output::Evaluation) {
                let splits = read_scores(dir)?;
                results.scores.push(StageScores {
                    stage: stage.name.to_string(),
                    splits: splits
                        .into_iter()
                        .map(|(split, scores)| (split, scores.metrics))
                        .collect(),
                });
            }
            for (what, file) in kind.headline_files() {
                let path = dir.join(file);
                if path.exists() {
                    results.files.push(HeadlineFile {
                        what: what.to_string(),
                        stage: stage.name.to_string(),
                        path,
                    });
                }
            }
        }
        Ok(results)
    }

    /// Whether there is nothing to show.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty() && self.files.is_empty()
    }

    /// The lines a run ends with: a short score table per evaluating stage,
    /// then the files.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for scores in &self.scores {
            let mut columns = scores.columns(Some(HEADLINE));
            if columns.iter().any(|c| c == "f1") {
                columns.retain(|c| c != "f1_macro");
            }
            let mut rows = vec![
                std::iter::once(format!("{}:", scores.stage))
                    .chain(columns.clone())
                    .collect(),
            ];
            for (split, metrics) in &scores.splits {
                let mut row = vec![format!("  {split}")];
                row.extend(
                    columns
                        .iter()
                        .map(|c| metrics.get(c).map_or_else(|| "-".into(), |&v| fmt(v))),
                );
                rows.push(row);
            }
            lines.extend(aligned(&rows));
        }
        let width = self.files.iter().map(|f| f.what.len()).max().unwrap_or(0) + 1;
        for file in &self.files {
            lines.push(format!(
                "{:<width$}  {}",
                format!("{}:", file.what),
                file.path.display()
            ));
        }
        lines
    }

    /// Every score as `<stage>.<split>.<metric>` (the stage left out when
    /// there is one evaluating stage).
    pub fn flat(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for scores in &self.scores {
            for (split, metrics) in &scores.splits {
                for (name, &value) in metrics {
                    let key = if self.scores.len() == 1 {
                        format!("{split}.{name}")
                    } else {
                        format!("{}.{split}.{name}", scores.stage)
                    };
                    out.insert(key, value);
                }
            }
        }
        out
    }
}

impl StageScores {
    /// The metric names over every split, sorted; only those of `keep`
    /// (in its order) when given.
    pub fn columns(&self, keep: Option<&[&str]>) -> Vec<String> {
        let mut all: Vec<String> = self.splits.values().flat_map(|m| m.keys().cloned()).collect();
        all.sort();
        all.dedup();
        match keep {
            Some(keep) => keep
                .iter()
                .filter(|k| all.iter().any(|a| a == *k))
                .map(|k| k.to_string())
                .collect(),
            None => all,
        }
    }
}

/// The per-split scores an [`Output::Evaluation`] holds.
fn read_scores(dir: &Path) -> anyhow::Result<BTreeMap<String, SplitScores>> {
    let path = dir.join(METRICS_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} does not parse", path.display()))
}

/// Rows as left-aligned columns, two spaces apart.
pub fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let _ = write!(line, "{cell:<width$}  ");
            }
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_a_table_of_headline_metrics_then_the_files() {
        let results = Results {
            scores: vec![StageScores {
                stage: "evaluate".into(),
                splits: [
                    (
                        "test".to_string(),
                        [("accuracy".to_string(), 0.75), ("recall".to_string(), 0.5)].into(),
                    ),
                    ("validation".to_string(), [("accuracy".to_string(), 0.8)].into()),
                ]
                .into(),
            }],
            files: vec![HeadlineFile {
                what: "report".into(),
                stage: "report".into(),
                path: PathBuf::from("a/report.html"),
            }],
        };
        assert_eq!(
            results.summary(),
            [
                "evaluate:     accuracy",
                "  test        0.7500",
                "  validation  0.8000",
                "report:  a/report.html"
            ]
        );
        assert_eq!(results.flat()["validation.accuracy"], 0.8);
    }
}
