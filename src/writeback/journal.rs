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
//! A small file's content travels in its record (`sealed`): `close()` then waits for one sync,
//! the log's, instead of two (its staging file's and the log's), and the staging file's own
//! blocks and metadata reach the disk whenever the kernel writes them out. The log keeps that
//! content until the staging file is known to be on the disk: a compaction carries it over,
//! unless the log holds more than `COMPACT_INLINE_BYTES` of it, in which case the staging files
//! are synced first; at open, it is written back into them (a power loss may have lost their
//! unsynced pages). As it holds plaintext, like the staging files, the log
//! is also rewritten as soon as no queued file's content depends on it (uploads caught up).
//!
//! On-disk format of `journal.log`, a sequence of records:
//!
//! ```text
//!   u32 LE  length of the payload
//!   u32 LE  CRC-32 (IEEE) of the payload
//!   payload       one of:
//!     "S", u32 LE length of the entry's JSON, Entry as JSON, the content's bytes
//!                 (`sealed`: a queued upload and its whole content, for files up to
//!                 `INLINE_MAX` bytes)
//!     JSON:       {"put": Entry} (a queued upload, new or changed), {"forget": id},
//!                 {"attrs": FolderAttrs} (a folder's mode or time changed here, not yet on
//!                 the server: `vfs/attrs.rs`), {"attrsdone": {"target": h, "seq": n}} (that
//!                 change, if it is still change `n`, reached the server),
//!                 {"dir": LocalDir} (a folder made here, not yet on the server:
//!                 `vfs/dirs.rs`), {"dirdone": {"target": h, "node": s}} (it is on the server
//!                 as `s`: the records before it naming `h` as a folder now name `s`),
//!                 {"dirgone": h} (removed before it reached the server)
//! ```
//!
//! A `put` of an id whose content came `sealed` changes its metadata only: the content stays.
//! Logs written before the binary `sealed` record have it as JSON, `{"sealed": {"entry":
//! Entry, "data": base64}}`, which replay still reads. (The binary form spares each small
//! file's `close()` the base64 and JSON escaping of its content, a third more bytes to write,
//! and their reading back at a compaction; versions before it stop at its first record.)
//! Once a folder made here is on the server, a record written later never names its local
//! handle: the journal translates it as it writes.
//!
//! The records are followed by zeros: the file is extended ahead of its records, with zeros
//! really written (not `fallocate`d: filling an unwritten extent changes the extent tree),
//! so that a record lands in blocks the file already has. Its sync (at every `close()` of a
//! written file) then writes the record and nothing else, where an append also had to write
//! the inode's new size (on a journaling ext4, a journal commit per `close()`). A length of
//! zero ends the log.
//!
//! Replay stops at the first record that is cut short or fails its CRC (a write torn by a
//! crash: every record before it had returned, the torn one had not). The log is compacted —
//! the live entries written to `journal.log.new`, synced, renamed over it — when it is opened
//! and whenever it holds many more records than live entries.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Entry, FolderAttrs, LocalDir, Result, WritebackError, forget_if_current, is_current};

/// Records beyond which the log is compacted, if they outnumber live entries four to one.
const COMPACT_AFTER: usize = 4096;

/// A record too long to be ours: the rest of the log is treated as torn.
const MAX_RECORD: usize = 1 << 20;

/// Files up to this size travel in their record (see the module's doc).
pub const INLINE_MAX: u64 = 64 * 1024;

/// Content bytes in the log beyond which it is compacted (its staging files synced first).
const COMPACT_INLINE_BYTES: u64 = 16 * 1024 * 1024;

/// Bounds of how much the log file grows when a record goes past its end: by its own length,
/// so that a burst of closes extends it a few times only, while a file closed now and then
/// after a compaction costs a few pages of zeros, not megabytes.
const MIN_GROWTH: u64 = 64 * 1024;
const MAX_GROWTH: u64 = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Put(Entry),
    /// Written in binary (see [`encode`]); JSON, the content in base64, in older logs.
    Sealed {
        entry: Entry,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    Forget(u64),
    Attrs(FolderAttrs),
    AttrsDone {
        target: u64,
        seq: u64,
    },
    Dir(LocalDir),
    DirDone {
        target: u64,
        node: u64,
    },
    DirGone(u64),
}

impl Record {
    /// The record of a queued upload, with its content when given.
    fn of(entry: &Entry, data: Option<&[u8]>) -> Self {
        match data {
            Some(data) => Record::Sealed {
                entry: entry.clone(),
                data: data.to_vec(),
            },
            None => Record::Put(entry.clone()),
        }
    }
}

pub struct Journal {
    path: PathBuf,
    /// Where the staging files of the entries are (`<staging>/<id>`).
    staging: PathBuf,
    state: Mutex<State>,
    /// Appends known to be on the disk: a sync that finds its changes below this has nothing
    /// to do.
    durable: AtomicU64,
    /// Told each time `durable` moves (a sync or a compaction reached the disk).
    advanced: tokio::sync::Notify,
    /// When the last sync reached the disk.
    last_sync: Mutex<Option<std::time::Instant>>,
    /// Held while a sync runs. Syncs take turns: one that waited behind another often finds
    /// that the other covered its changes (group commit).
    syncing: Mutex<()>,
    /// Syncs that reached the disk (tests count them).
    disk_syncs: AtomicU64,
}

/// Where a record is in the log: its offset and its length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    at: u64,
    len: usize,
}

