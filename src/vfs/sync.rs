//! Following the server: a full fetch when the tree is empty or the change log has moved on,
//! otherwise incremental changes applied as they arrive, each telling the kernel what to drop.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Result, Vfs, VfsError};
use crate::remote::{Remote, RemoteError};
use crate::tree::Handle;

pub(super) fn spawn_poller<R: Remote>(vfs: Arc<Vfs<R>>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let seq = vfs.tree.read().seq().map(str::to_owned);
            let result = match seq {
                None => vfs.reload().await,
                Some(seq) => vfs.poll_once(&seq).await,
            };
            match result {
                Ok(()) => {
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
        let (mut nodes, seq) = self.remote.snapshot().await?;
        let _ns = self.ns.lock().await;
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

    async fn poll_once(&self, seq: &str) -> Result<()> {
        let lookup = |h: Handle| {
            let tree = self.tree.read();
            tree.ino_of(h).and_then(|i| tree.node(i))
        };
        let polled = self.remote.poll(seq, &lookup).await?;
        if polled.changes.is_empty() && polled.seq.is_none() {
            return Ok(());
        }
        let _ns = self.ns.lock().await;
        let inval = self
            .tree
            .write()
            .apply_changes(polled.changes, polled.seq.as_deref())?;
        self.notify(&inval);
        Ok(())
    }
}
