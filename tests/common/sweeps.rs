//! Sweep files over the sample pipeline, for the sweep and MLflow tests.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use serde_json::Value;

use super::project::Project;

/// The labels of a sweep run's stages (`--json`) in `state` whose label ends with `suffix`.
pub fn labels_in(result: &Value, state: &str, suffix: &str) -> BTreeSet<String> {
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == state && s["label"].as_str().unwrap().ends_with(suffix))
        .map(|s| s["label"].as_str().unwrap().to_string())
        .collect()
}

/// A grid over the sample pipeline with one-epoch trials (about 4 s each):
/// `lrs` x clipping off/on, two at a time; `extra` is appended to the file.
pub fn sample_grid(project: &Project, name: &str, lrs: &[&str], extra: &str) -> String {
    project.copy("imdb-sample.yaml");
    project.write_at(
        &format!("sweeps/{name}.yaml"),
        &format!(
            "pipeline: ../pipelines/imdb-sample.yaml\n\
             method: grid\n\
             metric: {{name: eval_accuracy, goal: maximize}}\n\
             parameters:\n  \
               stages.train.optimizer.lr: {{values: [{}]}}\n  \
               stages.train.clip_grad_norm: {{values: [null, 1.0]}}\n  \
               stages.train.epochs: {{values: [1]}}\n\
             parallel: 2\n{extra}",
            lrs.join(", ")
        ),
    )
}

/// A `tpe` sweep over the sample pipeline with one-epoch trials: two
/// random start-up trials, then three asked from the results, each with
/// one trial before it still counted as running; `extra` is appended.
pub fn tpe_sweep(project: &Project, parallel: usize, extra: &str) -> String {
    project.copy("imdb-sample.yaml");
    project.write_at(
        "sweeps/tpe.yaml",
        &format!(
            "pipeline: ../pipelines/imdb-sample.yaml\n\
             method: tpe\n\
             trials: 5\n\
             seed: 3\n\
             tpe: {{startup_trials: 2, in_flight: 1}}\n\
             metric: {{name: eval_accuracy, goal: maximize}}\n\
             parameters:\n  \
               stages.train.optimizer.lr: {{distribution: log_uniform, min: 1.0e-4, max: 3.0e-2}}\n  \
               stages.train.clip_grad_norm: {{values: [null, 1.0]}}\n  \
               stages.train.epochs: {{values: [1]}}\n\
             parallel: {parallel}\n{extra}"
        ),
    )
}

/// Each trial's label, parameters and metric, by label.
pub fn tpe_trials(result: &Value) -> Vec<(String, String, String)> {
    let mut trials: Vec<(String, String, String)> = result["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["trial"].to_string(), t["params"].to_string(), t["metric"].to_string()))
        .collect();
    trials.sort();
    trials
}

/// Starts `pipeline` with `args` and stderr piped and reads it until
/// `stop` says so; returns the child, the labels of the stages that ran by
/// then, and a thread that drains (and returns) the rest of stderr.
pub fn run_until(
    project: &Project,
    args: &[&str],
    env: &[(&str, &str)],
    mut stop: impl FnMut(&str) -> bool,
) -> (Child, Vec<String>, JoinHandle<String>) {
    let mut child = project
        .command(args, env)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut ran = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("ran ") {
            ran.push(rest.split_whitespace().next().unwrap().to_string());
        }
        if stop(&line) {
            let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
            return (child, ran, rest);
        }
    }
    let status = child.wait().unwrap();
    panic!("the run ended ({status}) before the stop condition; stages that ran: {ran:?}");
}
