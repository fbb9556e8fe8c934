//! Adaptive sweeps (`method: tpe`) through the real binary on the sample
//! data: the same trials and the same lock for any `parallel`, and a sweep
//! killed mid-way that, run again, continues the same sequence without
//! retraining a finished trial.

mod common;

use std::collections::BTreeSet;

use common::project::Project;
use common::sweeps::{labels_in, run_until, tpe_sweep, tpe_trials as trials};

#[test]
fn a_tpe_sweep_asks_the_same_trials_for_any_parallel_and_resumes_its_sequence() {
    let project = Project::new();
    let sweep = tpe_sweep(&project, 1, "");
    let (code, one) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0, "{one}");
    let expected = trials(&one);
    assert_eq!(expected.len(), 5, "{one}");
    assert!(
        one["trials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "finished"),
        "{one}"
    );
    let lrs: BTreeSet<&String> = expected.iter().map(|(_, params, _)| params).collect();
    assert_eq!(lrs.len(), 5, "five different trials: {expected:?}");
    let lock = std::fs::read(project.main().join("sweeps/tpe.lock")).expect("the sweep's lock");

    // What a later command reads back from the store: the same five trials.
    let (code, plan) = project.run_json(&["plan", &sweep], &[]);
    assert_eq!(code, 0, "{plan}");
    let planned: BTreeSet<String> = plan["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trial"].to_string())
        .collect();
    let ran: BTreeSet<String> = expected.iter().map(|(label, _, _)| label.clone()).collect();
    assert_eq!(planned, ran, "{plan}");
    assert_eq!(plan["to_run"], 0, "{plan}");

    // Two at a time in a fresh store, killed once a trial has finished, then run again.
    std::fs::remove_file(project.main().join("sweeps/tpe.lock")).unwrap();
    let sweep = tpe_sweep(&project, 2, "");
    let other = project.dir.path().join("other-store");
    let other = other.to_str().unwrap();
    let env = [("PIPELINE_STORE", other)];
    let (mut child, before, _) = run_until(&project, &["run", &sweep], &env, |line| line.contains("/report in"));
    child.kill().unwrap();
    child.wait().unwrap();
    let trained: BTreeSet<String> = before.iter().filter(|l| l.ends_with("/train")).cloned().collect();
    assert!(!trained.is_empty() && trained.len() < 5, "{before:?}");
    let (code, two) = project.run_json(&["run", &sweep], &env);
    assert_eq!(code, 0, "{two}");
    assert_eq!(trials(&two), expected, "the same trials, parameters and scores");
    assert_eq!(
        std::fs::read(project.main().join("sweeps/tpe.lock")).expect("the sweep's lock"),
        lock,
        "the same lock, byte for byte"
    );
    let cached = labels_in(&two, "cached", "/train");
    assert!(
        trained.is_subset(&cached),
        "finished trainings are reused: {trained:?} in {cached:?}"
    );
    assert_eq!(labels_in(&two, "ran", "/train").len() + cached.len(), 5, "{two}");
}
