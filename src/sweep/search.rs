//! Running an adaptive sweep (`method: tpe`), or one whose trials are
//! stopped early (`early_terminate`, see [`crate::search::asha`]): `parallel` slots each ask the
//! sweep's method for the next trial once the trials it depends on have
//! ended ([`crate::search::Method::known_before`]), run it as a session of
//! its own (shared stages are built by the first trial that needs them;
//! the others find them in the store, or wait on the key's lock), and tell
//! the method its metric. Trial `k` depends on a fixed set of earlier
//! trials, so the sequence does not depend on `parallel` or on timing; a
//! sweep run again asks the same trials and finds the finished ones in the
//! store, which rebuilds the method's state. With early stopping, each
//! trial's stages are asked after every evaluation whether to go on (a
//! trial found in the cache tells its rungs from its history). [`super::run`]
//! then gathers the asked trials with [`Searched`], which builds nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::slurm::ClusterSearch;
use crate::console::Console;
use crate::dag::{BuiltBefore, ExecOptions, Failure, Job, Launcher, NodeState, Reporter, Survey};
use crate::search::asha::Asha;
use crate::search::{History, Known};
use crate::session::{Instance, Session};
use crate::spec::{Sweep, Trial};
use crate::stage::{Cancelled, Pruned, Pruner, Registry, Verdict};
use crate::store::{Built, Lookup, Store};
use crate::tracking::record::StageRecord;
use crate::train::history::{HISTORY_FILE, History as Steps};

/// What an adaptive search did: its trials, and how each node it ran ended.
pub struct Searched {
    /// The trials asked for, in order.
    pub trials: Vec<Trial>,
    /// The nodes the trials ran, by id, those that stored no entry (failed
    /// or pruned) included (see [`ExecOptions::built_before`]).
    built: BTreeMap<String, BuiltBefore>,
}

impl Searched {
    /// The nodes the trials ran, by id.
    pub fn built(&self) -> &BTreeMap<String, BuiltBefore> {
        &self.built
    }
}

impl Launcher for Searched {
    fn launch(&self, job: &Job, _: &Store, _: &dyn Reporter, cancel: &AtomicBool) -> anyhow::Result<Built> {
        match self.built.get(&job.node.id).map(|b| &b.state) {
            Some(NodeState::Failed(Failure::Invalid(invalid))) => Err(invalid.clone().into()),
            Some(NodeState::Failed(Failure::Error(error))) => Err(anyhow::anyhow!("{error}")),
            Some(NodeState::Pruned(step)) => Err(Pruned { step: *step }.into()),
            _ if cancel.load(Ordering::SeqCst) => Err(Cancelled.into()),
            _ => anyhow::bail!("the sweep's search did not store `{}`", job.node.label),
        }
    }
}

/// The trials asked so far and what is known of them.
struct Asked {
    trials: Vec<Trial>,
    /// Per trial: `None` while it runs, else its metric (`None` inside when it has none).
    values: Vec<Option<Option<f64>>>,
    /// No more trials: the method has none, or one could not be built.
    done: bool,
    error: Option<anyhow::Error>,
}

