//! One `pipeline run`: pipeline instances (a pipeline, or the trials of a
//! sweep) executed as one graph, in which equal stages are one node. When
//! tracking is on, each instance becomes an MLflow run: created when its
//! first own stage starts, completed as soon as its last stage ends.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::console::Console;
use crate::dag::{ExecOptions, Execution, Graph, GraphNode, NodeState, Reporter, execute};
use crate::spec::Pipeline;
use crate::stage::{Progress, Registry};
use crate::store::{Lease, LockFile, LockedStage, Lookup, Manifest, Store};
use crate::tracking::record::{self, StageRecord};
use crate::tracking::{LiveMetrics, RunHandle, RunStatus, Tracker};

/// A pipeline instance of the session.
#[derive(Debug)]
pub struct Instance {
    /// Its run name (the pipeline's name, or `trial-<id>`).
    pub name: String,
    /// Prefix of its stage labels when the session has several instances.
    pub label: Option<String>,
    /// The pipeline, overrides applied.
    pub pipeline: Pipeline,
    /// Extra tags of its run (e.g. the trial id).
    pub tags: Vec<(String, String)>,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Every stage came from the cache.
    Cached,
    /// Every stage succeeded, some ran.
    Succeeded,
    /// A stage failed (its error).
    Failed(String),
    /// The sweep's early stopping stopped a stage after its evaluation at
    /// this step (the trial's metrics are that evaluation's).
    Pruned(usize),
    /// The run was interrupted first.
    Interrupted,
}

impl Ending {
    /// A short word for tables and JSON.
    pub fn word(&self) -> &'static str {
        match self {
            Ending::Cached => "cached",
            Ending::Succeeded => "finished",
            Ending::Failed(_) => "failed",
            Ending::Pruned(_) => "pruned",
            Ending::Interrupted => "interrupted",
        }
    }

    /// [`Ending::word`], with the step for a pruned one (`pruned@30`): a table's status cell.
    pub fn status(&self) -> String {
        match self {
            Ending::Pruned(step) => format!("pruned@{step}"),
            other => other.word().to_string(),
        }
    }

    /// True when the instance's outputs are all available.
    pub fn succeeded(&self) -> bool {
        matches!(self, Ending::Cached | Ending::Succeeded)
    }
}

/// The result of one instance.
#[derive(Debug, Clone)]
pub struct InstanceResult {
    /// How it ended.
    pub ending: Ending,
    /// Seconds its own stages ran (stages shared with other instances not counted).
    pub seconds: f64,
    /// Every stage's headline metrics (a later stage wins a name).
    pub metrics: BTreeMap<String, f64>,
    /// Its stages, in pipeline order.
    pub stages: Vec<StageRecord>,
}

/// Where and how instances are tracked.
pub struct Tracking<'a> {
    /// The tracker.
    pub tracker: &'a Tracker,
    /// The run the instances' runs nest under (a sweep's).
    pub parent: Option<RunHandle>,
    /// Git tags of the checkout.
    pub git: Vec<(String, String)>,
}

/// Instances and their graph.
pub struct Session {
    /// The merged graph.
    pub graph: Graph,
    /// The instances.
    pub instances: Vec<Instance>,
    /// Per instance, the node of each of its stages.
    pub nodes: Vec<Vec<usize>>,
    /// Per node, the instances that use it.
    pub owners: Vec<Vec<usize>>,
    /// Pins the graph's entries in the store for as long as the session lives.
    lease: Lease,
}

impl Session {
    /// Builds the graph of all instances; stages with equal recipes merge.
    pub fn new(instances: Vec<Instance>, store: &Store) -> anyhow::Result<Session> {
        let mut graph = Graph::new();
        let mut nodes = Vec::with_capacity(instances.len());
        for instance in &instances {
            nodes.push(graph.add_pipeline(&instance.pipeline, instance.label.as_deref(), store.stat_cache())?);
        }
        let mut owners = vec![Vec::new(); graph.nodes.len()];
        for (i, list) in nodes.iter().enumerate() {
            for &n in list {
                if !owners[n].contains(&i) {
                    owners[n].push(i);
                }
            }
        }
        for (n, users) in owners.iter().enumerate() {
            // A stage shared by several instances is shown by its own name.
            if users.len() > 1
                && let Some((_, stage)) = graph.nodes[n].label.split_once('/')
            {
                graph.nodes[n].label = stage.to_string();
            }
        }
        // The keys the store resolves now (every stage cached so far and the
        // first ones after them) join the lease at once; keys after stages
        // that have not run yet join as the executor completes them.
        let lease = store.lease_found(|store| {
            graph.survey(store);
            graph
                .nodes
                .iter()
                .filter_map(|node| node.key().map(str::to_string))
                .collect()
        })?;
        Ok(Session {
            graph,
            instances,
            nodes,
            owners,
            lease,
        })
    }

