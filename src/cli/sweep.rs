//! `pipeline run SWEEP`: runs the sweep ([`crate::sweep`]) with a live
//! table of the trials, then prints the trials sorted by the metric, the
//! best one and where the report is.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::run::exit_code;
use super::{Env, ExecutorKind, Target, default_jobs, interrupt_flag};
use crate::console::Console;
use crate::report::sweep::TrialRow;
use crate::results::{Results, aligned};
use crate::session::{Ending, InstanceResult};
use crate::spec::{Executor, SlurmSettings, Sweep, lock_path};
use crate::sweep::slurm::ClusterSearch;
use crate::sweep::{SweepOptions, describe, slurm, trial_rows};
use crate::tracking::Tracker;

pub(super) fn run(
    env: &Env,
    target: &Target,
    jobs: Option<usize>,
    executor: Option<ExecutorKind>,
) -> anyhow::Result<u8> {
    // The whole run: a search or a cluster's tasks first, then the gathering.
    let started = std::time::Instant::now();
    let mut sweep = Sweep::load(&target.file, &target.sets, env.registry)?;
    let executor = match (executor, &sweep.executor) {
        (Some(ExecutorKind::Local), _) | (None, Executor::Local) => Executor::Local,
        (Some(ExecutorKind::Slurm), Executor::Local) => Executor::Slurm(SlurmSettings::default()),
        (_, slurm) => slurm.clone(),
    };
    let cancel = interrupt_flag();
    // A search adds its trials' rows as it asks for them.
    let known = if sweep.searches() {
        Vec::new()
    } else {
        trial_rows(&sweep)
    };
    let console = Console::new(false).with_trials(&known);
    anyhow::ensure!(
        !(sweep.early_terminate.is_some() && matches!(executor, Executor::Slurm(_))),
        "sweep `{}`: `early_terminate` runs on the local executor for now (a trial's rungs compare it with the trials before it while they train); run it with `--executor local`",
        sweep.name
    );
    let sweep_file = std::path::absolute(&target.file)?;
    let submission = match &executor {
        Executor::Local => None,
        Executor::Slurm(settings) => Some(slurm::Submission {
            sweep_file: &sweep_file,
            sets: &target.sets,
            settings,
            registry: env.registry,
            jobs: default_jobs(jobs),
        }),
    };
    // A search's trials (adaptive, or stopped early) are asked for and run first; then gathered.
    let quiet = Console::new(true);
    let searched = match sweep.searches() {
        true => {
            let mut searched = {
                let cluster = match &submission {
                    Some(submission) => Some(ClusterSearch::attach(&sweep, &env.store, submission, &console, cancel)?),
                    None => None,
                };
                let cores = default_jobs(jobs);
                crate::sweep::search::run(
                    &sweep,
                    env.registry,
                    &env.store,
                    cores,
                    cluster.as_ref(),
                    &console,
                    cancel,
                )?
            };
            sweep.trials = std::mem::take(&mut searched.trials);
            Some(searched)
        }
        false => None,
    };
    // Lines for what the search already showed would repeat; a live table takes the final states.
    let gathering = match (&searched, console.has_table()) {
        (Some(_), false) => &quiet,
        _ => &console,
    };
    // Known trials on a cluster: its arrays compute them first.
    let cluster = match (&submission, &searched) {
        (Some(submission), None) => Some(slurm::run_trials(&sweep, &env.store, submission, &console, cancel)?),
        _ => None,
    };
    let tracker = env.tracker(sweep.tracking.as_ref())?;
    let options = SweepOptions {
        cores: default_jobs(jobs),
        tracker: tracker.as_ref(),
        lock: target.sets.is_empty().then(|| lock_path(&target.file)),
        launcher: match (&cluster, &searched) {
            (Some(cluster), _) => Some(cluster as &dyn crate::dag::Launcher),
            (None, Some(searched)) => Some(searched as &dyn crate::dag::Launcher),
            (None, None) => None,
        },
        built_before: match (&cluster, &searched) {
            (Some(cluster), _) => Some(cluster.built()),
            (None, Some(searched)) => Some(searched.built()),
            (None, None) => None,
        },
    };
    let outcome = crate::sweep::run(&sweep, env.registry, &env.store, &options, gathering, cancel)?;
    print_table(&console, &sweep, &outcome.rows, &outcome.trial_results);
    match outcome.best() {
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
            available_metrics(&outcome.results).join(", ")
        )),
    }
    console.line(&format!("sweep report: {}", outcome.report.display()));
    if let Some(tracker) = &tracker {
        report_tracking(&console, tracker);
    }
    let rows = &outcome.rows;
    let failed = rows.iter().filter(|r| matches!(r.ending, Ending::Failed(_))).count();
    let pruned = match rows.iter().filter(|r| matches!(r.ending, Ending::Pruned(_))).count() {
        0 if sweep.early_terminate.is_none() => String::new(),
        n => format!(", {n} pruned"),
    };
    console.line(&format!(
        "sweep `{}`: {} trials, {} failed{pruned}, in {:.1}s (trials' own time {:.1}s)",
        sweep.name,
        rows.len(),
        failed,
        started.elapsed().as_secs_f64(),
        outcome.results.iter().map(|r| r.seconds).sum::<f64>()
    ));
    for row in rows {
        if let Ending::Failed(error) = &row.ending {
            eprintln!("error: {} failed: {error}", row.label);
        }
    }
    if env.json {
        let (session, execution) = (&outcome.session, &outcome.execution);
        env.print_json(&json!({
            "sweep": sweep.name,
            "ok": outcome.succeeded(),
            "interrupted": execution.interrupted,
            "seconds": started.elapsed().as_secs_f64(),
            "metric": sweep.metric,
            "best": outcome.best().map(|b| &b.label),
            "report": outcome.report,
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
                "status": r.ending.word(),
                "metric": r.metric,
                "seconds": r.seconds,
                "metrics": r.metrics,
                "results": outcome.trial_results[r.index],
                "error": match &r.ending {
                    Ending::Failed(error) => Some(error),
                    _ => None,
                },
                "pruned_at_step": match r.ending {
                    Ending::Pruned(step) => Some(step),
                    _ => None,
                },
            })).collect::<Vec<_>>(),
        }));
    }
    // Pruned trials (and the stages after them, skipped) are the sweep's decision, not a failure.
    Ok(if outcome.succeeded() {
        0
    } else {
        exit_code(&outcome.execution)
    })
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

/// Every metric name the trials reported, sorted.
fn available_metrics(results: &[InstanceResult]) -> Vec<String> {
    let mut names: Vec<String> = results.iter().flat_map(|r| r.metrics.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
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
        line.push(row.ending.status());
        line.push(format!("{:.1}", row.seconds));
        table.push(line);
    }
    for line in aligned(&table) {
        console.line(&line);
    }
}
