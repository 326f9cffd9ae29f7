//! Write-back: local staging files and the journal that makes queued uploads survive a crash.
//!
//! A file's life on the write path is a small state machine (the filesystem core, `vfs`, drives
//! it; this module holds the durable parts):
//!
//! ```text
//!   (new) ──create──▶ open (a local node, no server round trip; see vfs/local.rs)
//!   clean ──open for write──▶ open (staging file, writers > 0; in memory up to 64 KiB)
//!   open ──last close / fsync──▶ queued   (staging file sealed, journal entry written, fsynced)
//!   queued ──write-back delay, worker──▶ uploading ──node committed (in a batch)──▶ clean
//!                                        (entry forgotten, staging file emptied for reuse)
//!   queued/uploading ──open for write──▶ open again on a *copy* of the sealed file, so the
//!                                        upload in flight never sees a half-written state
//!   uploading ──server down──▶ queued (retried with backoff; the write is never dropped)
//! ```
//!
//! Staging files hold plaintext (the one exception to "nothing plaintext on disk", DESIGN.md),
//! so they and their directory are private to the user (0600 / 0700) and emptied as soon as
//! their upload is committed. A small file is staged in memory (`staging.rs`) and reaches the
//! disk only in its journal record, which holds the same plaintext under the same rules. The
//! journal (`journal.rs`, an append-only log) holds one entry per sealed staging file, written
//! and synced with the file's data before `close()`/`fsync()` returns, so an acknowledged
//! write is on disk and will be uploaded by this mount or the next one. Later changes to a
//! queued file's name, folder, mode and times are in the journal when the call returns (a
//! crash of the daemon keeps them) and on the disk at its next sync.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod journal;
mod staging;
use journal::Journal;
pub use journal::Mark;
use staging::Pool;
pub use staging::{Hold, Staged};

use crate::content::Content;

// A file kept in memory has no staging file to sync at `close()`: its content must fit the
// journal record that makes it durable.
const _: () = assert!(staging::MEMORY_MAX <= journal::INLINE_MAX);

#[derive(Debug, Error)]
pub enum WritebackError {
    #[error("staging I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal: {0}")]
    Journal(#[from] sled::Error),
    #[error("journal entry {0} is corrupt")]
    Corrupt(u64),
}

impl WritebackError {
    /// The underlying I/O error, for errno mapping (ENOSPC, EDQUOT …).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            WritebackError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, WritebackError>;

/// A folder's mode or modification time changed here and not yet on the server: the fields
/// set (the others are the folder's own) and a sequence number, bumped at each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderAttrs {
    /// The folder (its handle).
    pub target: u64,
    pub seq: u64,
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
}

/// Whether change `seq` is still folder `target`'s latest in `pending` (a push of an older one
/// must not clear or overwrite a newer one).
pub fn is_current(pending: &BTreeMap<u64, FolderAttrs>, target: u64, seq: u64) -> bool {
    pending.get(&target).is_some_and(|a| a.seq == seq)
}

/// Forgets folder `target`'s change `seq` from `pending` unless a newer one replaced it.
pub fn forget_if_current(pending: &mut BTreeMap<u64, FolderAttrs>, target: u64, seq: u64) {
    if is_current(pending, target, seq) {
        pending.remove(&target);
    }
}

/// How long [`Writeback::sync_lazily`] waits for another sync to cover its changes.
const LAZY_SYNC_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A folder made here and not yet on the server (`mkdir` answers before the server has it;
/// see `vfs/dirs.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDir {
    /// Its local handle.
    pub target: u64,
    /// The folder it is in (a server handle, or another local folder's).
    pub parent: u64,
    pub name: String,
    pub mode: Option<u32>,
    pub mtime_ns: i64,
}

/// A queued upload, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Staging file id.
    pub id: u64,
    /// The node the upload replaces (its handle), found again by handle after a remount.
    pub target: u64,
    /// Where to put the content should the target be gone (deleted by another client).
    pub parent: u64,
    pub name: String,
    pub mode: Option<u32>,
    pub mtime_ns: i64,
    pub size: u64,
}

/// The staging directory and the journal of one mount.
pub struct Writeback {
    staging: Pool,
    journal: Arc<Journal>,
}

