//! `pipeline why`: which part of a stage's key changed since the lock file.

use serde_json::json;

use super::{Env, Target, select_stages};
use crate::dag::Graph;
use crate::spec::{Pipeline, lock_path};
use crate::store::{LockFile, Lookup};

pub(super) fn why(env: &Env, target: &Target, stage_name: &str) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let index = select_stages(&pipeline, &[stage_name.to_string()])?[0];
    let (graph, nodes) = env.graph(&pipeline)?;
    let lock_file = lock_path(&target.file);
    let lock = LockFile::read(&lock_file)?;
    let stage = &pipeline.stages[index];
    let node = &graph.nodes[nodes[index]];
    let (will_run, reasons) = match env.store.lookup(&stage.kind, &node.key) {
        Lookup::Valid(_) => (false, vec![format!("its entry {} is in the store", &node.key[..12])]),
        lookup => {
            let mut reasons = Vec::new();
            if let Lookup::Corrupt(why) = lookup {
                reasons.push(format!("its entry {} is damaged: {why}", &node.key[..12]));
            }
            match &lock {
                None => reasons.push(format!(
                    "there is no lock file {} (the pipeline never completed)",
                    lock_file.display()
                )),
                Some(lock) => explain(&pipeline, &graph, &nodes, lock, index, 0, &mut reasons),
            }
            if reasons.is_empty() {
                reasons.push(format!(
                    "its entry {} (as locked) is not in the store {} (removed by `gc` or `clean`, or computed elsewhere)",
                    &node.key[..12],
                    env.store.root().display()
                ));
            }
            (true, reasons)
        }
    };
    env.store.save_state();
    if env.json {
        env.print_json(&json!({ "stage": stage_name, "key": node.key, "will_run": will_run, "reasons": reasons }));
    } else {
        let verdict = if will_run { "will run" } else { "will not run" };
        println!("stage `{stage_name}` {verdict}:");
        for reason in &reasons {
            println!("  - {reason}");
        }
    }
    Ok(0)
}

/// Adds why stage `index` differs from the lock, following changed upstream stages to their causes.
fn explain(
    pipeline: &Pipeline,
    graph: &Graph,
    nodes: &[usize],
    lock: &LockFile,
    index: usize,
    depth: usize,
    out: &mut Vec<String>,
) {
    let stage = &pipeline.stages[index];
    let indent = "    ".repeat(depth);
    let Some(locked) = lock.stages.get(&stage.name) else {
        out.push(format!(
            "{indent}stage `{}` is not in the lock file (it is new or never completed)",
            stage.name
        ));
        return;
    };
    let current = &graph.nodes[nodes[index]].material;
    for change in current.changes_since(&locked.material) {
        let upstream = change
            .upstream
            .and_then(|name| pipeline.stages.iter().position(|s| s.name == name));
        let scope = if depth > 0 {
            format!("in `{}`: ", stage.name)
        } else {
            String::new()
        };
        out.push(format!("{indent}{scope}{}", change.text));
        if let Some(up) = upstream {
            explain(pipeline, graph, nodes, lock, up, depth + 1, out);
        }
    }
}
