//! Sweep parallelism: `pipeline run sweeps/lr.yaml` (8 trials on the sample
//! data, 2 at a time) in fresh stores, through the real binary. Reports the
//! sweep's wall time against the sum of its trials' own times (each trial's
//! train, evaluate and report stages) and the shared data stages' time.
//!
//! `cargo bench --profile dev --bench sweep`; `REPS` (default 3), `SWEEP`
//! (default `sweeps/lr.yaml`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"));
    let reps: usize = std::env::var("REPS").map_or(3, |r| r.parse().expect("REPS is a number"));
    let sweep = std::env::var("SWEEP").unwrap_or_else(|_| "sweeps/lr.yaml".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{sweep} in fresh stores, {cores} cores, medians of {reps}");
    println!(
        "{:>4} {:>8} {:>12} {:>10} {:>8}",
        "rep", "wall s", "trials' s", "shared s", "ratio"
    );
    let mut ratios = Vec::new();
    let mut walls = Vec::new();
    for rep in 0..reps {
        let store = tempfile::tempdir().expect("a temporary directory");
        let output = Command::new(&binary)
            .args(["--json", "run", &sweep])
            .current_dir(repo)
            .env("PIPELINE_STORE", store.path())
            .env_remove("MLFLOW_TRACKING_URI")
            .output()
            .expect("the pipeline binary runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let wall = result["seconds"].as_f64().unwrap();
        let trials: f64 = result["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["seconds"].as_f64().unwrap())
            .sum();
        let shared: f64 = result["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !s["label"].as_str().unwrap().starts_with("trial-"))
            .map(|s| s["seconds"].as_f64().unwrap())
            .sum();
        println!(
            "{rep:>4} {wall:>8.1} {trials:>12.1} {shared:>10.1} {:>8.3}",
            wall / trials
        );
        ratios.push(wall / trials);
        walls.push(wall);
    }
    println!(
        "median: wall {:.1} s, wall / sum of trials' times = {:.3} (goal <= 0.6)",
        median(&mut walls),
        median(&mut ratios)
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
