//! `pipeline plan`, `show` and `status`: read-only views of a pipeline.

use serde_json::json;

use super::{EXIT_FAILED, Env, Target};
use crate::dag::{Graph, GraphNode, Survey};
use crate::spec::{is_sweep, lock_path};
use crate::store::{LockFile, Lookup, Store};

/// Prints a header and rows as left-aligned columns.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    table.extend(rows.iter().cloned());
    for line in crate::results::aligned(&table) {
        println!("{line}");
    }
}

/// What `plan` says a run would do with a stage's entry.
fn plan_state(survey: &Survey, node: &GraphNode, store: &Store) -> &'static str {
    match survey {
        Survey::Known(Lookup::Valid(_)) => "cached",
        Survey::Known(Lookup::Missing) if node.key().is_some_and(|key| store.state_dir(node.kind(), key).exists()) => {
            "run (from its saved state)"
        }
        Survey::Known(Lookup::Missing) => "run",
        Survey::Known(Lookup::Corrupt(_)) => "run (damaged entry)",
        Survey::After(_) => "pending",
    }
}

/// The stages a pending node waits for, by their labels (empty when its key is known).
fn waits_for<'a>(graph: &'a Graph, survey: &Survey) -> Vec<&'a str> {
    match survey {
        Survey::After(nodes) => nodes.iter().map(|&n| graph.nodes[n].label.as_str()).collect(),
        Survey::Known(_) => Vec::new(),
    }
}

/// How the tables show a pending stage.
const PENDING_LEGEND: &str = "a pending stage's key follows the outputs of the stages named, which have no entry \
     yet: it runs after them unless they write outputs that a stored entry was built from";

/// One stage in `pipeline plan`.
#[derive(serde::Serialize)]
struct PlanRow<'a> {
    name: &'a str,
    kind: &'a str,
    key: Option<&'a str>,
    state: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    after: Vec<&'a str>,
    needs: Vec<&'a str>,
}

/// The KEY column: a key's first 12 digits, or "pending".
fn short_key(key: Option<&str>) -> String {
    key.map_or("pending".into(), |key| key[..12].to_string())
}

/// The STATE column: the state, and for a pending stage what it waits for.
fn state_cell(state: &str, after: &[&str]) -> String {
    if after.is_empty() {
        state.to_string()
    } else {
        format!("{state} (after {})", after.join(", "))
    }
}

pub(super) fn plan(env: &Env, target: &Target) -> anyhow::Result<u8> {
    if is_sweep(&target.file) {
        return plan_sweep(env, target);
    }
    let pipeline = env.load(target)?;
    let (graph, nodes) = env.graph(&pipeline)?;
    let surveys = graph.survey(&env.store);
    let mut stages = Vec::new();
    for (stage, &node) in pipeline.stages.iter().zip(&nodes) {
        let needs = stage.needs.iter().map(|&n| pipeline.stages[n].name.as_str()).collect();
        stages.push(PlanRow {
            name: &stage.name,
            kind: &stage.kind,
            key: graph.nodes[node].key(),
            state: plan_state(&surveys[node], &graph.nodes[node], &env.store),
            after: waits_for(&graph, &surveys[node]),
            needs,
        });
    }
    env.store.save_state();
    if env.json {
        env.print_json(&json!({ "pipeline": pipeline.name, "stages": stages }));
    } else {
        let rows: Vec<Vec<String>> = stages
            .iter()
            .map(|s| {
                let needs = if s.needs.is_empty() {
                    "-".to_string()
                } else {
                    s.needs.join(",")
                };
                vec![
                    s.name.into(),
                    s.kind.into(),
                    short_key(s.key),
                    state_cell(s.state, &s.after),
                    needs,
                ]
            })
            .collect();
        print_table(&["STAGE", "KIND", "KEY", "STATE", "NEEDS"], &rows);
        if stages.iter().any(|s| !s.after.is_empty()) {
            println!("\n{PENDING_LEGEND}");
        }
    }
    Ok(0)
}

