//! Leases: the entries a running command uses, so that `gc` and `clean` leave
//! them alone.
//!
//! A command that reads or builds entries (`run`, a sweep, `verify`) takes a
//! [`Lease`]: `<store>/.leases/<id>.json` lists its keys, and the command holds
//! an exclusive lock on that file until it ends. A lease whose file is not
//! locked belongs to a process that died. `gc` and `clean` take the store's
//! [`Maintenance`] lock, which excludes taking new leases while they run, and
//! skip every entry a live lease lists; leases are taken under the same lock
//! (shared), so a command never starts using an entry that gc has decided to
//! remove.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, TryLockError};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::Store;

/// What a lease file holds.
#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    /// The process that holds the lease.
    pid: u32,
    /// The keys it uses.
    keys: BTreeSet<String>,
}

/// The entries a running command uses; released when dropped.
pub struct Lease {
    id: String,
    path: PathBuf,
    /// The store's maintenance lock file, taken (shared) to add keys.
    maintenance: PathBuf,
    /// The lease file (locked) and the keys it lists.
    record: Mutex<(File, LeaseRecord)>,
}

impl Lease {
    /// A name unique to this lease, for the command's own scratch folders.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a key that became known while the command runs (a key after an
    /// upstream stage that just finished), before the command looks it up.
    /// Waits while `gc` or `clean` runs, as taking the lease did.
    pub fn pin(&self, key: &str) -> anyhow::Result<()> {
        let mut record = self.record.lock().expect("lease lock");
        let (file, record) = &mut *record;
        if record.keys.contains(key) {
            return Ok(());
        }
        let maintenance =
            File::create(&self.maintenance).with_context(|| format!("cannot open {}", self.maintenance.display()))?;
        maintenance.lock_shared()?;
        record.keys.insert(key.to_string());
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&serde_json::to_vec(record)?)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The store-wide lock `gc` and `clean` hold, with the keys live leases pin.
pub struct Maintenance {
    _lock: File,
    /// Key -> the process whose lease lists it.
    in_use: BTreeMap<String, u32>,
    /// The ids of the live leases.
    live: BTreeSet<String>,
}

impl Maintenance {
    /// The process of a live lease that uses `key`, if any.
    pub fn user_of(&self, key: &str) -> Option<u32> {
        self.in_use.get(key).copied()
    }

    /// Whether the lease `id` is held by a running process.
    pub fn is_live(&self, id: &str) -> bool {
        self.live.contains(id)
    }
}

impl Store {
    fn leases_dir(&self) -> PathBuf {
        self.root.join(".leases")
    }

    fn maintenance_lock(&self) -> anyhow::Result<File> {
        Ok(self.lock_file("maintenance.lock")?.0)
    }

    /// Pins `keys` for as long as the returned lease lives. Waits while `gc`
    /// or `clean` runs on this store.
    pub fn lease(&self, keys: impl IntoIterator<Item = String>) -> anyhow::Result<Lease> {
        self.lease_found(|_| keys.into_iter().collect())
    }

    /// Pins the keys `find` returns, which it may look up in this store:
    /// `gc` and `clean` wait while it looks, so no entry it finds is removed
    /// before the lease lists it. One write of the lease file instead of one
    /// per key.
    pub fn lease_found(&self, find: impl FnOnce(&Store) -> BTreeSet<String>) -> anyhow::Result<Lease> {
        self.check_locks()?;
        let maintenance = self.maintenance_lock()?;
        if let Err(TryLockError::WouldBlock) = maintenance.try_lock_shared() {
            eprintln!("waiting for `gc` or `clean` on this store to finish");
            maintenance.lock_shared()?;
        }
        let keys = find(self);
        let dir = self.leases_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("{}-{}-{nanos}", super::host::name(), std::process::id());
        let path = dir.join(format!("{id}.json"));
        let mut file = File::create_new(&path).with_context(|| format!("cannot create {}", path.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        let record = LeaseRecord {
            pid: std::process::id(),
            keys,
        };
        file.write_all(&serde_json::to_vec(&record)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Lease {
            id,
            path,
            maintenance: self.root.join(".locks").join("maintenance.lock"),
            record: Mutex::new((file, record)),
        })
    }

    /// Takes the maintenance lock (waiting for commands that are taking
    /// leases), removes the files of dead leases and collects what the live
    /// ones pin.
    pub fn maintenance(&self) -> anyhow::Result<Maintenance> {
        let lock = self.maintenance_lock()?;
        lock.lock()?;
        let mut in_use = BTreeMap::new();
        let mut live = BTreeSet::new();
        let Ok(files) = std::fs::read_dir(self.leases_dir()) else {
            return Ok(Maintenance {
                _lock: lock,
                in_use,
                live,
            });
        };
        for entry in files.flatten() {
            let path = entry.path();
            let Some(id) = lease_id(&path) else { continue };
            let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {
                    // Nobody holds it: its process died without removing it.
                    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                }
                Err(TryLockError::WouldBlock) => {
                    let record: LeaseRecord = serde_json::from_slice(&std::fs::read(&path)?)
                        .with_context(|| format!("{} does not parse", path.display()))?;
                    for key in record.keys {
                        in_use.insert(key, record.pid);
                    }
                    live.insert(id);
                }
                Err(TryLockError::Error(e)) => return Err(e).context(format!("cannot lock {}", path.display())),
            }
        }
        Ok(Maintenance {
            _lock: lock,
            in_use,
            live,
        })
    }
}

/// The id of a lease file's path (`<id>.json`).
fn lease_id(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".json").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lease_pins_its_keys_and_those_added_later_and_a_released_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let lease = store.lease(["a".to_string(), "b".to_string()]).unwrap();
        {
            let maintenance = store.maintenance().unwrap();
            assert_eq!(maintenance.user_of("a"), Some(std::process::id()));
            assert_eq!(maintenance.user_of("c"), None);
            assert!(maintenance.is_live(lease.id()));
        }
        lease.pin("c").unwrap();
        assert_eq!(store.maintenance().unwrap().user_of("c"), Some(std::process::id()));
        let id = lease.id().to_string();
        drop(lease);
        let maintenance = store.maintenance().unwrap();
        assert_eq!(maintenance.user_of("a"), None);
        assert!(!maintenance.is_live(&id));
    }

    #[test]
    fn the_file_of_a_dead_lease_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        std::fs::create_dir_all(store.leases_dir()).unwrap();
        let stale = store.leases_dir().join("1-2.json");
        std::fs::write(&stale, r#"{"pid": 1, "keys": ["a"]}"#).unwrap();
        let maintenance = store.maintenance().unwrap();
        assert_eq!(maintenance.user_of("a"), None);
        assert!(!stale.exists());
    }
}
