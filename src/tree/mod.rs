//! The node tree: remote nodes ↔ inode numbers, children by local name, lookup counts.
//!
//! The tree knows nothing of FUSE or of a service's protocol. A backend feeds it [`Node`]s — a
//! full snapshot ([`Tree::apply_snapshot`]) or changes as they arrive ([`Tree::apply_changes`]),
//! each with the sequence number they bring the tree to — and the filesystem asks it questions
//! by inode number. Both return [`Invalidation`]s: what the kernel may hold stale.
//!
//! - **Inode numbers** are handed out once per handle and persisted with the node, so they are
//!   stable across remounts. The node of kind [`NodeKind::Root`] is [`ROOT_INO`].
//! - **Local names** follow [`names`]: escaped, shortened, and made unique within each folder
//!   (duplicates ordered by creation time, then handle). A folder keeps an index from local name
//!   to inode, maintained in O(1) per change; only a change touching duplicate names recomputes
//!   the folder's names.
//! - **Lookup counts**: [`Tree::lookup`] counts each answer the kernel gets; [`Tree::forget`]
//!   takes them back. A node deleted remotely while the kernel still holds it stays as a detached
//!   entry (answering `getattr`) until forgotten, then its inode is freed.
//! - **Deletes are deferred to the end of a batch**, so a node deleted and re-added within one
//!   batch (how a move can arrive) keeps its inode. Deleting a folder deletes its subtree.
//! - **Order of arrival does not matter**: a node whose parent is not known yet waits and is
//!   attached when the parent arrives. A move that would put a folder inside itself is not
//!   applied (the node is left detached rather than creating a cycle).
//! - **Persistence** ([`TreeStore`]): every batch writes the nodes it changed and the sequence
//!   number in one atomic sled batch. A remount loads the tree locally ([`Tree::open`]) and
//!   catches up from [`Tree::seq`] with incremental changes, so the first `ls` never waits for a
//!   full fetch of a large account. Should a write fail, memory is ahead of the store; the store
//!   stays consistent with its own sequence number, so replaying from it is always correct.
//!
//! The tree is `Sync` and its read methods, [`Tree::lookup`] included, take `&self`: many
//! filesystem threads can answer under a read lock; changes and `forget` take a write lock.

pub mod names;
mod store;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use thiserror::Error;

pub use store::TreeStore;
use store::{Commit, Record, attrs_from_bytes, attrs_to_bytes};

/// The inode number of the drive's root (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;
const FIRST_INO: u64 = 2;
/// Offsets `readdir` gives `.` and `..`; a child's offset is its inode number plus this.
const DOT_OFFSETS: u64 = 2;

/// Everything that can go wrong in the tree and its store.
#[derive(Debug, Error)]
pub enum TreeError {
    #[error("tree store: {0}")]
    Store(#[from] sled::Error),
    #[error("tree store is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("tree store was written with another key")]
    KeyMismatch,
    #[error("invalid node handle {0:?}")]
    BadHandle(String),
    #[error("no inode {0}")]
    NotFound(u64),
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),
}

/// A node's identity on the service. MEGA handles (8 base64url characters, 6 bytes) are held as
/// the big-endian number of those bytes; other backends may map their ids to any `u64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(u64);

impl Handle {
    pub const fn from_u64(v: u64) -> Self {
        Handle(v)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_bytes(b: [u8; 6]) -> Self {
        let mut be = [0u8; 8];
        be[2..].copy_from_slice(&b);
        Handle(u64::from_be_bytes(be))
    }

    /// The 6 bytes of a MEGA handle; `None` when the value does not fit in 48 bits.
    pub fn to_bytes(self) -> Option<[u8; 6]> {
        let be = self.0.to_be_bytes();
        if be[..2] != [0, 0] {
            return None;
        }
        let mut out = [0u8; 6];
        out.copy_from_slice(&be[2..]);
        Some(out)
    }

    /// Parses a MEGA node handle (`"AbCdEfGh"`).
    pub fn from_mega(s: &str) -> Result<Self, TreeError> {
        let bad = || TreeError::BadHandle(s.to_owned());
        if s.len() != 8 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        Ok(Handle::from_bytes(bytes.try_into().map_err(|_| bad())?))
    }

    /// The MEGA form of this handle, or `None` when it is not a 48-bit value.
    pub fn to_mega(self) -> Option<String> {
        self.to_bytes().map(|b| URL_SAFE_NO_PAD.encode(b))
    }

    /// A fresh handle for a file created locally that the server does not hold yet: random,
    /// in the range [`Handle::is_local`] recognises.
    pub fn new_local() -> Self {
        let mut be = [0u8; 8];
        be[2..].copy_from_slice(&crate::crypto::random_array::<6>());
        Handle(u64::from_be_bytes(be) | LOCAL_TAG)
    }

    /// Whether this handle names a file created locally and not uploaded yet. No service
    /// handle is ever in this range: MEGA's are 48-bit and the Filen backend keeps its hashed
    /// handles out of it (`filen::remote::handle_of`).
    pub const fn is_local(self) -> bool {
        self.0 & LOCAL_TAG == LOCAL_TAG
    }
}

/// The top 16 bits every local handle has set.
const LOCAL_TAG: u64 = 0xFFFF << 48;

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({self})")
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_mega() {
            Some(s) => f.write_str(&s),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

/// What a node is. The numbering is MEGA's node type `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    File,
    Folder,
    /// The drive's root ("Cloud Drive"); mounted as [`ROOT_INO`].
    Root,
    Inbox,
    Rubbish,
}

impl NodeKind {
    pub fn is_dir(self) -> bool {
        self != NodeKind::File
    }

