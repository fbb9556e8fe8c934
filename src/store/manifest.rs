//! The manifest that describes one cache entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::FileDigest;
use crate::dag::KeyMaterial;

/// Bumped when the manifest's layout changes.
pub const MANIFEST_FORMAT: u32 = 1;

/// `manifest.json` of a cache entry: what was computed, from what, and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The `pipeline` version that computed the entry.
    pub tool_version: String,
    /// The cache key.
    pub key: String,
    /// What the key was computed from (kind, resolved config, upstream keys, ...).
    pub material: KeyMaterial,
    /// Output files (relative to `out/`) with size and hash.
    pub files: BTreeMap<String, FileDigest>,
    /// Headline metrics the stage reported.
    pub metrics: BTreeMap<String, f64>,
    /// When the stage started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// How long the stage ran, in seconds.
    pub duration_secs: f64,
}
