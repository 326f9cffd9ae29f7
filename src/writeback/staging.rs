//! Staging files: who holds each one, where their bytes are, and the reuse of the ones nobody
//! needs any more.
//!
//! Why memory first: a file written through the mount starts in memory ([`Pool::create_small`])
//! and gets a file here only if it grows past [`MEMORY_MAX`]. A small file's `close()` puts its
//! content in its journal record anyway (one sync, the journal's), so the staging file only
//! ever served its upload, and creating it was the dearest part of writing the file: 10 000
//! files of 1 KiB cost the daemon 5.8 s of CPU with a staging file each and 3.6 s without
//! (`perf`: the difference is ext4 finding inodes, and recycling them). The content stays in
//! memory until its upload is committed and the file discarded, and in the journal, which
//! writes it back into a staging file of its own at the next mount if the daemon stopped
//! first. At most [`MEMORY_BUDGET`] bytes are kept so; beyond, new files get a staging file at
//! once.
//!
//! Why reuse: every file past the memory stage costs one staging file, and creating an inode
//! is the most expensive thing a write does here. On ext4 without a journal (the benchmark
//! VM) the allocator skips every inode freed in the last half minute or so
//! (`recently_deleted`), and staging files are freed as fast as uploads commit: a `create`
//! spent 0.9 ms of CPU in the kernel finding an inode, a quarter of the daemon's time writing
//! 10 000 small files (`perf`). A staging file that is no longer needed is therefore truncated
//! and kept for the next one.
//!
//! Why named ahead: taking a kept file used to cost a rename into place at `create`, 40 µs of
//! the request's CPU and a wait on the file system's lock for renames across folders (the
//! recycler's ran at the same time), a third of a small file's `create`. The recycler now gives
//! each kept file the name of a future staging file, `<id>` with an id reserved then, and
//! keeps it open: `create` takes the oldest one and makes no system call. Ids stay in the
//! order files are created, which says which of two versions of a file is newer
//! (`Vfs::superseded`): only the recycler reserves ids ahead, in order; a `create` that finds
//! none ready takes a new id, as does every file kept in memory, and a ready file whose id
//! that overtook is renamed to a new id when a `create` takes it.
//!
//! Why holds: a staging file is read by open handles, by the upload that sends it and by the
//! copy a writer makes of a queued version, each through its own descriptor. Reusing a file
//! someone still reads would show them another file's content. So every user holds the id
//! ([`Hold`], or a [`Staged`] file that carries one); `discard` of a held id waits for the last
//! hold to go, and an id once discarded can no longer be held. Recycling runs on a thread of its
//! own: truncating a large file takes a while (ext4 frees every extent).
//!
//! Why a discard carries a mark: a file is emptied only once the journal's record that nobody
//! needs it is on the disk. The recycler gathers discards for [`GATHER`], by when a `close()`
//! or a commit has usually synced the journal past their marks; it syncs only if not. (It
//! synced for every batch: 600 extra disk flushes in an `rsync` of 2 000 files, each one
//! making the next `close()` wait longer for its own.)
//!
//! Why only some: each ready file holds a descriptor. At most [`MAX_OPEN_FREE`] (fewer when the
//! limit on open files is low: a queued file holds no descriptor, and the ready ones must not
//! take the room that open handles need); the others wait under `free/`, without one, and are
//! named ahead as the ready ones are taken.
//!
//! On disk: `staging/<id>` for files in use and ready ones, `staging/free/<n>` for empty ones
//! waiting. Ready files go back under `free/` when the pool closes; after a crash they have no
//! journal entry, and the next mount removes them with the other leftovers. A crash between
//! the rename into `free/` and the truncation leaves a non-empty free file; it is truncated
//! when named ahead.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::content::Content;
use crate::direct_io;

/// Empty staging files kept for reuse; beyond this, discarded files are deleted.
const MAX_FREE: usize = 1024;

/// Files named ahead and kept open, at most (see the module's doc).
const MAX_OPEN_FREE: usize = 256;

/// How long the recycler gathers discarded files before it empties them (see the module's doc).
const GATHER: Duration = Duration::from_millis(20);

/// Files written through the mount start in memory and get a staging file only when they grow
/// past this (see the module's doc). Their content then fits a journal record.
pub const MEMORY_MAX: u64 = 64 * 1024;

/// Most bytes that files kept in memory hold together; beyond it, new files get a staging file
/// at once. Well under the journal's `COMPACT_INLINE_BYTES`: a file kept in memory keeps its
/// content in the journal until its upload is committed, having no file to sync instead.
const MEMORY_BUDGET: u64 = 8 * 1024 * 1024;

/// Pieces in which [`Staged::copy_from`] copies through memory.
const COPY_PIECE: u64 = 1024 * 1024;

/// Where a staging file's bytes are.
enum Place {
    Memory(Vec<u8>),
    File(File),
}

