//! Experiment tracking: runs logged to an MLflow server through a small
//! REST client, with a spool in the store when the server is out of reach.

pub mod client;
pub mod live;
pub mod record;
pub mod tracker;

pub use client::{Client, Metric, RunRef, RunStatus};
pub use live::LiveMetrics;
pub use tracker::{RunHandle, SyncReport, Tracker, sync};

use std::path::{Path, PathBuf};

use crate::spec::MlflowTracking;

/// The environment variable that names the tracking server (it wins over `uri:`).
pub const URI_ENV: &str = "MLFLOW_TRACKING_URI";

/// The server of a `tracking.mlflow` section: `MLFLOW_TRACKING_URI`, else `uri:`.
pub fn server_uri(config: &MlflowTracking) -> Option<String> {
    std::env::var(URI_ENV)
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| config.uri.clone())
}

/// Where a store keeps the calls that could not be sent.
pub fn spool_dir(store_root: &Path) -> PathBuf {
    store_root.join(".mlflow-spool")
}
