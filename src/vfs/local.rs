//! Files created through the mount and not uploaded yet.
//!
//! `create` makes a file locally (a node under a local handle, [`crate::tree::Handle::new_local`], and a
//! staging file) without asking the server; its first upload creates the node there and the
//! inode keeps going with the server's handle. Until then the file exists only in the tree and
//! the journal, so renaming it, changing its mode or times, or deleting it costs no round trip:
//! the change is made in the tree, written into its queued journal entries, and travels with
//! the upload. That is what makes `cp -r`, `tar x` and `rsync` of many small files fast.
//!
//! The one race is with the committer: while a file's first upload is being committed (its
//! name and folder already read, the server's answer not yet applied), a local change would
//! be lost. The committer marks such files in `committing`, under the same lock these fast
//! paths check it, and a change to a marked file takes the ordinary path: it waits for the
//! namespace lock, and by then the file is on the server.

use std::collections::HashSet;

use super::{Result, SetAttr, Vfs};
use crate::remote::{Meta, Remote};
use crate::tree::{self, Change, Handle, Node, NodeKind};

impl<R: Remote> Vfs<R> {
    /// Renames or moves a local file that no upload is committing, when nothing is in the way
    /// at the new name (replacing another file needs the server). Answers whether it did.
    pub(super) fn local_rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
    ) -> Result<bool> {
        let committing = self.committing.lock();
        let src = {
            let tree = self.tree.read();
            match (tree.peek(parent, name), tree.peek(new_parent, new_name)) {
                (Some(src), None) => src,
                _ => return Ok(false),
            }
        };
        let Ok(node) = self.node(src) else {
            return Ok(false);
        };
        // A folder made here is renamed on the server (`dirs.rs`).
        if !node.handle.is_local()
            || node.kind.is_dir()
            || committing.contains(&node.handle)
            || new_name.len() > 255
        {
            return Ok(false);
        }
        let Ok(remote_name) = tree::names::unescape(new_name) else {
            return Ok(false);
        };
        let Ok(dest) = self.dir_node(new_parent) else {
            return Ok(false);
        };
        if self.remote.read_only(&dest) {
            return Ok(false);
        }
        let moved = Node {
            parent: Some(dest.handle),
            name: remote_name.into_owned(),
            ..node
        };
        let handle = moved.handle;
        self.retarget_queued(&moved)?;
        self.apply_own(
            vec![Change::Upsert(moved)],
            &[(parent, name, None), (new_parent, new_name, Some(handle))],
        )?;
        Ok(true)
    }

    /// Changes the mode or times of a local file that no upload is committing. Answers whether
    /// it did.
    pub(super) fn local_setattr(&self, ino: u64, set: SetAttr) -> Result<bool> {
        let committing = self.committing.lock();
        let node = self.node(ino)?;
        if !node.handle.is_local() || committing.contains(&node.handle) {
            return Ok(false);
        }
        let meta = self.meta_after(ino, &node, set)?;
        if meta != Meta::of(&node) {
            let updated = with_meta(&node, &meta);
            self.retarget_queued(&updated)?;
            self.apply_setattr(ino, Change::Upsert(updated))?;
        }
        Ok(true)
    }

    /// Sets a node's metadata: on the server, or only here for a local file (under the
    /// namespace lock, which the committer also holds).
    pub(super) async fn set_meta_of(&self, node: &Node, meta: &Meta) -> Result<Node> {
        if !node.handle.is_local() {
            return Ok(self.remote.set_meta(node, meta).await?);
        }
        let updated = with_meta(node, meta);
        self.retarget_queued(&updated)?;
        Ok(updated)
    }

    /// Moves a node to another folder: on the server, or only here for a local file.
    pub(super) async fn move_of(&self, node: &Node, dest: &Node) -> Result<Node> {
        if !node.handle.is_local() {
            return Ok(self.remote.move_to(node, dest).await?);
        }
        let moved = Node {
            parent: Some(dest.handle),
            ..node.clone()
        };
        self.retarget_queued(&moved)?;
        Ok(moved)
    }

    /// A local file's queued uploads learn its new name, folder and mode: they are what
    /// creates it on the server should the tree's last changes be lost in a crash. The journal
    /// has the change when this returns, so a crash of the daemon keeps it; it reaches the
    /// disk with the journal's next sync (an `fsync`, the next commit of uploads), as a
    /// rename on a local file system reaches its disk with the next commit.
    fn retarget_queued(&self, node: &Node) -> Result<()> {
        let Some(ino) = self.tree.read().ino_of(node.handle) else {
            return Ok(());
        };
        let queued = match self.files.lock().get(&ino) {
            Some(local) => local.queued.clone(),
            None => return Ok(()),
        };
        let parent = node.parent.map_or(0, |p| p.as_u64());
        for id in queued {
            // Only a change is written: after `utimensat`, whose new time the entries already
            // have (`set_local_mtime`), this wrote each entry again unchanged.
            if let Some(mut e) = self.wb.get(id)?
                && (e.parent, &e.name, e.mode) != (parent, &node.name, node.mode)
            {
                e.parent = parent;
                e.name = node.name.clone();
                e.mode = node.mode;
                self.wb.update(&e)?;
            }
        }
        Ok(())
    }

    /// Files created locally whose first `close()` never came (the daemon died first) have no
    /// content anywhere: they leave the tree, as an unsynced new file may after a crash. So
    /// do local folders the journal does not know (their record was lost with a power loss,
    /// so was everything made in them since, or they reached the server: `dirs.rs`).
    pub(super) fn drop_unqueued_local_files(&self) -> Result<()> {
        let mut queued: HashSet<u64> = self.wb.pending()?.iter().map(|e| e.target).collect();
        queued.extend(self.wb.pending_dirs().iter().map(|d| d.target));
        let gone: Vec<Change> = self
            .tree
            .read()
            .local_handles()
            .into_iter()
            .filter(|h| !queued.contains(&h.as_u64()))
            .map(Change::Delete)
            .collect();
        if !gone.is_empty() {
            tracing::info!(
                count = gone.len(),
                "dropping files created but never closed"
            );
            self.apply(gone)?;
        }
        Ok(())
    }
}

/// The tree node of a file created here (or restored from its journal entry): no key and no
/// service attributes until its first upload gives it both.
pub(super) fn local_file_node(
    handle: Handle,
    parent: Option<Handle>,
    name: &str,
    mode: Option<u32>,
    mtime_ns: i64,
    size: u64,
) -> Node {
    Node {
        handle,
        parent,
        kind: NodeKind::File,
        name: name.to_owned(),
        size,
        mtime_ns,
        created: mtime_ns.div_euclid(1_000_000_000),
        mode,
        symlink: None,
        key: Vec::new(),
        attrs: Default::default(),
    }
}

pub(super) fn with_meta(node: &Node, meta: &Meta) -> Node {
    Node {
        name: meta.name.clone(),
        mode: meta.mode,
        mtime_ns: meta.mtime_ns,
        symlink: meta.symlink.clone(),
        ..node.clone()
    }
}
