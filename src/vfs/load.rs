//! The first load of a drive with nothing stored locally: the mount is live before the whole
//! tree has arrived.
//!
//! A remount starts from the local tree and catches up in the background. The first mount
//! has no local tree; it reads the full listing ([`Remote::snapshot_streamed`]) and applies it
//! part by part as it arrives. The mount goes live as soon as the root folder's listing is
//! complete. From then on, a request that needs a folder's children — `lookup` and `readdir`
//! in it, creating, removing or renaming in it, `rmdir` of it — waits until that folder is
//! complete, and only that long: serving a folder half-listed would show it partial, and
//! `rsync --delete` or a "does this name exist" check would act on that.
//!
//! States: `Loading` (some folders complete) → `Whole`. A failure of the streamed read after
//! the mount went live wakes the waiters with `EIO` and falls back to full snapshots (which
//! also remove whatever the cut listing left stale) until one succeeds; the load then
//! becomes whole. Requests that do not depend on a folder's children (getattr, open, read,
//! write of known inodes) never wait.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::{Notify, oneshot};

use super::{Result, Vfs, VfsError, sync};
use crate::remote::{Listing, Remote, RemoteError};
use crate::tree::{Change, Handle, ROOT_INO};

/// Where the first load stands; waiters block (FUSE threads) or await (async requests) on it.
pub(super) struct Loading {
    /// Fast path: every folder is complete.
    whole: AtomicBool,
    state: Mutex<LoadState>,
    changed: Condvar,
    changed_async: Notify,
}

#[derive(Default)]
struct LoadState {
    /// Folders whose children are all in the tree.
    complete: HashSet<Handle>,
    /// Failed attempts so far: a waiter gives up when this moves.
    failures: u64,
    last_error: String,
}

impl Loading {
    /// A tree that is already whole (loaded from the local store).
    pub(super) fn whole() -> Self {
        Loading {
            whole: AtomicBool::new(true),
            state: Mutex::default(),
            changed: Condvar::new(),
            changed_async: Notify::new(),
        }
    }

    fn begin(&self) {
        self.whole.store(false, Ordering::Release);
    }

    /// `folders` are complete (also used for folders made here during the load: empty).
    pub(super) fn mark(&self, folders: impl IntoIterator<Item = Handle>) {
        if self.whole.load(Ordering::Acquire) {
            return;
        }
        self.state.lock().complete.extend(folders);
        self.wake();
    }

    fn finish(&self) {
        self.whole.store(true, Ordering::Release);
        self.state.lock().complete = HashSet::new();
        self.wake();
    }

    fn failed(&self, error: &VfsError) {
        let mut state = self.state.lock();
        state.failures += 1;
        state.last_error = error.to_string();
        drop(state);
        self.wake();
    }

    fn wake(&self) {
        self.changed.notify_all();
        self.changed_async.notify_waiters();
    }

    /// Whether a waiter for `folder` that started after `failures` failures may go on.
    fn check(&self, state: &LoadState, folder: Handle, failures: u64) -> Option<Result<()>> {
        if self.whole.load(Ordering::Acquire) || state.complete.contains(&folder) {
            return Some(Ok(()));
        }
        (state.failures > failures).then(|| {
            Err(VfsError::Remote(RemoteError::Unavailable(format!(
                "the drive's listing is still loading and the last attempt failed: {}",
                state.last_error
            ))))
        })
    }
}

impl<R: Remote> Vfs<R> {
    /// The folder `ino` must be completely listed before a request may rely on its children:
    /// during a first load, blocks until it is (see the module doc). Anything but a folder
    /// passes (the request fails on its own terms).
    pub(super) fn listed(&self, ino: u64) -> Result<()> {
        let Some(folder) = self.folder_to_wait_for(ino) else {
            return Ok(());
        };
        let mut state = self.loading.state.lock();
        let failures = state.failures;
        loop {
            if let Some(ready) = self.loading.check(&state, folder, failures) {
                return ready;
            }
            self.loading.changed.wait(&mut state);
        }
    }

