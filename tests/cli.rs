//! End-to-end tests of the `pipeline` command line, run as real child
//! processes with the test stage kinds.

mod common;

use std::time::{Duration, Instant};

use common::{SEVEN_STAGES, Workspace, in_state, states};

fn all(names: &str) -> Vec<String> {
    names.chars().map(|c| c.to_string()).collect()
}

#[test]
fn a_cached_rerun_does_no_stage_work() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    let (code, first) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(in_state(&first, "ran"), all("abcdefg"));
    assert!(ws.path().join("p.lock").exists());
    ws.clear_log();
    let (code, second) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(in_state(&second, "cached"), all("abcdefg"));
    assert!(ws.log().is_empty(), "no stage may run: {:?}", ws.log());
}

#[test]
fn a_changed_parameter_reruns_the_stage_and_its_dependents_and_reverting_reuses_entries() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    assert_eq!(ws.run_json(&["run", "p.yaml"]).0, 0);
    let lock = std::fs::read_to_string(ws.path().join("p.lock")).unwrap();
    let (code, changed) = ws.run_json(&["run", "p.yaml", "--set", "stages.d.text=D2"]);
    assert_eq!(code, 0);
    let after = std::fs::read_to_string(ws.path().join("p.lock")).unwrap();
    assert_eq!(lock, after, "a run with --set overrides leaves the lock alone");
    assert_eq!(in_state(&changed, "cached"), all("abc"));
    assert_eq!(in_state(&changed, "ran"), all("defg"));
    ws.clear_log();
    let (code, reverted) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(in_state(&reverted, "cached"), all("abcdefg"));
    assert!(ws.log().is_empty());
    // The seed feeds only the stage that uses it, and so its dependents.
    let (_, reseeded) = ws.run_json(&["run", "p.yaml", "--set", "seed=2"]);
    assert_eq!(in_state(&reseeded, "ran"), all("abcdefg"));
}

#[test]
fn a_stage_that_reruns_with_the_same_outputs_leaves_the_stages_after_it_cached() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    assert_eq!(ws.run_json(&["run", "p.yaml"]).0, 0);
    let locked_keys = |ws: &Workspace| -> Vec<String> {
        let lock: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(ws.path().join("p.lock")).unwrap()).unwrap();
        let stages = lock["stages"].as_mapping().unwrap();
        stages
            .values()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    let before = locked_keys(&ws);
    // `sleep_ms` is part of b's key but not of what b writes.
    ws.write("p.yaml", &SEVEN_STAGES.replace("text: B}", "text: B, sleep_ms: 20}"));
    let (_, plan) = ws.run_json(&["plan", "p.yaml"]);
    let planned: Vec<(&str, &str)> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        planned,
        [
            ("a", "cached"),
            ("b", "run"),
            ("c", "pending"),
            ("d", "pending"),
            ("e", "pending"),
            ("f", "pending"),
            ("g", "pending")
        ]
    );
    assert_eq!(plan["stages"][6]["after"], serde_json::json!(["b"]), "{plan}");
    assert!(plan["stages"][6]["key"].is_null(), "{plan}");
    ws.clear_log();
    let (code, rerun) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(in_state(&rerun, "ran"), all("b"));
    assert_eq!(in_state(&rerun, "cached"), all("acdefg"));
    assert_eq!(ws.log(), ["start B", "done B"], "only b may run");
    let after = locked_keys(&ws);
    assert_ne!(before[1], after[1], "b's own key changed");
    assert_eq!(
        before[2..],
        after[2..],
        "the keys after b follow its outputs, which are the same"
    );
    let (code, status) = ws.run_json(&["status", "p.yaml"]);
    assert_eq!((code, &status["up_to_date"]), (0, &serde_json::json!(true)), "{status}");
    let (code, verified) = ws.run_json(&["verify", "p.yaml"]);
    assert_eq!(
        (code, &verified["identical"]),
        (0, &serde_json::json!(true)),
        "{verified}"
    );
    // A change that does alter b's outputs re-runs everything after it.
    ws.write("p.yaml", &SEVEN_STAGES.replace("text: B}", "text: B2}"));
    let (_, changed) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(in_state(&changed, "ran"), all("bcdefg"));
}

