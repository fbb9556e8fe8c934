//! `pipeline plan`, `show` and `status`: read-only views of a pipeline.

use serde_json::json;

use super::{EXIT_FAILED, Env, Target};
use crate::spec::lock_path;
use crate::store::{LockFile, Lookup};

/// Prints rows as left-aligned columns.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// One stage in `pipeline plan`.
#[derive(serde::Serialize)]
struct PlanRow<'a> {
    name: &'a str,
    kind: &'a str,
    key: &'a str,
    state: &'static str,
    needs: Vec<&'a str>,
}

pub(super) fn plan(env: &Env, target: &Target) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let (graph, nodes) = env.graph(&pipeline)?;
    let mut stages = Vec::new();
    for (stage, &node) in pipeline.stages.iter().zip(&nodes) {
        let node = &graph.nodes[node];
        let state = match env.store.lookup(&stage.kind, &node.key) {
            Lookup::Valid(_) => "cached",
            Lookup::Missing => "run",
            Lookup::Corrupt(_) => "run (damaged entry)",
        };
        let needs = stage.needs.iter().map(|&n| pipeline.stages[n].name.as_str()).collect();
        stages.push(PlanRow {
            name: &stage.name,
            kind: &stage.kind,
            key: &node.key,
            state,
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
                vec![s.name.into(), s.kind.into(), s.key[..12].into(), s.state.into(), needs]
            })
            .collect();
        print_table(&["STAGE", "KIND", "KEY", "STATE", "NEEDS"], &rows);
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
    let lock_file = lock_path(&target.file);
    let lock = LockFile::read(&lock_file)?.unwrap_or_default();
    let mut rows = Vec::new();
    for (stage, &node) in pipeline.stages.iter().zip(&nodes) {
        let key = &graph.nodes[node].key;
        let (state, detail) = match lock.stages.get(&stage.name) {
            None => ("stale", "not in the lock file".to_string()),
            Some(locked) if &locked.key != key => ("stale", format!("key changed from {}", &locked.key[..12])),
            Some(_) => match env.store.lookup(&stage.kind, key) {
                Lookup::Valid(_) => ("up-to-date", String::new()),
                Lookup::Missing => ("missing", "not in the store".to_string()),
                Lookup::Corrupt(why) => ("missing", format!("damaged entry: {why}")),
            },
        };
        rows.push(vec![stage.name.clone(), state.to_string(), key.clone(), detail]);
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
