//! `pipeline metrics FILE`: the evaluation scores of a pipeline (or of every
//! trial of a sweep) read back from the store, as a table, `--json`,
//! `--csv` or `--md`; `--diff` compares them with the lock file's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use super::{EXIT_FAILED, Env, Target, UsageError};
use crate::dag::Survey;
use crate::results::{FinishedStage, Results, aligned};
use crate::spec::{Pipeline, is_sweep, lock_path};
use crate::stage::Output;
use crate::store::{LockFile, Lookup};

/// How the table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated values, full precision.
    Csv,
    /// A Markdown table.
    Markdown,
}

/// One pipeline's results: the pipeline alone, or one trial of a sweep.
struct Part {
    /// `trial-<id>` for a sweep's trial.
    trial: Option<String>,
    /// What the store holds for its current keys.
    results: Results,
    /// Per evaluating stage: its name and the current entry's flat metrics, if any.
    current: Vec<(String, Option<BTreeMap<String, f64>>)>,
}

pub(super) fn metrics(env: &Env, target: &Target, format: Format, diff: bool) -> anyhow::Result<u8> {
    let (name, parts) = if is_sweep(&target.file) {
        let sweep = env.sweep(target)?;
        let parts = sweep
            .trials
            .iter()
            .map(|trial| part(env, Some(trial.label()), &trial.pipeline))
            .collect::<anyhow::Result<Vec<_>>>()?;
        (sweep.name, parts)
    } else {
        let pipeline = env.load(target)?;
        let name = pipeline.name.clone();
        (name, vec![part(env, None, &pipeline)?])
    };
    env.store.save_state();
    if parts.iter().all(|p| p.current.is_empty()) {
        return Err(UsageError(format!(
            "{} has no stage that evaluates a model (an `evaluate` stage); there are no metrics to show",
            target.file.display()
        ))
        .into());
    }
    let trials = parts.iter().any(|p| p.trial.is_some());
    let missing: Vec<&Part> = parts
        .iter()
        .filter(|p| p.current.iter().any(|(_, m)| m.is_none()))
        .collect();
    let (header, rows) = if diff {
        let lock_file = lock_path(&target.file);
        let Some(lock) = LockFile::read(&lock_file)? else {
            return Err(UsageError(format!(
                "there is no lock file {} to compare with: `pipeline run {}` writes it",
                lock_file.display(),
                target.file.display()
            ))
            .into());
        };
        diff_rows(&parts, &lock, trials)
    } else {
        score_rows(&parts, trials)
    };
    if env.json {
        let body = if diff {
            let rows: Vec<_> = rows
                .iter()
                .map(|r| {
                    header
                        .iter()
                        .cloned()
                        .zip(r.iter().map(|c| serde_json::Value::from(c.as_str())))
                        .collect::<serde_json::Map<_, _>>()
                })
                .collect();
            json!({ "name": name, "diff": rows })
        } else {
            let parts: Vec<_> = parts
                .iter()
                .map(|p| json!({ "trial": p.trial, "results": p.results }))
                .collect();
            json!({ "name": name, "parts": parts })
        };
        env.print_json(&body);
    } else {
        print!("{}", render(format, &header, &rows));
    }
    for part in &missing {
        eprintln!(
            "{}not in the store for the current configuration: run `pipeline run {}`",
            part.trial.as_ref().map_or_else(String::new, |t| format!("{t}: ")),
            target.file.display()
        );
    }
    Ok(if missing.is_empty() { 0 } else { EXIT_FAILED })
}

/// Looks up `pipeline`'s current stage keys in the store.
fn part(env: &Env, trial: Option<String>, pipeline: &Pipeline) -> anyhow::Result<Part> {
    let (graph, nodes) = env.graph(pipeline)?;
    let mut surveys: Vec<Option<Survey>> = graph.survey(&env.store).into_iter().map(Some).collect();
    let mut found = Vec::new();
    let mut current = Vec::new();
    for (stage, &node) in pipeline.stages.iter().zip(&nodes) {
        let manifest = match surveys[node].take() {
            Some(Survey::Known(Lookup::Valid(manifest))) => Some(manifest),
            _ => None,
        };
        let evaluates = env
            .registry
            .get(&stage.kind)
            .is_some_and(|k| k.outputs().contains(&Output::Evaluation));
        if evaluates {
            current.push((stage.name.clone(), manifest.as_ref().map(|m| m.metrics.clone())));
        }
        found.push(manifest.map(|m| env.store.out_dir(&stage.kind, &m.key)));
    }
    let results = Results::collect(
        env.registry,
        pipeline.stages.iter().zip(&found).map(|(stage, dir)| FinishedStage {
            name: &stage.name,
            kind: &stage.kind,
            out_dir: dir.as_deref(),
        }),
    )?;
    Ok(Part {
        trial,
        results,
        current,
    })
}