struct State {
    log: Arc<File>,
    /// Where the next record goes: the end of the records, where the zeros start.
    end: u64,
    /// The log file's length.
    len: u64,
    entries: BTreeMap<u64, Entry>,
    /// Folder changes not yet on the server, by folder.
    attrs: BTreeMap<u64, FolderAttrs>,
    /// Folders made here and not yet on the server, by local handle.
    dirs: BTreeMap<u64, LocalDir>,
    /// Folders made here that reached the server this mount: local handle → server handle.
    done: HashMap<u64, u64>,
    /// Records in the log file, live or not.
    records: usize,
    /// Live entries whose content is in the log and whose staging file may not be on the disk,
    /// each with where its `sealed` record is: a compaction reads just those records back.
    inline: BTreeMap<u64, Span>,
    /// Content bytes in the log.
    inline_bytes: u64,
    /// Appends so far (this mount): a [`Mark`] counts them.
    appended: u64,
}

/// A point in the log's history: every change made before it was taken (`Journal::mark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mark(u64);

impl Mark {
    /// The mark as a number (the staging pool keeps it with a discarded file), and back.
    pub fn get(self) -> u64 {
        self.0
    }

    pub fn at(n: u64) -> Self {
        Mark(n)
    }
}

impl Journal {
    /// Opens the log at `path` (creating it), replays it, writes the contents it holds back
    /// into their staging files under `staging`, durably, and compacts it.
    pub fn open(path: &Path, staging: &Path) -> Result<Self> {
        let Replayed {
            entries,
            contents,
            attrs,
            dirs,
        } = match std::fs::read(path) {
            Ok(bytes) => replay(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(source) => return Err(io(path, source)),
        };
        for (id, data) in &contents {
            write_synced(&staging.join(id.to_string()), data)?;
        }
        if !contents.is_empty() {
            sync_dir(staging)?;
        }
        let live = Live {
            entries: &entries,
            attrs: &attrs,
            dirs: &dirs,
        };
        let (log, end, len, _) = rewrite(path, live, &BTreeMap::new())?;
        Ok(Journal {
            path: path.to_path_buf(),
            staging: staging.to_path_buf(),
            state: Mutex::new(State {
                log: Arc::new(log),
                end,
                len,
                records: entries.len() + attrs.len() + dirs.len(),
                entries,
                attrs,
                dirs,
                done: HashMap::new(),
                inline: BTreeMap::new(),
                inline_bytes: 0,
                appended: 0,
            }),
            durable: AtomicU64::new(0),
            advanced: tokio::sync::Notify::new(),
            last_sync: Mutex::new(None),
            syncing: Mutex::new(()),
            disk_syncs: AtomicU64::new(0),
        })
    }

    /// Adds or replaces the entry of upload `entry.id`, with its whole content when `data` is
    /// given, then forgets `forgotten`; one write.
    pub fn put(&self, entry: &Entry, data: Option<&[u8]>, forgotten: &[u64]) -> Result<()> {
        let mut state = self.state.lock();
        let translated = state.translated(entry);
        let entry: &Entry = &translated;
        let mut records = vec![Record::of(entry, data)];
        records.extend(forgotten.iter().map(|&id| Record::Forget(id)));
        let first = self.append(&mut state, &records)?;
        state.entries.insert(entry.id, entry.clone());
        if let Some(data) = data {
            state.inline.insert(entry.id, first);
            state.inline_bytes += data.len() as u64;
        }
        for id in forgotten {
            state.entries.remove(id);
            state.inline.remove(id);
        }
        self.maybe_compact(&mut state)
    }

    /// Replaces the entry of upload `entry.id` if it is still queued.
    pub fn update(&self, entry: &Entry) -> Result<()> {
        let mut state = self.state.lock();
        if !state.entries.contains_key(&entry.id) {
            return Ok(());
        }
        let entry = state.translated(entry).into_owned();
        self.append(&mut state, &[Record::Put(entry.clone())])?;
        state.entries.insert(entry.id, entry);
        Ok(())
    }

    pub fn forget(&self, id: u64) -> Result<()> {
        let mut state = self.state.lock();
        if !state.entries.contains_key(&id) {
            return Ok(());
        }
        self.append(&mut state, &[Record::Forget(id)])?;
        state.entries.remove(&id);
        state.inline.remove(&id);
        self.maybe_compact(&mut state)
    }

    /// Records a folder's change not yet on the server (merged with its earlier one).
    pub fn put_attrs(&self, attrs: &FolderAttrs) -> Result<()> {
        let mut state = self.state.lock();
        let attrs = FolderAttrs {
            target: state.handle(attrs.target),
            ..attrs.clone()
        };
        self.append(&mut state, &[Record::Attrs(attrs.clone())])?;
        put_attrs_into(&mut state.attrs, attrs);
        self.maybe_compact(&mut state)
    }

    /// Folder `target`'s change `seq` reached the server: forgotten, unless a newer one came.
    pub fn attrs_done(&self, target: u64, seq: u64) -> Result<()> {
        let mut state = self.state.lock();
        let target = state.handle(target);
        if !is_current(&state.attrs, target, seq) {
            return Ok(());
        }
        self.append(&mut state, &[Record::AttrsDone { target, seq }])?;
        state.attrs.remove(&target);
        self.maybe_compact(&mut state)
    }

    /// Records folder `dir` made here (or its new name, folder, mode or time).
    pub fn put_dir(&self, dir: &LocalDir) -> Result<()> {
        let mut state = self.state.lock();
        let dir = LocalDir {
            parent: state.handle(dir.parent),
            ..dir.clone()
        };
        self.append(&mut state, &[Record::Dir(dir.clone())])?;
        state.dirs.insert(dir.target, dir);
        self.maybe_compact(&mut state)
    }

    /// Folder `target` made here is on the server as `node`: what names it names `node`.
    pub fn dir_done(&self, target: u64, node: u64) -> Result<()> {
        let mut state = self.state.lock();
        self.append(&mut state, &[Record::DirDone { target, node }])?;
        let st = &mut *state;
        st.done.insert(target, node);
        rehome(&mut st.entries, &mut st.dirs, &mut st.attrs, target, node);
        self.maybe_compact(&mut state)
    }

    /// Folder `target` made here is gone before it reached the server.
    pub fn dir_gone(&self, target: u64) -> Result<()> {
        let mut state = self.state.lock();
        if state.dirs.remove(&target).is_none() {
            return Ok(());
        }
        self.append(&mut state, &[Record::DirGone(target)])?;
        self.maybe_compact(&mut state)
    }

    /// Every folder made here and not yet on the server.
    pub fn dirs(&self) -> Vec<LocalDir> {
        self.state.lock().dirs.values().cloned().collect()
    }

    /// Every folder change not yet on the server.
    pub fn attrs(&self) -> Vec<FolderAttrs> {
        self.state.lock().attrs.values().cloned().collect()
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
        self.sync_to(self.mark())
    }

    /// The point the log has reached, for a later [`Journal::sync_to`].
    pub fn mark(&self) -> Mark {
        Mark(self.state.lock().appended)
    }

    /// Makes the changes made before `mark` survive a power loss. Each sync costs a flush of
    /// the disk's cache, and every flush waits for the others: when a sync since then (a
    /// `close()`'s, a commit's) already covered them, there is nothing to do.
    pub fn sync_to(&self, mark: Mark) -> Result<()> {
        if self.covered(mark) {
            return Ok(());
        }
        let _turn = self.syncing.lock();
        if self.covered(mark) {
            return Ok(());
        }
        // Shared, so that other changes need not wait for the disk (a compaction meanwhile
        // puts a new log in place; this one is then synced for nothing, harmlessly).
        let (log, reached) = {
            let state = self.state.lock();
            (state.log.clone(), state.appended)
        };
        log.sync_data().map_err(|e| io(&self.path, e))?;
        self.disk_syncs.fetch_add(1, Ordering::Relaxed);
        self.durable.fetch_max(reached, Ordering::Release);
        *self.last_sync.lock() = Some(std::time::Instant::now());
        self.advanced.notify_waiters();
        Ok(())
    }

    /// Syncs that reached the disk so far.
    #[cfg(test)]
    pub fn disk_syncs(&self) -> u64 {
        self.disk_syncs.load(Ordering::Relaxed)
    }

    /// Waits until the changes before `mark` are on the disk, letting another caller's sync
    /// do it when syncs are coming often (within `wait` of each other); else syncs itself.
    pub async fn sync_lazily(
        self: &Arc<Self>,
        mark: Mark,
        wait: std::time::Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        let streaming = (*self.last_sync.lock()).is_some_and(|t| t.elapsed() < wait);
        if streaming {
            self.wait_covered(mark, deadline).await;
        }
        if self.covered(mark) {
            return Ok(());
        }
        let journal = self.clone();
        tokio::task::spawn_blocking(move || journal.sync_to(mark))
            .await
            .expect("the sync does not panic")
    }

    /// Waits until another sync covers `mark`, or `deadline`.
    async fn wait_covered(&self, mark: Mark, deadline: tokio::time::Instant) {
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if self.covered(mark) {
                return;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return;
            }
        }
    }

