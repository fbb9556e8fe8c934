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

/// The environment variables MLflow's clients read credentials from.
pub const USERNAME_ENV: &str = "MLFLOW_TRACKING_USERNAME";
/// See [`USERNAME_ENV`].
pub const PASSWORD_ENV: &str = "MLFLOW_TRACKING_PASSWORD";
/// A bearer token, which wins over a user name and password.
pub const TOKEN_ENV: &str = "MLFLOW_TRACKING_TOKEN";

/// A server address without the user information (`user:token@`) it may
/// hold, for everything that shows or stores an address: messages, logged
/// params, the spool.
pub fn redact(uri: &str) -> String {
    split_user_info(uri).0
}

/// `(address without user info, the user info)`.
fn split_user_info(uri: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return (uri.to_string(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) => (
            format!("{scheme}://{host}{}", &rest[authority_end..]),
            Some(user_info.to_string()),
        ),
        None => (uri.to_string(), None),
    }
}

/// The `Authorization` header for a server: `MLFLOW_TRACKING_TOKEN` (bearer),
/// else `MLFLOW_TRACKING_USERNAME`/`PASSWORD`, else the address's own
/// `user:password@` (basic), as MLflow's clients do.
pub fn authorization(uri: &str) -> Option<String> {
    use base64::Engine as _;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = env(TOKEN_ENV) {
        return Some(format!("Bearer {token}"));
    }
    let user_info = match (env(USERNAME_ENV), env(PASSWORD_ENV)) {
        (Some(user), password) => Some(format!("{user}:{}", password.unwrap_or_default())),
        (None, _) => split_user_info(uri).1,
    }?;
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_info)
    ))
}

/// Where a store keeps the calls that could not be sent.
pub fn spool_dir(store_root: &Path) -> PathBuf {
    store_root.join(".mlflow-spool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_taken_out_of_addresses() {
        assert_eq!(
            redact("http://user:token@host:5000/mlflow?x=1"),
            "http://host:5000/mlflow?x=1"
        );
        assert_eq!(redact("https://host/path@v1"), "https://host/path@v1");
        assert_eq!(redact("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(split_user_info("http://a:b@h").1.as_deref(), Some("a:b"));
    }
}
