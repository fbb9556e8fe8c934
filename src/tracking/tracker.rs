//! Sends a process's MLflow calls and never loses them: a call that still
//! fails after retries with backoff switches the tracker to spooling, and
//! that call and every later one are appended to a spool file in the store
//! (with copies of the files to upload). `pipeline mlflow sync` replays
//! spool files in order.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::client::{Client, Error, Metric, RunRef, RunStatus};

/// Waits between tries of a call that found no server (or a 5xx).
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(1000),
    Duration::from_millis(2500),
];

/// Milliseconds since the epoch, as MLflow timestamps are.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A run of this process, by its local number (the server's id may come later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunHandle(usize);

/// One tracking call, as sent or spooled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
enum Call {
    /// The server the calls were meant for (the first line of a spool file).
    Server { uri: String },
    /// A run that the server already has (first lines of a spool file).
    Known { run: RunHandle, server: RunRef },
    /// Create a run; `parent` makes it a nested run.
    CreateRun {
        run: RunHandle,
        experiment: String,
        name: String,
        start_ms: i64,
        tags: Vec<(String, String)>,
        parent: Option<RunHandle>,
    },
    /// Params, metrics and tags.
    LogBatch {
        run: RunHandle,
        #[serde(default)]
        metrics: Vec<SpooledMetric>,
        #[serde(default)]
        params: Vec<(String, String)>,
        #[serde(default)]
        tags: Vec<(String, String)>,
    },
    /// Upload `file` (absolute, or relative to the spool file's directory) to `dest`.
    Upload {
        run: RunHandle,
        file: PathBuf,
        dest: String,
    },
    /// Set the run's status and end time.
    UpdateRun {
        run: RunHandle,
        status: RunStatus,
        end_ms: i64,
    },
}

/// A metric point in a spool file (NaN and infinities as strings).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpooledMetric {
    key: String,
    value: NonFinite,
    timestamp: i64,
    step: i64,
}

/// An f64 that survives JSON: finite values as numbers, others as strings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum NonFinite {
    Number(f64),
    Text(String),
}

impl From<&Metric> for SpooledMetric {
    fn from(m: &Metric) -> Self {
        let value = if m.value.is_finite() {
            NonFinite::Number(m.value)
        } else {
            NonFinite::Text(m.value.to_string())
        };
        SpooledMetric {
            key: m.key.clone(),
            value,
            timestamp: m.timestamp,
            step: m.step,
        }
    }
}

impl From<&SpooledMetric> for Metric {
    fn from(m: &SpooledMetric) -> Self {
        let value = match &m.value {
            NonFinite::Number(v) => *v,
            NonFinite::Text(t) => match t.as_str() {
                "inf" | "Infinity" => f64::INFINITY,
                "-inf" | "-Infinity" => f64::NEG_INFINITY,
                _ => f64::NAN,
            },
        };
        Metric {
            key: m.key.clone(),
            value,
            timestamp: m.timestamp,
            step: m.step,
        }
    }
}

/// A connection to the server and what it learnt there: the experiment's
/// id and the server's runs for this process's run handles.
struct Link {
    client: Client,
    experiment_id: Option<String>,
    runs: HashMap<RunHandle, RunRef>,
}

/// Where a tracker's calls go.
struct State {
    link: Link,
    next: usize,
    /// The spool file, once the server could not be reached.
    spool: Option<PathBuf>,
}

/// The MLflow tracking of one `pipeline` process.
pub struct Tracker {
    uri: String,
    experiment: String,
    spool_dir: PathBuf,
    state: Mutex<State>,
}

impl Tracker {
    /// A tracker for `experiment` on the server at `uri`, spooling to `spool_dir` when it must.
    pub fn new(uri: &str, experiment: &str, spool_dir: &Path) -> Tracker {
        Tracker {
            uri: super::redact(uri),
            experiment: experiment.to_string(),
            spool_dir: spool_dir.to_path_buf(),
            state: Mutex::new(State {
                link: Link::new(uri),
                next: 0,
                spool: None,
            }),
        }
    }

