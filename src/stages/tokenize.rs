//! `tokenize`: turns each split's text into token ids with the `tokenizers`
//! crate: a pretrained `tokenizer.json`, or a word-level vocabulary trained on
//! the train split only. Writes `ids` (list of u32), for sentence pairs
//! `type_ids` (segment ids, list of u32), `length` and `label` per split as
//! parquet, and the tokenizer used as `tokenizer.json`.

use anyhow::Context as _;
use polars::prelude::{
    Column, DataFrame, DataType, IntoColumn, ListBuilderTrait, ListPrimitiveChunkedBuilder, UInt32Type,
};
use serde::{Deserialize, Serialize};
use tokenizers::{PostProcessor as _, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::data::batches::Side;
use crate::data::fetch::{self, Source};
use crate::data::prefix;
use crate::data::table::{self, TableMeta};
use crate::data::vocab::{self, VocabSettings};
use crate::spec::paths;
use crate::stage::{InputFile, Invalid, Output, Stage, StageContext, StageOutcome};

/// The `tokenize` stage kind.
pub struct Tokenize;

/// The file that describes a tokenize stage's output.
pub const TOKENS_FILE: &str = "tokens.json";

/// The column of segment ids, written for sentence pairs.
pub const TYPE_IDS: &str = "type_ids";

/// Rows encoded per batch (progress and cancellation points): small enough
/// that Ctrl-C stops within a fraction of a second on long reviews.
const CHUNK: usize = 128;

/// `kind: tokenize`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// Which tokenizer.
    pub tokenizer: TokenizerSource,
    /// Longest sequence kept, special tokens included (default 512).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Cut longer sequences to `max_length` (default true); if false they are an error.
    #[serde(default = "super::enabled")]
    pub truncation: bool,
    /// Which end of a longer sequence is cut: `right` (the default, keeps the
    /// beginning) or `left` (keeps the end, like Keras' `truncating="pre"`).
    /// Left out of the cache key when `right`, so older entries stay valid.
    #[serde(default, skip_serializing_if = "is_right")]
    pub truncation_side: Side,
    /// Add the tokenizer's special tokens, e.g. `[CLS]` and `[SEP]` (default true).
    #[serde(default = "super::enabled")]
    pub add_special_tokens: bool,
}

/// `tokenizer:` of `tokenize`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerSource {
    /// A `tokenizer.json`: a path relative to the pipeline file, or `hf://OWNER/MODEL`.
    Pretrained(String),
    /// The `tokenizer.json` in the output of the needed stage with this name.
    FromStage(String),
    /// A word-level vocabulary trained on the train split.
    Word(WordVocab),
}

/// `tokenizer: {word: ...}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordVocab {
    /// Lowercase the text (default true).
    #[serde(default = "super::enabled")]
    pub lowercase: bool,
    /// `basic_english` (torchtext's rules, the default) or `whitespace`.
    #[serde(default)]
    pub pre_tokenizer: PreTokenizer,
    /// Drop words seen fewer times in the train split (default 1).
    #[serde(default = "one")]
    pub min_freq: u64,
    /// At most this many entries, specials included.
    #[serde(default)]
    pub max_size: Option<usize>,
    /// The unknown-word token, id 0 (default `<unk>`).
    #[serde(default = "unk")]
    pub unk: String,
    /// The padding token, id 1 (default `<pad>`).
    #[serde(default = "pad")]
    pub pad: String,
    /// The split the vocabulary is built from (default `train`).
    #[serde(default = "train_split")]
    pub split: String,
}

/// How a word vocabulary splits text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreTokenizer {
    /// torchtext's `basic_english`.
    #[default]
    BasicEnglish,
    /// Whitespace only.
    Whitespace,
}

/// `tokens.json`: what later stages need to know about the ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensMeta {
    /// Number of ids the tokenizer can produce.
    pub vocab_size: usize,
    /// The padding id, when the tokenizer defines one.
    pub pad_id: Option<u32>,
    /// The `max_length` sequences were cut to.
    pub max_length: usize,
}

impl TokensMeta {
    /// Reads `tokens.json` from a tokenize (or vectorize) stage's output.
    pub fn read(dir: &std::path::Path) -> anyhow::Result<TokensMeta> {
        let path = dir.join(TOKENS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{} is not a tokens.json: {e}", path.display()))
    }
}

fn is_right(side: &Side) -> bool {
    *side == Side::Right
}
fn default_max_length() -> usize {
    512
}
fn one() -> u64 {
    1
}
fn unk() -> String {
    "<unk>".into()
}
fn pad() -> String {
    "<pad>".into()
}
fn train_split() -> String {
    "train".into()
}

/// Padding tokens of common tokenizers, tried in order.
const PAD_TOKENS: [&str; 3] = ["[PAD]", "<pad>", "<|pad|>"];

impl Stage for Tokenize {
    type Config = TokenizeConfig;
    const KIND: &'static str = "tokenize";
    const OUTPUTS: &'static [Output] = &[Output::Table, Output::Tokens];
    const VERSION: u32 = 2;

