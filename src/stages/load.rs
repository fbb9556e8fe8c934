//! `load`: reads the downloaded tables (parquet, CSV/TSV, JSON Lines) into
//! one normalized parquet file per split: `text`, optional `text_pair`, and
//! `label` as integer ids (string labels are mapped, the mapping recorded).

use std::path::PathBuf;

use anyhow::Context as _;
use indexmap::IndexMap;
use polars::prelude::{BooleanChunked, Column, DataFrame, DataType};
use serde::{Deserialize, Serialize};

use crate::data::table::{self, Format, TableMeta};
use crate::spec::did_you_mean;
use crate::stage::{Invalid, Output, Stage, StageContext, StageOutcome};

/// The `load` stage kind.
pub struct Load;

/// `kind: load`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Split name -> file in the output of a needed stage.
    pub splits: IndexMap<String, String>,
    /// The files' format (default: from the extension).
    #[serde(default)]
    pub format: Option<Format>,
    /// Which columns hold the text, the optional second text and the label.
    #[serde(default)]
    pub columns: Columns,
    /// Label names in id order, for string labels (default: sorted).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Conditions every kept row meets, e.g. `label != -1` (column op value).
    #[serde(default)]
    pub filter: Vec<String>,
    /// Keep at most this many rows per split (the first ones), for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `columns:` of `load`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// The text column (default `text`).
    #[serde(default = "default_text")]
    pub text: String,
    /// The second text of sentence-pair tasks.
    #[serde(default)]
    pub text_pair: Option<String>,
    /// The label column (default `label`).
    #[serde(default = "default_label")]
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            text: default_text(),
            text_pair: None,
            label: default_label(),
        }
    }
}

fn default_text() -> String {
    "text".into()
}

fn default_label() -> String {
    "label".into()
}

/// One `filter:` condition.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    column: String,
    op: String,
    value: Literal,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
}

const OPERATORS: [&str; 6] = ["==", "!=", "<=", ">=", "<", ">"];

impl Condition {
    fn parse(text: &str) -> Result<Condition, String> {
        let usage = || format!("`{text}` is not a condition: write COLUMN OP VALUE with OP one of == != < <= > >=");
        let (at, op) = OPERATORS
            .iter()
            .filter_map(|op| text.find(op).map(|at| (at, *op)))
            .min_by_key(|(at, op)| (*at, usize::MAX - op.len()))
            .ok_or_else(usage)?;
        let column = text[..at].trim();
        let value = text[at + op.len()..].trim();
        if column.is_empty() || value.is_empty() {
            return Err(usage());
        }
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')));
        let value = match (unquoted, value.parse::<f64>()) {
            (Some(text), _) => Literal::Text(text.to_string()),
            (None, Ok(number)) => Literal::Number(number),
            (None, Err(_)) => return Err(format!("`{value}` in `{text}` is neither a number nor a quoted string")),
        };
        Ok(Condition {
            column: column.to_string(),
            op: op.to_string(),
            value,
        })
    }

    fn holds<T: PartialOrd>(&self, left: &T, right: &T) -> bool {
        match self.op.as_str() {
            "==" => left == right,
            "!=" => left != right,
            "<" => left < right,
            "<=" => left <= right,
            ">" => left > right,
            _ => left >= right,
        }
    }

    /// The rows of `df` that meet the condition.
    fn mask(&self, df: &DataFrame, file: &str) -> anyhow::Result<BooleanChunked> {
        let column = column(df, &self.column, file, "filter")?;
        let mask: BooleanChunked = match &self.value {
            Literal::Number(n) => {
                let values = column
                    .cast(&DataType::Float64)
                    .with_context(|| format!("filter `{}`: column `{}` is not numeric", self.column, self.column))?;
                values
                    .f64()?
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| self.holds(&v, n))))
                    .collect()
            }
            Literal::Text(t) => {
                let values = column.str().with_context(|| {
                    format!(
                        "filter `{}`: column `{}` does not hold strings",
                        self.column, self.column
                    )
                })?;
                values
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| self.holds(&v, &t.as_str()))))
                    .collect()
            }
        };
        Ok(mask)
    }
}

