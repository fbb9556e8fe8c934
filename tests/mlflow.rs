//! MLflow tracking against a real MLflow 3.17.2 server started once for this
//! file: a sweep's parent and nested trial runs with params, full step
//! histories and artifacts; a plain run served from the cache; a server
//! outage mid-sweep, spooled and replayed by `pipeline mlflow sync`; and a
//! sweep whose trials ran on Slurm, logged as a local one is.

mod common;

use std::collections::BTreeSet;

use common::mlflow::{Proxy, Server};
use common::project::Project;
use common::slurm::Cluster;
use common::sweeps::{run_until, sample_grid};
use serde_json::Value;

/// Every run of an experiment with its status, parent, params, tags,
/// latest metrics, `loss` history steps and artifact paths (recursively).
const READ_BACK: &str = r#"
import json, os, sys
from mlflow import MlflowClient
c = MlflowClient(os.environ["URI"])
exp = c.get_experiment_by_name(sys.argv[1] if len(sys.argv) > 1 else os.environ["EXPERIMENT"])
def files(run_id, path=None):
    out = []
    for f in c.list_artifacts(run_id, path):
        out += files(run_id, f.path) if f.is_dir else [f.path]
    return out
runs = []
for r in c.search_runs([exp.experiment_id], max_results=1000):
    runs.append({
        "id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
        "parent": r.data.tags.get("mlflow.parentRunId"),
        "params": r.data.params, "tags": r.data.tags, "metrics": r.data.metrics,
        "loss_steps": [m.step for m in c.get_metric_history(r.info.run_id, "loss")],
        "artifacts": files(r.info.run_id),
    })
print(json.dumps(runs))
"#;

fn read_back(server: &Server, experiment: &str) -> Vec<Value> {
    let script = format!("import os\nos.environ['EXPERIMENT'] = {experiment:?}\n{READ_BACK}");
    server.python(&script).as_array().unwrap().clone()
}

/// The steps of a read-back run's `loss` history.
fn loss_steps(run: &Value) -> Vec<i64> {
    run["loss_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect()
}

/// Sends SIGINT to a child and waits for it; returns its exit code.
fn interrupt(child: &mut std::process::Child) -> Option<i32> {
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap().code()
}

/// The `step` column of rows with a loss in a trial's `history.csv`.
fn history_steps(project: &Project, result: &Value, trial: &str) -> Vec<i64> {
    let stage = result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == format!("{trial}/train"))
        .unwrap();
    let path = project
        .dir
        .path()
        .join("store/train")
        .join(stage["key"].as_str().unwrap())
        .join("out/history.csv");
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let loss = header.iter().position(|h| *h == "loss").unwrap();
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|cells| !cells[loss].is_empty())
        .map(|cells| cells[0].parse().unwrap())
        .collect()
}

