//! The journal of queued uploads: an append-only log file, replayed into a map at open.
//!
//! Why not sled (which holds the tree): sled buffers writes inside the process and writes them
//! out every half second, so a change survives a crash of the daemon only after an explicit
//! flush — an fsync of its own. Changes to queued files come in bursts (`rsync` renames,
//! `chmod`s and `touch`es every file right after closing it), and each one had to survive a
//! SIGKILL. Here every change is one `write(2)` to the log: in the kernel's page cache when the
//! call returns, so it survives the daemon being killed; [`Journal::sync`] (`fdatasync`) makes
//! everything so far survive a power loss too, and runs where that is promised: `close()` and
//! `fsync()` of a written file, and after uploads are committed.
//!
//! On-disk format of `journal.log`, a sequence of records:
//!
//! ```text
//!   u32 LE  length of the payload
//!   u32 LE  CRC-32 (IEEE) of the payload
//!   payload JSON: {"put": Entry} (a queued upload, new or changed) or {"forget": id}
//! ```
//!
//! Replay stops at the first record that is cut short or fails its CRC (a write torn by a
//! crash: every record before it had returned, the torn one had not). The log is compacted —
//! the live entries written to `journal.log.new`, synced, renamed over it — when it is opened
//! and whenever it holds many more records than live entries.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Entry, Result, WritebackError};

/// Records beyond which the log is compacted, if they outnumber live entries four to one.
const COMPACT_AFTER: usize = 4096;

/// A record too long to be ours: the rest of the log is treated as torn.
const MAX_RECORD: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Put(Entry),
    Forget(u64),
}

pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    log: File,
    entries: BTreeMap<u64, Entry>,
    /// Records in the log file, live or not.
    records: usize,
}

