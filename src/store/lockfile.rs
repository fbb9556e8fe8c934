//! `x.lock` beside `x.yaml`: per stage, its key, what the key was made of,
//! its output hashes and headline metrics, as stable, diff-friendly YAML.

use std::collections::{BTreeMap, HashMap};
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
        let text = format!("{HEADER}{}", self.yaml()?);
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let tmp = path.with_extension(format!("lock.{}.tmp", super::host::process()));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The lock as `serde_yaml` writes it, with each distinct stage written
    /// once: a sweep's lock repeats its shared stages under every trial (80
    /// stages, 31 distinct, in `sweeps/lr.lock`). `serde_yaml` sets no line
    /// width, so a mapping's lines do not depend on how deep it sits and a
    /// stage's text indents as a block under its label.
    fn yaml(&self) -> anyhow::Result<String> {
        if self.stages.is_empty() {
            return Ok(serde_yaml::to_string(self)?);
        }
        let mut text = serde_yaml::to_string(&BTreeMap::from([("pipeline", &self.pipeline)]))?;
        text.push_str("stages:\n");
        // By key, the stage written and its text, reused for an equal stage.
        let mut bodies: HashMap<&str, (&LockedStage, String)> = HashMap::new();
        for (label, stage) in &self.stages {
            // `label: null`, less its value: the label as serde_yaml quotes it.
            let entry = serde_yaml::to_string(&BTreeMap::from([(label, ())]))?;
            let key = entry.strip_suffix(" null\n").expect("a one-entry mapping");
            text.push_str("  ");
            text.push_str(key);
            text.push('\n');
            let body = match bodies.get(stage.key.as_str()) {
                Some((written, body)) if *written == stage => body,
                _ => {
                    let body = serde_yaml::to_string(stage)?;
                    &bodies.entry(&stage.key).insert_entry((stage, body)).into_mut().1
                }
            };
            for line in body.split_inclusive('\n') {
                if line != "\n" {
                    text.push_str("    ");
                }
                text.push_str(line);
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stage(key: &str, config: serde_json::Value, metric: f64) -> LockedStage {
        LockedStage {
            key: key.into(),
            material: KeyMaterial {
                kind: "train".into(),
                version: 1,
                config,
                needs: vec![crate::dag::Need {
                    stage: "load".into(),
                    output: None,
                }],
                seed: Some(7),
                pipeline: None,
                device: None,
                inputs: BTreeMap::new(),
            },
            outputs: BTreeMap::new(),
            metrics: BTreeMap::from([("accuracy".to_string(), metric)]),
        }
    }

    #[test]
    fn the_repositorys_locks_are_written_as_serde_yaml_writes_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for dir in ["pipelines", "sweeps"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "lock") {
                    let lock = LockFile::read(&path).unwrap().expect("the lock exists");
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert_eq!(format!("{HEADER}{}", lock.yaml().unwrap()), text, "{}", path.display());
                    assert_eq!(lock.yaml().unwrap(), serde_yaml::to_string(&lock).unwrap());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 7, "only {checked} lock files found");
    }

    #[test]
    fn repeated_and_awkward_stages_are_written_as_serde_yaml_writes_them() {
        let awkward = json!({
            "text": "two lines\n\n  indented after an empty one\n",
            "quoted": ["true", "null", "1.0", "a: b", "- x", "#", "", " lead", "tab\there", "é"],
            "nested": {"empty": {}, "list": [], "deep": [{"a": [1, 2.5, null, false]}]},
        });
        let mut lock = LockFile {
            pipeline: "true".into(),
            stages: IndexMap::new(),
        };
        lock.stages.insert("a/train".into(), stage("k1", awkward.clone(), 0.5));
        lock.stages.insert("b/train".into(), stage("k1", awkward.clone(), 0.5));
        // The same key with other contents is written as itself.
        lock.stages.insert("c/train".into(), stage("k1", awkward, 0.75));
        lock.stages.insert("null".into(), stage("k2", json!("x\ny"), 1.0));
        lock.stages
            .insert("with space: and colon".into(), stage("k1", json!(1), 0.5));
        let text = lock.yaml().unwrap();
        assert_eq!(text, serde_yaml::to_string(&lock).unwrap());
        assert!(text.contains("0.75"));
        let empty = LockFile::default();
        assert_eq!(empty.yaml().unwrap(), serde_yaml::to_string(&empty).unwrap());
    }
}
