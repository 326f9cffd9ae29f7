//! What the filesystem needs from a storage service. MEGA implements it today (`mega::remote`);
//! Filen implements the same trait (`filen::remote`), so `vfs/`, `tree/`, `cache/` and `writeback/` never
//! learn which service they talk to.
//!
//! Nodes cross this boundary as [`tree::Node`]s: already decrypted, with the service's own key
//! and attributes carried opaquely. What POSIX needs and the service does not model (mode bits,
//! nanosecond mtimes, symlink targets) travels as [`Meta`]; each backend stores it in its
//! encrypted attributes under keys of its own (README, "POSIX metadata").

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;

use bytes::Bytes;
use thiserror::Error;

use crate::cache::ContentId;
use crate::content::Content;
use crate::tree::{Change, Handle, Node};

/// The POSIX view of a node that the filesystem sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The name as the service will hold it (already unescaped from its local form).
    pub name: String,
    pub mode: Option<u32>,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub symlink: Option<String>,
}

impl Meta {
    /// The meta a node has now.
    pub fn of(node: &Node) -> Meta {
        Meta {
            name: node.name.clone(),
            mode: node.mode,
            mtime_ns: node.mtime_ns,
            symlink: node.symlink.clone(),
        }
    }
}

/// Storage use and limit, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub used: u64,
    pub total: u64,
}

/// One decrypted chunk of file content.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub offset: u64,
    pub data: Bytes,
    /// What the whole-file check needs to know about this chunk (MEGA: its CBC-MAC); `None`
    /// when the service verified the chunk by itself (Filen: GCM).
    pub tag: Option<[u8; 16]>,
}

/// One upload to commit with [`Remote::commit_uploads`]; the fields are
/// [`Remote::commit_upload`]'s arguments.
pub struct Commit<U> {
    pub parent: Node,
    pub meta: Meta,
    pub upload: U,
    pub replaces: Option<Node>,
}

/// Part of a tree listing read as it arrives (see [`Remote::snapshot_streamed`]).
#[derive(Debug, Default)]
pub struct Listing {
    pub nodes: Vec<Node>,
    /// Folders whose children are all in this part or an earlier one.
    pub complete: Vec<Handle>,
}

/// A batch of remote changes and the sequence number it brings the tree to.
#[derive(Debug, Default)]
pub struct Polled {
    pub changes: Vec<Change>,
    pub seq: Option<String>,
}

#[derive(Debug, Error)]
pub enum RemoteError {
    #[error("no such node on the server")]
    NotFound,
    #[error("the account's storage quota is exhausted")]
    OverQuota,
    #[error("access denied by the server")]
    Access,
    #[error("the move would put a folder inside itself")]
    Circular,
    #[error("the account holds no key for this node")]
    NoKey,
    #[error("content failed its integrity check: {0}")]
    Integrity(String),
    /// Network trouble, server errors, retries exhausted: worth trying again later.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The change log no longer reaches back to our sequence number: fetch the whole tree.
    #[error("the server asks for a full reload")]
    Reload,
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl RemoteError {
    /// Whether a later retry may succeed without anything changing on our side.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Unavailable(_))
    }
}

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// Looks a node up by handle in the local tree (for changes that only carry a handle).
pub type Lookup<'a> = &'a (dyn Fn(Handle) -> Option<Node> + Sync);