impl Writeback {
    /// Opens (or creates) the staging area under `dir`. Staging files without a journal entry
    /// are leftovers of writes never acknowledged (a crash before `close()` returned): removed.
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |source| WritebackError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let staging_dir = dir.join("staging");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging_dir)
            .map_err(io)?;
        let journal = Arc::new(Journal::open(&dir.join("journal.log"), &staging_dir)?);
        migrate_sled_journal(dir, &journal)?;
        let pending: HashSet<u64> = journal.entries().iter().map(|e| e.id).collect();
        let mut max = pending.iter().copied().max().unwrap_or(0);
        for entry in std::fs::read_dir(&staging_dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name() == "free" {
                continue;
            }
            let id = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok());
            match id {
                Some(id) if pending.contains(&id) => {}
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            max = max.max(id.unwrap_or(0));
        }
        // A discarded staging file is emptied only once the journal's `forget` of it is on the
        // disk: after a power loss, an entry that came back must find its content. Its mark is
        // the journal's when it was discarded, after that `forget`.
        let synced = journal.clone();
        let staging = Pool::open(&staging_dir, max + 1, move |mark| {
            synced
                .sync_to(journal::Mark::at(mark))
                .map_err(std::io::Error::other)
        })
        .map_err(io)?;
        Ok(Writeback { staging, journal })
    }

    pub fn path_of(&self, id: u64) -> PathBuf {
        self.staging.path_of(id)
    }

    fn io_error(&self, id: u64) -> impl FnOnce(std::io::Error) -> WritebackError + '_ {
        move |source| WritebackError::Io {
            path: self.path_of(id),
            source,
        }
    }

    /// A new, empty staging file: kept in memory while it is small, else a file (0600), a
    /// discarded one reused when there is one (see `staging.rs`: creating inodes is what small
    /// files cost most).
    pub fn create(&self) -> Result<(u64, Staged)> {
        self.created(self.staging.create_small())
    }

    fn created(&self, file: std::io::Result<Staged>) -> Result<(u64, Staged)> {
        let file = file.map_err(|source| WritebackError::Io {
            path: self.staging.dir().to_path_buf(),
            source,
        })?;
        Ok((file.id(), file))
    }

    /// A new staging file holding a copy of staging file `from`.
    pub fn copy(&self, from: u64) -> Result<(u64, Staged)> {
        let input = self.reopen(from)?;
        let small = input.len().is_ok_and(|len| len <= staging::MEMORY_MAX);
        let (id, file) = if small {
            self.create()?
        } else {
            self.created(self.staging.create())?
        };
        if let Err(source) = file.copy_from(&input) {
            // A half copy would hold disk space nobody refers to.
            self.discard(id);
            return Err(WritebackError::Io {
                path: self.path_of(id),
                source,
            });
        }
        Ok((id, file))
    }

    /// Reopens a sealed staging file (after a remount).
    pub fn reopen(&self, id: u64) -> Result<Staged> {
        self.staging.reopen(id).map_err(self.io_error(id))
    }

    /// What the upload of staging file `id` reads, with a hold that keeps a file from being
    /// reused while its path is read (its content kept in memory comes as bytes).
    pub fn content(&self, id: u64) -> Result<(Content, Hold)> {
        self.staging.content(id).map_err(self.io_error(id))
    }

    /// Seals a staging file into the journal: its data and the entry reach the disk before this
    /// returns, which is what lets `close()` and `fsync()` report success. A small file's
    /// content goes in its journal record (one sync, the journal's; see `journal.rs`); a larger
    /// one's staging file is synced first. The file's older queued versions (`superseded`) are
    /// forgotten in the same write to the journal (uploading them would only be overwritten),
    /// so a crash keeps the newest acknowledged version. Their staging files are left to the
    /// caller to discard (a running upload may still read one).
    pub fn enqueue(&self, file: &Staged, entry: &Entry, superseded: &[u64]) -> Result<()> {
        let mark = self.enqueue_unsynced(file, entry, superseded)?;
        self.sync_to(mark)
    }

    /// [`Writeback::enqueue`] up to the journal's sync: the entry is in the log (and the
    /// content of a large file on the disk) when this returns; it is on the disk once
    /// [`Writeback::sync_to`] of the mark returned has. For a caller that holds a lock others
    /// need: the sync, a disk flush, can then wait outside it.
    pub fn enqueue_unsynced(
        &self,
        file: &Staged,
        entry: &Entry,
        superseded: &[u64],
    ) -> Result<Mark> {
        let io = self.io_error(entry.id);
        if entry.size <= journal::INLINE_MAX {
            let mut data = vec![0; entry.size as usize];
            file.read_exact_at(&mut data, 0).map_err(io)?;
            self.journal.put(entry, Some(&data), superseded)?;
        } else {
            file.sync_data().map_err(io)?;
            if file.reused() {
                // Its name came by a rename, which its own sync does not cover.
                self.staging.sync_dir().map_err(self.io_error(entry.id))?;
            }
            self.journal.put(entry, None, superseded)?;
        }
        Ok(self.journal.mark())
    }

    /// Waits until the journal is on the disk at least up to `mark`.
    pub fn sync_to(&self, mark: Mark) -> Result<()> {
        self.journal.sync_to(mark)
    }

    /// Rewrites a queued entry (its metadata changed before the upload ran). In the journal
    /// when this returns, so it survives a crash of the daemon; on the disk with the next
    /// [`Writeback::sync`], as a local file system's metadata changes reach its disk with its
    /// next commit.
    pub fn update(&self, entry: &Entry) -> Result<()> {
        self.journal.update(entry)
    }

    pub fn get(&self, id: u64) -> Result<Option<Entry>> {
        Ok(self.journal.get(id))
    }

    /// Forgets an upload (committed, or cancelled by an unlink) and deletes its staging file.
    pub fn finish(&self, id: u64) -> Result<()> {
        self.forget(id)?;
        self.discard(id);
        Ok(())
    }

    /// Removes an upload from the journal, keeping its staging file (still open for writing).
    /// Survives a crash of the daemon at once; reaches the disk with the next
    /// [`Writeback::sync`]: callers that must not see the entry again after a power loss sync.
    pub fn forget(&self, id: u64) -> Result<()> {
        self.journal.forget(id)
    }

    /// Makes every journal change so far durable.
    pub fn sync(&self) -> Result<()> {
        self.journal.sync()
    }

    /// [`Writeback::sync`] for a caller that can wait a little: during a stream of closes
    /// (each `close()` syncs), one of theirs covers these changes within a fraction of a
    /// millisecond, so this waits up to [`LAZY_SYNC_WAIT`] for that; with no sync that recent,
    /// it syncs at once. Upload commits used to sync at once always, and a `close()` arriving
    /// during such a sync waited for it, then for its own: two disk flushes in its path.
    pub async fn sync_lazily(&self) -> Result<()> {
        let mark = self.journal.mark();
        self.journal.sync_lazily(mark, LAZY_SYNC_WAIT).await
    }

    /// A staging file no entry refers to any more: emptied and kept for reuse once nothing
    /// holds it, off the caller's path (truncating a large file takes a while).
    pub fn discard(&self, id: u64) {
        self.staging.discard(id, self.journal.mark().get());
    }

    /// Waits for the discarded staging files to be recycled (tests).
    pub fn settle(&self) {
        self.staging.settle();
    }

    /// Records folder `dir`, made here and not yet on the server (or its new fields). In the
    /// journal when this returns; on the disk with the next sync (a `close()` of a file in
    /// it, whose entry comes after it in the log, syncs it too).
    pub fn put_dir(&self, dir: &LocalDir) -> Result<()> {
        self.journal.put_dir(dir)
    }

    /// Folder `target` made here is on the server as `node`.
    pub fn dir_done(&self, target: u64, node: u64) -> Result<()> {
        self.journal.dir_done(target, node)
    }

    /// Folder `target` made here was removed before it reached the server.
    pub fn dir_gone(&self, target: u64) -> Result<()> {
        self.journal.dir_gone(target)
    }

    /// The folders made here and not yet on the server.
    pub fn pending_dirs(&self) -> Vec<LocalDir> {
        self.journal.dirs()
    }

    /// Records a folder's change not yet on the server. In the journal when this returns (a
    /// crash of the daemon keeps it); on the disk with the next [`Writeback::sync`].
    pub fn put_attrs(&self, attrs: &FolderAttrs) -> Result<()> {
        self.journal.put_attrs(attrs)
    }

    /// Folder `target`'s change `seq` is on the server.
    pub fn attrs_done(&self, target: u64, seq: u64) -> Result<()> {
        self.journal.attrs_done(target, seq)
    }

    /// Every folder change not yet on the server.
    pub fn pending_attrs(&self) -> Vec<FolderAttrs> {
        self.journal.attrs()
    }

    /// Every queued upload, oldest first.
    pub fn pending(&self) -> Result<Vec<Entry>> {
        Ok(self.journal.entries())
    }
}

