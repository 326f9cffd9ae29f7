//! File content: opening, reading through the block cache with read-ahead and the whole-file
//! integrity check, and writing into staging files that write-back uploads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use super::{LocalFile, OpenHandle, Result, Vfs, VfsError, now_ns};
use crate::cache::{ChunkId, ContentId};
use crate::remote::{Fetched, Remote, RemoteError};
use crate::tree::Node;
use crate::writeback::Entry;

/// Written staging data is sent to the disk in blocks of this size (see `Vfs::write`).
const STAGING_WRITEBACK: u64 = 8 * 1024 * 1024;

/// How much of a file's content a writer's open copies into its staging file per read.
const LOCAL_COPY_PIECE: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub(super) enum FetchFailure {
    Integrity,
    /// The node is gone from the server (replaced or deleted meanwhile).
    Gone,
    Access,
    Failed(Arc<str>),
}

impl From<FetchFailure> for VfsError {
    fn from(f: FetchFailure) -> Self {
        match f {
            FetchFailure::Integrity => VfsError::Integrity,
            FetchFailure::Gone => VfsError::Remote(RemoteError::NotFound),
            FetchFailure::Access => VfsError::Access,
            FetchFailure::Failed(msg) => {
                VfsError::Remote(RemoteError::Unavailable(msg.to_string()))
            }
        }
    }
}

type SharedFetch = Shared<BoxFuture<'static, Result<(), FetchFailure>>>;

enum Tags {
    /// Tags of the chunks fetched so far, by offset.
    Collecting(BTreeMap<u64, [u8; 16]>),
    Verified,
}

/// Reads in flight and what the integrity check has learnt.
#[derive(Default)]
pub(super) struct ReadState {
    inflight: Mutex<HashMap<ChunkId, SharedFetch>>,
    tags: Mutex<HashMap<ContentId, Tags>>,
    /// Contents whose whole-file check failed: every read answers EIO.
    bad: Mutex<HashSet<ContentId>>,
    /// Chunks that failed their own check: reads reaching them answer EIO (or stop short
    /// before them), the rest of the file still reads.
    corrupt: Mutex<HashSet<ChunkId>>,
    /// Bytes of fetched chunks waiting to be written to the disk cache.
    disk_backlog: AtomicU64,
}

/// The most bytes of fetched chunks waiting for the disk cache (see `Vfs::write_through`).
const MAX_DISK_BACKLOG: u64 = 64 * 1024 * 1024;

/// Bytes covered by a run of consecutive chunks.
fn run_len(run: &[Range<u64>]) -> u64 {
    match (run.first(), run.last()) {
        (Some(first), Some(last)) => last.end - first.start,
        _ => 0,
    }
}

/// Freed beyond the immediate need when the staging disk is full, so that the next writes do
/// not each hit the full disk again.
const ROOM_SLACK: u64 = 16 * 1024 * 1024;
/// Rounds of eviction a write that finds the staging disk full may go through.
const MAKE_ROOM_TRIES: usize = 3;

/// Errors that may say "no space left on the device".
pub(super) trait StorageError {
    fn is_full(&self) -> bool;
}

impl StorageError for std::io::Error {
    fn is_full(&self) -> bool {
        self.kind() == std::io::ErrorKind::StorageFull
    }
}

impl StorageError for crate::writeback::WritebackError {
    fn is_full(&self) -> bool {
        self.io_error().is_some_and(StorageError::is_full)
    }
}

impl<R: Remote> Vfs<R> {
    pub(super) fn add_handle(&self, ino: u64, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(
            fh,
            Arc::new(OpenHandle {
                ino,
                writable,
                last_end: Default::default(),
            }),
        );
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<OpenHandle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(VfsError::BadHandle)
    }

    /// Opens a file. Returns the handle and whether the kernel may keep cached pages (the
    /// content is unchanged since it last read it).
    pub async fn open(
        self: &Arc<Self>,
        ino: u64,
        write: bool,
        truncate: bool,
    ) -> Result<(u64, bool)> {
        let node = self.node(ino)?;
        if node.kind.is_dir() {
            return Err(VfsError::IsDir);
        }
        if write {
            self.writable()?;
            self.may_change(&node)?;
        }
        // The handle exists before the file is checked, so a removal racing with this open
        // either sees it or is seen (see `Vfs::remove_file`).
        let fh = self.add_handle(ino, write);
        match self.open_handle(ino, &node, write, truncate).await {
            Ok(keep) => Ok((fh, keep)),
            Err(e) => {
                self.handles.lock().remove(&fh);
                Err(e)
            }
        }
    }

