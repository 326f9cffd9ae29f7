//! The tree's persistent copy: every node and the sequence number it is current to, in sled.
//!
//! Layout (one sled tree, so that one [`sled::Batch`] covers everything and a batch is atomic):
//! - `n` ‖ handle (8 bytes, big-endian) → a node record, AES-256-GCM sealed under the store key
//!   with a random nonce and `veilfs-node` ‖ handle as AAD, so that a record moved under another
//!   handle fails to open. Names and node keys are secrets; nothing of ours is plaintext on disk.
//! - `m/check` → a sealed constant that proves, at open, that the key is the one the records
//!   were written with.
//! - `m/seq` → the sequence number (opaque to us) the records are current to.
//! - `m/next_ino` → the next inode number to hand out (8 bytes, big-endian).
//!
//! Nodes and the sequence number are written in the same batch: after a crash the store holds
//! either the old state with the old sequence number or the new one with the new, so catching up
//! from the stored sequence number replays exactly what is missing.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce, Tag};
use serde_json::{Map, Value};

use parking_lot::{Condvar, Mutex};

use super::{Handle, NodeKind, TreeError};
use crate::crypto::random_array;

const RECORD_VERSION: u8 = 1;
const NODE_PREFIX: u8 = b'n';
const KEY_CHECK: &[u8] = b"m/check";
const KEY_SEQ: &[u8] = b"m/seq";
const KEY_NEXT_INO: &[u8] = b"m/next_ino";
const CHECK_PLAINTEXT: &[u8] = b"veilfs tree store v1";
/// Records per sled batch; see [`TreeStore::commit`].
const MAX_BATCH: usize = 500;
/// How long small commits are gathered before they are written; see [`TreeStore`].
const WRITE_DELAY: Duration = Duration::from_millis(100);
/// How long a failed write waits before it is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// sled caches up to 1 GiB by default; the tree keeps its own in-memory copy, so sled's cache
/// only needs to cover write-back and the pages of one load pass.
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// A node as stored: everything [`super::Node`] has, plus its inode number. The attributes stay
/// serialized (JSON) so that loading does not parse them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub ino: u64,
    pub handle: Handle,
    pub parent: Option<Handle>,
    pub kind: NodeKind,
    pub name: Box<str>,
    pub size: u64,
    pub mtime_ns: i64,
    pub created: i64,
    pub mode: Option<u32>,
    pub symlink: Option<Box<str>>,
    pub key: Box<[u8]>,
    pub attrs: Box<[u8]>,
}

/// Everything a store holds, as read at start.
pub(crate) struct Loaded {
    pub records: Vec<Record>,
    pub seq: Option<String>,
    pub next_ino: Option<u64>,
}

/// What one batch changes in the store. `upserts` is consumed a slice at a time, so that a
/// full snapshot's records need not all exist at once.
pub(crate) struct Commit<I> {
    pub upserts: I,
    pub removes: Vec<Handle>,
    pub seq: Option<String>,
    pub next_ino: u64,
}

/// The sled database holding a tree. Open it with the key derived for this account; see the
/// module documentation for the layout.
///
/// Small commits (a file created, renamed or uploaded) are gathered for [`WRITE_DELAY`] and
/// written by a thread of the store's own as one batch. Written one by one, each cost a sled
/// log write that waits for the disk (sled seals and writes its buffer whenever no other
/// writer is in it) plus the thread hand-overs around it: about five per small file, most of
/// the daemon's CPU beside the FUSE requests themselves. Nothing is weaker for it: sled only
/// reaches the disk every half second by itself, the journal restores files not uploaded yet
/// (whatever the store holds of them), and a store behind the server catches up from its
/// stored sequence number, which is always written with the records it describes.
pub struct TreeStore {
    inner: Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    db: sled::Db,
    cipher: Aes256Gcm,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while writing to sled, so that what is written reaches it in commit order.
    writing: Mutex<()>,
}

/// Commits not written yet, merged: the last version of each record, and the sequence number
/// and next inode number of the last commit.
#[derive(Default)]
struct Pending {
    upserts: HashMap<Handle, Record>,
    removes: HashSet<Handle>,
    tail: Option<(Option<String>, u64)>,
    /// When the writer thread writes them.
    due: Option<Instant>,
    stop: bool,
}