/// A storage service, as the filesystem uses it. All methods may be called concurrently.
pub trait Remote: Send + Sync + 'static {
    /// The whole tree and the sequence number to poll changes from.
    fn snapshot(&self) -> impl Future<Output = Result<(Vec<Node>, Option<String>)>> + Send;

    /// Changes after `seq`. Waits (up to the service's long-poll timeout) when there are none,
    /// then answers an empty batch. Changes this client made itself are left out: the
    /// filesystem applied them when it made them.
    fn poll(&self, seq: &str, lookup: Lookup<'_>) -> impl Future<Output = Result<Polled>> + Send;

    /// [`Remote::snapshot`] handed to `sink` in parts as it arrives, each naming the folders
    /// whose children are then all known, so a folder can be shown before the whole tree is
    /// in. When this returns `Ok` (with the sequence number), every folder is complete. After
    /// an error, what was handed over may be partial and stale: only a full snapshot
    /// corrects it. By default the whole snapshot comes as one part at the end.
    fn snapshot_streamed(
        &self,
        sink: &mut (dyn FnMut(Listing) + Send),
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        async move {
            let (nodes, seq) = self.snapshot().await?;
            sink(Listing {
                nodes,
                complete: Vec::new(),
            });
            Ok(seq)
        }
    }

    fn mkdir(&self, parent: &Node, meta: &Meta) -> impl Future<Output = Result<Node>> + Send;

    /// Content sent by [`Remote::upload_content`], waiting for [`Remote::commit_upload`].
    type Upload: Send + Sync + 'static;

    /// Encrypts and sends `content` (modification time `mtime_ns`). Nothing
    /// is visible until the upload is committed, so this long step needs no lock on the tree.
    /// `parent` is the folder the file is in when the upload starts: Filen binds chunks to a
    /// folder as they arrive (MEGA ignores it); a commit into another folder may answer
    /// [`RemoteError::Unavailable`] so the content is sent again.
    fn upload_content(
        &self,
        content: &Content,
        mtime_ns: i64,
        parent: &Node,
    ) -> impl Future<Output = Result<Self::Upload>> + Send;

    /// Makes an upload a file named by `meta` under `parent`. With `replaces`, the old node's
    /// unknown attributes are kept and the old node is removed once the new one exists, so the
    /// folder never ends with two nodes of the name.
    fn commit_upload(
        &self,
        parent: &Node,
        meta: &Meta,
        upload: Self::Upload,
        replaces: Option<&Node>,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Commits several uploads, in one round trip where the service allows it; one result
    /// per upload, in order. Each succeeds or fails on its own.
    fn commit_uploads(
        &self,
        batch: Vec<Commit<Self::Upload>>,
    ) -> impl Future<Output = Vec<Result<Node>>> + Send {
        async move {
            let mut results = Vec::with_capacity(batch.len());
            for c in batch {
                results.push(
                    self.commit_upload(&c.parent, &c.meta, c.upload, c.replaces.as_ref())
                        .await,
                );
            }
            results
        }
    }

    /// Rewrites a node's metadata (rename within its folder, chmod, utimens); returns the node
    /// as it is now.
    fn set_meta(&self, node: &Node, meta: &Meta) -> impl Future<Output = Result<Node>> + Send;

    /// [`Remote::set_meta`] of several nodes: a result each, in order. A service that takes
    /// several commands per request sends them together; by default, one after another.
    fn set_meta_many(
        &self,
        changes: &[(Node, Meta)],
    ) -> impl Future<Output = Vec<Result<Node>>> + Send {
        async move {
            let mut results = Vec::with_capacity(changes.len());
            for (node, meta) in changes {
                results.push(self.set_meta(node, meta).await);
            }
            results
        }
    }

    /// Moves a node under another folder; returns the node as it is now.
    fn move_to(&self, node: &Node, parent: &Node) -> impl Future<Output = Result<Node>> + Send;

    /// Deletes a node and everything under it.
    fn delete(&self, node: &Node) -> impl Future<Output = Result<()>> + Send;

    fn quota(&self) -> impl Future<Output = Result<Quota>> + Send;

    /// Whether `node` belongs to a read-only part of the drive (e.g. a folder someone else
    /// shares with us): no change in or to it is attempted.
    fn read_only(&self, _node: &Node) -> bool {
        false
    }

    /// Identifies the node's current content, for the block cache.
    fn content_id(&self, node: &Node) -> ContentId;

    /// The chunk of a file of `size` bytes that holds byte `offset`: the unit of fetching,
    /// decryption, caching and verification.
    fn chunk_at(&self, size: u64, offset: u64) -> Range<u64>;

    /// How many bytes of consecutive chunks one [`Remote::fetch`] is best asked for: reads and
    /// read-ahead group missing chunks into fetches of up to this size.
    fn fetch_batch(&self) -> u64 {
        8 * 1024 * 1024
    }

    /// Fetches and decrypts the chunks covering `range` (which starts and ends on chunk
    /// boundaries or at the end of the file).
    fn fetch(
        &self,
        node: &Node,
        range: Range<u64>,
    ) -> impl Future<Output = Result<Vec<Fetched>>> + Send;

    /// Checks a file once every chunk's tag is known (MEGA: the condensed MAC against the
    /// meta-MAC in the node key). Chunks without tags are verified already.
    fn verify(&self, node: &Node, tags: &BTreeMap<u64, [u8; 16]>) -> Result<()>;
}