#[test]
fn a_failing_stage_stops_its_dependents_and_keeps_finished_work() {
    let ws = Workspace::new();
    let pipeline = "name: branchy
seed: 0
stages:
  a: {kind: step, text: A}
  b: {kind: step, text: B, fail: boom}
  c: {kind: step, text: C}
  d: {kind: step, text: D, needs: [a]}
";
    ws.write("p.yaml", pipeline);
    let output = ws.run(&["--json", "run", "p.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        states(&result),
        [("a", "ran"), ("b", "failed"), ("c", "skipped"), ("d", "ran")].map(|(n, s)| (n.to_string(), s.to_string()))
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stage `b` failed: boom"), "{stderr}");
    assert!(!ws.path().join("p.lock").exists(), "a failed run writes no lock file");
    ws.write("p.yaml", &pipeline.replace(", fail: boom", ""));
    let (code, fixed) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(in_state(&fixed, "cached"), all("ad"));
    assert_eq!(in_state(&fixed, "ran"), all("bc"));
}

#[test]
fn independent_stages_share_the_jobs_budget() {
    let fan = "name: fan
seed: 0
stages:
  x: {kind: step, text: X, sleep_ms: 300}
  y: {kind: step, text: Y, sleep_ms: 300, needs: []}
";
    let log_with_jobs = |jobs: &str| {
        let ws = Workspace::new();
        ws.write("p.yaml", fan);
        assert_eq!(ws.run(&["run", "p.yaml", "--jobs", jobs]).status.code(), Some(0));
        ws.log()
            .into_iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        log_with_jobs("2"),
        ["start", "start", "done", "done"],
        "both run at once"
    );
    assert_eq!(log_with_jobs("1"), ["start", "done", "start", "done"], "one at a time");
}

fn wait_for_log(ws: &Workspace, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ws.log().iter().any(|l| l == line) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for `{line}` in {:?}",
            ws.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn entries(ws: &Workspace) -> Vec<String> {
    let dir = ws.store().join("step");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const SLOW_MIDDLE: &str = "name: slow
seed: 0
stages:
  a: {kind: step, text: A}
  b: {kind: step, text: B, sleep_ms: 20000}
  c: {kind: step, text: C}
";

#[test]
fn kill_9_in_the_middle_of_a_stage_leaves_no_partial_entry() {
    let ws = Workspace::new();
    ws.write("p.yaml", SLOW_MIDDLE);
    let mut child = ws.spawn(&["run", "p.yaml"]);
    wait_for_log(&ws, "start B");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(entries(&ws).len(), 1, "only `a` finished");
    let leftovers = std::fs::read_dir(ws.store().join(".tmp")).unwrap().count();
    assert_eq!(leftovers, 1, "the killed stage's build directory is left in .tmp");
    ws.write("p.yaml", &SLOW_MIDDLE.replace("sleep_ms: 20000", "sleep_ms: 0"));
    ws.clear_log();
    let (code, rerun) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(in_state(&rerun, "cached"), ["a"]);
    assert_eq!(in_state(&rerun, "ran"), ["b", "c"]);
    assert_eq!(entries(&ws).len(), 3);
}

#[test]
fn ctrl_c_stops_cleanly_and_leaves_no_partial_entry() {
    let ws = Workspace::new();
    ws.write("p.yaml", SLOW_MIDDLE);
    let child = ws.spawn(&["run", "p.yaml"]);
    wait_for_log(&ws, "start B");
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(entries(&ws).len(), 1);
    assert_eq!(
        std::fs::read_dir(ws.store().join(".tmp")).unwrap().count(),
        0,
        "the build directory is removed"
    );
    assert!(!ws.log().iter().any(|l| l == "done B"));
}

#[test]
fn two_processes_on_one_store_compute_each_key_once() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: shared
seed: 0
stages:
  a: {kind: step, text: A, sleep_ms: 400}
  b: {kind: step, text: B, sleep_ms: 400}
  c: {kind: step, text: C, sleep_ms: 400}
",
    );
    let first = ws.spawn(&["run", "p.yaml"]);
    let second = ws.spawn(&["run", "p.yaml"]);
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut starts: Vec<String> = ws.log().into_iter().filter(|l| l.starts_with("start")).collect();
    starts.sort();
    assert_eq!(starts, ["start A", "start B", "start C"]);
    assert_eq!(entries(&ws).len(), 3);
}

#[test]
fn verify_passes_on_a_deterministic_pipeline_and_names_the_stage_whose_bytes_differ() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: v
seed: 3
stages:
  a: {kind: step, text: A, seeded: true}
  b: {kind: step, text: B, env: TESTKIT_VALUE}
  c: {kind: step, text: C, needs: [a]}
",
    );
    let run = |args: &[&str], value: &str| ws.command(args).env("TESTKIT_VALUE", value).output().unwrap();
    assert_eq!(run(&["run", "p.yaml"], "1").status.code(), Some(0));
    let ok = run(&["verify", "p.yaml"], "1");
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verified: a, b, c"));
    let bad = run(&["verify", "p.yaml"], "2");
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(stdout.contains("verify failed"), "{stdout}");
    let rows: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(rows[0].starts_with("b ") && rows[0].contains("out.txt"), "{stdout}");
    // Only the chosen stages are re-executed; the verify scratch store is gone afterwards.
    let (code, json) = ws.run_json(&["verify", "p.yaml", "--stages", "c"]);
    assert_eq!(code, 0);
    assert_eq!(json["verified"], serde_json::json!(["c"]));
    assert_eq!(std::fs::read_dir(ws.store().join(".scratch")).unwrap().count(), 0);
}