    async fn open_handle(
        self: &Arc<Self>,
        ino: u64,
        node: &Node,
        write: bool,
        truncate: bool,
    ) -> Result<bool> {
        if self.removing.lock().contains(&ino) {
            // A removal is under way: it holds `ns` until it is over.
            drop(self.ns.lock().await);
        }
        let local = match self.files.lock().get_mut(&ino) {
            // Opened now, under the lock and after the handle is counted: a queued file
            // resting without a descriptor gets one for as long as it has handles, and with it
            // a hold, so that its content stays readable if it is deleted or replaced
            // meanwhile (`cancel_uploads` discards its staging file).
            Some(local) => {
                local.staged(&self.wb)?;
                true
            }
            None => false,
        };
        if !local && !self.tree.read().is_live(ino) && !self.hidden.lock().contains_key(&ino) {
            // Removed between the kernel's lookup and this open, and nothing was kept: the
            // kernel looks the name up again and opens what it holds now.
            return Err(VfsError::Stale);
        }
        if write {
            self.ensure_local(ino, truncate).await?;
            if let Some(local) = self.files.lock().get_mut(&ino) {
                local.writers += 1;
            }
            return Ok(false);
        }
        // `node` was read before the checks above, and a new file's first upload may have
        // committed since (the tree first, then its local state dropped): a key missing from
        // that copy is asked of the tree again before the open is refused.
        if !local && node.key.is_empty() && self.content_node(ino)?.key.is_empty() {
            return Err(VfsError::Access);
        }
        Ok(!local)
    }

    /// The node holding `ino`'s content on the server: the tree's, or the rubbish bin's for
    /// a file unlinked while open.
    fn content_node(&self, ino: u64) -> Result<Node> {
        if let Some(node) = self.hidden.lock().get(&ino) {
            return Ok(node.clone());
        }
        self.node(ino)
    }

    /// Gives `ino` local content (a staging file), downloading the current content unless it
    /// is about to be truncated.
    async fn ensure_local(self: &Arc<Self>, ino: u64, truncate: bool) -> Result<()> {
        if self.truncate_local(ino, truncate)? {
            return Ok(());
        }
        let node = self.content_node(ino)?;
        let (id, file) = self.wb.create()?;
        let size = if truncate { 0 } else { node.size };
        let mut at = 0;
        while at < size {
            let piece = match self.read_remote(&node, at, LOCAL_COPY_PIECE, false).await {
                Ok(piece) => piece,
                Err(e) => {
                    self.wb.discard(id);
                    return Err(e);
                }
            };
            if piece.is_empty() {
                break;
            }
            file.write_all_at(&piece, at)?;
            at += piece.len() as u64;
        }
        let mut files = self.files.lock();
        if files.contains_key(&ino) {
            // Another open won the race; use its content.
            drop(files);
            self.wb.discard(id);
            self.truncate_local(ino, truncate)?;
            return Ok(());
        }
        files.insert(
            ino,
            LocalFile {
                id,
                file: Some(Arc::new(file)),
                size,
                mtime_ns: if truncate { now_ns() } else { node.mtime_ns },
                writers: 0,
                dirty: truncate && node.size > 0,
                sealed: false,
                queued: Vec::new(),
                committed: 0,
                // Opened for writing after an unlink: written, never uploaded.
                unlinked: !self.tree.read().is_live(ino),
            },
        );
        Ok(())
    }

    /// With local content present: truncates it when asked and answers true.
    fn truncate_local(&self, ino: u64, truncate: bool) -> Result<bool> {
        let mut files = self.files.lock();
        let Some(local) = files.get_mut(&ino) else {
            return Ok(false);
        };
        if truncate && local.size > 0 {
            self.writable_copy(local, false)?;
            local.staged(&self.wb)?.set_len(0)?;
            local.size = 0;
            local.dirty = true;
            local.mtime_ns = now_ns();
        }
        Ok(true)
    }

