//! Sweeps through the real binary on the sample data: one graph for all
//! trials (shared stages once), resuming after a kill, failing trials, and
//! located errors in sweep files.

mod common;

use std::collections::BTreeSet;

use common::project::Project;
use common::sweeps::{labels_in, run_until, sample_grid};
use serde_json::Value;

fn stages(result: &Value) -> &Vec<Value> {
    result["stages"].as_array().unwrap()
}

#[test]
fn an_eight_trial_grid_runs_the_shared_stages_once_and_ranks_the_trials() {
    let project = Project::new();
    let sweep = sample_grid(&project, "grid", &["1.0e-2", "3.0e-3", "1.0e-3", "3.0e-4"], "");
    // A dry run first: the trials, the merged graph, nothing executed.
    let (code, plan) = project.run_json(&["plan", &sweep], &[]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["trials"].as_array().unwrap().len(), 8);
    assert_eq!(plan["stages"].as_array().unwrap().len(), 7 + 8 * 3);
    assert_eq!(plan["to_run"], 7 + 8 * 3);
    let shared = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["trials"] == 8)
        .count();
    assert_eq!(shared, 7, "{plan}");
    assert!(!project.dir.path().join("store/train").exists(), "plan runs nothing");
    let (code, result) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{result}");
    let all = stages(&result);
    let shared: Vec<&Value> = all
        .iter()
        .filter(|s| !s["label"].as_str().unwrap().starts_with("trial-"))
        .collect();
    let names: Vec<&str> = shared.iter().map(|s| s["label"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "train_data",
            "test_data",
            "load",
            "shuffle",
            "split",
            "tokenize",
            "vectorize"
        ],
        "each upstream stage is one node"
    );
    assert!(shared.iter().all(|s| s["state"] == "ran"));
    assert_eq!(all.len(), 7 + 8 * 3, "train, evaluate and report per trial");
    assert!(all.iter().all(|s| s["state"] == "ran"));

    let trials = result["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8);
    let metrics: Vec<f64> = trials.iter().map(|t| t["metric"].as_f64().unwrap()).collect();
    assert!(
        metrics.windows(2).all(|w| w[0] >= w[1]),
        "sorted best first: {metrics:?}"
    );
    assert_eq!(result["best"], trials[0]["trial"]);
    let params: BTreeSet<String> = trials.iter().map(|t| t["params"].to_string()).collect();
    assert_eq!(params.len(), 8, "every combination once");
    assert!(
        trials
            .iter()
            .all(|t| t["status"] == "finished" && t["seconds"].as_f64().unwrap() > 0.0)
    );

    let report = std::fs::read_to_string(result["report"].as_str().unwrap()).unwrap();
    assert!(
        report.contains("<h2>Training loss</h2>") && report.contains("eval_accuracy against stages.train.optimizer.lr")
    );
    assert!(!report.contains("src=") && !report.contains("href="), "self-contained");
    for t in trials {
        assert!(report.contains(t["trial"].as_str().unwrap()));
    }
    let lock = std::fs::read_to_string(project.main().join("sweeps/grid.lock")).unwrap();
    assert_eq!(
        lock.matches("/train:").count(),
        8,
        "the lock keeps every trial's entries"
    );
    // Every trial carries its evaluation per split, and `metrics` reads them back.
    for t in trials {
        let test = &t["results"]["scores"][0]["splits"]["test"];
        assert_eq!(test["accuracy"], t["metrics"]["test_accuracy"], "{t}");
        assert!(t["results"]["scores"][0]["splits"]["validation"]["f1"].is_f64(), "{t}");
    }
    let (code, metrics) = project.run_json(&["metrics", &sweep], &[]);
    assert_eq!(code, 0, "{metrics}");
    let parts = metrics["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 8);
    let csv = project.run(&["metrics", &sweep, "--csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    assert!(csv.starts_with("trial,split,accuracy,"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 8 * 2, "a row per trial and split: {csv}");
    let (code, diff) = project.run_json(&["metrics", &sweep, "--diff"], &[]);
    assert_eq!(code, 0, "{diff}");
    let rows = diff["diff"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["change"] == "+0"), "{diff}");

    // Again: everything comes from the cache, in the same order.
    let (code, again) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0);
    assert!(stages(&again).iter().all(|s| s["state"] == "cached"));
    let order = |r: &Value| -> Vec<Value> {
        r["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["trial"].clone())
            .collect()
    };
    assert_eq!(order(&again), order(&result));
    assert!(
        again["trials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "cached")
    );
}

#[test]
fn a_killed_sweep_reruns_only_its_unfinished_trials() {
    let project = Project::new();
    let sweep = sample_grid(&project, "resume", &["1.0e-2", "3.0e-3", "1.0e-3", "3.0e-4"], "");
    let (mut child, ran, _) = run_until(&project, &["run", &sweep], &[], |line| line.contains("/report in"));
    child.kill().unwrap();
    child.wait().unwrap();
    let trained: BTreeSet<String> = ran.iter().filter(|l| l.ends_with("/train")).cloned().collect();
    assert!(!trained.is_empty() && trained.len() < 8, "{ran:?}");

    let (code, result) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(
        labels_in(&result, "cached", "/train"),
        trained,
        "finished trainings are reused"
    );
    assert_eq!(
        labels_in(&result, "ran", "/train").len(),
        8 - trained.len(),
        "the rest run"
    );
    assert!(
        stages(&result)
            .iter()
            .filter(|s| !s["label"].as_str().unwrap().starts_with("trial-"))
            .all(|s| s["state"] == "cached"),
        "shared stages are not run again"
    );
    let finished_before: BTreeSet<&str> = ran.iter().filter_map(|l| l.strip_suffix("/report")).collect();
    for t in result["trials"].as_array().unwrap() {
        let expected = if finished_before.contains(t["trial"].as_str().unwrap()) {
            "cached"
        } else {
            "finished"
        };
        assert_eq!(t["status"], expected, "{t}");
    }
}

#[test]
fn a_failing_trial_is_marked_and_the_sweep_goes_on() {
    let project = Project::new();
    project.copy("imdb-sample.yaml");
    let sweep = project.write_at(
        "sweeps/nan.yaml",
        "pipeline: ../pipelines/imdb-sample.yaml\n\
         metric: {name: eval_loss, goal: minimize}\n\
         parameters:\n  \
           stages.train.optimizer: {values: [{type: sgd, lr: 1.0e30}, {type: adamw, lr: 1.0e-3}]}\n  \
           stages.train.epochs: {values: [1]}\n\
         parallel: 2\n",
    );
    let (code, result) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 1, "a failed trial fails the sweep: {result}");
    let trials = result["trials"].as_array().unwrap();
    assert_eq!(trials[0]["status"], "finished");
    assert!(trials[0]["metric"].as_f64().unwrap().is_finite());
    assert_eq!(trials[1]["status"], "failed");
    let error = trials[1]["error"].as_str().unwrap();
    assert!(
        error.contains("stage `train`") && error.contains("learning rate"),
        "{error}"
    );
    assert!(
        !project.main().join("sweeps/nan.lock").exists(),
        "no lock for a failed sweep"
    );
}

#[test]
fn one_trial_runs_alone_as_a_cluster_node_would_and_the_sweep_reuses_it() {
    let project = Project::new();
    let sweep = sample_grid(&project, "two", &["1.0e-3"], "");
    let (code, plan) = project.run_json(&["plan", &sweep], &[]);
    assert_eq!(code, 0, "{plan}");
    let second = plan["trials"][1]["trial"].as_str().unwrap().to_string();
    // By index, as a Slurm array task gets it.
    let (code, first) = project.run_json(&["run", &sweep, "--trial", "0"], &[]);
    assert_eq!(code, 0, "{first}");
    let names: Vec<&str> = stages(&first).iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 10, "the trial's own stages and the shared ones: {names:?}");
    assert!(stages(&first).iter().all(|s| s["state"] == "ran"), "{first}");
    assert!(
        !project.main().join("sweeps/two.lock").exists(),
        "a trial leaves the sweep's lock to the sweep"
    );
    // By label: the shared stages are cached now.
    let (code, by_label) = project.run_json(&["run", &sweep, "--trial", &second], &[]);
    assert_eq!(code, 0, "{by_label}");
    let cached: Vec<&str> = stages(&by_label)
        .iter()
        .filter(|s| s["state"] == "cached")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(cached.len(), 7, "{by_label}");
    // The sweep finds both trials in the store.
    let (code, result) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{result}");
    assert!(stages(&result).iter().all(|s| s["state"] == "cached"), "{result}");
    assert!(project.main().join("sweeps/two.lock").exists());
    // By its parameters, as a `tpe` sweep's Slurm task gets it: the same trial, cached.
    let (code, by_params) = project.run_json(&["run", &sweep, "--trial", &second, "--params", "[0.001, 1.0, 1]"], &[]);
    assert_eq!(code, 0, "{by_params}");
    assert!(stages(&by_params).iter().all(|s| s["state"] == "cached"), "{by_params}");

    for (trial, expected) in [
        (
            vec!["2"],
            "sweep `two` has 2 trials (indices from 0); there is no trial 2",
        ),
        (
            vec!["trial-nope"],
            "sweep `two` has no trial `trial-nope`; its trials: trial-",
        ),
        // The parameters a search's coordinator hands its task must make the trial it names.
        (
            vec![&second, "--params", "[0.001, 1.0]"],
            "--params is a JSON list of 3 value(s), one per parameter of sweep `two` (stages.train.optimizer.lr, stages.train.clip_grad_norm, stages.train.epochs), not `[0.001, 1.0]`",
        ),
        (
            vec!["trial-nope", "--params", "[0.001, 1.0, 1]"],
            "--params [0.001, 1.0, 1] make trial `trial-",
        ),
    ] {
        let output = project.run(&[&["run", &sweep, "--trial"], &trial[..]].concat());
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let output = project.run(&["run", "pipelines/imdb-sample.yaml", "--trial", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--trial picks a trial of a sweep"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(feature = "tch")]
const LIBTORCH_REFUSED_OR_MIXED: &str = "`libtorch` is not the same kind of device as `cpu`";
#[cfg(not(feature = "tch"))]
const LIBTORCH_REFUSED_OR_MIXED: &str = "device `libtorch` is not available: this build has no GPU backend";
#[cfg(feature = "tch")]
const CUDA_REFUSED: &str = "device `cuda:0` does not exist: libtorch sees 0 CUDA device(s)";
#[cfg(not(feature = "tch"))]
const CUDA_REFUSED: &str = "device `cuda:0` is not available: this build has no GPU backend";

#[test]
fn sweep_errors_are_located_in_the_sweep_file_before_anything_runs() {
    let project = Project::new();
    project.copy("imdb-sample.yaml");
    let hundred = (0..100).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let huge_grid = format!(
        "seed: {{values: [{hundred}]}}\n  stages.train.epochs: {{values: [{hundred}]}}\n  stages.train.eval_steps: {{values: [{hundred}]}}"
    );
    let cases = [
        (
            "stages.train.optimizer.lrr: {values: [0.1]}",
            "unknown key `lrr`",
            "did you mean `lr`?",
            4,
        ),
        (
            "stages.trian.epochs: {values: [1]}",
            "no stage `trian`",
            "did you mean `train`?",
            4,
        ),
        (
            "stages.train.epochs: {values: [2, many]}",
            "must be a non-negative integer",
            "",
            4,
        ),
        ("stages.train.epochs: {values: []}", "the grid would be empty", "", 4),
        (
            "stages.train.epochs: {distribution: uniform, min: 1, max: 3}",
            "a grid needs `values`",
            "method: random",
            4,
        ),
        ("epoch: {values: [1]}", "`epoch` is not a key of the pipeline", "", 4),
        (
            "seed: {values: [1]}\ntrials: 4",
            "`trials` is for `method: random`",
            "",
            5,
        ),
        (
            "seed: {values: [1]}\ndevices: [cpu, gpu]",
            "unknown device `gpu`: expected `cpu`, `cuda:N`",
            "",
            5,
        ),
        (
            "seed: {values: [1]}\ndevices: [cpu, libtorch]",
            LIBTORCH_REFUSED_OR_MIXED,
            "",
            5,
        ),
        // No GPU on the test machines: refused by the build, or by libtorch.
        ("seed: {values: [1]}\ndevices: [cuda:0]", CUDA_REFUSED, "", 5),
        (
            "seed: {distribution: int_uniform, min: -5.0e18, max: 5.0e18}\nmethod: random\ntrials: 2",
            "`min` of parameter `seed` must be within ±2^53",
            "",
            4,
        ),
        (
            "seed: {distribution: int_uniform, min: 0, max: 1e300}\nmethod: random\ntrials: 2",
            "`max` of parameter `seed` must be within ±2^53",
            "",
            4,
        ),
        (
            "stages.train.optimizer.lr: {distribution: uniform, min: -1e308, max: 1e308}\nmethod: random\ntrials: 2",
            "too wide to draw from",
            "",
            4,
        ),
        (
            huge_grid.as_str(),
            "the grid has 1000000 combinations; a sweep may have at most 10000 trials",
            "method: random",
            4,
        ),
        (
            "seed: {values: [1]}\nmethod: random\ntrials: 1000000",
            "`trials: 1000000`: a sweep may have at most 10000 trials",
            "",
            6,
        ),
        (
            "seed: {values: [1]}\nmethod: tpe",
            "`method: tpe` needs `trials: N`",
            "trials: 8",
            5,
        ),
        (
            "seed: {values: [1]}\ntpe: {in_flight: 2}",
            "`tpe` holds the settings of `method: tpe`",
            "",
            5,
        ),
        (
            "seed: {values: [1]}\nmethod: tpe\ntrials: 4\ntpe: {startup: 2}",
            "unknown key `startup` in `tpe`",
            "startup_trials",
            7,
        ),
        // A tpe sweep's values are checked before it runs: each listed value, both ends of a range.
        (
            "stages.train.epochs: {values: [1, -2]}\nmethod: tpe\ntrials: 4",
            "must be a non-negative integer",
            "",
            4,
        ),
        (
            "stages.split.fraction: {distribution: uniform, min: 0.1, max: 2.0}\nmethod: tpe\ntrials: 4",
            "must be between 0 and 1",
            "",
            4,
        ),
        (
            "seed: {values: [1]}\nearly_terminate: {type: asha, grace_step: 50}",
            "unknown key `grace_step` in `early_terminate`",
            "grace_steps",
            5,
        ),
        (
            "seed: {values: [1]}\nearly_terminate: {type: hyperband, grace_steps: 50}",
            "`early_terminate.type` of the sweep cannot be `hyperband`",
            "asha",
            5,
        ),
        (
            "seed: {values: [1]}\nearly_terminate: {type: asha, grace_steps: 50, reduction_factor: 1}",
            "`reduction_factor` must be at least 2",
            "",
            5,
        ),
        (
            "seed: {values: [1]}\nearly_terminate: {type: asha, grace_steps: 0}",
            "`grace_steps` must be at least 1",
            "",
            5,
        ),
        (
            "seed: {values: [1]}\nearly_terminate: {type: asha, grace_steps: 50, metric: test.accuracy}",
            "`early_terminate.metric` is `test.accuracy`, but trials are stopped on the evaluations during training",
            "eval_loss",
            5,
        ),
        (
            "seed: {values: [1]}\nname: ../../x",
            "`name`: `../../x` is not a name",
            "",
            5,
        ),
        (
            "seed: {values: [1]}\nname: /tmp/x",
            "`name`: `/tmp/x` is not a name",
            "",
            5,
        ),
    ];
    for (parameter, message, help, line) in cases {
        let clock = std::time::Instant::now();
        let sweep = project.write_at(
            "sweeps/bad.yaml",
            &format!(
                "pipeline: ../pipelines/imdb-sample.yaml\nmetric: {{name: eval_loss, goal: minimize}}\nparameters:\n  {parameter}\n"
            ),
        );
        let output = project.run(&["run", &sweep]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{parameter}: {stderr}");
        assert!(stderr.contains(message), "{parameter}: {stderr}");
        assert!(stderr.contains(help), "{parameter}: {stderr}");
        assert!(
            stderr.contains(&format!("sweeps/bad.yaml:{line}:")),
            "{parameter}: {stderr}"
        );
        assert!(
            clock.elapsed().as_secs_f64() < 10.0,
            "{parameter}: refused only after {:?}",
            clock.elapsed()
        );
    }
    let sweep = project.write_at(
        "sweeps/bad.yaml",
        "pipeline: ../pipelines/imdb-sample.yaml\nmetric: {name: eval_loss, goal: minimise}\nparameters:\n  seed: {values: [1]}\ndevices: [cpu]\n",
    );
    let stderr = String::from_utf8_lossy(&project.run(&["run", &sweep]).stderr).into_owned();
    assert!(
        stderr.contains("sweeps/bad.yaml:2:") && stderr.contains("did you mean `minimize`?"),
        "{stderr}"
    );
    assert_eq!(project.entries(), 0, "nothing ran");
    // Without `devices`, trials run on the pipeline's device, checked as a plain run checks it.
    let sweep = project.write_at(
        "sweeps/bad.yaml",
        "pipeline: ../pipelines/imdb-sample.yaml\nmetric: {name: eval_loss, goal: minimize}\nparameters:\n  seed: {values: [1]}\n",
    );
    let output = project.run(&["run", &sweep, "--set", "device=cuda:0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(CUDA_REFUSED) && stderr.contains("--> --set device=cuda:0"),
        "{stderr}"
    );
    assert_eq!(project.entries(), 0, "nothing ran");
}

/// A sweep on a device pool (`libtorch`: the GPU code path on the CPU) runs
/// its trials' device stages one at a time on the pool's device and shares
/// the data stages as on CPU slots.
#[cfg(feature = "tch")]
#[test]
fn a_sweep_on_a_device_pool_runs_every_trial() {
    let project = Project::new();
    let sweep = sample_grid(&project, "pool", &["1.0e-3"], "devices: [libtorch]\n");
    let (code, result) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{result}");
    let trials = result["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    assert!(trials.iter().all(|t| t["status"] == "finished"), "{result}");
    assert_eq!(stages(&result).len(), 7 + 2 * 3, "{result}");
}
