//! Helpers for the integration tests: a scratch workspace and the `testkit`
//! example binary (the CLI with the test stage kinds).

#![allow(dead_code)]

pub mod http;
pub mod kinds;
pub mod mlflow;
pub mod project;
pub mod slurm;
pub mod sweeps;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `testkit` example that `cargo test` builds beside the test binaries.
pub fn testkit() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("testkit");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test`",
        path.display()
    );
    path
}

/// A temporary directory with pipeline files, a store and a run log.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The testkit command in this workspace, logging runs to `run.log`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(testkit());
        command
            .args(args)
            .current_dir(self.path())
            .env("PIPELINE_STORE", self.store())
            .env("TESTKIT_LOG", self.path().join("run.log"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs with `--json` and returns the exit code and parsed stdout.
    pub fn run_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run(&all);
        let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().unwrap_or(-1), json)
    }

    /// Lines of the run log.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("run.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn clear_log(&self) {
        let _ = std::fs::remove_file(self.path().join("run.log"));
    }
}

/// `stage name -> state` from a `run --json` result.
pub fn states(result: &serde_json::Value) -> Vec<(String, String)> {
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The names of stages in a given state.
pub fn in_state(result: &serde_json::Value, state: &str) -> Vec<String> {
    states(result)
        .into_iter()
        .filter(|(_, s)| s == state)
        .map(|(n, _)| n)
        .collect()
}

/// A chain of seven `step` stages, `a` to `g`.
pub const SEVEN_STAGES: &str = "name: seven
seed: 1
stages:
  a: {kind: step, text: A, seeded: true}
  b: {kind: step, text: B}
  c: {kind: step, text: C}
  d: {kind: step, text: D}
  e: {kind: step, text: E}
  f: {kind: step, text: F}
  g: {kind: step, text: G}
";
