//! The filesystem core: every operation the mount offers, over the node tree, the block cache,
//! write-back and a [`Remote`]. It knows nothing of FUSE (`fs/` translates), so it can be driven
//! and tested directly.
//!
//! Locking, in the order they may nest:
//! 1. `ns`, an async mutex serializing every change to the namespace on the server (mkdir,
//!    rename, unlink, metadata, and the commit step of uploads), so that the server's state and
//!    the local tree change in the same order and an upload never commits a stale name.
//!    Creating a file, and changing a file that exists only here, need no server and do not
//!    take it (`local.rs`);
//! 2. `committing` (files whose first upload is being committed), held briefly;
//! 3. the tree's `RwLock` and the `files` / `handles` mutexes, held briefly and never across an
//!    `await` (`handles` may be taken under `files`, to count a file's handles while deciding
//!    about its local content, never the other way round).
//!
//! Changes we make are applied to the tree as soon as the server accepts them, except those
//! that go to the journal first (files created here, `local.rs`; folder modes and times,
//! `attrs.rs`); the poller skips their echoes (the remote filters packets carrying our
//! instance id).

mod attrs;
mod dirs;
mod error;
mod io;
mod load;
mod local;
mod sync;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

pub use error::{Result, VfsError};

use crate::cache::BlockCache;
use crate::remote::{Meta, Quota, Remote};
use crate::tree::{self, Attr, Change, Handle, Invalidation, Node, NodeKind, ROOT_INO, Tree};
use crate::writeback::{Staged, Writeback};

/// How a node is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink,
}

/// Who makes a request, for the permission checks the core makes itself.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The mode-bit rule of POSIX (and of the kernel's `generic_permission`) without ACLs or
/// supplementary groups: root may do anything except execute a file that no one may execute;
/// anyone else gets the owner's, the group's or everyone's bits, whichever class they are in.
pub fn may(st: &Stat, caller: Caller, want: u32) -> bool {
    let want = want & 0o7;
    if caller.uid == 0 {
        return want & 0o1 == 0 || st.kind != Kind::File || st.perm & 0o111 != 0;
    }
    let bits = if caller.uid == st.uid {
        st.perm >> 6
    } else if caller.gid == st.gid {
        st.perm >> 3
    } else {
        st.perm
    };
    want & !u32::from(bits & 0o7) == 0
}

/// `getattr`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only.
    pub perm: u16,
    pub mtime_ns: i64,
    /// Creation time, seconds.
    pub crtime: i64,
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry with its attributes.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    pub kind: Kind,
    pub name: String,
}

/// A `setattr` request.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// `Some(None)` means "now".
    pub mtime: Option<Option<i64>>,
}

#[derive(Debug, Clone)]
pub struct VfsConfig {
    pub uid: u32,
    pub gid: u32,
    pub read_only: bool,
    /// Chunks fetched ahead of a sequential reader.
    pub read_ahead: u64,
    /// Large uploads running at once; small ones run [`upload::SLOTS_PER_WORKER`] times as
    /// many (see `upload::Queue`).
    pub upload_workers: usize,
    /// How long a closed file waits before its upload starts (see `upload::Queue::submit`).
    pub write_back_delay: Duration,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            uid: 0,
            gid: 0,
            read_only: false,
            read_ahead: 32 * 1024 * 1024,
            upload_workers: 16,
            write_back_delay: Duration::from_millis(200),
        }
    }
}

/// What `veilfs status` and `unmount` show.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    /// Uploads queued, and folder modes and times set here, not yet on the server.
    pub pending_uploads: usize,
    pub pending_bytes: u64,
    pub uploaded: u64,
    pub last_sync: Option<u64>,
    pub last_error: Option<String>,
}

/// Local content of a file being written or waiting for upload.
struct LocalFile {
    /// The staging file writes go to.
    id: u64,
    /// Its descriptor; `None` for a sealed file nobody has open (see [`LocalFile::rest`]).
    file: Option<Arc<Staged>>,
    size: u64,
    mtime_ns: i64,
    /// Open handles that may write.
    writers: u32,
    /// Changed since last queued.
    dirty: bool,
    /// The current staging file is in the journal: the next write goes to a copy.
    sealed: bool,
    /// Journal ids queued for this inode and not yet committed.
    queued: Vec<u64>,
    /// The newest journal id committed: an older upload finishing later must not win.
    committed: u64,
    /// The file was unlinked: nothing more is queued.
    unlinked: bool,
}

