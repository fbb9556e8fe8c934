//! Early stopping (`early_terminate: {type: asha}`) through the real binary
//! on the sample data: the same trials pruned at the same rungs for any
//! `parallel`, after a kill and in a run found in the cache; no entry for a
//! pruned stage; and a pruned trial that is later run to its end goes on
//! from its saved state to the bits of a run that never stopped.

mod common;

use std::collections::BTreeSet;

use common::project::Project;
use common::sweeps::{labels_in, run_until};
use serde_json::Value;

/// Six random learning rates for the sample pipeline's CNN (3 epochs, 675
/// steps, an evaluation every 75), rungs at steps 75 and 225.
fn asha_sweep(project: &Project, parallel: usize) -> String {
    project.copy("imdb-sample.yaml");
    project.write_at(
        "sweeps/asha.yaml",
        &format!(
            "pipeline: ../pipelines/imdb-sample.yaml\n\
             method: random\n\
             trials: 6\n\
             seed: 1\n\
             metric: {{name: eval_accuracy, goal: maximize}}\n\
             parameters:\n  \
               stages.train.optimizer.lr: {{distribution: log_uniform, min: 1.0e-4, max: 3.0e-2}}\n\
             early_terminate: {{type: asha, grace_steps: 75, reduction_factor: 3}}\n\
             parallel: {parallel}\n"
        ),
    )
}

/// Each trial's label, parameters, status, metric and pruning step, sorted.
fn table(result: &Value) -> Vec<String> {
    let mut rows: Vec<String> = result["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {} {}",
                t["trial"], t["params"], t["status"], t["metric"], t["pruned_at_step"]
            )
        })
        .collect();
    rows.sort();
    rows
}

fn trials_with<'a>(result: &'a Value, status: &str) -> Vec<&'a Value> {
    result["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == status)
        .collect()
}

#[test]
fn asha_prunes_the_same_trials_for_any_parallel_after_a_kill_and_from_the_cache() {
    let project = Project::new();
    let sweep = asha_sweep(&project, 1);
    let (code, one) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "pruned trials are not failures: {one}");
    assert_eq!(one["ok"], true, "{one}");
    let pruned = trials_with(&one, "pruned");
    let finished = trials_with(&one, "finished");
    assert_eq!(pruned.len() + finished.len(), 6, "{one}");
    assert!(
        !finished.is_empty() && pruned.len() >= 3,
        "at least 2 of 3 stop at the first rung: {one}"
    );
    for trial in &pruned {
        let step = trial["pruned_at_step"].as_u64().unwrap();
        assert!(step == 75 || step == 225, "pruned at a rung: {trial}");
        assert_eq!(trial["metric"], Value::Null, "a shorter run does not rank: {trial}");
    }
    let best = one["best"].as_str().unwrap();
    assert!(finished.iter().any(|t| t["trial"] == best), "{one}");
    // The pruned stages stored no entry, and the sweep's lock holds the finished trials.
    let pruned_trains = labels_in(&one, "pruned", "/train");
    assert_eq!(pruned_trains.len(), pruned.len(), "{one}");
    let lock = std::fs::read_to_string(project.main().join("sweeps/asha.lock")).expect("the sweep's lock");
    for stage in one["stages"].as_array().unwrap() {
        // The stages after a pruned one have no key.
        let Some(key) = stage["key"].as_str() else {
            assert_eq!(stage["state"], "skipped", "{stage}");
            continue;
        };
        let kind = stage["kind"].as_str().unwrap();
        let entry = project.dir.path().join("store").join(kind).join(key);
        if stage["state"] == "pruned" {
            assert!(!entry.exists(), "no entry for a pruned stage: {stage}");
            assert!(!lock.contains(key), "a pruned stage is not locked: {stage}");
        } else if stage["state"] == "ran" {
            assert!(entry.exists() && lock.contains(key), "{stage}");
        }
    }
    let report = std::fs::read_to_string(project.dir.path().join("store/.sweeps/asha/sweep-report.html")).unwrap();
    assert!(report.contains("pruned@75"), "the report shows where trials stopped");

    // Run again: nothing trains (a pruned stage goes on from its saved state and stops at once).
    let (code, again) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{again}");
    assert!(labels_in(&again, "ran", "").is_empty(), "{again}");
    assert_eq!(table(&again).len(), 6);
    let cached: BTreeSet<String> = trials_with(&again, "cached")
        .iter()
        .map(|t| t["trial"].to_string())
        .collect();
    let before: BTreeSet<String> = finished.iter().map(|t| t["trial"].to_string()).collect();
    assert_eq!(cached, before, "{again}");
    let (code, plan) = project.run_json(&["plan", &sweep], &[]);
    assert_eq!(code, 0, "{plan}");
    let saved = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "run (from its saved state)")
        .count();
    assert_eq!(saved, pruned.len(), "{plan}");

    // Two at a time in a fresh store, killed at the first pruning, then run again.
    std::fs::remove_file(project.main().join("sweeps/asha.lock")).unwrap();
    let sweep = asha_sweep(&project, 2);
    let other = project.dir.path().join("other-store");
    let env = [("PIPELINE_STORE", other.to_str().unwrap())];
    let (mut child, _, _) = run_until(&project, &["run", &sweep], &env, |line| line.contains("pruned "));
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, two) = project.run_json(&["run", &sweep], &env);
    assert_eq!(code, 0, "{two}");
    assert_eq!(table(&two).len(), 6);
    let same = |result: &Value| {
        let mut rows: Vec<String> = result["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("{} {} {}", t["trial"], t["metric"], t["pruned_at_step"]))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(
        same(&two),
        same(&one),
        "the same trials pruned at the same steps, the same scores"
    );
    assert_eq!(
        std::fs::read_to_string(project.main().join("sweeps/asha.lock")).unwrap(),
        lock,
        "the same lock, byte for byte"
    );
}

