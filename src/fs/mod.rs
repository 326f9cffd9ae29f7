//! The FUSE adapter: each kernel request becomes one call into [`Vfs`] on the tokio runtime, and
//! its result one reply. No filesystem logic lives here; errors become errnos in [`errno`], and
//! every request is counted and timed, its failures too, in [`stats`] (`veilfs status`).
//!
//! Every request runs as its own task, so a slow download never holds up `ls`, and fuser's
//! threads only decode and dispatch. Operations we do not offer are listed at the end with the
//! errno userspace expects for them.

mod errno;
pub mod stats;

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use futures_util::FutureExt;
use tracing::Instrument;

pub use errno::errno_of;

use crate::remote::Remote;
use crate::vfs::{Caller, Kind, SetAttr, Stat, Vfs, VfsError};

/// How long the kernel may trust attributes and names unless told otherwise (`--attr-timeout`).
/// Every change the tree learns of (another client's, through the change feed) is pushed to
/// the kernel as an invalidation the moment it is applied, and this mount's own changes go
/// through the kernel: the timeout only bounds how long a lost invalidation could show stale
/// metadata. Short timeouts (libfuse's and rclone's 1 s) are for file systems that learn of
/// remote changes by asking again; here one made every `stat` of a file untouched for a
/// second a round trip to the daemon (`rsync`'s no-op pass: 2 300 of them for 2 000 files).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
const BLOCK: u32 = 4096;

pub struct FuseFs<R: Remote> {
    vfs: Arc<Vfs<R>>,
    rt: tokio::runtime::Handle,
    /// How long the kernel may cache an answer's names and attributes (see [`DEFAULT_TTL`]).
    ttl: Duration,
}

impl<R: Remote> FuseFs<R> {
    pub fn new(vfs: Arc<Vfs<R>>, rt: tokio::runtime::Handle, ttl: Duration) -> Self {
        FuseFs { vfs, rt, ttl }
    }

    /// Runs one request as a task with its own span; `f` gets the filesystem core.
    fn run<F, Fut>(&self, op: &'static str, f: F)
    where
        F: FnOnce(Arc<Vfs<R>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.run_since(op, Instant::now(), f);
    }

    /// [`FuseFs::run`] of a request that reached us at `start`.
    fn run_since<F, Fut>(&self, op: &'static str, start: Instant, f: F)
    where
        F: FnOnce(Arc<Vfs<R>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::debug_span!("fuse", op);
        let request = f(self.vfs.clone());
        self.rt.spawn(
            async move {
                request.await;
                stats::record(op, start.elapsed());
            }
            .instrument(span),
        );
    }

    /// Runs a request that does local work only on fuser's thread: no task, no hand-over to
    /// a worker (each costs a thread wake-up, tens of microseconds on a busy machine, and a
    /// small file's `close()` is two requests). Inside the runtime's context, as the request
    /// may start tasks (an unlinked file's clean-up).
    fn now<T>(&self, op: &'static str, f: impl FnOnce(&Arc<Vfs<R>>) -> T) -> T {
        let _timed = stats::Timed::start(op);
        self.on_thread(op, f)
    }

    /// [`FuseFs::now`] without the timing, for requests that may go on as a task (timed as
    /// one request from their start here).
    fn on_thread<T>(&self, op: &'static str, f: impl FnOnce(&Arc<Vfs<R>>) -> T) -> T {
        let _span = tracing::debug_span!("fuse", op).entered();
        let _rt = self.rt.enter();
        f(&self.vfs)
    }

    /// Runs an async request on fuser's thread when it completes without waiting (the usual
    /// case for `create`), else as a task. Only for requests that change nothing
    /// before their first wait, so that dropping the first attempt is harmless.
    fn now_or_run<T, Fut>(
        &self,
        op: &'static str,
        begin: impl Fn(Arc<Vfs<R>>) -> Fut + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) where
        Fut: Future<Output = T> + Send + 'static,
    {
        let start = Instant::now();
        let first = self.on_thread(op, |vfs| begin(vfs.clone()).now_or_never());
        match first {
            Some(result) => {
                done(result);
                stats::record(op, start.elapsed());
            }
            None => self.run_since(op, start, move |vfs| async move { done(begin(vfs).await) }),
        }
    }
}

/// Logs and counts a failed request and answers its errno.
fn fail(op: &'static str, e: &VfsError) -> Errno {
    stats::record_failure(op);
    let errno = errno_of(e);
    match e {
        VfsError::NotFound | VfsError::Exists | VfsError::NotEmpty => {
            tracing::trace!(op, error = %e)
        }
        VfsError::Integrity | VfsError::Remote(_) | VfsError::Io(_) | VfsError::Writeback(_) => {
            tracing::warn!(op, error = %e, "request failed")
        }
        _ => tracing::debug!(op, error = %e, "request refused"),
    }
    errno
}

fn reply_entry(op: &'static str, reply: ReplyEntry, ttl: Duration, result: Result<Stat, VfsError>) {
    match result {
        Ok(st) => reply.entry(&ttl, &attr(&st), Generation(0)),
        Err(e) => reply.error(fail(op, &e)),
    }
}

fn reply_empty(op: &'static str, reply: ReplyEmpty, result: Result<(), VfsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, &e)),
    }
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

fn attr(st: &Stat) -> FileAttr {
    let mtime = system_time(st.mtime_ns);
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size,
        blocks: st.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: system_time(st.crtime.saturating_mul(1_000_000_000)),
        kind: file_type(st.kind),
        perm: st.perm,
        nlink: if st.kind == Kind::Directory { 2 } else { 1 },
        uid: st.uid,
        gid: st.gid,
        rdev: 0,
        flags: 0,
        blksize: BLOCK,
    }
}

/// The attributes of a negative entry: inode 0 tells the kernel the name is absent.
fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: BLOCK,
    }
}

