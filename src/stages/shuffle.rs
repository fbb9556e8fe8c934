//! `shuffle`: permutes the rows of table splits with a seeded, thread-count
//! independent permutation, optionally keeping only the first rows of each
//! (a seeded random sample).

use polars::prelude::{IdxCa, IdxSize};
use serde::{Deserialize, Serialize};

use crate::data::rng;
use crate::data::table::{self, TableMeta};
use crate::stage::{Invalid, Output, Stage, StageContext, StageOutcome};

/// The `shuffle` stage kind.
pub struct Shuffle;

/// `kind: shuffle`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShuffleConfig {
    /// Splits to shuffle (default: all); the others pass through unchanged.
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    /// Keep at most this many rows of each shuffled split: a seeded random sample
    /// (default: all rows). Unlike `load`'s `limit`, it does not depend on the files' order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Stage for Shuffle {
    type Config = ShuffleConfig;
    const KIND: &'static str = "shuffle";
    const OUTPUTS: &'static [Output] = &[Output::Table];
    const VERSION: u32 = 2;

    fn uses_seed(&self, _config: &ShuffleConfig) -> bool {
        true
    }

    fn validate(&self, config: &ShuffleConfig) -> Result<(), Invalid> {
        if config.limit == Some(0) {
            return Err(Invalid::at("limit", "must be at least 1"));
        }
        Ok(())
    }

    fn run(&self, config: &ShuffleConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let input = table::table_input(ctx)?;
        let meta = TableMeta::read(&input.dir)?;
        if let Some(wanted) = &config.splits
            && let Some(unknown) = wanted.iter().find(|s| !meta.splits.contains(s))
        {
            anyhow::bail!(
                "`splits`: there is no split `{unknown}`; the splits are {}",
                meta.splits.join(", ")
            );
        }
        let mut outcome = StageOutcome::default();
        for split in &meta.splits {
            ctx.check_cancelled()?;
            if config.splits.as_ref().is_some_and(|s| !s.contains(split)) {
                table::link_split(&input.dir, ctx.out_dir, split)?;
                continue;
            }
            let df = table::read_split(&input.dir, split)?;
            let mut order = rng::permutation(&mut rng::stream(ctx.seed, &format!("shuffle/{split}")), df.height());
            order.truncate(config.limit.unwrap_or(usize::MAX));
            let indices = IdxCa::from_vec("order".into(), order.into_iter().map(|i| i as IdxSize).collect());
            let mut shuffled = df.take(&indices)?;
            table::write_split(&mut shuffled, ctx.out_dir, split)?;
            outcome
                .metrics
                .insert(format!("rows.{split}"), shuffled.height() as f64);
        }
        meta.write(ctx.out_dir)?;
        Ok(outcome)
    }
}