    pub fn covered(&self, mark: Mark) -> bool {
        self.durable.load(Ordering::Acquire) >= mark.0
    }

    /// Writes `records` after the last one with one `write(2)`, so that a crash tears at most
    /// the last of them. A write that fails leaves the end where it was: the next record
    /// overwrites whatever part of it reached the file. Returns where the first record went.
    fn append(&self, state: &mut State, records: &[Record]) -> Result<Span> {
        let mut buf = Vec::new();
        let mut first = None;
        for record in records {
            encode(&mut buf, record);
            first.get_or_insert(buf.len());
        }
        let first = Span {
            at: state.end,
            len: first.unwrap_or(0),
        };
        let end = state.end + buf.len() as u64;
        let mut len = state.len;
        if end > len {
            // Past the zeros: the file grows, in the same write as the records.
            len = (end + len.clamp(MIN_GROWTH, MAX_GROWTH)).next_multiple_of(4096);
            buf.resize((len - state.end) as usize, 0);
        }
        state
            .log
            .write_all_at(&buf, state.end)
            .map_err(|e| io(&self.path, e))?;
        state.end = end;
        state.len = len;
        state.records += records.len();
        state.appended += 1;
        Ok(first)
    }

    fn maybe_compact(&self, state: &mut State) -> Result<()> {
        let live = state.entries.len() + state.attrs.len() + state.dirs.len();
        let many = state.records > COMPACT_AFTER && state.records > 4 * live;
        // Content of files already uploaded has no business staying on the disk (it holds
        // plaintext): once no queued file's content depends on the log, the log is rewritten.
        let stale_content = state.inline_bytes > 0 && state.inline.is_empty();
        if !many && !stale_content && state.inline_bytes <= COMPACT_INLINE_BYTES {
            return Ok(());
        }
        // The rewritten log carries the content of the queued files over, read from the log
        // itself, unless it holds too much of it: then their staging files are synced and the
        // content goes. Syncing costs a disk flush per file, under the lock that every close()
        // waits for; a burst of small files being uploaded has a thousand of them queued at
        // each compaction for too many records, so those carry their content instead.
        let carry_all = state.inline_bytes <= COMPACT_INLINE_BYTES;
        let queued: BTreeSet<u64> = state.inline.keys().copied().collect();
        let carry: Vec<u64> = if carry_all {
            queued.iter().copied().collect()
        } else {
            self.sync_staging(&queued)?
        };
        // Only the records carried over are read back, not the whole log: with thousands of
        // files closed since the last compaction, most of what the log holds is dead.
        let mut carried = BTreeMap::new();
        for id in carry {
            let span = state.inline[&id];
            let mut record = vec![0; span.len];
            state
                .log
                .read_exact_at(&mut record, span.at)
                .map_err(|e| io(&self.path, e))?;
            if let Some(data) = sealed_content(&record, id) {
                carried.insert(id, data);
            }
        }
        if carry_all {
            let missing: BTreeSet<u64> = queued
                .into_iter()
                .filter(|id| !carried.contains_key(id))
                .collect();
            if !missing.is_empty() {
                // Not in the log after all (cannot happen, barring a bug): on the disk then.
                self.sync_staging(&missing)?;
            }
        }
        let (log, spans);
        let live_records = Live {
            entries: &state.entries,
            attrs: &state.attrs,
            dirs: &state.dirs,
        };
        (log, state.end, state.len, spans) = rewrite(&self.path, live_records, &carried)?;
        state.log = Arc::new(log);
        state.records = live;
        state.inline = spans;
        state.inline_bytes = carried.values().map(|d| d.len() as u64).sum();
        // The rewritten log is on the disk, with its name: everything so far is.
        self.durable.fetch_max(state.appended, Ordering::Release);
        self.advanced.notify_waiters();
        Ok(())
    }

