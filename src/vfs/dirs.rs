//! Folders made through the mount, before the server has them.
//!
//! `mkdir` answers at once: the folder is a node in the tree under a local handle
//! ([`Handle::new_local`]) and a `dir` record in the journal, like a file created here
//! (`local.rs`). A server round trip per folder was the largest part of an `rsync` or
//! `cp -r` of a tree with many folders (2 ms each, waiting behind upload commits). The folder
//! reaches the server in the background, in the order folders were made (a folder before
//! those inside it), or sooner when something needs it there first:
//!
//! ```text
//!   (new) ──mkdir──▶ local ──materializer, or a commit / symlink / rename / folder change
//!                      │      that needs it on the server (under `ns`)──▶ on the server
//!                      │      (tree: same inode, server handle; journal: `dirdone`)
//!                      └──rmdir (empty)──▶ gone (journal: `dirgone`; the server never saw it)
//! ```
//!
//! Files and folders made inside it meanwhile are local too and name it by its local handle;
//! once it is on the server, the tree and the journal translate that handle to the server's
//! (`Tree::ino_of`, `Journal::dir_done`), so a change racing with its creation still lands
//! in it. Renaming a local folder first puts it on the server (rare, and it keeps the fast
//! paths simple).
//!
//! Crash safety: the `dir` record is in the journal when `mkdir` returns (a crash of the
//! daemon keeps it) and on the disk with the next sync, which the first `close()` of a file
//! inside it makes: a file that survives a power loss finds its folder again. A folder made
//! and left empty just before a power loss may be gone, as on a local file system before an
//! `fsync` of its parent. Once the server created it, `dirdone` reaches the disk with the next
//! sync; a mount after a crash before that (or one that came while the server was still
//! answering) fetches the server's tree whole and takes a folder of the same name in the same
//! place for this one, with what was made in it, rather than create it twice.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use super::upload::retry_delay;
use super::{Result, Stat, Vfs, VfsError};
use crate::remote::{Meta, Remote};
use crate::tree::{Change, Handle, Node, NodeKind, ROOT_INO};
use crate::writeback::LocalDir;

/// Folders made here and not yet on the server, oldest first.
#[derive(Default)]
pub(super) struct DirQueue {
    pending: parking_lot::Mutex<VecDeque<Handle>>,
    /// Those a previous mount left, not yet compared with the server's tree (see
    /// [`Vfs::settle_restored`]).
    restored: parking_lot::Mutex<HashSet<Handle>>,
    wake: Notify,
}

impl DirQueue {
    pub(super) fn len(&self) -> usize {
        self.pending.lock().len()
    }

    fn push(&self, handle: Handle) {
        self.pending.lock().push_back(handle);
        self.wake.notify_one();
    }

    fn remove(&self, handle: Handle) {
        self.pending.lock().retain(|&h| h != handle);
    }

    fn first(&self) -> Option<Handle> {
        self.pending.lock().front().copied()
    }
}

impl<R: Remote> Vfs<R> {
    /// `mkdir`: a local folder, on the server soon after (see the module's doc).
    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Stat> {
        self.writable()?;
        self.listed_async(parent).await?;
        let (p, meta) = self.new_entry(parent, name, Some(mode), None)?;
        let node = local_dir_node(Handle::new_local(), p.handle, &meta);
        let handle = node.handle;
        self.wb.put_dir(&record_of(&node))?;
        if let Err(e) = self.apply_own(vec![Change::Upsert(node)], &[(parent, name, Some(handle))])
        {
            self.forget_dir(handle);
            return Err(e);
        }
        // New, so empty: complete even while a first load runs.
        self.loading.mark([handle]);
        self.dirs.push(handle);
        self.stat_handle(handle, true)
    }

    /// `rmdir` of an empty folder the server does not have yet: only here. Under `ns`, which
    /// the materializer holds while it creates one.
    pub(super) fn remove_local_dir(&self, node: &Node) -> Result<()> {
        self.apply(vec![Change::Delete(node.handle)])?;
        self.forget_dir(node.handle);
        Ok(())
    }

    fn forget_dir(&self, handle: Handle) {
        self.dirs.remove(handle);
        if let Err(error) = self.wb.dir_gone(handle.as_u64()) {
            tracing::warn!(%error, "could not record a removed folder in the journal");
        }
    }