/// One parent named `sweep` and a FINISHED child per trial of `result`,
/// each with its params, its full loss history and its artifacts.
fn assert_sweep_logged(project: &Project, runs: &[Value], result: &Value, sweep: &str) {
    let parents: Vec<&Value> = runs.iter().filter(|r| r["parent"].is_null()).collect();
    assert_eq!(parents.len(), 1, "{runs:?}");
    let parent = parents[0];
    assert_eq!(parent["name"], sweep);
    assert_eq!(parent["status"], "FINISHED");
    assert!(
        parent["artifacts"]
            .as_array()
            .unwrap()
            .contains(&"sweep-report.html".into())
    );
    let best = result["trials"][0]["metric"].as_f64().unwrap();
    assert_eq!(parent["metrics"]["best_eval_accuracy"].as_f64().unwrap(), best);

    let trials = result["trials"].as_array().unwrap();
    let children: Vec<&Value> = runs.iter().filter(|r| r["parent"] == parent["id"]).collect();
    assert_eq!(children.len(), trials.len());
    for trial in trials {
        let name = trial["trial"].as_str().unwrap();
        let child = children
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no run {name}"));
        assert_eq!(child["status"], "FINISHED", "{name}");
        let lr = trial["params"]["stages.train.optimizer.lr"].as_f64().unwrap();
        let logged: f64 = child["params"]["stages.train.optimizer.lr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(logged, lr, "{name}");
        assert_eq!(child["params"]["stages.train.epochs"], "1");
        assert!(
            child["params"].as_object().unwrap().len() > 100,
            "the whole resolved config"
        );
        assert_eq!(
            loss_steps(child),
            history_steps(project, result, name),
            "{name}: the full history at the global steps"
        );
        assert_eq!(
            child["metrics"]["eval_accuracy"].as_f64().unwrap(),
            trial["metric"].as_f64().unwrap(),
            "{name}"
        );
        let artifacts: BTreeSet<&str> = child["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for expected in [
            "report/report.html",
            "report/loss.svg",
            "evaluate/metrics.json",
            "train/model.safetensors",
            "train/history.csv",
            "pipeline.lock",
        ] {
            assert!(artifacts.contains(expected), "{name}: no {expected} in {artifacts:?}");
        }
        let tags = &child["tags"];
        assert_eq!(tags["pipeline.trial"], name.trim_start_matches("trial-"));
        assert!(tags["pipeline.hash"].as_str().unwrap().len() == 16);
        assert!(tags["pipeline.stage.train.key"].is_string());
        assert!(tags["mlflow.source.git.commit"].is_string() || tags["mlflow.source.name"].is_string());
    }
}

#[test]
fn runs_params_histories_and_artifacts_reach_a_real_mlflow_server() {
    let server = Server::start();
    let project = Project::new();
    let env = [("MLFLOW_TRACKING_URI", server.uri.as_str())];

    // A tracked 8-trial sweep: one parent, eight nested runs.
    let tracked = "tracking:\n  mlflow: {experiment: sweep-a}\n";
    let sweep = sample_grid(&project, "tracked", &["1.0e-2", "3.0e-3", "1.0e-3", "3.0e-4"], tracked);
    let (code, result) = project.run_json(&["run", &sweep], &env);
    assert_eq!(code, 0, "{result}");
    let runs = read_back(&server, "sweep-a");
    assert_eq!(runs.len(), 9);
    assert_sweep_logged(&project, &runs, &result, "tracked");
    assert!(
        runs.iter()
            .filter(|r| !r["parent"].is_null())
            .all(|r| r["tags"]["pipeline.cached"] == "false")
    );

    // A plain run whose stages all come from the sweep's cache still gets its run.
    let (code, result) = project.run_json(
        &[
            "run",
            "pipelines/imdb-sample.yaml",
            "--set",
            "stages.train.epochs=1",
            "--set",
            "tracking.mlflow.experiment=plain",
        ],
        &env,
    );
    assert_eq!(code, 0, "{result}");
    let runs = read_back(&server, "plain");
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["name"], "imdb-sample");
    assert!(run["parent"].is_null());
    assert_eq!(run["status"], "FINISHED");
    assert_eq!(run["tags"]["pipeline.cached"], "true");
    assert!(
        run["artifacts"]
            .as_array()
            .unwrap()
            .contains(&"report/report.html".into())
    );
    assert!(!run["loss_steps"].as_array().unwrap().is_empty());

    // The server goes away after the first trial: the sweep finishes, the
    // calls are spooled, and `pipeline mlflow sync` completes the server.
    let proxy = Proxy::start(&server.uri);
    let outage = "tracking:\n  mlflow: {experiment: sweep-b}\n";
    let sweep = sample_grid(&project, "outage", &["2.0e-3", "5.0e-4"], outage);
    let proxied = [("MLFLOW_TRACKING_URI", proxy.uri.as_str())];
    let (mut child, _, rest) = run_until(&project, &["run", &sweep], &proxied, |line| line.contains("/report in"));
    proxy.cut();
    let status = child.wait().unwrap();
    let stderr = rest.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("spooling tracking calls"), "{stderr}");
    let spool = project.dir.path().join("store/.mlflow-spool");
    let spooled = |ext: &str| {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(spooled("jsonl"), 1);
    let before = read_back(&server, "sweep-b");
    assert!(
        before.len() < 5,
        "the outage left the server incomplete: {} runs",
        before.len()
    );

    // A crash can cut the last line: what parses is replayed, the rest kept aside.
    let file = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{\"LogBatch\": {\"run\": 1, \"metr");
    std::fs::write(&file, text).unwrap();
    let sync = project.run_env(&["mlflow", "sync", "--uri", &server.uri], &[]);
    let stderr = String::from_utf8_lossy(&sync.stderr);
    assert!(sync.status.success(), "{stderr}");
    assert!(stderr.contains("1 line(s) were not spooled calls"), "{stderr}");
    assert_eq!(spooled("jsonl"), 0, "a replayed spool is removed");
    assert_eq!(spooled("unparsed"), 1, "the cut line is kept aside");
    // The same sweep again (all cached) gives the ranking to compare with.
    let (code, result) = project.run_json(&["run", &sweep], &[]);
    assert_eq!(code, 0);
    let runs = read_back(&server, "sweep-b");
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert_sweep_logged(&project, &runs, &result, "outage");

    // Ctrl-C after the first trial: nothing is left RUNNING.
    let interrupted = "tracking:\n  mlflow: {experiment: sweep-c}\n";
    let sweep = sample_grid(&project, "interrupted", &["4.0e-3", "6.0e-4"], interrupted);
    let (mut child, ran, rest) = run_until(&project, &["run", &sweep], &env, |line| line.contains("/report in"));
    let code = interrupt(&mut child);
    let stderr = rest.join().unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    let runs = read_back(&server, "sweep-c");
    assert_eq!(runs.len(), 5, "{runs:?}");
    let finished: BTreeSet<&str> = ran.iter().filter_map(|l| l.strip_suffix("/report")).collect();
    for run in &runs {
        let name = run["name"].as_str().unwrap();
        if finished.contains(name) {
            assert_eq!(run["status"], "FINISHED", "{name}");
        } else {
            assert_eq!(run["status"], "FAILED", "{name}");
            if name != "interrupted" {
                assert!(
                    run["tags"]["pipeline.error"].as_str().unwrap().contains("interrupted"),
                    "{run}"
                );
            }
        }
    }

    // Step metrics reach the server while the model trains (the run is still
    // RUNNING), and a run interrupted then keeps them, every logged step once.
    let live = [
        ("MLFLOW_TRACKING_URI", server.uri.as_str()),
        ("RUST_LOG", "pipeline::train=info"),
    ];
    let args = [
        "run",
        "pipelines/imdb-sample.yaml",
        "--set",
        "stages.train.epochs=50",
        "--set",
        "tracking.mlflow.experiment=live",
    ];
    let (mut child, _, rest) = run_until(&project, &args, &live, |line| line.contains("training step=50 "));
    let during = read_back(&server, "live");
    assert_eq!(during.len(), 1, "{during:?}");
    assert_eq!(during[0]["status"], "RUNNING", "{during:?}");
    assert_eq!(loss_steps(&during[0]).first(), Some(&25), "{during:?}");
    let code = interrupt(&mut child);
    let stderr = rest.join().unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    let after = read_back(&server, "live");
    assert_eq!(after[0]["status"], "FAILED");
    let steps = loss_steps(&after[0]);
    let every_logging_step: Vec<i64> = (1..=steps.len() as i64).map(|k| 25 * k).collect();
    assert!(steps.len() >= 2, "{steps:?}");
    assert_eq!(steps, every_logging_step);
}