#[test]
fn status_and_why_explain_what_changed_since_the_lock() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    let (code, _) = ws.run_json(&["status", "p.yaml"]);
    assert_eq!(code, 1, "no lock yet");
    assert_eq!(ws.run_json(&["run", "p.yaml"]).0, 0);
    let (code, status) = ws.run_json(&["status", "p.yaml"]);
    assert_eq!(code, 0);
    assert_eq!(status["up_to_date"], true);
    let (code, status) = ws.run_json(&["status", "p.yaml", "--set", "stages.f.text=F2"]);
    assert_eq!(code, 1);
    let stale: Vec<(&str, &str)> = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] != "up-to-date")
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    // g's key follows f's new outputs, which do not exist yet.
    assert_eq!(stale, [("f", "stale"), ("g", "pending")]);
    let why = ws.run(&["why", "p.yaml", "g", "--set", "stages.f.text=F2"]);
    let text = String::from_utf8_lossy(&why.stdout);
    assert!(text.starts_with("stage `g` will run:"), "{text}");
    assert!(text.contains("its key follows the outputs of `f`"), "{text}");
    assert!(text.contains("upstream stage `f` runs first"), "{text}");
    assert!(text.contains("in `f`: config.text changed: \"F\" -> \"F2\""), "{text}");
    // Once the variant ran, its stages are still stale but cost nothing.
    assert_eq!(ws.run_json(&["run", "p.yaml", "--set", "stages.f.text=F2"]).0, 0);
    let (code, status) = ws.run_json(&["status", "p.yaml", "--set", "stages.f.text=F2"]);
    assert_eq!(code, 1);
    assert_eq!(status["stages"][5]["state"], "stale, cached", "{status}");
    assert_eq!(status["stages"][6]["state"], "stale, cached", "{status}");
    let (_, why) = ws.run_json(&["why", "p.yaml", "a"]);
    assert_eq!(why["will_run"], false);
    // An entry removed from the store: the key is as locked but the stage must run.
    assert_eq!(ws.run(&["clean", "p.yaml", "--stages", "b"]).status.code(), Some(0));
    let (code, status) = ws.run_json(&["status", "p.yaml"]);
    assert_eq!(code, 1);
    assert_eq!(status["stages"][1]["state"], "missing");
    let (_, why) = ws.run_json(&["why", "p.yaml", "b"]);
    assert!(
        why["reasons"][0].as_str().unwrap().contains("is not in the store"),
        "{why}"
    );
}

#[test]
fn an_edited_input_file_invalidates_its_stage() {
    let ws = Workspace::new();
    ws.write("data/input.txt", "one");
    ws.write(
        "pipelines/p.yaml",
        "name: files
seed: 0
stages:
  read: {kind: step, file: ../data/input.txt}
  after: {kind: step, text: after}
",
    );
    assert_eq!(ws.run_json(&["run", "pipelines/p.yaml"]).0, 0);
    ws.write("data/input.txt", "two");
    let (_, why) = ws.run_json(&["why", "pipelines/p.yaml", "read"]);
    assert_eq!(
        why["reasons"],
        serde_json::json!(["input file ../data/input.txt changed content"])
    );
    let (_, rerun) = ws.run_json(&["run", "pipelines/p.yaml"]);
    assert_eq!(in_state(&rerun, "ran"), ["read", "after"]);
    let (_, third) = ws.run_json(&["run", "pipelines/p.yaml"]);
    assert_eq!(in_state(&third, "cached"), ["read", "after"]);
}

#[test]
fn a_damaged_entry_is_reported_and_recomputed() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    let (_, first) = ws.run_json(&["run", "p.yaml"]);
    let key = first["stages"][2]["key"].as_str().unwrap();
    let file = ws.store().join("step").join(key).join("out/out.txt");
    std::fs::write(&file, "tampered").unwrap();
    let output = ws.run(&["--json", "run", "p.yaml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("damaged"), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(in_state(&result, "ran"), ["c"]);
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "tampered");
}

