//! `x.lock` beside `x.yaml`: per stage, its key, what the key was made of,
//! its output hashes and headline metrics, as stable, diff-friendly YAML.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::digest::FileDigest;
use crate::dag::KeyMaterial;

const HEADER: &str =
    "# Written by `pipeline run`: commit it. `pipeline status` and `pipeline verify` check against it.\n";

/// The lock file of a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    /// The pipeline's name.
    pub pipeline: String,
    /// Stages in pipeline file order.
    pub stages: IndexMap<String, LockedStage>,
}

/// One stage in a lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedStage {
    /// The cache key.
    pub key: String,
    /// What the key was computed from.
    #[serde(flatten)]
    pub material: KeyMaterial,
    /// Output files with size and hash.
    pub outputs: BTreeMap<String, FileDigest>,
    /// Headline metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

impl LockFile {
    /// Reads a lock file; `None` when there is none.
    pub fn read(path: &Path) -> anyhow::Result<Option<LockFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let lock = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid lock file; delete it and run again", path.display()))?;
        Ok(Some(lock))
    }

    /// Writes the lock file atomically, leaving it untouched when unchanged.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!("{HEADER}{}", serde_yaml::to_string(self)?);
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let tmp = path.with_extension(format!("lock.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}
