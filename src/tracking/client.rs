//! A small blocking client for MLflow's REST API (tracking and the artifact
//! proxy), written for MLflow 3.x servers. Values are always sent as the
//! server expects them: params as strings, NaN and infinities as strings,
//! batches within the server's limits.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

/// The most metrics one `runs/log-batch` request may carry.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// The most params one request may carry.
pub const MAX_PARAMS_PER_BATCH: usize = 100;
/// The most tags one request may carry.
pub const MAX_TAGS_PER_BATCH: usize = 100;
/// The longest param value the server keeps (longer ones are cut silently).
pub const MAX_PARAM_VALUE: usize = 6000;
/// The longest tag value the server keeps.
pub const MAX_TAG_VALUE: usize = 8000;

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum Error {
    /// The server answered with an error: 4xx are the request's fault.
    Api { status: u16, code: String, message: String },
    /// No answer (connection refused, timeout, ...).
    Transport(String),
    /// Reading a local file to upload failed.
    Io(std::io::Error),
}

impl Error {
    /// True when trying again later may succeed (no answer, or a 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Api { status, .. } => *status >= 500 || *status == 429,
            Error::Io(_) => false,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Api { status, code, message } => write!(f, "MLflow answered {status} {code}: {message}"),
            Error::Transport(e) => write!(f, "cannot reach the MLflow server: {e}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunStatus {
    /// Still running.
    Running,
    /// Ended well.
    Finished,
    /// Ended with an error, or interrupted.
    Failed,
    /// Stopped on purpose before its end (a trial a sweep's early stopping pruned).
    Killed,
}

/// One point of a step metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The metric's name.
    pub key: String,
    /// Its value; NaN and infinities are sent as the strings MLflow understands.
    #[serde(serialize_with = "finite_or_string")]
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The global step.
    pub step: i64,
}

fn finite_or_string<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.is_nan() {
        s.serialize_str("NaN")
    } else if value.is_infinite() {
        s.serialize_str(if *value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*value)
    }
}

/// A run as created by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRef {
    /// The server's run id.
    pub run_id: String,
    /// The experiment's id.
    pub experiment_id: String,
    /// `mlflow-artifacts:/<exp>/<run>/artifacts` on a server that proxies artifacts.
    pub artifact_uri: String,
}

/// A connection to one tracking server.
pub struct Client {
    /// The address without user info.
    base: String,
    /// The `Authorization` header, when the server needs credentials.
    authorization: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the server at `uri` (e.g. `http://127.0.0.1:5000`).
    pub fn new(uri: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Client {
            base: super::redact(uri).trim_end_matches('/').to_string(),
            authorization: super::authorization(uri),
            agent,
        }
    }

    /// The server's address.
    pub fn uri(&self) -> &str {
        &self.base
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Json, Error> {
        let mut response = response.map_err(|e| Error::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Transport(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok(if text.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&text).unwrap_or(Json::String(text))
            });
        }
        let body: Json = serde_json::from_str(&text).unwrap_or_default();
        Err(Error::Api {
            status,
            code: body["error_code"].as_str().unwrap_or("").to_string(),
            message: body["message"].as_str().map_or(text.clone(), str::to_string),
        })
    }