impl Pending {
    fn merge(
        &mut self,
        removes: Vec<Handle>,
        upserts: Vec<Record>,
        seq: Option<String>,
        next: u64,
    ) {
        // In a commit, removals come before upserts (as in the batch that writes them).
        for h in removes {
            self.upserts.remove(&h);
            self.removes.insert(h);
        }
        for r in upserts {
            self.removes.remove(&r.handle);
            self.upserts.insert(r.handle, r);
        }
        self.tail = Some((seq, next));
    }

    /// Puts back `older`, whose write failed, under whatever was committed since.
    fn restore(&mut self, older: Pending) {
        let Some(tail) = older.tail else {
            return;
        };
        for (h, r) in older.upserts {
            if !self.removes.contains(&h) {
                self.upserts.entry(h).or_insert(r);
            }
        }
        for h in older.removes {
            if !self.upserts.contains_key(&h) {
                self.removes.insert(h);
            }
        }
        self.tail.get_or_insert(tail);
    }
}

impl std::fmt::Debug for TreeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeStore").finish_non_exhaustive()
    }
}

fn node_key(h: Handle) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = NODE_PREFIX;
    k[1..].copy_from_slice(&h.as_u64().to_be_bytes());
    k
}

fn node_aad(h: Handle) -> [u8; 19] {
    let mut aad = [0u8; 19];
    aad[..11].copy_from_slice(b"veilfs-node");
    aad[11..].copy_from_slice(&h.as_u64().to_be_bytes());
    aad
}

/// Opens the sled database at `path`. sled releases its file lock from a background thread
/// after the previous handle is dropped, so a store reopened at once (a remount right after
/// an unmount) can find it still held for a moment: that case is retried for up to 2 s.
fn open_db(path: &Path) -> Result<sled::Db, TreeError> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e)) if tries < 50 && e.to_string().contains("acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
            other => return Ok(other?),
        }
    }
}

impl TreeStore {
    /// Opens (creating if needed) the store at `path`. `key` must be the same at every open:
    /// the caller derives it from the account's secrets, so that the store is unreadable
    /// without them. A different key gives [`TreeError::KeyMismatch`].
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Self, TreeError> {
        let inner = Arc::new(Inner {
            db: open_db(path)?,
            cipher: Aes256Gcm::new(key.into()),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            writing: Mutex::new(()),
        });
        match inner.db.get(KEY_CHECK)? {
            Some(sealed) => {
                let plain = inner
                    .open_sealed(&sealed, KEY_CHECK)
                    .ok_or(TreeError::KeyMismatch)?;
                if plain != CHECK_PLAINTEXT {
                    return Err(TreeError::KeyMismatch);
                }
            }
            None => {
                let sealed = inner.seal(CHECK_PLAINTEXT.to_vec(), KEY_CHECK);
                inner.db.insert(KEY_CHECK, sealed)?;
            }
        }
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("veilfs-tree".into())
                .spawn(move || inner.write_when_due())
                .map_err(|e| TreeError::Store(e.into()))?
        };
        Ok(TreeStore {
            inner,
            writer: Some(writer),
        })
    }

    /// Forces everything committed so far to disk. Commits are atomic without it; this makes
    /// them durable (e.g. before unmount).
    pub fn flush(&self) -> Result<(), TreeError> {
        self.inner.write_pending()?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Everything the store holds. Only at open: commits still gathered are not in it.
    pub(crate) fn load(&self) -> Result<Loaded, TreeError> {
        self.inner.load()
    }

    /// Records `commit`. A small one is gathered with the others and written a moment later
    /// (see [`TreeStore`]); a large one (a full snapshot) is written at once, after them.
    pub(crate) fn commit(
        &self,
        commit: Commit<impl IntoIterator<Item = Record>>,
    ) -> Result<(), TreeError> {
        let mut upserts = commit.upserts.into_iter().peekable();
        let first: Vec<Record> = upserts.by_ref().take(MAX_BATCH).collect();
        if upserts.peek().is_none() {
            let mut pending = self.inner.pending.lock();
            pending.merge(commit.removes, first, commit.seq, commit.next_ino);
            if pending.due.is_none() {
                pending.due = Some(Instant::now() + WRITE_DELAY);
                self.inner.wake.notify_one();
            }
            return Ok(());
        }
        let _writing = self.inner.writing.lock();
        self.inner.write_pending_locked()?;
        self.inner.write(
            first.into_iter().chain(upserts),
            commit.removes,
            commit.seq,
            commit.next_ino,
        )
    }
}

