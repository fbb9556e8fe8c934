//! Running a sweep: every trial is an instance of one [`Session`] (shared
//! stages run once), `parallel` trials at a time on CPU slots; then the
//! trials ranked by the metric, `sweep-report.html`, the sweep's lock and,
//! with tracking, a parent MLflow run over the trials' nested runs. The
//! command line ([`crate::cli`]) loads the sweep and prints what this returns.
//! On a cluster, [`slurm::run_trials`] first has the trials computed as
//! array tasks; this then gathers them from the store.

pub mod search;
pub mod slurm;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::Value as Json;

use crate::console::Console;
use crate::dag::{BuiltBefore, ExecOptions, Execution, Launcher};
use crate::report::sweep::{SweepReport, TrialRow};
use crate::results::{FinishedStage, Results};
use crate::session::{Ending, Instance, InstanceResult, Session, Tracking};
use crate::spec::{Goal, Sweep, Trial};
use crate::stage::Registry;
use crate::store::{LockFile, Store};
use crate::tracking::record::{git_tags, metrics as run_metrics};
use crate::tracking::{Metric, RunStatus, Tracker, tracker::now_ms};

/// How to run a sweep.
pub struct SweepOptions<'a> {
    /// CPU threads in all, split between the `parallel` trials.
    pub cores: usize,
    /// Where the parent run and the trials' runs go; `None`: not tracked.
    pub tracker: Option<&'a Tracker>,
    /// Where to write the sweep's lock once every trial succeeded; `None`
    /// for a variant of the sweep file (`--set`), which leaves it alone.
    pub lock: Option<PathBuf>,
    /// What builds the stages that are not cached; `None`: this process.
    pub launcher: Option<&'a dyn Launcher>,
    /// The nodes built for this run before (by a cluster, see
    /// [`slurm::run_trials`], or an adaptive search, see [`search::run`]).
    pub built_before: Option<&'a BTreeMap<String, BuiltBefore>>,
}

/// What a sweep run did.
pub struct SweepOutcome {
    /// The session of the trials (their graph and nodes).
    pub session: Session,
    /// Its execution, one result per graph node.
    pub execution: Execution,
    /// Per trial, in expansion order: how it ended.
    pub results: Vec<InstanceResult>,
    /// Per trial, in expansion order: its evaluations' scores and files.
    pub trial_results: Vec<Results>,
    /// The trials ranked by the metric, best first, those without it last.
    pub rows: Vec<TrialRow>,
    /// `sweep-report.html`.
    pub report: PathBuf,
}

impl SweepOutcome {
    /// True when every trial succeeded or was pruned, and nothing was interrupted.
    pub fn succeeded(&self) -> bool {
        self.results.iter().all(ended_well) && !self.execution.interrupted
    }

    /// The best trial, when any reported the metric.
    pub fn best(&self) -> Option<&TrialRow> {
        self.rows.iter().find(|r| r.metric.is_some())
    }
}

/// Each trial's label and its parameters in words (`lr=0.001 clip=1.0`).
pub fn trial_rows(sweep: &Sweep) -> Vec<(String, String)> {
    sweep
        .trials
        .iter()
        .map(|t| (t.label(), describe(&sweep.parameters, &t.params)))
        .collect()
}