    fn to_u8(self) -> u8 {
        match self {
            NodeKind::File => 0,
            NodeKind::Folder => 1,
            NodeKind::Root => 2,
            NodeKind::Inbox => 3,
            NodeKind::Rubbish => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => NodeKind::File,
            1 => NodeKind::Folder,
            2 => NodeKind::Root,
            3 => NodeKind::Inbox,
            4 => NodeKind::Rubbish,
            _ => return None,
        })
    }
}

/// A node as a backend delivers it, decrypted. The tree interprets the fields it needs to answer
/// the filesystem and carries `key` and `attrs` opaquely for the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub handle: Handle,
    /// `None` for the top-level nodes (root, inbox, rubbish) and for nodes shared with us whose
    /// parent we cannot see.
    pub parent: Option<Handle>,
    pub kind: NodeKind,
    /// The name exactly as the service holds it; [`names`] maps it to a local one.
    pub name: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Creation time as the service reports it (seconds since the Unix epoch); orders
    /// duplicate names so that the oldest node keeps the plain name.
    pub created: i64,
    /// POSIX permission bits when the node's attributes carry them.
    pub mode: Option<u32>,
    /// Target when the node is a symbolic link.
    pub symlink: Option<String>,
    /// The node's key, as the backend needs it; opaque to the tree.
    pub key: Vec<u8>,
    /// The node's decrypted attributes, kept so the backend can rewrite them; opaque here.
    pub attrs: Map<String, Value>,
}

/// One change, as incremental updates deliver them.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new node, or a new state of a known one (rename, move, new attributes or content).
    Upsert(Node),
    /// A known node moves to another folder, keeping its other fields.
    Move { handle: Handle, parent: Handle },
    /// A node and everything under it is gone.
    Delete(Handle),
    /// A file was re-uploaded: node `node` took the place of handle `old`. The inode stays, so
    /// the kernel's references (open files among them) follow the new content.
    Replace { old: Handle, node: Node },
}

/// Something the kernel may have cached that is no longer true.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Invalidation {
    /// The name `name` in folder `parent` now points elsewhere or nowhere.
    Entry { parent: u64, name: String },
    /// The attributes (or content) of this inode changed.
    Inode(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Directory,
    RegularFile,
    Symlink,
}

/// What `getattr` needs, copied out of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub handle: Handle,
    pub kind: NodeKind,
    pub file_type: FileType,
    pub size: u64,
    pub mtime_ns: i64,
    pub created: i64,
    pub mode: Option<u32>,
}

/// One `readdir` entry. Resuming at `offset` continues after this entry, even when the folder
/// changed in between: children are ordered by inode number, and the offset names a position in
/// that order rather than an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub ino: u64,
    pub offset: u64,
    pub file_type: FileType,
    pub name: &'a str,
}

struct Dir {
    /// Local name → child inode: the folder's lookup index.
    by_local: HashMap<Box<str>, u64>,
    /// Children by inode number: `readdir`'s stable order.
    order: BTreeSet<u64>,
    /// How many children carry a suffixed name (removing any child may then rename another).
    deduped: u32,
    /// `by_local` and the children's names are stale until [`Tree::relabel`] runs.
    needs_relabel: bool,
}

struct Entry {
    handle: Handle,
    parent: Option<Handle>,
    /// 0 while not attached to a folder (top level, parent unknown, or deleted).
    parent_ino: u64,
    kind: NodeKind,
    /// Deleted remotely: pending the end of the batch, or kept for the kernel's references.
    deleted: bool,
    /// Carries a suffixed (duplicate) name.
    deduped: bool,
    mode: Option<u32>,
    size: u64,
    mtime_ns: i64,
    created: i64,
    lookups: AtomicU64,
    name: Box<str>,
    /// The local name when it differs from `name`.
    local: Option<Box<str>>,
    symlink: Option<Box<str>>,
    key: Box<[u8]>,
    attrs: Box<[u8]>,
    dir: Option<Box<Dir>>,
}

impl Entry {
    fn from_record(r: Record) -> Self {
        Entry {
            handle: r.handle,
            parent: r.parent,
            parent_ino: 0,
            kind: r.kind,
            deleted: false,
            deduped: false,
            mode: r.mode,
            size: r.size,
            mtime_ns: r.mtime_ns,
            created: r.created,
            lookups: AtomicU64::new(0),
            name: r.name,
            local: None,
            symlink: r.symlink,
            key: r.key,
            attrs: r.attrs,
            dir: r.kind.is_dir().then(Dir::new),
        }
    }

