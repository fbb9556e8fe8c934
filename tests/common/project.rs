//! A scratch project for tests that run the real `pipeline` binary.

use std::path::{Path, PathBuf};
use std::process::Output;

/// A scratch project: `main/pipelines/*.yaml`, `main/data` -> the repo's data,
/// `shared/data` -> the full data sets ([`data_root`]) where they exist, and a store.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project for tests that need only the repository's own data.
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(dir.path().join("main/pipelines")).unwrap();
        std::os::unix::fs::symlink(repo.join("data"), dir.path().join("main/data")).unwrap();
        let data = data_root_path();
        if data.exists() {
            std::fs::create_dir_all(dir.path().join("shared")).unwrap();
            std::os::unix::fs::symlink(data, dir.path().join("shared/data")).unwrap();
        }
        Project { dir }
    }

    /// A project for tests that read the full data sets: fails, saying how to
    /// provide them, where they are missing.
    pub fn with_full_data() -> Project {
        data_root();
        Project::new()
    }

    pub fn main(&self) -> PathBuf {
        self.dir.path().join("main")
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.main().join("pipelines").join(name), text).unwrap();
        format!("pipelines/{name}")
    }

    /// Writes `text` at `path` relative to the project (e.g. `sweeps/lr.yaml`).
    pub fn write_at(&self, path: &str, text: &str) -> String {
        let full = self.main().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
        path.to_string()
    }

    pub fn copy(&self, name: &str) -> String {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines").join(name)).unwrap();
        self.write(name, &text)
    }

    /// The `pipeline` command in this project, not started.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
        command
            .args(args)
            .current_dir(self.main())
            .env("PIPELINE_STORE", self.dir.path().join("store"));
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Runs with `--json`; returns the exit code and the parsed result.
    pub fn run_json(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run_env(&all, env);
        let json = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code().unwrap(), json)
    }

    /// The output directory of stage `name` after a `run --json`.
    pub fn out(&self, result: &serde_json::Value, name: &str) -> PathBuf {
        let stage = result["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        let (kind, key) = (stage["kind"].as_str().unwrap(), stage["key"].as_str().unwrap());
        self.dir.path().join("store").join(kind).join(key).join("out")
    }

    pub fn entries(&self) -> usize {
        let store = self.dir.path().join("store");
        std::fs::read_dir(&store)
            .map(|kinds| {
                kinds
                    .flatten()
                    .filter(|k| !k.file_name().to_string_lossy().starts_with('.'))
                    .map(|k| std::fs::read_dir(k.path()).unwrap().count())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Where the full data sets are looked for: `PIPELINE_DATA` when set, else the checkout's `../shared/data`.
fn data_root_path() -> PathBuf {
    std::env::var_os("PIPELINE_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
        PathBuf::from,
    )
}

/// The full data sets (IMDB, GLUE MRPC, GloVe, tokenizers; see `../shared/data/README.md`)
/// at [`data_root_path`]. The tests that read them ([`Project::with_full_data`]) fail,
/// naming what to do, without them.
pub fn data_root() -> PathBuf {
    let root = data_root_path();
    assert!(
        root.join("imdb/train.parquet").exists(),
        "the full data sets are missing at {}: this test reads them (the README lists the tests that do). \
         Point PIPELINE_DATA at a copy laid out as ../shared/data/README.md describes \
         (imdb/, glue-mrpc/, glove/, tokenizers/), or put one at ../shared/data",
        root.display()
    );
    root
}
