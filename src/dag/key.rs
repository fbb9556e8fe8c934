//! The cache key: everything that determines a stage's output, in one struct.
//!
//! A key holds its upstream stages by the *content* of their outputs
//! ([`Need::output`]), not by their keys: when an upstream stage re-runs and
//! writes the same bytes as before, the stages after it keep their keys and
//! come from the cache (early cut-off, as DVC and Bazel do). Until an upstream
//! entry exists its output is unknown, so the keys after it are pending; the
//! executor completes them as the upstream stages finish.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Bumped when the meaning of [`KeyMaterial`] changes, invalidating every key.
const KEY_FORMAT: u32 = 2;

/// Everything that determines a stage's output. Its hash is the stage's
/// cache key, so two stages with equal material share one cache entry.
///
/// Nothing here depends on where the checkout lives: input files are named
/// relative to the pipeline file and identified by their content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// The stage kind.
    pub kind: String,
    /// The kind's implementation version ([`crate::stage::Stage::VERSION`]).
    pub version: u32,
    /// The resolved config, defaults filled in (map order is irrelevant).
    pub config: Json,
    /// The stages this one needs, in `needs` order, with their outputs' digests.
    pub needs: Vec<Need>,
    /// The pipeline seed, for stages that use randomness.
    pub seed: Option<u64>,
    /// The pipeline's name, for stages that write it into their output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The pipeline device, for stages whose output depends on it.
    pub device: Option<String>,
    /// Files read from outside the store: path (relative to the pipeline file) -> content hash.
    pub inputs: BTreeMap<String, String>,
}

/// One difference between two key materials, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What changed, e.g. "config.optimizer.lr changed: 0.001 -> 0.01".
    pub text: String,
    /// The upstream stage whose key changed, when that is the change.
    pub upstream: Option<String>,
}

impl From<String> for Change {
    fn from(text: String) -> Self {
        Change { text, upstream: None }
    }
}

/// An upstream stage in [`KeyMaterial::needs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Need {
    /// The upstream stage's name.
    pub stage: String,
    /// The digest of what it hands on ([`crate::store::Manifest::output_digest`]:
    /// its kind and its files' hashes); `None` while its entry does not exist yet.
    #[serde(default)]
    pub output: Option<String>,
}

impl KeyMaterial {
    /// True when every upstream output is known, so that [`KeyMaterial::key`] is the cache key.
    pub fn is_complete(&self) -> bool {
        self.needs.iter().all(|need| need.output.is_some())
    }

    /// The cache key: 32 hex digits of the blake3 hash of the canonical JSON
    /// (meaningful once [`KeyMaterial::is_complete`]).
    pub fn key(&self) -> String {
        let mut text = format!("pipeline-key-v{KEY_FORMAT}\n");
        let json = serde_json::to_value(self).expect("key material serializes");
        write_canonical(&json, &mut text);
        blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
    }