/// How long a slot waiting for results sleeps before it looks at `cancel` again.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Asks for and runs the trials of an adaptive `sweep`, `parallel` at a
/// time with `cores / parallel` threads each (or each as a Slurm job, with
/// `cluster`), until the method has no more or `cancel` is set.
pub fn run(
    sweep: &Sweep,
    registry: &Registry,
    store: &Store,
    cores: usize,
    cluster: Option<&ClusterSearch>,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<Searched> {
    let method = sweep.search();
    let slot_threads = (cores / sweep.parallel).max(1);
    console.line(&format!(
        "sweep `{}`: {} trials of {} asked by `{}`, {} at a time with {slot_threads} thread(s) each",
        sweep.name,
        sweep.budget,
        sweep.pipeline_file.display(),
        format!("{:?}", sweep.method).to_lowercase(),
        sweep.parallel,
    ));
    let asha = sweep.asha();
    if let Some((asha, metric)) = &asha {
        console.line(&format!(
            "  stopping trials early (ASHA) on `{metric}` at steps {}, {}, {}, ...",
            asha.rung_step(0),
            asha.rung_step(1),
            asha.rung_step(2)
        ));
    }
    if sweep.method.is_adaptive() && sweep.parallel > sweep.tpe.in_flight + 1 {
        console.line(&format!(
            "  note: `parallel: {}` with `tpe: {{in_flight: {}}}`: at most {} trials run at once",
            sweep.parallel,
            sweep.tpe.in_flight,
            sweep.tpe.in_flight + 1
        ));
    }
    let asked = Mutex::new(Asked {
        trials: Vec::new(),
        values: Vec::new(),
        done: false,
        error: None,
    });
    let changed = Condvar::new();
    let built = Mutex::new(BTreeMap::new());
    let devices = sweep.leased_devices();
    std::thread::scope(|scope| {
        for slot in 0..sweep.parallel {
            // A slot keeps one GPU (several slots share one when there are fewer GPUs).
            let devices = match devices.len() {
                0 => &devices[..0],
                n => &devices[slot % n..slot % n + 1],
            };
            let (asked, changed, built, method, asha) = (&asked, &changed, &built, &method, &asha);
            scope.spawn(move || {
                loop {
                    let Some((k, trial, described)) =
                        next_trial(sweep, method.as_ref(), registry, asked, changed, cancel)
                    else {
                        return;
                    };
                    let instance = super::instance(sweep, &trial);
                    console.add_trial(&instance.name, &described);
                    let pruner = asha.as_ref().map(|(asha, metric)| TrialPruner {
                        asha,
                        metric,
                        trial: k,
                        cancel,
                    });
                    let pruner = pruner.as_ref().map(|p| p as &dyn Pruner);
                    let run = match cluster {
                        Some(cluster) => run_on_cluster(sweep, store, cluster, &trial, instance, console, cancel),
                        None => run_trial(
                            sweep,
                            registry,
                            store,
                            instance,
                            slot_threads,
                            devices,
                            pruner,
                            console,
                            cancel,
                        ),
                    };
                    if let Some((asha, metric)) = asha {
                        let stages = run.as_ref().map(|r| r.stages.as_slice()).unwrap_or_default();
                        asha.ended(k, &evaluations(stages, metric));
                    }
                    let value = run.map(|TrialRun { value, nodes, .. }| {
                        let mut built = built.lock().expect("search lock");
                        for (id, state, seconds) in nodes {
                            match state {
                                // Two trials that ran a shared stage at once: one built it.
                                NodeState::RanElsewhere => {
                                    built.entry(id).or_insert(BuiltBefore { state, seconds });
                                }
                                state => {
                                    built.insert(id, BuiltBefore { state, seconds });
                                }
                            }
                        }
                        value
                    });
                    let mut state = asked.lock().expect("search lock");
                    match value {
                        Ok(value) => state.values[k] = Some(value),
                        Err(e) => {
                            state.done = true;
                            state.error.get_or_insert(e);
                        }
                    }
                    changed.notify_all();
                }
            });
        }
    });
    let asked = asked.into_inner().expect("search lock");
    if let Some(error) = asked.error {
        return Err(error);
    }
    Ok(Searched {
        trials: asked.trials,
        built: built.into_inner().expect("search lock"),
    })
}

/// Waits until the next trial can be asked for, asks for it and returns its
/// index, the trial and its parameters in words; `None` once there are no more or `cancel` is set.
fn next_trial(
    sweep: &Sweep,
    method: &dyn crate::search::Method,
    registry: &Registry,
    asked: &Mutex<Asked>,
    changed: &Condvar,
    cancel: &AtomicBool,
) -> Option<(usize, Trial, String)> {
    let mut state = asked.lock().expect("search lock");
    loop {
        if state.done || cancel.load(Ordering::SeqCst) {
            return None;
        }
        let k = state.trials.len();
        let known = method.known_before(k);
        if state.values[..known].iter().all(Option::is_some) {
            let history = History {
                ended: state.trials[..known]
                    .iter()
                    .zip(&state.values)
                    .map(|(trial, value)| Known {
                        params: &trial.params,
                        value: value.flatten(),
                    })
                    .collect(),
                running: state.trials[known..].iter().map(|t| t.params.as_slice()).collect(),
            };
            let Some(params) = method.ask(k, &history) else {
                state.done = true;
                changed.notify_all();
                return None;
            };
            let trial = match sweep.trial(params, registry) {
                Ok(trial) => trial,
                Err(e) => {
                    state.done = true;
                    state.error = Some(e.into());
                    changed.notify_all();
                    return None;
                }
            };
            let described = super::describe(&sweep.parameters, &trial.params);
            state.trials.push(trial.clone());
            state.values.push(None);
            return Some((k, trial, described));
        }
        state = changed.wait_timeout(state, CANCEL_POLL).expect("search lock").0;
    }
}

/// What one node of a trial's run did: its id, how it ended, its seconds.
type NodeEnd = (String, NodeState, f64);

/// What one trial's run did.
struct TrialRun {
    /// Its metric, `None` when it failed, was pruned or did not report it.
    value: Option<f64>,
    /// How each node it ran ended.
    nodes: Vec<NodeEnd>,
    /// Its stages.
    stages: Vec<StageRecord>,
}

/// Trial `trial`'s stages asking the sweep's rungs whether to go on.
struct TrialPruner<'a> {
    asha: &'a Asha,
    metric: &'a str,
    trial: usize,
    cancel: &'a AtomicBool,
}