    fn validate(&self, config: &TokenizeConfig) -> Result<(), Invalid> {
        if config.max_length == 0 {
            return Err(Invalid::at("max_length", "must be at least 1"));
        }
        match &config.tokenizer {
            TokenizerSource::Pretrained(source) => match Source::parse(source) {
                Ok(Source::Url(_)) => Err(Invalid::at(
                    "tokenizer.pretrained",
                    "must be a local path or hf://OWNER/MODEL; fetch URLs with a download stage",
                )),
                Ok(Source::Hub { dataset: true, .. }) => Err(Invalid::at(
                    "tokenizer.pretrained",
                    "must be a model repository, not a dataset",
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(Invalid::at("tokenizer.pretrained", e)),
            },
            TokenizerSource::Word(word) if word.min_freq == 0 => {
                Err(Invalid::at("tokenizer.word.min_freq", "must be at least 1"))
            }
            TokenizerSource::Word(word) if word.max_size.is_some_and(|m| m < 3) => Err(Invalid::at(
                "tokenizer.word.max_size",
                "must leave room for the specials and a word",
            )),
            TokenizerSource::Word(word) if word.unk == word.pad => {
                Err(Invalid::at("tokenizer.word.pad", "must differ from `unk`"))
            }
            _ => Ok(()),
        }
    }

    fn input_files(&self, config: &TokenizeConfig) -> Vec<InputFile> {
        match &config.tokenizer {
            TokenizerSource::Pretrained(source) => match Source::parse(source) {
                Ok(Source::Local(path)) => vec![InputFile::new("tokenizer.pretrained", path)],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn threads(&self, _config: &TokenizeConfig) -> usize {
        usize::MAX
    }

    fn run(&self, config: &TokenizeConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let input = table::table_input(ctx)?;
        let meta = TableMeta::read(&input.dir)?;
        let saved = ctx.out_dir.join("tokenizer.json");
        let mut tokenizer = match &config.tokenizer {
            TokenizerSource::Pretrained(source) => {
                match Source::parse(source).expect("validated") {
                    Source::Hub { repo, .. } => {
                        fetch::fetch_hub(&repo, false, "main", "tokenizer.json", &saved, ctx)?;
                    }
                    _ => {
                        let path = paths::local(ctx.pipeline_dir, source)?;
                        std::fs::copy(&path, &saved).with_context(|| format!("cannot read {}", path.display()))?;
                    }
                }
                load_tokenizer(&saved, source)?
            }
            TokenizerSource::FromStage(stage) => {
                let path = ctx.input(stage)?.dir.join("tokenizer.json");
                anyhow::ensure!(
                    path.exists(),
                    "`tokenizer.from_stage`: stage `{stage}` produced no tokenizer.json"
                );
                std::fs::copy(&path, &saved)?;
                load_tokenizer(&saved, &format!("tokenizer.json of stage `{stage}`"))?
            }
            TokenizerSource::Word(word) => {
                anyhow::ensure!(
                    meta.splits.contains(&word.split),
                    "`tokenizer.word.split`: there is no split `{}`; the splits are {}",
                    word.split,
                    meta.splits.join(", ")
                );
                let df = table::read_split(&input.dir, &word.split)?;
                let settings = VocabSettings {
                    lowercase: word.lowercase,
                    basic_english: word.pre_tokenizer == PreTokenizer::BasicEnglish,
                    min_freq: word.min_freq,
                    max_size: word.max_size,
                    unk: word.unk.clone(),
                    pad: word.pad.clone(),
                };
                let mut texts = table::texts(&df, "text")?;
                if meta.pairs {
                    texts.extend(table::texts(&df, "text_pair")?);
                }
                ctx.progress
                    .message(&format!("training a word vocabulary on {} texts", texts.len()));
                let trained = vocab::train(&settings, texts.into_iter())?;
                trained.save(&saved, false).map_err(anyhow::Error::msg)?;
                trained
            }
        };
        if config.truncation && config.add_special_tokens {
            // The tokenizers crate cannot truncate below its special tokens ([CLS], [SEP]).
            let special = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(meta.pairs));
            anyhow::ensure!(
                config.max_length > special,
                "`max_length` {}: the tokenizer adds {special} special tokens to each {}, so `max_length` must be at least {}",
                config.max_length,
                if meta.pairs { "pair" } else { "text" },
                special + 1
            );
        }
        let truncation = TruncationParams {
            direction: match config.truncation_side {
                Side::Right => TruncationDirection::Right,
                Side::Left => TruncationDirection::Left,
            },
            max_length: config.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        tokenizer
            .with_truncation(config.truncation.then_some(truncation))
            .map_err(anyhow::Error::msg)?;
        tokenizer.with_padding(None);
        let pad_id = PAD_TOKENS.iter().find_map(|t| tokenizer.token_to_id(t));
        // Right truncation of single texts: only their first words are tokenized.
        let cut = config.truncation && config.truncation_side == Side::Right && prefix::cuts_at_spaces(&tokenizer);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(ctx.threads).build()?;
        let mut outcome = StageOutcome::default();
        let frames = meta
            .splits
            .iter()
            .map(|split| Ok((split, table::read_split(&input.dir, split)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        ctx.progress
            .set_total(frames.iter().map(|(_, df)| df.height() as u64).sum(), "rows");
        for (split, df) in frames {
            let texts = table::texts(&df, "text")?;
            let pairs = if meta.pairs {
                Some(table::texts(&df, "text_pair")?)
            } else {
                None
            };
            let mut ids = ListPrimitiveChunkedBuilder::<UInt32Type>::new(
                "ids".into(),
                texts.len(),
                texts.len() * config.max_length.min(256),
                DataType::UInt32,
            );
            // Segment ids (0 through the first `[SEP]`, 1 after) only for pairs:
            // single texts are all 0, and their tables stay as they were.
            let mut type_ids = pairs.as_ref().map(|_| {
                ListPrimitiveChunkedBuilder::<UInt32Type>::new(
                    TYPE_IDS.into(),
                    texts.len(),
                    texts.len() * config.max_length.min(256),
                    DataType::UInt32,
                )
            });
            let mut lengths = Vec::with_capacity(texts.len());
            for start in (0..texts.len()).step_by(CHUNK) {
                ctx.check_cancelled()?;
                let end = (start + CHUNK).min(texts.len());
                let encodings = pool.install(|| match &pairs {
                    Some(pairs) => {
                        let inputs: Vec<(&str, &str)> = texts[start..end]
                            .iter()
                            .copied()
                            .zip(pairs[start..end].iter().copied())
                            .collect();
                        tokenizer.encode_batch_fast(inputs, config.add_special_tokens)
                    }
                    None => prefix::encode_truncated(
                        &tokenizer,
                        &texts[start..end],
                        config.max_length,
                        config.add_special_tokens,
                        cut,
                    ),
                });
                for encoding in encodings.map_err(anyhow::Error::msg)? {
                    let row = encoding.get_ids();
                    anyhow::ensure!(
                        config.truncation || row.len() <= config.max_length,
                        "a row of split `{split}` has {} tokens, more than `max_length` {}; set `truncation: true`",
                        row.len(),
                        config.max_length
                    );
                    lengths.push(row.len() as u32);
                    ids.append_slice(row);
                    if let Some(type_ids) = &mut type_ids {
                        type_ids.append_slice(encoding.get_type_ids());
                    }
                }
                ctx.progress.advance((end - start) as u64);
            }
            let labels = table::labels(&df)?;
            let mean = lengths.iter().map(|&l| l as f64).sum::<f64>() / lengths.len().max(1) as f64;
            let truncated = lengths.iter().filter(|&&l| l as usize == config.max_length).count();
            outcome.metrics.insert(format!("mean_length.{split}"), mean);
            outcome.metrics.insert(
                format!("at_max_length.{split}"),
                truncated as f64 / lengths.len().max(1) as f64,
            );
            let mut columns = vec![ids.finish().into_column()];
            columns.extend(type_ids.map(|mut t| t.finish().into_column()));
            columns.push(Column::new("length".into(), &lengths));
            columns.push(Column::new("label".into(), &labels));
            let mut out = DataFrame::new_infer_height(columns)?;
            table::write_split(&mut out, ctx.out_dir, split)?;
        }
        meta.write(ctx.out_dir)?;
        let tokens = TokensMeta {
            vocab_size: tokenizer.get_vocab_size(true),
            pad_id,
            max_length: config.max_length,
        };
        outcome.metrics.insert("vocab_size".into(), tokens.vocab_size as f64);
        std::fs::write(ctx.out_dir.join(TOKENS_FILE), serde_json::to_vec_pretty(&tokens)?)?;
        Ok(outcome)
    }
}

/// Loads a `tokenizer.json`, naming the source when it does not parse.
fn load_tokenizer(path: &std::path::Path, source: &str) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| anyhow::anyhow!("the tokenizer from {source} does not parse: {e}"))
}
