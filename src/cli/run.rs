//! `pipeline run FILE`: a pipeline file, a sweep file (see [`super::sweep`]),
//! or one trial of a sweep (`--trial`, what a cluster node runs).

use serde_json::json;

use super::{
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Env, ExecutorKind, Target, UsageError, default_jobs, interrupt_flag,
};
use crate::console::Console;
use crate::dag::{ExecOptions, Execution, Failure, NodeState};
use crate::results::{FinishedStage, Results};
use crate::session::{Instance, Session, Tracking};
use crate::spec::{Pipeline, SpecError, Sweep, Trial, is_sweep, lock_path};
use crate::stage::Invalid;
use crate::sweep::slurm::Allocation;
use crate::tracking::record::git_tags;

/// `--trial NAME [--params JSON]`: one trial of a sweep, as a cluster task runs it.
pub(super) struct TrialArg<'a> {
    /// The trial's label, id or index.
    pub name: &'a str,
    /// Its parameter values, for a trial a search asked for.
    pub params: Option<&'a str>,
}

pub(super) fn run(
    env: &Env,
    target: &Target,
    jobs: Option<usize>,
    trial: Option<TrialArg>,
    shared: bool,
    executor: Option<ExecutorKind>,
) -> anyhow::Result<u8> {
    let sweep = is_sweep(&target.file);
    if executor.is_some() && !sweep {
        return Err(UsageError(format!(
            "--executor picks where a sweep's trials run, and {} is a pipeline file",
            target.file.display()
        ))
        .into());
    }
    if shared {
        return run_shared(env, target, jobs);
    }
    let console = Console::new(false);
    let (pipeline, tracker, devices) = match (sweep, trial) {
        (true, None) => return super::sweep::run(env, target, jobs, executor),
        (false, Some(_)) => {
            return Err(UsageError(format!(
                "--trial picks a trial of a sweep, and {} is a pipeline file",
                target.file.display()
            ))
            .into());
        }
        // A trial as a cluster node runs it: the coordinator keeps the lock and the runs.
        (true, Some(trial)) => {
            let (sweep, trial) = asked_trial(env, target, &trial)?;
            let devices = trial_devices(&sweep, &console)?;
            (trial.pipeline, None, devices)
        }
        (false, None) => {
            let pipeline = env.load(target)?;
            pipeline.check_device()?;
            let tracker = env.tracker(pipeline.tracking.as_ref())?;
            (pipeline, tracker, Vec::new())
        }
    };
    let dir = pipeline.dir.clone();
    let instance = Instance {
        name: pipeline.name.clone(),
        label: None,
        pipeline,
        tags: Vec::new(),
    };
    let session = Session::new(vec![instance], &env.store)?;
    let tracking = tracker.as_ref().map(|tracker| Tracking {
        tracker,
        parent: None,
        git: git_tags(&dir),
    });
    let cancel = interrupt_flag();
    let options = ExecOptions {
        devices: &devices,
        ..ExecOptions::with_jobs(default_jobs(jobs))
    };
    let (execution, _) = session.execute(env.registry, &env.store, &options, &console, cancel, tracking.as_ref());
    env.store.save_state();
    let pipeline = &session.instances[0].pipeline;
    // The lock describes the pipeline file as written: a run with `--set`
    // overrides is a variant and leaves it alone, and a sweep's trial is
    // locked by the sweep.
    if let Some(lock) = session
        .lock_file(0, &execution)
        .filter(|_| target.sets.is_empty() && !sweep)
    {
        lock.write(&lock_path(&target.file))?;
    } else if execution.succeeded() && !sweep {
        console.line("lock file not written: the run had --set overrides");
    }
    if let Some(tracker) = &tracker {
        super::sweep::report_tracking(&console, tracker);
    }
    console.line(&format!("pipeline `{}`: {}", pipeline.name, tally(&execution)));
    let results = Results::collect(
        env.registry,
        pipeline
            .stages
            .iter()
            .zip(&session.nodes[0])
            .map(|(stage, &node)| FinishedStage {
                name: &stage.name,
                kind: &stage.kind,
                out_dir: execution.results[node].out_dir.as_deref(),
            }),
    )?;
    for line in results.summary() {
        console.line(&line);
    }
    if env.json {
        env.print_json(&json!({
            "pipeline": pipeline.name,
            "ok": execution.succeeded(),
            "interrupted": execution.interrupted,
            "seconds": execution.elapsed.as_secs_f64(),
            "results": results,
            "stages": stage_report(&session, 0, &execution),
        }));
    }
    for (stage, &node) in pipeline.stages.iter().zip(&session.nodes[0]) {
        match &execution.results[node].state {
            NodeState::Failed(Failure::Invalid(invalid)) => eprintln!("{}", located(pipeline, &stage.name, invalid)),
            NodeState::Failed(error) => eprintln!("error: stage `{}` failed: {error}", stage.name),
            _ => {}
        }
    }
    Ok(exit_code(&execution))
}