    /// `request` with the server's `Authorization` header, if it has credentials.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(authorization) => request.header("Authorization", authorization),
            None => request,
        }
    }

    fn post(&self, endpoint: &str, body: &Json) -> Result<Json, Error> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let text = serde_json::to_string(body).expect("JSON values serialize");
        let request = self.agent.post(&url).header("Content-Type", "application/json");
        Self::answer(self.authorized(request).send(text))
    }

    fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Json, Error> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let mut request = self.authorized(self.agent.get(&url));
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        Self::answer(request.call())
    }

    /// The id of the experiment called `name`, created (or restored from
    /// deletion) when needed.
    pub fn experiment_id(&self, name: &str) -> Result<String, Error> {
        let found = match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(found) => Some(found),
            Err(Error::Api { code, .. }) if code == "RESOURCE_DOES_NOT_EXIST" => None,
            Err(e) => return Err(e),
        };
        if let Some(found) = found {
            let experiment = &found["experiment"];
            let id = experiment["experiment_id"].as_str().unwrap_or_default().to_string();
            if experiment["lifecycle_stage"] == "deleted" {
                self.post("experiments/restore", &json!({ "experiment_id": id }))?;
            }
            return Ok(id);
        }
        match self.post("experiments/create", &json!({ "name": name })) {
            Ok(created) => Ok(created["experiment_id"].as_str().unwrap_or_default().to_string()),
            Err(Error::Api { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {
                let found = self.get("experiments/get-by-name", &[("experiment_name", name)])?;
                Ok(found["experiment"]["experiment_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run (RUNNING) with a name, a start time and tags.
    pub fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_ms: i64,
        tags: &[(String, String)],
    ) -> Result<RunRef, Error> {
        let tags: Vec<Json> = tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let created = self.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": name,
                "start_time": start_ms,
                "tags": tags,
            }),
        )?;
        let info = &created["run"]["info"];
        Ok(RunRef {
            run_id: info["run_id"].as_str().unwrap_or_default().to_string(),
            experiment_id: experiment_id.to_string(),
            artifact_uri: info["artifact_uri"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Logs metrics, params and tags in as many requests as the server's limits need.
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), Error> {
        let pairs = |items: &[(String, String)]| -> Vec<Json> {
            items.iter().map(|(k, v)| json!({"key": k, "value": v})).collect()
        };
        for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
            self.post("runs/log-batch", &json!({"run_id": run_id, "params": pairs(chunk)}))?;
        }
        for chunk in tags.chunks(MAX_TAGS_PER_BATCH) {
            self.post("runs/log-batch", &json!({"run_id": run_id, "tags": pairs(chunk)}))?;
        }
        for chunk in metrics.chunks(MAX_METRICS_PER_BATCH) {
            self.post("runs/log-batch", &json!({"run_id": run_id, "metrics": chunk}))?;
        }
        Ok(())
    }

    /// Ends a run (or sets its status).
    pub fn update_run(&self, run_id: &str, status: RunStatus, end_ms: i64) -> Result<(), Error> {
        self.post(
            "runs/update",
            &json!({"run_id": run_id, "status": status, "end_time": end_ms}),
        )?;
        Ok(())
    }

    /// Uploads a file to the run's artifacts at `dest` (a relative path),
    /// streamed through the server's artifact proxy.
    pub fn upload(&self, run: &RunRef, file: &Path, dest: &str) -> Result<(), Error> {
        let Some(prefix) = run.artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Err(Error::Api {
                status: 400,
                code: "NO_ARTIFACT_PROXY".into(),
                message: format!(
                    "the run's artifact location is {}; start the server with --serve-artifacts (the default)",
                    run.artifact_uri
                ),
            });
        };
        let encoded: Vec<String> = dest.split('/').map(percent_encode).collect();
        let url = format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}/{}",
            self.base,
            prefix.trim_start_matches('/'),
            encoded.join("/")
        );
        let body = std::fs::File::open(file).map_err(Error::Io)?;
        Self::answer(self.authorized(self.agent.put(&url)).send(body)).map(|_| ())
    }
}

/// Percent-encodes one path segment.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_metrics_are_sent_as_strings() {
        let m = |value| Metric {
            key: "loss".into(),
            value,
            timestamp: 1,
            step: 2,
        };
        assert_eq!(serde_json::to_value(m(f64::NAN)).unwrap()["value"], "NaN");
        assert_eq!(serde_json::to_value(m(f64::INFINITY)).unwrap()["value"], "Infinity");
        assert_eq!(
            serde_json::to_value(m(f64::NEG_INFINITY)).unwrap()["value"],
            "-Infinity"
        );
        assert_eq!(serde_json::to_value(m(0.5)).unwrap()["value"], 0.5);
    }

    #[test]
    fn artifact_paths_are_encoded_per_segment() {
        assert_eq!(percent_encode("my plot.svg"), "my%20plot.svg");
        assert_eq!(percent_encode("a-b_c.~"), "a-b_c.~");
    }

    #[test]
    fn only_unanswered_and_server_errors_are_retried() {
        let api = |status| Error::Api {
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(api(503).is_transient());
        assert!(!api(400).is_transient());
        assert!(Error::Transport("refused".into()).is_transient());
    }
}