impl Drop for TreeStore {
    /// Writes what is still gathered (the store's last commits) before sled closes.
    fn drop(&mut self) {
        self.inner.pending.lock().stop = true;
        self.inner.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Inner {
    /// The writer thread: writes gathered commits when they are due, and once more at stop.
    fn write_when_due(&self) {
        loop {
            let stop = {
                let mut pending = self.pending.lock();
                loop {
                    match pending.due {
                        _ if pending.stop => break,
                        None => self.wake.wait(&mut pending),
                        Some(due) if Instant::now() >= due => break,
                        Some(due) => {
                            self.wake.wait_until(&mut pending, due);
                        }
                    }
                }
                pending.stop
            };
            if let Err(error) = self.write_pending() {
                tracing::warn!(%error, "could not write the tree's store; will retry");
                if stop {
                    return;
                }
                let mut pending = self.pending.lock();
                pending.due = Some(Instant::now() + RETRY_DELAY);
            }
            if stop {
                return;
            }
        }
    }

    fn write_pending(&self) -> Result<(), TreeError> {
        let _writing = self.writing.lock();
        self.write_pending_locked()
    }

    /// Writes the gathered commits as one (caller holds `writing`). On failure they are
    /// gathered again, under whatever was committed meanwhile.
    fn write_pending_locked(&self) -> Result<(), TreeError> {
        let taken = {
            let mut pending = self.pending.lock();
            pending.due = None;
            Pending {
                upserts: std::mem::take(&mut pending.upserts),
                removes: std::mem::take(&mut pending.removes),
                tail: pending.tail.take(),
                ..Pending::default()
            }
        };
        let Some((seq, next_ino)) = taken.tail.clone() else {
            return Ok(());
        };
        let written = self.write(
            taken.upserts.values(),
            taken.removes.iter().copied().collect(),
            seq,
            next_ino,
        );
        if written.is_err() {
            self.pending.lock().restore(taken);
        }
        written
    }

    /// Writes records, removals, the sequence number and the next inode number atomically:
    /// one sled batch, or, for more than [`MAX_BATCH`] records, slices of it. sled holds a
    /// whole batch in memory several times over (about 6 KiB per record measured at 100 000
    /// records, far over the RSS budget), so a large commit (a full snapshot) goes in slices.
    /// The sequence number is removed first and written with the last slice: if the process
    /// dies in between, the store says it is current to nothing, the next mount fetches
    /// everything again, and the records still written serve only to keep inode numbers
    /// stable.
    fn write<R: Borrow<Record>>(
        &self,
        upserts: impl IntoIterator<Item = R>,
        removes: Vec<Handle>,
        seq: Option<String>,
        next_ino: u64,
    ) -> Result<(), TreeError> {
        let mut upserts = upserts.into_iter().peekable();
        let mut slice: Vec<R> = upserts.by_ref().take(MAX_BATCH).collect();
        if upserts.peek().is_some() {
            self.db.remove(KEY_SEQ)?;
            while upserts.peek().is_some() {
                let mut batch = sled::Batch::default();
                for r in slice.drain(..) {
                    let r = r.borrow();
                    batch.insert(
                        &node_key(r.handle)[..],
                        self.seal(encode(r), &node_aad(r.handle)),
                    );
                }
                self.db.apply_batch(batch)?;
                slice.extend(upserts.by_ref().take(MAX_BATCH));
            }
        }
        let mut batch = sled::Batch::default();
        for h in removes {
            batch.remove(&node_key(h)[..]);
        }
        for r in &slice {
            let r = r.borrow();
            let sealed = self.seal(encode(r), &node_aad(r.handle));
            batch.insert(&node_key(r.handle)[..], sealed);
        }
        match seq {
            Some(s) => batch.insert(KEY_SEQ, s.as_bytes()),
            None => batch.remove(KEY_SEQ),
        }
        batch.insert(KEY_NEXT_INO, &next_ino.to_be_bytes()[..]);
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// The sequence number the stored nodes are current to.
    fn seq(&self) -> Result<Option<String>, TreeError> {
        match self.db.get(KEY_SEQ)? {
            Some(v) => Ok(Some(
                String::from_utf8(v.to_vec()).map_err(|_| TreeError::Corrupt("sequence number"))?,
            )),
            None => Ok(None),
        }
    }

    /// Nonce ‖ ciphertext ‖ tag.
    fn seal(&self, mut plain: Vec<u8>, aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_array();
        let tag = match self.cipher.encrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            plain.as_mut_slice().into(),
        ) {
            Ok(tag) => tag,
            // Only inputs over 64 GiB are refused; a record is a few hundred bytes.
            Err(_) => unreachable!("AES-GCM input bounded by record size"),
        };
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        out.extend_from_slice(&tag);
        out
    }

    fn open_sealed(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        let tag = Tag::try_from(tag).ok()?;
        let mut buf = ct.to_vec();
        self.cipher
            .decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag)
            .ok()?;
        Some(buf)
    }

    fn load(&self) -> Result<Loaded, TreeError> {
        let mut records = Vec::with_capacity(self.db.len());
        for item in self.db.scan_prefix([NODE_PREFIX]) {
            let (k, v) = item?;
            let handle = match <[u8; 8]>::try_from(&k[1..]) {
                Ok(b) => Handle::from_u64(u64::from_be_bytes(b)),
                Err(_) => return Err(TreeError::Corrupt("node key")),
            };
            let plain = self
                .open_sealed(&v, &node_aad(handle))
                .ok_or(TreeError::Corrupt("node record does not authenticate"))?;
            records.push(decode(handle, &plain).ok_or(TreeError::Corrupt("node record"))?);
        }
        let next_ino = match self.db.get(KEY_NEXT_INO)? {
            Some(v) => Some(u64::from_be_bytes(
                <[u8; 8]>::try_from(v.as_ref()).map_err(|_| TreeError::Corrupt("next inode"))?,
            )),
            None => None,
        };
        Ok(Loaded {
            records,
            seq: self.seq()?,
            next_ino,
        })
    }
}

const FLAG_PARENT: u8 = 1;
const FLAG_MODE: u8 = 2;
const FLAG_SYMLINK: u8 = 4;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Fields are far below 4 GiB: names ≤ a few KiB, attributes a few KiB at most.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.name.len() + r.key.len() + r.attrs.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&r.ino.to_le_bytes());
    out.push(r.kind.to_u8());
    let mut flags = 0;
    if r.parent.is_some() {
        flags |= FLAG_PARENT;
    }
    if r.mode.is_some() {
        flags |= FLAG_MODE;
    }
    if r.symlink.is_some() {
        flags |= FLAG_SYMLINK;
    }
    out.push(flags);
    if let Some(p) = r.parent {
        out.extend_from_slice(&p.as_u64().to_le_bytes());
    }
    out.extend_from_slice(&r.size.to_le_bytes());
    out.extend_from_slice(&r.mtime_ns.to_le_bytes());
    out.extend_from_slice(&r.created.to_le_bytes());
    if let Some(m) = r.mode {
        out.extend_from_slice(&m.to_le_bytes());
    }
    put_bytes(&mut out, r.name.as_bytes());
    if let Some(s) = &r.symlink {
        put_bytes(&mut out, s.as_bytes());
    }
    put_bytes(&mut out, &r.key);
    put_bytes(&mut out, &r.attrs);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<Box<str>> {
        Some(std::str::from_utf8(self.bytes()?).ok()?.into())
    }
}