    /// The server's address.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The spool file, when calls were spooled.
    pub fn spool_file(&self) -> Option<PathBuf> {
        self.state.lock().expect("tracker lock").spool.clone()
    }

    /// The server's run, when it was created there.
    pub fn server_run(&self, run: RunHandle) -> Option<RunRef> {
        self.state.lock().expect("tracker lock").link.runs.get(&run).cloned()
    }

    /// Starts a run (nested under `parent` when given).
    pub fn start_run(&self, name: &str, tags: Vec<(String, String)>, parent: Option<RunHandle>) -> RunHandle {
        let run = {
            let mut state = self.state.lock().expect("tracker lock");
            state.next += 1;
            RunHandle(state.next)
        };
        self.submit(Call::CreateRun {
            run,
            experiment: self.experiment.clone(),
            name: name.to_string(),
            start_ms: now_ms(),
            tags,
            parent,
        });
        run
    }

    /// Logs params, step metrics and tags.
    pub fn log(&self, run: RunHandle, metrics: &[Metric], params: Vec<(String, String)>, tags: Vec<(String, String)>) {
        self.submit(Call::LogBatch {
            run,
            metrics: metrics.iter().map(SpooledMetric::from).collect(),
            params,
            tags,
        });
    }

    /// Uploads a file as the artifact `dest`.
    pub fn upload(&self, run: RunHandle, file: &Path, dest: &str) {
        self.submit(Call::Upload {
            run,
            file: file.to_path_buf(),
            dest: dest.to_string(),
        });
    }

    /// Ends a run with a status.
    pub fn finish(&self, run: RunHandle, status: RunStatus) {
        self.submit(Call::UpdateRun {
            run,
            status,
            end_ms: now_ms(),
        });
    }

    /// Sends a call, or spools it once the server is out of reach.
    fn submit(&self, call: Call) {
        let mut state = self.state.lock().expect("tracker lock");
        if state.spool.is_none() {
            match state.link.send_with_retries(&call, None) {
                Ok(()) => return,
                Err(e) if e.is_transient() => {
                    eprintln!(
                        "warning: MLflow at {}: {e}; spooling tracking calls to {} (replay with `pipeline mlflow sync`)",
                        self.uri,
                        self.spool_dir.display()
                    );
                }
                Err(e) => {
                    eprintln!("warning: MLflow refused a call ({e}); it is not retried");
                    return;
                }
            }
            if let Err(e) = self.open_spool(&mut state) {
                eprintln!("warning: cannot spool MLflow calls: {e:#}; they are lost");
                return;
            }
        }
        if let Err(e) = self.append(&state, call) {
            eprintln!("warning: cannot spool an MLflow call: {e:#}");
        }
    }

    /// Creates the spool file, starting with the runs the server already has.
    fn open_spool(&self, state: &mut State) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.spool_dir)
            .with_context(|| format!("cannot create {}", self.spool_dir.display()))?;
        let path = self
            .spool_dir
            .join(format!("{}-{}.jsonl", now_ms(), crate::store::host::process()));
        let mut known: Vec<(&RunHandle, &RunRef)> = state.link.runs.iter().collect();
        known.sort_by_key(|(h, _)| h.0);
        let server = Call::Server { uri: self.uri.clone() };
        let mut text = serde_json::to_string(&server)? + "\n";
        for (&run, server) in known {
            let call = Call::Known {
                run,
                server: server.clone(),
            };
            text.push_str(&serde_json::to_string(&call)?);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        state.spool = Some(path);
        Ok(())
    }

    /// Appends a call to the spool file; files to upload are copied beside it.
    fn append(&self, state: &State, mut call: Call) -> anyhow::Result<()> {
        let path = state.spool.as_ref().expect("spooling");
        if let Call::Upload { file, .. } = &mut call {
            let files = path.with_extension("files");
            std::fs::create_dir_all(&files)?;
            let count = std::fs::read_dir(&files)?.count();
            let name = format!(
                "{count}-{}",
                file.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            );
            std::fs::copy(&*file, files.join(&name))
                .with_context(|| format!("cannot copy {} into the spool", file.display()))?;
            *file = PathBuf::from(files.file_name().expect("a file name")).join(name);
        }
        let mut out = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(out, "{}", serde_json::to_string(&call)?)?;
        Ok(())
    }
}