    /// What differs from `old`, one entry per change (empty when equal).
    pub fn changes_since(&self, old: &KeyMaterial) -> Vec<Change> {
        let mut changes: Vec<Change> = Vec::new();
        if self.kind != old.kind {
            changes.push(format!("kind changed: {} -> {}", old.kind, self.kind).into());
        }
        if self.version != old.version {
            changes.push(
                format!(
                    "the `{}` implementation changed (version {} -> {})",
                    self.kind, old.version, self.version
                )
                .into(),
            );
        }
        diff_json("config", &old.config, &self.config, &mut changes);
        if self.seed != old.seed {
            changes.push(format!("seed changed: {} -> {}", show(&old.seed), show(&self.seed)).into());
        }
        if self.pipeline != old.pipeline {
            changes.push(
                format!(
                    "pipeline name changed: {} -> {}",
                    show(&old.pipeline),
                    show(&self.pipeline)
                )
                .into(),
            );
        }
        if self.device != old.device {
            changes.push(format!("device changed: {} -> {}", show(&old.device), show(&self.device)).into());
        }
        for need in &self.needs {
            match old.needs.iter().find(|n| n.stage == need.stage) {
                None => changes.push(format!("now needs stage `{}`", need.stage).into()),
                Some(o) if o.output != need.output => changes.push(Change {
                    text: match &need.output {
                        Some(_) => format!(
                            "upstream stage `{}` produced other outputs (digest {} -> {})",
                            need.stage,
                            short(&o.output),
                            short(&need.output)
                        ),
                        None => format!(
                            "upstream stage `{0}` runs first: this stage runs only if `{0}` writes other outputs than the locked ones",
                            need.stage
                        ),
                    },
                    upstream: Some(need.stage.clone()),
                }),
                Some(_) => {}
            }
        }
        for o in &old.needs {
            if !self.needs.iter().any(|n| n.stage == o.stage) {
                changes.push(format!("no longer needs stage `{}`", o.stage).into());
            }
        }
        let names = |m: &KeyMaterial| m.needs.iter().map(|n| n.stage.clone()).collect::<Vec<_>>();
        if changes.is_empty() && names(self) != names(old) {
            changes.push(format!("`needs` order changed: {:?} -> {:?}", names(old), names(self)).into());
        }
        for (path, hash) in &self.inputs {
            match old.inputs.get(path) {
                None => changes.push(format!("now reads input file {path}").into()),
                Some(h) if h != hash => changes.push(format!("input file {path} changed content").into()),
                Some(_) => {}
            }
        }
        for path in old.inputs.keys() {
            if !self.inputs.contains_key(path) {
                changes.push(format!("no longer reads input file {path}").into());
            }
        }
        if changes.is_empty() && self.key() != old.key() {
            changes.push(String::from("the key format of this pipeline version changed").into());
        }
        changes
    }
}

/// The first 12 digits of a digest, or "none".
fn short(digest: &Option<String>) -> String {
    digest
        .as_ref()
        .map_or("none".into(), |d| d[..12.min(d.len())].to_string())
}

fn show<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or("none".into(), |v| v.to_string())
}

/// Appends one line per differing leaf between two JSON values, by dotted path.
fn diff_json(path: &str, old: &Json, new: &Json, out: &mut Vec<Change>) {
    match (old, new) {
        (Json::Object(a), Json::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let sub = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_json(&sub, x, y, out),
                    (None, Some(y)) => out.push(format!("{sub} added: {y}").into()),
                    (Some(x), None) => out.push(format!("{sub} removed (was {x})").into()),
                    (None, None) => {}
                }
            }
        }
        _ if old != new => out.push(format!("{path} changed: {old} -> {new}").into()),
        _ => {}
    }
}

/// Writes JSON with object keys sorted at every level, so that the bytes do
/// not depend on map order or on serde_json's `preserve_order` feature.
pub fn write_canonical(value: &Json, out: &mut String) {
    match value {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Json::String(key.clone()));
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn material(config: Json) -> KeyMaterial {
        KeyMaterial {
            kind: "train".into(),
            version: 1,
            config,
            needs: vec![Need {
                stage: "data".into(),
                output: Some("a".repeat(32)),
            }],
            seed: Some(1),
            pipeline: None,
            device: None,
            inputs: BTreeMap::new(),
        }
    }

    #[test]
    fn map_order_does_not_change_the_key() {
        let a: Json = serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": 3}}"#).unwrap();
        let b: Json = serde_json::from_str(r#"{"y": {"a": 3, "b": 2}, "x": 1}"#).unwrap();
        assert_eq!(material(a).key(), material(b).key());
    }

    #[test]
    fn changes_name_the_config_path() {
        let old = material(json!({"optimizer": {"lr": 0.001}}));
        let new = material(json!({"optimizer": {"lr": 0.01}}));
        assert_ne!(old.key(), new.key());
        assert_eq!(
            new.changes_since(&old).into_iter().map(|c| c.text).collect::<Vec<_>>(),
            vec!["config.optimizer.lr changed: 0.001 -> 0.01"]
        );
        let mut seeded = old.clone();
        seeded.seed = Some(2);
        let texts: Vec<String> = seeded.changes_since(&old).into_iter().map(|c| c.text).collect();
        assert_eq!(texts, vec!["seed changed: 1 -> 2"]);
    }
}