impl LocalFile {
    /// The staging file, opened again if [`LocalFile::rest`] closed it.
    fn staged(&mut self, wb: &Writeback) -> Result<Arc<Staged>> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let file = Arc::new(wb.reopen(self.id)?);
        self.file = Some(file.clone());
        Ok(file)
    }

    /// Closes the descriptor of a sealed file once nobody has it open. A queued file waits
    /// for its upload as a journal entry and a name, not an open file: thousands of them (a
    /// copy into the drive while offline, or faster than the uploads) would otherwise run into
    /// the limit on open files (often 1024), and every later `create` would fail with EMFILE.
    fn rest(&mut self) {
        if self.sealed {
            self.file = None;
        }
    }
}

struct OpenHandle {
    ino: u64,
    writable: bool,
    /// Where the last read ended, to detect sequential reading.
    last_end: AtomicU64,
}

type Notifier = Box<dyn Fn(&Invalidation) + Send + Sync>;

pub struct Vfs<R: Remote> {
    remote: Arc<R>,
    tree: RwLock<Tree>,
    cache: BlockCache,
    wb: Writeback,
    config: VfsConfig,
    ns: tokio::sync::Mutex<()>,
    files: Mutex<HashMap<u64, LocalFile>>,
    handles: Mutex<HashMap<u64, Arc<OpenHandle>>>,
    /// Files being unlinked (or renamed over) right now; an `open` racing with that waits for
    /// it to end (see [`Vfs::remove_file`]).
    removing: Mutex<HashSet<u64>>,
    /// Files unlinked while open whose content exists only on the server: moved to the
    /// rubbish bin, read from there, deleted at their last close — POSIX keeps an unlinked
    /// open file readable. A crash in between leaves them in the rubbish bin.
    hidden: Mutex<HashMap<u64, Node>>,
    /// Files created here whose first upload is being committed right now (see `local.rs`).
    committing: Mutex<HashSet<Handle>>,
    /// Deletions of such files under way (unmount waits for them).
    emptying: AtomicUsize,
    next_fh: AtomicU64,
    reads: io::ReadState,
    uploads: upload::Queue<R::Upload>,
    /// Folder modes and times set here, on their way to the server (`attrs.rs`).
    folders: attrs::FolderQueue,
    /// Folders made here, on their way to the server (`dirs.rs`).
    dirs: dirs::DirQueue,
    notifier: OnceLock<Notifier>,
    /// The first load of a drive, while it runs (see `load.rs`).
    loading: load::Loading,
    status: Mutex<Status>,
    quota: Mutex<Option<(Quota, Instant)>>,
}

impl<R: Remote> Vfs<R> {
    /// A filesystem over `tree` (loaded from its store, possibly empty). Call [`Vfs::start`]
    /// inside a tokio runtime before serving requests.
    pub fn new(
        remote: Arc<R>,
        tree: Tree,
        cache: BlockCache,
        wb: Writeback,
        config: VfsConfig,
    ) -> Arc<Self> {
        let uploads = upload::Queue::new(config.upload_workers, config.write_back_delay);
        Arc::new(Vfs {
            remote,
            tree: RwLock::new(tree),
            cache,
            wb,
            config,
            ns: tokio::sync::Mutex::new(()),
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            removing: Mutex::new(HashSet::new()),
            hidden: Mutex::new(HashMap::new()),
            committing: Mutex::new(HashSet::new()),
            emptying: AtomicUsize::new(0),
            next_fh: AtomicU64::new(1),
            reads: io::ReadState::default(),
            uploads,
            folders: attrs::FolderQueue::default(),
            dirs: dirs::DirQueue::default(),
            notifier: OnceLock::new(),
            loading: load::Loading::whole(),
            status: Mutex::new(Status::default()),
            quota: Mutex::new(None),
        })
    }

