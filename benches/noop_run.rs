//! Wall time of a fully cached `pipeline run` of a 7-stage pipeline whose
//! first stage wrote 64 MB (so a re-hash would show). Run with
//! `cargo bench --bench noop_run`; prints the median of 10 runs.
//!
//! The benchmark re-executes itself as the `pipeline` command line with the
//! test suite's stage kinds, so it measures the real process start, YAML
//! parsing, key computation, store checks and lock file write.

#[path = "../tests/common/kinds.rs"]
mod kinds;

use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const PIPELINE: &str = "name: noop-bench
seed: 1
stages:
  download: {kind: step, text: download, bytes: 67108864}
  shuffle: {kind: step, text: shuffle, seeded: true}
  split: {kind: step, text: split}
  tokenize: {kind: step, text: tokenize}
  vectorize: {kind: step, text: vectorize}
  train: {kind: step, text: train, seeded: true}
  evaluate: {kind: step, text: evaluate}
";

const RUNS: usize = 10;

fn main() -> ExitCode {
    if std::env::var_os("NOOP_BENCH_CHILD").is_some() {
        return pipeline::cli::main(&kinds::registry());
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("p.yaml"), PIPELINE).expect("write the pipeline");
    let run = || {
        let start = Instant::now();
        let status = Command::new(std::env::current_exe().expect("own path"))
            .args(["run", "p.yaml"])
            .current_dir(dir.path())
            .env("NOOP_BENCH_CHILD", "1")
            .env("PIPELINE_STORE", dir.path().join("store"))
            .env("TESTKIT_LOG", dir.path().join("run.log"))
            .stderr(Stdio::null())
            .status()
            .expect("run the child");
        assert!(status.success(), "pipeline run failed");
        start.elapsed().as_secs_f64() * 1000.0
    };
    let first = run();
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    let after_first = log();
    let mut times: Vec<f64> = (0..RUNS).map(|_| run()).collect();
    assert_eq!(log(), after_first, "a cached run did stage work");
    times.sort_by(f64::total_cmp);
    let median = (times[RUNS / 2 - 1] + times[RUNS / 2]) / 2.0;
    println!("first run (7 stages computed, 64 MB written): {first:.1} ms");
    println!(
        "cached run of 7 stages: median {median:.2} ms over {RUNS} runs (min {:.2}, max {:.2})",
        times[0],
        times[RUNS - 1]
    );
    ExitCode::SUCCESS
}