    /// Runs a staging operation that needs about `need` bytes of disk; if the disk is full,
    /// evicts cached chunks (expendable, unlike staged writes) and tries again.
    pub(super) fn making_room<T, E>(
        &self,
        need: u64,
        mut op: impl FnMut() -> Result<T, E>,
    ) -> Result<T>
    where
        E: StorageError + Into<VfsError>,
    {
        let mut result = op();
        // Chunks still being written to the disk cache (read-ahead) can take the room just
        // freed: try again while evicting frees something, a few times.
        for _ in 0..MAKE_ROOM_TRIES {
            match &result {
                Err(e) if e.is_full() => {}
                _ => break,
            }
            if self.cache.release_disk(need + ROOM_SLACK) == 0 {
                break;
            }
            tracing::info!(
                need,
                "staging disk full: evicted cached chunks to make room"
            );
            result = op();
        }
        result.map_err(Into::into)
    }

    /// Before changing local content: a sealed staging file belongs to its queued upload, so
    /// writes continue on a copy (or on a new empty file when `empty`).
    fn writable_copy(&self, local: &mut LocalFile, empty: bool) -> Result<()> {
        if !local.sealed || local.unlinked {
            return Ok(());
        }
        let (id, file) = self.making_room(local.size, || {
            if empty {
                self.wb.create()
            } else {
                self.wb.copy(local.id)
            }
        })?;
        local.id = id;
        local.file = Some(Arc::new(file));
        local.sealed = false;
        Ok(())
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(VfsError::BadHandle);
        }
        let mut files = self.files.lock();
        let local = files.get_mut(&h.ino).ok_or(VfsError::BadHandle)?;
        self.writable_copy(local, false)?;
        let file = local.staged(&self.wb)?;
        let buffered = self.making_room(data.len() as u64, || file.write_at(data, offset))?;
        let end = offset + data.len() as u64;
        local.size = local.size.max(end);
        local.mtime_ns = now_ns();
        local.dirty = true;
        drop(files);
        // `close()` returns only once the staging file is on disk. Each block a writer
        // completes goes to the disk now, while it writes the next, so that the fsync at the
        // close finds little left to write. Outside the lock: the call may wait for the disk.
        if buffered > 0 && end / STAGING_WRITEBACK != offset / STAGING_WRITEBACK {
            let block = end / STAGING_WRITEBACK * STAGING_WRITEBACK - STAGING_WRITEBACK;
            file.start_writeback(block, STAGING_WRITEBACK);
        }
        Ok(data.len() as u32)
    }

    /// Sets file `ino`'s size; returns whether it changed.
    pub(super) async fn truncate(self: &Arc<Self>, ino: u64, size: u64) -> Result<bool> {
        let node = self.node(ino)?;
        if node.kind.is_dir() {
            return Err(VfsError::IsDir);
        }
        self.ensure_local(ino, size == 0).await?;
        let (changed, queue_now) = {
            let mut files = self.files.lock();
            let local = files.get_mut(&ino).ok_or(VfsError::NotFound)?;
            let changed = local.size != size;
            if changed {
                self.writable_copy(local, false)?;
                local.staged(&self.wb)?.set_len(size)?;
                local.size = size;
                local.dirty = true;
                local.mtime_ns = now_ns();
            }
            (changed, local.writers == 0)
        };
        if queue_now {
            self.queue(ino)?;
            self.drop_idle(ino);
        }
        Ok(changed)
    }

    /// `flush` (each `close()`): queue what was written, durably.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let h = self.handle(fh)?;
        if h.writable {
            self.queue(h.ino)?;
        }
        Ok(())
    }

    /// `fsync`: as `flush`, and the metadata changes of queued files (renames, modes, times,
    /// which the journal holds without syncing each) reach the disk too.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        self.flush(fh)?;
        self.wb.sync()?;
        Ok(())
    }

    /// `fsyncdir`: the changes in the folder that the journal holds without syncing each
    /// (renames and metadata of queued files, folder modes and times on their way to the
    /// server) reach the disk. The others are on the server before their request is answered.
    pub fn fsyncdir(&self) -> Result<()> {
        self.wb.sync()?;
        Ok(())
    }

    pub fn release(self: &Arc<Self>, fh: u64) -> Result<()> {
        let Some(h) = self.handles.lock().remove(&fh) else {
            return Err(VfsError::BadHandle);
        };
        let mut result = Ok(());
        if h.writable {
            let last = {
                let mut files = self.files.lock();
                match files.get_mut(&h.ino) {
                    Some(local) => {
                        local.writers = local.writers.saturating_sub(1);
                        local.writers == 0
                    }
                    None => false,
                }
            };
            if last {
                result = self.queue(h.ino);
                self.drop_idle(h.ino);
            }
        }
        if !self.has_handles(h.ino) {
            self.last_closed(h.ino);
        }
        result
    }

    /// The last handle of `ino` is closed: what was kept of an unlinked file goes.
    ///
    /// Handles are counted again under the `files` lock: an `open` of the unlinked file (the
    /// kernel resolved its name before the unlink) registers its handle, then looks for the
    /// local content under that lock. Counted before it, such an open slipped in between: it
    /// found the content, which was then dropped, and its reads failed with EACCES (a file
    /// never uploaded has no key to read it from the server) while `stat` showed 0 bytes.
    /// Now either this sees the handle and keeps everything, or the open finds nothing and
    /// answers ESTALE, and the kernel resolves the name again.
    fn last_closed(self: &Arc<Self>, ino: u64) {
        let hidden = {
            let mut files = self.files.lock();
            if self.has_handles(ino) {
                return;
            }
            if files.get(&ino).is_some_and(|l| l.unlinked)
                && let Some(local) = files.remove(&ino)
            {
                self.wb.discard(local.id);
            } else if let Some(local) = files.get_mut(&ino) {
                local.rest();
            }
            self.hidden.lock().remove(&ino)
        };
        let Some(node) = hidden else {
            return;
        };
        self.emptying.fetch_add(1, Ordering::AcqRel);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.remote.delete(&node).await {
                tracing::warn!(%error, "could not empty an unlinked file from the rubbish bin");
            }
            this.emptying.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Seals the staging file of `ino` into the journal when it holds unqueued changes, and
    /// hands it to the upload workers.
    pub(super) fn queue(&self, ino: u64) -> Result<()> {
        let node = self.node(ino).ok();
        let mut files = self.files.lock();
        let Some(local) = files.get_mut(&ino) else {
            return Ok(());
        };
        if !local.dirty || local.unlinked {
            return Ok(());
        }
        let Some(node) = node else {
            return Ok(());
        };
        let entry = Entry {
            id: local.id,
            target: node.handle.as_u64(),
            parent: node.parent.map_or(0, |p| p.as_u64()),
            name: node.name.clone(),
            mode: node.mode,
            mtime_ns: local.mtime_ns,
            size: local.size,
        };
        // Older versions still queued (the file was flushed, then written again: a program
        // that forks while writing makes the kernel flush at each child's exec) are dropped
        // rather than uploaded and overwritten. One being committed right now may still land
        // first; the new version then replaces it (`retire` retargets it).
        let file = local.staged(&self.wb)?;
        let superseded = std::mem::take(&mut local.queued);
        let mark = self
            .wb
            .enqueue_unsynced(&file, &entry, &superseded)
            .inspect_err(|_| local.queued.clone_from(&superseded))?;
        local.sealed = true;
        local.dirty = false;
        local.queued.push(entry.id);
        drop(files);
        // The disk flush outside the lock: every upload starting or committing and every
        // write takes it, and they queued behind each `close()`'s sync (perf: upload tasks
        // spinning on it were most of the daemon's `sched_yield`s).
        let synced = self.wb.sync_to(mark);
        for id in superseded {
            self.uploads.cancel(id);
            self.wb.discard(id);
        }
        // Uploaded even if the sync failed: the entry is in the log, and the content too.
        self.uploads.submit(entry.id, entry.size);
        Ok(synced?)
    }

    /// Drops the local state of a file nobody writes and nothing is queued for.
    pub(super) fn drop_idle(&self, ino: u64) {
        // Counted under the lock, as in `last_closed`.
        let mut files = self.files.lock();
        let open = self.has_handles(ino);
        let Some(local) = files.get_mut(&ino) else {
            return;
        };
        if local.writers == 0
            && local.queued.is_empty()
            && !local.dirty
            // An unlinked file's readers have nothing else to read.
            && !(local.unlinked && open)
        {
            let id = local.id;
            files.remove(&ino);
            self.wb.discard(id);
        } else if !open {
            local.rest();
        }
    }

    pub(super) fn set_local_mtime(&self, ino: u64, mtime_ns: i64) -> Result<()> {
        let mut files = self.files.lock();
        if let Some(local) = files.get_mut(&ino) {
            local.mtime_ns = mtime_ns;
            for &id in &local.queued {
                if let Some(mut e) = self.wb.get(id)? {
                    e.mtime_ns = mtime_ns;
                    self.wb.update(&e)?;
                }
            }
        }
        Ok(())
    }

    /// The file is gone: its queued uploads are dropped from the journal.
    pub(super) fn cancel_uploads(&self, ino: u64) -> Result<()> {
        let mut files = self.files.lock();
        let open = self.has_handles(ino);
        let Some(local) = files.get_mut(&ino) else {
            return Ok(());
        };
        if open {
            // Held while the handles read it: discarded below, it is then emptied only after
            // the last one closes (`last_closed`). Usually held already (`open_handle`).
            local.staged(&self.wb)?;
        }
        local.unlinked = true;
        local.dirty = false;
        let cancelled = std::mem::take(&mut local.queued);
        // In the journal when `finish` returns: a deleted file's upload does not come back
        // after a crash of the daemon.
        for &id in &cancelled {
            self.wb.finish(id)?;
            self.uploads.cancel(id);
        }
        if !open {
            // Open handles keep reading it until the last closes (`last_closed`).
            let id = local.id;
            files.remove(&ino);
            self.wb.discard(id);
        }
        Ok(())
    }

    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let h = self.handle(fh)?;
        let local = match self.files.lock().get_mut(&h.ino) {
            Some(l) => Some((l.staged(&self.wb)?, l.size)),
            None => None,
        };
        if let Some((file, len)) = local {
            if offset >= len {
                return Ok(Bytes::new());
            }
            let mut buf = vec![0u8; (len - offset).min(size as u64) as usize];
            file.read_exact_at(&mut buf, offset)?;
            return Ok(buf.into());
        }
        let node = self.content_node(h.ino)?;
        if node.key.is_empty() {
            return Err(VfsError::Access);
        }
        let sequential = h.last_end.load(Ordering::Relaxed) == offset;
        let data = match self
            .read_remote(&node, offset, size as u64, sequential)
            .await
        {
            Err(VfsError::Remote(RemoteError::NotFound)) => {
                // Replaced while we read (a re-upload keeps the inode): read the new content,
                // as a reader of a file rewritten in place would.
                match self.content_node(h.ino) {
                    Ok(now) if now.handle != node.handle => {
                        self.read_remote(&now, offset, size as u64, false).await?
                    }
                    _ => return Err(VfsError::Stale),
                }
            }
            other => other?,
        };
        h.last_end
            .store(offset + data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// Bytes `offset..offset+len` of a file's remote content, through the block cache. A
    /// range inside one chunk is a view of the cached chunk, not a copy (a sequential reader's
    /// requests are: copying each was 2 % of a cold read's samples).
    async fn read_remote(
        self: &Arc<Self>,
        node: &Node,
        offset: u64,
        len: u64,
        read_ahead: bool,
    ) -> Result<Bytes> {
        if offset >= node.size {
            return Ok(Bytes::new());
        }
        let end = (offset + len).min(node.size);
        let cid = self.remote.content_id(node);
        if self.reads.bad.lock().contains(&cid) {
            return Err(VfsError::Integrity);
        }
        let spans = self.spans(node.size, offset..end);
        if read_ahead {
            let ahead_end = (end + self.config.read_ahead).min(node.size);
            let ahead = self.spans(node.size, end..ahead_end);
            if !ahead.is_empty() {
                // Not awaited: the fetches run while the reader consumes what it has.
                drop(self.start_missing(node, cid, &ahead, true));
            }
        }
        // A chunk can leave the cache between its fetch and our copy (a tiny cache under
        // pressure): fetch again, a bounded number of times.
        for _ in 0..4 {
            let waits = self.start_missing(node, cid, &spans, false);
            for r in futures_util::future::join_all(waits).await {
                match r {
                    // Which chunk failed is in `corrupt`; the chunks before it still serve.
                    Err(FetchFailure::Integrity) => {}
                    other => other?,
                }
            }
            let mut out = Vec::new();
            let mut complete = true;
            for span in &spans {
                let id = ChunkId {
                    content: cid,
                    offset: span.start,
                };
                if self.reads.corrupt.lock().contains(&id) {
                    if out.is_empty() {
                        return Err(VfsError::Integrity);
                    }
                    // A short read: the kernel asks again from the bad chunk, and gets EIO.
                    return Ok(joined(out));
                }
                let Some(chunk) = self.cache.get(&id) else {
                    complete = false;
                    break;
                };
                let from = (offset.max(span.start) - span.start) as usize;
                let to = (end.min(span.end) - span.start) as usize;
                out.push(chunk.slice(from..to));
            }
            if complete {
                return Ok(joined(out));
            }
        }
        Err(VfsError::Remote(RemoteError::Unavailable(
            "the block cache is too small to hold one read".into(),
        )))
    }

    /// The chunks covering `range`.
    fn spans(&self, size: u64, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let span = self.remote.chunk_at(size, at);
            at = span.end.max(at + 1);
            out.push(span);
        }
        out
    }

    /// Starts fetches for the chunks of `spans` that are neither cached nor on their way, and
    /// returns what to wait for. Consecutive missing chunks go in one fetch of up to the
    /// remote's [`Remote::fetch_batch`].
    ///
    /// With `read_ahead`, missing chunks at the end of `spans` that do not fill a whole batch
    /// (and do not reach the end of the file) are left for a later call: as a sequential reader
    /// advances, the window gains a chunk at a time, and fetching each alone would cost a
    /// request per chunk and, for MEGA, MAC chunks one by one instead of side by side.
    fn start_missing(
        self: &Arc<Self>,
        node: &Node,
        cid: ContentId,
        spans: &[Range<u64>],
        read_ahead: bool,
    ) -> Vec<SharedFetch> {
        let batch = self.remote.fetch_batch();
        let mut waits = Vec::new();
        let mut run: Vec<Range<u64>> = Vec::new();
        let mut inflight = self.reads.inflight.lock();
        for span in spans {
            let id = ChunkId {
                content: cid,
                offset: span.start,
            };
            if self.cache.contains(&id) || self.reads.corrupt.lock().contains(&id) {
                self.flush_run(node, cid, &mut run, &mut inflight, &mut waits);
                continue;
            }
            if let Some(f) = inflight.get(&id).cloned() {
                self.flush_run(node, cid, &mut run, &mut inflight, &mut waits);
                waits.push(f);
                continue;
            }
            if run_len(&run) + (span.end - span.start) > batch {
                self.flush_run(node, cid, &mut run, &mut inflight, &mut waits);
            }
            run.push(span.clone());
        }
        let reaches_end = run.last().is_some_and(|l| l.end >= node.size);
        // A window smaller than a batch would otherwise never fetch ahead.
        let worth_one = batch.min(self.config.read_ahead / 2);
        if !read_ahead || reaches_end || run_len(&run) >= worth_one {
            self.flush_run(node, cid, &mut run, &mut inflight, &mut waits);
        }
        waits
    }

    fn flush_run(
        self: &Arc<Self>,
        node: &Node,
        cid: ContentId,
        run: &mut Vec<Range<u64>>,
        inflight: &mut HashMap<ChunkId, SharedFetch>,
        waits: &mut Vec<SharedFetch>,
    ) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return;
        };
        let range = first.start..last.end;
        let spans: Vec<Range<u64>> = std::mem::take(run);
        let starts: Vec<u64> = spans.iter().map(|r| r.start).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = rx
            .map(|r| r.unwrap_or_else(|_| Err(FetchFailure::Failed("fetch task ended".into()))))
            .boxed()
            .shared();
        for &s in &starts {
            inflight.insert(
                ChunkId {
                    content: cid,
                    offset: s,
                },
                shared.clone(),
            );
        }
        let this = self.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let result = match this.remote.fetch(&node, range).await {
                Ok(chunks) => this.accept(&node, cid, chunks),
                Err(RemoteError::NoKey | RemoteError::Access) => Err(FetchFailure::Access),
                Err(RemoteError::NotFound) => Err(FetchFailure::Gone),
                Err(RemoteError::Integrity(msg)) => {
                    tracing::error!(%msg, name = %node.name, "chunk failed its check");
                    this.status.lock().last_error = Some(format!("{}: {msg}", node.name));
                    this.isolate_corrupt(&node, cid, &spans).await
                }
                Err(e) => Err(FetchFailure::Failed(e.to_string().into())),
            };
            let mut inflight = this.reads.inflight.lock();
            for s in starts {
                inflight.remove(&ChunkId {
                    content: cid,
                    offset: s,
                });
            }
            drop(inflight);
            let _ = tx.send(result);
        });
        waits.push(shared);
    }

    /// A fetch of several chunks failed a chunk check: fetches them one by one, so the good
    /// ones are served and only the bad one answers EIO.
    async fn isolate_corrupt(
        self: &Arc<Self>,
        node: &Node,
        cid: ContentId,
        spans: &[Range<u64>],
    ) -> Result<(), FetchFailure> {
        let mut result = Ok(());
        for span in spans {
            let single = if spans.len() == 1 {
                Err(RemoteError::Integrity(String::new()))
            } else {
                self.remote.fetch(node, span.clone()).await
            };
            match single {
                Ok(chunks) => self.accept(node, cid, chunks)?,
                Err(RemoteError::Integrity(_)) => {
                    self.reads.corrupt.lock().insert(ChunkId {
                        content: cid,
                        offset: span.start,
                    });
                    result = Err(FetchFailure::Integrity);
                }
                Err(e) => return Err(FetchFailure::Failed(e.to_string().into())),
            }
        }
        result
    }

    /// Caches fetched chunks and, once every chunk of the file has been seen, checks the
    /// whole file. A failed check drops the file's cache and makes every read answer EIO.
    fn accept(
        self: &Arc<Self>,
        node: &Node,
        cid: ContentId,
        chunks: Vec<Fetched>,
    ) -> Result<(), FetchFailure> {
        let mut tags = self.reads.tags.lock();
        let state = tags
            .entry(cid)
            .or_insert_with(|| Tags::Collecting(BTreeMap::new()));
        for c in &chunks {
            if let (Tags::Collecting(map), Some(tag)) = (&mut *state, c.tag) {
                map.insert(c.offset, tag);
            }
        }
        let complete = match state {
            Tags::Collecting(map) => map.len() == self.spans(node.size, 0..node.size).len(),
            Tags::Verified => false,
        };
        if complete {
            let Tags::Collecting(map) = std::mem::replace(state, Tags::Verified) else {
                unreachable!("checked above")
            };
            if let Err(error) = self.remote.verify(node, &map) {
                drop(tags);
                tracing::error!(%error, name = %node.name, "file failed its integrity check");
                self.reads.bad.lock().insert(cid);
                self.cache.invalidate(&cid);
                self.status.lock().last_error = Some(format!("{}: {error}", node.name));
                return Err(FetchFailure::Integrity);
            }
        }
        drop(tags);
        let mut fetched = Vec::with_capacity(chunks.len());
        for c in chunks {
            let id = ChunkId {
                content: cid,
                offset: c.offset,
            };
            let data = c.data;
            self.cache.insert_memory(id, data.clone());
            fetched.push((id, data));
        }
        self.write_through(cid, fetched);
        Ok(())
    }

    /// Writes fetched chunks through to the disk cache. The read waiting for them is served
    /// from memory and does not need them sealed (AES-GCM) and written, so that runs on the
    /// blocking pool while the read goes on, unless [`MAX_DISK_BACKLOG`] bytes already wait:
    /// then here, which bounds the memory that pending writes hold.
    fn write_through(self: &Arc<Self>, cid: ContentId, chunks: Vec<(ChunkId, bytes::Bytes)>) {
        if !self.cache.has_disk() || chunks.is_empty() {
            return;
        }
        let bytes: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
        let write = move |this: &Self| {
            for (id, data) in &chunks {
                if let Err(error) = this.cache.write_through(id, data) {
                    tracing::warn!(%error, "could not cache a chunk");
                }
            }
            // The whole-file check failed meanwhile and dropped the file's chunks: what was
            // written after that goes too. (Chunks of content replaced meanwhile may stay: no
            // content id is reused, so they are never served, and the disk LRU evicts them.)
            if this.reads.bad.lock().contains(&cid) {
                this.cache.invalidate(&cid);
            }
        };
        let backlog = &self.reads.disk_backlog;
        if backlog.fetch_add(bytes, Ordering::AcqRel) + bytes > MAX_DISK_BACKLOG {
            backlog.fetch_sub(bytes, Ordering::AcqRel);
            write(self);
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            write(&this);
            this.reads.disk_backlog.fetch_sub(bytes, Ordering::AcqRel);
        });
    }
}

/// Pieces of chunks as one buffer: the piece itself when there is one (no copy).
fn joined(mut pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().expect("one piece"),
        _ => pieces.concat().into(),
    }
}
