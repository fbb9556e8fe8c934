//! Wall time of fully cached runs, where nothing is left to do: a 7-stage
//! pipeline whose first stage wrote 64 MB (so a re-hash would show), and
//! the README's main job, `sweeps/lr.yaml` (8 trials over the sample
//! pipeline). Run with `cargo bench --bench noop_run`; prints the median of
//! 10 runs of each after one that computes everything.
//!
//! The benchmark re-executes itself as the `pipeline` command line (with the
//! test suite's stage kinds for the 7-stage pipeline, the built-in ones for
//! the sweep), so it measures the real process start, YAML parsing, key
//! computation, store checks and lock file writes.

#[path = "../tests/common/kinds.rs"]
mod kinds;

use std::path::Path;
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

/// Which stage kinds the re-executed child registers.
const CHILD: &str = "NOOP_BENCH_CHILD";

fn main() -> ExitCode {
    match std::env::var(CHILD).as_deref() {
        Ok("kinds") => return pipeline::cli::main(&kinds::registry()),
        Ok("builtin") => return pipeline::cli::main(&pipeline::stages::builtin()),
        _ => {}
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let steps = dir.path().join("steps");
    std::fs::create_dir(&steps).unwrap();
    std::fs::write(steps.join("p.yaml"), PIPELINE).expect("write the pipeline");
    let log = steps.join("run.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let run = |file: &str, cwd: &Path, kinds: &str| {
        let start = Instant::now();
        let status = Command::new(std::env::current_exe().expect("own path"))
            .args(["run", file])
            .current_dir(cwd)
            .env(CHILD, kinds)
            .env("PIPELINE_STORE", cwd.join("store"))
            .env("TESTKIT_LOG", &log)
            .env_remove("MLFLOW_TRACKING_URI")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run the child");
        assert!(status.success(), "pipeline run {file} failed");
        start.elapsed().as_secs_f64() * 1000.0
    };

    let first = run("p.yaml", &steps, "kinds");
    let after_first = read_log();
    let times: Vec<f64> = (0..RUNS).map(|_| run("p.yaml", &steps, "kinds")).collect();
    assert_eq!(read_log(), after_first, "a cached run did stage work");
    println!("first run (7 stages computed, 64 MB written): {first:.1} ms");
    report("cached run of 7 stages", times);

    // The sweep and its pipeline, copied, with the repository's data linked.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sweep = dir.path().join("sweep");
    for sub in ["sweeps", "pipelines"] {
        std::fs::create_dir_all(sweep.join(sub)).unwrap();
    }
    std::fs::copy(repo.join("sweeps/lr.yaml"), sweep.join("sweeps/lr.yaml")).unwrap();
    std::fs::copy(
        repo.join("pipelines/imdb-sample.yaml"),
        sweep.join("pipelines/imdb-sample.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(repo.join("data"), sweep.join("data")).unwrap();
    let first = run("sweeps/lr.yaml", &sweep, "builtin");
    let lock = || std::fs::read(sweep.join("sweeps/lr.lock")).expect("the sweep's lock");
    let first_lock = lock();
    let times: Vec<f64> = (0..RUNS).map(|_| run("sweeps/lr.yaml", &sweep, "builtin")).collect();
    assert_eq!(lock(), first_lock, "a cached sweep changed its lock");
    println!("first run of sweeps/lr.yaml (8 trials trained): {first:.0} ms");
    report("cached run of sweeps/lr.yaml (8 trials)", times);
    ExitCode::SUCCESS
}

/// Prints the median, minimum and maximum of `times` (milliseconds).
fn report(what: &str, mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    let median = (times[RUNS / 2 - 1] + times[RUNS / 2]) / 2.0;
    println!(
        "{what}: median {median:.2} ms over {RUNS} runs (min {:.2}, max {:.2})",
        times[0],
        times[RUNS - 1]
    );
}