/// `pipeline plan SWEEP`: the trials, every stage of their merged graph
/// (shared stages once, by their own name) and what a run would do.
fn plan_sweep(env: &Env, target: &Target) -> anyhow::Result<u8> {
    let sweep = env.sweep(target)?;
    let mut graph = Graph::new();
    let mut users: Vec<Vec<String>> = Vec::new();
    for trial in &sweep.trials {
        let label = trial.label();
        for node in graph.add_pipeline(&trial.pipeline, Some(&label), env.store.stat_cache())? {
            users.resize(graph.nodes.len(), Vec::new());
            if !users[node].contains(&label) {
                users[node].push(label.clone());
            }
        }
    }
    // A stage shared by several trials is shown by its own name, as a run shows it.
    for (node, users) in graph.nodes.iter_mut().zip(&users) {
        if users.len() > 1
            && let Some((_, stage)) = node.label.split_once('/')
        {
            node.label = stage.to_string();
        }
    }
    let surveys = graph.survey(&env.store);
    let stages: Vec<_> = graph
        .nodes
        .iter()
        .zip(&users)
        .zip(&surveys)
        .map(|((node, users), survey)| {
            json!({
                "name": node.label,
                "kind": node.kind(),
                "key": node.key(),
                "state": plan_state(survey, node, &env.store),
                "after": waits_for(&graph, survey),
                "trials": users.len(),
            })
        })
        .collect();
    env.store.save_state();
    let trials: Vec<_> = sweep
        .trials
        .iter()
        .map(|t| {
            let params: serde_json::Map<_, _> =
                sweep.parameters.iter().cloned().zip(t.params.iter().cloned()).collect();
            json!({ "trial": t.label(), "params": params })
        })
        .collect();
    let to_run = stages.iter().filter(|s| s["state"] != "cached").count();
    let pending = stages.iter().filter(|s| s["state"] == "pending").count();
    if env.json {
        env.print_json(
            &json!({ "sweep": sweep.name, "trials": trials, "stages": stages, "to_run": to_run, "pending": pending }),
        );
        return Ok(0);
    }
    println!(
        "sweep `{}`: {} trials of {}, {} at a time",
        sweep.name,
        sweep.trials.len(),
        sweep.pipeline_file.display(),
        sweep.parallel
    );
    let rows: Vec<Vec<String>> = trials
        .iter()
        .map(|t| {
            let params = t["params"].as_object().expect("params are an object");
            let shown: Vec<String> = params
                .iter()
                .map(|(p, v)| format!("{}={v}", p.rsplit('.').next().unwrap_or(p)))
                .collect();
            vec![t["trial"].as_str().unwrap_or_default().to_string(), shown.join(" ")]
        })
        .collect();
    print_table(&["TRIAL", "PARAMETERS"], &rows);
    println!();
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            let trials = s["trials"].as_u64().unwrap_or(0);
            let shared = if trials > 1 {
                format!("shared by {trials}")
            } else {
                String::new()
            };
            let after: Vec<&str> = s["after"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            vec![
                text("name"),
                text("kind"),
                short_key(s["key"].as_str()),
                state_cell(&text("state"), &after),
                shared,
            ]
        })
        .collect();
    print_table(&["STAGE", "KIND", "KEY", "STATE", "TRIALS"], &rows);
    println!("\n{to_run} of {} stages would run; nothing was executed", stages.len());
    if pending > 0 {
        println!("{pending} of them are pending; {PENDING_LEGEND}");
    }
    Ok(0)
}