    fn record(&self, ino: u64) -> Record {
        Record {
            ino,
            handle: self.handle,
            parent: self.parent,
            kind: self.kind,
            name: self.name.clone(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            created: self.created,
            mode: self.mode,
            symlink: self.symlink.clone(),
            key: self.key.clone(),
            attrs: self.attrs.clone(),
        }
    }

    fn local_name(&self) -> &str {
        self.local.as_deref().unwrap_or(&self.name)
    }

    fn file_type(&self) -> FileType {
        if self.kind.is_dir() {
            FileType::Directory
        } else if self.symlink.is_some() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        }
    }

    /// Duplicate names are ordered by this key.
    fn order_key(&self) -> (i64, Handle) {
        (self.created, self.handle)
    }
}

impl Dir {
    fn new() -> Box<Self> {
        Box::new(Dir {
            by_local: HashMap::new(),
            order: BTreeSet::new(),
            deduped: 0,
            needs_relabel: false,
        })
    }
}

/// Scratch state of one batch of changes.
#[derive(Default)]
struct Batch {
    /// Whether to collect invalidations (not when building a tree nobody has seen).
    collect: bool,
    inval: Vec<Invalidation>,
    /// Marked deleted in this batch; removed at its end unless re-added.
    deleted: Vec<u64>,
    relabel: Vec<u64>,
    dirty: HashSet<u64>,
    removed: Vec<Handle>,
}

impl Batch {
    fn inval(&mut self, i: Invalidation) {
        if self.collect {
            self.inval.push(i);
        }
    }

    fn into_invalidations(self) -> Vec<Invalidation> {
        let mut seen = HashSet::with_capacity(self.inval.len());
        self.inval
            .into_iter()
            .filter(|i| seen.insert(i.clone()))
            .collect()
    }
}