/// A name from the kernel; names that are not UTF-8 cannot be stored remotely.
fn name_of(name: &OsStr) -> Result<String, VfsError> {
    name.to_str()
        .map(str::to_owned)
        .ok_or(VfsError::Invalid("names must be UTF-8"))
}

impl<R: Remote> Filesystem for FuseFs<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: fewer round trips through the kernel for big sequential I/O.
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        let _ = config.set_max_background(64);
        // O_TRUNC arrives with `open` instead of as a later `setattr(size 0)`: otherwise an
        // overwrite first downloads the content it is about to discard, and fails while the
        // server is unreachable instead of being journaled.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        // `ls -l`, `find` and rsync's scan get names and attributes in one pass over a folder
        // instead of a lookup per entry; the kernel picks plain readdir where it is cheaper.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    /// A name that is not there is answered as a negative entry (inode 0), which the kernel
    /// keeps as long as a found one: programs look a name up before they create it (`rsync`
    /// stats each file before writing it under a temporary name, then renames onto it), and
    /// every such look-up was a round trip. Another client's new name reaches the kernel as an
    /// invalidation of the entry, as a changed one does (tested in `mount_posix.rs`).
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _timed = stats::Timed::start("lookup");
        match name_of(name).and_then(|n| self.vfs.lookup(parent.0, &n)) {
            Err(e @ VfsError::NotFound) => {
                fail("lookup", &e);
                reply.entry(&self.ttl, &absent(), Generation(0));
            }
            result => reply_entry("lookup", reply, self.ttl, result),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timed = stats::Timed::start("getattr");
        match self.vfs.getattr(ino.0) {
            Ok(st) => reply.attr(&self.ttl, &attr(&st)),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(|t| match t {
                TimeOrNow::SpecificTime(t) => Some(time_ns(t)),
                TimeOrNow::Now => None,
            }),
        };
        let ttl = self.ttl;
        let reply_attr = move |reply: ReplyAttr, result: Result<Stat, VfsError>| match result {
            Ok(st) => reply.attr(&ttl, &attr(&st)),
            Err(e) => reply.error(fail("setattr", &e)),
        };
        // rsync's `chmod` and `utimensat` of each file it just wrote: local while the file is
        // not uploaded yet.
        let start = Instant::now();
        let local = self.on_thread("setattr", |vfs| vfs.setattr_now(ino.0, set));
        if let Some(result) = local {
            reply_attr(reply, result);
            return stats::record("setattr", start.elapsed());
        }
        self.run_since("setattr", start, move |vfs| async move {
            reply_attr(reply, vfs.setattr(ino.0, set).await);
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _timed = stats::Timed::start("readlink");
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(fail("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files come through `create`; device files, fifos and sockets cannot be
        // stored in a cloud drive.
        let _ = mode;
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_of(name);
        let ttl = self.ttl;
        self.run("mkdir", move |vfs| async move {
            let result = match name {
                Ok(n) => vfs.mkdir(parent.0, &n, mode & !umask).await,
                Err(e) => Err(e),
            };
            reply_entry("mkdir", reply, ttl, result);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.run("unlink", move |vfs| async move {
            let result = match name {
                Ok(n) => vfs.unlink(parent.0, &n).await,
                Err(e) => Err(e),
            };
            reply_empty("unlink", reply, result);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.run("rmdir", move |vfs| async move {
            let result = match name {
                Ok(n) => vfs.rmdir(parent.0, &n).await,
                Err(e) => Err(e),
            };
            reply_empty("rmdir", reply, result);
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_of(link_name);
        let target = name_of(target.as_os_str());
        let ttl = self.ttl;
        self.run("symlink", move |vfs| async move {
            let result = match (name, target) {
                (Ok(n), Ok(t)) => vfs.symlink(parent.0, &n, &t).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            reply_entry("symlink", reply, ttl, result);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            // MEGA has no atomic exchange; refusing is what userspace handles (mv falls back).
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname) = (name_of(name), name_of(newname));
        if let (Ok(a), Ok(b)) = (&name, &newname)
            && let Some(result) =
                self.now("rename", |vfs| vfs.rename_now(parent.0, a, newparent.0, b))
        {
            return reply_empty("rename", reply, result);
        }
        self.run("rename", move |vfs| async move {
            let result = match (name, newname) {
                (Ok(a), Ok(b)) => vfs.rename(parent.0, &a, newparent.0, &b, no_replace).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            reply_empty("rename", reply, result);
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // A node has one parent in MEGA and Filen: hard links cannot be represented.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        self.run("open", move |vfs| async move {
            match vfs.open(ino.0, write, truncate).await {
                Ok((fh, keep_cache)) => {
                    let flags = if keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(fail("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run("read", move |vfs| async move {
            match vfs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(fail("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _timed = stats::Timed::start("write");
        // Local staging I/O: answered on fuser's thread, no task needed.
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty("flush", reply, self.now("flush", |vfs| vfs.flush(fh.0)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.now("release", |vfs| vfs.release(fh.0));
        reply_empty("release", reply, result);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply_empty("fsync", reply, self.now("fsync", |vfs| vfs.fsync(fh.0)));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _timed = stats::Timed::start("readdir");
        match self.vfs.readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _timed = stats::Timed::start("readdirplus");
        match self.vfs.readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    let Ok(st) = self.vfs.getattr(e.ino) else {
                        continue;
                    };
                    if reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        &e.name,
                        &self.ttl,
                        &attr(&st),
                        Generation(0),
                    ) {
                        break;
                    }
                    // Entries other than `.` and `..` count as a lookup for the kernel.
                    if e.name != "." && e.name != ".." {
                        self.vfs.remember(e.ino);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdirplus", &e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            "fsyncdir",
            reply,
            self.now("fsyncdir", |vfs| vfs.fsyncdir()),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run("statfs", move |vfs| async move {
            match vfs.statfs().await {
                Ok(q) => {
                    let blocks = q.total.div_ceil(u64::from(BLOCK));
                    let free = q.total.saturating_sub(q.used) / u64::from(BLOCK);
                    reply.statfs(blocks, free, free, 0, 0, BLOCK, 255, BLOCK);
                }
                Err(e) => reply.error(fail("statfs", &e)),
            }
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _timed = stats::Timed::start("access");
        let caller = Caller {
            uid: req.uid(),
            gid: req.gid(),
        };
        let result = self.vfs.access(ino.0, caller, mask.bits() as u32);
        reply_empty("access", reply, result);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name: Result<String, Errno> = name_of(name).map_err(|e| fail("create", &e));
        let mode = mode & !umask;
        let ttl = self.ttl;
        // `Vfs::create` only waits for the folder's listing (during a first load) before it
        // changes anything.
        self.now_or_run(
            "create",
            move |vfs| {
                let name = name.clone();
                async move {
                    match name {
                        Ok(name) => vfs
                            .create(parent.0, &name, mode)
                            .await
                            .map_err(|e| fail("create", &e)),
                        Err(errno) => Err(errno),
                    }
                }
            },
            move |result| match result {
                Ok((st, fh)) => reply.created(
                    &ttl,
                    &attr(&st),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(errno) => reply.error(errno),
            },
        );
    }

    // ----- not offered -----
    // Extended attributes: not stored (yet), so refuse rather than silently drop them.
    // `getxattr` answers ENOSYS: the kernel then answers every later one itself (EOPNOTSUPP,
    // what a file system without extended attributes gives). It asks for `security.capability`
    // before each write to a file, so an answer here would cost a round trip per write.

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// No ioctls: ENOTTY, what userspace expects of a file that is not a terminal (Python's
    /// `open` asks each file it opens whether it is one). fuser's default logs a warning each time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENODATA);
    }
}
