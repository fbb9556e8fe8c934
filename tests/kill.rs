//! A kill -9 campaign: a fixed, seeded set of kill points in every stage kind
//! of the sample pipeline (and `encode`), right after the last stage (the
//! lock write) and inside a sweep's trials. After each kill every entry in the
//! store must match its manifest (`pipeline fsck`) and nothing but dead
//! leftovers may remain; the run that finally completes must write the lock
//! bytes of an uninterrupted run in a fresh store.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::project::Project;

/// The sample pipeline, trained for one short epoch so that the campaign stays short.
fn sample() -> String {
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/imdb-sample.yaml")).unwrap();
    base.replace("epochs: 3", "epochs: 1")
}

/// Frozen MiniLM features for 48 reviews and a GRU over them: the `encode` stage's kill point.
fn encoded() -> String {
    let checkpoint = std::env::var("MINILM_DIR").expect("MINILM_DIR names the all-MiniLM-L6-v2 checkpoint (make test)");
    format!(
        "name: encoded
seed: 3
stages:
  checkpoint: {{kind: download, source: {checkpoint}, files: [config.json, model.safetensors, tokenizer.json]}}
  data: {{kind: download, source: ../data/imdb-sample/train.parquet, needs: []}}
  load: {{splits: {{train: train.parquet}}, limit: 48, needs: [data]}}
  split: {{fraction: 0.25}}
  tokenize: {{tokenizer: {{from_stage: checkpoint}}, max_length: 64, needs: [split, checkpoint]}}
  vectorize: {{batch_size: 8}}
  encode: {{checkpoint: checkpoint, batch_size: 8, needs: [vectorize, checkpoint]}}
  train:
    model: {{type: gru, hidden_size: 8}}
    epochs: 1
    needs: [encode]
"
    )
}

/// A two-trial sweep over the sample pipeline.
const SWEEP: &str = "pipeline: ../pipelines/sample.yaml
metric: {name: eval_loss, goal: minimize}
parameters:
  stages.train.optimizer.lr: {values: [1.0e-3, 3.0e-3]}
";

/// Seeded delays in milliseconds (xorshift), the same on every run.
struct Delays(u64);

impl Delays {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Starts `run FILE`, and once a stderr line contains `trigger`, waits
/// `delay` and kills it with SIGKILL. Returns whether it was killed (a run
/// that finishes first, because the trigger stage was cached, is not).
fn kill_at(project: &Project, file: &str, trigger: &str, delay: Duration) -> bool {
    let mut child = project
        .command(&["run", file], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let seen = lines.by_ref().map_while(Result::ok).any(|line| line.contains(trigger));
    if seen {
        std::thread::sleep(delay);
        let _ = Command::new("kill").args(["-KILL", &child.id().to_string()]).status();
    }
    // Drain what is left so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let status = child.wait().unwrap();
    seen && !status.success()
}

/// [`kill_at`], tried again with half the delay (after `reset` makes the
/// point reachable again) when the run ended before the kill landed: on a
/// quiet machine a stage can end within its seeded delay. Up to 3 tries.
fn kill_within(project: &Project, file: &str, trigger: &str, mut delay: Duration, reset: impl Fn()) -> bool {
    for _ in 0..3 {
        if kill_at(project, file, trigger, delay) {
            return true;
        }
        reset();
        delay /= 2;
    }
    false
}

/// Every entry matches its manifest, and no lease of the killed process counts as live.
fn assert_store_sound(project: &Project, after: &str) {
    let output = project.run(&["--json", "fsck"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "after a kill {after}: {report}");
    let gc = project.run(&["--json", "gc", "--dry-run"]);
    let gc: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        gc["skipped"].as_array().unwrap().len(),
        0,
        "a dead run's lease is not live: {gc}"
    );
}

fn lock(project: &Project, file: &str) -> Vec<u8> {
    std::fs::read(project.main().join(file).with_extension("lock")).unwrap()
}

fn complete(project: &Project, file: &str) {
    let output = project.run(&["run", file]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn kill_9_anywhere_leaves_a_sound_store_and_the_same_lock() {
    let mut delays = Delays(0x9e37_79b9_7f4a_7c15);
    let reference = Project::new();
    let campaign = Project::new();
    for project in [&reference, &campaign] {
        project.write("sample.yaml", &sample());
        project.write("encoded.yaml", &encoded());
        project.write_at("sweeps/lr.yaml", SWEEP);
    }
    for file in ["pipelines/sample.yaml", "pipelines/encoded.yaml", "sweeps/lr.yaml"] {
        complete(&reference, file);
    }

    let stages = [
        "train_data",
        "test_data",
        "load",
        "shuffle",
        "split",
        "tokenize",
        "vectorize",
        "train",
        "evaluate",
        "report",
    ];
    let mut kills = 0;
    for stage in stages {
        // Its entry goes first, so that the run reaches it even when an earlier kill landed later.
        campaign.run(&["clean", "pipelines/sample.yaml", "--stages", stage]);
        let trigger = format!("  running  {stage} (");
        let delay = Duration::from_millis(delays.next(150));
        let reset = || drop(campaign.run(&["clean", "pipelines/sample.yaml", "--stages", stage]));
        kills += usize::from(kill_within(&campaign, "pipelines/sample.yaml", &trigger, delay, reset));
        assert_store_sound(&campaign, &format!("in `{stage}` after {delay:?}"));
    }
    // The lock write follows the last stage's end.
    for _ in 0..2 {
        let delay = Duration::from_micros(delays.next(3000));
        let reset = || {
            std::fs::remove_file(campaign.main().join("pipelines/sample.lock")).ok();
            campaign.run(&["clean", "pipelines/sample.yaml", "--stages", "report"]);
        };
        reset();
        kills += usize::from(kill_within(
            &campaign,
            "pipelines/sample.yaml",
            "  ran      report in",
            delay,
            reset,
        ));
        assert_store_sound(&campaign, &format!("around the lock write after {delay:?}"));
    }
    complete(&campaign, "pipelines/sample.yaml");
    assert_eq!(
        lock(&campaign, "pipelines/sample.yaml"),
        lock(&reference, "pipelines/sample.yaml")
    );

    for stage in ["encode", "train"] {
        campaign.run(&["clean", "pipelines/encoded.yaml", "--stages", stage]);
        let delay = Duration::from_millis(delays.next(300));
        let reset = || drop(campaign.run(&["clean", "pipelines/encoded.yaml", "--stages", stage]));
        kills += usize::from(kill_within(
            &campaign,
            "pipelines/encoded.yaml",
            &format!("  running  {stage} ("),
            delay,
            reset,
        ));
        assert_store_sound(
            &campaign,
            &format!("in `{stage}` of the encoded pipeline after {delay:?}"),
        );
    }
    complete(&campaign, "pipelines/encoded.yaml");
    assert_eq!(
        lock(&campaign, "pipelines/encoded.yaml"),
        lock(&reference, "pipelines/encoded.yaml")
    );

    // In the sweep: in the first trial's training, then in the second's.
    for _ in 0..2 {
        let delay = Duration::from_millis(delays.next(500));
        kills += usize::from(kill_at(&campaign, "sweeps/lr.yaml", "/train (", delay));
        assert_store_sound(&campaign, &format!("in a trial after {delay:?}"));
    }
    complete(&campaign, "sweeps/lr.yaml");
    assert_eq!(lock(&campaign, "sweeps/lr.yaml"), lock(&reference, "sweeps/lr.yaml"));
    // The last stage and the lock write may end before their kill lands.
    assert!(kills >= 13, "only {kills} of the 16 kill points were reached");
}