#[test]
fn keys_do_not_depend_on_where_the_checkout_lives() {
    let keys = |ws: &Workspace| -> Vec<String> {
        ws.write("data/input.txt", "same");
        ws.write(
            "pipelines/p.yaml",
            "name: k\nseed: 0\nstages:\n  a: {kind: step, file: ../data/input.txt}\n",
        );
        let (_, plan) = ws.run_json(&["plan", "pipelines/p.yaml"]);
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&Workspace::new()), keys(&Workspace::new()));
}

#[test]
fn gc_drops_entries_that_no_lock_file_refers_to() {
    let ws = Workspace::new();
    ws.write("pipelines/p.yaml", SEVEN_STAGES);
    assert_eq!(
        ws.run_json(&["run", "pipelines/p.yaml", "--set", "stages.g.text=old"])
            .0,
        0
    );
    assert_eq!(ws.run_json(&["run", "pipelines/p.yaml"]).0, 0);
    assert_eq!(entries(&ws).len(), 8);
    let (code, gc) = ws.run_json(&["gc"]);
    assert_eq!(code, 0);
    assert_eq!(gc["removed"].as_array().unwrap().len(), 1);
    assert_eq!(entries(&ws).len(), 7);
    let (_, rerun) = ws.run_json(&["run", "pipelines/p.yaml"]);
    assert_eq!(in_state(&rerun, "cached"), all("abcdefg"));
}

#[test]
fn plan_and_show_describe_the_pipeline() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    let plan = ws.run(&["plan", "p.yaml"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("STAGE"), "{text}");
    assert!(lines[1].starts_with("a ") && lines[1].contains(" run "), "{text}");
    assert!(lines[2].ends_with(" a"), "b needs a: {text}");
    let show = ws.run(&["show", "p.yaml", "--set", "stages.b.sleep_ms=5"]);
    let shown: serde_yaml::Value = serde_yaml::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["stages"]["b"]["sleep_ms"], serde_yaml::Value::from(5));
    assert_eq!(shown["stages"]["b"]["fail"], serde_yaml::Value::Null);
    assert_eq!(shown["stages"]["b"]["needs"][0], serde_yaml::Value::from("a"));
}

