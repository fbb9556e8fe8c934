//! `download`: brings files into the store from a local path (a file, or
//! `files` of a directory), a Hugging Face Hub repository or a URL.
//!
//! Local files are keyed by their content, so an edited file invalidates every
//! stage after it. Remote files are keyed by source, revision and file list;
//! `sha256` pins make them exact and fail loudly on a mismatch.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::fetch::{self, Source};
use crate::spec::paths;
use crate::stage::{InputFile, Invalid, Stage, StageContext, StageOutcome};

/// The `download` stage kind.
pub struct Download;

/// `kind: download`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// A path relative to the pipeline file, `hf://OWNER/MODEL`,
    /// `hf://datasets/OWNER/NAME` or an `https://` URL.
    pub source: String,
    /// Files to fetch from a Hub repository (default for models: `tokenizer.json`),
    /// or to copy from a local directory named by `source`.
    #[serde(default)]
    pub files: Vec<String>,
    /// The Hub revision: a branch, tag or commit (default `main`).
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Expected sha256 in hex: one value for a single file, or a map from file to value.
    #[serde(default)]
    pub sha256: Option<Pins>,
    /// The output file name for a local or URL source (default: the source's last path segment).
    #[serde(default)]
    pub file: Option<String>,
}

/// `sha256:` pins.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Pins {
    /// The pin of the only file.
    One(String),
    /// Pins by output file name.
    Many(BTreeMap<String, String>),
}

/// By hand rather than `untagged`, so that a wrong value says what is expected.
impl<'de> Deserialize<'de> for Pins {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PinsVisitor;
        impl<'de> serde::de::Visitor<'de> for PinsVisitor {
            type Value = Pins;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a sha256 in hex (64 digits, quoted if it could be read as a number) or a map from file to sha256",
                )
            }
            fn visit_str<E: serde::de::Error>(self, pin: &str) -> Result<Pins, E> {
                Ok(Pins::One(pin.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Pins, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Pins::Many)
            }
        }
        deserializer.deserialize_any(PinsVisitor)
    }
}

fn default_revision() -> String {
    "main".into()
}

impl DownloadConfig {
    fn source(&self) -> Source {
        Source::parse(&self.source).expect("validated")
    }

    /// Output file names in order, each with where it comes from.
    fn outputs(&self) -> Vec<String> {
        match self.source() {
            Source::Hub { dataset, .. } if self.files.is_empty() && !dataset => vec!["tokenizer.json".into()],
            Source::Hub { .. } => self.files.clone(),
            Source::Local(_) if !self.files.is_empty() => self.files.clone(),
            Source::Local(path) | Source::Url(path) => {
                let last = path
                    .split(['?', '#'])
                    .next()
                    .unwrap_or(&path)
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                vec![self.file.clone().unwrap_or_else(|| last.to_string())]
            }
        }
    }

    fn pin(&self, file: &str) -> Option<&str> {
        match &self.sha256 {
            Some(Pins::One(pin)) => Some(pin),
            Some(Pins::Many(pins)) => pins.get(file).map(String::as_str),
            None => None,
        }
    }
}

fn is_hex_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Stage for Download {
    type Config = DownloadConfig;
    const KIND: &'static str = "download";
    const VERSION: u32 = 1;

    fn validate(&self, config: &DownloadConfig) -> Result<(), Invalid> {
        let source = Source::parse(&config.source).map_err(|e| Invalid::at("source", e))?;
        match &source {
            Source::Hub { dataset: true, .. } if config.files.is_empty() => {
                return Err(Invalid::at(
                    "files",
                    "must list the files to fetch from a dataset repository",
                ));
            }
            Source::Hub { .. } if config.file.is_some() => {
                return Err(Invalid::at(
                    "file",
                    "does not apply to Hub sources; list them in `files`",
                ));
            }
            Source::Url(_) if !config.files.is_empty() => {
                return Err(Invalid::at(
                    "files",
                    "applies only to hf:// sources and local directories",
                ));
            }
            Source::Local(_) if !config.files.is_empty() && config.file.is_some() => {
                return Err(Invalid::at(
                    "file",
                    "does not apply to a directory's `files`, which keep their names",
                ));
            }
            _ => {}
        }
        let outputs = config.outputs();
        for name in &outputs {
            let bad = name.is_empty()
                || name
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..");
            if bad {
                let key = if config.files.is_empty() { "file" } else { "files" };
                return Err(Invalid::at(key, format!("`{name}` is not a usable file name")));
            }
        }
        match &config.sha256 {
            Some(Pins::One(_)) if outputs.len() > 1 => {
                return Err(Invalid::at(
                    "sha256",
                    "must map each file to its hash when there are several files",
                ));
            }
            Some(Pins::One(pin)) if !is_hex_digest(pin) => {
                return Err(Invalid::at("sha256", "must be 64 hexadecimal digits"));
            }
            Some(Pins::Many(pins)) => {
                for (file, pin) in pins {
                    if !outputs.contains(file) {
                        return Err(Invalid::at("sha256", format!("pins `{file}`, which is not downloaded")));
                    }
                    if !is_hex_digest(pin) {
                        return Err(Invalid::at(
                            "sha256",
                            format!("pin of `{file}` must be 64 hexadecimal digits"),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn input_files(&self, config: &DownloadConfig) -> Vec<InputFile> {
        match config.source() {
            Source::Local(dir) if !config.files.is_empty() => config
                .files
                .iter()
                .map(|file| InputFile::new("files", format!("{dir}/{file}")))
                .collect(),
            Source::Local(path) => vec![InputFile::new("source", path)],
            _ => Vec::new(),
        }
    }

    fn run(&self, config: &DownloadConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let mut total = 0;
        for name in config.outputs() {
            ctx.check_cancelled()?;
            let target = ctx.out_dir.join(&name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            total += match config.source() {
                Source::Local(path) => {
                    let source = match config.files.is_empty() {
                        true => paths::local(ctx.pipeline_dir, &path)?,
                        false => paths::local(ctx.pipeline_dir, &path)?.join(&name),
                    };
                    std::fs::copy(&source, &target).with_context(|| format!("cannot copy {}", source.display()))?
                }
                Source::Url(url) => fetch::fetch_url(&url, &target, ctx)?,
                Source::Hub { repo, dataset } => {
                    fetch::fetch_hub(&repo, dataset, &config.revision, &name, &target, ctx)?
                }
            };
            if let Some(expected) = config.pin(&name) {
                let actual = sha256_file(&target)?;
                anyhow::ensure!(
                    expected.eq_ignore_ascii_case(&actual),
                    "sha256 of {name} from {} is {actual}, but the pipeline pins {expected}; \
                     update `sha256` if the new file is intended",
                    config.source
                );
            }
        }
        let mut outcome = StageOutcome::default();
        outcome.metrics.insert("bytes".into(), total as f64);
        Ok(outcome)
    }
}

/// The sha256 of a file, in hex.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
