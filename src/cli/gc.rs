//! `pipeline gc` and `pipeline clean`: removing cache entries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Env, Target, UsageError, select_stages};
use crate::store::LockFile;

/// Lock files under `paths` (files themselves, or directories searched recursively).
fn find_lock_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "lock") {
                out.push(path);
            }
        }
        Ok(())
    }
    let defaults = [PathBuf::from("pipelines"), PathBuf::from("sweeps")];
    let explicit = !paths.is_empty();
    let mut found = Vec::new();
    for path in if explicit { paths } else { &defaults[..] } {
        if path.is_dir() {
            walk(path, &mut found)?;
        } else if path.is_file() {
            found.push(path.clone());
        } else if explicit {
            return Err(UsageError(format!("{} does not exist", path.display())).into());
        }
    }
    found.sort();
    Ok(found)
}

fn dir_size(path: &Path) -> u64 {
    crate::store::list_files(path)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| std::fs::metadata(path.join(f)).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub(super) fn gc(env: &Env, locks: &[PathBuf], dry_run: bool) -> anyhow::Result<u8> {
    let lock_files = find_lock_files(locks)?;
    let mut keep = BTreeSet::new();
    for file in &lock_files {
        if let Some(lock) = LockFile::read(file)? {
            keep.extend(lock.stages.into_values().map(|s| s.key));
        }
    }
    let mut removed = Vec::new();
    let mut bytes = 0;
    for (kind, key) in env.store.entries()? {
        if keep.contains(&key) {
            continue;
        }
        bytes += dir_size(&env.store.entry_dir(&kind, &key));
        if !dry_run {
            env.store.remove(&kind, &key)?;
        }
        removed.push(format!("{kind}/{key}"));
    }
    if !dry_run {
        for leftover in [".trash", ".scratch"] {
            let _ = std::fs::remove_dir_all(env.store.root().join(leftover));
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    if env.json {
        env.print_json(&json!({ "dry_run": dry_run, "lock_files": lock_files, "removed": removed, "bytes": bytes }));
    } else {
        for entry in &removed {
            println!("{verb} {entry}");
        }
        println!(
            "{verb} {} entries ({:.1} MB), kept {} referenced by {} lock files",
            removed.len(),
            bytes as f64 / 1e6,
            keep.len(),
            lock_files.len()
        );
    }
    Ok(0)
}

pub(super) fn clean(env: &Env, target: &Target, stage_names: &[String]) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let selected = select_stages(&pipeline, stage_names)?;
    let (graph, nodes) = env.graph(&pipeline)?;
    let mut removed = Vec::new();
    for i in selected {
        let node = &graph.nodes[nodes[i]];
        if env.store.remove(&node.material.kind, &node.key)? {
            removed.push(pipeline.stages[i].name.clone());
        }
    }
    env.store.save_state();
    if env.json {
        env.print_json(&json!({ "pipeline": pipeline.name, "removed": removed }));
    } else {
        println!(
            "removed the entries of {} stages: {}",
            removed.len(),
            removed.join(", ")
        );
    }
    Ok(0)
}