#[test]
fn errors_in_pipeline_files_exit_2_with_a_located_message() {
    let ws = Workspace::new();
    ws.write("p.yaml", "name: x\nseed: 1\nstages:\n  a: {kind: step, txt: A}\n");
    let output = ws.run(&["run", "p.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("p.yaml:4:19"), "{stderr}");
    assert!(stderr.contains("did you mean `text`?"), "{stderr}");
    assert!(!ws.store().exists(), "nothing is written for an invalid pipeline");
    // No GPU on the test machines (and none at all without `--features tch`).
    ws.write(
        "d.yaml",
        "name: d\nseed: 1\nstages:\n  a: {kind: step, on_device: true}\n",
    );
    let output = ws.run(&["run", "d.yaml", "--set", "device=cuda:0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error: device `cuda:0`"), "{stderr}");
    assert!(stderr.contains("--> --set device=cuda:0"), "{stderr}");
    assert!(!ws.store().exists(), "nothing runs without the device");
}

/// `c` reads `a` after the slow `b`: a run that loses `a` while `b` runs fails.
const NEEDS_A_AFTER_SLOW_B: &str = "name: pinned
seed: 0
stages:
  a: {kind: step, text: A}
  b: {kind: step, text: B, sleep_ms: 1500}
  c: {kind: step, text: C, needs: [a, b]}
";

#[test]
fn gc_and_clean_leave_the_entries_of_a_running_pipeline_and_say_so() {
    for command in [&["gc"][..], &["clean", "p.yaml"][..]] {
        let ws = Workspace::new();
        ws.write("p.yaml", NEEDS_A_AFTER_SLOW_B);
        let child = ws.spawn(&["run", "p.yaml"]);
        wait_for_log(&ws, "start B");
        let (code, removal) = ws.run_json(command);
        assert_eq!(code, 0, "{removal}");
        let skipped = removal["skipped"].as_array().unwrap();
        assert_eq!(skipped.len(), 1, "`a` is in use: {removal}");
        assert_eq!(skipped[0]["pid"], child.id());
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{command:?} during the run: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Once the run is over its entries are fair game.
        let (_, after) = ws.run_json(command);
        assert_eq!(after["skipped"].as_array().unwrap().len(), 0, "{after}");
        assert_eq!(after["removed"].as_array().unwrap().len(), 3, "{after}");
    }
}

#[test]
fn gc_keeps_a_running_verify_and_builds_and_removes_what_dead_runs_left() {
    let ws = Workspace::new();
    ws.write("p.yaml", NEEDS_A_AFTER_SLOW_B);
    assert_eq!(ws.run_json(&["run", "p.yaml"]).0, 0);
    // What a killed build and a killed verify leave behind.
    let dead_build = ws.store().join(".tmp").join(format!("{}.4000000", "0".repeat(32)));
    let dead_scratch = ws.store().join(".scratch").join("4000000-1");
    for dir in [&dead_build, &dead_scratch] {
        std::fs::create_dir_all(dir.join("out")).unwrap();
    }
    ws.clear_log();
    let verify = ws.spawn(&["verify", "p.yaml"]);
    wait_for_log(&ws, "start B");
    let scratch_stores = std::fs::read_dir(ws.store().join(".scratch")).unwrap().count();
    assert_eq!(scratch_stores, 2, "the dead scratch store and the running verify's");
    let (code, gc) = ws.run_json(&["gc", "p.lock"]);
    assert_eq!(code, 0, "{gc}");
    assert_eq!(gc["leftovers"], 2, "{gc}");
    assert!(!dead_build.exists() && !dead_scratch.exists());
    let output = verify.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
}

#[test]
fn fsck_and_verify_find_damage_the_stat_cache_cannot_see() {
    let ws = Workspace::new();
    ws.write("p.yaml", SEVEN_STAGES);
    let (code, first) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    let c = first["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "c")
        .unwrap();
    let damaged = ws
        .store()
        .join("step")
        .join(c["key"].as_str().unwrap())
        .join("out/out.txt");
    // Bit rot: one byte flipped in place, size, inode and mtime unchanged.
    let modified = std::fs::metadata(&damaged).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[0] ^= 0x20;
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().write(true).open(&damaged).unwrap();
        file.write_all(&bytes).unwrap();
        file.set_modified(modified).unwrap();
    }
    let (code, rerun) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(
        (code, in_state(&rerun, "cached")),
        (0, all("abcdefg")),
        "the stat cache trusts it"
    );
    let verify = ws.run(&["verify", "p.yaml", "--stages", "c"]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("damaged: out.txt does not match its manifest"),
        "{stdout}"
    );
    let (code, fsck) = ws.run_json(&["fsck"]);
    assert_eq!(code, 1, "{fsck}");
    assert_eq!(fsck["checked"], 7);
    assert_eq!(
        fsck["damaged"][0]["entry"],
        format!("step/{}", c["key"].as_str().unwrap())
    );
    let (code, repair) = ws.run_json(&["fsck", "--repair"]);
    assert_eq!((code, repair["removed"].as_array().unwrap().len()), (0, 1), "{repair}");
    let (_, repaired) = ws.run_json(&["run", "p.yaml"]);
    assert_eq!(in_state(&repaired, "ran"), ["c"]);
    assert_eq!(ws.run_json(&["fsck"]).0, 0);
}

#[test]
fn dag_draws_the_graph_and_completions_come_from_the_command_line() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "name: fork\nseed: 0\nstages:\n  a: {kind: step, text: A}\n  b: {kind: step, text: B}\n  c: {kind: step, text: C, needs: [a, b]}\n",
    );
    let text = |args: &[&str]| {
        let output = ws.run(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let plain = text(&["dag", "p.yaml"]);
    assert!(plain.contains("c  (step)  <- a, b"), "{plain}");
    let mermaid = text(&["dag", "p.yaml", "--mermaid"]);
    assert!(
        mermaid.starts_with("flowchart TD") && mermaid.contains("s0 --> s2") && mermaid.contains("s1 --> s2"),
        "{mermaid}"
    );
    let dot = text(&["dag", "p.yaml", "--dot"]);
    assert!(
        dot.contains("\"a\" -> \"c\";") && dot.contains("\"a\" -> \"b\";"),
        "{dot}"
    );
    let (_, json) = ws.run_json(&["dag", "p.yaml"]);
    assert_eq!(json["edges"].as_array().unwrap().len(), 3, "{json}");
    assert!(ws.log().is_empty(), "dag runs nothing");
    for shell in ["bash", "zsh", "fish"] {
        let script = text(&["completions", shell]);
        assert!(
            script.contains("metrics") && script.contains("verify"),
            "{shell}: {script}"
        );
    }
}