impl Journal {
    /// Opens the log at `path` (creating it), replays it and compacts it.
    pub fn open(path: &Path) -> Result<Self> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => replay(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(io(path, source)),
        };
        let log = rewrite(path, &entries)?;
        Ok(Journal {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                log,
                records: entries.len(),
                entries,
            }),
        })
    }

    /// Adds or replaces the entry of upload `entry.id`, then forgets `forgotten`; one write.
    pub fn put(&self, entry: &Entry, forgotten: &[u64]) -> Result<()> {
        let mut records = vec![Record::Put(entry.clone())];
        records.extend(forgotten.iter().map(|&id| Record::Forget(id)));
        let mut state = self.state.lock();
        self.append(&mut state, &records)?;
        state.entries.insert(entry.id, entry.clone());
        for id in forgotten {
            state.entries.remove(id);
        }
        self.maybe_compact(&mut state)
    }

    /// Replaces the entry of upload `entry.id` if it is still queued.
    pub fn update(&self, entry: &Entry) -> Result<()> {
        let mut state = self.state.lock();
        if !state.entries.contains_key(&entry.id) {
            return Ok(());
        }
        self.append(&mut state, &[Record::Put(entry.clone())])?;
        state.entries.insert(entry.id, entry.clone());
        Ok(())
    }

    pub fn forget(&self, id: u64) -> Result<()> {
        let mut state = self.state.lock();
        if !state.entries.contains_key(&id) {
            return Ok(());
        }
        self.append(&mut state, &[Record::Forget(id)])?;
        state.entries.remove(&id);
        self.maybe_compact(&mut state)
    }

    pub fn get(&self, id: u64) -> Option<Entry> {
        self.state.lock().entries.get(&id).cloned()
    }

    /// Every queued upload, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.state.lock().entries.values().cloned().collect()
    }

    /// Makes every change so far survive a power loss.
    pub fn sync(&self) -> Result<()> {
        // Cloned so that other changes need not wait for the disk.
        let log = self
            .state
            .lock()
            .log
            .try_clone()
            .map_err(|e| io(&self.path, e))?;
        log.sync_data().map_err(|e| io(&self.path, e))
    }

    /// Writes `records` with one `write(2)`, so that a crash tears at most the last of them.
    fn append(&self, state: &mut State, records: &[Record]) -> Result<()> {
        let mut buf = Vec::new();
        for record in records {
            encode(&mut buf, record);
        }
        state.log.write_all(&buf).map_err(|e| io(&self.path, e))?;
        state.records += records.len();
        Ok(())
    }

    fn maybe_compact(&self, state: &mut State) -> Result<()> {
        if state.records > COMPACT_AFTER && state.records > 4 * state.entries.len() {
            state.log = rewrite(&self.path, &state.entries)?;
            state.records = state.entries.len();
        }
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> WritebackError {
    WritebackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode(buf: &mut Vec<u8>, record: &Record) {
    let payload = serde_json::to_vec(record).expect("a record serializes");
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
}

/// The entries a log holds, up to its first torn or corrupt record.
fn replay(mut bytes: &[u8]) -> BTreeMap<u64, Entry> {
    let mut entries = BTreeMap::new();
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || bytes.len() < 8 + len {
            break;
        }
        let payload = &bytes[8..8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(Record::Put(entry)) => {
                entries.insert(entry.id, entry);
            }
            Ok(Record::Forget(id)) => {
                entries.remove(&id);
            }
            Err(_) => break,
        }
        bytes = &bytes[8 + len..];
    }
    if !bytes.is_empty() {
        tracing::warn!(
            bytes = bytes.len(),
            "the upload journal ends in a torn record (a crash mid-write); ignored"
        );
    }
    entries
}

/// Replaces the log at `path` with one holding just `entries`, durably, and opens it for
/// appending.
fn rewrite(path: &Path, entries: &BTreeMap<u64, Entry>) -> Result<File> {
    let new = path.with_extension("log.new");
    let mut buf = Vec::new();
    for entry in entries.values() {
        encode(&mut buf, &Record::Put(entry.clone()));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&new)
        .map_err(|e| io(&new, e))?;
    file.write_all(&buf).map_err(|e| io(&new, e))?;
    file.sync_data().map_err(|e| io(&new, e))?;
    std::fs::rename(&new, path).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, name: &str) -> Entry {
        Entry {
            id,
            target: 7,
            parent: 1,
            name: name.into(),
            mode: Some(0o644),
            mtime_ns: 5,
            size: 3,
        }
    }

    #[test]
    fn changes_are_in_the_log_when_the_call_returns_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path).unwrap();
        journal.put(&entry(1, "a"), &[]).unwrap();
        journal.put(&entry(2, "b"), &[]).unwrap();
        journal.update(&entry(1, "renamed")).unwrap();
        journal.put(&entry(3, "c"), &[2]).unwrap();
        journal
            .update(&entry(2, "forgotten: no entry comes back"))
            .unwrap();
        // What another process (the next mount after a SIGKILL) reads: no sync was asked for.
        let replayed = replay(&std::fs::read(&path).unwrap());
        let names: Vec<_> = replayed.values().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["renamed", "c"]);
        assert_eq!(
            journal.entries(),
            replayed.into_values().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_ignored_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        {
            let journal = Journal::open(&path).unwrap();
            journal.put(&entry(1, "a"), &[]).unwrap();
            journal.put(&entry(2, "b"), &[]).unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        for cut in [whole.len() - 1, whole.len() - 20, whole.len() / 2 + 3] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let journal = Journal::open(&path).unwrap();
            let ids: Vec<_> = journal.entries().iter().map(|e| e.id).collect();
            assert_eq!(ids, [1], "cut at {cut}");
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.entries(), [entry(1, "a")]);
        // Reopening compacted the log: what follows is appended after valid records only.
        journal.put(&entry(4, "d"), &[]).unwrap();
        drop(journal);
        let ids: Vec<_> = replay(&std::fs::read(&path).unwrap()).into_keys().collect();
        assert_eq!(ids, [1, 4]);
    }

    #[test]
    fn a_long_log_is_compacted_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path).unwrap();
        journal.put(&entry(1, "kept"), &[]).unwrap();
        for id in 2..3000 {
            journal.put(&entry(id, "passing"), &[]).unwrap();
            journal.forget(id).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 200_000, "the log was not compacted: {len} bytes");
        let replayed: Vec<_> = replay(&std::fs::read(&path).unwrap())
            .into_values()
            .collect();
        assert_eq!(replayed, [entry(1, "kept")]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
