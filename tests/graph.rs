//! The graph merges equal stages of several pipeline instances, as sweeps need.

mod common;

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use common::{SEVEN_STAGES, Workspace};
use pipeline::console::Console;
use pipeline::dag::{ExecOptions, Execution, Graph, InProcess, Job, Launcher, NodeState, Reporter, execute};
use pipeline::spec::Pipeline;
use pipeline::stage::Registry;
use pipeline::store::{Built, Store};

/// Executes `graph` quietly, never cancelled.
fn run(graph: &Graph, registry: &Registry, store: &Store, options: &ExecOptions) -> Execution {
    execute(
        graph,
        registry,
        store,
        options,
        &Console::new(true),
        &AtomicBool::new(false),
    )
}

#[test]
fn instances_with_different_overrides_share_their_common_stages() {
    let ws = Workspace::new();
    let file = ws.write("p.yaml", SEVEN_STAGES);
    let registry = common::kinds::registry();
    let store = Store::open(&ws.store());
    let mut graph = Graph::new();
    let mut instances = Vec::new();
    for (i, text) in ["F1", "F2", "F3"].iter().enumerate() {
        let pipeline = Pipeline::load(&file, &[format!("stages.f.text={text}")], &registry).unwrap();
        let label = format!("trial-{i}");
        instances.push(graph.add_pipeline(&pipeline, Some(&label), store.stat_cache()).unwrap());
    }
    // a..e are shared; f and g exist once per instance.
    assert_eq!(graph.nodes.len(), 5 + 3 * 2);
    assert_eq!(instances[0][..5], instances[2][..5]);
    assert_ne!(instances[0][5], instances[1][5]);
    assert_eq!(graph.nodes[instances[1][6]].label, "trial-1/g");
    let options = ExecOptions::with_jobs(2);
    let execution = run(&graph, &registry, &store, &options);
    assert!(execution.results.iter().all(|r| r.state == NodeState::Ran));
    assert_eq!(store.entries().unwrap().len(), 11, "each shared stage is stored once");
}

#[test]
fn stages_on_a_device_lease_one_gpu_each_and_wait_for_a_free_one() {
    let ws = Workspace::new();
    let stages: String = (1..=5)
        .map(|i| format!("  s{i}: {{kind: step, text: S{i}, on_device: true, sleep_ms: 150, needs: []}}\n"))
        .collect();
    let file = ws.write(
        "p.yaml",
        &format!("name: gpus\nseed: 1\ndevice: cuda:0\nstages:\n{stages}"),
    );
    let registry = common::kinds::registry();
    let store = Store::open(&ws.store());
    let mut graph = Graph::new();
    let pipeline = Pipeline::load(&file, &[], &registry).unwrap();
    let nodes = graph.add_pipeline(&pipeline, None, store.stat_cache()).unwrap();
    let devices = ["cuda:0".to_string(), "cuda:1".to_string()];
    let options = ExecOptions {
        devices: &devices,
        ..ExecOptions::with_jobs(4)
    };
    let execution = run(&graph, &registry, &store, &options);
    assert!(execution.succeeded());
    // Each output ends with ` on DEVICE FROM..TO`.
    let mut spans: Vec<(String, u128, u128)> = nodes
        .iter()
        .map(|&n| {
            let dir = execution.results[n].out_dir.as_ref().unwrap();
            let out = std::fs::read_to_string(dir.join("out.txt")).unwrap();
            let (_, on) = out.rsplit_once(" on ").unwrap();
            let (device, span) = on.split_once(' ').unwrap();
            let (from, to) = span.split_once("..").unwrap();
            (device.to_string(), from.parse().unwrap(), to.parse().unwrap())
        })
        .collect();
    spans.sort_by_key(|s| s.1);
    for device in &devices {
        let used: Vec<_> = spans.iter().filter(|s| &s.0 == device).collect();
        assert!(!used.is_empty(), "{device} was never leased: {spans:?}");
        for pair in used.windows(2) {
            assert!(pair[0].2 <= pair[1].1, "two stages held {device} at once: {spans:?}");
        }
    }
    assert!(spans.iter().all(|s| devices.contains(&s.0)), "{spans:?}");
    // Four threads, but only two devices: five stages of 150 ms take three rounds.
    assert!(execution.elapsed.as_millis() >= 3 * 150, "{:?}", execution.elapsed);
}

/// Fails the node labelled `fails`, builds every other one in process, and
/// records what it was asked to launch.
struct FailingOne<'a> {
    fails: &'static str,
    in_process: InProcess<'a>,
    launched: Mutex<Vec<String>>,
}

impl Launcher for FailingOne<'_> {
    fn launch(&self, job: &Job, store: &Store, reporter: &dyn Reporter, cancel: &AtomicBool) -> anyhow::Result<Built> {
        self.launched.lock().unwrap().push(job.node.label.clone());
        if job.node.label == self.fails {
            anyhow::bail!("the launcher lost `{}`", self.fails);
        }
        self.in_process.launch(job, store, reporter, cancel)
    }
}

#[test]
fn a_launcher_builds_what_is_not_cached_and_its_failures_skip_what_follows() {
    let ws = Workspace::new();
    let file = ws.write("p.yaml", SEVEN_STAGES);
    let registry = common::kinds::registry();
    let store = Store::open(&ws.store());
    let pipeline = Pipeline::load(&file, &[], &registry).unwrap();
    let mut graph = Graph::new();
    let nodes = graph.add_pipeline(&pipeline, None, store.stat_cache()).unwrap();
    let launcher = FailingOne {
        fails: "f",
        in_process: InProcess { registry: &registry },
        launched: Mutex::default(),
    };
    let options = ExecOptions {
        launcher: Some(&launcher),
        ..ExecOptions::with_jobs(2)
    };
    let execution = run(&graph, &registry, &store, &options);
    let states: Vec<&str> = nodes.iter().map(|&n| execution.results[n].state.word()).collect();
    assert_eq!(states, ["ran", "ran", "ran", "ran", "ran", "failed", "skipped"]);
    assert_eq!(
        format!("{:?}", execution.results[nodes[5]].state),
        "Failed(Error(\"the launcher lost `f`\"))"
    );
    let mut launched = launcher.launched.lock().unwrap().clone();
    launched.sort();
    assert_eq!(
        launched,
        ["a", "b", "c", "d", "e", "f"],
        "g waits for f and is never launched"
    );
    // A second run launches only the failed stage and what follows it.
    launcher.launched.lock().unwrap().clear();
    let again = run(&graph, &registry, &store, &options);
    assert_eq!(again.results[nodes[0]].state, NodeState::Cached);
    assert_eq!(*launcher.launched.lock().unwrap(), ["f"]);
}