#[test]
fn a_pruned_trial_run_to_its_end_goes_on_from_its_saved_state_to_the_same_bits() {
    let project = Project::new();
    project.copy("imdb-sample.yaml");
    let sweep = project.write_at(
        "sweeps/two.yaml",
        "pipeline: ../pipelines/imdb-sample.yaml\n\
         method: grid\n\
         metric: {name: eval_accuracy, goal: maximize}\n\
         parameters:\n  \
           stages.train.optimizer.lr: {values: [3.0e-3, 1.0e-5]}\n\
         early_terminate: {type: asha, grace_steps: 75}\n\
         parallel: 2\n",
    );
    let (code, swept) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{swept}");
    let pruned = trials_with(&swept, "pruned");
    assert_eq!(pruned.len(), 1, "the tiny learning rate is behind at step 75: {swept}");
    assert_eq!(pruned[0]["params"]["stages.train.optimizer.lr"], 1.0e-5, "{swept}");

    // The same training outside the sweep: it goes on from step 75.
    let args = [
        "run",
        "pipelines/imdb-sample.yaml",
        "--set",
        "stages.train.optimizer.lr=1.0e-5",
    ];
    let mut all = vec!["--json"];
    all.extend(args);
    let output = project.run_env(&all, &[("RUST_LOG", "pipeline::train=info")]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("going on from the saved training state step=75"), "{log}");
    let resumed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let model = std::fs::read(project.out(&resumed, "train").join("model.safetensors")).unwrap();
    let history = std::fs::read(project.out(&resumed, "train").join("history.csv")).unwrap();
    let state = project.dir.path().join("store/.partial/train");
    assert_eq!(
        std::fs::read_dir(&state).map_or(0, |d| d.count()),
        0,
        "the saved state goes once the entry is stored"
    );

    // A run that never stopped, in a fresh store: the same bits.
    let fresh = project.dir.path().join("fresh-store");
    let (code, straight) = project.run_json(&args, &[("PIPELINE_STORE", fresh.to_str().unwrap())]);
    assert_eq!(code, 0, "{straight}");
    let key = |result: &Value| {
        result["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "train")
            .unwrap()["key"]
            .clone()
    };
    assert_eq!(key(&straight), key(&resumed));
    let out = fresh.join("train").join(key(&straight).as_str().unwrap()).join("out");
    assert!(
        std::fs::read(out.join("model.safetensors")).unwrap() == model,
        "model.safetensors differs"
    );
    assert!(
        std::fs::read(out.join("history.csv")).unwrap() == history,
        "history.csv differs"
    );
}
