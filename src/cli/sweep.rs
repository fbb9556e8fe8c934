//! `pipeline run SWEEP`: every trial of a sweep in one graph (shared stages
//! run once), `parallel` trials at a time on CPU slots, then a table sorted
//! by the metric, `sweep-report.html` and, with tracking, a parent MLflow
//! run with one nested run per trial.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::run::exit_code;
use super::{Env, Target, default_jobs, interrupt_flag};
use crate::console::Console;
use crate::dag::ExecOptions;
use crate::report::sweep::{SweepReport, TrialRow};
use crate::results::{FinishedStage, Results, aligned};
use crate::session::{Ending, Instance, InstanceResult, Session, Tracking};
use crate::spec::{Goal, Sweep, lock_path};
use crate::store::LockFile;
use crate::tracking::record::{git_tags, metrics as run_metrics};
use crate::tracking::{Metric, RunStatus, Tracker, tracker::now_ms};

pub(super) fn run(env: &Env, target: &Target, jobs: Option<usize>) -> anyhow::Result<u8> {
    let sweep = Sweep::load(&target.file, &target.sets, env.registry)?;
    let cores = default_jobs(jobs);
    // CPU slots: the cores split between the trials that run at once.
    let slot_threads = (cores / sweep.parallel).max(1);
    let instances = sweep
        .trials
        .iter()
        .map(|trial| Instance {
            name: trial.label(),
            label: Some(trial.label()),
            pipeline: trial.pipeline.clone(),
            tags: vec![
                ("pipeline.sweep".into(), sweep.name.clone()),
                ("pipeline.trial".into(), trial.id.clone()),
            ],
        })
        .collect();
    let mut session = Session::new(instances, &env.store)?;
    for n in 0..session.graph.nodes.len() {
        if session.is_own(n) {
            session.graph.nodes[n].threads = slot_threads;
        }
    }
    let rows: Vec<(String, String)> = sweep
        .trials
        .iter()
        .map(|t| (t.label(), describe(&sweep.parameters, &t.params)))
        .collect();
    let console = Console::new(false).with_trials(&rows);
    console.line(&format!(
        "sweep `{}`: {} trials of {}, {} at a time with {slot_threads} thread(s) each; {} stages in all",
        sweep.name,
        sweep.trials.len(),
        sweep.pipeline_file.display(),
        sweep.parallel,
        session.graph.nodes.len()
    ));
    if !console.has_table() {
        for (label, params) in &rows {
            console.line(&format!("  {label}  {params}"));
        }
    }
    let tracker = env.tracker(sweep.tracking.as_ref())?;
    // Two `git` processes (some 3 ms): only for a run that is tracked.
    let git = match &tracker {
        Some(_) => git_tags(sweep.source.path.parent().unwrap_or(std::path::Path::new("."))),
        None => Vec::new(),
    };
    let parent = tracker.as_ref().map(|tracker| {
        let mut tags = vec![
            (
                "mlflow.source.name".to_string(),
                sweep.source.path.display().to_string(),
            ),
            ("mlflow.source.type".to_string(), "LOCAL".to_string()),
            (
                "mlflow.user".to_string(),
                std::env::var("USER").unwrap_or_else(|_| "pipeline".into()),
            ),
            ("pipeline.sweep".to_string(), sweep.name.clone()),
        ];
        tags.extend(git.iter().cloned());
        let run = tracker.start_run(&sweep.name, tags, None);
        let params = vec![
            ("pipeline".to_string(), sweep.pipeline_file.display().to_string()),
            ("method".to_string(), format!("{:?}", sweep.method).to_lowercase()),
            ("metric".to_string(), sweep.metric.name.clone()),
            ("goal".to_string(), format!("{:?}", sweep.metric.goal).to_lowercase()),
            ("parallel".to_string(), sweep.parallel.to_string()),
            ("trials".to_string(), sweep.trials.len().to_string()),
            ("parameters".to_string(), sweep.parameters.join(", ")),
        ];
        tracker.log(run, &[], params, Vec::new());
        run
    });
    let tracking = tracker.as_ref().map(|tracker| Tracking {
        tracker,
        parent,
        git: git.clone(),
    });
    let cancel = interrupt_flag();
    let options = ExecOptions {
        devices: sweep.leased_devices(),
        ..ExecOptions::with_jobs(sweep.parallel * slot_threads)
    };
    let (execution, results) = session.execute(env.registry, &env.store, &options, &console, cancel, tracking.as_ref());
    env.store.save_state();

    let rows = ranked_rows(&sweep, &results);
    let trial_results = results
        .iter()
        .map(|r| {
            Results::collect(
                env.registry,
                r.stages.iter().map(|s| FinishedStage {
                    name: &s.name,
                    kind: &s.kind,
                    out_dir: s.out_dir.as_deref(),
                }),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report_dir = env.store.root().join(".sweeps").join(&sweep.name);
    let report_path = report_dir.join("sweep-report.html");
    let report = SweepReport {
        name: &sweep.name,
        metric: &sweep.metric.name,
        parameters: &sweep.parameters,
        domains: &sweep.domains,
        rows: &rows,
    };
    std::fs::create_dir_all(&report_dir)?;
    std::fs::write(&report_path, report.html(&results_history(&rows, &results)))?;
    print_table(&console, &sweep, &rows, &trial_results);
    let best = rows.iter().find(|r| r.metric.is_some());
    match best {
        Some(best) => console.line(&format!(
            "best: {} ({} = {}) with {}",
            best.label,
            sweep.metric.name,
            crate::report::fmt(best.metric.expect("ranked")),
            describe(&sweep.parameters, &best.params)
        )),
        None => console.line(&format!(
            "no trial reported `{}`; metrics of the trials: {}",
            sweep.metric.name,
            available_metrics(&results).join(", ")
        )),
    }
    console.line(&format!("sweep report: {}", report_path.display()));
    let all_ok = results.iter().all(|r| r.ending.succeeded());
    if all_ok && target.sets.is_empty() {
        sweep_lock(&session, &execution, &sweep).write(&lock_path(&target.file))?;
    }
    if let (Some(tracker), Some(parent)) = (&tracker, parent) {
        let mut summary = Vec::new();
        if let Some(best) = best {
            summary.push(Metric {
                key: format!("best_{}", sweep.metric.name),
                value: best.metric.expect("ranked"),
                timestamp: now_ms(),
                step: 0,
            });
        }
        let tags = best
            .map(|b| vec![("pipeline.best_trial".to_string(), b.label.clone())])
            .unwrap_or_default();
        tracker.log(parent, &summary, Vec::new(), tags);
        tracker.upload(parent, &report_path, "sweep-report.html");
        let status = if all_ok && !execution.interrupted {
            RunStatus::Finished
        } else {
            RunStatus::Failed
        };
        tracker.finish(parent, status);
        report_tracking(&console, tracker);
    }
    let failed = rows.iter().filter(|r| r.status == "failed").count();
    console.line(&format!(
        "sweep `{}`: {} trials, {} failed, in {:.1}s (trials' own time {:.1}s)",
        sweep.name,
        rows.len(),
        failed,
        execution.elapsed.as_secs_f64(),
        results.iter().map(|r| r.seconds).sum::<f64>()
    ));
    for row in rows.iter().filter(|r| r.error.is_some()) {
        eprintln!(
            "error: {} failed: {}",
            row.label,
            row.error.as_deref().unwrap_or_default()
        );
    }
    if env.json {
        env.print_json(&json!({
            "sweep": sweep.name,
            "ok": all_ok && !execution.interrupted,
            "interrupted": execution.interrupted,
            "seconds": execution.elapsed.as_secs_f64(),
            "metric": sweep.metric,
            "best": best.map(|b| &b.label),
            "report": report_path,
            "stages": session.graph.nodes.iter().zip(&execution.results).map(|(node, result)| json!({
                "label": node.label,
                "kind": node.kind(),
                "key": node.key(),
                "state": result.state.word(),
                "seconds": result.seconds,
            })).collect::<Vec<_>>(),
            "trials": rows.iter().map(|r| json!({
                "trial": r.label,
                "params": sweep.parameters.iter().zip(&r.params).map(|(p, v)| (p.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
                "status": r.status,
                "metric": r.metric,
                "seconds": r.seconds,
                "metrics": r.metrics,
                "results": trial_results[r.index],
                "error": r.error,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(exit_code(&execution))
}

/// Tells where tracking went: the server, or the spool to replay.
pub(super) fn report_tracking(console: &Console, tracker: &Tracker) {
    match tracker.spool_file() {
        Some(spool) => console.line(&format!(
            "MLflow: the server at {} could not be reached; calls spooled to {} (replay: `pipeline mlflow sync`)",
            tracker.uri(),
            spool.display()
        )),
        None => console.line(&format!("MLflow: runs logged to {}", tracker.uri())),
    }
}

/// `lr=0.001 num_layers=2`: the last path segment of each parameter and its value.
fn describe(parameters: &[String], values: &[Json]) -> String {
    parameters
        .iter()
        .zip(values)
        .map(|(p, v)| format!("{}={v}", p.rsplit('.').next().unwrap_or(p)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trials sorted by the metric (best first), trials without it last.
fn ranked_rows(sweep: &Sweep, results: &[InstanceResult]) -> Vec<TrialRow> {
    let mut rows: Vec<TrialRow> = sweep
        .trials
        .iter()
        .zip(results)
        .enumerate()
        .map(|(index, (trial, result))| TrialRow {
            index,
            label: trial.label(),
            params: trial.params.clone(),
            status: result.ending.word(),
            metric: result
                .metrics
                .get(&sweep.metric.name)
                .copied()
                .filter(|v| v.is_finite()),
            seconds: result.seconds,
            metrics: result.metrics.clone(),
            error: match &result.ending {
                Ending::Failed(e) => Some(e.clone()),
                _ => None,
            },
        })
        .collect();
    let goal: Goal = sweep.metric.goal;
    rows.sort_by(|a, b| match (a.metric, b.metric) {
        (Some(x), Some(y)) => goal.order(x, y).then(a.index.cmp(&b.index)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.index.cmp(&b.index),
    });
    rows
}

/// Every metric name the trials reported, sorted.
fn available_metrics(results: &[InstanceResult]) -> Vec<String> {
    let mut names: Vec<String> = results.iter().flat_map(|r| r.metrics.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
}

/// Per row, its trial's step metrics (for the loss curves).
fn results_history(rows: &[TrialRow], results: &[InstanceResult]) -> Vec<Vec<Metric>> {
    rows.iter()
        .map(|r| run_metrics(&results[r.index].stages).unwrap_or_default())
        .collect()
}

/// The final table: per trial its parameters, the sweep metric, each
/// split's accuracy and F1 from its evaluation, status and seconds.
fn print_table(console: &Console, sweep: &Sweep, rows: &[TrialRow], results: &[Results]) {
    let short: Vec<&str> = sweep
        .parameters
        .iter()
        .map(|p| p.rsplit('.').next().unwrap_or(p))
        .collect();
    let flat: Vec<BTreeMap<String, f64>> = results.iter().map(Results::flat).collect();
    // Accuracy and binary F1 (macro F1 for more than two labels) per split.
    let binary = flat.iter().flat_map(|f| f.keys()).any(|k| k.ends_with(".f1"));
    let shown = if binary {
        [".accuracy", ".f1"]
    } else {
        [".accuracy", ".f1_macro"]
    };
    let mut scores: Vec<String> = flat
        .iter()
        .flat_map(|f| f.keys())
        .filter(|k| shown.iter().any(|m| k.ends_with(m)))
        .cloned()
        .collect();
    scores.sort();
    scores.dedup();
    let mut header = vec!["trial".to_string()];
    header.extend(short.iter().map(|s| s.to_string()));
    header.push(sweep.metric.name.clone());
    header.extend(scores.iter().cloned());
    header.extend(["status".into(), "seconds".into()]);
    let mut table: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = vec![row.label.clone()];
        line.extend(row.params.iter().map(Json::to_string));
        line.push(row.metric.map_or_else(|| "-".into(), crate::report::fmt));
        line.extend(scores.iter().map(|s| {
            flat[row.index]
                .get(s)
                .map_or_else(|| "-".into(), |&v| crate::report::fmt(v))
        }));
        line.push(row.status.to_string());
        line.push(format!("{:.1}", row.seconds));
        table.push(line);
    }
    for line in aligned(&table) {
        console.line(&line);
    }
}

/// The sweep's lock: every trial's stages, named `trial-<id>/<stage>`, so
/// `pipeline gc` keeps their entries.
fn sweep_lock(session: &Session, execution: &crate::dag::Execution, sweep: &Sweep) -> LockFile {
    let mut lock = LockFile {
        pipeline: sweep.name.clone(),
        stages: Default::default(),
    };
    for (i, instance) in session.instances.iter().enumerate() {
        if let Some(trial_lock) = session.lock_file(i, execution) {
            for (stage, locked) in trial_lock.stages {
                lock.stages.insert(format!("{}/{stage}", instance.name), locked);
            }
        }
    }
    lock
}
