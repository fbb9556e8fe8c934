//! Schedules a [`Graph`]: cached nodes are reused, the rest are handed to a
//! [`Launcher`] concurrently, in topological order, within a CPU budget and
//! the devices to lease. A node's key is completed when the nodes it needs
//! have ended (their outputs are part of it), and looked up then: a stage
//! after one that re-ran and wrote the same bytes is cached.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::graph::{Graph, GraphNode};
use super::launcher::{InProcess, Job, Launcher};
use crate::stage::{Cancelled, Invalid, Progress, Pruned, Pruner, Registry, StageInput};
use crate::store::{Built, Lease, Lookup, Manifest, Store};

/// How a node ended.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeState {
    /// Its entry was already in the store.
    Cached,
    /// It ran and its entry was stored.
    Ran,
    /// Another process computed it while this one waited for the key's lock.
    RanElsewhere,
    /// It failed.
    Failed(Failure),
    /// Its sweep's early stopping stopped it after the evaluation at this
    /// step: no entry, its state saved to go on later (see [`Pruned`]).
    Pruned(usize),
    /// A stage it needs failed or was interrupted.
    Skipped,
    /// The run was interrupted before or while it ran.
    Interrupted,
}

/// Why a stage failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A config value does not fit the stage's input (the user's to fix).
    Invalid(Invalid),
    /// Any other error, with its causes.
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invalid(invalid) => invalid.fmt(f),
            Failure::Error(error) => f.write_str(error),
        }
    }
}

impl NodeState {
    /// True when the node's entry is available.
    pub fn succeeded(&self) -> bool {
        matches!(self, NodeState::Cached | NodeState::Ran | NodeState::RanElsewhere)
    }

    /// A short word for tables and JSON.
    pub fn word(&self) -> &'static str {
        match self {
            NodeState::Cached => "cached",
            NodeState::Ran => "ran",
            NodeState::RanElsewhere => "ran-elsewhere",
            NodeState::Failed(_) => "failed",
            NodeState::Pruned(_) => "pruned",
            NodeState::Skipped => "skipped",
            NodeState::Interrupted => "interrupted",
        }
    }
}

/// The outcome of one node.
#[derive(Debug, Clone)]
pub struct NodeResult {
    /// How it ended.
    pub state: NodeState,
    /// Its manifest, when it succeeded.
    pub manifest: Option<Manifest>,
    /// Its output directory, when it succeeded.
    pub out_dir: Option<PathBuf>,
    /// Seconds spent running it (0 when cached).
    pub seconds: f64,
}