    /// True when only one instance uses the node.
    pub fn is_own(&self, node: usize) -> bool {
        self.owners[node].len() == 1
    }

    /// Runs the graph; every instance gets its result (and its run, when tracked).
    pub fn execute(
        &self,
        registry: &Registry,
        store: &Store,
        options: &ExecOptions,
        console: &Console,
        cancel: &AtomicBool,
        tracking: Option<&Tracking>,
    ) -> (Execution, Vec<InstanceResult>) {
        let live = Live {
            session: self,
            console,
            store,
            registry,
            tracking,
            state: Mutex::new(LiveState {
                ended: vec![None; self.graph.nodes.len()],
                runs: vec![None; self.instances.len()],
                streamed: vec![Vec::new(); self.instances.len()],
                results: vec![None; self.instances.len()],
            }),
        };
        let options = ExecOptions {
            lease: Some(&self.lease),
            ..*options
        };
        let execution = execute(&self.graph, registry, store, &options, &live, cancel);
        let mut state = live.state.into_inner().expect("session lock");
        for (n, result) in execution.results.iter().enumerate() {
            if state.ended[n].is_none() {
                state.ended[n] = Some((result.state.clone(), result.seconds));
            }
        }
        for i in 0..self.instances.len() {
            if state.results[i].is_none() {
                let result = finalize(self, i, &mut state, store, registry, tracking);
                state.results[i] = Some(result);
            }
        }
        let results = state
            .results
            .into_iter()
            .map(|r| r.expect("every instance ended"))
            .collect();
        (execution, results)
    }

    /// The lock file of an instance whose stages all succeeded.
    pub fn lock_file(&self, instance: usize, execution: &Execution) -> Option<LockFile> {
        lock_file(self, instance, |n| {
            execution.results[n]
                .manifest
                .as_ref()
                .map(|m| (m.files.clone(), m.metrics.clone()))
        })
    }
}

type Outputs = (BTreeMap<String, crate::store::FileDigest>, BTreeMap<String, f64>);

fn lock_file(session: &Session, instance: usize, outputs: impl Fn(usize) -> Option<Outputs>) -> Option<LockFile> {
    let pipeline = &session.instances[instance].pipeline;
    let mut stages = indexmap::IndexMap::new();
    for (stage, &n) in pipeline.stages.iter().zip(&session.nodes[instance]) {
        let (files, metrics) = outputs(n)?;
        let node = &session.graph.nodes[n];
        stages.insert(
            stage.name.clone(),
            LockedStage {
                key: node.key()?.to_string(),
                material: node.material().clone(),
                outputs: files,
                metrics,
            },
        );
    }
    Some(LockFile {
        pipeline: pipeline.name.clone(),
        stages,
    })
}

struct LiveState {
    /// Per node: how it ended and its seconds.
    ended: Vec<Option<(NodeState, f64)>>,
    /// Per instance: its run, once started.
    runs: Vec<Option<RunHandle>>,
    /// Per instance: the nodes that sent their step metrics to its run as they ran.
    streamed: Vec<Vec<usize>>,
    /// Per instance: its result, once complete.
    results: Vec<Option<InstanceResult>>,
}

/// The reporter of a session: the console, plus runs that follow the instances.
struct Live<'a> {
    session: &'a Session,
    console: &'a Console,
    store: &'a Store,
    registry: &'a Registry,
    tracking: Option<&'a Tracking<'a>>,
    state: Mutex<LiveState>,
}

