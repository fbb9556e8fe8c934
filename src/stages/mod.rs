//! The built-in stage kinds, one file each.

mod download;
mod encode;
mod evaluate;
mod load;
mod report;
mod shuffle;
mod split;
mod tokenize;
mod train;
mod vectorize;

pub use download::{Download, DownloadConfig};
pub use encode::{Encode, EncodeConfig};
pub use evaluate::{Evaluate, EvaluateConfig, METRICS_FILE};
pub use load::{Load, LoadConfig};
pub use report::{Report, ReportConfig};
pub use shuffle::{Shuffle, ShuffleConfig};
pub use split::{Split, SplitConfig};
pub use tokenize::{Tokenize, TokenizeConfig, TokensMeta};
pub use train::{Train, TrainConfig, TrainInfo, Vectorized};
pub use vectorize::{Vectorize, VectorizeConfig};

use crate::stage::Registry;

/// The serde default of switches that are on unless turned off.
fn enabled() -> bool {
    true
}

/// The stage kinds that ship with `pipeline`.
pub fn builtin() -> Registry {
    Registry::new()
        .with(Download)
        .with(Load)
        .with(Shuffle)
        .with(Split)
        .with(Tokenize)
        .with(Vectorize)
        .with(Encode)
        .with(Train)
        .with(Evaluate)
        .with(Report)
}