    /// Syncs the staging files of `ids` so that the log may drop their content; returns those
    /// that could not be (gone?), whose content stays in the log: the next open writes it back.
    fn sync_staging(&self, ids: &BTreeSet<u64>) -> Result<Vec<u64>> {
        let mut failed = Vec::new();
        for &id in ids {
            let path = self.staging.join(id.to_string());
            match File::open(&path).and_then(|f| f.sync_data()) {
                Ok(()) => {}
                // A small file kept in memory (`staging.rs`): the log is where its content is.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => failed.push(id),
                Err(error) => {
                    tracing::warn!(%error, id, "staging file unsynced: its content stays in the log");
                    failed.push(id);
                }
            }
        }
        if !ids.is_empty() {
            // Their names too: a staging file may have been renamed from the free ones.
            sync_dir(&self.staging)?;
        }
        Ok(failed)
    }
}

/// Writes `data` as the whole content of the (0600) file at `path`, durably: a staging file
/// written back at open, or the compacted log before it is renamed into place.
fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_data())
        .map_err(|e| io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn io(path: &Path, source: std::io::Error) -> WritebackError {
    WritebackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The first byte of a binary `sealed` payload (a JSON one starts with `{`).
const SEALED_TAG: u8 = b'S';

fn encode(buf: &mut Vec<u8>, record: &Record) {
    let header = buf.len();
    buf.extend_from_slice(&[0; 8]);
    match record {
        Record::Sealed { entry, data } => {
            buf.push(SEALED_TAG);
            let len_at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            serde_json::to_writer(&mut *buf, entry).expect("an entry serializes");
            let json_len = (buf.len() - len_at - 4) as u32;
            buf[len_at..len_at + 4].copy_from_slice(&json_len.to_le_bytes());
            buf.extend_from_slice(data);
        }
        _ => serde_json::to_writer(&mut *buf, record).expect("a record serializes"),
    }
    let payload = &buf[header + 8..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    buf[header..header + 4].copy_from_slice(&len.to_le_bytes());
    buf[header + 4..header + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A binary `sealed` payload (after its tag): the entry, then the content.
fn decode_sealed(payload: &[u8]) -> Option<Record> {
    let json_len = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?) as usize;
    let json = payload.get(4..4usize.checked_add(json_len)?)?;
    Some(Record::Sealed {
        entry: serde_json::from_slice(json).ok()?,
        data: payload[4 + json_len..].to_vec(),
    })
}

/// The record at the start of `bytes`, with its length (header included), if it is whole and
/// intact.
fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let record = match payload.split_first() {
        Some((&SEALED_TAG, rest)) => decode_sealed(rest)?,
        _ => serde_json::from_slice(payload).ok()?,
    };
    Some((record, 8 + len))
}

/// Content in base64 inside JSON, as older logs hold a `sealed` record's.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The content in `record` (one whole record, header included) if it is the intact `sealed`
/// record of upload `id`.
fn sealed_content(record: &[u8], id: u64) -> Option<Vec<u8>> {
    match decode(record)? {
        (Record::Sealed { entry, data }, _) if entry.id == id => Some(data),
        _ => None,
    }
}

/// What a log holds, up to its first torn or corrupt record: the live entries, the
/// contents that came in `sealed` records of live entries, the folder changes and the
/// folders made here.
#[derive(Default)]
struct Replayed {
    entries: BTreeMap<u64, Entry>,
    contents: BTreeMap<u64, Vec<u8>>,
    attrs: BTreeMap<u64, FolderAttrs>,
    dirs: BTreeMap<u64, LocalDir>,
}

fn replay(mut bytes: &[u8]) -> Replayed {
    let mut r = Replayed::default();
    while let Some((record, used)) = decode(bytes) {
        match record {
            Record::Put(entry) => {
                r.entries.insert(entry.id, entry);
            }
            Record::Sealed { entry, data } => {
                r.contents.insert(entry.id, data);
                r.entries.insert(entry.id, entry);
            }
            Record::Forget(id) => {
                r.entries.remove(&id);
                r.contents.remove(&id);
            }
            Record::Attrs(a) => {
                put_attrs_into(&mut r.attrs, a);
            }
            Record::AttrsDone { target, seq } => forget_if_current(&mut r.attrs, target, seq),
            Record::Dir(d) => {
                r.dirs.insert(d.target, d);
            }
            Record::DirDone { target, node } => {
                rehome(&mut r.entries, &mut r.dirs, &mut r.attrs, target, node)
            }
            Record::DirGone(target) => {
                r.dirs.remove(&target);
            }
        }
        bytes = &bytes[used..];
    }
    // The zeros after the records are the log's free space; anything else is a torn record.
    if bytes.iter().any(|&b| b != 0) {
        tracing::warn!(
            bytes = bytes.len(),
            "the upload journal ends in a torn record (a crash mid-write); ignored"
        );
    }
    r
}

/// Folder `target` made here is on the server as `node`: it is no longer pending, and the
/// entries, folders and folder changes naming it name `node`.
fn rehome(
    entries: &mut BTreeMap<u64, Entry>,
    dirs: &mut BTreeMap<u64, LocalDir>,
    attrs: &mut BTreeMap<u64, FolderAttrs>,
    target: u64,
    node: u64,
) {
    dirs.remove(&target);
    for e in entries.values_mut().filter(|e| e.parent == target) {
        e.parent = node;
    }
    for d in dirs.values_mut().filter(|d| d.parent == target) {
        d.parent = node;
    }
    if let Some(mut a) = attrs.remove(&target) {
        a.target = node;
        // A change made since, under the server's handle, is the newer one.
        let a = match attrs.remove(&node) {
            Some(newer) => merged(a, newer),
            None => a,
        };
        attrs.insert(node, a);
    }
}

/// Folder change `newer` in place of the folder's pending `older` one: its fields win, the
/// older one's others stay. The vfs merges a folder's changes before it records them, but not
/// across the folder reaching the server (a `chmod` under the local handle, a `utimensat`
/// under the server's): keeping the newer record alone lost the mode when the daemon died
/// before pushing both.
fn merged(older: FolderAttrs, newer: FolderAttrs) -> FolderAttrs {
    FolderAttrs {
        mode: newer.mode.or(older.mode),
        mtime_ns: newer.mtime_ns.or(older.mtime_ns),
        ..newer
    }
}

/// Records folder change `a`, merged with the folder's pending one (see [`merged`]).
fn put_attrs_into(attrs: &mut BTreeMap<u64, FolderAttrs>, a: FolderAttrs) {
    let a = match attrs.remove(&a.target) {
        Some(older) => merged(older, a),
        None => a,
    };
    attrs.insert(a.target, a);
}

impl State {
    /// The handle that names folder `h` now (a folder made here that reached the server is
    /// named by its server handle).
    fn handle(&self, h: u64) -> u64 {
        self.done.get(&h).copied().unwrap_or(h)
    }

    /// `entry` naming its folder by the handle it has now; as it is, usually.
    fn translated<'a>(&self, entry: &'a Entry) -> Cow<'a, Entry> {
        match self.done.get(&entry.parent) {
            Some(&parent) => Cow::Owned(Entry {
                parent,
                ..entry.clone()
            }),
            None => Cow::Borrowed(entry),
        }
    }
}

/// What a compacted log holds.
#[derive(Clone, Copy)]
struct Live<'a> {
    entries: &'a BTreeMap<u64, Entry>,
    attrs: &'a BTreeMap<u64, FolderAttrs>,
    dirs: &'a BTreeMap<u64, LocalDir>,
}

