//! Upload workers: take sealed staging files from the journal, upload them, and commit each as
//! the new content of its node — never losing one, never letting an older one win.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::local::local_file_node;
use super::{LocalFile, Result, Vfs, VfsError};
use crate::remote::{Commit, Meta, Remote, RemoteError};
use crate::tree::{Change, Handle, Node, ROOT_INO};
use crate::writeback::Entry;

/// Longest wait between two tries of a failing upload.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait before try `attempt + 1` of something the server must eventually take (an
/// upload, a folder's change): doubling from 200 ms up to [`MAX_BACKOFF`].
pub(super) fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(200)
        .saturating_mul(1 << attempt.min(8))
        .min(MAX_BACKOFF)
}

/// Files at least this large are uploaded without the write-back delay (see `Queue::submit`).
const UNDELAYED_UPLOAD: u64 = 64 * 1024 * 1024;

/// An upload of a file this large or larger takes a whole worker's slots; smaller ones take
/// fewer, down to one (see [`Queue::acquire`]).
const WORKER_BYTES: u64 = 32 * 1024 * 1024;

/// Slots per upload worker: how many small uploads may run in the room of one large one.
pub(super) const SLOTS_PER_WORKER: usize = 4;

/// Most uploads committed in one request.
const MAX_COMMIT_BATCH: usize = 200;

/// Longest a ready upload waits for others still sending their content, to be committed with
/// them (see `Vfs::commit_loop`).
const COMMIT_LINGER: Duration = Duration::from_millis(10);

/// Uploads whose content is sent, waiting for the committer; each with where its outcome goes.
struct Ready<U> {
    id: u64,
    upload: U,
    done: oneshot::Sender<Result<Outcome>>,
}

pub(super) struct Queue<U> {
    /// Uploads to run, each with the moment it may start.
    tx: mpsc::UnboundedSender<(u64, Instant)>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<(u64, Instant)>>>,
    /// How long a closed file waits before its upload starts (see [`Queue::submit`]).
    delay: Duration,
    ready_tx: mpsc::UnboundedSender<Ready<U>>,
    ready_rx: Mutex<Option<mpsc::UnboundedReceiver<Ready<U>>>>,
    /// [`SLOTS_PER_WORKER`] per worker; an upload takes from one (a small file) to all of a
    /// worker's (a file of [`WORKER_BYTES`] or more), so that large files run `workers` at a
    /// time, each with up to 32 MiB in flight (`mega/transfer.rs`), and small ones four times
    /// as many: a small upload waits mostly on round trips (its POST, the batched commit), and
    /// with one upload per worker the last of 10 000 files of 1 KiB was uploaded 1.5–2.2 s
    /// after it was written, the cores idle half that time (three alternating pairs: until
    /// durable 5.3–6.0 s, with four per worker 3.6–4.2 s). An upload keeps its slots until its
    /// commit comes back: giving them back once the content is sent was measured (10 000
    /// small files, server on disk) to finish the uploads 20 % sooner but to slow the writer
    /// down by as much, the uploads taking the CPU it needed. The writer is what a user waits
    /// for.
    slots: Arc<Semaphore>,
    /// Uploads holding slots.
    under_way: Arc<AtomicUsize>,
    /// Uploads under way, each with the signal that abandons it (its file was deleted): an
    /// abandoned upload stops reading its staging file at once, so a deleted file's space is
    /// free when `unlink` returns rather than when a long upload would have ended.
    running: Mutex<HashMap<u64, Arc<Notify>>>,
}

