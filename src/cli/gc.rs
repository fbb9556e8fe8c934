//! `pipeline gc`, `pipeline clean` and `pipeline fsck`: removing cache entries
//! (none that a running command uses) and finding damaged ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{EXIT_FAILED, Env, Target, UsageError, select_stages};
use crate::store::{LockFile, Lookup, Store};

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

/// An entry left in place because a running command's lease lists it.
struct Skipped {
    entry: String,
    pid: u32,
}

impl Skipped {
    fn json(skipped: &[Skipped]) -> serde_json::Value {
        skipped
            .iter()
            .map(|s| json!({"entry": s.entry, "pid": s.pid}))
            .collect()
    }

    fn print(skipped: &[Skipped]) {
        for s in skipped {
            println!("skipped {}: in use by a running command (pid {})", s.entry, s.pid);
        }
    }
}

pub(super) fn gc(env: &Env, locks: &[PathBuf], dry_run: bool) -> anyhow::Result<u8> {
    let lock_files = find_lock_files(locks)?;
    let mut keep = BTreeSet::new();
    for file in &lock_files {
        if let Some(lock) = LockFile::read(file)? {
            keep.extend(lock.stages.into_values().map(|s| s.key));
        }
    }
    let maintenance = env.store.maintenance()?;
    let mut removed = Vec::new();
    let mut skipped = Vec::new();
    let mut bytes = 0;
    for (kind, key) in env.store.entries()? {
        if keep.contains(&key) {
            continue;
        }
        if let Some(pid) = maintenance.user_of(&key) {
            skipped.push(Skipped {
                entry: format!("{kind}/{key}"),
                pid,
            });
            continue;
        }
        bytes += dir_size(&env.store.entry_dir(&kind, &key));
        if !dry_run {
            env.store.remove(&kind, &key)?;
        }
        removed.push(format!("{kind}/{key}"));
    }
    // What pruned trials saved to go on later: no lock file refers to it.
    let mut states = 0;
    for (kind, key) in env.store.saved_states() {
        if keep.contains(&key) {
            continue;
        }
        bytes += dir_size(&env.store.state_dir(&kind, &key));
        if dry_run || env.store.remove_saved_state(&kind, &key)? {
            states += 1;
        }
    }
    let leftovers = if dry_run {
        0
    } else {
        env.store.remove_leftovers(&maintenance)?
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    if env.json {
        env.print_json(&json!({
            "dry_run": dry_run,
            "lock_files": lock_files,
            "removed": removed,
            "skipped": Skipped::json(&skipped),
            "leftovers": leftovers,
            "saved_states": states,
            "bytes": bytes,
        }));
    } else {
        for entry in &removed {
            println!("{verb} {entry}");
        }
        Skipped::print(&skipped);
        println!(
            "{verb} {} entries ({:.1} MB), kept {} referenced by {} lock files, skipped {} in use{}",
            removed.len(),
            bytes as f64 / 1e6,
            keep.len(),
            lock_files.len(),
            skipped.len(),
            if leftovers > 0 {
                format!("; removed {leftovers} folders left by stopped runs")
            } else {
                String::new()
            }
        );
        if states > 0 {
            println!("{verb} {states} saved training states of pruned trials");
        }
    }
    Ok(0)
}

pub(super) fn clean(env: &Env, target: &Target, stage_names: &[String]) -> anyhow::Result<u8> {
    let pipeline = env.load(target)?;
    let selected = select_stages(&pipeline, stage_names)?;
    let (graph, nodes) = env.graph(&pipeline)?;
    // Completes the keys that the entries in the store determine.
    graph.survey(&env.store);
    let maintenance = env.store.maintenance()?;
    let mut removed = Vec::new();
    let mut skipped = Vec::new();
    for i in selected {
        let node = &graph.nodes[nodes[i]];
        let name = &pipeline.stages[i].name;
        // A stage after one without an entry has no known key, so no entry to remove.
        let Some(key) = node.key() else { continue };
        if let Some(pid) = maintenance.user_of(key) {
            if env.store.entry_dir(node.kind(), key).exists() {
                skipped.push(Skipped {
                    entry: name.clone(),
                    pid,
                });
            }
            continue;
        }
        if env.store.remove(node.kind(), key)? {
            removed.push(name.clone());
        }
    }
    drop(maintenance);
    env.store.save_state();
    if env.json {
        env.print_json(&json!({ "pipeline": pipeline.name, "removed": removed, "skipped": Skipped::json(&skipped) }));
    } else {
        Skipped::print(&skipped);
        println!(
            "removed the entries of {} stages: {}",
            removed.len(),
            removed.join(", ")
        );
    }
    Ok(0)
}

pub(super) fn fsck(env: &Env, repair: bool) -> anyhow::Result<u8> {
    let store = Store::open_rehashing(env.store.root());
    let entries = store.entries()?;
    let mut damaged = Vec::new();
    for (kind, key) in &entries {
        if let Lookup::Corrupt(why) = store.lookup(kind, key) {
            damaged.push((kind, key, why));
        }
    }
    store.save_state();
    let mut removed = Vec::new();
    let mut skipped = Vec::new();
    if repair && !damaged.is_empty() {
        // Only the removal waits for (and holds off) commands taking leases.
        let maintenance = store.maintenance()?;
        for (kind, key, _) in &damaged {
            let entry = format!("{kind}/{key}");
            match maintenance.user_of(key) {
                Some(pid) => skipped.push(Skipped { entry, pid }),
                None => {
                    store.remove(kind, key)?;
                    removed.push(entry);
                }
            }
        }
    }
    let damaged: Vec<(String, String)> = damaged
        .into_iter()
        .map(|(k, key, why)| (format!("{k}/{key}"), why))
        .collect();
    if env.json {
        let rows: Vec<_> = damaged.iter().map(|(e, why)| json!({"entry": e, "why": why})).collect();
        env.print_json(&json!({
            "checked": entries.len(),
            "damaged": rows,
            "removed": removed,
            "skipped": Skipped::json(&skipped),
        }));
    } else {
        for (entry, why) in &damaged {
            println!("damaged {entry}: {why}");
        }
        Skipped::print(&skipped);
        let fate = if repair {
            format!("; removed {} (the next run recomputes them)", removed.len())
        } else if damaged.is_empty() {
            String::new()
        } else {
            "; `pipeline fsck --repair` removes them".to_string()
        };
        println!("checked {} entries: {} damaged{fate}", entries.len(), damaged.len());
    }
    let unrepaired = damaged.len() - removed.len();
    Ok(if unrepaired == 0 { 0 } else { EXIT_FAILED })
}