#[test]
fn credentials_are_sent_as_auth_headers_and_never_shown_or_logged() {
    let password = "s3cret-Pass-0123";
    let server = Server::start_with_auth(password);
    let project = Project::new();
    let host = server.uri.trim_start_matches("http://");
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/imdb-sample.yaml")).unwrap();
    let with_tracking = |experiment: &str, uri: &str| {
        format!("{sample}tracking:\n  mlflow: {{experiment: {experiment}, uri: '{uri}'}}\n")
    };
    let short = ["--set", "stages.train.max_steps=2"];
    // In the address, and from MLflow's environment variables.
    let cases = [
        ("in-uri", format!("http://admin:{password}@{host}"), vec![]),
        (
            "from-env",
            server.uri.clone(),
            vec![
                ("MLFLOW_TRACKING_USERNAME", "admin"),
                ("MLFLOW_TRACKING_PASSWORD", password),
            ],
        ),
    ];
    for (experiment, uri, env) in &cases {
        let file = project.write(&format!("{experiment}.yaml"), &with_tracking(experiment, uri));
        let mut args = vec!["run", file.as_str()];
        args.extend(short);
        let output = project.run_env(&args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains("warning"), "{experiment}: {stderr}");
        let runs = read_back(&server, experiment);
        assert_eq!(runs.len(), 1, "{experiment}: {runs:?}");
        assert_eq!(runs[0]["status"], "FINISHED");
        let logged = runs[0].to_string();
        assert!(
            !logged.contains(password),
            "{experiment}: the password reached MLflow: {logged}"
        );
        assert_eq!(
            runs[0]["params"]["tracking.mlflow.uri"],
            uri.replace(&format!("admin:{password}@"), "")
        );
        let show = project.run(&["show", &file]);
        assert!(!String::from_utf8_lossy(&show.stdout).contains(password));
    }
    // A wrong password: refused, and the message does not show it either.
    let file = project.write(
        "wrong.yaml",
        &with_tracking("wrong", &format!("http://admin:not-the-{password}@{host}")),
    );
    let mut args = vec!["run", file.as_str()];
    args.extend(short);
    let output = project.run(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") || stderr.contains("not authenticated"),
        "{stderr}"
    );
    assert!(!stderr.contains(password), "{stderr}");
}

#[test]
fn a_sweep_run_on_slurm_is_logged_as_a_local_one() {
    let cluster = Cluster::start();
    let server = Server::start();
    let project = Project::new();
    let conf = cluster.conf();
    let env = [
        ("MLFLOW_TRACKING_URI", server.uri.as_str()),
        ("SLURM_CONF", conf.to_str().unwrap()),
    ];
    let settings = "tracking:\n  mlflow: {experiment: sweep-slurm}\nexecutor: {slurm: {cpus_per_task: 1}}\n";
    let sweep = sample_grid(&project, "cluster", &["1.0e-2", "3.0e-3"], settings);
    let (code, result) = project.run_json(&["run", &sweep], &env);
    assert_eq!(code, 0, "{result}\n{}", cluster.logs());
    // The coordinator logged the runs; the tasks (which log nothing) computed them.
    let runs = read_back(&server, "sweep-slurm");
    assert_eq!(runs.len(), 1 + 4, "{runs:?}");
    assert_sweep_logged(&project, &runs, &result, "cluster");
    for run in runs.iter().filter(|r| !r["parent"].is_null()) {
        assert_eq!(run["tags"]["pipeline.cached"], "false", "{run}");
        assert_eq!(run["tags"]["pipeline.stage.train.state"], "ran-elsewhere", "{run}");
    }
}