impl Live<'_> {
    fn index(&self, node: &GraphNode) -> usize {
        self.session.graph.index_of(&node.id).expect("the node is in the graph")
    }

    fn ended(&self, n: usize, state: NodeState, seconds: f64) {
        let mut live = self.state.lock().expect("session lock");
        live.ended[n] = Some((state, seconds));
        for &i in &self.session.owners[n] {
            let complete = self.session.nodes[i].iter().all(|&m| live.ended[m].is_some());
            if complete && live.results[i].is_none() {
                let result = finalize(self.session, i, &mut live, self.store, self.registry, self.tracking);
                live.results[i] = Some(result);
            }
        }
    }
}

impl Reporter for Live<'_> {
    fn cached(&self, node: &GraphNode) {
        self.console.cached(node);
        self.ended(self.index(node), NodeState::Cached, 0.0);
    }

    fn damaged(&self, node: &GraphNode, why: &str) {
        self.console.damaged(node, why);
    }

    fn started<'b>(&'b self, node: &'b GraphNode) -> Box<dyn Progress + 'b> {
        let Some(tracking) = self.tracking else {
            return self.console.started(node);
        };
        let n = self.index(node);
        let mut runs = Vec::new();
        {
            let mut live = self.state.lock().expect("session lock");
            for &i in &self.session.owners[n] {
                if live.runs[i].is_none() && self.session.is_own(n) {
                    live.runs[i] = Some(start_run(&self.session.instances[i], tracking));
                }
                if let Some(run) = live.runs[i] {
                    runs.push(run);
                    live.streamed[i].push(n);
                }
            }
        }
        let progress = self.console.started(node);
        if runs.is_empty() {
            return progress;
        }
        Box::new(LiveMetrics::new(progress, tracking.tracker, runs))
    }

    fn waiting(&self, node: &GraphNode) {
        self.console.waiting(node);
    }

    fn finished(&self, node: &GraphNode, state: &NodeState, seconds: f64) {
        self.console.finished(node, state, seconds);
        self.ended(self.index(node), state.clone(), seconds);
    }
}

fn start_run(instance: &Instance, tracking: &Tracking) -> RunHandle {
    let mut tags = record::start_tags(&instance.pipeline, &tracking.git);
    tags.extend(instance.tags.iter().cloned());
    tracking.tracker.start_run(&instance.name, tags, tracking.parent)
}

/// The result of a complete instance; logs and ends its run when tracked.
fn finalize(
    session: &Session,
    i: usize,
    live: &mut LiveState,
    store: &Store,
    registry: &Registry,
    tracking: Option<&Tracking>,
) -> InstanceResult {
    let instance = &session.instances[i];
    let mut stages = Vec::new();
    let mut seconds = 0.0;
    let mut metrics = BTreeMap::new();
    let mut error = None;
    let mut interrupted = false;
    let mut pruned = None;
    let mut manifests = Vec::new();
    for (stage, &n) in instance.pipeline.stages.iter().zip(&session.nodes[i]) {
        let node = &session.graph.nodes[n];
        let (state, node_seconds) = live.ended[n].clone().unwrap_or((NodeState::Interrupted, 0.0));
        if session.is_own(n) {
            seconds += node_seconds;
        }
        let lookup = state
            .succeeded()
            .then(|| node.key().map(|key| store.lookup(node.kind(), key)));
        let manifest = match lookup.flatten() {
            Some(Lookup::Valid(manifest)) => Some(manifest),
            _ => None,
        };
        match &state {
            NodeState::Failed(e) if error.is_none() => error = Some(format!("stage `{}`: {e}", stage.name)),
            NodeState::Interrupted => interrupted = true,
            NodeState::Pruned(step) => pruned = Some(*step),
            _ => {}
        }
        // A pruned stage's outputs are its saved state: the history up to the step it stopped at.
        let state_dir = match (&state, node.key()) {
            (NodeState::Pruned(_), Some(key)) => Some(store.state_dir(node.kind(), key)),
            _ => None,
        };
        let stage_metrics = match (&manifest, &state_dir) {
            (Some(manifest), _) => manifest.metrics.clone(),
            (None, Some(dir)) => last_evaluation(dir),
            (None, None) => BTreeMap::new(),
        };
        metrics.extend(stage_metrics.clone());
        stages.push(StageRecord {
            name: stage.name.clone(),
            kind: node.kind().to_string(),
            key: node.key().unwrap_or_default().to_string(),
            // Only a stage that ran here reported its steps (not one another process computed).
            streamed: state == NodeState::Ran && live.streamed[i].contains(&n),
            state,
            out_dir: manifest
                .as_ref()
                .map(|m| store.out_dir(node.kind(), &m.key))
                .or(state_dir),
            metrics: stage_metrics,
        });
        manifests.push(manifest);
    }
    let ending = match (error, interrupted) {
        (Some(e), _) => Ending::Failed(e),
        (None, true) => Ending::Interrupted,
        (None, false) if let Some(step) = pruned => Ending::Pruned(step),
        (None, false) if stages.iter().any(|s| s.out_dir.is_none()) => {
            Ending::Failed("a stage it needs did not succeed".into())
        }
        (None, false) if stages.iter().all(|s| s.state == NodeState::Cached) => Ending::Cached,
        (None, false) => Ending::Succeeded,
    };
    let result = InstanceResult {
        ending,
        seconds,
        metrics,
        stages,
    };
    if let Some(tracking) = tracking {
        let run = *live.runs[i].get_or_insert_with(|| start_run(instance, tracking));
        log_run(session, i, run, &result, &manifests, registry, tracking);
    }
    result
}