/// The content of one staging file, shared by everyone who has it open.
struct Body {
    id: u64,
    place: RwLock<Place>,
    /// Its file was taken from the free ones (renamed) rather than created.
    reused: AtomicBool,
    /// A descriptor for direct writes, opened at the first large one (`None` inside: the file
    /// system refuses them).
    direct: OnceLock<Option<File>>,
    pool: Weak<Shared>,
}

impl Body {
    fn new(id: u64, place: Place, reused: bool, pool: &Arc<Shared>) -> Arc<Self> {
        Arc::new(Body {
            id,
            place: RwLock::new(place),
            reused: AtomicBool::new(reused),
            direct: OnceLock::new(),
            pool: Arc::downgrade(pool),
        })
    }

    /// Moves content kept in memory to a staging file of its own (it grows past
    /// [`MEMORY_MAX`]); nothing to do when it has one.
    fn spill(&self, place: &mut Place) -> std::io::Result<()> {
        let Place::Memory(data) = &*place else {
            return Ok(());
        };
        let pool = self
            .pool
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the staging area is closed"))?;
        let (file, reused) = pool.file_for(self.id)?;
        if let Err(e) = file.write_all_at(data, 0) {
            let _ = std::fs::remove_file(pool.path_of(self.id));
            return Err(e);
        }
        self.reused.store(reused, Ordering::Relaxed);
        pool.memory_bytes
            .fetch_sub(data.len() as u64, Ordering::Relaxed);
        *place = Place::File(file);
        // Found by its path from now on.
        pool.state.lock().memory.remove(&self.id);
        Ok(())
    }

    /// Resizes content kept in memory, keeping the pool's count of such bytes.
    fn resize(&self, data: &mut Vec<u8>, len: usize) {
        if let Some(pool) = self.pool.upgrade() {
            if len > data.len() {
                pool.memory_bytes
                    .fetch_add((len - data.len()) as u64, Ordering::Relaxed);
            } else {
                pool.memory_bytes
                    .fetch_sub((data.len() - len) as u64, Ordering::Relaxed);
            }
        }
        data.resize(len, 0);
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let (Place::Memory(data), Some(pool)) = (&*self.place.get_mut(), self.pool.upgrade()) {
            pool.memory_bytes
                .fetch_sub(data.len() as u64, Ordering::Relaxed);
        }
    }
}

/// A staging file open for reading and writing, held (not recycled) while this lives: in
/// memory while it is small, else a file under the staging directory.
pub struct Staged {
    body: Arc<Body>,
    hold: Hold,
}

impl Staged {
    pub fn id(&self) -> u64 {
        self.hold.id
    }

    /// Whether the file got its name by a rename (which syncing the file does not make
    /// durable on every file system: the directory must be synced too).
    pub fn reused(&self) -> bool {
        self.body.reused.load(Ordering::Relaxed)
    }

    /// Whether the content is in memory (no staging file exists for it).
    pub fn in_memory(&self) -> bool {
        matches!(*self.body.place.read(), Place::Memory(_))
    }

    /// Writes `data` at `offset`. A large aligned write (a program copying a big file) goes
    /// to the disk directly, bypassing the page cache: it is synced at `close()` anyway and
    /// read back once, by its upload (see `direct_io`). Returns the bytes written buffered
    /// (in the page cache, to be written out).
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<u64> {
        let end = offset + data.len() as u64;
        {
            let place = self.body.place.read();
            if let Place::File(file) = &*place {
                return self.write_file(file, data, offset);
            }
        }
        let mut place = self.body.place.write();
        if end > MEMORY_MAX {
            self.body.spill(&mut place)?;
        }
        match &mut *place {
            Place::Memory(mem) => {
                if (mem.len() as u64) < end {
                    self.body.resize(mem, end as usize);
                }
                mem[offset as usize..end as usize].copy_from_slice(data);
                Ok(0)
            }
            Place::File(file) => self.write_file(file, data, offset),
        }
    }

    fn write_file(&self, file: &File, data: &[u8], offset: u64) -> std::io::Result<u64> {
        let direct = if direct_io::qualifies(offset, data.len()) {
            self.body
                .direct
                .get_or_init(|| direct_io::reopen_direct(file))
                .as_ref()
        } else {
            None
        };
        direct_io::write_pieces(file, direct, offset, &[data])
    }

