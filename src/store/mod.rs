//! The content-addressed cache: `<store>/<kind>/<key>/{manifest.json,out/}`.
//!
//! Entries are built in `<store>/.tmp/` and renamed into place only when
//! complete, under a per-key file lock, so a killed stage leaves no entry and
//! two processes never compute the same key at once. Commands that use
//! entries hold a [`Lease`] on them, which `gc` and `clean` respect.

mod digest;
pub mod host;
mod lease;
mod lockfile;
mod manifest;

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

pub use digest::{FileDigest, StatCache, hash_file, list_files};
pub use lease::{Lease, Maintenance};
pub use lockfile::{LockFile, LockedStage};
pub use manifest::{MANIFEST_FORMAT, Manifest, output_digest};

use crate::dag::KeyMaterial;
use crate::stage::StageOutcome;

/// The result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    /// No entry.
    Missing,
    /// A complete entry whose files match its manifest.
    Valid(Arc<Manifest>),
    /// An entry that is damaged: why.
    Corrupt(String),
}

/// An entry that [`Store::build`] produced or found.
#[derive(Debug)]
pub struct Built {
    /// The entry's manifest.
    pub manifest: Manifest,
    /// True when another process computed it while this one waited for the lock.
    pub by_other_process: bool,
}

/// A cache store rooted at a directory.
pub struct Store {
    root: PathBuf,
    stat: StatCache,
    /// Lookups hash every file instead of trusting the stat cache.
    rehash: bool,
    /// The manifests of entries this process found valid, by entry
    /// directory. Entries never change once published, so looking a key up
    /// again (a sweep's shared stages, once per trial) reads nothing;
    /// discarding an entry forgets it.
    verified: Mutex<HashMap<PathBuf, Arc<Manifest>>>,
    /// How [`Store::check_locks`] found the locks, once per process: the
    /// probe is per process, and the sessions of an adaptive sweep's trials
    /// start on several threads at once.
    locks: OnceLock<Result<(), String>>,
}