/// The metrics of the last evaluation in the history a pruned stage saved
/// in `dir` (empty when it has none).
fn last_evaluation(dir: &std::path::Path) -> BTreeMap<String, f64> {
    let history = crate::train::history::History::read_csv(&dir.join(crate::train::history::HISTORY_FILE));
    let rows = history.map(|h| h.rows).unwrap_or_default();
    rows.iter()
        .rev()
        .find(|row| row.values.keys().any(|k| k.starts_with("eval_")))
        .map(|row| {
            row.values
                .iter()
                .filter(|(k, _)| k.starts_with("eval_"))
                .map(|(k, &v)| (k.clone(), v))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends an instance's params, metrics, tags and artifacts, and ends its
/// run; `manifests` are its stages' entries (in stage order) when they succeeded.
fn log_run(
    session: &Session,
    i: usize,
    run: RunHandle,
    result: &InstanceResult,
    manifests: &[Option<Arc<Manifest>>],
    registry: &Registry,
    tracking: &Tracking,
) {
    let tracker = tracking.tracker;
    let metrics = record::metrics(&result.stages).unwrap_or_else(|e| {
        eprintln!("warning: cannot read the step history: {e:#}");
        Vec::new()
    });
    let error = match &result.ending {
        Ending::Failed(e) => Some(e.as_str()),
        Ending::Interrupted => Some("interrupted (Ctrl-C or SIGTERM) before it finished"),
        _ => None,
    };
    tracker.log(
        run,
        &metrics,
        record::params(&session.instances[i].pipeline),
        record::end_tags(&result.stages, error),
    );
    for (file, dest) in record::artifacts(registry, &result.stages) {
        tracker.upload(run, &file, &dest);
    }
    let outputs = |n: usize| {
        let stage = session.nodes[i].iter().position(|&m| m == n)?;
        let manifest = manifests[stage].as_ref()?;
        Some((manifest.files.clone(), manifest.metrics.clone()))
    };
    if let Some(lock) = lock_file(session, i, outputs) {
        let path = std::env::temp_dir().join(format!(
            "pipeline-{}-{}.lock",
            std::process::id(),
            session.instances[i].name
        ));
        if std::fs::write(&path, serde_yaml::to_string(&lock).unwrap_or_default()).is_ok() {
            tracker.upload(run, &path, "pipeline.lock");
            let _ = std::fs::remove_file(&path);
        }
    }
    let status = match result.ending {
        Ending::Cached | Ending::Succeeded => RunStatus::Finished,
        // Stopped by the sweep, not by an error (its stage's state tag says `pruned`).
        Ending::Pruned(_) => RunStatus::Killed,
        Ending::Failed(_) | Ending::Interrupted => RunStatus::Failed,
    };
    tracker.finish(run, status);
}