impl NodeResult {
    /// A node that ended without an entry (failed, skipped or interrupted).
    fn without_entry(state: NodeState, seconds: f64) -> NodeResult {
        NodeResult {
            state,
            manifest: None,
            out_dir: None,
            seconds,
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Execution {
    /// One result per graph node.
    pub results: Vec<NodeResult>,
    /// Whether the run was interrupted.
    pub interrupted: bool,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Execution {
    /// True when every node succeeded.
    pub fn succeeded(&self) -> bool {
        self.results.iter().all(|r| r.state.succeeded())
    }
}

/// Options of [`execute`].
#[derive(Clone, Copy)]
pub struct ExecOptions<'a> {
    /// CPU threads the running stages may use together.
    pub jobs: usize,
    /// Nodes to recompute even when cached (`pipeline verify`); `None` = none.
    pub recompute: Option<&'a [bool]>,
    /// A second store to take cached entries from (read-only).
    pub fallback: Option<&'a Store>,
    /// GPUs (`cuda:N`) that stages using a device lease, one whole device
    /// each, for as long as they run; such a stage waits for a free one.
    /// Empty: every stage runs on its pipeline's device.
    pub devices: &'a [String],
    /// The lease that pins the run's entries: keys completed during the run
    /// are added to it before they are looked up.
    pub lease: Option<&'a Lease>,
    /// What builds the nodes that run; `None`: [`InProcess`] over the
    /// registry given to [`execute`].
    pub launcher: Option<&'a dyn Launcher>,
    /// Nodes built for this run before it executed (by a cluster's tasks,
    /// or by an adaptive sweep's trials), by id: found in the store, they
    /// end as they ended then, not [`NodeState::Cached`]. `None`: none.
    pub built_before: Option<&'a BTreeMap<String, BuiltBefore>>,
    /// Asked after each evaluation of a running stage whether it goes on
    /// (a sweep trial's early stopping); `None`: stages run to their end.
    pub pruner: Option<&'a dyn Pruner>,
}

/// How a node built before the run ended (see [`ExecOptions::built_before`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltBefore {
    /// [`NodeState::Ran`], or [`NodeState::RanElsewhere`] for another
    /// process; or, for a node that stored no entry then, how it ended
    /// ([`NodeState::Failed`], [`NodeState::Pruned`]): the run's launcher
    /// reports that again and the seconds are these.
    pub state: NodeState,
    /// Seconds it ran (0 when not known).
    pub seconds: f64,
}

impl ExecOptions<'_> {
    /// Plain runs: `jobs` threads, cached entries reused, no fallback store.
    pub fn with_jobs(jobs: usize) -> Self {
        ExecOptions {
            jobs,
            recompute: None,
            fallback: None,
            devices: &[],
            lease: None,
            launcher: None,
            built_before: None,
            pruner: None,
        }
    }
}

/// Receives what the executor does, to show progress.
pub trait Reporter: Sync {
    /// A node's entry was found in the store.
    fn cached(&self, node: &GraphNode);
    /// A node's entry was damaged and will be recomputed.
    fn damaged(&self, node: &GraphNode, why: &str);
    /// A node started; the returned handle receives the stage's progress.
    fn started<'a>(&'a self, node: &'a GraphNode) -> Box<dyn Progress + 'a>;
    /// A node waits for another process that computes the same key.
    fn waiting(&self, node: &GraphNode);
    /// A node ended.
    fn finished(&self, node: &GraphNode, state: &NodeState, seconds: f64);
}

/// Runs every node of `graph` that is not cached, stopping dependents of
/// failed nodes and starting nothing new once `cancel` is set.
pub fn execute(
    graph: &Graph,
    registry: &Registry,
    store: &Store,
    options: &ExecOptions,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
) -> Execution {
    let clock = Instant::now();
    let in_process = InProcess { registry };
    let launcher = options.launcher.unwrap_or(&in_process);
    let count = graph.nodes.len();
    let mut results: Vec<Option<NodeResult>> = vec![None; count];
    let jobs = options.jobs.max(1);
    // Nodes looked up in the store (once each, when the nodes they need have ended).
    let mut looked_up = vec![false; count];
    let mut launched = vec![false; count];
    let mut threads_in_use = 0;
    let mut active = 0;
    // Which node holds each device of `options.devices`.
    let mut leases: Vec<Option<usize>> = vec![None; options.devices.len()];
    let (done_tx, done_rx) = mpsc::channel::<(usize, anyhow::Result<Built>, f64)>();
    std::thread::scope(|scope| {
        loop {
            for i in 0..count {
                if results[i].is_some() || launched[i] {
                    continue;
                }
                let node = &graph.nodes[i];
                let dep_states: Vec<Option<&NodeState>> = node
                    .deps
                    .iter()
                    .map(|&d| results[d].as_ref().map(|r| &r.state))
                    .collect();
                if dep_states.iter().any(|s| s.is_some_and(|s| !s.succeeded())) {
                    let state = NodeState::Skipped;
                    reporter.finished(node, &state, 0.0);
                    results[i] = Some(NodeResult::without_entry(state, 0.0));
                    continue;
                }
                if dep_states.iter().any(Option::is_none) {
                    continue;
                }
                if !looked_up[i] {
                    looked_up[i] = true;
                    let outputs = node.deps.iter().map(|&d| {
                        let manifest = results[d].as_ref().and_then(|r| r.manifest.as_ref());
                        manifest.expect("succeeded deps have manifests").output_digest()
                    });
                    let key = node.resolve(outputs);
                    tracing::debug!(stage = %node.label, key, material = ?node.material(), "planned");
                    if !options.recompute.is_some_and(|r| r[i]) {
                        if let Some(lease) = options.lease
                            && let Err(e) = lease.pin(key)
                        {
                            let state = NodeState::Failed(Failure::Error(format!("cannot pin its entry: {e:#}")));
                            reporter.finished(node, &state, 0.0);
                            results[i] = Some(NodeResult::without_entry(state, 0.0));
                            continue;
                        }
                        if let Some(mut found) = find_cached(node, key, store, options.fallback, reporter) {
                            if let Some(before) = options.built_before.and_then(|b| b.get(&node.id)) {
                                found.state = before.state.clone();
                                found.seconds = before.seconds;
                                reporter.finished(node, &found.state, found.seconds);
                            } else {
                                reporter.cached(node);
                            }
                            results[i] = Some(found);
                            continue;
                        }
                    }
                }
                if cancel.load(Ordering::SeqCst) {
                    continue;
                }
                let threads = node.threads.min(jobs);
                if active > 0 && threads_in_use + threads > jobs {
                    continue;
                }
                let leases_device = node.material().device.is_some() && !leases.is_empty();
                let device = if leases_device {
                    let Some(free) = leases.iter().position(Option::is_none) else {
                        continue;
                    };
                    leases[free] = Some(i);
                    options.devices[free].as_str()
                } else {
                    node.device.as_str()
                };
                let inputs: Vec<StageInput> = node
                    .material()
                    .needs
                    .iter()
                    .zip(&node.deps)
                    .map(|(need, &d)| StageInput {
                        name: need.stage.clone(),
                        kind: graph.nodes[d].kind().to_string(),
                        outputs: registry.get(graph.nodes[d].kind()).map_or(&[], |kind| kind.outputs()),
                        dir: results[d]
                            .as_ref()
                            .and_then(|r| r.out_dir.clone())
                            .expect("succeeded deps have outputs"),
                    })
                    .collect();
                tracing::debug!(stage = %node.label, threads, device, "starting");
                launched[i] = true;
                active += 1;
                threads_in_use += threads;
                let done_tx = done_tx.clone();
                scope.spawn(move || {
                    let start = Instant::now();
                    let job = Job {
                        node,
                        inputs: &inputs,
                        threads,
                        device,
                        pruner: options.pruner,
                    };
                    let result = launcher.launch(&job, store, reporter, cancel);
                    let _ = done_tx.send((i, result, start.elapsed().as_secs_f64()));
                });
            }
            if active == 0 {
                break;
            }
            let (i, result, seconds) = done_rx.recv().expect("workers report before exiting");
            active -= 1;
            threads_in_use -= graph.nodes[i].threads.min(jobs);
            if let Some(lease) = leases.iter_mut().find(|l| **l == Some(i)) {
                *lease = None;
            }
            let node = &graph.nodes[i];
            // A node that ended before without an entry (failed, pruned) ran for as long as it did then.
            let seconds = match (&result, options.built_before.and_then(|b| b.get(&node.id))) {
                (Err(_), Some(before)) => before.seconds,
                _ => seconds,
            };
            let done = match result {
                Ok(built) => NodeResult {
                    state: if built.by_other_process {
                        NodeState::RanElsewhere
                    } else {
                        NodeState::Ran
                    },
                    out_dir: Some(store.out_dir(node.kind(), &built.manifest.key)),
                    manifest: Some(built.manifest),
                    seconds,
                },
                Err(err) if err.downcast_ref::<Pruned>().is_some() => {
                    let step = err.downcast_ref::<Pruned>().expect("checked").step;
                    NodeResult::without_entry(NodeState::Pruned(step), seconds)
                }
                Err(err) => {
                    let state = if err.downcast_ref::<Cancelled>().is_some() || cancel.load(Ordering::SeqCst) {
                        NodeState::Interrupted
                    } else {
                        NodeState::Failed(match err.downcast_ref::<Invalid>() {
                            Some(invalid) => Failure::Invalid(invalid.clone()),
                            None => Failure::Error(format!("{err:#}")),
                        })
                    };
                    NodeResult::without_entry(state, seconds)
                }
            };
            reporter.finished(node, &done.state, seconds);
            results[i] = Some(done);
        }
    });
    let results: Vec<NodeResult> = results
        .into_iter()
        .map(|r| r.unwrap_or(NodeResult::without_entry(NodeState::Interrupted, 0.0)))
        .collect();
    Execution {
        results,
        interrupted: cancel.load(Ordering::SeqCst),
        elapsed: clock.elapsed(),
    }
}

/// The node's valid entry in the store or the fallback store, if any.
fn find_cached(
    node: &GraphNode,
    key: &str,
    store: &Store,
    fallback: Option<&Store>,
    reporter: &dyn Reporter,
) -> Option<NodeResult> {
    for candidate in std::iter::once(store).chain(fallback) {
        match candidate.lookup(node.kind(), key) {
            Lookup::Valid(manifest) => {
                return Some(NodeResult {
                    state: NodeState::Cached,
                    manifest: Some(Arc::unwrap_or_clone(manifest)),
                    out_dir: Some(candidate.out_dir(node.kind(), key)),
                    seconds: 0.0,
                });
            }
            Lookup::Corrupt(why) => reporter.damaged(node, &why),
            Lookup::Missing => {}
        }
    }
    None
}
