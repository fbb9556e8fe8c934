//! Training throughput on the full IMDB train split (bert-base-cased, 128
//! tokens, batch 8), measured through the real `pipeline` binary, side by side
//! with the PyTorch reference scripts in `../shared/bench/pytorch` (LSTM and
//! GRU: `benches/reference/recurrent_train.py`, which adds them there) when
//! `PYTHON` names an interpreter with torch and tokenizers.
//!
//! `cargo bench --bench train` (or `make bench`). Steady-state steps/s is
//! `(long - short) / (t_long - t_short)` from the train stage's time at two
//! step counts, so start-up, model initialisation and saving cancel out.
//! Environment: `REPS` (default 3), `MODELS` (default `cnn,rnn,lstm,gru`),
//! `THREADS` (default 1). With `PYTHON`, every repetition runs ours and then
//! the PyTorch script (fused and plain AdamW) back to back, and the ratio is
//! the median of those paired ratios: this machine's speed drifts over
//! minutes, so figures measured far apart do not compare.

use std::path::{Path, PathBuf};
use std::process::Command;

const SHORT: usize = 30;
const LONG: usize = 230;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"));
    let reps: usize = env_or("REPS", "3").parse().expect("REPS is a number");
    let threads = env_or("THREADS", "1");
    let models = env_or("MODELS", "cnn,rnn,lstm,gru");
    let work = tempfile::tempdir().expect("a temporary directory");
    let pipelines = work.path().join("main/pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::os::unix::fs::symlink(repo.join("data"), work.path().join("main/data")).unwrap();
    std::os::unix::fs::symlink(repo.join("../shared"), work.path().join("shared")).unwrap();
    let text = std::fs::read_to_string(repo.join("pipelines/imdb-cnn.yaml")).unwrap();
    let until_train = &text[..text.find("  evaluate:").expect("imdb-cnn.yaml has an evaluate stage")];
    let file = pipelines.join("bench.yaml");
    std::fs::write(&file, until_train).unwrap();
    let store = work.path().join("store");

    println!("training throughput, batch 8, max_length 128, {threads} thread(s), medians of {reps}");
    let python = std::env::var("PYTHON").ok();
    match &python {
        Some(python) => println!(
            "PyTorch reference ({python}) interleaved: each repetition runs ours, then torch fused and plain AdamW"
        ),
        None => println!("PYTHON is not set: no PyTorch reference in this run"),
    }
    let script_dir = repo.join("../shared/bench/pytorch");
    for model in models.split(',') {
        let sets = match model {
            "cnn" => vec![],
            "rnn" => vec!["stages.train.model.type=rnn", "stages.train.model.hidden_size=96"],
            "lstm" => vec!["stages.train.model.type=lstm", "stages.train.model.hidden_size=96"],
            "gru" => vec!["stages.train.model.type=gru", "stages.train.model.hidden_size=96"],
            other => panic!("unknown model {other}"),
        };
        let torch = python.as_deref();
        let optims = ["adamw_fused", "adamw"];
        let mut ours = Vec::new();
        let mut theirs: [Vec<f64>; 2] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        for _ in 0..reps {
            let short = train_seconds(&binary, &file, &store, &sets, SHORT, &threads);
            let long = train_seconds(&binary, &file, &store, &sets, LONG, &threads);
            let rate = (LONG - SHORT) as f64 / (long - short);
            ours.push(rate);
            if let Some(python) = torch {
                for (k, optim) in optims.iter().enumerate() {
                    let steps = pytorch_steps(python, &script_dir, model, optim, &threads, work.path());
                    theirs[k].push(steps);
                    ratios[k].push(rate / steps);
                }
            }
        }
        let mut line = format!(
            "  {model:5} pipeline {:7.1} steps/s (runs: {})",
            median(&mut ours.clone()),
            list(&ours, 1)
        );
        if torch.is_some() {
            for (k, optim) in optims.iter().enumerate() {
                line += &format!(
                    " | torch {optim} {:6.1} (runs: {}), ratio {:.2}x (per run: {})",
                    median(&mut theirs[k].clone()),
                    list(&theirs[k], 1),
                    median(&mut ratios[k].clone()),
                    list(&ratios[k], 2)
                );
            }
        }
        println!("{line}");
    }
}

/// Seconds the train stage took for `steps` steps (its cache entry removed first).
fn train_seconds(binary: &Path, file: &Path, store: &Path, sets: &[&str], steps: usize, threads: &str) -> f64 {
    let _ = std::fs::remove_dir_all(store.join("train"));
    let mut command = Command::new(binary);
    command.args(["--json", "run"]).arg(file).env("PIPELINE_STORE", store);
    let max_steps = format!("stages.train.max_steps={steps}");
    let threads = format!("stages.train.threads={threads}");
    let eval = "stages.train.eval_steps=100000".to_string();
    for set in sets
        .iter()
        .copied()
        .chain([max_steps.as_str(), threads.as_str(), eval.as_str()])
    {
        command.args(["--set", set]);
    }
    let output = command.output().expect("pipeline runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json output");
    let stage = result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .expect("a train stage");
    stage["seconds"].as_f64().expect("seconds")
}

/// Steps/s of one repetition of the PyTorch script.
fn pytorch_steps(python: &str, dir: &Path, model: &str, optim: &str, threads: &str, work: &Path) -> f64 {
    let out = work.join(format!("torch-{model}-{optim}.jsonl"));
    let _ = std::fs::remove_file(&out);
    // The shared script has the cnn and rnn models at this size; ours adds lstm and gru to it.
    let mut command = Command::new(python);
    match model {
        "lstm" | "gru" => command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/recurrent_train.py"))
            .arg(dir),
        _ => command.arg("bench_train.py"),
    };
    let status = command
        .args(["--model", model, "--steps", "300", "--warmup", "20", "--eval-n", "200"])
        .args(["--reps", "1", "--threads", threads, "--optim", optim, "--out"])
        .arg(&out)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python runs");
    assert!(status.success(), "bench_train.py failed");
    let mut rates: Vec<f64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["steps_per_s"].as_f64())
        .collect();
    median(&mut rates)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `values` with `decimals` digits after the point, comma-separated.
fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}