impl Store {
    /// The store at `root` (created on demand).
    pub fn open(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            // Per host: inodes and times are what this machine's mount reports.
            stat: StatCache::new(root.join(".state").join(format!("stat-cache.{}.json", host::name()))),
            rehash: false,
            verified: Mutex::default(),
            locks: OnceLock::new(),
        }
    }

    /// The store at `root`, whose lookups read and hash every file of an
    /// entry (for `verify` and `fsck`): damage that keeps a file's size,
    /// mtime and inode, which the stat cache cannot see, is found.
    pub fn open_rehashing(root: &Path) -> Store {
        Store {
            rehash: true,
            ..Store::open(root)
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entry directory of a key.
    pub fn entry_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// The output directory of a key.
    pub fn out_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.entry_dir(kind, key).join("out")
    }

    /// Where a stage building a key keeps its state between runs (see
    /// [`crate::stage::StageContext::state_dir`]): `.partial/<kind>/<key>`,
    /// removed once the key's entry is stored.
    pub fn state_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(".partial").join(kind).join(key)
    }

    /// Looks a key up and checks its files against its manifest (through the stat cache).
    pub fn lookup(&self, kind: &str, key: &str) -> Lookup {
        let dir = self.entry_dir(kind, key);
        if let Some(manifest) = self.verified().get(&dir) {
            return Lookup::Valid(Arc::clone(manifest));
        }
        let bytes = match std::fs::read(dir.join("manifest.json")) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if dir.exists() {
                    Lookup::Corrupt("its manifest.json is missing".into())
                } else {
                    Lookup::Missing
                };
            }
            Err(e) => return Lookup::Corrupt(format!("its manifest cannot be read: {e}")),
        };
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return Lookup::Corrupt(format!("its manifest does not parse: {e}")),
        };
        if manifest.key != key {
            return Lookup::Corrupt(format!("its manifest is for key {}", manifest.key));
        }
        match self.check_files(&dir.join("out"), &manifest) {
            Ok(()) => {
                let manifest = Arc::new(manifest);
                self.verified().insert(dir, Arc::clone(&manifest));
                Lookup::Valid(manifest)
            }
            Err(why) => Lookup::Corrupt(why),
        }
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Manifest>>> {
        self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_files(&self, out: &Path, manifest: &Manifest) -> Result<(), String> {
        let files = list_files(out).map_err(|e| format!("its outputs cannot be listed: {e}"))?;
        for name in &files {
            let Some(expected) = manifest.files.get(name) else {
                return Err(format!("it holds {name}, which its manifest does not list"));
            };
            let path = out.join(name);
            let actual = if self.rehash {
                let digest = hash_file(&path).map_err(|e| format!("{name}: {e}"))?;
                // Corrects the stat cache for runs that trust it.
                self.stat.insert(&path, &digest).map_err(|e| format!("{name}: {e}"))?;
                digest
            } else {
                self.stat.digest(&path).map_err(|e| format!("{name}: {e}"))?
            };
            if &actual != expected {
                return Err(format!("{name} does not match its manifest"));
            }
        }
        if let Some(missing) = manifest.files.keys().find(|name| !files.contains(name)) {
            return Err(format!("{missing} is missing"));
        }
        Ok(())
    }

    /// Computes a key's entry with `run`, unless another process has it
    /// already. Holds the key's lock throughout (calling `waiting` first if
    /// another process holds it); `run` writes into the directory it is given,
    /// which is renamed into the store only when `run` succeeds.
    pub fn build(
        &self,
        material: &KeyMaterial,
        waiting: impl FnOnce(),
        run: impl FnOnce(&Path, &Path) -> anyhow::Result<StageOutcome>,
    ) -> anyhow::Result<Built> {
        let key = material.key();
        let kind = material.kind.as_str();
        let _lock = self.lock(&key, waiting)?;
        tracing::debug!(%key, kind, "holding the key's lock");
        match self.lookup(kind, &key) {
            Lookup::Valid(manifest) => {
                return Ok(Built {
                    manifest: Arc::unwrap_or_clone(manifest),
                    by_other_process: true,
                });
            }
            Lookup::Corrupt(why) => {
                tracing::warn!("cache entry {kind}/{key} is damaged ({why}); recomputing it");
                self.discard(&self.entry_dir(kind, &key))?;
            }
            Lookup::Missing => {}
        }
        let tmp_root = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp_root).with_context(|| format!("cannot create {}", tmp_root.display()))?;
        // Leftovers of killed runs for this key: nobody else holds the lock, so they are dead.
        for leftover in std::fs::read_dir(&tmp_root)?.flatten() {
            if leftover.file_name().to_string_lossy().starts_with(&format!("{key}.")) {
                self.discard(&leftover.path())?;
            }
        }
        let tmp = TempDir(tmp_root.join(format!("{key}.{}", host::process())));
        let out = tmp.0.join("out");
        std::fs::create_dir_all(&out)?;
        let started_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let clock = Instant::now();
        let state = self.state_dir(kind, &key);
        let outcome = run(&out, &state)?;
        let duration_secs = clock.elapsed().as_secs_f64();
        let mut files = std::collections::BTreeMap::new();
        for name in list_files(&out)? {
            files.insert(name.clone(), hash_file(&out.join(&name))?);
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            key: key.clone(),
            material: material.clone(),
            files,
            metrics: outcome.metrics,
            started_at,
            duration_secs,
        };
        std::fs::write(tmp.0.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
        let dest = self.entry_dir(kind, &key);
        std::fs::create_dir_all(dest.parent().expect("entries live in a kind directory"))?;
        if let Err(e) = std::fs::rename(&tmp.0, &dest) {
            // Published meanwhile by a process the key's lock did not keep
            // out (a host whose locks are its own): an equal key is an equal
            // entry, so the one there stands and this copy goes.
            if let Lookup::Valid(there) = self.lookup(kind, &key) {
                tracing::warn!(entry = %dest.display(), "another process stored this entry first; keeping its copy");
                return Ok(Built {
                    manifest: Arc::unwrap_or_clone(there),
                    by_other_process: true,
                });
            }
            return Err(e).with_context(|| format!("cannot move the new entry to {}", dest.display()));
        }
        tracing::debug!(entry = %dest.display(), files = manifest.files.len(), "stored");
        std::mem::forget(tmp);
        if state.exists() {
            // The saved state of an earlier, stopped build: the entry supersedes it.
            self.discard(&state)?;
        }
        for (name, digest) in &manifest.files {
            self.stat.insert(&dest.join("out").join(name), digest)?;
        }
        Ok(Built {
            manifest,
            by_other_process: false,
        })
    }

    /// Checks that the store's file locks exclude each other, as the
    /// per-key locks need: a lock taken through one open file of a probe is
    /// refused through a second. Fails where locks error or do nothing (an
    /// NFS mount without a lock service); it cannot tell locks that only
    /// hold within one host (`local_lock=flock`), see the README. Probes
    /// once per store value; later calls return the first answer.
    pub fn check_locks(&self) -> anyhow::Result<()> {
        let checked = self
            .locks
            .get_or_init(|| self.probe_locks().map_err(|e| format!("{e:#}")));
        checked.clone().map_err(anyhow::Error::msg)
    }

    fn probe_locks(&self) -> anyhow::Result<()> {
        let name = format!("probe.{}.lock", host::process());
        let (first, path) = self.lock_file(&name)?;
        let unusable = |why: String| {
            anyhow::anyhow!(
                "the store {} cannot be used: {why}; put it on a local disk, NFSv4 with locking, or Lustre mounted with `-o flock`",
                self.root.display()
            )
        };
        let result = match first.try_lock() {
            Err(e) => Err(unusable(format!("its filesystem refuses file locks ({e})"))),
            Ok(()) => match File::open(&path).map(|second| second.try_lock()) {
                Ok(Err(TryLockError::WouldBlock)) => Ok(()),
                Ok(Ok(())) => Err(unusable("a file lock on it does not exclude a second one".into())),
                Ok(Err(TryLockError::Error(e))) => Err(unusable(format!("its filesystem refuses file locks ({e})"))),
                Err(e) => Err(unusable(format!("cannot open {} again ({e})", path.display()))),
            },
        };
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Takes the store-wide lock `name` (`<store>/.locks/<name>.lock`),
    /// waiting for it; held until the file is dropped. For work outside a
    /// key that must not run twice at once (submitting a sweep's jobs).
    pub fn exclusive(&self, name: &str) -> anyhow::Result<File> {
        let (file, path) = self.lock_file(&format!("{name}.lock"))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    }

    /// Takes the exclusive lock of a key, calling `waiting` if it must wait.
    fn lock(&self, key: &str, waiting: impl FnOnce()) -> anyhow::Result<File> {
        if let Some(file) = self.try_lock(key)? {
            return Ok(file);
        }
        waiting();
        let (file, path) = self.lock_file(&format!("{key}.lock"))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    }

    /// The exclusive lock of a key if nobody holds it.
    fn try_lock(&self, key: &str) -> anyhow::Result<Option<File>> {
        let (file, path) = self.lock_file(&format!("{key}.lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e).context(format!("cannot lock {}", path.display())),
        }
    }

    /// `<store>/.locks/<name>`, created if needed (not locked yet), and its path.
    fn lock_file(&self, name: &str) -> anyhow::Result<(File, PathBuf)> {
        let dir = self.root.join(".locks");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok((file, path))
    }

    /// Removes what dead processes left: build folders in `.tmp` whose key
    /// nobody is building, `verify` scratch stores in `.scratch` whose lease
    /// is dead, and `.trash`. Returns how many folders it removed.
    pub fn remove_leftovers(&self, maintenance: &Maintenance) -> anyhow::Result<usize> {
        let mut removed = 0;
        for (name, path) in self.children(".tmp") {
            // `<key>.<pid>`: its builder holds the key's lock throughout.
            let key = name.split('.').next().unwrap_or(&name);
            if self.try_lock(key)?.is_some() {
                self.discard(&path)?;
                removed += 1;
            }
        }
        for (name, path) in self.children(".scratch") {
            if !maintenance.is_live(&name) {
                self.discard(&path)?;
                removed += 1;
            }
        }
        for (_, path) in self.children(".trash") {
            // Folders being removed by their process, or left half removed by a dead one.
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(removed)
    }

    /// The (name, path) of each entry of a folder of the store's root (none if it does not exist).
    fn children(&self, dir: &str) -> Vec<(String, PathBuf)> {
        std::fs::read_dir(self.root.join(dir)).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            },
        )
    }

    /// Removes a directory by first renaming it out of the way, so that no
    /// reader ever sees it half deleted.
    fn discard(&self, dir: &Path) -> anyhow::Result<()> {
        self.verified().remove(dir);
        let trash = self.root.join(".trash");
        std::fs::create_dir_all(&trash)?;
        let name = format!(
            "{}.{}.{}",
            dir.file_name().map_or("entry".into(), |n| n.to_string_lossy()),
            host::process(),
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        );
        let target = trash.join(name);
        match std::fs::rename(dir, &target) {
            Ok(()) => {}
            // Another process (gc) discarded it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).context(format!("cannot move {} aside", dir.display())),
        }
        match std::fs::remove_dir_all(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).context(format!("cannot remove {}", target.display()))
            }
            _ => Ok(()),
        }
    }

    /// Removes the entry of a key, under its lock.
    pub fn remove(&self, kind: &str, key: &str) -> anyhow::Result<bool> {
        let dir = self.entry_dir(kind, key);
        if !dir.exists() {
            return Ok(false);
        }
        let _lock = self.lock(key, || {})?;
        self.discard(&dir)?;
        Ok(true)
    }

    /// Every saved state of a stopped build (see [`Store::state_dir`]), as
    /// (kind, key), sorted.
    pub fn saved_states(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (kind, dir) in self.children(".partial") {
            if let Ok(keys) = std::fs::read_dir(dir) {
                found.extend(
                    keys.flatten()
                        .map(|k| (kind.clone(), k.file_name().to_string_lossy().into_owned())),
                );
            }
        }
        found.sort();
        found
    }

    /// Removes the saved state of a stopped build, unless a process is
    /// building its key now; true when it removed it.
    pub fn remove_saved_state(&self, kind: &str, key: &str) -> anyhow::Result<bool> {
        let dir = self.state_dir(kind, key);
        match self.try_lock(key)? {
            Some(_lock) if dir.exists() => {
                self.discard(&dir)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Every entry in the store, as (kind, key), sorted.
    pub fn entries(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let Ok(kinds) = std::fs::read_dir(&self.root) else {
            return Ok(found);
        };
        for kind in kinds.flatten() {
            let kind_name = kind.file_name().to_string_lossy().into_owned();
            if kind_name.starts_with('.') || !kind.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(kind.path())?.flatten() {
                found.push((kind_name.clone(), entry.file_name().to_string_lossy().into_owned()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// The stat cache, shared with callers that hash input files.
    pub fn stat_cache(&self) -> &StatCache {
        &self.stat
    }

    /// Persists the stat cache.
    pub fn save_state(&self) {
        if let Err(e) = self.stat.save() {
            tracing::warn!("cannot save the stat cache: {e}");
        }
    }
}

/// A build directory that is removed unless the build completes.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(text: &str) -> KeyMaterial {
        KeyMaterial {
            kind: "step".into(),
            version: 1,
            config: serde_json::json!({ "text": text }),
            needs: Vec::new(),
            seed: None,
            pipeline: None,
            device: None,
            inputs: Default::default(),
        }
    }

    fn write(text: &'static str) -> impl FnOnce(&Path, &Path) -> anyhow::Result<StageOutcome> {
        move |out: &Path, _state: &Path| {
            std::fs::write(out.join("out.txt"), text)?;
            Ok(StageOutcome::default())
        }
    }

    #[test]
    fn an_entry_another_host_published_first_is_kept_and_the_copy_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"));
        // Another host built the same key in its own copy of the store.
        let elsewhere = Store::open(&dir.path().join("elsewhere"));
        let theirs = elsewhere.build(&material("a"), || {}, write("a")).unwrap();
        let key = theirs.manifest.key.clone();
        let built = store
            .build(
                &material("a"),
                || {},
                |out, state| {
                    // ... and renamed it into this store while this build ran.
                    let dest = store.entry_dir("step", &key);
                    std::fs::create_dir_all(dest.parent().unwrap())?;
                    std::fs::rename(elsewhere.entry_dir("step", &key), &dest)?;
                    write("a")(out, state)
                },
            )
            .unwrap();
        assert!(built.by_other_process);
        // The entry there is the one kept: its build's start time, not this one's.
        assert_eq!(built.manifest.started_at, theirs.manifest.started_at);
        assert_eq!(built.manifest.files, theirs.manifest.files);
        assert!(matches!(store.lookup("step", &key), Lookup::Valid(_)));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("store/.tmp")).unwrap().collect();
        assert!(leftovers.is_empty(), "the temporary copy is gone: {leftovers:?}");
    }

    #[test]
    fn a_damaged_entry_in_the_way_is_an_error_not_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let key = material("b").key();
        let built = store.build(
            &material("b"),
            || {},
            |out, state| {
                // Something that is not a valid entry appears at the destination.
                let dest = store.entry_dir("step", &key);
                std::fs::create_dir_all(dest.join("out"))?;
                std::fs::write(dest.join("out").join("junk"), "x")?;
                write("b")(out, state)
            },
        );
        let error = format!("{:#}", built.unwrap_err());
        assert!(error.contains("cannot move the new entry to"), "{error}");
    }

    #[test]
    fn a_stopped_builds_state_survives_until_the_entry_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let key = material("d").key();
        let stopped = store.build(
            &material("d"),
            || {},
            |_, state| {
                std::fs::create_dir_all(state)?;
                std::fs::write(state.join("checkpoint"), "step 5")?;
                anyhow::bail!("stopped at step 5")
            },
        );
        assert!(stopped.is_err());
        assert!(
            matches!(store.lookup("step", &key), Lookup::Missing),
            "no entry for a stopped build"
        );
        let state = store.state_dir("step", &key);
        assert_eq!(std::fs::read_to_string(state.join("checkpoint")).unwrap(), "step 5");
        store
            .build(
                &material("d"),
                || {},
                |out, state| {
                    assert!(state.join("checkpoint").is_file(), "the next build finds the state");
                    write("d")(out, state)
                },
            )
            .unwrap();
        assert!(matches!(store.lookup("step", &key), Lookup::Valid(_)));
        assert!(!state.exists(), "the stored entry supersedes the state");
    }

    #[test]
    fn temporary_names_hold_the_host_and_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let key = material("c").key();
        store
            .build(
                &material("c"),
                || {},
                |out, state| {
                    let names: Vec<String> = std::fs::read_dir(dir.path().join(".tmp"))?
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    assert_eq!(names, [format!("{key}.{}", host::process())]);
                    write("c")(out, state)
                },
            )
            .unwrap();
        store.save_state();
        let stat_cache = dir
            .path()
            .join(".state")
            .join(format!("stat-cache.{}.json", host::name()));
        assert!(stat_cache.exists(), "the stat cache is this host's");
    }

    #[test]
    fn the_lock_check_passes_here_and_leaves_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        store.check_locks().unwrap();
        store.check_locks().unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path().join(".locks")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
