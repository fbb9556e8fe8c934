//! `pipeline why`: which part of a stage's key changed since the lock file.

use serde_json::json;

use super::{Env, Target, select_stages};
use crate::dag::{Graph, KeyMaterial, Survey};
use crate::spec::{Pipeline, lock_path};
use crate::store::{LockFile, Lookup};

pub(super) fn why(env: &Env, target: &Target, stage_name: &str) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let index = select_stages(&pipeline, &[stage_name.to_string()])?[0];
    let (graph, nodes) = env.graph(&pipeline)?;
    let surveys = graph.survey(&env.store);
    let lock_file = lock_path(&target.file);
    let lock = LockFile::read(&lock_file)?;
    let node = &graph.nodes[nodes[index]];
    let short = node.key().map_or("pending", |key| &key[..12]);
    let (will_run, reasons) = match &surveys[nodes[index]] {
        Survey::Known(Lookup::Valid(_)) => (false, vec![format!("its entry {short} is in the store")]),
        survey => {
            let mut reasons = Vec::new();
            match survey {
                Survey::Known(Lookup::Corrupt(why)) => reasons.push(format!("its entry {short} is damaged: {why}")),
                Survey::After(after) => {
                    let names: Vec<String> = after.iter().map(|&n| format!("`{}`", graph.nodes[n].label)).collect();
                    reasons.push(format!(
                        "its key follows the outputs of {}, which have no entry: it runs after them, unless they write outputs that a stored entry was built from",
                        names.join(", ")
                    ));
                }
                Survey::Known(_) => {}
            }
            match &lock {
                None => reasons.push(format!(
                    "there is no lock file {} (the pipeline never completed)",
                    lock_file.display()
                )),
                Some(lock) => {
                    let now = Now {
                        pipeline: &pipeline,
                        graph: &graph,
                        nodes: &nodes,
                        surveys: &surveys,
                    };
                    explain(&now, lock, index, 0, &mut reasons)
                }
            }
            if reasons.is_empty() {
                reasons.push(format!(
                    "its entry {short} (as locked) is not in the store {} (removed by `gc` or `clean`, or computed elsewhere)",
                    env.store.root().display()
                ));
            }
            (true, reasons)
        }
    };
    env.store.save_state();
    if env.json {
        env.print_json(&json!({ "stage": stage_name, "key": node.key(), "will_run": will_run, "reasons": reasons }));
    } else {
        let verdict = if will_run { "will run" } else { "will not run" };
        println!("stage `{stage_name}` {verdict}:");
        for reason in &reasons {
            println!("  - {reason}");
        }
    }
    Ok(0)
}

/// The pipeline as it is now: its graph and what the store holds.
struct Now<'a> {
    pipeline: &'a Pipeline,
    graph: &'a Graph,
    nodes: &'a [usize],
    surveys: &'a [Survey],
}

impl Now<'_> {
    /// Stage `index`'s key material with every upstream output the store knows
    /// (a pending stage's other upstream outputs stay `None`).
    fn material(&self, index: usize) -> KeyMaterial {
        let node = &self.graph.nodes[self.nodes[index]];
        let mut material = node.material().clone();
        for (need, &d) in material.needs.iter_mut().zip(&node.deps) {
            if let Survey::Known(Lookup::Valid(manifest)) = &self.surveys[d] {
                need.output = Some(manifest.output_digest());
            }
        }
        material
    }
}

/// Adds why stage `index` differs from the lock, following changed upstream stages to their causes.
fn explain(now: &Now, lock: &LockFile, index: usize, depth: usize, out: &mut Vec<String>) {
    let pipeline = now.pipeline;
    let stage = &pipeline.stages[index];
    let indent = "    ".repeat(depth);
    let Some(locked) = lock.stages.get(&stage.name) else {
        out.push(format!(
            "{indent}stage `{}` is not in the lock file (it is new or never completed)",
            stage.name
        ));
        return;
    };
    for change in now.material(index).changes_since(&locked.material) {
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
            explain(now, lock, up, depth + 1, out);
        }
    }
}