/// Mounts made before the journal became a log kept it in sled (`journal/`): its entries are
/// moved into the log, durably, then the sled directory is removed.
fn migrate_sled_journal(dir: &Path, journal: &Journal) -> Result<()> {
    let old = dir.join("journal");
    if !old.is_dir() {
        return Ok(());
    }
    let db = sled::Config::new().path(&old).open()?;
    let mut moved = 0;
    for kv in db.iter() {
        let (k, v) = kv?;
        let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
        let entry: Entry = serde_json::from_slice(&v).map_err(|_| WritebackError::Corrupt(id))?;
        journal.put(&entry, None, &[])?;
        moved += 1;
    }
    journal.sync()?;
    drop(db);
    std::fs::remove_dir_all(&old).map_err(|source| WritebackError::Io { path: old, source })?;
    if moved > 0 {
        tracing::info!(moved, "moved queued uploads from the old journal format");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            target: 7,
            parent: 1,
            name: "a".into(),
            mode: Some(0o644),
            mtime_ns: 5,
            size: 3,
        }
    }

    #[test]
    fn queued_entries_survive_reopen_and_unqueued_staging_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, unqueued) = {
            let wb = Writeback::open(dir.path()).unwrap();
            let (kept, f) = wb.create().unwrap();
            f.write_all_at(b"abc", 0).unwrap();
            assert!(f.in_memory(), "a small file has no staging file");
            assert!(!wb.path_of(kept).exists());
            wb.enqueue(&f, &entry(kept), &[]).unwrap();
            let (unqueued, u) = wb.create().unwrap();
            // One that grows large gets a file, private to its owner.
            u.write_all_at(&[1; 70_000], 0).unwrap();
            assert!(!u.in_memory());
            let mode = std::fs::metadata(wb.path_of(unqueued))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            (kept, unqueued)
        };
        // Its content came back from the journal record, into a file of its own.
        let wb = Writeback::open(dir.path()).unwrap();
        assert_eq!(wb.pending().unwrap(), vec![entry(kept)]);
        assert_eq!(std::fs::read(wb.path_of(kept)).unwrap(), b"abc");
        let mode = std::fs::metadata(wb.path_of(kept))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!wb.path_of(unqueued).exists());
        let (next, _) = wb.create().unwrap();
        assert!(next > unqueued, "ids are never reused");
        let (copy, c) = wb.copy(kept).unwrap();
        let mut buf = [0u8; 3];
        c.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc");
        assert_eq!(c.len().unwrap(), 3);
        assert!(copy > next);
        wb.finish(kept).unwrap();
        assert!(wb.pending().unwrap().is_empty());
        wb.settle();
        assert!(!wb.path_of(kept).exists());
    }

    #[test]
    fn a_journal_in_the_old_sled_format_is_moved_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("staging")).unwrap();
        std::fs::write(dir.path().join("staging").join("9"), b"abc").unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path().join("journal"))
                .open()
                .unwrap();
            db.insert(9u64.to_be_bytes(), serde_json::to_vec(&entry(9)).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let wb = Writeback::open(dir.path()).unwrap();
        assert_eq!(wb.pending().unwrap(), vec![entry(9)]);
        assert_eq!(std::fs::read(wb.path_of(9)).unwrap(), b"abc");
        assert!(!dir.path().join("journal").exists());
        drop(wb);
        // And it stays in the log.
        let wb = Writeback::open(dir.path()).unwrap();
        assert_eq!(wb.pending().unwrap(), vec![entry(9)]);
        let (next, _) = wb.create().unwrap();
        assert!(next > 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lazy_sync_rides_on_another_one_and_alone_syncs_itself() {
        let dir = tempfile::tempdir().unwrap();
        let wb = std::sync::Arc::new(Writeback::open(dir.path()).unwrap());
        let syncs = || wb.journal.disk_syncs();
        // No sync lately: it syncs itself, at once.
        wb.journal.put(&entry(1), None, &[]).unwrap();
        let before = syncs();
        wb.sync_lazily().await.unwrap();
        assert_eq!(syncs(), before + 1);
        assert!(wb.journal.covered(wb.journal.mark()));
        // A close's sync meanwhile covers its changes: no sync of its own.
        wb.journal.put(&entry(2), None, &[]).unwrap();
        let before = syncs();
        let other = wb.clone();
        let close = tokio::spawn(async move {
            // A change of its own: had the lazy sync flushed first, this would need another.
            other.journal.put(&entry(3), None, &[]).unwrap();
            other.sync().unwrap();
        });
        wb.sync_lazily().await.unwrap();
        close.await.unwrap();
        assert_eq!(syncs(), before + 1, "one disk flush for both");
    }
}