impl Pruner for TrialPruner<'_> {
    fn evaluated(&self, step: usize, metrics: &BTreeMap<String, f64>, last: bool) -> Verdict {
        match metrics.get(self.metric) {
            Some(&value) => self.asha.evaluated(self.trial, step, value, last, self.cancel),
            None => Verdict::Continue,
        }
    }
}

/// The `(step, value)` evaluations of `metric` in the step histories of a
/// trial's stages (a pruned stage's history is in its saved state).
fn evaluations(stages: &[StageRecord], metric: &str) -> Vec<(usize, f64)> {
    let mut found = Vec::new();
    for dir in stages.iter().filter_map(|s| s.out_dir.as_ref()) {
        if let Ok(history) = Steps::read_csv(&dir.join(HISTORY_FILE)) {
            found.extend(
                history
                    .rows
                    .iter()
                    .filter_map(|r| r.values.get(metric).map(|&v| (r.step, v))),
            );
        }
    }
    found
}

/// Runs one trial as a session of its own, its stages asking `pruner`
/// whether to go on after each evaluation.
#[allow(clippy::too_many_arguments)]
fn run_trial(
    sweep: &Sweep,
    registry: &Registry,
    store: &Store,
    instance: Instance,
    threads: usize,
    devices: &[String],
    pruner: Option<&dyn Pruner>,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<TrialRun> {
    let session = Session::new(vec![instance], store)?;
    let exec = ExecOptions {
        devices,
        pruner,
        ..ExecOptions::with_jobs(threads)
    };
    let (execution, results) = session.execute(registry, store, &exec, console, cancel, None);
    let result = &results[0];
    let value = result
        .ending
        .succeeded()
        .then(|| result.metrics.get(&sweep.metric.name).copied())
        .flatten()
        .filter(|v| v.is_finite());
    let nodes = session
        .graph
        .nodes
        .iter()
        .zip(execution.results)
        .map(|(node, result)| (node.id.clone(), result.state, result.seconds))
        .filter(|(_, state, _)| !matches!(state, NodeState::Cached | NodeState::Skipped | NodeState::Interrupted))
        .collect();
    let stages = results.into_iter().next().map(|r| r.stages).unwrap_or_default();
    Ok(TrialRun { value, nodes, stages })
}

/// Runs one trial as a Slurm job (what of it the store holds, it finds
/// there); a stage still missing afterwards failed in the task, whose log says why.
fn run_on_cluster(
    sweep: &Sweep,
    store: &Store,
    cluster: &ClusterSearch,
    trial: &Trial,
    instance: Instance,
    console: &Console,
    cancel: &AtomicBool,
) -> anyhow::Result<TrialRun> {
    let session = Session::new(vec![instance], store)?;
    let complete = |session: &Session| -> Vec<bool> {
        let surveys = session.graph.survey(store);
        surveys
            .iter()
            .map(|s| matches!(s, Survey::Known(Lookup::Valid(_))))
            .collect()
    };
    let before = complete(&session);
    let nodes = if before.iter().all(|&c| c) {
        console.trial_state(&trial.label(), "cached");
        Vec::new()
    } else {
        let tasks = cluster.run(trial, console, cancel, &|| complete(&session).iter().all(|&c| c))?;
        let after = complete(&session);
        let interrupted = cancel.load(Ordering::SeqCst);
        session
            .graph
            .nodes
            .iter()
            .enumerate()
            .filter(|&(n, _)| !before[n] && (after[n] || !interrupted))
            .map(|(n, node)| {
                let state = match after[n] {
                    true => NodeState::RanElsewhere,
                    false => NodeState::Failed(Failure::Error(tasks.why_missing(&node.label))),
                };
                (node.id.clone(), state, 0.0)
            })
            .collect()
    };
    let value = stored_value(sweep, trial, store)?.flatten();
    Ok(TrialRun {
        value,
        nodes,
        stages: Vec::new(),
    })
}

/// The trials of an adaptive `sweep` that what `store` holds determines:
/// asked in order for as long as the trials each depends on are complete
/// there (what a run would ask for again), without running anything. A
/// `grid` or `random` sweep keeps the trials it was loaded with.
pub fn replay(sweep: &mut Sweep, registry: &Registry, store: &Store) -> anyhow::Result<()> {
    if !sweep.method.is_adaptive() {
        return Ok(());
    }
    let method = sweep.search();
    let mut trials: Vec<Trial> = Vec::new();
    let mut values: Vec<Option<Option<f64>>> = Vec::new();
    loop {
        let k = trials.len();
        let known = method.known_before(k);
        if values[..known].iter().any(Option::is_none) {
            break;
        }
        let history = History {
            ended: trials[..known]
                .iter()
                .zip(&values)
                .map(|(trial, value)| Known {
                    params: &trial.params,
                    value: value.flatten(),
                })
                .collect(),
            running: trials[known..].iter().map(|t| t.params.as_slice()).collect(),
        };
        let Some(params) = method.ask(k, &history) else {
            break;
        };
        let trial = sweep.trial(params, registry)?;
        values.push(stored_value(sweep, &trial, store)?);
        trials.push(trial);
    }
    sweep.trials = trials;
    Ok(())
}

/// The metric of a trial whose stages are all in `store` (`Some(None)`
/// when it has none, or was pruned); `None` when one is missing.
fn stored_value(sweep: &Sweep, trial: &Trial, store: &Store) -> anyhow::Result<Option<Option<f64>>> {
    let session = Session::new(vec![super::instance(sweep, trial)], store)?;
    let surveys = session.graph.survey(store);
    // In stage order, as a run reports them: a later stage wins a name.
    let mut metrics = BTreeMap::new();
    for &n in &session.nodes[0] {
        match &surveys[n] {
            Survey::Known(Lookup::Valid(manifest)) => metrics.extend(manifest.metrics.clone()),
            // Pruned before (its saved state holds its history): a trial without a value.
            Survey::Known(Lookup::Missing)
                if session.graph.nodes[n].key().is_some_and(|key| {
                    let kind = session.graph.nodes[n].kind();
                    store.state_dir(kind, key).join(HISTORY_FILE).is_file()
                }) =>
            {
                return Ok(Some(None));
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(metrics.get(&sweep.metric.name).copied().filter(|v| v.is_finite())))
}
