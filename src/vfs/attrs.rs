//! Folder modes and times, written back: a `chmod` or `utimensat` of a folder changes the tree
//! and goes in the journal at once, and reaches the server from a task of its own.
//!
//! Why: each was a server round trip (about 1 ms here, most of it the server making the change
//! durable), and `rsync -a` sets both on every folder it creates once it has filled it: 640
//! round trips for a tree of 320 folders, a quarter of its run. Files created here already work
//! this way (their metadata travels with their upload, `local.rs`); a folder exists on the
//! server from its `mkdir` on, so its later changes are queued on their own.
//!
//! Guarantees, those of a queued file's metadata: in the journal when the call returns (a crash
//! of the daemon keeps it, and the next mount sends it), on the disk at the next `fsync` or
//! `fsyncdir`. What is queued is the fields set, not the whole metadata: the push applies them
//! to the folder as the tree has it then, so a rename in between (here or by another client)
//! stays. A folder deleted before its push has nothing left to push. Changes that come within
//! the write-back delay of each other go in one request (a folder's mode and time are one
//! change then), under the namespace lock like any other change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::local::with_meta;
use super::upload::retry_delay;
use super::{Result, SetAttr, Vfs, now_ns};
use crate::remote::{Meta, Remote, RemoteError};
use crate::tree::{Change, Handle, Node};
use crate::writeback::{self, FolderAttrs};

/// Most folder changes sent in one request.
const MAX_BATCH: usize = 100;

/// Folder changes waiting for the server (the journal holds the same, durably).
#[derive(Default)]
pub(super) struct FolderQueue {
    pending: parking_lot::Mutex<std::collections::BTreeMap<u64, FolderAttrs>>,
    next_seq: AtomicU64,
    wake: Notify,
}

impl FolderQueue {
    pub(super) fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Whether `attrs` is still its folder's latest change.
    fn is_newest(&self, attrs: &FolderAttrs) -> bool {
        writeback::is_current(&self.pending.lock(), attrs.target, attrs.seq)
    }
}

/// `node`'s metadata with the mode and time of a folder change, where it sets them.
fn meta_with(node: &Node, mode: Option<u32>, mtime_ns: Option<i64>) -> Meta {
    let mut meta = Meta::of(node);
    if let Some(mode) = mode {
        meta.mode = Some(mode);
    }
    if let Some(mtime_ns) = mtime_ns {
        meta.mtime_ns = mtime_ns;
    }
    meta
}

impl<R: Remote> Vfs<R> {
    /// Sets folder `ino`'s mode or time here and queues the change for the server.
    ///
    /// Without the namespace lock, which a push waiting for the server holds. A rename of the
    /// folder committing meanwhile may put the old fields back in the tree for a moment; the
    /// push that follows applies the new ones to the renamed folder and brings them back.
    pub(super) fn queue_folder_attrs(&self, ino: u64, node: &Node, set: SetAttr) -> Result<()> {
        let mode = set.mode.map(|m| m & 0o7777);
        let mtime_ns = set.mtime.map(|t| t.unwrap_or_else(now_ns));
        let meta = meta_with(node, mode, mtime_ns);
        let target = node.handle.as_u64();
        {
            let mut pending = self.folders.pending.lock();
            let earlier = pending.get(&target);
            // Unchanged, unless the tree shows another client's fields over a queued change.
            if meta == Meta::of(node) && earlier.is_none() {
                return Ok(());
            }
            let attrs = FolderAttrs {
                target,
                seq: self.folders.next_seq.fetch_add(1, Ordering::Relaxed) + 1,
                mode: mode.or(earlier.and_then(|a| a.mode)),
                mtime_ns: mtime_ns.or(earlier.and_then(|a| a.mtime_ns)),
            };
            self.wb.put_attrs(&attrs)?;
            pending.insert(target, attrs);
        }
        self.apply_setattr(ino, Change::Upsert(with_meta(node, &meta)))?;
        self.folders.wake.notify_one();
        Ok(())
    }

    /// Takes the folder changes a previous mount left in the journal and starts the task that
    /// pushes them.
    pub(super) fn resume_folder_attrs(self: &Arc<Self>) {
        let left = self.wb.pending_attrs();
        let seq = left.iter().map(|a| a.seq).max().unwrap_or(0);
        self.folders.next_seq.fetch_max(seq, Ordering::Relaxed);
        if !left.is_empty() {
            tracing::info!(count = left.len(), "resuming queued folder changes");
        }
        self.folders
            .pending
            .lock()
            .extend(left.into_iter().map(|a| (a.target, a)));
        let this = self.clone();
        tokio::spawn(async move {
            // A folder missing from the tree is taken for deleted: after a crash that lost the
            // tree's last changes, the tree is fetched again first.
            this.loaded_whole().await;
            let mut attempt = 0u32;
            loop {
                if this.folders.len() == 0 {
                    this.folders.wake.notified().await;
                    continue;
                }
                // Changes that follow within the write-back delay go in the same request
                // (`rsync` sets a folder's mode, then its time).
                tokio::time::sleep(this.config.write_back_delay).await;
                match this.push_folder_attrs().await {
                    Ok(()) => attempt = 0,
                    Err(error) => {
                        tracing::warn!(%error, attempt, "folder modes or times did not reach the server; will retry");
                        this.status.lock().last_error = Some(format!("folder change: {error}"));
                        let delay = retry_delay(attempt);
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
    }

    /// Sends the queued folder changes, up to [`MAX_BATCH`] in one request, under the
    /// namespace lock (a rename's attributes and these must not cross on their way). A folder
    /// gone from the tree or from the server has nothing left to push.
    async fn push_folder_attrs(&self) -> Result<()> {
        let _ns = self.ns.lock().await;
        let mut queued: Vec<FolderAttrs> = self.folders.pending.lock().values().cloned().collect();
        queued.sort_by_key(|a| a.seq);
        queued.truncate(MAX_BATCH);
        let mut sent = Vec::new();
        let mut changes = Vec::new();
        for attrs in queued {
            let found = {
                let tree = self.tree.read();
                tree.ino_of(Handle::from_u64(attrs.target))
                    .and_then(|ino| Some((ino, tree.node(ino)?)))
            };
            match found {
                Some((ino, node)) => {
                    // A folder made here goes to the server first (`dirs.rs`).
                    let node = self.on_server(node).await?;
                    let meta = meta_with(&node, attrs.mode, attrs.mtime_ns);
                    changes.push((node, meta));
                    sent.push((ino, attrs));
                }
                None => self.folder_attrs_done(&attrs),
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let results = self.remote.set_meta_many(&changes).await;
        let mut failed = None;
        for ((ino, attrs), result) in sent.into_iter().zip(results) {
            match result {
                Ok(updated) => {
                    // A newer change of the same folder is in the tree already: the server's
                    // answer to this one would put the older fields back until it is pushed.
                    if self.folders.is_newest(&attrs) {
                        self.apply_setattr(ino, Change::Upsert(updated))?;
                    }
                    self.folder_attrs_done(&attrs);
                }
                // Deleted meanwhile (by another client; a deletion here drops it from the tree).
                Err(RemoteError::NotFound) => self.folder_attrs_done(&attrs),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Change `attrs` is on the server (or has nowhere to go).
    fn folder_attrs_done(&self, attrs: &FolderAttrs) {
        writeback::forget_if_current(&mut self.folders.pending.lock(), attrs.target, attrs.seq);
        if let Err(error) = self.wb.attrs_done(attrs.target, attrs.seq) {
            tracing::warn!(%error, "could not record a folder change as sent");
        }
    }
}
