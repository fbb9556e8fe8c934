//! Sweeps on a real single-node Slurm cluster (tests/common/slurm.rs): the
//! trials of a sweep as one job array whose tasks each run
//! `pipeline run SWEEP --trial $SLURM_ARRAY_TASK_ID` against one shared
//! store, then the sweep, which finds every stage cached and writes the
//! lock a local run writes.

mod common;

use std::sync::OnceLock;

use common::project::Project;
use common::slurm::{Cluster, task_logs};
use common::sweeps::{sample_grid, tpe_sweep, tpe_trials};

/// The learning rates of the tests' 4-trial grid (with clipping off and on).
const LRS: [&str; 2] = ["1.0e-3", "3.0e-4"];

/// The lock of the grid run locally, computed once for the tests.
fn local_lock() -> &'static [u8] {
    static LOCK: OnceLock<Vec<u8>> = OnceLock::new();
    LOCK.get_or_init(|| {
        let local = Project::new();
        let sweep = sample_grid(&local, "grid", &LRS, "");
        let (code, result) = local.run_json(&["run", &sweep], &[]);
        assert_eq!(code, 0, "{result}");
        std::fs::read(local.main().join("sweeps/grid.lock")).unwrap()
    })
}

#[test]
fn a_sweeps_trials_as_array_tasks_give_the_lock_of_a_local_run() {
    let local_lock = local_lock();
    let cluster = Cluster::start();
    let project = Project::new();
    sample_grid(&project, "grid", &LRS, "");
    let store = project.dir.path().join("store");
    let output = cluster
        .command("sbatch")
        .current_dir(project.main())
        .env("PIPELINE_STORE", &store)
        .args([
            "--parsable",
            "--wait",
            "--array=0-3%2",
            "--cpus-per-task=1",
            "--job-name=pipeline-grid",
        ])
        .arg(format!("--output={}/%A_%a.out", cluster.dir().display()))
        .arg(format!(
            "--wrap=exec {} run sweeps/grid.yaml --trial $SLURM_ARRAY_TASK_ID --jobs $SLURM_CPUS_PER_TASK",
            env!("CARGO_BIN_EXE_pipeline")
        ))
        .output()
        .unwrap();
    let outputs: String = task_logs(&cluster.dir()).into_iter().map(|(_, text)| text).collect();
    assert!(
        output.status.success(),
        "sbatch: {}\n{outputs}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    // Two tasks at a time raced for the shared stages: each ran once.
    let ran_load = outputs
        .lines()
        .filter(|l| l.trim_start().starts_with("ran      load "))
        .count();
    assert_eq!(ran_load, 1, "{outputs}");
    assert!(
        !project.main().join("sweeps/grid.lock").exists(),
        "array tasks write no lock"
    );

    let (code, result) = project.run_json(&["run", "sweeps/grid.yaml"], &[]);
    assert_eq!(code, 0, "{result}");
    let stages = result["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 7 + 4 * 3);
    assert!(stages.iter().all(|s| s["state"] == "cached"), "{result}");
    let lock = std::fs::read(project.main().join("sweeps/grid.lock")).unwrap();
    assert!(lock == local_lock, "the cluster's lock differs from the local run's");
}

#[test]
fn executor_slurm_runs_the_missing_trials_as_array_tasks_and_the_sweep_as_a_local_run() {
    let local_lock = local_lock();
    let cluster = Cluster::start();
    let conf = cluster.conf();
    let env = [("SLURM_CONF", conf.to_str().unwrap())];
    let project = Project::new();
    sample_grid(&project, "grid", &LRS, "executor: {slurm: {cpus_per_task: 1}}\n");
    let output = project.run_env(&["--json", "run", "sweeps/grid.yaml"], &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}\n{}", cluster.logs());
    // The data stages need no device: the coordinator runs them, then submits the trials.
    assert!(
        stderr.contains("the 7 stage(s) its trials share run here first")
            && stderr.contains("submitted to Slurm as pipeline-grid-")
            && stderr.contains(": 4 trial(s) as job "),
        "{stderr}"
    );
    assert!(stderr.contains("  ran      tokenize in "), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let trials = result["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    // Gathering built nothing: the shared stages came from the first step
    // (cached by now), the trials' own from the tasks (built elsewhere for
    // this run), and every trial finished, as in a local run.
    for stage in result["stages"].as_array().unwrap() {
        let own = stage["label"].as_str().unwrap().contains('/');
        let state = if own { "ran-elsewhere" } else { "cached" };
        assert_eq!(stage["state"], state, "{result}");
    }
    assert!(trials.iter().all(|t| t["status"] == "finished"), "{result}");
    let lock = std::fs::read(project.main().join("sweeps/grid.lock")).unwrap();
    assert!(lock == local_lock, "the cluster's lock differs from the local run's");
    // One task per trial, each finding the shared stages cached.
    let logs = project.dir.path().join("store/.sweeps/grid/slurm");
    let outputs = task_logs(&logs);
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    for (name, text) in &outputs {
        assert!(
            text.contains("  cached   tokenize (") && !text.contains("ran      load "),
            "{name}: {text}"
        );
    }

    // Nothing missing: nothing submitted. `--executor local` overrides the file.
    let output = project.run_env(&["run", "sweeps/grid.yaml", "--executor", "slurm"], &env);
    let again = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !again.contains("submitted"), "{again}");
    assert!(!again.contains("ran-elsewhere"), "{again}");
    let output = project.run_env(
        &["run", "sweeps/grid.yaml", "--executor", "local"],
        &[("SLURM_CONF", "/nonexistent")],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_tpe_sweep_on_slurm_asks_the_trials_of_a_local_run_and_writes_its_lock() {
    let local = Project::new();
    let sweep = tpe_sweep(&local, 1, "");
    let (code, expected) = local.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{expected}");
    let local_lock = std::fs::read(local.main().join("sweeps/tpe.lock")).unwrap();

    let cluster = Cluster::start();
    let conf = cluster.conf();
    let env = [("SLURM_CONF", conf.to_str().unwrap())];
    let project = Project::new();
    tpe_sweep(&project, 2, "executor: {slurm: {cpus_per_task: 1}}\n");
    let output = project.run_env(&["--json", "run", "sweeps/tpe.yaml"], &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}\n{}", cluster.logs());
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        tpe_trials(&result),
        tpe_trials(&expected),
        "the same trials, parameters and scores"
    );
    // Every stage, shared ones too, came from a trial's task.
    for stage in result["stages"].as_array().unwrap() {
        assert_eq!(stage["state"], "ran-elsewhere", "{result}");
    }
    let lock = std::fs::read(project.main().join("sweeps/tpe.lock")).unwrap();
    assert!(lock == local_lock, "the cluster's lock differs from the local run's");
    // One job per trial, each told its parameters; the data stages ran once.
    let logs = project.dir.path().join("store/.sweeps/tpe/slurm");
    let outputs = task_logs(&logs);
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    let ran_load = outputs
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter(|l| l.trim_start().starts_with("ran      load "))
        .count();
    assert_eq!(ran_load, 1, "{outputs:?}");

    // Run again: every trial is found in the store, nothing is submitted.
    let output = project.run_env(&["run", "sweeps/tpe.yaml"], &env);
    let again = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !again.contains("submitted"), "{again}");
    assert_eq!(task_logs(&logs).len(), 5);
}

#[test]
fn a_shared_stage_failing_in_the_coordinator_submits_nothing() {
    let cluster = Cluster::start();
    let conf = cluster.conf();
    let env = [("SLURM_CONF", conf.to_str().unwrap())];
    let project = Project::new();
    sample_grid(&project, "grid", &LRS, "executor: {slurm: {}}\n");
    // A wrong pin: the download of the training data fails when it runs.
    let pipeline = project.main().join("pipelines/imdb-sample.yaml");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let pin = "df2e3287a2da549b5fe9a8b1bd4774b9815dfcf926f3852fd445e194d5ef1118";
    assert!(text.contains(pin));
    std::fs::write(&pipeline, text.replace(pin, &"ab".repeat(32))).unwrap();
    let output = project.run_env(&["run", "sweeps/grid.yaml"], &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the shared stage `train_data` failed, so no trial was submitted"),
        "{stderr}"
    );
    let queue = cluster.command("squeue").args(["-h", "-o", "%i"]).output().unwrap();
    assert!(queue.stdout.is_empty(), "{}", String::from_utf8_lossy(&queue.stdout));
    let logs = project.dir.path().join("store/.sweeps/grid/slurm");
    assert!(task_logs(&logs).is_empty(), "no task ran");
}