    pub fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.write_at(data, offset).map(|_| ())
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match &*self.body.place.read() {
            Place::File(file) => file.read_exact_at(buf, offset),
            Place::Memory(mem) => {
                buf.copy_from_slice(crate::content::slice_at(mem, offset, buf.len())?);
                Ok(())
            }
        }
    }

    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut place = self.body.place.write();
        if len > MEMORY_MAX {
            self.body.spill(&mut place)?;
        }
        match &mut *place {
            Place::Memory(mem) => {
                self.body.resize(mem, len as usize);
                Ok(())
            }
            Place::File(file) => file.set_len(len),
        }
    }

    pub fn len(&self) -> std::io::Result<u64> {
        match &*self.body.place.read() {
            Place::File(file) => Ok(file.metadata()?.len()),
            Place::Memory(mem) => Ok(mem.len() as u64),
        }
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Makes a staging file's data durable. Content kept in memory has nothing to sync: it
    /// reaches the disk in its journal record (`Writeback::enqueue`).
    pub fn sync_data(&self) -> std::io::Result<()> {
        match &*self.body.place.read() {
            Place::File(file) => file.sync_data(),
            Place::Memory(_) => Ok(()),
        }
    }

    /// Starts writing `offset..offset + len` out to the disk (see `util::start_writeback`).
    pub fn start_writeback(&self, offset: u64, len: u64) {
        if let Place::File(file) = &*self.body.place.read() {
            crate::util::start_writeback(file, offset, len);
        }
    }

    /// The file's metadata; an error for content kept in memory.
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        match &*self.body.place.read() {
            Place::File(file) => file.metadata(),
            Place::Memory(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "kept in memory",
            )),
        }
    }

    /// Writes the whole content of `from` here (which is empty): a kernel copy between files
    /// (`copy_file_range`, a reflink where the file system has them), else through memory.
    pub fn copy_from(&self, from: &Staged) -> std::io::Result<()> {
        {
            let source = from.body.place.read();
            let target = self.body.place.read();
            if let (Place::File(input), Place::File(output)) = (&*source, &*target) {
                std::io::copy(&mut &*input, &mut &*output)?;
                return Ok(());
            }
        }
        let len = from.len()?;
        let mut buf = vec![0u8; len.min(COPY_PIECE) as usize];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(COPY_PIECE) as usize;
            from.read_exact_at(&mut buf[..n], at)?;
            self.write_at(&buf[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// A claim on staging file `id`: it is not recycled while a hold lives.
pub struct Hold {
    id: u64,
    pool: Arc<Shared>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock();
        let last = match state.holds.get_mut(&self.id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                state.holds.remove(&self.id);
                true
            }
        };
        if let Some(&mark) = state.discarded.get(&self.id)
            && last
        {
            drop(state);
            self.pool.recycle(self.id, mark);
        }
    }
}

struct State {
    /// Live holds per id.
    holds: HashMap<u64, usize>,
    /// Discarded, not yet recycled: can no longer be held. With the mark given at `discard`.
    discarded: HashMap<u64, u64>,
    /// Files under `free/` without a descriptor, waiting to be named ahead: empty, unless a
    /// crash interrupted their recycling (adopted at open).
    free: Vec<u64>,
    next_free: u64,
    /// Empty files named `<id>` for a reserved id, open, oldest id first (see the module's
    /// doc).
    ready: std::collections::VecDeque<(u64, File)>,
    /// The next id to give out or reserve.
    next_id: u64,
    /// The highest id given to a `create`.
    last_given: u64,
    /// The recycler was asked to name free files ahead and has not yet.
    topping_up: bool,
    /// Files whose content is in memory, by id (see [`Pool::create_small`]).
    memory: HashMap<u64, Arc<Body>>,
}

impl State {
    /// The next id, given out or reserved.
    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Whether to ask the recycler to name free files ahead (few ready ones left, and none
    /// asked yet); marks it asked.
    fn wants_top_up(&mut self, max_ready: usize) -> bool {
        let low = self.ready.len() <= max_ready / 2;
        let wanted = low && !self.free.is_empty() && !self.topping_up;
        self.topping_up |= wanted;
        wanted
    }
}

/// What the recycler thread is asked to do.
enum Job {
    /// Recycle a discarded file once the journal is on the disk up to the mark.
    Discarded { id: u64, mark: u64 },
    /// Name free files ahead (the ready ones run low).
    TopUp,
}

struct Shared {
    dir: PathBuf,
    /// How many free files may stay open (see the module's doc).
    max_open_free: usize,
    state: Mutex<State>,
    /// Bytes held by files kept in memory.
    memory_bytes: AtomicU64,
    /// Signalled whenever `discarded` shrinks (for `settle`).
    settled: Condvar,
    recycler: Mutex<mpsc::Sender<Job>>,
}

/// Runs before discarded files are emptied, with the highest of their marks (the journal's
/// sync to that mark: see `Writeback::open`).
type BeforeRecycle = Box<dyn Fn(u64) -> std::io::Result<()> + Send>;

impl Shared {
    fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn free_path(&self, n: u64) -> PathBuf {
        self.dir.join("free").join(n.to_string())
    }

    fn recycle(&self, id: u64, mark: u64) {
        {
            let mut state = self.state.lock();
            if state.memory.remove(&id).is_some() {
                // Never had a file: dropping the content is all there is to do.
                state.discarded.remove(&id);
                drop(state);
                self.settled.notify_all();
                return;
            }
        }
        if self.send(Job::Discarded { id, mark }).is_err() {
            // The recycler is gone (shutting down): the next mount removes the file.
            self.state.lock().discarded.remove(&id);
        }
    }

    fn send(&self, job: Job) -> Result<(), mpsc::SendError<Job>> {
        self.recycler.lock().send(job)
    }

    /// Reserves the next id for a file named ahead, if there is room for one more.
    fn reserve(&self) -> Option<u64> {
        let mut state = self.state.lock();
        (state.ready.len() < self.max_open_free).then(|| state.take_id())
    }

    /// On the recycler thread: empties discarded file `id` and names it ahead, or keeps it
    /// under `free/` when enough are named, or deletes it when enough are kept.
    fn recycle_now(&self, id: u64) {
        self.reuse(&self.path_of(id));
        self.state.lock().discarded.remove(&id);
        self.settled.notify_all();
    }

    /// Keeps the file at `path` for the next `create`s: named ahead while there is room for
    /// more, else under `free/`, else deleted.
    fn reuse(&self, path: &Path) {
        let kept = match self.reserve() {
            Some(next) => self.name_ahead(path, next).is_some(),
            None => self.keep_free(path).is_some(),
        };
        if !kept {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Renames the file at `from` to `<next>`, empties it and adds it to the ready ones. On
    /// failure nothing is left under `<next>`; a file the rename could not move is still at
    /// `from`, for the caller to remove.
    fn name_ahead(&self, from: &Path, next: u64) -> Option<()> {
        let path = self.path_of(next);
        std::fs::rename(from, &path).ok()?;
        let ready = (|| {
            let emptied = OpenOptions::new().write(true).open(&path).ok()?;
            if emptied.metadata().ok()?.len() > 0 {
                emptied.set_len(0).ok()?;
            }
            // The descriptor kept is not the one that truncated: ext4 writes out a file
            // truncated to zero when a descriptor open across the truncation closes
            // (`auto_da_alloc`). Kept open, that would be at the small file's `release`, its
            // content sent to the disk there; closed here, there is nothing to write.
            OpenOptions::new().read(true).write(true).open(&path).ok()
        })();
        let Some(file) = ready else {
            let _ = std::fs::remove_file(&path);
            return None;
        };
        // Only this thread reserves ids, in order: pushed in order too.
        self.state.lock().ready.push_back((next, file));
        Some(())
    }

    /// Moves the file at `from` under `free/`, emptied, if fewer than [`MAX_FREE`] are.
    fn keep_free(&self, from: &Path) -> Option<()> {
        let n = {
            let mut state = self.state.lock();
            if state.free.len() + state.ready.len() >= MAX_FREE {
                return None;
            }
            state.next_free += 1;
            state.next_free
        };
        let free = self.free_path(n);
        std::fs::rename(from, &free).ok()?;
        let emptied = OpenOptions::new().write(true).open(&free);
        if emptied.and_then(|f| f.set_len(0)).is_err() {
            let _ = std::fs::remove_file(&free);
            return None;
        }
        self.state.lock().free.push(n);
        Some(())
    }

    /// On the recycler thread: names free files ahead while there is room for more ready
    /// ones.
    fn top_up(&self) {
        loop {
            let (n, next) = {
                let mut state = self.state.lock();
                if state.ready.len() >= self.max_open_free || state.free.is_empty() {
                    state.topping_up = false;
                    return;
                }
                let n = state.free.pop().expect("not empty");
                (n, state.take_id())
            };
            if self.name_ahead(&self.free_path(n), next).is_none() {
                let _ = std::fs::remove_file(self.free_path(n));
            }
        }
    }

    /// A file named `<id>` (content kept in memory until now, or a `create` that found no file
    /// named ahead for a newer id): a ready one renamed (its reserved id is simply not used),
    /// else a free one, else a new one. With whether it was renamed.
    fn file_for(&self, id: u64) -> std::io::Result<(File, bool)> {
        let path = self.path_of(id);
        let (ready, free, top_up) = {
            let mut state = self.state.lock();
            let ready = state.ready.pop_front();
            let free = if ready.is_none() {
                state.free.pop()
            } else {
                None
            };
            (ready, free, state.wants_top_up(self.max_open_free))
        };
        if top_up {
            let _ = self.send(Job::TopUp);
        }
        if let Some((from, file)) = ready {
            if std::fs::rename(self.path_of(from), &path).is_ok() {
                return Ok((file, true));
            }
            let _ = std::fs::remove_file(self.path_of(from));
        }
        if let Some(n) = free
            && std::fs::rename(self.free_path(n), &path).is_ok()
        {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if file.metadata()?.len() > 0 {
                file.set_len(0)?;
            }
            return Ok((file, true));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((file, false))
    }
}

/// [`MAX_OPEN_FREE`], or an eighth of the limit on open files when that is lower.
fn max_open_free() -> usize {
    let Some((soft, _)) = crate::util::open_files_limit() else {
        return 0;
    };
    MAX_OPEN_FREE.min(usize::try_from(soft / 8).unwrap_or(usize::MAX))
}

/// The staging directory of one mount.
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Opens the staging directory `dir` (0700), adopting the free files a previous mount left;
    /// ids are given from `first_id` on (higher than any file in `dir`). `before_recycle` runs
    /// before each batch of discarded files is emptied, with the highest mark they were
    /// discarded with; if it fails they are left alone (the next mount removes them).
    pub fn open(
        dir: &Path,
        first_id: u64,
        before_recycle: impl Fn(u64) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::open_capped(dir, first_id, max_open_free(), before_recycle)
    }

    /// [`Pool::open`] keeping at most `max_open_free` files named ahead.
    fn open_capped(
        dir: &Path,
        first_id: u64,
        max_open_free: usize,
        before_recycle: impl Fn(u64) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Self> {
        let before_recycle: BeforeRecycle = Box::new(before_recycle);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("free"))?;
        let mut free = Vec::new();
        for entry in std::fs::read_dir(dir.join("free"))? {
            let entry = entry?;
            match entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                Some(n) if free.len() < MAX_FREE => free.push(n),
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_open_free,
            state: Mutex::new(State {
                holds: HashMap::new(),
                discarded: HashMap::new(),
                next_free: free.iter().copied().max().unwrap_or(0),
                free,
                ready: std::collections::VecDeque::new(),
                next_id: first_id.max(1),
                last_given: 0,
                topping_up: false,
                memory: HashMap::new(),
            }),
            memory_bytes: AtomicU64::new(0),
            settled: Condvar::new(),
            recycler: Mutex::new(tx),
        });
        // The thread holds only a weak reference: dropping the pool ends it.
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("veilfs-staging".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    if matches!(first, Job::Discarded { .. }) {
                        std::thread::sleep(GATHER);
                    }
                    let Some(shared) = weak.upgrade() else { break };
                    let mut discarded = Vec::new();
                    let mut top_up = false;
                    for job in std::iter::once(first).chain(rx.try_iter()) {
                        match job {
                            Job::Discarded { id, mark } => discarded.push((id, mark)),
                            Job::TopUp => top_up = true,
                        }
                    }
                    if !discarded.is_empty() {
                        let mark = discarded.iter().map(|&(_, mark)| mark).max().unwrap_or(0);
                        let ready = before_recycle(mark);
                        for (id, _) in discarded {
                            match &ready {
                                Ok(()) => shared.recycle_now(id),
                                Err(error) => {
                                    tracing::warn!(%error, "staging file left for the next mount");
                                    shared.state.lock().discarded.remove(&id);
                                    shared.settled.notify_all();
                                }
                            }
                        }
                    }
                    if top_up {
                        shared.top_up();
                    }
                }
            })?;
        let top_up = shared.state.lock().wants_top_up(shared.max_open_free);
        if top_up {
            let _ = shared.send(Job::TopUp);
        }
        Ok(Pool { shared })
    }

    pub fn path_of(&self, id: u64) -> PathBuf {
        self.shared.path_of(id)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A new, empty staging file with a new id, higher than any given before, its content
    /// kept in memory until it grows past [`MEMORY_MAX`] — unless files kept in memory already
    /// hold [`MEMORY_BUDGET`] bytes: then a file at once, as [`Pool::create`].
    pub fn create_small(&self) -> std::io::Result<Staged> {
        if self.shared.memory_bytes.load(Ordering::Relaxed) >= MEMORY_BUDGET {
            return self.create();
        }
        let mut state = self.shared.state.lock();
        let id = state.take_id();
        state.last_given = id;
        let hold = self.claim(&mut state, id);
        let body = Body::new(id, Place::Memory(Vec::new()), false, &self.shared);
        state.memory.insert(id, body.clone());
        Ok(Staged { body, hold })
    }

    /// A new, empty staging file (0600) with a new id, higher than any given before: one named
    /// ahead, else a free one renamed, else a new one. A file named ahead whose id a newer
    /// one overtook (files kept in memory take ids too) is renamed to a new id here: one
    /// rename, where naming every overtaken file again would cost one each time.
    pub fn create(&self) -> std::io::Result<Staged> {
        let mut state = self.shared.state.lock();
        let named = match state.ready.front() {
            Some(&(ready_id, _)) if ready_id > state.last_given => state.ready.pop_front(),
            _ => None,
        };
        let id = match &named {
            Some((ready_id, _)) => *ready_id,
            None => state.take_id(),
        };
        state.last_given = id;
        let hold = self.claim(&mut state, id);
        let top_up = named.is_some() && state.wants_top_up(self.shared.max_open_free);
        drop(state);
        if top_up {
            let _ = self.shared.send(Job::TopUp);
        }
        let (file, reused) = match named {
            Some((_, file)) => (file, true),
            None => self.shared.file_for(id)?,
        };
        Ok(Staged {
            body: Body::new(id, Place::File(file), reused, &self.shared),
            hold,
        })
    }

    /// Opens staging file `id` again (after a remount, or to read it besides its writer).
    pub fn reopen(&self, id: u64) -> std::io::Result<Staged> {
        let hold = self.hold(id)?;
        if let Some(body) = self.shared.state.lock().memory.get(&id) {
            return Ok(Staged {
                body: body.clone(),
                hold,
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path_of(id))?;
        // Reopened files are sealed: nothing enqueues them again.
        Ok(Staged {
            body: Body::new(id, Place::File(file), false, &self.shared),
            hold,
        })
    }

    /// What the upload of staging file `id` reads (see [`Staged::content`]), with a hold on
    /// it. Fails for a discarded id.
    pub fn content(&self, id: u64) -> std::io::Result<(Content, Hold)> {
        let hold = self.hold(id)?;
        let body = self.shared.state.lock().memory.get(&id).cloned();
        let content = match body {
            Some(body) => match &*body.place.read() {
                Place::Memory(mem) => Content::Memory(Bytes::copy_from_slice(mem)),
                Place::File(_) => Content::File(self.path_of(id)),
            },
            None => Content::File(self.path_of(id)),
        };
        Ok((content, hold))
    }

    /// Makes the names of the staging files durable.
    pub fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.shared.dir)?.sync_all()
    }

    /// Holds staging file `id` while its path is used (an upload reading it). Fails for a
    /// discarded id: its file is about to be reused.
    pub fn hold(&self, id: u64) -> std::io::Result<Hold> {
        let mut state = self.shared.state.lock();
        if state.discarded.contains_key(&id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("staging file {id} was discarded"),
            ));
        }
        Ok(self.claim(&mut state, id))
    }

    fn claim(&self, state: &mut State, id: u64) -> Hold {
        *state.holds.entry(id).or_default() += 1;
        Hold {
            id,
            pool: self.shared.clone(),
        }
    }

    /// Nothing refers to staging file `id` any more: it is emptied and reused (or deleted)
    /// once its last hold is gone, off the caller's path, after `before_recycle(mark)`.
    pub fn discard(&self, id: u64, mark: u64) {
        let mut state = self.shared.state.lock();
        if state.discarded.contains_key(&id) {
            return;
        }
        state.discarded.insert(id, mark);
        let held = state.holds.contains_key(&id);
        drop(state);
        if !held {
            self.shared.recycle(id, mark);
        }
    }

    /// Waits until every discarded file that is no longer held has been recycled.
    pub fn settle(&self) {
        let mut state = self.shared.state.lock();
        while state
            .discarded
            .keys()
            .any(|id| !state.holds.contains_key(id))
        {
            self.shared.settled.wait(&mut state);
        }
    }

    /// Empty files waiting for reuse.
    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        let state = self.shared.state.lock();
        state.free.len() + state.ready.len()
    }

    /// Empty files named ahead, with their descriptor.
    #[cfg(test)]
    fn ready_count(&self) -> usize {
        self.shared.state.lock().ready.len()
    }
}