    /// Whether folder `ino`'s listing is complete, so that a change in it need not wait.
    pub(super) fn listed_now(&self, ino: u64) -> bool {
        let Some(folder) = self.folder_to_wait_for(ino) else {
            return true;
        };
        let state = self.loading.state.lock();
        matches!(
            self.loading.check(&state, folder, state.failures),
            Some(Ok(()))
        )
    }

    /// [`Vfs::listed`] for async requests.
    pub(super) async fn listed_async(&self, ino: u64) -> Result<()> {
        let Some(folder) = self.folder_to_wait_for(ino) else {
            return Ok(());
        };
        let failures = self.loading.state.lock().failures;
        loop {
            let changed = self.loading.changed_async.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between is not missed.
            changed.as_mut().enable();
            if let Some(ready) = self
                .loading
                .check(&self.loading.state.lock(), folder, failures)
            {
                return ready;
            }
            changed.await;
        }
    }

    /// Waits until the first load (if one runs) has the whole tree in.
    pub(super) async fn loaded_whole(&self) {
        loop {
            let changed = self.loading.changed_async.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.loading.whole.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    fn folder_to_wait_for(&self, ino: u64) -> Option<Handle> {
        if self.loading.whole.load(Ordering::Acquire) {
            return None;
        }
        let tree = self.tree.read();
        let attr = tree.getattr(ino)?;
        attr.kind.is_dir().then(|| tree.handle_of(ino)).flatten()
    }

    /// Starts the first load of an empty tree and returns once the root folder is complete
    /// (or the whole tree is in): the mount can go live. A failure before that is returned
    /// (the mount fails with it); the rest of the load goes on in the background, then
    /// remote changes are followed.
    pub(super) async fn load_first(self: &Arc<Self>) -> Result<()> {
        self.loading.begin();
        let (root_ready, live) = oneshot::channel();
        tokio::spawn(self.clone().load_in_background(root_ready));
        live.await
            .unwrap_or_else(|_| Err(VfsError::Remote(RemoteError::Other("load stopped".into()))))
    }

    async fn load_in_background(self: Arc<Self>, root_ready: oneshot::Sender<Result<()>>) {
        let mut root_ready = Some(root_ready);
        if let Err(error) = self.load_streamed(&mut root_ready).await {
            if let Some(tx) = root_ready.take() {
                let _ = tx.send(Err(error));
                return;
            }
            tracing::warn!(%error, "reading the drive's listing failed; fetching it again");
            self.loading.failed(&error);
            let mut failures = 0u32;
            while let Err(error) = self.reload().await {
                failures += 1;
                tracing::warn!(%error, failures, "fetching the drive's listing failed");
                self.loading.failed(&error);
                let delay = Duration::from_millis(250).saturating_mul(1 << failures.min(7));
                tokio::time::sleep(delay.min(Duration::from_secs(30))).await;
            }
        }
        self.loading.finish();
        if let Some(tx) = root_ready.take() {
            let _ = tx.send(Ok(()));
        }
        tracing::info!(nodes = self.tree.read().len(), "drive listing loaded");
        sync::spawn_poller(self);
    }

    /// Reads the listing as it arrives, applying each part and marking its complete folders;
    /// tells `root_ready` once the root folder is complete. Ends with the tree's sequence
    /// number set.
    async fn load_streamed(
        &self,
        root_ready: &mut Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        let mut failed: Option<VfsError> = None;
        let mut take = |listing: Listing| {
            if failed.is_some() {
                return;
            }
            let changes = listing.nodes.into_iter().map(Change::Upsert).collect();
            if let Err(e) = self.apply(changes) {
                failed = Some(e);
                return;
            }
            self.loading.mark(listing.complete);
            let root = self.tree.read().handle_of(ROOT_INO);
            if let Some(root) = root
                && self.loading.state.lock().complete.contains(&root)
                && let Some(tx) = root_ready.take()
            {
                let _ = tx.send(Ok(()));
            }
        };
        let seq = self.remote.snapshot_streamed(&mut take).await;
        if let Some(e) = failed {
            return Err(e);
        }
        let inval = self
            .tree
            .write()
            .apply_changes(Vec::new(), seq?.as_deref())?;
        self.notify(&inval);
        Ok(())
    }
}