/// How `pipeline dag` draws the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DagFormat {
    /// One line per stage with what it needs, in pipeline order.
    Text,
    /// A Mermaid flowchart (renders on GitHub and GitLab).
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `pipeline dag FILE`: the stages and their `needs` edges.
pub(super) fn dag(env: &Env, target: &Target, format: DagFormat) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let edges: Vec<(&str, &str)> = pipeline
        .stages
        .iter()
        .flat_map(|s| {
            s.needs
                .iter()
                .map(|&n| (pipeline.stages[n].name.as_str(), s.name.as_str()))
        })
        .collect();
    if env.json {
        let stages: Vec<_> = pipeline
            .stages
            .iter()
            .map(|s| json!({ "name": s.name, "kind": s.kind }))
            .collect();
        env.print_json(&json!({ "pipeline": pipeline.name, "stages": stages, "edges": edges }));
        return Ok(0);
    }
    match format {
        DagFormat::Text => {
            let rows: Vec<Vec<String>> = pipeline
                .stages
                .iter()
                .map(|s| {
                    let needs: Vec<&str> = s.needs.iter().map(|&n| pipeline.stages[n].name.as_str()).collect();
                    let needs = if needs.is_empty() {
                        String::new()
                    } else {
                        format!("<- {}", needs.join(", "))
                    };
                    vec![s.name.clone(), format!("({})", s.kind), needs]
                })
                .collect();
            for line in crate::results::aligned(&rows) {
                println!("{line}");
            }
        }
        DagFormat::Mermaid => {
            println!("flowchart TD");
            for (i, s) in pipeline.stages.iter().enumerate() {
                println!("    s{i}[\"{} ({})\"]", s.name.replace('"', "#quot;"), s.kind);
            }
            for (i, s) in pipeline.stages.iter().enumerate() {
                for &n in &s.needs {
                    println!("    s{n} --> s{i}");
                }
            }
        }
        DagFormat::Dot => {
            println!("digraph \"{}\" {{", pipeline.name);
            println!("    rankdir=TB;");
            for s in &pipeline.stages {
                println!("    \"{}\" [label=\"{}\\n({})\"];", s.name, s.name, s.kind);
            }
            for (from, to) in &edges {
                println!("    \"{from}\" -> \"{to}\";");
            }
            println!("}}");
        }
    }
    Ok(0)
}

pub(super) fn show(env: &Env, target: &Target) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    if env.json {
        env.print_json(&pipeline.resolved());
    } else {
        print!("{}", serde_yaml::to_string(&pipeline.resolved())?);
    }
    Ok(0)
}

pub(super) fn status(env: &Env, target: &Target) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let (graph, nodes) = env.graph(&pipeline)?;
    let surveys = graph.survey(&env.store);
    let lock_file = lock_path(&target.file);
    let lock = LockFile::read(&lock_file)?.unwrap_or_default();
    let mut rows = Vec::new();
    for (stage, &node) in pipeline.stages.iter().zip(&nodes) {
        let key = graph.nodes[node].key().unwrap_or("pending");
        let (state, detail) = match &surveys[node] {
            Survey::After(_) => (
                "pending",
                format!(
                    "its key follows the outputs of {}, which have no entry yet",
                    waits_for(&graph, &surveys[node]).join(", ")
                ),
            ),
            Survey::Known(entry) => {
                // A stale stage whose new key is already in the store costs the run nothing.
                let stale = if matches!(entry, Lookup::Valid(_)) {
                    "stale, cached"
                } else {
                    "stale"
                };
                match lock.stages.get(&stage.name) {
                    None => (stale, "not in the lock file".to_string()),
                    Some(locked) if locked.key != key => (stale, format!("key changed from {}", &locked.key[..12])),
                    Some(_) => match entry {
                        Lookup::Valid(_) => ("up-to-date", String::new()),
                        Lookup::Missing => ("missing", "not in the store".to_string()),
                        Lookup::Corrupt(why) => ("missing", format!("damaged entry: {why}")),
                    },
                }
            }
        };
        rows.push(vec![stage.name.clone(), state.to_string(), key.to_string(), detail]);
    }
    for name in lock.stages.keys() {
        if pipeline.stage(name).is_none() {
            rows.push(vec![
                name.clone(),
                "removed".into(),
                lock.stages[name].key.clone(),
                "no longer in the pipeline".into(),
            ]);
        }
    }
    env.store.save_state();
    let clean = rows.iter().all(|r| r[1] == "up-to-date");
    if env.json {
        let stages: Vec<_> = rows
            .iter()
            .map(|r| json!({"name": r[0], "state": r[1], "key": r[2], "detail": r[3]}))
            .collect();
        env.print_json(&json!({ "pipeline": pipeline.name, "up_to_date": clean, "stages": stages }));
    } else {
        for row in &mut rows {
            row[2].truncate(12);
        }
        print_table(&["STAGE", "STATE", "KEY", "DETAIL"], &rows);
        if !clean {
            println!(
                "\n{} is not up to date: run `pipeline run {}`",
                lock_file.display(),
                target.file.display()
            );
        }
    }
    Ok(if clean { 0 } else { EXIT_FAILED })
}
