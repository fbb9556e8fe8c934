//! `pipeline verify`: re-execute stages in a scratch store and compare their
//! output bytes with the lock file.

use std::path::PathBuf;

use serde_json::json;

use super::inspect::print_table;
use super::{EXIT_FAILED, EXIT_INTERRUPTED, Env, Target, UsageError, default_jobs, interrupt_flag, select_stages};
use crate::console::Console;
use crate::dag::{ExecOptions, NodeState, execute};
use crate::spec::lock_path;
use crate::store::{LockFile, Lookup, Store};

pub(super) fn verify(env: &Env, target: &Target, stage_names: &[String], jobs: Option<usize>) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let selected = select_stages(&pipeline, stage_names)?;
    let lock_file = lock_path(&target.file);
    let lock = LockFile::read(&lock_file)?.ok_or_else(|| {
        UsageError(format!(
            "{} does not exist: run the pipeline first",
            lock_file.display()
        ))
    })?;
    let (graph, nodes) = env.graph(&pipeline)?;
    let mut recompute = vec![false; graph.nodes.len()];
    for &i in &selected {
        recompute[nodes[i]] = true;
    }
    // The lease pins the cached upstream entries (keys known now, the rest as
    // they are completed); the scratch store is named after it.
    let lease = env
        .store
        .lease(graph.nodes.iter().filter_map(|node| node.key().map(str::to_string)))?;
    let scratch = ScratchDir::new(env.store.root(), lease.id())?;
    let scratch_store = Store::open(&scratch.0);
    // Upstream entries come from the store, each file re-hashed: verify never trusts the stat cache.
    let upstream = Store::open_rehashing(env.store.root());
    let console = Console::new(false);
    let options = ExecOptions {
        recompute: Some(&recompute),
        fallback: Some(&upstream),
        lease: Some(&lease),
        ..ExecOptions::with_jobs(default_jobs(jobs))
    };
    let execution = execute(
        &graph,
        env.registry,
        &scratch_store,
        &options,
        &console,
        interrupt_flag(),
    );
    if execution.interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    // Rows: stage, file, locked hash, new hash.
    let mut differences: Vec<Vec<String>> = Vec::new();
    for &i in &selected {
        let stage = &pipeline.stages[i];
        let node = &graph.nodes[nodes[i]];
        let mut differ = |file: &str, locked: &str, now: &str| {
            differences.push(vec![
                stage.name.clone(),
                file.to_string(),
                locked.to_string(),
                now.to_string(),
            ])
        };
        let Some(locked) = lock.stages.get(&stage.name) else {
            differ("-", "not in the lock file", "-");
            continue;
        };
        let result = &execution.results[nodes[i]];
        let Some(key) = node.key() else {
            differ(
                "-",
                "ran",
                &format!("{} (a stage it needs did not run)", how_it_ended(&result.state)),
            );
            continue;
        };
        if locked.key != key {
            differ(
                "-",
                &format!("key {}", &locked.key[..12]),
                &format!("key {} (the pipeline changed since the lock)", &key[..12]),
            );
            continue;
        }
        // The store's own entry must be sound too: it is what runs reuse.
        if let Lookup::Corrupt(why) = upstream.lookup(node.kind(), key) {
            differ(
                "-",
                "the cached entry",
                &format!("damaged: {why} (`pipeline fsck --repair` removes it)"),
            );
        }
        let Some(manifest) = &result.manifest else {
            differ("-", "ran", &how_it_ended(&result.state));
            continue;
        };
        let files: std::collections::BTreeSet<&String> = locked.outputs.keys().chain(manifest.files.keys()).collect();
        for file in files {
            let short =
                |d: Option<&crate::store::FileDigest>| d.map_or("absent".to_string(), |d| d.blake3[..12].to_string());
            let (old, new) = (locked.outputs.get(file), manifest.files.get(file));
            if old != new {
                differ(file, &short(old), &short(new));
            }
        }
    }
    let names: Vec<&str> = selected.iter().map(|&i| pipeline.stages[i].name.as_str()).collect();
    if env.json {
        let rows: Vec<_> = differences
            .iter()
            .map(|r| json!({"stage": r[0], "file": r[1], "locked": r[2], "now": r[3]}))
            .collect();
        env.print_json(&json!({ "pipeline": pipeline.name, "verified": names, "identical": differences.is_empty(), "differences": rows }));
    } else if differences.is_empty() {
        println!(
            "verified: {} reproduce the bytes in {}",
            names.join(", "),
            lock_file.display()
        );
    } else {
        println!("verify failed: these outputs differ from {}", lock_file.display());
        print_table(&["STAGE", "FILE", "LOCKED", "NOW"], &differences);
    }
    Ok(if differences.is_empty() { 0 } else { EXIT_FAILED })
}

/// How a verified stage that produced nothing ended, for the table.
fn how_it_ended(state: &NodeState) -> String {
    match state {
        NodeState::Failed(e) => format!("failed: {e}"),
        other => other.word().to_string(),
    }
}

/// A scratch store inside the main store (`.scratch/<lease id>`, which `gc`
/// leaves alone while the lease lives), removed when done.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(store_root: &std::path::Path, lease_id: &str) -> anyhow::Result<Self> {
        let dir = store_root.join(".scratch").join(lease_id);
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
