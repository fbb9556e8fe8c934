//! `vectorize`: token ids to model-ready tensors: each split padded on the
//! chosen side into a safetensors file with true lengths, labels and, for
//! sentence pairs, segment ids; and the
//! batching settings (size, dynamic padding, bucketing) for the train stage.

use serde::{Deserialize, Serialize};

use polars::prelude::DataFrame;

use super::tokenize::{TOKENS_FILE, TYPE_IDS, TokensMeta};
use crate::data::batches::{Batching, Side, SplitTensors};
use crate::data::table::{self, TableMeta};
use crate::stage::{Invalid, Output, Stage, StageContext, StageOutcome};

/// The `vectorize` stage kind.
pub struct Vectorize;

/// `kind: vectorize`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorizeConfig {
    /// Rows per batch (default 32).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `right` (default) or `left`.
    #[serde(default)]
    pub padding: Side,
    /// The padding id (default: the tokenizer's).
    #[serde(default)]
    pub pad_id: Option<u32>,
    /// Cut rows to at most this many tokens (default: as tokenized).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Pad each batch only to its longest row (default true), like `DataCollatorWithPadding`.
    #[serde(default = "super::enabled")]
    pub dynamic_padding: bool,
    /// Sort rows by length within windows of this many batches (off by default).
    #[serde(default)]
    pub bucket: Option<usize>,
    /// Drop a last, smaller batch (default false).
    #[serde(default)]
    pub drop_last: bool,
}

fn default_batch_size() -> usize {
    32
}

/// The lists of column `name` of one split, each cut to `max_length`.
fn id_lists(df: &DataFrame, name: &str, split: &str, max_length: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let lists = df.column(name)?.list()?;
    let mut rows: Vec<Vec<u32>> = Vec::with_capacity(df.height());
    for row in lists.series_iter() {
        let row = row.ok_or_else(|| anyhow::anyhow!("split `{split}` has a row without `{name}`"))?;
        let mut values: Vec<u32> = row.u32()?.no_null_iter().collect();
        values.truncate(max_length);
        rows.push(values);
    }
    Ok(rows)
}

impl Stage for Vectorize {
    type Config = VectorizeConfig;
    const KIND: &'static str = "vectorize";
    const OUTPUTS: &'static [Output] = &[Output::Vectors];
    const VERSION: u32 = 1;

    fn validate(&self, config: &VectorizeConfig) -> Result<(), Invalid> {
        if config.batch_size == 0 {
            return Err(Invalid::at("batch_size", "must be at least 1"));
        }
        if config.max_length == Some(0) {
            return Err(Invalid::at("max_length", "must be at least 1"));
        }
        if config.bucket == Some(0) {
            return Err(Invalid::at("bucket", "must be at least 1 (batches per window)"));
        }
        Ok(())
    }

    fn run(&self, config: &VectorizeConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let input = ctx.providing(Output::Tokens)?;
        let meta = TableMeta::read(&input.dir)?;
        let tokens = TokensMeta::read(&input.dir)?;
        let pad_id = config.pad_id.or(tokens.pad_id).ok_or_else(|| {
            anyhow::anyhow!("`pad_id`: the tokenizer defines no padding token; set `pad_id` explicitly")
        })?;
        let max_length = config.max_length.unwrap_or(tokens.max_length);
        let mut outcome = StageOutcome::default();
        for split in &meta.splits {
            ctx.check_cancelled()?;
            let df = table::read_split(&input.dir, split)?;
            let rows = id_lists(&df, "ids", split, max_length)?;
            let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
            let mut tensors = SplitTensors::pad(&refs, table::labels(&df)?, config.padding, pad_id);
            if meta.pairs {
                anyhow::ensure!(
                    df.column(TYPE_IDS).is_ok(),
                    "the `{}` entry holds sentence pairs without segment ids (it was made by an older \
                     version); drop it with `pipeline clean FILE --stages {}` and run again",
                    input.name,
                    input.name
                );
                let types = id_lists(&df, TYPE_IDS, split, max_length)?;
                let refs: Vec<&[u32]> = types.iter().map(Vec::as_slice).collect();
                tensors.type_ids = Some(SplitTensors::pad(&refs, Vec::new(), config.padding, 0).ids);
            }
            tensors.save(&ctx.out_dir.join(format!("{split}.safetensors")))?;
            outcome.metrics.insert(format!("width.{split}"), tensors.width as f64);
        }
        let batching = Batching {
            batch_size: config.batch_size,
            padding: config.padding,
            pad_id,
            dynamic_padding: config.dynamic_padding,
            bucket: config.bucket,
            drop_last: config.drop_last,
        };
        std::fs::write(ctx.out_dir.join("batching.json"), serde_json::to_vec_pretty(&batching)?)?;
        std::fs::write(ctx.out_dir.join(TOKENS_FILE), serde_json::to_vec_pretty(&tokens)?)?;
        meta.write(ctx.out_dir)?;
        Ok(outcome)
    }
}
