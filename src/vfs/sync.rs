//! Following the server: a full fetch when the tree is empty or the change log has moved on,
//! otherwise incremental changes applied as they arrive, each telling the kernel what to drop.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Result, Vfs, VfsError};
use crate::remote::{Remote, RemoteError};
use crate::tree::Handle;

/// The shortest time between two fetches of changes while changes keep coming.
///
/// Why: each change this mount makes comes back through the feed, and fetching it costs three
/// requests (the wait that ends, the fetch, the fetch that finds nothing more and gets a new
/// wait). Writing 10 000 small files made 8 500 such requests besides the 20 000 that upload
/// and commit them, a third of the daemon's and the server's work. Fetching at most this
/// often gathers a burst into one batch; a change after a quiet spell is still fetched the
/// moment the server announces it.
const FETCH_EVERY: Duration = Duration::from_millis(100);

pub(super) fn spawn_poller<R: Remote>(vfs: Arc<Vfs<R>>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        let mut last_changes: Option<Instant> = None;
        loop {
            if let Some(at) = last_changes {
                tokio::time::sleep_until((at + FETCH_EVERY).into()).await;
            }
            let seq = vfs.tree.read().seq().map(str::to_owned);
            let result = match seq {
                None => vfs.reload().await.map(|()| true),
                Some(seq) => vfs.poll_once(&seq).await,
            };
            match result {
                Ok(changed) => {
                    if changed {
                        last_changes = Some(Instant::now());
                    }
                    failures = 0;
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    vfs.status.lock().last_sync = Some(now);
                }
                Err(VfsError::Remote(RemoteError::Reload)) => {
                    tracing::info!("change log expired; fetching the whole tree");
                    if let Err(error) = vfs.reload().await {
                        tracing::warn!(%error, "reload failed");
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "following remote changes failed");
                    vfs.status.lock().last_error = Some(format!("sync: {error}"));
                    let delay = Duration::from_millis(250)
                        .saturating_mul(1 << failures.min(7))
                        .min(Duration::from_secs(30));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    });
}

impl<R: Remote> Vfs<R> {
    /// Replaces the tree with a full fetch (inode numbers of known nodes stay).
    pub(super) async fn reload(&self) -> Result<()> {
        let snapshot = self.remote.snapshot().await?;
        let _ns = self.ns.lock().await;
        self.apply_reload(snapshot)
    }

    /// Puts a full fetch in place of the tree; the caller holds `ns`.
    pub(super) fn apply_reload(
        &self,
        (mut nodes, seq): (Vec<crate::tree::Node>, Option<String>),
    ) -> Result<()> {
        let mut tree = self.tree.write();
        // Files created here and not uploaded yet are not in the server's tree; they stay.
        nodes.extend(
            tree.local_handles()
                .into_iter()
                .filter_map(|h| tree.ino_of(h).and_then(|i| tree.node(i))),
        );
        let inval = tree.apply_snapshot(nodes, seq.as_deref())?;
        drop(tree);
        self.notify(&inval);
        Ok(())
    }

    /// One poll; returns whether it brought changes (or a new sequence number).
    async fn poll_once(&self, seq: &str) -> Result<bool> {
        let lookup = |h: Handle| {
            let tree = self.tree.read();
            tree.ino_of(h).and_then(|i| tree.node(i))
        };
        let polled = self.remote.poll(seq, &lookup).await?;
        if polled.changes.is_empty() && polled.seq.is_none() {
            return Ok(false);
        }
        let _ns = self.ns.lock().await;
        let inval = self
            .tree
            .write()
            .apply_changes(polled.changes, polled.seq.as_deref())?;
        self.notify(&inval);
        Ok(true)
    }
}