    /// Folder `node` as the server has it: created there first when it was made here (with
    /// the local folders it is in). The caller holds `ns`.
    pub(super) async fn on_server(&self, node: Node) -> Result<Node> {
        if !(node.handle.is_local() && node.kind.is_dir()) {
            return Ok(node);
        }
        self.settle_restored().await?;
        let node = {
            let tree = self.tree.read();
            let ino = tree.ino_of(node.handle).ok_or(VfsError::NotFound)?;
            tree.node(ino).ok_or(VfsError::NotFound)?
        };
        if !node.handle.is_local() {
            return Ok(node);
        }
        // The local folders from the outermost one down to `node`.
        let mut chain = vec![node];
        loop {
            let last = chain.last().expect("the chain starts with node");
            let parent = {
                let tree = self.tree.read();
                let ino = tree.ino_of(last.handle).ok_or(VfsError::NotFound)?;
                tree.parent_of(ino).and_then(|p| tree.node(p))
            };
            match parent {
                Some(p) if p.handle.is_local() && p.kind.is_dir() => chain.push(p),
                _ => break,
            }
        }
        let mut made = None;
        while let Some(local) = chain.pop() {
            made = Some(self.create_on_server(local).await?);
        }
        Ok(made.expect("the chain is not empty"))
    }

    /// Creates local folder `local` on the server, in its parent, which is there already.
    async fn create_on_server(&self, local: Node) -> Result<Node> {
        let parent = {
            let tree = self.tree.read();
            let ino = tree.ino_of(local.handle).ok_or(VfsError::NotFound)?;
            // Detached (its folder deleted by another client meanwhile): made at the root, as
            // an upload whose folder is gone is.
            tree.parent_of(ino)
                .and_then(|p| tree.node(p))
                .or_else(|| tree.node(ROOT_INO))
                .ok_or(VfsError::NotFound)?
        };
        let made = self.remote.mkdir(&parent, &Meta::of(&local)).await?;
        // A mode or time set while the server was answering is in the tree, queued for the
        // server (`attrs.rs`): the tree keeps it rather than show the older one meanwhile.
        let now = {
            let tree = self.tree.read();
            let ino = tree.ino_of(local.handle).ok_or(VfsError::NotFound)?;
            tree.node(ino).ok_or(VfsError::NotFound)?
        };
        let made = Node {
            mode: now.mode,
            mtime_ns: now.mtime_ns,
            ..made
        };
        self.now_on_server(local.handle, made.clone())?;
        Ok(made)
    }

    /// Local folder `local` is `node` on the server: the tree (same inode, children and all)
    /// and the journal learn it. The journal's `dirdone` is on the disk with the next sync (a
    /// close's, a commit's); a crash before that leaves the `dir` record alone, and the next
    /// mount finds the folder on the server by its name and parent (`settle_restored`)
    /// rather than make it twice.
    fn now_on_server(&self, local: Handle, node: Node) -> Result<()> {
        let handle = node.handle;
        self.apply(vec![Change::Replace { old: local, node }])?;
        self.dirs.remove(local);
        self.wb.dir_done(local.as_u64(), handle.as_u64())?;
        self.loading.mark([handle]);
        Ok(())
    }

    /// Puts back the folders a previous mount made and did not get to the server (the
    /// journal knows them; the tree's store may have missed the last ones), parents first,
    /// and starts the task that creates them there.
    pub(super) fn resume_dirs(self: &Arc<Self>) -> Result<()> {
        let mut left = self.wb.pending_dirs();
        if !left.is_empty() {
            tracing::info!(count = left.len(), "resuming folders not yet on the server");
        }
        while !left.is_empty() {
            let unplaced: HashSet<u64> = left.iter().map(|d| d.target).collect();
            let known = |d: &LocalDir| {
                self.tree
                    .read()
                    .ino_of(Handle::from_u64(d.parent))
                    .is_some()
            };
            // One whose folder is among those still to place waits for the next round.
            let (ready, waiting): (Vec<_>, Vec<_>) = left
                .into_iter()
                .partition(|d| known(d) || !unplaced.contains(&d.parent));
            if ready.is_empty() {
                // A cycle (cannot happen, barring a bug): at the root then.
                for dir in &waiting {
                    self.restore_dir(dir, false)?;
                }
                break;
            }
            for dir in &ready {
                self.restore_dir(dir, known(dir))?;
            }
            left = waiting;
        }
        let this = self.clone();
        tokio::spawn(async move { this.materializer().await });
        Ok(())
    }

