//! `download`: brings a file into the store, keyed by its content.
//!
//! Sources are paths relative to the pipeline file. An optional `sha256` pin
//! fails the stage loudly when the content differs.

use std::io::{Read, Write};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::stage::{Invalid, Stage, StageContext, StageOutcome};

/// The `download` stage kind.
pub struct Download;

/// `kind: download`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// The file to fetch: a path relative to the pipeline file.
    pub source: String,
    /// Expected sha256 of the content, in hex; a mismatch fails the stage.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The file's name in the stage output (default: the source's file name).
    #[serde(default)]
    pub file: Option<String>,
}

impl DownloadConfig {
    fn output_name(&self) -> &str {
        self.file
            .as_deref()
            .unwrap_or_else(|| self.source.rsplit('/').next().unwrap_or(&self.source))
    }
}

impl Stage for Download {
    type Config = DownloadConfig;
    const KIND: &'static str = "download";
    const VERSION: u32 = 1;

    fn validate(&self, config: &DownloadConfig) -> Result<(), Invalid> {
        if config.source.trim().is_empty() {
            return Err(Invalid::at("source", "must name a file"));
        }
        if config.source.contains("://") {
            return Err(Invalid::at(
                "source",
                "must be a local path (relative to the pipeline file) in this version",
            ));
        }
        if let Some(pin) = &config.sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Invalid::at("sha256", "must be 64 hexadecimal digits"));
        }
        let name = config.output_name();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Invalid::at("file", "must be a plain file name"));
        }
        Ok(())
    }

    fn input_files(&self, config: &DownloadConfig) -> Vec<String> {
        vec![config.source.clone()]
    }

    fn run(&self, config: &DownloadConfig, ctx: &StageContext) -> anyhow::Result<StageOutcome> {
        let source = ctx.pipeline_dir.join(&config.source);
        let mut reader = std::fs::File::open(&source).with_context(|| format!("cannot open {}", source.display()))?;
        let size = reader.metadata()?.len();
        let target = ctx.out_dir.join(config.output_name());
        let mut writer = std::fs::File::create(&target)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 20];
        ctx.progress.set_total(size, "bytes");
        loop {
            ctx.check_cancelled()?;
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            writer.write_all(&buffer[..n])?;
            ctx.progress.advance(n as u64);
        }
        writer.sync_all()?;
        let actual: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if let Some(expected) = &config.sha256
            && !expected.eq_ignore_ascii_case(&actual)
        {
            anyhow::bail!(
                "sha256 of {} is {actual}, but the pipeline pins {expected}; \
                 update `sha256` if the new file is intended",
                source.display()
            );
        }
        let mut outcome = StageOutcome::default();
        outcome.metrics.insert("bytes".into(), size as f64);
        Ok(outcome)
    }
}
