//! A real MLflow server (`mlflow==3.17.2`, installed by `make test`) on
//! 127.0.0.1 for the tests, read back through MLflow's own Python client,
//! and a TCP proxy in front of it that can be cut to play a server outage.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `mlflow` executable: `MLFLOW_BIN`, else the venv `make test` installs.
fn mlflow_bin() -> PathBuf {
    let bin = std::env::var_os("MLFLOW_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/pipeline/mlflow-3.17.2/bin/mlflow")
    });
    assert!(
        bin.exists(),
        "MLflow is not installed at {}: run the tests with `make test`, which installs mlflow==3.17.2 into that venv",
        bin.display()
    );
    bin
}

/// A running server; it is stopped (with its workers) when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
    python: PathBuf,
    dir: tempfile::TempDir,
    /// The admin password of a server with basic auth.
    password: Option<String>,
}

impl Server {
    /// Starts a server with a fresh sqlite store and waits until it answers.
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// Starts a server with MLflow's basic auth (`--app-name basic-auth`,
    /// from `mlflow[auth]`): user `admin` with `password` (12 characters or more).
    pub fn start_with_auth(password: &str) -> Server {
        Server::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> Server {
        let bin = mlflow_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut command = Command::new(&bin);
        if let Some(password) = password {
            command
                .args(["server", "--app-name", "basic-auth"])
                .env("MLFLOW_AUTH_ADMIN_PASSWORD", password)
                .env("MLFLOW_FLASK_SERVER_SECRET_KEY", "pipeline-tests");
        } else {
            command.arg("server");
        }
        let child = command
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.path().join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.path().join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            python: bin.parent().unwrap().join("python"),
            dir,
            password: password.map(str::to_string),
        };
        let start = Instant::now();
        while ureq::get(format!("{}/health", server.uri)).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "MLflow did not start in 180 s: {}",
                std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "MLflow up at {} after {:.1}s",
            server.uri,
            start.elapsed().as_secs_f64()
        );
        server
    }

    /// Runs a Python script with `mlflow` importable and `URI` set; returns its JSON output.
    pub fn python(&self, script: &str) -> serde_json::Value {
        let mut command = Command::new(&self.python);
        if let Some(password) = &self.password {
            command
                .env("MLFLOW_TRACKING_USERNAME", "admin")
                .env("MLFLOW_TRACKING_PASSWORD", password);
        }
        let output = command
            .arg("-c")
            .arg(script)
            .env("URI", &self.uri)
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(output.status.success(), "the read-back script failed");
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM to the whole group stops uvicorn's workers too.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to a server; [`Proxy::cut`] closes every connection and
/// refuses new ones, as a server that went down would.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            uri: format!("http://{}", listener.local_addr().unwrap()),
            cut: Arc::default(),
            open: Arc::default(),
        };
        let (cut, open) = (proxy.cut.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buffer) {
                            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        proxy
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}