fn decode(handle: Handle, plain: &[u8]) -> Option<Record> {
    let mut r = Reader(plain);
    if r.u8()? != RECORD_VERSION {
        return None;
    }
    let ino = r.u64()?;
    let kind = NodeKind::from_u8(r.u8()?)?;
    let flags = r.u8()?;
    let parent = if flags & FLAG_PARENT != 0 {
        Some(Handle::from_u64(r.u64()?))
    } else {
        None
    };
    let size = r.u64()?;
    let mtime_ns = r.u64()? as i64;
    let created = r.u64()? as i64;
    let mode = if flags & FLAG_MODE != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    let name = r.string()?;
    let symlink = if flags & FLAG_SYMLINK != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let key = r.bytes()?.into();
    let attrs = r.bytes()?.into();
    if !r.0.is_empty() {
        return None;
    }
    Some(Record {
        ino,
        handle,
        parent,
        kind,
        name,
        size,
        mtime_ns,
        created,
        mode,
        symlink,
        key,
        attrs,
    })
}

/// The attributes as stored in memory and on disk: compact JSON.
pub(crate) fn attrs_to_bytes(attrs: &Map<String, Value>) -> Box<[u8]> {
    if attrs.is_empty() {
        return Box::default();
    }
    // Serializing a map of JSON values cannot fail: keys are strings, values are JSON.
    serde_json::to_vec(attrs)
        .expect("a JSON map serializes")
        .into()
}