impl Link {
    fn new(uri: &str) -> Link {
        Link {
            client: Client::new(uri),
            experiment_id: None,
            runs: HashMap::new(),
        }
    }

    /// Sends one call, retrying transient failures with backoff; `base`
    /// resolves relative upload paths (replays).
    fn send_with_retries(&mut self, call: &Call, base: Option<&Path>) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            match self.send(call, base) {
                Err(e) if e.is_transient() && attempt < BACKOFF.len() => {
                    tracing::debug!(error = %e, attempt, "MLflow call failed; retrying");
                    std::thread::sleep(BACKOFF[attempt]);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The server's run of a handle.
    fn server(&self, run: &RunHandle) -> Result<RunRef, Error> {
        self.runs.get(run).cloned().ok_or_else(|| Error::Api {
            status: 400,
            code: "UNKNOWN_RUN".into(),
            message: "the run was never created on the server".into(),
        })
    }

    /// Sends one call.
    fn send(&mut self, call: &Call, base: Option<&Path>) -> Result<(), Error> {
        match call {
            Call::Server { .. } => {}
            Call::Known { run, server } => {
                self.runs.insert(*run, server.clone());
            }
            Call::CreateRun {
                run,
                experiment,
                name,
                start_ms,
                tags,
                parent,
            } => {
                let id = match &self.experiment_id {
                    Some(id) => id.clone(),
                    None => {
                        let id = self.client.experiment_id(experiment)?;
                        self.experiment_id = Some(id.clone());
                        id
                    }
                };
                let mut tags = tags.clone();
                if let Some(parent) = parent {
                    tags.push(("mlflow.parentRunId".into(), self.server(parent)?.run_id));
                }
                let created = self.client.create_run(&id, name, *start_ms, &tags)?;
                self.runs.insert(*run, created);
            }
            Call::LogBatch {
                run,
                metrics,
                params,
                tags,
            } => {
                let metrics: Vec<Metric> = metrics.iter().map(Metric::from).collect();
                self.client
                    .log_batch(&self.server(run)?.run_id, &metrics, params, tags)?;
            }
            Call::Upload { run, file, dest } => {
                let path = base.map_or_else(|| file.clone(), |b| b.join(file));
                self.client.upload(&self.server(run)?, &path, dest)?;
            }
            Call::UpdateRun { run, status, end_ms } => {
                self.client.update_run(&self.server(run)?.run_id, *status, *end_ms)?;
            }
        }
        Ok(())
    }
}

/// What [`sync`] did.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// Spool files replayed completely (and removed).
    pub replayed: Vec<PathBuf>,
    /// The servers they were sent to, in replay order, without repeats.
    pub servers: Vec<String>,
    /// Calls sent.
    pub calls: usize,
    /// Lines that are not spooled calls (a crash can cut the last one), as
    /// `file:line`; they are kept in `<file>.unparsed` beside the spool.
    pub unparsable: Vec<String>,
}

/// Replays every spool file in `spool_dir` (oldest first) against the
/// server at `uri`, or else the server each file was written for. A file is
/// removed once all its calls went through; on a failure the calls not yet
/// sent are kept, so running it again resumes.
pub fn sync(uri: Option<&str>, spool_dir: &Path) -> anyhow::Result<SyncReport> {
    let mut report = SyncReport::default();
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return Ok(report);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let mut calls: Vec<Call> = Vec::new();
        let mut unparsed = String::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(call) => calls.push(call),
                Err(e) => {
                    tracing::warn!(
                        "{}:{}: not a spooled MLflow call ({e}); kept aside",
                        file.display(),
                        i + 1
                    );
                    report.unparsable.push(format!("{}:{}", file.display(), i + 1));
                    unparsed.push_str(line);
                    unparsed.push('\n');
                }
            }
        }
        if !unparsed.is_empty() {
            // Kept for a person to look at; never replayed.
            let aside = file.with_extension("jsonl.unparsed");
            let mut kept = std::fs::read(&aside).unwrap_or_default();
            kept.extend_from_slice(unparsed.as_bytes());
            std::fs::write(&aside, kept).with_context(|| format!("cannot write {}", aside.display()))?;
        }
        let written_for = calls.iter().find_map(|c| match c {
            Call::Server { uri } => Some(uri.clone()),
            _ => None,
        });
        let Some(target) = uri.map(str::to_string).or_else(|| written_for.clone()) else {
            anyhow::bail!(
                "{} does not say which server it was written for; name one with --uri or MLFLOW_TRACKING_URI",
                file.display()
            );
        };
        let mut link = Link::new(&target);
        for (i, call) in calls.iter().enumerate() {
            if let Err(e) = link.send_with_retries(call, Some(spool_dir)) {
                // Keep what is left, with its server and the runs created so far, and stop.
                let mut rest: Vec<Call> = written_for
                    .iter()
                    .map(|uri| Call::Server { uri: uri.clone() })
                    .collect();
                rest.extend(link.runs.iter().map(|(&run, server)| Call::Known {
                    run,
                    server: server.clone(),
                }));
                rest.extend(
                    calls[i..]
                        .iter()
                        .filter(|c| !matches!(c, Call::Known { .. } | Call::Server { .. }))
                        .cloned(),
                );
                let text: String = rest
                    .iter()
                    .map(|c| serde_json::to_string(c).expect("calls serialize") + "\n")
                    .collect();
                std::fs::write(&file, text)?;
                anyhow::bail!(
                    "replaying {} against {target} stopped at call {}: {e}",
                    file.display(),
                    i + 1
                );
            }
            report.calls += 1;
        }
        std::fs::remove_file(&file)?;
        let files = file.with_extension("files");
        if files.exists() {
            std::fs::remove_dir_all(&files)?;
        }
        report.replayed.push(file);
        if !report.servers.contains(&target) {
            report.servers.push(target);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_spools_every_call_and_its_files() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on port 9 of 127.0.0.1 (discard), so connecting fails at once.
        let tracker = Tracker::new("http://127.0.0.1:9", "exp", &dir.path().join("spool"));
        let parent = tracker.start_run("sweep", vec![], None);
        let child = tracker.start_run("trial", vec![("k".into(), "v".into())], Some(parent));
        let metric = Metric {
            key: "loss".into(),
            value: f64::NAN,
            timestamp: 1,
            step: 3,
        };
        tracker.log(child, &[metric], vec![("lr".into(), "0.1".into())], vec![]);
        let file = dir.path().join("report.html");
        std::fs::write(&file, "<html></html>").unwrap();
        tracker.upload(child, &file, "report/report.html");
        tracker.finish(child, RunStatus::Finished);
        let spool = tracker.spool_file().expect("spooled");
        let spooled = std::fs::read_to_string(&spool).unwrap();
        let calls: Vec<Call> = spooled.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(calls.len(), 6);
        assert!(matches!(&calls[0], Call::Server { uri } if uri == "http://127.0.0.1:9"));
        assert!(matches!(&calls[2], Call::CreateRun { parent: Some(p), .. } if *p == parent));
        let Call::LogBatch { metrics, .. } = &calls[3] else {
            panic!()
        };
        assert!(Metric::from(&metrics[0]).value.is_nan());
        let Call::Upload { file, .. } = &calls[4] else { panic!() };
        assert_eq!(
            std::fs::read_to_string(spool.parent().unwrap().join(file)).unwrap(),
            "<html></html>"
        );
        // Replaying goes to the server the file was written for; while it is
        // still down, every call is kept, the server line first.
        let error = sync(None, &dir.path().join("spool")).unwrap_err().to_string();
        assert!(error.contains("against http://127.0.0.1:9"), "{error}");
        assert_eq!(std::fs::read_to_string(&spool).unwrap(), spooled);
        // Another server named on the command line wins; it is down too.
        let error = sync(Some("http://127.0.0.1:7"), &dir.path().join("spool"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("against http://127.0.0.1:7"), "{error}");
        assert_eq!(std::fs::read_to_string(&spool).unwrap(), spooled);
    }
}
