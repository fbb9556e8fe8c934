//! The manifest that describes one cache entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::FileDigest;
use crate::dag::KeyMaterial;

/// Bumped when the manifest's layout changes (2: metrics as decimal strings).
pub const MANIFEST_FORMAT: u32 = 2;

/// `manifest.json` of a cache entry: what was computed, from what, and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The `pipeline` version that computed the entry.
    pub tool_version: String,
    /// The cache key.
    pub key: String,
    /// What the key was computed from (kind, resolved config, upstream outputs, ...).
    pub material: KeyMaterial,
    /// Output files (relative to `out/`) with size and hash.
    pub files: BTreeMap<String, FileDigest>,
    /// Headline metrics the stage reported.
    #[serde(with = "exact")]
    pub metrics: BTreeMap<String, f64>,
    /// When the stage started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// How long the stage ran, in seconds.
    pub duration_secs: f64,
}

impl Manifest {
    /// The digest of what the entry hands on to the stages that need it
    /// ([`crate::dag::Need::output`]): see [`output_digest`].
    pub fn output_digest(&self) -> String {
        output_digest(&self.material.kind, &self.files)
    }
}

/// 32 hex digits of blake3 over a stage's kind and each output file's name
/// and content hash, in name order: equal for two entries whose outputs are
/// the same bytes, whatever computed them.
pub fn output_digest(kind: &str, files: &BTreeMap<String, FileDigest>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pipeline-output-v1\n");
    hasher.update(kind.as_bytes());
    for (name, digest) in files {
        hasher.update(b"\n");
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(digest.blake3.as_bytes());
    }
    hasher.finalize().to_hex()[..32].to_string()
}

/// Metrics written as decimal strings and read back with Rust's exact float
/// parser. serde_json's default parser may land one ULP off, so a cached
/// entry would report (and lock) other bits than the run that made it.
/// Numbers, as format 1 wrote them, are still read.
mod exact {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(metrics: &BTreeMap<String, f64>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(metrics.iter().map(|(name, value)| (name, value.to_string())))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(f64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, f64>, D::Error> {
        BTreeMap::<String, Written>::deserialize(deserializer)?
            .into_iter()
            .map(|(name, value)| match value {
                Written::Number(number) => Ok((name, number)),
                Written::Text(text) => text
                    .parse()
                    .map(|number| (name, number))
                    .map_err(|_| serde::de::Error::custom(format!("metric `{text}` is not a number"))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_come_back_with_the_same_bits() {
        // serde_json's default parser reads this one ULP off.
        let values = [
            1.0232174916577579,
            0.41926389902830125,
            f64::NAN,
            f64::INFINITY,
            -0.0,
            1e-300,
        ];
        let metrics: BTreeMap<String, f64> = values.iter().enumerate().map(|(i, &v)| (format!("m{i}"), v)).collect();
        let json = serde_json::to_string(&Exact(metrics.clone())).unwrap();
        let back: Exact = serde_json::from_str(&json).unwrap();
        for (name, value) in &metrics {
            assert_eq!(back.0[name].to_bits(), value.to_bits(), "{name} in {json}");
        }
        let old: Exact = serde_json::from_str(r#"{"loss": 0.5}"#).unwrap();
        assert_eq!(old.0["loss"], 0.5, "format 1 wrote numbers");
    }

    #[derive(Serialize, Deserialize)]
    struct Exact(#[serde(with = "exact")] BTreeMap<String, f64>);
}
