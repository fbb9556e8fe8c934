//! The graph merges equal stages of several pipeline instances, as sweeps need.

mod common;

use std::sync::atomic::AtomicBool;

use common::{SEVEN_STAGES, Workspace};
use pipeline::console::Console;
use pipeline::dag::{ExecOptions, Graph, NodeState, execute};
use pipeline::spec::Pipeline;
use pipeline::store::Store;

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
    let execution = execute(
        &graph,
        &registry,
        &store,
        &options,
        &Console::new(true),
        &AtomicBool::new(false),
    );
    assert!(execution.results.iter().all(|r| r.state == NodeState::Ran));
    assert_eq!(store.entries().unwrap().len(), 11, "each shared stage is stored once");
}