/// Replaces the log at `path` with one holding just `entries` (with their content for those
/// in `contents`), durably, and opens it for reading and writing; with its length, where its
/// records end (the next record extends it) and where the records holding `contents` are.
fn rewrite(
    path: &Path,
    live: Live,
    contents: &BTreeMap<u64, Vec<u8>>,
) -> Result<(File, u64, u64, BTreeMap<u64, Span>)> {
    let new = path.with_extension("log.new");
    let mut buf = Vec::new();
    let mut spans = BTreeMap::new();
    for a in live.attrs.values() {
        encode(&mut buf, &Record::Attrs(a.clone()));
    }
    for d in live.dirs.values() {
        encode(&mut buf, &Record::Dir(d.clone()));
    }
    for entry in live.entries.values() {
        let data = contents.get(&entry.id).map(Vec::as_slice);
        let at = buf.len();
        encode(&mut buf, &Record::of(entry, data));
        if data.is_some() {
            let len = buf.len() - at;
            spans.insert(entry.id, Span { at: at as u64, len });
        }
    }
    write_synced(&new, &buf)?;
    std::fs::rename(&new, path).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    let log = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    let len = buf.len() as u64;
    Ok((log, len, len, spans))
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

    /// The log's records, without the zeros that follow them.
    fn records(path: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        // A record's payload is JSON and ends in '}', never in a zero.
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }

    #[test]
    fn records_land_in_blocks_the_log_already_has_and_its_zeros_read_as_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        let mut lengths = BTreeSet::new();
        for id in 1..=2000 {
            journal.put(&entry(id, "f"), None, &[]).unwrap();
            lengths.insert(std::fs::metadata(&path).unwrap().len());
        }
        let used = records(&path).len() as u64;
        assert!(used > 100_000, "{used} bytes of records");
        // Doubling from 64 KiB: a handful of extensions for 2000 records, not one each.
        assert!(lengths.len() <= 4, "the log grew {} times", lengths.len());
        let len = *lengths.last().unwrap();
        assert!(
            len > used && len % 4096 == 0,
            "length {len}, records {used}"
        );
        drop(journal);
        let replayed = replay(&std::fs::read(&path).unwrap()).entries;
        assert_eq!(replayed.len(), 2000);
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert_eq!(journal.entries().len(), 2000);
        journal
            .put(&entry(9999, "after reopening"), None, &[])
            .unwrap();
        drop(journal);
        let replayed = replay(&std::fs::read(&path).unwrap()).entries;
        assert_eq!(replayed.len(), 2001);
    }

    #[test]
    fn changes_are_in_the_log_when_the_call_returns_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        journal.put(&entry(1, "a"), None, &[]).unwrap();
        journal.put(&entry(2, "b"), None, &[]).unwrap();
        journal.update(&entry(1, "renamed")).unwrap();
        journal.put(&entry(3, "c"), None, &[2]).unwrap();
        journal
            .update(&entry(2, "forgotten: no entry comes back"))
            .unwrap();
        // What another process (the next mount after a SIGKILL) reads: no sync was asked for.
        let replayed = replay(&std::fs::read(&path).unwrap()).entries;
        let names: Vec<_> = replayed.values().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["renamed", "c"]);
        assert_eq!(
            journal.entries(),
            replayed.into_values().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_sync_whose_changes_an_earlier_one_covered_leaves_the_disk_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        let syncs = || journal.disk_syncs.load(Ordering::Relaxed);
        journal.put(&entry(1, "a"), None, &[]).unwrap();
        let after_a = journal.mark();
        journal.put(&entry(2, "b"), None, &[]).unwrap();
        journal.sync_to(after_a).unwrap();
        assert_eq!(syncs(), 1);
        // That sync wrote everything appended before it started, "b" included.
        journal.sync_to(after_a).unwrap();
        journal.sync().unwrap();
        assert_eq!(syncs(), 1);
        journal.update(&entry(1, "renamed")).unwrap();
        journal.sync_to(after_a).unwrap();
        assert_eq!(syncs(), 1, "the rename came after the mark");
        journal.sync().unwrap();
        assert_eq!(syncs(), 2);
        // Many syncing at once: each returns with its change on the disk, in fewer flushes
        // than callers when they overlap, never more.
        std::thread::scope(|scope| {
            for id in 10..18 {
                let journal = &journal;
                scope.spawn(move || {
                    journal.put(&entry(id, "x"), None, &[]).unwrap();
                    let mark = journal.mark();
                    journal.sync_to(mark).unwrap();
                    assert!(journal.covered(mark));
                });
            }
        });
        assert!(syncs() <= 2 + 8, "{} syncs", syncs());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_ignored_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        {
            let journal = Journal::open(&path, dir.path()).unwrap();
            journal.put(&entry(1, "a"), None, &[]).unwrap();
            journal.put(&entry(2, "b"), None, &[]).unwrap();
        }
        let whole = records(&path);
        for cut in [whole.len() - 1, whole.len() - 20, whole.len() / 2 + 3] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let journal = Journal::open(&path, dir.path()).unwrap();
            let ids: Vec<_> = journal.entries().iter().map(|e| e.id).collect();
            assert_eq!(ids, [1], "cut at {cut}");
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert_eq!(journal.entries(), [entry(1, "a")]);
        // Reopening compacted the log: what follows is appended after valid records only.
        journal.put(&entry(4, "d"), None, &[]).unwrap();
        drop(journal);
        let ids: Vec<_> = replay(&std::fs::read(&path).unwrap())
            .entries
            .into_keys()
            .collect();
        assert_eq!(ids, [1, 4]);
    }

    #[test]
    fn a_long_log_is_compacted_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        journal.put(&entry(1, "kept"), None, &[]).unwrap();
        for id in 2..3000 {
            journal.put(&entry(id, "passing"), None, &[]).unwrap();
            journal.forget(id).unwrap();
        }
        let len = records(&path).len();
        assert!(len < 200_000, "the log was not compacted: {len} bytes");
        let replayed: Vec<_> = replay(&std::fs::read(&path).unwrap())
            .entries
            .into_values()
            .collect();
        assert_eq!(replayed, [entry(1, "kept")]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_sealed_content_is_written_back_at_open_and_survives_a_metadata_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let staged = dir.path().join("1");
        {
            let journal = Journal::open(&path, dir.path()).unwrap();
            std::fs::write(&staged, b"abc").unwrap();
            journal.put(&entry(1, "a"), Some(b"abc"), &[]).unwrap();
            journal.update(&entry(1, "renamed")).unwrap();
            std::fs::write(dir.path().join("2"), b"xyz").unwrap();
            journal.put(&entry(2, "b"), Some(b"xyz"), &[]).unwrap();
            journal.forget(2).unwrap();
        }
        // A power loss took the staging file's unsynced pages.
        std::fs::write(&staged, b"").unwrap();
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), b"abc");
        assert_eq!(journal.entries(), [entry(1, "renamed")]);
        assert_eq!(
            std::fs::read(dir.path().join("2")).unwrap(),
            b"xyz",
            "a forgotten entry's content is not written back"
        );
        // Reopening compacted the log; the staging file holds the content now.
        drop(journal);
        let contents = replay(&std::fs::read(&path).unwrap()).contents;
        assert!(contents.is_empty());
    }

    #[test]
    fn sealed_content_is_written_as_is_and_an_older_logs_base64_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        // A log as versions before the binary record wrote it, then one record of today's.
        let legacy = serde_json::to_vec(&serde_json::json!({"sealed": {
            "entry": entry(1, "old"),
            "data": "b2xkIGJ5dGVz", // "old bytes"
        }}))
        .unwrap();
        let mut log = Vec::new();
        log.extend_from_slice(&(legacy.len() as u32).to_le_bytes());
        log.extend_from_slice(&crc32fast::hash(&legacy).to_le_bytes());
        log.extend_from_slice(&legacy);
        let content = [0u8, 1, 2, b'"', b'\\', 0xff, b'{'];
        encode(&mut log, &Record::of(&entry(2, "new"), Some(&content)));
        assert!(
            log.windows(content.len()).any(|w| w == content),
            "the content is in the log byte for byte"
        );
        std::fs::write(&path, &log).unwrap();
        for id in [1, 2] {
            std::fs::write(dir.path().join(id.to_string()), b"").unwrap();
        }

        // Opening writes each content back into its (emptied) staging file.
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert_eq!(journal.entries(), [entry(1, "old"), entry(2, "new")]);
        assert_eq!(std::fs::read(dir.path().join("1")).unwrap(), b"old bytes");
        assert_eq!(std::fs::read(dir.path().join("2")).unwrap(), content);

        // A binary record whose entry claims more bytes than the record has is torn.
        let mut torn = Vec::new();
        encode(&mut torn, &Record::of(&entry(3, "x"), Some(b"abc")));
        torn[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        let payload_crc = crc32fast::hash(&torn[8..]);
        torn[4..8].copy_from_slice(&payload_crc.to_le_bytes());
        assert!(decode(&torn).is_none());
    }

    #[test]
    fn content_leaves_the_log_once_no_queued_file_depends_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        for id in 1..=2 {
            std::fs::write(dir.path().join(id.to_string()), b"plain").unwrap();
            journal.put(&entry(id, "f"), Some(b"plain"), &[]).unwrap();
        }
        journal.put(&entry(3, "big"), None, &[]).unwrap();
        journal.forget(1).unwrap();
        let log = std::fs::read(&path).unwrap();
        assert_eq!(
            replay(&log).contents.len(),
            1,
            "entry 2 still depends on the log"
        );
        journal.forget(2).unwrap();
        let log = std::fs::read(&path).unwrap();
        let needle = b"plain";
        assert!(
            !log.windows(needle.len()).any(|w| w == needle),
            "uploaded content still in the log"
        );
        assert_eq!(
            replay(&log).entries.keys().copied().collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn compacting_many_records_carries_the_content_over_without_syncing_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        std::fs::write(dir.path().join("1"), b"queued").unwrap();
        journal
            .put(&entry(1, "queued"), Some(b"queued"), &[])
            .unwrap();
        // Three compactions: the content is carried from the record it came in, then from
        // the rewritten logs; renamed between two of them.
        for id in 2..7000 {
            journal.put(&entry(id, "passing"), None, &[]).unwrap();
            journal.forget(id).unwrap();
            if id == 3000 {
                journal.update(&entry(1, "renamed")).unwrap();
            }
        }
        let len = records(&path).len();
        assert!(len < 200_000, "the log was not compacted: {len} bytes");
        // Its staging file was never synced, so the log must still hold the content.
        let Replayed {
            entries, contents, ..
        } = replay(&std::fs::read(&path).unwrap());
        assert_eq!(entries.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(entries[&1].name, "renamed");
        assert_eq!(contents.get(&1).map(Vec::as_slice), Some(&b"queued"[..]));
        // A power loss took the staging file's pages: the next open writes them back.
        std::fs::write(dir.path().join("1"), b"").unwrap();
        drop(journal);
        Journal::open(&path, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("1")).unwrap(), b"queued");
    }

    #[test]
    fn compaction_syncs_the_staging_files_before_dropping_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        let data = vec![7u8; INLINE_MAX as usize];
        let kept = 1000;
        std::fs::write(dir.path().join(kept.to_string()), &data).unwrap();
        journal.put(&entry(kept, "kept"), Some(&data), &[]).unwrap();
        for id in 1..400 {
            std::fs::write(dir.path().join(id.to_string()), &data).unwrap();
            journal
                .put(&entry(id, "passing"), Some(&data), &[])
                .unwrap();
            journal.forget(id).unwrap();
        }
        let len = records(&path).len() as u64;
        assert!(
            len < COMPACT_INLINE_BYTES * 2,
            "the log was not compacted: {len} bytes"
        );
        let Replayed {
            entries, contents, ..
        } = replay(&std::fs::read(&path).unwrap());
        assert!(entries.contains_key(&kept));
        assert!(!contents.contains_key(&kept), "compacted without content");
        // A staging file missing at compaction: its content stays in the log, and the next
        // open writes it back.
        std::fs::remove_file(dir.path().join("5")).unwrap();
        journal.put(&entry(5, "gone"), Some(b"five"), &[]).unwrap();
        for id in 2000..2400 {
            std::fs::write(dir.path().join(id.to_string()), &data).unwrap();
            journal
                .put(&entry(id, "passing"), Some(&data), &[])
                .unwrap();
            journal.forget(id).unwrap();
        }
        let Replayed {
            entries, contents, ..
        } = replay(&std::fs::read(&path).unwrap());
        assert!(entries.len() == 2 && entries.contains_key(&5));
        assert_eq!(contents.keys().copied().collect::<Vec<_>>(), [5]);
        drop(journal);
        Journal::open(&path, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("5")).unwrap(), b"five");
    }

    #[test]
    fn folder_changes_survive_a_reopen_and_only_the_newest_one_done_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let attrs = |target, seq| FolderAttrs {
            target,
            seq,
            mode: Some(0o700),
            mtime_ns: Some(seq as i64),
        };
        let journal = Journal::open(&path, dir.path()).unwrap();
        journal.put_attrs(&attrs(10, 1)).unwrap();
        journal.put_attrs(&attrs(11, 2)).unwrap();
        journal.put_attrs(&attrs(10, 3)).unwrap();
        // The push of change 1 ends after change 3 came: 3 stays.
        journal.attrs_done(10, 1).unwrap();
        journal.attrs_done(11, 2).unwrap();
        drop(journal);
        let replayed = replay(&std::fs::read(&path).unwrap()).attrs;
        assert_eq!(replayed.into_values().collect::<Vec<_>>(), [attrs(10, 3)]);
        // Reopening compacts: the change is carried over.
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert_eq!(journal.attrs(), [attrs(10, 3)]);
        journal.attrs_done(10, 3).unwrap();
        drop(journal);
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert!(journal.attrs().is_empty());
    }

    #[test]
    fn a_folder_change_from_before_it_reached_the_server_merges_with_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let journal = Journal::open(&path, dir.path()).unwrap();
        let (local, server) = (1 << 63 | 7, 42);
        let change = |target, seq, mode, mtime_ns| FolderAttrs {
            target,
            seq,
            mode,
            mtime_ns,
        };
        journal
            .put_attrs(&change(local, 1, Some(0o701), None))
            .unwrap();
        journal.dir_done(local, server).unwrap();
        journal
            .put_attrs(&change(server, 2, None, Some(5)))
            .unwrap();
        let both = change(server, 2, Some(0o701), Some(5));
        assert_eq!(journal.attrs(), std::slice::from_ref(&both));
        drop(journal);
        // The daemon died before pushing either: both fields come back.
        let replayed = replay(&std::fs::read(&path).unwrap()).attrs;
        assert_eq!(
            replayed.into_values().collect::<Vec<_>>(),
            std::slice::from_ref(&both)
        );
        let journal = Journal::open(&path, dir.path()).unwrap();
        assert_eq!(journal.attrs(), [both]);
        // The older change's push ending does not forget the merged one; the newer one's does.
        journal.attrs_done(local, 1).unwrap();
        assert_eq!(journal.attrs().len(), 1);
        journal.attrs_done(server, 2).unwrap();
        assert!(journal.attrs().is_empty());
    }

    #[test]
    fn folders_made_here_survive_a_reopen_and_once_on_the_server_are_named_by_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let local = |target, parent, name: &str| LocalDir {
            target,
            parent,
            name: name.into(),
            mode: Some(0o750),
            mtime_ns: 9,
        };
        let in_folder = |id, parent| Entry {
            parent,
            ..entry(id, "f")
        };
        let journal = Journal::open(&path, dir.path()).unwrap();
        // a (local 100) in the root (1), b (local 101) in a, c (local 102) in the root.
        journal.put_dir(&local(100, 1, "a")).unwrap();
        journal.put_dir(&local(101, 100, "b")).unwrap();
        journal.put_dir(&local(102, 1, "c")).unwrap();
        journal.put(&in_folder(1, 101), None, &[]).unwrap();
        journal.put(&in_folder(2, 100), None, &[]).unwrap();
        journal
            .put_attrs(&FolderAttrs {
                target: 100,
                seq: 1,
                mode: Some(0o700),
                mtime_ns: None,
            })
            .unwrap();
        // c is removed before it reached the server; a reaches it as 500.
        journal.dir_gone(102).unwrap();
        journal.dir_done(100, 500).unwrap();
        // Written after: whatever still names 100 is translated.
        journal.put(&in_folder(3, 100), None, &[]).unwrap();
        journal.put_dir(&local(103, 100, "d")).unwrap();
        journal.attrs_done(100, 1).unwrap();
        let expect_dirs = [local(101, 500, "b"), local(103, 500, "d")];
        assert_eq!(journal.dirs(), expect_dirs);
        drop(journal);

        // Replayed from the records as written, then from the compacted log.
        for _ in 0..2 {
            let journal = Journal::open(&path, dir.path()).unwrap();
            assert_eq!(journal.dirs(), expect_dirs);
            let parents: Vec<(u64, u64)> =
                journal.entries().iter().map(|e| (e.id, e.parent)).collect();
            assert_eq!(parents, [(1, 101), (2, 500), (3, 500)]);
            assert!(
                journal.attrs().is_empty(),
                "the change done under 500 is gone"
            );
        }
    }
}