impl Drop for Pool {
    /// Files named ahead go back under `free/`: the next mount would take them for the
    /// leftovers of writes never acknowledged, and delete them.
    fn drop(&mut self) {
        let ready = std::mem::take(&mut self.shared.state.lock().ready);
        for (id, file) in ready {
            drop(file);
            let path = self.shared.path_of(id);
            if self.shared.keep_free(&path).is_none() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn open(dir: &Path) -> Pool {
        Pool::open(dir, 1, |_| Ok(())).unwrap()
    }

    impl Pool {
        /// Waits until the recycler has named free files ahead as asked.
        fn topped_up(&self) {
            while self.shared.state.lock().topping_up {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn a_discarded_file_is_emptied_and_named_ahead_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path());
        let a = pool.create().unwrap();
        assert_eq!(a.id(), 1);
        a.write_all_at(b"secret", 0).unwrap();
        let inode = a.metadata().unwrap().ino();
        drop(a);
        pool.discard(1, 0);
        pool.settle();
        assert!(!pool.path_of(1).exists());
        // Already under the name of the next staging file, and empty.
        assert_eq!(pool.ready_count(), 1);
        assert_eq!(std::fs::metadata(pool.path_of(2)).unwrap().len(), 0);
        let b = pool.create().unwrap();
        assert_eq!(b.id(), 2);
        assert_eq!(b.metadata().unwrap().ino(), inode, "the same inode, reused");
        assert_eq!(b.metadata().unwrap().len(), 0, "emptied before reuse");
        assert_eq!(pool.free_count(), 0);
    }

    #[test]
    fn a_held_file_is_not_reused_until_its_last_hold_goes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path());
        let writer = pool.create().unwrap();
        let id = writer.id();
        writer.write_all_at(b"version one", 0).unwrap();
        let upload = pool.hold(id).unwrap();
        let reader = pool.reopen(id).unwrap();
        drop(writer);
        pool.discard(id, 0);
        // Discarded: nobody new may hold it, but the holders keep reading it intact.
        assert!(pool.hold(id).is_err());
        assert!(pool.reopen(id).is_err());
        pool.settle();
        let other = pool.create().unwrap();
        assert!(other.id() > id);
        other.write_all_at(b"another file", 0).unwrap();
        let mut buf = [0u8; 11];
        reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"version one");
        assert!(pool.path_of(id).exists());
        drop(reader);
        assert!(pool.path_of(id).exists(), "the upload still holds it");
        drop(upload);
        pool.settle();
        assert!(!pool.path_of(id).exists());
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn a_file_is_emptied_only_after_the_hook_ran_for_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let pool = Pool::open(dir.path(), 1, move |mark| {
            seen.lock().push(mark);
            Ok(())
        })
        .unwrap();
        for id in [1, 2] {
            assert_eq!(pool.create().unwrap().id(), id);
        }
        let held = pool.hold(2).unwrap();
        pool.discard(1, 5);
        pool.discard(2, 9);
        pool.settle();
        assert!(!pool.path_of(1).exists());
        assert_eq!(*calls.lock(), [5], "file 2 is still held");
        assert!(pool.path_of(2).exists());
        drop(held);
        pool.settle();
        assert!(!pool.path_of(2).exists());
        assert_eq!(calls.lock().last(), Some(&9));
    }

