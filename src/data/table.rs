//! Tables between stages: one parquet file per split plus `table.json`,
//! read and written with polars.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use polars::prelude::{
    Column, CsvReadOptions, DataFrame, DataType, JsonFormat, JsonReader, ParquetCompression, ParquetReader,
    ParquetWriter, SerReader, StatisticsOptions,
};
use serde::{Deserialize, Serialize};

use crate::stage::{Output, StageContext, StageInput};

/// The file that describes a table stage's output.
pub const META_FILE: &str = "table.json";

/// `table.json`: the splits, in order, and the label names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableMeta {
    /// Split names, each stored as `<split>.parquet`.
    pub splits: Vec<String>,
    /// Label names by id, when the labels were strings; `None` for integer labels.
    pub label_names: Option<Vec<String>>,
    /// Whether rows hold a second text (`text_pair`), as in sentence-pair tasks.
    pub pairs: bool,
}

impl TableMeta {
    /// Reads `table.json` from a stage output.
    pub fn read(dir: &Path) -> anyhow::Result<TableMeta> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Writes `table.json` into a stage output.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join(META_FILE), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// The parquet file of a split.
    pub fn split_path(dir: &Path, split: &str) -> PathBuf {
        dir.join(format!("{split}.parquet"))
    }
}

/// The one needed stage whose output is a table.
pub fn table_input<'a>(ctx: &'a StageContext) -> anyhow::Result<&'a StageInput> {
    ctx.providing(Output::Table)
}

/// File formats of input tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format named by a file's extension.
    pub fn from_extension(path: &Path) -> anyhow::Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "parquet" | "pq" => Format::Parquet,
            "csv" => Format::Csv,
            "tsv" | "tab" => Format::Tsv,
            "jsonl" | "ndjson" => Format::Jsonl,
            _ => anyhow::bail!(
                "cannot tell the format of {} from its extension; set `format:` to parquet, csv, tsv or jsonl",
                path.display()
            ),
        })
    }
}

/// Reads a whole table.
pub fn read(path: &Path, format: Format) -> anyhow::Result<DataFrame> {
    let context = || format!("cannot read {} as {format:?}", path.display());
    let df = match format {
        Format::Parquet => {
            let file = std::fs::File::open(path).with_context(context)?;
            ParquetReader::new(file).finish().with_context(context)?
        }
        Format::Csv | Format::Tsv => {
            let separator = if format == Format::Tsv { b'\t' } else { b',' };
            CsvReadOptions::default()
                .with_has_header(true)
                .map_parse_options(|p| p.with_separator(separator))
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .with_context(context)?
                .finish()
                .with_context(context)?
        }
        Format::Jsonl => {
            let file = std::fs::File::open(path).with_context(context)?;
            JsonReader::new(file)
                .with_json_format(JsonFormat::JsonLines)
                .finish()
                .with_context(context)?
        }
    };
    Ok(df)
}

/// Reads one split of a table stage's output.
pub fn read_split(dir: &Path, split: &str) -> anyhow::Result<DataFrame> {
    read(&TableMeta::split_path(dir, split), Format::Parquet)
}

/// Writes a split as parquet, byte-for-byte reproducible for equal data.
/// Uncompressed and without statistics: on full IMDB train, zstd made load +
/// shuffle take 0.99 s and LZ4 0.50 s, uncompressed 0.19 s, for 32 MB on
/// disk instead of about 13 MB (`cargo bench --bench data_stages`).
/// Changing what this writes changes the output of every stage that writes
/// tables (load, shuffle, split, tokenize): bump their `VERSION`s with it.
pub fn write_split(df: &mut DataFrame, dir: &Path, split: &str) -> anyhow::Result<()> {
    let path = TableMeta::split_path(dir, split);
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Uncompressed)
        .with_statistics(StatisticsOptions::empty())
        .finish(df)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Passes a split through unchanged (a hard link when possible).
pub fn link_split(from: &Path, to: &Path, split: &str) -> anyhow::Result<()> {
    let (source, target) = (TableMeta::split_path(from, split), TableMeta::split_path(to, split));
    if std::fs::hard_link(&source, &target).is_err() {
        std::fs::copy(&source, &target).with_context(|| format!("cannot copy {}", source.display()))?;
    }
    Ok(())
}

/// The strings of a text column; a missing value is an error naming the row.
pub fn texts<'a>(df: &'a DataFrame, name: &str) -> anyhow::Result<Vec<&'a str>> {
    let column = df.column(name)?.str()?;
    column
        .iter()
        .enumerate()
        .map(|(row, text)| text.ok_or_else(|| anyhow::anyhow!("row {row} has no `{name}`")))
        .collect()
}

/// The labels column as ids.
pub fn labels(df: &DataFrame) -> anyhow::Result<Vec<i64>> {
    integer_labels(df.column("label")?)
}

/// An integer label column as ids; a missing value is an error naming the row.
pub fn integer_labels(column: &Column) -> anyhow::Result<Vec<i64>> {
    let column = column.cast(&DataType::Int64)?;
    column
        .i64()?
        .iter()
        .enumerate()
        .map(|(row, label)| label.ok_or_else(|| anyhow::anyhow!("row {row} has no label in `{}`", column.name())))
        .collect()
}

/// Rows per label, for manifests: `(label id, count)` sorted by id.
pub fn label_counts(labels: &[i64]) -> Vec<(i64, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for &label in labels {
        *counts.entry(label).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// Metrics `rows.<split>` and `rows.<split>.label_<id>` for a split.
pub fn split_metrics(split: &str, labels: &[i64], metrics: &mut std::collections::BTreeMap<String, f64>) {
    metrics.insert(format!("rows.{split}"), labels.len() as f64);
    for (label, count) in label_counts(labels) {
        metrics.insert(format!("rows.{split}.label_{label}"), count as f64);
    }
}
