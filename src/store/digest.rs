//! File digests and the stat cache that spares re-hashing unchanged files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Size and content hash of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content, hex.
    pub blake3: String,
}

/// Hashes a file's content.
pub fn hash_file(path: &Path) -> io::Result<FileDigest> {
    let mut hasher = blake3::Hasher::new();
    let size = std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(FileDigest {
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// What a file looked like when it was hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StatRecord {
    inode: u64,
    mtime_ns: i64,
    size: u64,
    blake3: String,
}

/// Remembers the hash of each file by (inode, mtime, size), as DVC's state
/// database does, so that a cached run does not read large files again.
/// Saved as JSON in the store; concurrent writers merge, and losing a record
/// only costs a re-hash.
pub struct StatCache {
    path: PathBuf,
    records: Mutex<Option<BTreeMap<PathBuf, StatRecord>>>,
    dirty: Mutex<bool>,
}

impl StatCache {
    /// A stat cache backed by `path` (read on first use).
    pub fn new(path: PathBuf) -> Self {
        StatCache {
            path,
            records: Mutex::new(None),
            dirty: Mutex::new(false),
        }
    }

    fn read_file(&self) -> BTreeMap<PathBuf, StatRecord> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// The digest of `path`, from the cache when the file is unchanged.
    pub fn digest(&self, path: &Path) -> io::Result<FileDigest> {
        let meta = std::fs::metadata(path)?;
        let stat = |blake3: String| StatRecord {
            inode: meta.ino(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            size: meta.len(),
            blake3,
        };
        {
            let mut records = self.records.lock().expect("stat cache lock");
            let records = records.get_or_insert_with(|| self.read_file());
            if let Some(record) = records.get(path)
                && *record == stat(record.blake3.clone())
            {
                return Ok(FileDigest {
                    size: record.size,
                    blake3: record.blake3.clone(),
                });
            }
        }
        let digest = hash_file(path)?;
        tracing::debug!(file = %path.display(), bytes = digest.size, "hashed (not in the stat cache)");
        self.remember(path, stat(digest.blake3.clone()));
        Ok(digest)
    }

    /// Records the digest of a file that was just hashed elsewhere.
    pub fn insert(&self, path: &Path, digest: &FileDigest) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        self.remember(
            path,
            StatRecord {
                inode: meta.ino(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                size: meta.len(),
                blake3: digest.blake3.clone(),
            },
        );
        Ok(())
    }

    fn remember(&self, path: &Path, record: StatRecord) {
        let mut records = self.records.lock().expect("stat cache lock");
        let records = records.get_or_insert_with(|| self.read_file());
        records.insert(path.to_path_buf(), record);
        *self.dirty.lock().expect("stat cache lock") = true;
    }

    /// Writes the cache back if anything was added, merging with what other
    /// processes saved meanwhile and dropping records of files that are gone.
    pub fn save(&self) -> io::Result<()> {
        let mut dirty = self.dirty.lock().expect("stat cache lock");
        if !*dirty {
            return Ok(());
        }
        let records = self.records.lock().expect("stat cache lock");
        let mut merged = self.read_file();
        if let Some(ours) = records.as_ref() {
            merged.extend(ours.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        merged.retain(|path, _| path.exists());
        let parent = self.path.parent().expect("stat cache lives in a directory");
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".stat-cache.{}.tmp", super::host::process()));
        std::fs::write(&tmp, serde_json::to_vec(&merged)?)?;
        std::fs::rename(&tmp, &self.path)?;
        *dirty = false;
        Ok(())
    }
}

/// Every regular file under `dir`, as sorted `/`-separated relative paths.
pub fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                let rel = path.strip_prefix(root).expect("walked path is under its root");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            } else {
                return Err(io::Error::other(format!(
                    "{} is neither a file nor a directory; stage outputs must be plain files",
                    path.display()
                )));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}