impl<U> Queue<U> {
    pub(super) fn new(workers: usize, delay: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
            ready_tx,
            ready_rx: Mutex::new(Some(ready_rx)),
            delay,
            slots: Arc::new(Semaphore::new(workers.max(1) * SLOTS_PER_WORKER)),
            under_way: Arc::new(AtomicUsize::new(0)),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Queues upload `id` of `size` bytes to start after the write-back delay. Programs often
    /// change a file right after closing it (`rsync` and atomic saves set its times and mode
    /// and rename it into place; `cp -p` sets times): for a file created here, those changes
    /// are local until its upload is committed (`local.rs`), so waiting a moment turns several
    /// server round trips into none, and the upload carries the final name and metadata.
    ///
    /// A file of [`UNDELAYED_UPLOAD`] bytes or more starts at once: sending its content takes
    /// longer than the delay would, and the changes that follow a close arrive meanwhile,
    /// still local, since only the commit at the end fixes the name and metadata.
    pub(super) fn submit(&self, id: u64, size: u64) {
        let delay = if size >= UNDELAYED_UPLOAD {
            Duration::ZERO
        } else {
            self.delay
        };
        let _ = self.tx.send((id, Instant::now() + delay));
    }

    /// Uploads holding slots: sending their content or waiting for their commit.
    fn under_way(&self) -> usize {
        self.under_way.load(Ordering::Acquire)
    }

    /// Waits for the slots of an upload of `size` bytes (see [`Queue::slots`]).
    async fn acquire(&self, size: u64) -> Slot {
        let wanted = (size * SLOTS_PER_WORKER as u64)
            .div_ceil(WORKER_BYTES)
            .clamp(1, SLOTS_PER_WORKER as u64) as u32;
        let permits = self
            .slots
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("never closed");
        self.under_way.fetch_add(1, Ordering::AcqRel);
        Slot {
            _permits: permits,
            under_way: self.under_way.clone(),
        }
    }

    /// Queues upload `id` to start at once (resumed after a remount).
    fn submit_now(&self, id: u64) {
        let _ = self.tx.send((id, Instant::now()));
    }

    /// Abandons upload `id` if it is under way; its journal entry must already be gone (an
    /// upload that has not started finds none and drops itself).
    ///
    /// For a deleted file it is called under the namespace lock, which the commit phase also
    /// holds: the upload is abandoned before its commit or not at all, never halfway through
    /// one (a commit that went through would bring the file back). A version superseded by a
    /// newer one may be abandoned at any point: should its commit go through, the newer
    /// version replaces it.
    pub(super) fn cancel(&self, id: u64) {
        if let Some(signal) = self.running.lock().get(&id) {
            // `notify_one` keeps the wake-up for a worker not yet waiting on it.
            signal.notify_one();
        }
    }
}

/// The slots of one upload under way, given back when it ends.
struct Slot {
    _permits: tokio::sync::OwnedSemaphorePermit,
    under_way: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.under_way.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Outcome {
    Committed,
    /// Cancelled (the file was deleted) or superseded by a newer upload of the same file.
    Dropped,
}

impl<R: Remote> Vfs<R> {
    /// Puts the journal's entries back in the queue (after a crash or an unmount with uploads
    /// pending) and starts the workers.
    pub(super) fn resume_uploads(self: &Arc<Self>) -> Result<()> {
        let pending = self.wb.pending()?;
        for entry in &pending {
            let target = Handle::from_u64(entry.target);
            let mut ino = self.tree.read().ino_of(target);
            if target.is_local() {
                ino = self.restore_local_node(entry)?;
            }
            if let Some(ino) = ino {
                // Opened to check that it is there, then closed: a queued file gets its
                // descriptor when it is opened (`LocalFile::rest`).
                drop(self.wb.reopen(entry.id)?);
                let mut files = self.files.lock();
                let local = files.entry(ino).or_insert_with(|| LocalFile {
                    id: entry.id,
                    file: None,
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                    writers: 0,
                    dirty: false,
                    sealed: true,
                    queued: Vec::new(),
                    committed: 0,
                    unlinked: false,
                });
                // Entries come oldest first: the last one is the current content.
                local.id = entry.id;
                local.file = None;
                local.size = entry.size;
                local.mtime_ns = entry.mtime_ns;
                local.queued.push(entry.id);
            }
            self.uploads.submit_now(entry.id);
        }
        if !pending.is_empty() {
            tracing::info!(count = pending.len(), "resuming queued uploads");
        }
        let Some(mut rx) = self.uploads.rx.lock().take() else {
            return Ok(());
        };
        if let Some(ready) = self.uploads.ready_rx.lock().take() {
            tokio::spawn(self.clone().commit_loop(ready));
        }
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((id, start)) = rx.recv().await {
                let this = this.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    this.upload_until_done(id).await;
                });
            }
        });
        Ok(())
    }

    /// A file created here, closed, then the daemon killed before the tree's last changes
    /// reached the disk: the journal knows its folder, name, mode and time, so it is shown
    /// again at once (its content is local) rather than only after its upload. The journal is
    /// the newer of the two for such a file — each change to it is written there when the
    /// call returns, while the tree's store writes out a moment later — so its metadata wins
    /// even when the tree still has the node (under the name it had before a rename).
    fn restore_local_node(&self, entry: &Entry) -> Result<Option<u64>> {
        let parent = {
            let tree = self.tree.read();
            let parent = Handle::from_u64(entry.parent);
            if tree.ino_of(parent).is_some() {
                Some(parent)
            } else {
                tree.handle_of(ROOT_INO)
            }
        };
        let node = local_file_node(
            Handle::from_u64(entry.target),
            parent,
            &entry.name,
            entry.mode,
            entry.mtime_ns,
            entry.size,
        );
        self.apply(vec![Change::Upsert(node)])?;
        Ok(self.tree.read().ino_of(Handle::from_u64(entry.target)))
    }

    /// Retries an upload until it is committed or dropped: an acknowledged write stays queued
    /// through a dead server or a full quota, however long that takes.
    async fn upload_until_done(self: &Arc<Self>, id: u64) {
        let signal = Arc::new(Notify::new());
        self.uploads.running.lock().insert(id, signal.clone());
        tokio::select! {
            () = self.retry_upload(id) => {}
            () = signal.notified() => tracing::debug!(id, "upload abandoned: its file was deleted"),
        }
        self.uploads.running.lock().remove(&id);
    }

    async fn retry_upload(self: &Arc<Self>, id: u64) {
        let mut attempt = 0u32;
        loop {
            match self.upload_once(id).await {
                Ok(Outcome::Committed) => {
                    self.status.lock().uploaded += 1;
                    return;
                }
                Ok(Outcome::Dropped) => return,
                Err(error) => {
                    tracing::warn!(%error, id, attempt, "upload failed; will retry");
                    self.status.lock().last_error = Some(format!("upload: {error}"));
                    let delay = retry_delay(attempt);
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn superseded(&self, id: u64, target: Handle) -> bool {
        let Some(ino) = self.tree.read().ino_of(target) else {
            return false;
        };
        let files = self.files.lock();
        files
            .get(&ino)
            .is_some_and(|l| l.committed > id || l.queued.iter().any(|&q| q > id))
    }

    async fn upload_once(self: &Arc<Self>, id: u64) -> Result<Outcome> {
        let Some(entry) = self.wb.get(id)? else {
            return Ok(Outcome::Dropped);
        };
        let _slot = self.uploads.acquire(entry.size).await;
        // Read again: the file may have been renamed or deleted while this waited.
        let Some(entry) = self.wb.get(id)? else {
            return Ok(Outcome::Dropped);
        };
        if self.superseded(id, Handle::from_u64(entry.target)) {
            // Durably: an old version coming back after a crash could win over the new one.
            self.retire(id, None)?;
            self.wb.sync()?;
            return Ok(Outcome::Dropped);
        }
        // Where the file is now (its folder may still change before the commit).
        let hint = {
            let tree = self.tree.read();
            let parent = tree
                .ino_of(Handle::from_u64(entry.target))
                .and_then(|i| tree.node(i))
                .and_then(|n| n.parent)
                .unwrap_or(Handle::from_u64(entry.parent));
            tree.ino_of(parent)
                .and_then(|i| tree.node(i))
                .or_else(|| tree.node(ROOT_INO))
                .ok_or(VfsError::NotFound)?
        };
        // Held while the backend reads it by its path: a discarded staging file is reused
        // (writeback/staging.rs). Discarded already: the upload was cancelled meanwhile.
        let Ok((content, _hold)) = self.wb.content(id) else {
            return Ok(Outcome::Dropped);
        };
        let upload = self
            .remote
            .upload_content(&content, entry.mtime_ns, &hint)
            .await?;
        let (done, outcome) = oneshot::channel();
        let ready = Ready { id, upload, done };
        let stopped =
            || VfsError::Remote(RemoteError::Other("the upload committer stopped".into()));
        self.uploads.ready_tx.send(ready).map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Commits uploads as their content arrives. Whatever finished while the previous batch was
    /// being committed goes in the next one, and a batch waits up to [`COMMIT_LINGER`] for the
    /// uploads under way: one request and one hold of the namespace lock for many small files,
    /// and no wait at all when one upload is under way.
    async fn commit_loop(self: Arc<Self>, mut ready: mpsc::UnboundedReceiver<Ready<R::Upload>>) {
        while let Some(first) = ready.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + COMMIT_LINGER;
            while batch.len() < MAX_COMMIT_BATCH {
                if let Ok(next) = ready.try_recv() {
                    batch.push(next);
                    continue;
                }
                // Uploads still sending their content are ready in a moment: waiting a little
                // for them commits them all with one request, one write of the server's
                // metadata and one sync of the journal, instead of one each. Uploads finish one
                // by one, so without the wait a burst of small files is committed in batches
                // of one or two.
                if batch.len() >= self.uploads.under_way() {
                    break;
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                // In steps, to see an upload that had only its slot left to give back go.
                let step = (deadline - now).min(Duration::from_millis(1));
                match tokio::time::timeout(step, ready.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            self.commit_batch(batch).await;
        }
    }

    async fn commit_batch(&self, batch: Vec<Ready<R::Upload>>) {
        tracing::debug!(uploads = batch.len(), "committing uploads");
        let ns = self.ns.lock().await;
        let mut commits = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        let mut marked = Vec::new();
        for Ready { id, upload, done } in batch {
            // Planned under `committing`, so a local change to the file either came before
            // (and is in the plan) or sees the mark and waits for `ns` (see `local.rs`).
            let plan = loop {
                let plan = {
                    let mut committing = self.committing.lock();
                    let plan = self.plan_commit(id);
                    if let Ok(Some((_, _, Some(old)))) = &plan
                        && old.handle.is_local()
                    {
                        committing.insert(old.handle);
                        marked.push(old.handle);
                    }
                    plan
                };
                // Into a folder made here: the folder goes to the server first (`dirs.rs`),
                // then the plan is made again (the file, marked, stays where it is).
                match plan {
                    Ok(Some((parent, _, _))) if parent.handle.is_local() => {
                        if let Err(e) = self.on_server(parent).await {
                            break Err(e);
                        }
                    }
                    plan => break plan,
                }
            };
            match plan {
                Ok(Some((parent, meta, old))) => {
                    // A file created here and never uploaded has no node on the server to
                    // replace.
                    let replaces = old.clone().filter(|n| !n.handle.is_local());
                    commits.push(Commit {
                        parent,
                        meta,
                        upload,
                        replaces,
                    });
                    waiting.push((id, old, done));
                }
                Ok(None) => {
                    let _ = done.send(Ok(Outcome::Dropped));
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            }
        }
        let results = if commits.is_empty() {
            Vec::new()
        } else {
            self.remote.commit_uploads(commits).await
        };
        let mut outcomes = Vec::with_capacity(waiting.len());
        for ((id, old, done), result) in waiting.into_iter().zip(results) {
            let outcome = match result {
                Ok(node) => self.committed(id, old, node).map(|()| Outcome::Committed),
                Err(e) => Err(e.into()),
            };
            outcomes.push((done, outcome));
        }
        {
            let mut committing = self.committing.lock();
            for handle in marked {
                committing.remove(&handle);
            }
        }
        drop(ns);
        // One flush makes every retirement of the batch durable, before anyone hears of it
        // (usually a close()'s own sync, a moment later: see `sync_lazily`).
        if let Err(error) = self.wb.sync_lazily().await {
            tracing::warn!(%error, "could not flush the journal after committing uploads");
        }
        for (done, outcome) in outcomes {
            let _ = done.send(outcome);
        }
    }

    /// What upload `id` commits as, re-read under the namespace lock (the file may have been
    /// renamed, deleted or written again while its content travelled): the folder, the
    /// metadata and the node it replaces, or `None` when the upload is to be dropped.
    fn plan_commit(&self, id: u64) -> Result<Option<(Node, Meta, Option<Node>)>> {
        let Some(entry) = self.wb.get(id)? else {
            return Ok(None);
        };
        let target = Handle::from_u64(entry.target);
        if self.superseded(id, target) {
            self.retire(id, None)?;
            return Ok(None);
        }
        let (ino, old) = {
            let tree = self.tree.read();
            match tree.ino_of(target) {
                Some(ino) => (Some(ino), tree.node(ino)),
                None => (None, None),
            }
        };
        let (parent, meta) = match &old {
            Some(node) => {
                let parent = node
                    .parent
                    .and_then(|p| {
                        let tree = self.tree.read();
                        tree.ino_of(p).and_then(|i| tree.node(i))
                    })
                    .ok_or(VfsError::Remote(RemoteError::NotFound))?;
                let mtime_ns = ino
                    .and_then(|i| self.files.lock().get(&i).map(|l| l.mtime_ns))
                    .unwrap_or(entry.mtime_ns);
                let meta = Meta {
                    mtime_ns,
                    symlink: None,
                    ..Meta::of(node)
                };
                (parent, meta)
            }
            None => {
                // Deleted by another client while queued: the acknowledged content is put back
                // where it was (or at the root), never dropped.
                let tree = self.tree.read();
                let parent = tree
                    .ino_of(Handle::from_u64(entry.parent))
                    .and_then(|i| tree.node(i))
                    .or_else(|| tree.node(ROOT_INO))
                    .ok_or(VfsError::NotFound)?;
                let meta = Meta {
                    name: entry.name.clone(),
                    mode: entry.mode,
                    mtime_ns: entry.mtime_ns,
                    symlink: None,
                };
                (parent, meta)
            }
        };
        Ok(Some((parent, meta, old)))
    }

    /// Upload `id` is now `node` on the server: the tree and the journal learn it.
    fn committed(&self, id: u64, old: Option<Node>, node: Node) -> Result<()> {
        let new_handle = node.handle;
        let change = match old {
            Some(old) => {
                if !old.handle.is_local() {
                    self.cache.invalidate(&self.remote.content_id(&old));
                }
                Change::Replace {
                    old: old.handle,
                    node,
                }
            }
            None => Change::Upsert(node),
        };
        self.apply(vec![change])?;
        self.retire(id, Some(new_handle))
    }

    /// Takes a finished (or dropped) upload out of the journal and the file's local state;
    /// with `committed`, the file's other queued uploads now target the new node.
    fn retire(&self, id: u64, committed: Option<Handle>) -> Result<()> {
        let ino = committed.and_then(|h| self.tree.read().ino_of(h));
        self.wb.forget(id)?;
        let mut files = self.files.lock();
        let mut keep_file = false;
        // Usually the committed node's own file; the others are searched only when it is not
        // (a dropped upload, or one whose file was renamed over another): a search per commit
        // cost as much as the rest of the commit with thousands of small files queued.
        let holds = |ino: &u64| files.get(ino).is_some_and(|l| l.queued.contains(&id));
        let holder = ino
            .filter(holds)
            .or_else(|| files.keys().copied().find(holds))
            .or(ino);
        if let Some(holder) = holder
            && let Some(local) = files.get_mut(&holder)
        {
            local.queued.retain(|&q| q != id);
            if let Some(handle) = committed {
                local.committed = local.committed.max(id);
                for &q in &local.queued {
                    if let Some(mut e) = self.wb.get(q)? {
                        e.target = handle.as_u64();
                        self.wb.update(&e)?;
                    }
                }
            }
            keep_file = local.id == id;
            if local.writers == 0 && local.queued.is_empty() && !local.dirty {
                let current = local.id;
                files.remove(&holder);
                self.wb.discard(current);
                keep_file = false;
            }
        }
        if !keep_file {
            self.wb.discard(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `slot` is given within a moment (else it waits for slots to come back).
    async fn given<F: Future<Output = Slot>>(slot: F) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(50), slot)
            .await
            .ok()
    }

    #[tokio::test]
    async fn small_uploads_run_four_to_a_worker_and_large_ones_one() {
        let queue = Queue::<()>::new(2, Duration::ZERO);
        let mut small = Vec::new();
        for _ in 0..2 * SLOTS_PER_WORKER {
            small.push(given(queue.acquire(1024)).await.expect("room for it"));
        }
        assert_eq!(queue.under_way(), 8);
        assert!(given(queue.acquire(0)).await.is_none(), "all slots taken");
        small.truncate(4);
        assert_eq!(queue.under_way(), 4);
        // A large file takes a whole worker's slots: one fits beside four small ones.
        let large = given(queue.acquire(WORKER_BYTES))
            .await
            .expect("one worker free");
        assert!(given(queue.acquire(1)).await.is_none());
        assert_eq!(queue.under_way(), 5);
        drop(small);
        let mid = given(queue.acquire(WORKER_BYTES / 2))
            .await
            .expect("half a worker");
        assert_eq!(queue.slots.available_permits(), 2);
        drop((large, mid));
        assert_eq!(queue.under_way(), 0);
        assert_eq!(queue.slots.available_permits(), 8);
    }
}