    /// Folders a previous mount left may be on the server already: it died between the
    /// server's answer and the journal's `dirdone`, or the server received the request after
    /// the daemon was gone. Once the tree is fetched whole, one whose folder holds a folder of
    /// the same name from the server is that folder (what was made in it moves there);
    /// the others are created. The caller holds `ns`.
    async fn settle_restored(&self) -> Result<()> {
        if self.dirs.restored.lock().is_empty() {
            return Ok(());
        }
        let snapshot = self.remote.snapshot().await?;
        self.apply_reload(snapshot)?;
        // Parents first: the order they were queued in.
        let restored: Vec<Handle> = {
            let restored = self.dirs.restored.lock();
            let pending = self.dirs.pending.lock();
            pending
                .iter()
                .copied()
                .filter(|h| restored.contains(h))
                .collect()
        };
        for handle in restored {
            let found = {
                let tree = self.tree.read();
                tree.ino_of(handle).and_then(|ino| {
                    let node = tree.node(ino)?;
                    let parent = tree.parent_of(ino)?;
                    // Its siblings: from offset 2, past `.` and `..` (the grandparent, which
                    // may have the same name).
                    let twin = tree.readdir(parent, 2).ok()?.find_map(|e| {
                        let other = tree.node(e.ino)?;
                        (e.ino != ino
                            && other.kind.is_dir()
                            && !other.handle.is_local()
                            && other.name == node.name)
                            .then_some(other)
                    })?;
                    Some(twin)
                })
            };
            if let Some(twin) = found {
                tracing::info!("a folder made before a crash is on the server already: kept once");
                self.now_on_server(handle, twin)?;
            }
        }
        self.wb.sync()?;
        self.dirs.restored.lock().clear();
        Ok(())
    }

    fn restore_dir(&self, dir: &LocalDir, parent_known: bool) -> Result<()> {
        let handle = Handle::from_u64(dir.target);
        let parent = if parent_known {
            Handle::from_u64(dir.parent)
        } else {
            self.tree
                .read()
                .handle_of(ROOT_INO)
                .ok_or(VfsError::NotFound)?
        };
        let meta = Meta {
            name: dir.name.clone(),
            mode: dir.mode,
            mtime_ns: dir.mtime_ns,
            symlink: None,
        };
        self.apply(vec![Change::Upsert(local_dir_node(handle, parent, &meta))])?;
        self.loading.mark([handle]);
        self.dirs.restored.lock().insert(handle);
        self.dirs.push(handle);
        Ok(())
    }

    /// Creates the queued folders on the server, oldest first, each under `ns` on its own
    /// (uploads commit in between); retries with backoff while the server refuses.
    async fn materializer(self: Arc<Self>) {
        let mut attempt = 0u32;
        loop {
            let Some(handle) = self.dirs.first() else {
                let woken = self.dirs.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if self.dirs.len() == 0 {
                    woken.await;
                }
                continue;
            };
            let result = {
                let _ns = self.ns.lock().await;
                let node = {
                    let tree = self.tree.read();
                    tree.ino_of(handle).and_then(|i| tree.node(i))
                };
                match node {
                    Some(node) => self.on_server(node).await.map(drop),
                    // Gone from the tree (deleted with a folder it was in): nothing to make.
                    None => {
                        self.forget_dir(handle);
                        Ok(())
                    }
                }
            };
            match result {
                Ok(()) => {
                    // Made, or on the server already (something needed it there first).
                    self.dirs.remove(handle);
                    attempt = 0;
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "a folder made here did not reach the server; will retry");
                    self.status.lock().last_error = Some(format!("folder: {error}"));
                    tokio::time::sleep(retry_delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

fn record_of(node: &Node) -> LocalDir {
    LocalDir {
        target: node.handle.as_u64(),
        parent: node.parent.map_or(0, |p| p.as_u64()),
        name: node.name.clone(),
        mode: node.mode,
        mtime_ns: node.mtime_ns,
    }
}

/// The tree node of a folder made here: no key and no service attributes until the server
/// creates it.
fn local_dir_node(handle: Handle, parent: Handle, meta: &Meta) -> Node {
    Node {
        handle,
        parent: Some(parent),
        kind: NodeKind::Folder,
        name: meta.name.clone(),
        size: 0,
        mtime_ns: meta.mtime_ns,
        created: meta.mtime_ns.div_euclid(1_000_000_000),
        mode: meta.mode,
        symlink: None,
        key: Vec::new(),
        attrs: Default::default(),
    }
}