/// The sweep of `target` and its trial `arg` names: with `--params`, the
/// trial of those values (whose label must be the one named); else one of
/// the sweep's trials (a `tpe` sweep's as the store determines them).
fn asked_trial(env: &Env, target: &Target, arg: &TrialArg) -> anyhow::Result<(Sweep, Trial)> {
    let Some(params) = arg.params else {
        let mut sweep = env.sweep(target)?;
        let index = sweep.trial_index(arg.name).map_err(UsageError)?;
        let trial = sweep.trials.swap_remove(index);
        return Ok((sweep, trial));
    };
    let sweep = Sweep::load(&target.file, &target.sets, env.registry)?;
    let values: Vec<serde_json::Value> = serde_json::from_str(params)
        .ok()
        .filter(|v: &Vec<serde_json::Value>| v.len() == sweep.parameters.len())
        .ok_or_else(|| {
            UsageError(format!(
                "--params is a JSON list of {} value(s), one per parameter of sweep `{}` ({}), not `{params}`",
                sweep.parameters.len(),
                sweep.name,
                sweep.parameters.join(", ")
            ))
        })?;
    let trial = sweep.trial(values, env.registry)?;
    let name = arg.name;
    if ![trial.label().as_str(), trial.id.as_str()].contains(&name) {
        return Err(UsageError(format!(
            "--params {params} make trial `{}` of sweep `{}`, not `{name}`",
            trial.label(),
            sweep.name
        ))
        .into());
    }
    Ok((sweep, trial))
}

/// The GPUs a trial run by itself leases: inside a Slurm allocation the
/// ones Slurm gave it (`CUDA_VISIBLE_DEVICES`, so `cuda:0` up), else the
/// sweep's `devices:`; none for a CPU sweep.
fn trial_devices(sweep: &Sweep, console: &Console) -> anyhow::Result<Vec<String>> {
    let Some(allocation) = Allocation::current() else {
        return Ok(sweep.leased_devices().to_vec());
    };
    console.line(&allocation.describe());
    if sweep.leased_devices().is_empty() {
        return Ok(Vec::new());
    }
    let gpus = allocation.gpus();
    anyhow::ensure!(
        !gpus.is_empty(),
        "the trials of sweep `{}` run on GPUs and Slurm gave this task none: set `gres: gpu:1` under `executor: {{slurm: ...}}`",
        sweep.name
    );
    Ok(gpus)
}

/// `pipeline run SWEEP --shared`: only the stages that several trials need
/// (a cluster's upstream job, before the trials' array).
fn run_shared(env: &Env, target: &Target, jobs: Option<usize>) -> anyhow::Result<u8> {
    if !is_sweep(&target.file) {
        return Err(UsageError(format!(
            "--shared runs the stages a sweep's trials share, and {} is a pipeline file",
            target.file.display()
        ))
        .into());
    }
    let sweep = env.sweep(target)?;
    let console = Console::new(false);
    let Some(session) = crate::sweep::shared_session(&sweep, &env.store)? else {
        console.line(&format!("sweep `{}`: its trials share no stage", sweep.name));
        return Ok(0);
    };
    let devices = trial_devices(&sweep, &console)?;
    let jobs = default_jobs(jobs);
    let execution = crate::sweep::build_shared(
        &session,
        env.registry,
        &env.store,
        &devices,
        jobs,
        &console,
        interrupt_flag(),
    );
    console.line(&format!(
        "sweep `{}`: {} shared stage(s): {}",
        sweep.name,
        execution.results.len(),
        tally(&execution)
    ));
    for (node, result) in session.graph.nodes.iter().zip(&execution.results) {
        if let NodeState::Failed(error) = &result.state {
            eprintln!("error: stage `{}` failed: {error}", node.label);
        }
    }
    Ok(exit_code(&execution))
}

/// `3 ran, 7 cached, 0 failed, 0 skipped in 1.980s`: how the nodes of a run ended.
fn tally(execution: &Execution) -> String {
    let count = |wanted: fn(&NodeState) -> bool| execution.results.iter().filter(|r| wanted(&r.state)).count();
    format!(
        "{} ran, {} cached, {} failed, {} skipped in {:.3}s",
        count(|s| matches!(s, NodeState::Ran | NodeState::RanElsewhere)),
        count(|s| matches!(s, NodeState::Cached)),
        count(|s| matches!(s, NodeState::Failed(_))),
        count(|s| matches!(s, NodeState::Skipped)),
        execution.elapsed.as_secs_f64()
    )
}

/// A stage's [`Invalid`] as an error at its key in the pipeline file.
pub(super) fn located(pipeline: &Pipeline, stage: &str, invalid: &Invalid) -> SpecError {
    let error = pipeline.stage_error(
        stage,
        &invalid.path.join("."),
        format!("stage `{stage}`: `{}`: {}", invalid.path.join("."), invalid.message),
    );
    match &invalid.help {
        Some(help) => error.with_help(help.clone()),
        None => error,
    }
}

/// 130 when interrupted, 2 when a stage found its config wrong for its input,
/// 1 when one failed otherwise, else 0.
pub(super) fn exit_code(execution: &Execution) -> u8 {
    let invalid = |r: &crate::dag::NodeResult| matches!(r.state, NodeState::Failed(Failure::Invalid(_)));
    if execution.interrupted {
        EXIT_INTERRUPTED
    } else if execution.succeeded() {
        0
    } else if execution.results.iter().any(invalid) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}

/// Per stage of an instance: name, kind, key, state, seconds, metrics and error, for `--json`.
pub(super) fn stage_report(session: &Session, instance: usize, execution: &Execution) -> serde_json::Value {
    session.instances[instance]
        .pipeline
        .stages
        .iter()
        .zip(&session.nodes[instance])
        .map(|(stage, &node)| {
            let result = &execution.results[node];
            let error = match &result.state {
                NodeState::Failed(e) => Some(e.to_string()),
                _ => None,
            };
            json!({
                "name": stage.name,
                "kind": stage.kind,
                "key": session.graph.nodes[node].key(),
                "state": result.state.word(),
                "seconds": result.seconds,
                "metrics": result.manifest.as_ref().map(|m| &m.metrics),
                "error": error,
            })
        })
        .collect()
}