pub(crate) fn attrs_from_bytes(bytes: &[u8]) -> Map<String, Value> {
    if bytes.is_empty() {
        return Map::new();
    }
    // The bytes are ours (serialized above, authenticated at load), so they parse.
    serde_json::from_slice(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            ino: 42,
            handle: Handle::from_u64(0x0102_0304_0506),
            parent: Some(Handle::from_u64(7)),
            kind: NodeKind::File,
            name: "naïve/name".into(),
            size: 123_456,
            mtime_ns: -5,
            created: 1_700_000_000,
            mode: Some(0o755),
            symlink: Some("../target".into()),
            key: vec![9; 32].into(),
            attrs: br#"{"n":"x"}"#.to_vec().into(),
        }
    }

    #[test]
    fn record_codec_round_trips_and_rejects_truncation() {
        let r = sample();
        let bytes = encode(&r);
        assert_eq!(decode(r.handle, &bytes), Some(r.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(decode(r.handle, &bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(r.handle, &longer), None);
        let bare = Record {
            parent: None,
            mode: None,
            symlink: None,
            ..r
        };
        assert_eq!(decode(bare.handle, &encode(&bare)), Some(bare));
    }

    fn numbered(i: u64) -> Record {
        Record {
            ino: 100 + i,
            handle: Handle::from_u64(i),
            name: format!("n{i}").into(),
            ..sample()
        }
    }

    #[test]
    fn large_commits_are_written_whole_a_slice_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = TreeStore::open(&dir.path().join("tree"), &[5; 32]).unwrap();
        // Around the slice size: under it, exactly one or two slices, two and a bit.
        let mut written = 0;
        let mut removed = Vec::new();
        for count in [3, MAX_BATCH, 2 * MAX_BATCH, 2 * MAX_BATCH + 7] {
            let count = count as u64;
            let seq = format!("sn-{count}");
            // Each commit removes the last record of the previous one (the first, none).
            if written > 0 {
                removed.push(written - 1);
            }
            store
                .commit(Commit {
                    upserts: (written..written + count).map(numbered),
                    removes: removed
                        .last()
                        .map(|&h| Handle::from_u64(h))
                        .into_iter()
                        .collect(),
                    seq: Some(seq.clone()),
                    next_ino: 1_000_000 + count,
                })
                .unwrap();
            written += count;
            store.flush().unwrap();
            let loaded = store.load().unwrap();
            assert_eq!(loaded.seq.as_deref(), Some(seq.as_str()));
            assert_eq!(loaded.next_ino, Some(1_000_000 + count));
            let mut records = loaded.records;
            records.sort_by_key(|r| r.ino);
            let handles: Vec<u64> = records.iter().map(|r| r.handle.as_u64()).collect();
            let want: Vec<u64> = (0..written).filter(|i| !removed.contains(i)).collect();
            assert_eq!(handles, want, "after a commit of {count}");
            assert_eq!(records.last(), Some(&numbered(written - 1)));
        }
    }

    fn small(i: u64, seq: &str) -> Commit<Vec<Record>> {
        Commit {
            upserts: vec![numbered(i)],
            removes: Vec::new(),
            seq: Some(seq.into()),
            next_ino: 1_000 + i,
        }
    }

    fn handles(loaded: &Loaded) -> Vec<u64> {
        let mut h: Vec<u64> = loaded.records.iter().map(|r| r.handle.as_u64()).collect();
        h.sort_unstable();
        h
    }

    #[test]
    fn small_commits_are_gathered_then_written_together_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = TreeStore::open(&dir.path().join("tree"), &[5; 32]).unwrap();
        store.commit(small(1, "a")).unwrap();
        store.commit(small(2, "b")).unwrap();
        // Gathered: nothing written yet.
        assert_eq!(store.load().unwrap().seq, None);
        store
            .commit(Commit {
                upserts: vec![Record {
                    name: "renamed".into(),
                    ..numbered(2)
                }],
                removes: vec![Handle::from_u64(1)],
                seq: Some("c".into()),
                next_ino: 1_005,
            })
            .unwrap();
        // The writer thread writes them once due, as one state: the last commit's.
        let deadline = Instant::now() + Duration::from_secs(10);
        let loaded = loop {
            let loaded = store.load().unwrap();
            if loaded.seq.is_some() || Instant::now() > deadline {
                break loaded;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(loaded.seq.as_deref(), Some("c"));
        assert_eq!(loaded.next_ino, Some(1_005));
        assert_eq!(handles(&loaded), vec![2]);
        assert_eq!(&*loaded.records[0].name, "renamed");
    }

    #[test]
    fn gathered_commits_are_written_at_close_and_before_a_large_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tree");
        {
            let store = TreeStore::open(&path, &[5; 32]).unwrap();
            store.commit(small(1, "a")).unwrap();
            // A large commit (a snapshot) removes record 1: it must land after the small one.
            let count = MAX_BATCH as u64 + 3;
            store
                .commit(Commit {
                    upserts: (10..10 + count).map(numbered),
                    removes: vec![Handle::from_u64(1)],
                    seq: Some("big".into()),
                    next_ino: 5_000,
                })
                .unwrap();
            let loaded = store.load().unwrap();
            assert_eq!(loaded.seq.as_deref(), Some("big"));
            assert!(!handles(&loaded).contains(&1));
            assert_eq!(loaded.records.len() as u64, count);
            store.commit(small(2, "after")).unwrap();
        }
        // Dropped at once: the last small commit was still gathered, and is written anyway.
        let store = TreeStore::open(&path, &[5; 32]).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.seq.as_deref(), Some("after"));
        assert!(handles(&loaded).contains(&2));
    }

    #[test]
    fn a_failed_write_is_gathered_again_under_newer_commits() {
        let mut older = Pending::default();
        older.merge(
            vec![Handle::from_u64(3)],
            vec![numbered(1), numbered(2)],
            Some("old".into()),
            7,
        );
        let mut newer = Pending::default();
        let renamed = Record {
            name: "new".into(),
            ..numbered(1)
        };
        // Since the failed write: record 1 changed, record 2 was removed, 3 came back.
        newer.merge(
            vec![Handle::from_u64(2)],
            vec![renamed.clone(), numbered(3)],
            Some("new".into()),
            9,
        );
        newer.restore(older);
        assert_eq!(newer.upserts.get(&Handle::from_u64(1)), Some(&renamed));
        assert!(!newer.upserts.contains_key(&Handle::from_u64(2)));
        assert!(newer.removes.contains(&Handle::from_u64(2)));
        assert_eq!(newer.upserts.get(&Handle::from_u64(3)), Some(&numbered(3)));
        assert!(!newer.removes.contains(&Handle::from_u64(3)));
        assert_eq!(newer.tail, Some((Some("new".into()), 9)));
        // Nothing newer: the failed write comes back whole.
        let mut empty = Pending::default();
        let mut again = Pending::default();
        again.merge(Vec::new(), vec![numbered(4)], None, 11);
        empty.restore(again);
        assert_eq!(empty.tail, Some((None, 11)));
        assert!(empty.upserts.contains_key(&Handle::from_u64(4)));
    }
}