    /// Makes the tree current, resumes queued uploads and starts following remote changes.
    /// With a local tree, the mount is live at once and catches up in the background. With
    /// none, the listing is read as it arrives and this returns once the root folder is
    /// complete (`load.rs`). A local tree left incomplete (a first load cut short) is
    /// replaced by a full fetch first.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if self.tree.read().is_empty()
            && self.wb.pending()?.is_empty()
            && self.wb.pending_dirs().is_empty()
        {
            // Nothing to resume: this only starts the upload workers, which must run before
            // anything can be written.
            self.resume_dirs()?;
            self.resume_uploads()?;
            self.resume_folder_attrs();
            return self.load_first().await;
        }
        if self.tree.read().seq().is_none() || self.tree.read().getattr(ROOT_INO).is_none() {
            self.reload().await?;
        }
        self.drop_unqueued_local_files()?;
        self.resume_dirs()?;
        self.resume_uploads()?;
        self.resume_folder_attrs();
        sync::spawn_poller(self.clone());
        Ok(())
    }

    /// Where invalidations of the kernel's caches go (set once by the FUSE layer).
    pub fn set_notifier(&self, f: impl Fn(&Invalidation) + Send + Sync + 'static) {
        let _ = self.notifier.set(Box::new(f));
    }

    fn notify(&self, invalidations: &[Invalidation]) {
        if let Some(n) = self.notifier.get() {
            for i in invalidations {
                n(i);
            }
        }
    }

    pub fn status(&self) -> Status {
        let mut s = self.status.lock().clone();
        let files = self.files.lock();
        s.pending_uploads = files.values().map(|f| f.queued.len()).sum::<usize>()
            + self.folders.len()
            + self.dirs.len();
        s.pending_bytes = files
            .values()
            .filter(|f| !f.queued.is_empty())
            .map(|f| f.size)
            .sum();
        s
    }

    /// Waits until every queued upload is committed (and unlinked files closed at the end
    /// are deleted), or `timeout` passes. Returns how many uploads are still pending (they
    /// stay in the journal for the next mount).
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.status().pending_uploads;
            let idle = left == 0 && self.emptying.load(Ordering::Acquire) == 0;
            if idle || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the local copy of the tree durable. Every change is written atomically as it is
    /// applied, but the store only reaches the disk every half second by itself: without this
    /// at unmount, the next mount could start from a tree missing the last commits (and, until
    /// it caught up with the server, show a just-uploaded file at its old size).
    pub fn persist_tree(&self) -> Result<()> {
        if let Some(store) = self.tree.read().store() {
            store.flush()?;
        }
        Ok(())
    }

    // ----- attributes -----

    fn stat_of(&self, a: &Attr) -> Stat {
        let kind = match a.file_type {
            tree::FileType::Directory => Kind::Directory,
            tree::FileType::RegularFile => Kind::File,
            tree::FileType::Symlink => Kind::Symlink,
        };
        let default_perm = match kind {
            Kind::Directory => 0o755,
            Kind::File => 0o644,
            Kind::Symlink => 0o777,
        };
        let mut st = Stat {
            ino: a.ino,
            kind,
            size: a.size,
            perm: a.mode.map_or(default_perm, |m| (m & 0o7777) as u16),
            mtime_ns: a.mtime_ns,
            crtime: a.created,
            uid: self.config.uid,
            gid: self.config.gid,
        };
        if kind == Kind::File
            && let Some(local) = self.files.lock().get(&a.ino)
        {
            st.size = local.size;
            st.mtime_ns = local.mtime_ns;
        }
        st
    }

    pub fn getattr(&self, ino: u64) -> Result<Stat> {
        let a = self.tree.read().getattr(ino).ok_or(VfsError::NotFound)?;
        Ok(self.stat_of(&a))
    }

    /// `access(2)`: whether `caller` may read, write or execute (`want`, the `R_OK`/`W_OK`/
    /// `X_OK` bits) `ino`. Asked only on mounts where the kernel leaves permission checks to
    /// us (`cli/mount.rs`: a mount of root's, which only root reaches); it is the rule the
    /// kernel applies itself otherwise.
    pub fn access(&self, ino: u64, caller: Caller, want: u32) -> Result<()> {
        let st = self.getattr(ino)?;
        if may(&st, caller, want) {
            Ok(())
        } else {
            Err(VfsError::Access)
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Stat> {
        self.listed(parent)?;
        let tree = self.tree.read();
        let p = tree.getattr(parent).ok_or(VfsError::NotFound)?;
        if !p.kind.is_dir() {
            return Err(VfsError::NotDir);
        }
        let a = tree.lookup(parent, name).ok_or(VfsError::NotFound)?;
        drop(tree);
        Ok(self.stat_of(&a))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.tree.write().forget(ino, n);
    }

    /// Counts a kernel reference handed out by `readdirplus`.
    pub fn remember(&self, ino: u64) {
        self.tree.read().remember(ino, 1);
    }

    pub fn readlink(&self, ino: u64) -> Result<String> {
        let node = self.node(ino)?;
        node.symlink.ok_or(VfsError::Invalid("not a symbolic link"))
    }

    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>> {
        self.listed(ino)?;
        let tree = self.tree.read();
        let entries = tree.readdir(ino, offset).map_err(|e| match e {
            tree::TreeError::NotADirectory(_) => VfsError::NotDir,
            tree::TreeError::NotFound(_) => VfsError::NotFound,
            other => VfsError::Tree(other),
        })?;
        Ok(entries
            .map(|e| DirEntry {
                ino: e.ino,
                offset: e.offset,
                kind: match e.file_type {
                    tree::FileType::Directory => Kind::Directory,
                    tree::FileType::RegularFile => Kind::File,
                    tree::FileType::Symlink => Kind::Symlink,
                },
                name: e.name.to_string(),
            })
            .collect())
    }

    pub async fn statfs(&self) -> Result<Quota> {
        if let Some((q, at)) = *self.quota.lock()
            && at.elapsed() < Duration::from_secs(10)
        {
            return Ok(q);
        }
        let q = self.remote.quota().await?;
        *self.quota.lock() = Some((q, Instant::now()));
        Ok(q)
    }

    // ----- namespace -----

    fn node(&self, ino: u64) -> Result<Node> {
        self.tree.read().node(ino).ok_or(VfsError::NotFound)
    }

    fn dir_node(&self, ino: u64) -> Result<Node> {
        let node = self.node(ino)?;
        if !node.kind.is_dir() {
            return Err(VfsError::NotDir);
        }
        Ok(node)
    }

    fn writable(&self) -> Result<()> {
        if self.config.read_only {
            return Err(VfsError::ReadOnly);
        }
        Ok(())
    }

    /// Refuses changes in or to a read-only part of the drive (what others share with us).
    fn may_change(&self, node: &Node) -> Result<()> {
        if self.remote.read_only(node) {
            return Err(VfsError::ReadOnly);
        }
        Ok(())
    }

    /// Applies changes we made to the tree and tells the kernel what it may hold stale.
    fn apply(&self, changes: Vec<Change>) -> Result<()> {
        self.apply_own(changes, &[])
    }

    /// Applies changes the kernel is making itself with the request being answered (a create,
    /// mkdir or rename through the mount). Its cache will hold each of `own`'s names as the
    /// reply leaves it: (folder, name) naming the node with that handle, or nothing. Telling
    /// it to drop those entries would cost a thread wake-up and, worse, a LOOKUP of a name it
    /// had right (rsync's chmod, utimensat and rename of each file it has just written). A
    /// name the tree shows otherwise (a duplicate given a suffix meanwhile) is invalidated.
    fn apply_own(&self, changes: Vec<Change>, own: &[(u64, &str, Option<Handle>)]) -> Result<()> {
        self.apply_telling(changes, |tree, i| match i {
            Invalidation::Entry { parent, name } => !own.iter().any(|&(p, n, handle)| {
                p == *parent && n == name && tree.peek(p, n) == handle.and_then(|h| tree.ino_of(h))
            }),
            Invalidation::Inode(_) => true,
        })
    }

    /// Applies a `setattr`'s change of the mode or times of `ino`. The reply carries its new
    /// attributes, and the content is the same. Invalidating them as well would cost more than
    /// a wake-up: the kernel discards a reply's attributes when an invalidation came while the
    /// request was under way, so the next `stat` would ask again. rsync sets the mode or times
    /// of each file three times, and each time this cost a GETATTR.
    fn apply_setattr(&self, ino: u64, change: Change) -> Result<()> {
        self.apply_telling(vec![change], |_, i| *i != Invalidation::Inode(ino))
    }

    /// Applies `changes` and tells the kernel the invalidations that `tell` keeps.
    fn apply_telling(
        &self,
        changes: Vec<Change>,
        tell: impl Fn(&Tree, &Invalidation) -> bool,
    ) -> Result<()> {
        let mut tree = self.tree.write();
        let mut inval = tree.apply_changes(changes, None)?;
        inval.retain(|i| tell(&tree, i));
        drop(tree);
        self.notify(&inval);
        Ok(())
    }

    fn stat_handle(&self, handle: Handle, count_lookup: bool) -> Result<Stat> {
        let tree = self.tree.read();
        let ino = tree.ino_of(handle).ok_or(VfsError::NotFound)?;
        if count_lookup {
            tree.remember(ino, 1);
        }
        let a = tree.getattr(ino).ok_or(VfsError::NotFound)?;
        drop(tree);
        Ok(self.stat_of(&a))
    }

    fn check_new_name(&self, parent: u64, name: &str) -> Result<String> {
        if name.len() > 255 {
            return Err(VfsError::Invalid("name too long"));
        }
        let remote = tree::names::unescape(name).map_err(|_| VfsError::Invalid("name"))?;
        if self.tree.read().peek(parent, name).is_some() {
            return Err(VfsError::Exists);
        }
        Ok(remote.into_owned())
    }

    /// The folder node and the metadata of a new entry `name` in it.
    fn new_entry(
        &self,
        parent: u64,
        name: &str,
        mode: Option<u32>,
        symlink: Option<&str>,
    ) -> Result<(Node, Meta)> {
        let meta = Meta {
            name: self.check_new_name(parent, name)?,
            mode: mode.map(|m| m & 0o7777),
            mtime_ns: now_ns(),
            symlink: symlink.map(str::to_owned),
        };
        let folder = self.dir_node(parent)?;
        self.may_change(&folder)?;
        Ok((folder, meta))
    }

    /// Uploads staging file `id` as a new file under `parent`.
    async fn upload_new(&self, parent: &Node, meta: &Meta, id: u64) -> Result<Node> {
        let (content, _hold) = self.wb.content(id)?;
        let upload = self
            .remote
            .upload_content(&content, meta.mtime_ns, parent)
            .await?;
        Ok(self
            .remote
            .commit_upload(parent, meta, upload, None)
            .await?)
    }

    pub async fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<Stat> {
        self.writable()?;
        self.listed_async(parent).await?;
        let _ns = self.ns.lock().await;
        let (p, meta) = self.new_entry(parent, name, None, Some(target))?;
        let p = self.on_server(p).await?;
        // The link's content is its target, so other MEGA clients see a small file holding it.
        let (id, file) = self.wb.create()?;
        let result = match file.write_all_at(target.as_bytes(), 0) {
            Ok(()) => self.upload_new(&p, &meta, id).await,
            Err(e) => Err(e.into()),
        };
        self.wb.discard(id);
        let node = result?;
        let handle = node.handle;
        self.apply(vec![Change::Upsert(node)])?;
        self.stat_handle(handle, true)
    }

    /// Creates an empty file and opens it for writing.
    ///
    /// The file exists locally first: a node in the tree under a local handle
    /// ([`Handle::new_local`]) and a staging file, with no server round trip, so `create` costs
    /// what it costs on a local disk. Its first upload creates the node on the server (the
    /// inode stays); until then renames, metadata changes and unlinks of it are local (see
    /// [`Vfs::rename`], [`Vfs::setattr`], [`Vfs::remove_file`]). It is marked dirty, so even a
    /// file closed without a write is queued and reaches the server. A crash before its first
    /// `close()` loses it, as it would lose an unsynced file on a local disk; after `close()`
    /// the journal holds it.
    ///
    /// No server state changes, so `create` does not wait for the namespace lock (which upload
    /// commits hold while the server answers). The kernel holds the folder's lock across
    /// every create, mkdir and rename in it, so no other change of a name in this folder made
    /// through the mount runs meanwhile; a remote change landing in the same instant makes a
    /// duplicate name, shown as such (README, names).
    pub async fn create(&self, parent: u64, name: &str, mode: u32) -> Result<(Stat, u64)> {
        self.writable()?;
        self.listed_async(parent).await?;
        let (p, meta) = self.new_entry(parent, name, Some(mode), None)?;
        let (id, file) = self.making_room(0, || self.wb.create())?;
        let node = local::local_file_node(
            Handle::new_local(),
            Some(p.handle),
            &meta.name,
            meta.mode,
            meta.mtime_ns,
            0,
        );
        let (handle, mtime_ns) = (node.handle, node.mtime_ns);
        if let Err(e) = self.apply_own(vec![Change::Upsert(node)], &[(parent, name, Some(handle))])
        {
            self.wb.discard(id);
            return Err(e);
        }
        let st = self.stat_handle(handle, true)?;
        self.files.lock().insert(
            st.ino,
            LocalFile {
                id,
                file: Some(Arc::new(file)),
                size: 0,
                mtime_ns,
                writers: 1,
                dirty: true,
                sealed: false,
                queued: Vec::new(),
                committed: 0,
                unlinked: false,
            },
        );
        let fh = self.add_handle(st.ino, true);
        Ok((st, fh))
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.writable()?;
        self.listed_async(parent).await?;
        let _ns = self.ns.lock().await;
        let ino = self
            .tree
            .read()
            .peek(parent, name)
            .ok_or(VfsError::NotFound)?;
        let node = self.node(ino)?;
        if node.kind.is_dir() {
            return Err(VfsError::IsDir);
        }
        self.may_change(&node)?;
        self.remove_file(ino, &node, vec![]).await
    }

    /// Removes file `ino` (with `node`, its node) from the server and the tree, after
    /// `first` (changes already made on the server). Called under `ns`.
    ///
    /// An open file stays readable, as POSIX wants: its local content is kept, or, when its
    /// content is only on the server, the node goes to the rubbish bin until the last handle
    /// closes. `open` may race with this (the kernel looked the name up just before): the
    /// file is marked `removing` before the handles are counted, and `open` registers its
    /// handle before it looks at the mark, so one of the two always sees the other.
    async fn remove_file(&self, ino: u64, node: &Node, mut first: Vec<Change>) -> Result<()> {
        self.removing.lock().insert(ino);
        let result = async {
            let open = self.has_handles(ino);
            let local = self.files.lock().contains_key(&ino);
            let removed = match self.rubbish() {
                _ if node.handle.is_local() => Ok(()),
                Some(bin) if open && !local && node.size > 0 => {
                    self.remote.move_to(node, &bin).await.map(|hidden| {
                        self.hidden.lock().insert(ino, hidden);
                    })
                }
                _ => self.remote.delete(node).await,
            };
            if let Err(e) = removed {
                // What already happened on the server must still reach the tree.
                self.apply(first)?;
                return Err(e.into());
            }
            self.cancel_uploads(ino)?;
            first.push(Change::Delete(node.handle));
            self.apply(first)
        }
        .await;
        self.removing.lock().remove(&ino);
        result
    }

    fn has_handles(&self, ino: u64) -> bool {
        self.handles.lock().values().any(|h| h.ino == ino)
    }

    /// The rubbish bin, when the service has one.
    fn rubbish(&self) -> Option<Node> {
        let tree = self.tree.read();
        let (_, ino) = tree
            .top_level()
            .into_iter()
            .find(|&(kind, _)| kind == NodeKind::Rubbish)?;
        tree.node(ino)
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.writable()?;
        self.listed_async(parent).await?;
        // Whether it is empty; waited for outside `ns`, which a reload after a failed first
        // load needs.
        let folder = self.tree.read().peek(parent, name);
        if let Some(ino) = folder {
            self.listed_async(ino).await?;
        }
        let _ns = self.ns.lock().await;
        let ino = self
            .tree
            .read()
            .peek(parent, name)
            .ok_or(VfsError::NotFound)?;
        let node = self.node(ino)?;
        if !node.kind.is_dir() {
            return Err(VfsError::NotDir);
        }
        self.may_change(&node)?;
        if self.tree.read().child_count(ino).unwrap_or(0) > 0 {
            return Err(VfsError::NotEmpty);
        }
        if node.handle.is_local() {
            return self.remove_local_dir(&node);
        }
        self.remote.delete(&node).await?;
        self.apply(vec![Change::Delete(node.handle)])
    }

    /// `rename` when it is local (a file not uploaded yet, to a free name; see `local.rs`) and
    /// needs no wait: `None` when it needs the server or a folder's listing.
    pub fn rename_now(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
    ) -> Option<Result<()>> {
        if let Err(e) = self.writable() {
            return Some(Err(e));
        }
        if !self.listed_now(parent) || !self.listed_now(new_parent) {
            return None;
        }
        match self.local_rename(parent, name, new_parent, new_name) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<()> {
        self.writable()?;
        self.listed_async(parent).await?;
        self.listed_async(new_parent).await?;
        // Whether a folder it replaces is empty (waited for outside `ns`, see `rmdir`).
        let replaced = self.tree.read().peek(new_parent, new_name);
        if let Some(t) = replaced {
            self.listed_async(t).await?;
        }
        if self.local_rename(parent, name, new_parent, new_name)? {
            return Ok(());
        }
        let _ns = self.ns.lock().await;
        let (src, target) = {
            let tree = self.tree.read();
            (
                tree.peek(parent, name).ok_or(VfsError::NotFound)?,
                tree.peek(new_parent, new_name),
            )
        };
        if target == Some(src) {
            return Ok(());
        }
        if new_name.len() > 255 {
            return Err(VfsError::Invalid("name too long"));
        }
        let remote_name = tree::names::unescape(new_name)
            .map_err(|_| VfsError::Invalid("name"))?
            .into_owned();
        let node = self.node(src)?;
        let dest = self.dir_node(new_parent)?;
        self.may_change(&node)?;
        self.may_change(&dest)?;
        // Folders made here are renamed on the server (see `dirs.rs`).
        let node = self.on_server(node).await?;
        let dest = self.on_server(dest).await?;
        if node.kind.is_dir() && self.is_ancestor(src, new_parent) {
            return Err(VfsError::Invalid("cannot move a folder inside itself"));
        }
        let target = match target {
            Some(t) if no_replace => {
                let _ = t;
                return Err(VfsError::Exists);
            }
            Some(t) => {
                let tnode = self.on_server(self.node(t)?).await?;
                match (node.kind.is_dir(), tnode.kind.is_dir()) {
                    (true, false) => return Err(VfsError::NotDir),
                    (false, true) => return Err(VfsError::IsDir),
                    (true, true) if self.tree.read().child_count(t).unwrap_or(0) > 0 => {
                        return Err(VfsError::NotEmpty);
                    }
                    _ => {}
                }
                Some((t, tnode))
            }
            None => None,
        };
        let mut moved = node.clone();
        if node.parent != Some(dest.handle) {
            moved = self.move_of(&moved, &dest).await?;
        }
        if moved.name != remote_name {
            let meta = Meta {
                name: remote_name,
                ..Meta::of(&moved)
            };
            moved = self.set_meta_of(&moved, &meta).await?;
        }
        let handle = moved.handle;
        let changes = vec![Change::Upsert(moved)];
        // The replaced node goes only after the renamed one is in place: a crash in between
        // leaves both, never neither.
        match target {
            Some((t, tnode)) => self.remove_file(t, &tnode, changes).await,
            None => self.apply_own(
                changes,
                &[(parent, name, None), (new_parent, new_name, Some(handle))],
            ),
        }
    }

    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        let tree = self.tree.read();
        loop {
            if ino == ancestor {
                return true;
            }
            match tree.parent_of(ino) {
                Some(p) => ino = p,
                None => return false,
            }
        }
    }

    /// `setattr` when it needs neither the server nor a wait (no size change, and a file that
    /// exists only here or nothing to change): `None` when it does.
    pub fn setattr_now(&self, ino: u64, set: SetAttr) -> Option<Result<Stat>> {
        if set.size.is_some() {
            return None;
        }
        let local = (|| {
            self.check_owner(&set)?;
            if set.mode.is_none() && set.mtime.is_none() {
                return Ok(true);
            }
            self.writable()?;
            let node = self.node(ino)?;
            self.may_change(&node)?;
            if node.kind.is_dir() {
                self.queue_folder_attrs(ino, &node, set)?;
                return Ok(true);
            }
            self.local_setattr(ino, set)
        })();
        match local {
            Ok(true) => Some(self.getattr(ino)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn check_owner(&self, set: &SetAttr) -> Result<()> {
        if let Some(uid) = set.uid
            && uid != self.config.uid
            && uid != u32::MAX
        {
            return Err(VfsError::NotPermitted("changing the owner"));
        }
        if let Some(gid) = set.gid
            && gid != self.config.gid
            && gid != u32::MAX
        {
            return Err(VfsError::NotPermitted("changing the group"));
        }
        Ok(())
    }

    pub async fn setattr(self: &Arc<Self>, ino: u64, set: SetAttr) -> Result<Stat> {
        self.check_owner(&set)?;
        if set.mode.is_none() && set.size.is_none() && set.mtime.is_none() {
            return self.getattr(ino);
        }
        self.writable()?;
        self.may_change(&self.node(ino)?)?;
        let mut set = set;
        if let Some(size) = set.size
            && !self.truncate(ino, size).await?
            && set.mtime.is_none()
        {
            // A truncate to the size a file already has still marks its mtime, as Linux's
            // local file systems do (`truncate(2)` sends no time of its own).
            set.mtime = Some(None);
        }
        if (set.mode.is_some() || set.mtime.is_some()) && !self.local_setattr(ino, set)? {
            let node = self.node(ino)?;
            if node.kind.is_dir() {
                self.queue_folder_attrs(ino, &node, set)?;
                return self.getattr(ino);
            }
            let _ns = self.ns.lock().await;
            let node = self.node(ino)?;
            let meta = self.meta_after(ino, &node, set)?;
            if meta != Meta::of(&node) {
                let updated = self.set_meta_of(&node, &meta).await?;
                self.apply_setattr(ino, Change::Upsert(updated))?;
            }
        }
        self.getattr(ino)
    }

    /// `node`'s metadata once `set` (mode, mtime) is applied; a new mtime also goes to the
    /// local content and its queued uploads.
    fn meta_after(&self, ino: u64, node: &Node, set: SetAttr) -> Result<Meta> {
        let mut meta = Meta::of(node);
        if let Some(mode) = set.mode {
            meta.mode = Some(mode & 0o7777);
        }
        if let Some(mtime) = set.mtime {
            meta.mtime_ns = mtime.unwrap_or_else(now_ns);
            self.set_local_mtime(ino, meta.mtime_ns)?;
        } else if let Some(local) = self.files.lock().get(&ino) {
            meta.mtime_ns = local.mtime_ns;
        }
        Ok(meta)
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(kind: Kind, perm: u16) -> Stat {
        Stat {
            ino: 2,
            kind,
            size: 0,
            perm,
            mtime_ns: 0,
            crtime: 0,
            uid: 1000,
            gid: 100,
        }
    }

    #[test]
    fn each_caller_gets_the_bits_of_its_class_and_root_all_but_execution_of_a_file() {
        let (owner, group, other, root) = (
            Caller { uid: 1000, gid: 5 },
            Caller {
                uid: 1001,
                gid: 100,
            },
            Caller { uid: 1002, gid: 5 },
            Caller { uid: 0, gid: 0 },
        );
        let f = stat(Kind::File, 0o640);
        assert!(may(&f, owner, 0o6) && !may(&f, owner, 0o1));
        assert!(may(&f, group, 0o4) && !may(&f, group, 0o2));
        assert!(!may(&f, other, 0o4) && may(&f, other, 0));
        // The owner's class decides even when a wider class would allow more.
        assert!(!may(&stat(Kind::File, 0o077), owner, 0o4));
        assert!(may(&f, root, 0o6) && !may(&f, root, 0o1));
        assert!(may(&stat(Kind::File, 0o001), root, 0o1));
        assert!(may(&stat(Kind::Directory, 0o000), root, 0o7));
    }
}
