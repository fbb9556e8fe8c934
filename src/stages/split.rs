//! `split`: carves a validation split out of another split, by fraction or
//! count, optionally stratified by label; rows keep their order.

use polars::prelude::BooleanChunked;
use serde::{Deserialize, Serialize};

use crate::data::rng;
use crate::data::table::{self, TableMeta};
use crate::stage::{Invalid, Output, Stage, StageContext, StageOutcome};

/// The `split` stage kind.
pub struct Split;

/// `kind: split`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The split to carve from (default `train`).
    #[serde(default = "default_from")]
    pub from: String,
    /// The new split's name (default `validation`).
    #[serde(default = "default_to")]
    pub to: String,
    /// The share of rows that move, in (0, 1).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Or the number of rows that move.
    #[serde(default)]
    pub count: Option<usize>,
    /// Keep each label's share equal in both splits (default true).
    #[serde(default = "super::enabled")]
    pub stratify: bool,
}

fn default_from() -> String {
    "train".into()
}

fn default_to() -> String {
    "validation".into()
}

impl Stage for Split {
    type Config = SplitConfig;
    const KIND: &'static str = "split";
    const OUTPUTS: &'static [Output] = &[Output::Table];
    const VERSION: u32 = 2;

    fn validate(&self, config: &SplitConfig) -> Result<(), Invalid> {
        match (config.fraction, config.count) {
            (Some(_), Some(_)) => Err(Invalid::at("count", "cannot be given together with `fraction`")),
            (None, None) => Err(Invalid::at("fraction", "or `count` is required, e.g. fraction: 0.1")),
            (Some(f), None) if !(f > 0.0 && f < 1.0) => Err(Invalid::at("fraction", "must be between 0 and 1")),
            (None, Some(0)) => Err(Invalid::at("count", "must be at least 1")),
            _ if config.from == config.to => Err(Invalid::at("to", "must differ from `from`")),
            _ => Ok(()),
        }
    }

    fn uses_seed(&self, _config: &SplitConfig) -> bool {
        true
    }

    fn run(&self, config: &SplitConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let input = table::table_input(ctx)?;
        let mut meta = TableMeta::read(&input.dir)?;
        anyhow::ensure!(
            meta.splits.contains(&config.from),
            "`from`: there is no split `{}`; the splits are {}",
            config.from,
            meta.splits.join(", ")
        );
        anyhow::ensure!(
            !meta.splits.contains(&config.to),
            "`to`: split `{}` exists already",
            config.to
        );
        let df = table::read_split(&input.dir, &config.from)?;
        let labels = table::labels(&df)?;
        let rows = labels.len();
        let wanted = match (config.fraction, config.count) {
            (Some(f), _) => (rows as f64 * f).round() as usize,
            (_, Some(c)) => c,
            _ => unreachable!("validated"),
        };
        anyhow::ensure!(
            wanted > 0 && wanted < rows,
            "split `{}` has {rows} rows: cannot move {wanted} of them to `{}`",
            config.from,
            config.to
        );
        let mut random = rng::stream(ctx.seed, &format!("split/{}/{}", config.from, config.to));
        let mut moved = vec![false; rows];
        let groups: Vec<Vec<usize>> = if config.stratify {
            table::label_counts(&labels)
                .into_iter()
                .map(|(label, _)| (0..rows).filter(|&r| labels[r] == label).collect())
                .collect()
        } else {
            vec![(0..rows).collect()]
        };
        // Largest-remainder allocation of `wanted` over the groups, so the total is exact.
        let exact: Vec<f64> = groups
            .iter()
            .map(|g| g.len() as f64 * wanted as f64 / rows as f64)
            .collect();
        let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut by_remainder: Vec<usize> = (0..groups.len()).collect();
        by_remainder.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
        for &g in by_remainder.iter().take(wanted - take.iter().sum::<usize>()) {
            take[g] += 1;
        }
        for (group, count) in groups.iter().zip(take) {
            let mut members = group.clone();
            rng::shuffle(&mut random, &mut members);
            for &row in &members[..count] {
                moved[row] = true;
            }
        }
        let mask: BooleanChunked = moved.iter().map(|&m| Some(m)).collect();
        let keep: BooleanChunked = moved.iter().map(|&m| Some(!m)).collect();
        let mut outcome = StageOutcome::default();
        for split in &meta.splits {
            if split != &config.from {
                table::link_split(&input.dir, ctx.out_dir, split)?;
            }
        }
        for (name, selector) in [(&config.from, &keep), (&config.to, &mask)] {
            let mut part = df.filter(selector)?;
            table::split_metrics(name, &table::labels(&part)?, &mut outcome.metrics);
            table::write_split(&mut part, ctx.out_dir, name)?;
        }
        let position = meta.splits.iter().position(|s| s == &config.from).expect("checked") + 1;
        meta.splits.insert(position, config.to.clone());
        meta.write(ctx.out_dir)?;
        Ok(outcome)
    }
}