/// The in-memory tree; see the module documentation.
pub struct Tree {
    entries: HashMap<u64, Entry>,
    /// Live nodes (and nodes deleted in the running batch) by handle.
    by_handle: HashMap<Handle, u64>,
    /// Nodes whose parent is not (yet) known, by that parent's handle.
    waiting: HashMap<Handle, Vec<u64>>,
    /// Local folders that reached the server, by their local handle: the server's handle.
    /// A change made while the folder was being created may still name it by its local
    /// handle (a file created in it, a queued upload's folder); it lands in the folder all
    /// the same. For this mount only: what is persisted names the server's handle.
    aliases: HashMap<Handle, Handle>,
    next_ino: u64,
    seq: Option<String>,
    store: Option<TreeStore>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("nodes", &self.by_handle.len())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Tree {
    /// An empty tree that persists nothing.
    pub fn new() -> Self {
        Tree {
            entries: HashMap::new(),
            by_handle: HashMap::new(),
            waiting: HashMap::new(),
            aliases: HashMap::new(),
            next_ino: FIRST_INO,
            seq: None,
            store: None,
        }
    }

    /// Loads the tree persisted in `store` (empty for a new store) and keeps writing every
    /// batch to it.
    pub fn open(store: TreeStore) -> Result<Self, TreeError> {
        let loaded = store.load()?;
        let mut tree = Tree::new();
        tree.entries.reserve(loaded.records.len());
        tree.by_handle.reserve(loaded.records.len());
        let mut max_ino = ROOT_INO;
        for r in loaded.records {
            let (ino, handle) = (r.ino, r.handle);
            if ino == 0 || tree.entries.insert(ino, Entry::from_record(r)).is_some() {
                return Err(TreeError::Corrupt("inode number used twice"));
            }
            tree.by_handle.insert(handle, ino);
            max_ino = max_ino.max(ino);
        }
        tree.next_ino = loaded
            .next_ino
            .unwrap_or(FIRST_INO)
            .max(max_ino + 1)
            .max(FIRST_INO);
        tree.seq = loaded.seq;
        let mut b = Batch::default();
        let inos: Vec<u64> = tree.entries.keys().copied().collect();
        for ino in inos {
            tree.attach(ino, &mut b);
        }
        tree.relabel_pending(&mut b);
        tree.store = Some(store);
        Ok(tree)
    }

    /// The store the tree writes to, if any.
    pub fn store(&self) -> Option<&TreeStore> {
        self.store.as_ref()
    }

    /// The sequence number the tree is current to.
    pub fn seq(&self) -> Option<&str> {
        self.seq.as_deref()
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.by_handle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_handle.is_empty()
    }

    /// Replaces the whole tree with `nodes` (a full fetch): nodes not in it are deleted, known
    /// ones keep their inode numbers. `seq`, when given, becomes the tree's sequence number.
    pub fn apply_snapshot(
        &mut self,
        nodes: impl IntoIterator<Item = Node>,
        seq: Option<&str>,
    ) -> Result<Vec<Invalidation>, TreeError> {
        let mut b = Batch {
            collect: !self.entries.is_empty(),
            ..Batch::default()
        };
        for (&ino, e) in self.entries.iter_mut() {
            if !e.deleted {
                e.deleted = true;
                b.deleted.push(ino);
            }
        }
        for node in nodes {
            self.upsert(node, &mut b);
        }
        self.finish(b, seq)
    }

    /// Applies incremental changes in order, then `seq` when given.
    pub fn apply_changes(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        seq: Option<&str>,
    ) -> Result<Vec<Invalidation>, TreeError> {
        let mut b = Batch {
            collect: true,
            ..Batch::default()
        };
        for change in changes {
            // A change naming a folder made here by the handle it had before it reached the
            // server (read before, applied after: a folder's `chmod` racing with its creation)
            // is about the folder it became. Applied to the old handle, it made a second
            // folder of the same name appear, empty, as "name (2)".
            match change {
                Change::Upsert(node) if self.aliases.contains_key(&node.handle) => {
                    self.upsert_stale_local(node, &mut b)
                }
                Change::Upsert(node) => self.upsert(node, &mut b),
                Change::Move { handle, parent } => {
                    self.move_node(self.canonical(handle), parent, &mut b)
                }
                Change::Delete(handle) => self.delete(self.canonical(handle), &mut b),
                Change::Replace { old, node } => self.replace(self.canonical(old), node, &mut b),
            }
        }
        self.finish(b, seq)
    }

    fn finish(&mut self, mut b: Batch, seq: Option<&str>) -> Result<Vec<Invalidation>, TreeError> {
        for ino in std::mem::take(&mut b.deleted) {
            self.finalize_delete(ino, &mut b);
        }
        self.retry_waiting(&mut b);
        self.relabel_pending(&mut b);
        if let Some(s) = seq {
            self.seq = Some(s.to_owned());
        }
        if let Some(store) = &self.store {
            // Made as the store writes them, a slice at a time.
            let upserts = b.dirty.iter().filter_map(|ino| {
                let e = self.entries.get(ino)?;
                (!e.deleted).then(|| e.record(*ino))
            });
            store.commit(Commit {
                upserts,
                removes: std::mem::take(&mut b.removed),
                seq: self.seq.clone(),
                next_ino: self.next_ino,
            })?;
        }
        Ok(b.into_invalidations())
    }

    fn alloc_ino(&mut self, kind: NodeKind) -> u64 {
        if kind == NodeKind::Root && !self.entries.contains_key(&ROOT_INO) {
            return ROOT_INO;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn upsert(&mut self, mut node: Node, b: &mut Batch) {
        node.parent = node.parent.map(|p| self.canonical(p));
        if let Some(&ino) = self.by_handle.get(&node.handle) {
            if self.entries[&ino].kind.is_dir() == node.kind.is_dir() {
                self.update(ino, node, false, b);
                return;
            }
            // A handle does not turn from file to folder; if a server says so, the old inode
            // (with the kernel's idea of its type) goes and a new one comes.
            self.delete(node.handle, b);
            self.finalize_delete(ino, b);
        }
        let ino = self.alloc_ino(node.kind);
        let handle = node.handle;
        let entry = Entry {
            handle,
            parent: node.parent,
            parent_ino: 0,
            kind: node.kind,
            deleted: false,
            deduped: false,
            mode: node.mode,
            size: node.size,
            mtime_ns: node.mtime_ns,
            created: node.created,
            lookups: AtomicU64::new(0),
            name: node.name.into(),
            local: None,
            symlink: node.symlink.map(Into::into),
            key: node.key.into(),
            attrs: attrs_to_bytes(&node.attrs),
            dir: node.kind.is_dir().then(Dir::new),
        };
        self.entries.insert(ino, entry);
        self.by_handle.insert(handle, ino);
        b.dirty.insert(ino);
        self.attach(ino, b);
    }

    /// `same_content`: the node holds what the kernel already has (this mount's own upload),
    /// so a new key alone does not make its cached pages stale.
    fn update(&mut self, ino: u64, mut node: Node, same_content: bool, b: &mut Batch) {
        node.parent = node.parent.map(|p| self.canonical(p));
        let attrs = attrs_to_bytes(&node.attrs);
        let e = self.entries.get_mut(&ino).expect("indexed entry exists");
        e.deleted = false;
        let renamed = *e.name != *node.name;
        let moved = e.parent != node.parent;
        // Creation time orders duplicates of a name; alone, it renames nothing (an upload of
        // ours gets the server's time, a little after the local one).
        let reordered = e.created != node.created;
        // What the kernel caches: attributes, and the content behind the key. After this
        // mount's own upload, the size and mtime are those the kernel was shown all along
        // (`Vfs::stat_of` shows a file's local ones while it has local content): telling it
        // to drop them cost a notification per uploaded file, and a GETATTR at its next stat.
        let content_moved =
            e.size != node.size || e.mtime_ns != node.mtime_ns || *e.key != *node.key;
        let visible = e.kind != node.kind
            || e.mode != node.mode
            || e.symlink.as_deref() != node.symlink.as_deref()
            || (content_moved && !same_content);
        let meta_changed = visible || content_moved || *e.attrs != *attrs;
        if visible {
            b.inval(Invalidation::Inode(ino));
        }
        if meta_changed {
            e.kind = node.kind;
            e.size = node.size;
            e.mtime_ns = node.mtime_ns;
            e.mode = node.mode;
            e.symlink = node.symlink.map(Into::into);
            e.key = node.key.into();
            e.attrs = attrs;
        }
        if meta_changed || renamed || moved || reordered {
            b.dirty.insert(ino);
        }
        if !(renamed || moved) {
            e.created = node.created;
            let pino = e.parent_ino;
            if reordered && pino != 0 {
                self.reorder(pino, b);
            }
            if pino == 0 {
                // Re-added after a delete in this batch, or still waiting: try again.
                self.attach(ino, b);
            }
            return;
        }
        self.detach(ino, b);
        let e = self.entries.get_mut(&ino).expect("indexed entry exists");
        e.name = node.name.into();
        e.created = node.created;
        e.parent = node.parent;
        self.attach(ino, b);
    }

    /// A child's place among duplicates of its name may have changed: the folder's names are
    /// worked out again, if it has duplicates at all.
    fn reorder(&mut self, pino: u64, b: &mut Batch) {
        if let Some(dir) = self.entries.get_mut(&pino).and_then(|p| p.dir.as_mut())
            && dir.deduped > 0
            && !dir.needs_relabel
        {
            dir.needs_relabel = true;
            b.relabel.push(pino);
        }
    }

    fn replace(&mut self, old: Handle, node: Node, b: &mut Batch) {
        let Some(&ino) = self.by_handle.get(&old) else {
            return self.upsert(node, b);
        };
        if node.handle != old && self.by_handle.contains_key(&node.handle)
            || self.entries[&ino].kind.is_dir() != node.kind.is_dir()
        {
            // The new node is known already (its own change arrived first): keep that one. A
            // local folder's children move into it first (a folder made here, found on the
            // server after a crash: `vfs/dirs.rs`).
            if old.is_local() && node.kind.is_dir() && self.entries[&ino].dir.is_some() {
                self.move_children(ino, old, node.handle, b);
            }
            self.delete(old, b);
            return self.upsert(node, b);
        }
        self.by_handle.remove(&old);
        self.by_handle.insert(node.handle, ino);
        self.entries
            .get_mut(&ino)
            .expect("indexed entry exists")
            .handle = node.handle;
        if node.handle != old {
            b.removed.push(old);
            if old.is_local() && node.kind.is_dir() {
                self.rehome_children(ino, old, node.handle, b);
            }
            // The handle breaks ties among duplicates of a name.
            let pino = self.entries[&ino].parent_ino;
            if pino != 0 {
                self.reorder(pino, b);
            }
        }
        // The kernel's cached attributes and pages stay valid unless the upload's node differs
        // from them: an `rsync` pass right after the upload need not ask for each file again.
        self.update(ino, node, true, b);
    }

    /// A local folder now has the server's handle `new`: its children name it so, and
    /// changes still naming `old` land in it.
    fn rehome_children(&mut self, ino: u64, old: Handle, new: Handle, b: &mut Batch) {
        self.aliases.insert(old, new);
        let kids = self.children_of(ino);
        for kid in kids {
            let e = self.entries.get_mut(&kid).expect("indexed child exists");
            if e.parent == Some(old) {
                e.parent = Some(new);
                b.dirty.insert(kid);
            }
        }
        if let Some(list) = self.waiting.remove(&old) {
            for &kid in &list {
                if let Some(e) = self.entries.get_mut(&kid) {
                    e.parent = Some(new);
                    b.dirty.insert(kid);
                }
            }
            self.waiting.entry(new).or_default().extend(list);
        }
    }

    /// Local folder `ino` (`old`) is the known folder `new`: its children move there, and
    /// changes still naming `old` land there.
    fn move_children(&mut self, ino: u64, old: Handle, new: Handle, b: &mut Batch) {
        self.aliases.insert(old, new);
        let kids = self.children_of(ino);
        for kid in kids {
            self.move_node(self.entries[&kid].handle, new, b);
        }
    }

    /// A folder's children, in `readdir` order.
    fn children_of(&self, ino: u64) -> Vec<u64> {
        self.entries[&ino]
            .dir
            .as_ref()
            .map(|d| d.order.iter().copied().collect())
            .unwrap_or_default()
    }

    /// An upsert of a folder made here, under its local handle, after it reached the server:
    /// its mode and time are news (a `chmod` read the folder before its creation and applied
    /// after), the rest is the local node's outdated view — no key, and maybe an old name —
    /// and must not overwrite the server's.
    fn upsert_stale_local(&mut self, node: Node, b: &mut Batch) {
        let handle = self.canonical(node.handle);
        let Some(current) = self.by_handle.get(&handle).and_then(|&ino| self.node(ino)) else {
            return;
        };
        let node = Node {
            mode: node.mode,
            mtime_ns: node.mtime_ns,
            ..current
        };
        self.upsert(node, b);
    }

    /// The handle a node is known by now (a local folder's, once on the server, is the
    /// server's).
    fn canonical(&self, handle: Handle) -> Handle {
        match self.aliases.get(&handle) {
            Some(&h) => h,
            None => handle,
        }
    }

    fn move_node(&mut self, handle: Handle, parent: Handle, b: &mut Batch) {
        let parent = self.canonical(parent);
        let Some(&ino) = self.by_handle.get(&handle) else {
            return;
        };
        let e = &self.entries[&ino];
        // A move names no node data, so unlike an upsert it cannot bring back a node deleted
        // earlier in the batch.
        if e.parent == Some(parent) || e.deleted {
            return;
        }
        self.detach(ino, b);
        let e = self.entries.get_mut(&ino).expect("indexed entry exists");
        e.parent = Some(parent);
        b.dirty.insert(ino);
        self.attach(ino, b);
    }

    fn delete(&mut self, handle: Handle, b: &mut Batch) {
        let Some(&ino) = self.by_handle.get(&handle) else {
            return;
        };
        if self.entries[&ino].deleted {
            return;
        }
        self.detach(ino, b);
        let mut stack = vec![ino];
        while let Some(x) = stack.pop() {
            let e = self.entries.get_mut(&x).expect("child entries exist");
            if e.deleted && x != ino {
                continue;
            }
            e.deleted = true;
            b.deleted.push(x);
            if let Some(dir) = &e.dir {
                stack.extend(dir.order.iter().copied());
            }
        }
    }

    /// Ends a deletion: the node leaves the indexes and the store, and its inode is freed
    /// unless the kernel still holds it.
    fn finalize_delete(&mut self, ino: u64, b: &mut Batch) {
        let Some(e) = self.entries.get(&ino) else {
            return;
        };
        if !e.deleted || self.by_handle.get(&e.handle) != Some(&ino) {
            return;
        }
        let handle = e.handle;
        self.detach(ino, b);
        let kids = self.children_of(ino);
        for kid in kids {
            if self.entries[&kid].deleted {
                // Deleted with this folder: it leaves with it, no separate kernel entry to drop.
                self.entries.get_mut(&kid).expect("child exists").parent_ino = 0;
            } else {
                // Re-added in this batch under this (now gone) folder: it waits, detached.
                self.detach(kid, b);
                self.waiting.entry(handle).or_default().push(kid);
            }
        }
        let e = self.entries.get_mut(&ino).expect("entry exists");
        if let Some(dir) = &mut e.dir {
            **dir = *Dir::new();
        }
        self.by_handle.remove(&handle);
        b.dirty.remove(&ino);
        b.removed.push(handle);
        if e.lookups.load(Ordering::Relaxed) == 0 {
            self.entries.remove(&ino);
        }
    }

    /// Takes a node out of its folder (or out of the waiting list).
    fn detach(&mut self, ino: u64, b: &mut Batch) {
        let e = self.entries.get_mut(&ino).expect("entry exists");
        let pino = std::mem::take(&mut e.parent_ino);
        if pino == 0 {
            if let Some(p) = e.parent
                && let Some(list) = self.waiting.get_mut(&p)
            {
                list.retain(|&k| k != ino);
                if list.is_empty() {
                    self.waiting.remove(&p);
                }
            }
            return;
        }
        let was_deduped = std::mem::take(&mut e.deduped);
        let local = e.local_name().to_owned();
        e.local = None;
        let Some(dir) = self.entries.get_mut(&pino).and_then(|p| p.dir.as_mut()) else {
            return;
        };
        dir.order.remove(&ino);
        if dir.by_local.get(local.as_str()) == Some(&ino) {
            dir.by_local.remove(local.as_str());
            b.inval(Invalidation::Entry {
                parent: pino,
                name: local,
            });
        }
        if was_deduped {
            dir.deduped -= 1;
        }
        // Without suffixed names every child holds its own base and nobody else's name depends
        // on this one; otherwise a suffixed name may now move down to a freed base.
        if !dir.needs_relabel && dir.deduped > 0 {
            dir.needs_relabel = true;
            b.relabel.push(pino);
        }
    }

    /// Attaches a detached node to its parent folder, or lets it wait for the parent; then
    /// gives the nodes waiting for this one (if a folder) another chance: it may be new, or
    /// its move may have resolved what kept them out (a would-be cycle).
    fn attach(&mut self, ino: u64, b: &mut Batch) {
        let mut work = vec![ino];
        // Each node is tried once per call, so that no pattern of waits can loop.
        let mut tried = HashSet::new();
        while let Some(x) = work.pop() {
            if !tried.insert(x) {
                continue;
            }
            let e = &self.entries[&x];
            let handle = e.handle;
            let is_dir = e.dir.is_some();
            if e.parent_ino == 0
                && let Some(parent) = e.parent
            {
                match self.by_handle.get(&parent) {
                    Some(&pino)
                        if self.entries[&pino].dir.is_some() && !self.is_ancestor(x, pino) =>
                    {
                        self.link(x, pino, b)
                    }
                    _ => {
                        let list = self.waiting.entry(parent).or_default();
                        if !list.contains(&x) {
                            list.push(x);
                        }
                    }
                }
            }
            if is_dir && let Some(kids) = self.waiting.remove(&handle) {
                work.extend(kids.into_iter().filter(|kid| {
                    self.entries.get(kid).is_some_and(|k| {
                        !k.deleted && k.parent == Some(handle) && k.parent_ino == 0
                    })
                }));
            }
        }
    }

    /// Nodes whose parent is known but who still wait: linking them would have closed a cycle
    /// when they were tried (a folder moved under its own waiting descendant, say), and a later
    /// change of the same batch may have opened it again. Nothing else retries them, since
    /// their parent has already arrived.
    fn retry_waiting(&mut self, b: &mut Batch) {
        let known: Vec<Handle> = self
            .waiting
            .keys()
            .copied()
            .filter(|h| self.by_handle.contains_key(h))
            .collect();
        for parent in known {
            let Some(kids) = self.waiting.remove(&parent) else {
                continue;
            };
            for kid in kids {
                let still = self
                    .entries
                    .get(&kid)
                    .is_some_and(|k| !k.deleted && k.parent == Some(parent) && k.parent_ino == 0);
                if still {
                    self.attach(kid, b);
                }
            }
        }
    }

    /// Whether `ino` is `of` or one of its ancestors.
    fn is_ancestor(&self, ino: u64, of: u64) -> bool {
        let mut p = of;
        // Bounded by the tree's size: the parent chain has no cycles, this keeps it so.
        for _ in 0..=self.entries.len() {
            if p == ino {
                return true;
            }
            p = match self.entries.get(&p) {
                Some(e) if e.parent_ino != 0 => e.parent_ino,
                _ => return false,
            };
        }
        true
    }

    fn link(&mut self, ino: u64, pino: u64, b: &mut Batch) {
        let e = &self.entries[&ino];
        let base: Cow<'_, str> = names::local_base(&e.name);
        let plain = *base == *e.name;
        let base: Box<str> = base.into();
        let dir = self
            .entries
            .get_mut(&pino)
            .and_then(|p| p.dir.as_mut())
            .expect("linked to a folder");
        dir.order.insert(ino);
        let named = if dir.needs_relabel {
            false
        } else if dir.by_local.contains_key(&base) {
            dir.needs_relabel = true;
            b.relabel.push(pino);
            false
        } else {
            dir.by_local.insert(base.clone(), ino);
            true
        };
        let e = self.entries.get_mut(&ino).expect("entry exists");
        e.parent_ino = pino;
        if named {
            e.local = (!plain).then(|| base.clone());
            b.inval(Invalidation::Entry {
                parent: pino,
                name: base.into(),
            });
        }
    }

    fn relabel_pending(&mut self, b: &mut Batch) {
        for pino in std::mem::take(&mut b.relabel) {
            self.relabel(pino, b);
        }
    }

    /// Recomputes the local names of a folder's children from scratch ([`names`], layer 3).
    fn relabel(&mut self, pino: u64, b: &mut Batch) {
        let Some(dir) = self.entries.get(&pino).and_then(|p| p.dir.as_ref()) else {
            return;
        };
        if !dir.needs_relabel {
            return;
        }
        let kids: Vec<u64> = dir.order.iter().copied().collect();
        let bases: Vec<((i64, Handle), Cow<'_, str>)> = kids
            .iter()
            .map(|k| {
                let e = &self.entries[k];
                (e.order_key(), names::local_base(&e.name))
            })
            .collect();
        let pairs: Vec<((i64, Handle), &str)> = bases.iter().map(|(k, s)| (*k, &**s)).collect();
        let assigned = names::assign_local_names(&pairs);
        let new_names: Vec<(Box<str>, bool)> = bases
            .iter()
            .zip(assigned)
            .map(|((_, base), a)| match a {
                Some(n) => (n.into(), true),
                None => ((**base).into(), false),
            })
            .collect();
        drop(bases);
        let old_index = std::mem::take(
            &mut self
                .entries
                .get_mut(&pino)
                .and_then(|p| p.dir.as_mut())
                .expect("folder")
                .by_local,
        );
        let mut index = HashMap::with_capacity(kids.len());
        let mut deduped = 0;
        for (&kid, (local, is_dup)) in kids.iter().zip(new_names) {
            let e = self.entries.get_mut(&kid).expect("child exists");
            let old = e.local_name();
            let was_visible = old_index.get(old) == Some(&kid);
            if !was_visible || *old != *local {
                if was_visible {
                    b.inval(Invalidation::Entry {
                        parent: pino,
                        name: old.to_owned(),
                    });
                }
                b.inval(Invalidation::Entry {
                    parent: pino,
                    name: local.to_string(),
                });
            }
            e.local = (*local != *e.name).then(|| local.clone());
            e.deduped = is_dup;
            deduped += u32::from(is_dup);
            index.insert(local, kid);
        }
        let dir = self
            .entries
            .get_mut(&pino)
            .and_then(|p| p.dir.as_mut())
            .expect("folder");
        dir.by_local = index;
        dir.deduped = deduped;
        dir.needs_relabel = false;
    }

    fn attr(&self, ino: u64, e: &Entry) -> Attr {
        Attr {
            ino,
            handle: e.handle,
            kind: e.kind,
            file_type: e.file_type(),
            size: e.size,
            mtime_ns: e.mtime_ns,
            created: e.created,
            mode: e.mode,
        }
    }

    /// Attributes of an inode, including one deleted remotely that the kernel still holds.
    pub fn getattr(&self, ino: u64) -> Option<Attr> {
        self.entries.get(&ino).map(|e| self.attr(ino, e))
    }

    /// The child `name` (a local name) of folder `parent`, without counting a reference.
    pub fn peek(&self, parent: u64, name: &str) -> Option<u64> {
        let dir = self.entries.get(&parent)?.dir.as_ref()?;
        dir.by_local.get(name).copied()
    }

    /// Resolves `name` in `parent` and counts one kernel reference to the result (FUSE
    /// `lookup`): call [`Tree::forget`] when the kernel forgets it.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<Attr> {
        let ino = self.peek(parent, name)?;
        let e = &self.entries[&ino];
        e.lookups.fetch_add(1, Ordering::Relaxed);
        Some(self.attr(ino, e))
    }

    /// Counts `n` more kernel references (e.g. after `readdirplus` or `create`).
    pub fn remember(&self, ino: u64, n: u64) {
        if let Some(e) = self.entries.get(&ino) {
            e.lookups.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Drops `n` kernel references; a node deleted remotely is freed with its last one.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(e) = self.entries.get(&ino) else {
            return;
        };
        let left = e.lookups.load(Ordering::Relaxed).saturating_sub(n);
        e.lookups.store(left, Ordering::Relaxed);
        if left == 0 && e.deleted {
            self.entries.remove(&ino);
        }
    }

    /// Whether `ino` is a node of the tree now (not one deleted but still held by the kernel).
    pub fn is_live(&self, ino: u64) -> bool {
        self.entries.get(&ino).is_some_and(|e| !e.deleted)
    }

    /// Kernel references currently counted.
    pub fn lookup_count(&self, ino: u64) -> u64 {
        self.entries
            .get(&ino)
            .map_or(0, |e| e.lookups.load(Ordering::Relaxed))
    }

    /// Entries of folder `ino` after `offset` (0 for the start): `.`, `..`, then the children.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntry<'_>> + '_, TreeError> {
        let e = self.entries.get(&ino).ok_or(TreeError::NotFound(ino))?;
        let dir = e.dir.as_ref().ok_or(TreeError::NotADirectory(ino))?;
        let parent = if e.parent_ino != 0 { e.parent_ino } else { ino };
        let dots = [(ino, 1, "."), (parent, 2, "..")]
            .into_iter()
            .filter(move |&(_, off, _)| off > offset)
            .map(|(ino, offset, name)| DirEntry {
                ino,
                offset,
                file_type: FileType::Directory,
                name,
            });
        let first_child = offset.saturating_sub(DOT_OFFSETS).saturating_add(1);
        let kids = dir.order.range(first_child..).map(move |&kid| {
            let k = &self.entries[&kid];
            DirEntry {
                ino: kid,
                offset: kid + DOT_OFFSETS,
                file_type: k.file_type(),
                name: k.local_name(),
            }
        });
        Ok(dots.chain(kids))
    }

    /// Number of children of a folder.
    pub fn child_count(&self, ino: u64) -> Option<usize> {
        Some(self.entries.get(&ino)?.dir.as_ref()?.order.len())
    }

    /// The whole node behind an inode (attributes parsed back into a map).
    pub fn node(&self, ino: u64) -> Option<Node> {
        let e = self.entries.get(&ino)?;
        Some(Node {
            handle: e.handle,
            parent: e.parent,
            kind: e.kind,
            name: e.name.to_string(),
            size: e.size,
            mtime_ns: e.mtime_ns,
            created: e.created,
            mode: e.mode,
            symlink: e.symlink.as_deref().map(str::to_owned),
            key: e.key.to_vec(),
            attrs: attrs_from_bytes(&e.attrs),
        })
    }

    /// The handles of every locally created node not uploaded yet.
    pub fn local_handles(&self) -> Vec<Handle> {
        self.by_handle
            .keys()
            .copied()
            .filter(|h| h.is_local())
            .collect()
    }

    /// The inode of a live node; a local folder's old handle still finds it once it is on
    /// the server.
    pub fn ino_of(&self, handle: Handle) -> Option<u64> {
        self.by_handle.get(&self.canonical(handle)).copied()
    }

    pub fn handle_of(&self, ino: u64) -> Option<Handle> {
        self.entries.get(&ino).map(|e| e.handle)
    }

    /// The node's local name in its folder (its remote name while detached).
    pub fn local_name(&self, ino: u64) -> Option<&str> {
        self.entries.get(&ino).map(Entry::local_name)
    }

    /// The folder a node is attached to; `None` at the top level, while waiting for an unknown
    /// parent, or after deletion.
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        self.entries
            .get(&ino)
            .map(|e| e.parent_ino)
            .filter(|&p| p != 0)
    }

    /// Live nodes without a parent (root, inbox, rubbish, and shares whose parent we cannot
    /// see), in inode order.
    pub fn top_level(&self) -> Vec<(NodeKind, u64)> {
        let mut out: Vec<(NodeKind, u64)> = self
            .by_handle
            .values()
            .filter_map(|&ino| {
                let e = &self.entries[&ino];
                (e.parent.is_none()).then_some((e.kind, ino))
            })
            .collect();
        out.sort_by_key(|&(_, ino)| ino);
        out
    }

    /// Live nodes whose parent is not in the tree, in inode order.
    pub fn orphans(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .waiting
            .values()
            .flatten()
            .copied()
            .filter(|ino| self.entries.get(ino).is_some_and(|e| !e.deleted))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}
