//! `pipeline run`.

use serde_json::json;

use super::{EXIT_FAILED, EXIT_INTERRUPTED, Env, Target, default_jobs, interrupt_flag};
use crate::console::Console;
use crate::dag::{ExecOptions, Execution, Graph, NodeState, execute};
use crate::spec::{Pipeline, lock_path};
use crate::store::{LockFile, LockedStage};

pub(super) fn run(env: &Env, target: &Target, jobs: Option<usize>) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let (graph, nodes) = env.graph(&pipeline)?;
    let console = Console::new(false);
    let cancel = interrupt_flag();
    let options = ExecOptions::with_jobs(default_jobs(jobs));
    let execution = execute(&graph, env.registry, &env.store, &options, &console, cancel);
    env.store.save_state();
    // The lock describes the pipeline file as written: a run with `--set`
    // overrides is a variant and leaves it alone.
    if execution.succeeded() && target.sets.is_empty() {
        lock_file(&pipeline, &graph, &nodes, &execution).write(&lock_path(&target.file))?;
    } else if execution.succeeded() {
        console.line("lock file not written: the run had --set overrides");
    }
    let count = |word: &str| execution.results.iter().filter(|r| r.state.word() == word).count();
    let failed = count("failed");
    console.line(&format!(
        "pipeline `{}`: {} ran, {} cached, {} failed, {} skipped in {:.3}s",
        pipeline.name,
        count("ran") + count("ran-elsewhere"),
        count("cached"),
        failed,
        count("skipped"),
        execution.elapsed.as_secs_f64()
    ));
    if env.json {
        env.print_json(&json!({
            "pipeline": pipeline.name,
            "ok": execution.succeeded(),
            "interrupted": execution.interrupted,
            "seconds": execution.elapsed.as_secs_f64(),
            "stages": stage_report(&pipeline, &graph, &nodes, &execution),
        }));
    }
    for (stage, &node) in pipeline.stages.iter().zip(&nodes) {
        if let NodeState::Failed(error) = &execution.results[node].state {
            eprintln!("error: stage `{}` failed: {error}", stage.name);
        }
    }
    Ok(if execution.interrupted {
        EXIT_INTERRUPTED
    } else if execution.succeeded() {
        0
    } else {
        EXIT_FAILED
    })
}

/// The lock file of a fully successful run.
pub(super) fn lock_file(pipeline: &Pipeline, graph: &Graph, nodes: &[usize], execution: &Execution) -> LockFile {
    let stages = pipeline
        .stages
        .iter()
        .zip(nodes)
        .map(|(stage, &node)| {
            let manifest = execution.results[node]
                .manifest
                .as_ref()
                .expect("successful nodes have manifests");
            let locked = LockedStage {
                key: graph.nodes[node].key.clone(),
                material: graph.nodes[node].material.clone(),
                outputs: manifest.files.clone(),
                metrics: manifest.metrics.clone(),
            };
            (stage.name.clone(), locked)
        })
        .collect();
    LockFile {
        pipeline: pipeline.name.clone(),
        stages,
    }
}

/// Per stage: name, kind, key, state, seconds, metrics and error, for `--json`.
pub(super) fn stage_report(
    pipeline: &Pipeline,
    graph: &Graph,
    nodes: &[usize],
    execution: &Execution,
) -> serde_json::Value {
    pipeline
        .stages
        .iter()
        .zip(nodes)
        .map(|(stage, &node)| {
            let result = &execution.results[node];
            let error = match &result.state {
                NodeState::Failed(e) => Some(e.clone()),
                _ => None,
            };
            json!({
                "name": stage.name,
                "kind": stage.kind,
                "key": graph.nodes[node].key,
                "state": result.state.word(),
                "seconds": result.seconds,
                "metrics": result.manifest.as_ref().map(|m| &m.metrics),
                "error": error,
            })
        })
        .collect()
}
