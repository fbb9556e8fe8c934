//! The Slurm executor's overhead: `pipeline run sweeps/lr.yaml` (8 trials on
//! the sample data, 2 at a time) with `--executor slurm` on the tests'
//! single-node cluster (tests/common/slurm.rs: 2 CPUs, one per task) against
//! the local executor, each in a fresh store, in pairs whose order
//! alternates. Reports each pair's wall times and their ratio (goal: at most
//! 1.2x local), and checks that both gave the same trials' scores (and,
//! without `SET`, wrote the same lock).
//!
//! `cargo bench --profile dev --bench slurm_overhead` as root with Debian's
//! Slurm installed (`make test` installs it); `REPS` pairs (default 3);
//! `SET=stages.train.epochs=12` runs a variant of the sweep (`--set`, longer
//! trials).

#[allow(dead_code)]
#[path = "../tests/common/slurm.rs"]
mod slurm;

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The two executors, as `--executor` names them.
const EXECUTORS: [&str; 2] = ["local", "slurm"];

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"));
    let reps: usize = std::env::var("REPS").map_or(3, |r| r.parse().expect("REPS is a number"));
    let set = std::env::var("SET").ok();
    let mut args = vec!["--json", "run", "sweeps/lr.yaml"];
    if let Some(set) = &set {
        args.extend(["--set", set]);
    }
    let cluster = slurm::Cluster::start();
    println!(
        "sweeps/lr.yaml{} in fresh stores, local against Slurm (one node, 2 CPUs), {reps} pairs",
        set.as_ref().map_or(String::new(), |s| format!(" --set {s}"))
    );
    println!("{:>4} {:>9} {:>9} {:>7}", "pair", "local s", "slurm s", "ratio");
    let (mut locals, mut slurms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..reps {
        let mut walls = [0.0; 2];
        let mut locks: [Vec<u8>; 2] = Default::default();
        let mut scores: [Vec<String>; 2] = Default::default();
        for i in 0..2 {
            // Alternate which executor goes first: the machine's speed drifts.
            let which = (i + pair) % 2;
            let store = tempfile::tempdir().expect("a temporary directory");
            let start = Instant::now();
            let output = cluster
                .command(binary.to_str().unwrap())
                .args(&args)
                .args(["--executor", EXECUTORS[which]])
                .current_dir(repo)
                .env("PIPELINE_STORE", store.path())
                .env_remove("MLFLOW_TRACKING_URI")
                .output()
                .expect("the pipeline binary runs");
            walls[which] = start.elapsed().as_secs_f64();
            assert!(
                output.status.success(),
                "{}: {}\n{}",
                EXECUTORS[which],
                String::from_utf8_lossy(&output.stderr),
                cluster.logs()
            );
            let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
            // The scores and the files' keys (their paths, without the store's).
            scores[which] = result["trials"]
                .as_array()
                .expect("trials")
                .iter()
                .map(|t| {
                    let scored = serde_json::json!([t["trial"], t["metrics"], t["results"]]).to_string();
                    scored.replace(&store.path().display().to_string(), "<store>")
                })
                .collect();
            if set.is_none() {
                locks[which] = std::fs::read(repo.join("sweeps/lr.lock")).expect("the sweep's lock");
            }
        }
        assert!(scores[0] == scores[1], "the Slurm run's trials scored otherwise");
        assert!(
            locks[0] == locks[1],
            "the Slurm run's lock differs from the local run's"
        );
        let ratio = walls[1] / walls[0];
        println!("{pair:>4} {:>9.1} {:>9.1} {ratio:>7.3}", walls[0], walls[1]);
        locals.push(walls[0]);
        slurms.push(walls[1]);
        ratios.push(ratio);
    }
    println!(
        "median: local {:.1} s, slurm {:.1} s, slurm / local = {:.3} (goal <= 1.2)",
        median(&mut locals),
        median(&mut slurms),
        median(&mut ratios)
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
