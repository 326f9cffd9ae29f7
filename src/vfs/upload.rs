//! Upload workers: take sealed staging files from the journal, upload them, and commit each as
//! the new content of its node — never losing one, never letting an older one win.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc};

use super::{LocalFile, Result, Vfs, VfsError};
use crate::remote::{Meta, Remote, RemoteError};
use crate::tree::{Change, Handle, ROOT_INO};

/// Longest wait between two tries of a failing upload.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Queue {
    tx: mpsc::UnboundedSender<u64>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<u64>>>,
    workers: usize,
    /// Uploads under way, each with the signal that abandons it (its file was deleted): an
    /// abandoned upload stops reading its staging file at once, so a deleted file's space is
    /// free when `unlink` returns rather than when a long upload would have ended.
    running: Mutex<HashMap<u64, Arc<Notify>>>,
}

impl Queue {
    pub(super) fn new(workers: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
            workers: workers.max(1),
            running: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn submit(&self, id: u64) {
        let _ = self.tx.send(id);
    }

    /// Abandons upload `id` if it is under way; its journal entry must already be gone (an
    /// upload that has not started finds none and drops itself).
    ///
    /// Called under the namespace lock, which the commit phase also holds: an upload is
    /// abandoned before its commit or not at all, never halfway through one.
    pub(super) fn cancel(&self, id: u64) {
        if let Some(signal) = self.running.lock().get(&id) {
            // `notify_one` keeps the wake-up for a worker not yet waiting on it.
            signal.notify_one();
        }
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
            let ino = self.tree.read().ino_of(Handle::from_u64(entry.target));
            if let Some(ino) = ino {
                let file = Arc::new(self.wb.reopen(entry.id)?);
                let mut files = self.files.lock();
                let local = files.entry(ino).or_insert_with(|| LocalFile {
                    id: entry.id,
                    file: file.clone(),
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
                local.file = file;
                local.size = entry.size;
                local.mtime_ns = entry.mtime_ns;
                local.queued.push(entry.id);
            }
            self.uploads.submit(entry.id);
        }
        if !pending.is_empty() {
            tracing::info!(count = pending.len(), "resuming queued uploads");
        }
        let Some(mut rx) = self.uploads.rx.lock().take() else {
            return Ok(());
        };
        let this = self.clone();
        let slots = Arc::new(Semaphore::new(self.uploads.workers));
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let this = this.clone();
                tokio::spawn(async move {
                    this.upload_until_done(id).await;
                    drop(permit);
                });
            }
        });
        Ok(())
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
                    let delay = Duration::from_millis(200)
                        .saturating_mul(1 << attempt.min(8))
                        .min(MAX_BACKOFF);
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
        if self.superseded(id, Handle::from_u64(entry.target)) {
            self.retire(id, None)?;
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
        let upload = self
            .remote
            .upload_content(&self.wb.path_of(id), entry.mtime_ns, &hint)
            .await?;

        let _ns = self.ns.lock().await;
        // Re-read everything under the lock: the file may have been renamed, deleted or
        // written again while its content travelled.
        let Some(entry) = self.wb.get(id)? else {
            return Ok(Outcome::Dropped);
        };
        let target = Handle::from_u64(entry.target);
        if self.superseded(id, target) {
            self.retire(id, None)?;
            return Ok(Outcome::Dropped);
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
        let node = self
            .remote
            .commit_upload(&parent, &meta, upload, old.as_ref())
            .await?;
        let new_handle = node.handle;
        let change = match &old {
            Some(old) => {
                self.cache.invalidate(&self.remote.content_id(old));
                Change::Replace {
                    old: old.handle,
                    node,
                }
            }
            None => Change::Upsert(node),
        };
        self.apply(vec![change])?;
        self.retire(id, Some(new_handle))?;
        Ok(Outcome::Committed)
    }

    /// Takes a finished (or dropped) upload out of the journal and the file's local state;
    /// with `committed`, the file's other queued uploads now target the new node.
    fn retire(&self, id: u64, committed: Option<Handle>) -> Result<()> {
        let ino = committed.and_then(|h| self.tree.read().ino_of(h));
        self.wb.forget(id)?;
        let mut files = self.files.lock();
        let mut keep_file = false;
        let holder = files
            .iter()
            .find(|(_, l)| l.queued.contains(&id))
            .map(|(&ino, _)| ino)
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