/// A column by name, or an error at `key` that lists the columns that exist
/// and suggests the closest.
fn column<'a>(df: &'a DataFrame, name: &str, file: &str, key: &str) -> anyhow::Result<&'a Column> {
    df.column(name).map_err(|_| {
        let names: Vec<String> = df.get_column_names().iter().map(|n| n.to_string()).collect();
        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        let invalid = Invalid::at(
            key,
            format!("{file} has no column `{name}`; its columns are {}", quoted.join(", ")),
        );
        let invalid = match did_you_mean(name, &names) {
            Some(close) => invalid.with_help(format!("did you mean `{close}`?")),
            None => invalid,
        };
        invalid.into()
    })
}

/// The file a split names, among the outputs of the stages this one needs;
/// an error at `splits.<split>` listing what they produced when none has it.
fn split_file(ctx: &StageContext, split: &str, file: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = ctx.inputs.iter().map(|i| i.dir.join(file)).find(|p| p.exists()) {
        return Ok(path);
    }
    let mut produced: Vec<String> = Vec::new();
    for input in ctx.inputs {
        let mut names: Vec<String> = std::fs::read_dir(&input.dir)
            .map(|dir| {
                dir.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        produced.extend(names);
    }
    let stages: Vec<&str> = ctx.inputs.iter().map(|i| i.name.as_str()).collect();
    let message = match stages.as_slice() {
        [] => format!("this stage needs no stage, so nothing produced {file}; add the download stage to `needs`"),
        _ => format!(
            "no stage this one needs ({}) produced {file}; they produced {}",
            stages.join(", "),
            if produced.is_empty() {
                "no files".to_string()
            } else {
                produced.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
            }
        ),
    };
    let invalid = Invalid::at(&format!("splits.{split}"), message);
    let invalid = match did_you_mean(file, &produced) {
        Some(close) => invalid.with_help(format!("did you mean `{close}`?")),
        None => invalid,
    };
    Err(invalid.into())
}

impl Stage for Load {
    type Config = LoadConfig;
    const KIND: &'static str = "load";
    const OUTPUTS: &'static [Output] = &[Output::Table];
    const VERSION: u32 = 2;

    fn validate(&self, config: &LoadConfig) -> Result<(), Invalid> {
        if config.splits.is_empty() {
            return Err(Invalid::at(
                "splits",
                "must name at least one split, e.g. {train: train.parquet}",
            ));
        }
        for name in config.splits.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(Invalid::at(
                    "splits",
                    format!("split name `{name}` may only use letters, digits, _ and -"),
                ));
            }
        }
        for (i, condition) in config.filter.iter().enumerate() {
            Condition::parse(condition).map_err(|e| Invalid::at(&format!("filter.{i}"), e))?;
        }
        if config.limit == Some(0) {
            return Err(Invalid::at("limit", "must be at least 1"));
        }
        Ok(())
    }

    fn run(&self, config: &LoadConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let conditions: Vec<Condition> = config
            .filter
            .iter()
            .map(|c| Condition::parse(c).expect("validated"))
            .collect();
        let mut frames = Vec::new();
        for (split, file) in &config.splits {
            ctx.check_cancelled()?;
            let path = split_file(ctx, split, file)?;
            let format = match config.format {
                Some(format) => format,
                None => Format::from_extension(&path)?,
            };
            let mut df = table::read(&path, format)?;
            for condition in &conditions {
                df = df.filter(&condition.mask(&df, file)?)?;
            }
            if let Some(limit) = config.limit {
                df = df.head(Some(limit));
            }
            anyhow::ensure!(
                df.height() > 0,
                "split `{split}` ({file}) is empty{}",
                if conditions.is_empty() { "" } else { " after `filter`" }
            );
            let mut selected = vec![column(&df, &config.columns.text, file, "columns.text")?.clone()];
            if let Some(pair) = &config.columns.text_pair {
                selected.push(column(&df, pair, file, "columns.text_pair")?.clone());
            }
            for text in &selected {
                anyhow::ensure!(
                    matches!(text.dtype(), DataType::String),
                    "column `{}` of {file} holds {} values, not text",
                    text.name(),
                    text.dtype()
                );
            }
            let label = column(&df, &config.columns.label, file, "columns.label")?.clone();
            frames.push((split.clone(), selected, label, file.clone()));
        }
        let label_names = label_mapping(config, &frames)?;
        let mut outcome = StageOutcome::default();
        for (split, texts, label, file) in frames {
            let ids: Vec<i64> = match &label_names {
                None => table::integer_labels(&label).with_context(|| format!("in {file}"))?,
                Some(names) => label
                    .str()?
                    .iter()
                    .enumerate()
                    .map(|(row, v)| {
                        v.and_then(|v| names.iter().position(|n| n == v))
                            .map(|p| p as i64)
                            .ok_or_else(|| {
                                anyhow::anyhow!("row {row} of {file} has no usable label in `{}`", config.columns.label)
                            })
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            let mut columns = vec![texts[0].clone().with_name("text".into())];
            if texts.len() > 1 {
                columns.push(texts[1].clone().with_name("text_pair".into()));
            }
            columns.push(Column::new("label".into(), &ids));
            let mut df = DataFrame::new_infer_height(columns)?;
            table::write_split(&mut df, ctx.out_dir, &split)?;
            table::split_metrics(&split, &ids, &mut outcome.metrics);
        }
        TableMeta {
            splits: config.splits.keys().cloned().collect(),
            label_names,
            pairs: config.columns.text_pair.is_some(),
        }
        .write(ctx.out_dir)?;
        Ok(outcome)
    }
}

/// Label names when labels are strings (given, or sorted unique values);
/// `None` for integer labels; an error for any other type.
fn label_mapping(
    config: &LoadConfig,
    frames: &[(String, Vec<Column>, Column, String)],
) -> anyhow::Result<Option<Vec<String>>> {
    let (_, _, first, file) = &frames[0];
    match first.dtype() {
        dtype if dtype.is_integer() => {
            anyhow::ensure!(
                config.labels.is_none(),
                "`labels` names string labels, but `{}` holds integers",
                first.name()
            );
            for (_, _, label, file) in frames {
                anyhow::ensure!(
                    label.dtype().is_integer(),
                    "the label column of {file} holds {}, not integers",
                    label.dtype()
                );
            }
            Ok(None)
        }
        DataType::String => {
            let mut seen = std::collections::BTreeSet::new();
            for (_, _, label, file) in frames {
                let values = label
                    .str()
                    .with_context(|| format!("the label column of {file} does not hold strings"))?;
                seen.extend(values.iter().flatten().map(str::to_string));
            }
            match &config.labels {
                Some(names) => {
                    if let Some(unknown) = seen.iter().find(|v| !names.contains(v)) {
                        anyhow::bail!("label `{unknown}` is not listed in `labels` ({})", names.join(", "));
                    }
                    Ok(Some(names.clone()))
                }
                None => Ok(Some(seen.into_iter().collect())),
            }
        }
        other => anyhow::bail!(
            "the label column `{}` of {file} holds {other} values; labels must be integers or strings",
            first.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        let c = Condition::parse("label != -1").unwrap();
        assert_eq!(
            (c.column.as_str(), c.op.as_str(), c.value),
            ("label", "!=", Literal::Number(-1.0))
        );
        let c = Condition::parse("split=='train'").unwrap();
        assert_eq!(c.value, Literal::Text("train".into()));
        let c = Condition::parse("rating >= 7").unwrap();
        assert_eq!(c.op, ">=");
        assert!(Condition::parse("label").is_err());
        assert!(Condition::parse("label == neg").is_err());
    }
}