/// `lr=0.001 num_layers=2`: the last path segment of each parameter and its value.
pub fn describe(parameters: &[String], values: &[Json]) -> String {
    parameters
        .iter()
        .zip(values)
        .map(|(p, v)| format!("{}={v}", p.rsplit('.').next().unwrap_or(p)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the trials of `sweep` that are not cached and gathers their results,
/// the report and the lock; the console shows the progress.
pub fn run(
    sweep: &Sweep,
    registry: &Registry,
    store: &Store,
    options: &SweepOptions,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<SweepOutcome> {
    // CPU slots: the cores split between the trials that run at once.
    let slot_threads = (options.cores / sweep.parallel).max(1);
    let mut session = session(sweep, store)?;
    for n in 0..session.graph.nodes.len() {
        if session.is_own(n) {
            session.graph.nodes[n].threads = slot_threads;
        }
    }
    console.line(&format!(
        "sweep `{}`: {} trials of {}, {} at a time with {slot_threads} thread(s) each; {} stages in all",
        sweep.name,
        sweep.trials.len(),
        sweep.pipeline_file.display(),
        sweep.parallel,
        session.graph.nodes.len()
    ));
    if !console.has_table() {
        for (label, params) in trial_rows(sweep) {
            console.line(&format!("  {label}  {params}"));
        }
    }
    // Two `git` processes (some 3 ms): only for a run that is tracked.
    let git = match options.tracker {
        Some(_) => git_tags(sweep.source.path.parent().unwrap_or(Path::new("."))),
        None => Vec::new(),
    };
    let parent = options.tracker.map(|tracker| start_parent_run(sweep, tracker, &git));
    let tracking = options.tracker.map(|tracker| Tracking { tracker, parent, git });
    let exec = ExecOptions {
        devices: sweep.leased_devices(),
        launcher: options.launcher,
        built_before: options.built_before,
        ..ExecOptions::with_jobs(sweep.parallel * slot_threads)
    };
    let (execution, results) = session.execute(registry, store, &exec, console, cancel, tracking.as_ref());
    store.save_state();

    let rows = ranked_rows(sweep, &results);
    let trial_results = results
        .iter()
        .map(|r| {
            Results::collect(
                registry,
                r.stages.iter().map(|s| FinishedStage {
                    name: &s.name,
                    kind: &s.kind,
                    out_dir: s.out_dir.as_deref(),
                }),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report_dir = store.root().join(".sweeps").join(&sweep.name);
    let report = report_dir.join("sweep-report.html");
    let page = SweepReport {
        name: &sweep.name,
        metric: &sweep.metric.name,
        parameters: &sweep.parameters,
        domains: &sweep.domains,
        rows: &rows,
    };
    std::fs::create_dir_all(&report_dir)?;
    std::fs::write(&report, page.html(&histories(&rows, &results)))?;
    let outcome = SweepOutcome {
        session,
        execution,
        results,
        trial_results,
        rows,
        report,
    };
    let all_ok = outcome.results.iter().all(ended_well);
    if let Some(lock) = options.lock.as_deref().filter(|_| all_ok) {
        sweep_lock(&outcome.session, &outcome.execution, sweep).write(lock)?;
    }
    if let (Some(tracker), Some(parent)) = (options.tracker, parent) {
        finish_parent_run(sweep, tracker, parent, &outcome);
    }
    Ok(outcome)
}

/// A trial that succeeded, or that the sweep's early stopping pruned (a
/// decision, not a failure: the lock then holds the trials that finished).
fn ended_well(result: &InstanceResult) -> bool {
    result.ending.succeeded() || matches!(result.ending, Ending::Pruned(_))
}

/// The stages that more than one trial of `sweep` needs, as one session
/// (what a cluster's upstream job builds before the trials' array); `None`
/// when the trials share nothing.
pub fn shared_session(sweep: &Sweep, store: &Store) -> anyhow::Result<Option<Session>> {
    shared_of(sweep, &session(sweep, store)?, store)
}

/// Builds the stages the trials share (`shared`, from [`shared_session`])
/// in this process with `jobs` threads, device stages on `devices`, and
/// saves the store's state: what a cluster's upstream job and a
/// coordinator that runs them itself both do.
pub fn build_shared(
    shared: &Session,
    registry: &Registry,
    store: &Store,
    devices: &[String],
    jobs: usize,
    console: &Console,
    cancel: &AtomicBool,
) -> Execution {
    let options = ExecOptions {
        devices,
        ..ExecOptions::with_jobs(jobs)
    };
    let (execution, _) = shared.execute(registry, store, &options, console, cancel, None);
    store.save_state();
    execution
}

/// [`shared_session`], from `all`, the session of every trial of `sweep`.
fn shared_of(sweep: &Sweep, all: &Session, store: &Store) -> anyhow::Result<Option<Session>> {
    let mut instances = Vec::new();
    let mut seen: Vec<Vec<usize>> = Vec::new();
    for (i, trial) in sweep.trials.iter().enumerate() {
        // A shared stage's inputs are shared too: what is kept needs nothing dropped.
        let kept: Vec<usize> = (0..trial.pipeline.stages.len())
            .filter(|&s| !all.is_own(all.nodes[i][s]))
            .collect();
        let nodes: Vec<usize> = kept.iter().map(|&s| all.nodes[i][s]).collect();
        if kept.is_empty() || seen.contains(&nodes) {
            continue;
        }
        seen.push(nodes);
        let mut pipeline = trial.pipeline.clone();
        pipeline.stages = kept
            .iter()
            .map(|&s| {
                let mut stage = trial.pipeline.stages[s].clone();
                for need in &mut stage.needs {
                    *need = kept
                        .iter()
                        .position(|k| k == need)
                        .expect("a shared stage needs shared stages");
                }
                stage
            })
            .collect();
        // Shown by stage name, as a sweep shows a shared stage.
        instances.push(Instance {
            name: trial.label(),
            label: None,
            pipeline,
            tags: Vec::new(),
        });
    }
    if instances.is_empty() {
        return Ok(None);
    }
    Session::new(instances, store).map(Some)
}

/// The trials as the instances of one session (their merged graph, surveyed in `store`).
fn session(sweep: &Sweep, store: &Store) -> anyhow::Result<Session> {
    let instances = sweep.trials.iter().map(|trial| instance(sweep, trial)).collect();
    Session::new(instances, store)
}

/// A trial as an instance of a session.
fn instance(sweep: &Sweep, trial: &Trial) -> Instance {
    Instance {
        name: trial.label(),
        label: Some(trial.label()),
        pipeline: trial.pipeline.clone(),
        tags: vec![
            ("pipeline.sweep".into(), sweep.name.clone()),
            ("pipeline.trial".into(), trial.id.clone()),
        ],
    }
}

/// The sweep's MLflow run, with the sweep's settings as parameters.
fn start_parent_run(sweep: &Sweep, tracker: &Tracker, git: &[(String, String)]) -> crate::tracking::RunHandle {
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
    let mut params = vec![
        ("pipeline".to_string(), sweep.pipeline_file.display().to_string()),
        ("method".to_string(), format!("{:?}", sweep.method).to_lowercase()),
        ("metric".to_string(), sweep.metric.name.clone()),
        ("goal".to_string(), format!("{:?}", sweep.metric.goal).to_lowercase()),
        ("parallel".to_string(), sweep.parallel.to_string()),
        ("trials".to_string(), sweep.trials.len().to_string()),
        ("parameters".to_string(), sweep.parameters.join(", ")),
    ];
    if let Some(early) = &sweep.early_terminate {
        params.push((
            "early_terminate".to_string(),
            format!(
                "asha: grace_steps {}, reduction_factor {}, metric {}",
                early.grace_steps,
                early.reduction_factor,
                early.metric.as_deref().unwrap_or(&sweep.metric.name)
            ),
        ));
    }
    tracker.log(run, &[], params, Vec::new());
    run
}

/// Logs the best metric and trial and the report to the sweep's run, and ends it.
fn finish_parent_run(sweep: &Sweep, tracker: &Tracker, parent: crate::tracking::RunHandle, outcome: &SweepOutcome) {
    let best = outcome.best();
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
    tracker.upload(parent, &outcome.report, "sweep-report.html");
    let status = if outcome.succeeded() {
        RunStatus::Finished
    } else {
        RunStatus::Failed
    };
    tracker.finish(parent, status);
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
            ending: result.ending.clone(),
            // A pruned trial's metrics are from a shorter run: they do not rank.
            metric: result
                .metrics
                .get(&sweep.metric.name)
                .copied()
                .filter(|v| v.is_finite() && !matches!(result.ending, Ending::Pruned(_))),
            seconds: result.seconds,
            metrics: result.metrics.clone(),
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

/// Per row, its trial's step metrics (for the loss curves).
fn histories(rows: &[TrialRow], results: &[InstanceResult]) -> Vec<Vec<Metric>> {
    rows.iter()
        .map(|r| run_metrics(&results[r.index].stages).unwrap_or_default())
        .collect()
}

/// The sweep's lock: every trial's stages, named `trial-<id>/<stage>`, so
/// `pipeline gc` keeps their entries.
fn sweep_lock(session: &Session, execution: &Execution, sweep: &Sweep) -> LockFile {
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