/// Rows `[trial,] [stage,] split, metrics...`.
fn score_rows(parts: &[Part], trials: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let stages = parts.iter().any(|p| p.results.scores.len() > 1);
    let mut columns: Vec<String> = parts
        .iter()
        .flat_map(|p| p.results.scores.iter().flat_map(|s| s.columns(None)))
        .collect();
    columns.sort();
    columns.dedup();
    let mut header = Vec::new();
    if trials {
        header.push("trial".to_string());
    }
    if stages {
        header.push("stage".to_string());
    }
    header.push("split".to_string());
    header.extend(columns.iter().cloned());
    let mut rows = Vec::new();
    for part in parts {
        for scores in &part.results.scores {
            for (split, metrics) in &scores.splits {
                let mut row = Vec::new();
                if let Some(trial) = &part.trial {
                    row.push(trial.clone());
                }
                if stages {
                    row.push(scores.stage.clone());
                }
                row.push(split.clone());
                row.extend(
                    columns
                        .iter()
                        .map(|c| metrics.get(c).map_or_else(String::new, |v| v.to_string())),
                );
                rows.push(row);
            }
        }
    }
    (header, rows)
}

/// Rows `[trial,] stage, metric, lock, now, change` for every metric of an
/// evaluating stage in the lock or in the store.
fn diff_rows(parts: &[Part], lock: &LockFile, trials: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = Vec::new();
    if trials {
        header.push("trial".to_string());
    }
    header.extend(["stage", "metric", "lock", "now", "change"].map(String::from));
    let mut rows = Vec::new();
    for part in parts {
        for (stage, now) in &part.current {
            let locked_name = match &part.trial {
                Some(trial) => format!("{trial}/{stage}"),
                None => stage.clone(),
            };
            let before = lock.stages.get(&locked_name).map(|s| &s.metrics);
            let mut names: Vec<&String> = before.into_iter().flat_map(|m| m.keys()).collect();
            names.extend(now.iter().flat_map(|m| m.keys()));
            names.sort();
            names.dedup();
            for name in names {
                let old = before.and_then(|m| m.get(name)).copied();
                let new = now.as_ref().and_then(|m| m.get(name)).copied();
                let change = match (old, new) {
                    (Some(a), Some(b)) => format!("{:+}", b - a),
                    _ => String::new(),
                };
                let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
                let mut row = Vec::new();
                if let Some(trial) = &part.trial {
                    row.push(trial.clone());
                }
                row.extend([stage.clone(), name.clone(), show(old), show(new), change]);
                rows.push(row);
            }
        }
    }
    (header, rows)
}

/// The rows in `format`; numbers shown to 4 decimals in a table, in full otherwise.
fn render(format: Format, header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    match format {
        Format::Table => {
            let short = |cell: &String| match cell.parse::<f64>() {
                Ok(v) if cell.contains('.') => {
                    let text = crate::report::fmt(v);
                    if cell.starts_with('+') && v >= 0.0 {
                        format!("+{text}")
                    } else {
                        text
                    }
                }
                _ => cell.clone(),
            };
            let mut table = vec![header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>()];
            table.extend(rows.iter().map(|r| r.iter().map(short).collect()));
            for line in aligned(&table) {
                let _ = writeln!(out, "{line}");
            }
        }
        Format::Csv => {
            let quote = |cell: &String| {
                if cell.contains([',', '"', '\n']) {
                    format!("\"{}\"", cell.replace('"', "\"\""))
                } else {
                    cell.clone()
                }
            };
            for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
                let _ = writeln!(out, "{}", row.iter().map(quote).collect::<Vec<_>>().join(","));
            }
        }
        Format::Markdown => {
            let escape = |row: &[String]| -> Vec<String> { row.iter().map(|c| c.replace('|', "\\|")).collect() };
            let header = escape(header);
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            out.push_str(&crate::report::md_table(&header, rows.iter().map(|r| escape(r))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_quote_and_escape_their_cells() {
        let header = vec!["split".to_string(), "accuracy".to_string()];
        let rows = vec![vec!["a,b".to_string(), "0.123456".to_string()]];
        assert_eq!(
            render(Format::Csv, &header, &rows),
            "split,accuracy\n\"a,b\",0.123456\n"
        );
        assert_eq!(
            render(Format::Markdown, &header, &rows),
            "| split | accuracy |\n|---|---|\n| a,b | 0.123456 |\n"
        );
        assert_eq!(
            render(Format::Table, &header, &rows),
            "SPLIT  ACCURACY\na,b    0.1235\n"
        );
    }
}