    #[test]
    fn a_failing_hook_leaves_the_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), 1, |_| Err(std::io::Error::other("disk gone"))).unwrap();
        drop(pool.create().unwrap());
        pool.discard(1, 1);
        pool.settle();
        assert!(pool.path_of(1).exists(), "kept for the next mount");
        assert_eq!(pool.free_count(), 0);
    }

    #[test]
    fn files_are_named_ahead_up_to_the_cap_and_the_others_wait_under_free() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open_capped(dir.path(), 1, 2, |_| Ok(())).unwrap();
        let mut inodes = Vec::new();
        for id in 1..=3 {
            let f = pool.create().unwrap();
            assert_eq!(f.id(), id);
            f.write_all_at(b"old content", 0).unwrap();
            inodes.push(f.metadata().unwrap().ino());
        }
        for id in 1..=3 {
            pool.discard(id, 0);
        }
        pool.settle();
        assert_eq!((pool.free_count(), pool.ready_count()), (3, 2));
        let mut reused = Vec::new();
        for id in [4, 5, 6] {
            let f = pool.create().unwrap();
            assert_eq!(f.id(), id, "in order");
            assert_eq!(f.metadata().unwrap().len(), 0, "file {id} taken empty");
            // Written through the descriptor taken, read through its name.
            f.write_all_at(format!("new {id}").as_bytes(), 0).unwrap();
            assert_eq!(
                std::fs::read(pool.path_of(id)).unwrap(),
                format!("new {id}").as_bytes()
            );
            reused.push(f.metadata().unwrap().ino());
            // Taking the ready ones had the recycler name the waiting one ahead.
            pool.topped_up();
        }
        assert_eq!(pool.free_count(), 0);
        reused.sort_unstable();
        inodes.sort_unstable();
        assert_eq!(reused, inodes, "the three inodes, reused");
    }

    fn memory_bytes(pool: &Pool) -> u64 {
        pool.shared.memory_bytes.load(Ordering::Relaxed)
    }

    #[test]
    fn a_small_file_stays_in_memory_and_moves_to_a_file_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path());
        let f = pool.create_small().unwrap();
        let id = f.id();
        f.write_all_at(b"hello", 10).unwrap();
        assert!(f.in_memory());
        assert!(!pool.path_of(id).exists(), "no inode for a small file");
        assert_eq!(f.len().unwrap(), 15);
        assert_eq!(memory_bytes(&pool), 15);
        let mut buf = [9u8; 15];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"\0\0\0\0\0\0\0\0\0\0hello", "a hole reads as zeros");
        assert!(f.read_exact_at(&mut buf, 1).is_err(), "past the end");
        // Another opener sees the same content, and what the upload reads is the bytes.
        let other = pool.reopen(id).unwrap();
        assert_eq!(other.len().unwrap(), 15);
        match pool.content(id).unwrap().0 {
            Content::Memory(bytes) => assert_eq!(&bytes[10..], b"hello"),
            Content::File(path) => panic!("read from {path:?}"),
        }
        f.set_len(4).unwrap();
        assert_eq!(other.len().unwrap(), 4);
        assert_eq!(memory_bytes(&pool), 4);
        // Past MEMORY_MAX: a file of its own, the content so far at its start.
        let big = vec![7u8; MEMORY_MAX as usize];
        f.write_all_at(&big, 4).unwrap();
        assert!(!f.in_memory() && !other.in_memory());
        assert_eq!(memory_bytes(&pool), 0);
        let on_disk = std::fs::read(pool.path_of(id)).unwrap();
        assert_eq!(on_disk.len(), 4 + big.len());
        assert_eq!(&on_disk[..4], b"\0\0\0\0");
        assert!(on_disk[4..].iter().all(|&b| b == 7));
        assert!(matches!(pool.content(id).unwrap().0, Content::File(p) if p == pool.path_of(id)));
        // Found by its path now, by a new opener too.
        drop((f, other));
        assert_eq!(pool.reopen(id).unwrap().len().unwrap(), 4 + MEMORY_MAX);
    }

    #[test]
    fn a_discarded_small_file_leaves_nothing_and_frees_its_memory() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path());
        let f = pool.create_small().unwrap();
        let id = f.id();
        f.write_all_at(&[1; 1000], 0).unwrap();
        let upload = pool.hold(id).unwrap();
        drop(f);
        pool.discard(id, 0);
        assert!(
            pool.reopen(id).is_err(),
            "discarded: nobody new may have it"
        );
        assert_eq!(memory_bytes(&pool), 1000, "still held by its upload");
        drop(upload);
        pool.settle();
        assert_eq!(memory_bytes(&pool), 0);
        assert!(pool.shared.state.lock().memory.is_empty());
        assert!(!pool.path_of(id).exists());
        assert_eq!(pool.free_count(), 0, "no file to recycle");
    }

    #[test]
    fn past_the_memory_budget_new_files_go_to_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path());
        let mut kept = Vec::new();
        while memory_bytes(&pool) < MEMORY_BUDGET {
            let f = pool.create_small().unwrap();
            f.write_all_at(&vec![3u8; MEMORY_MAX as usize], 0).unwrap();
            assert!(f.in_memory());
            kept.push(f);
        }
        let f = pool.create_small().unwrap();
        assert!(!f.in_memory());
        assert!(pool.path_of(f.id()).exists());
        assert!(
            kept.iter().all(|k| k.id() < f.id()),
            "ids in creation order"
        );
        for k in kept.drain(..) {
            pool.discard(k.id(), 0);
        }
        pool.settle();
        assert_eq!(memory_bytes(&pool), 0);
        assert!(pool.create_small().unwrap().in_memory());
    }

    #[test]
    fn a_file_named_ahead_that_a_new_id_overtook_is_renamed_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path());
        // The recycler reserved id 1 and a `create` finding nothing ready (or a file kept in
        // memory) took id 2 before the file named 1 was ready.
        let late = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(pool.path_of(1))
            .unwrap();
        let inode = late.metadata().unwrap().ino();
        {
            let mut state = pool.shared.state.lock();
            state.next_id = 3;
            state.last_given = 2;
            state.ready.push_back((1, late));
        }
        let next = pool.create().unwrap();
        assert_eq!(next.id(), 3, "never an id older than one given");
        assert!(next.reused());
        assert_eq!(
            next.metadata().unwrap().ino(),
            inode,
            "the same file, renamed"
        );
        assert!(!pool.path_of(1).exists());
        assert!(pool.path_of(3).exists());
        let again = pool.create().unwrap();
        assert_eq!(again.id(), 4);
        assert!(pool.path_of(4).exists());
    }

    #[test]
    fn free_files_survive_a_remount_and_a_torn_recycle_is_emptied_when_named_ahead() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pool = Pool::open_capped(dir.path(), 1, 0, |_| Ok(())).unwrap();
            drop(pool.create().unwrap());
            pool.discard(1, 0);
            pool.settle();
            assert_eq!(
                pool.free_count(),
                1,
                "no room to name it ahead: under free/"
            );
        }
        {
            // One named ahead when the pool closes goes back under free/ (it is the same
            // file: named ahead at open as 5, taken, discarded, named ahead as 6).
            let pool = Pool::open_capped(dir.path(), 5, 4, |_| Ok(())).unwrap();
            pool.topped_up();
            let f = pool.create().unwrap();
            assert_eq!(f.id(), 5);
            drop(f);
            pool.discard(5, 0);
            pool.settle();
            assert_eq!(pool.ready_count(), 1);
            assert!(pool.path_of(6).exists());
        }
        assert!(!dir.path().join("6").exists());
        // A crash after the rename into free/, before the truncation.
        std::fs::write(dir.path().join("free").join("77"), b"left over").unwrap();
        let pool = Pool::open(dir.path(), 10, |_| Ok(())).unwrap();
        pool.topped_up();
        assert_eq!(pool.ready_count(), 2, "both named ahead at open");
        for id in [10, 11] {
            let f = pool.create().unwrap();
            assert_eq!(f.id(), id);
            assert_eq!(f.metadata().unwrap().len(), 0);
        }
        assert_eq!(pool.free_count(), 0);
        let fresh = pool.create().unwrap();
        assert_eq!(fresh.id(), 12);
        assert!(pool.path_of(12).exists());
    }
}
