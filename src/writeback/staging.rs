//! Staging files: who holds each one, and the reuse of the ones nobody needs any more.
//!
//! Why reuse: a small file costs one staging file, and creating an inode is the most expensive
//! thing a small write does here. On ext4 without a journal (the benchmark VM) the allocator
//! skips every inode freed in the last half minute or so (`recently_deleted`), and staging
//! files are freed as fast as uploads commit: a `create` spent 0.9 ms of CPU in the kernel
//! finding an inode, a quarter of the daemon's time writing 10 000 small files (`perf`). A
//! staging file that is no longer needed is therefore truncated and kept under `free/`; the
//! next staging file is one of those, renamed (tens of microseconds).
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
//! Why some free files stay open: taking one then costs a rename only, where opening it again
//! cost an `openat` and a `statx` (a third of a small file's `create`). At most
//! [`MAX_OPEN_FREE`] (fewer when the limit on open files is low: a queued file holds no
//! descriptor, and the free ones must not take the room that open handles need).
//!
//! On disk: `staging/<id>` for files in use, `staging/free/<n>` for empty ones waiting. A crash
//! between the rename into `free/` and the truncation leaves a non-empty free file; it is
//! truncated when taken.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::direct_io;

/// Empty staging files kept for reuse; beyond this, discarded files are deleted.
const MAX_FREE: usize = 1024;

/// Free files kept open, at most (see the module's doc).
const MAX_OPEN_FREE: usize = 256;

/// How long the recycler gathers discarded files before it empties them (see the module's doc).
const GATHER: Duration = Duration::from_millis(20);

/// A staging file open for reading and writing, held (not recycled) while this lives.
pub struct Staged {
    file: File,
    hold: Hold,
    /// Taken from the free files (renamed), rather than created.
    reused: bool,
    /// A descriptor for direct writes, opened at the first large one (`None` inside: the
    /// file system refuses them).
    direct: OnceLock<Option<File>>,
}

impl Staged {
    pub fn id(&self) -> u64 {
        self.hold.id
    }

    /// Whether the file got its name by a rename (which syncing the file does not make
    /// durable on every file system: the directory must be synced too).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Writes `data` at `offset`. A large aligned write (a program copying a big file) goes
    /// to the disk directly, bypassing the page cache: it is synced at `close()` anyway and
    /// read back once, by its upload (see `direct_io`). Returns the bytes written buffered.
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<u64> {
        let direct = if direct_io::qualifies(offset, data.len()) {
            self.direct
                .get_or_init(|| direct_io::reopen_direct(&self.file))
                .as_ref()
        } else {
            None
        };
        direct_io::write_pieces(&self.file, direct, offset, &[data])
    }
}

impl Deref for Staged {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
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
    /// Files under `free/` without a descriptor, ready to be taken: empty, unless a crash
    /// interrupted their recycling (adopted at open).
    free: Vec<u64>,
    /// Free files kept with their descriptor (see the module's doc), taken first.
    open_free: Vec<(u64, File)>,
    next_free: u64,
}

struct Shared {
    dir: PathBuf,
    /// How many free files may stay open (see the module's doc).
    max_open_free: usize,
    state: Mutex<State>,
    /// Signalled whenever `discarded` shrinks (for `settle`).
    settled: Condvar,
    recycler: Mutex<mpsc::Sender<(u64, u64)>>,
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
        if self.recycler.lock().send((id, mark)).is_err() {
            // The recycler is gone (shutting down): the next mount removes the file.
            self.state.lock().discarded.remove(&id);
        }
    }

    /// On the recycler thread: moves `id` out of reach, empties it, keeps it for reuse (or
    /// deletes it when enough are kept).
    fn recycle_now(&self, id: u64) {
        let n = {
            let mut state = self.state.lock();
            if state.free.len() + state.open_free.len() >= MAX_FREE {
                None
            } else {
                state.next_free += 1;
                Some(state.next_free)
            }
        };
        let path = self.path_of(id);
        // Only this thread adds free files: the room counted here is still there below.
        let keep_open = self.state.lock().open_free.len() < self.max_open_free;
        let kept = n.and_then(|n| {
            let free = self.free_path(n);
            std::fs::rename(&path, &free).ok()?;
            let emptied = OpenOptions::new().write(true).open(&free).ok()?;
            emptied.set_len(0).ok()?;
            // The descriptor kept is not the one that truncated: ext4 writes out a file
            // truncated to zero when a descriptor open across the truncation closes
            // (`auto_da_alloc`). Kept open, that would be at the small file's `release`, its
            // content sent to the disk there; closed here, there is nothing to write.
            let open = if keep_open {
                Some(OpenOptions::new().read(true).write(true).open(&free).ok()?)
            } else {
                None
            };
            drop(emptied);
            Some((n, open))
        });
        match kept {
            Some((n, Some(file))) => self.state.lock().open_free.push((n, file)),
            Some((n, None)) => self.state.lock().free.push(n),
            None => {
                let _ = std::fs::remove_file(&path);
                if let Some(n) = n {
                    let _ = std::fs::remove_file(self.free_path(n));
                }
            }
        }
        self.state.lock().discarded.remove(&id);
        self.settled.notify_all();
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
    /// Opens the staging directory `dir` (0700), adopting the free files a previous mount left.
    /// `before_recycle` runs before each batch of discarded files is emptied, with the highest
    /// mark they were discarded with; if it fails they are left alone (the next mount removes
    /// them).
    pub fn open(
        dir: &Path,
        before_recycle: impl Fn(u64) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::open_capped(dir, max_open_free(), before_recycle)
    }

    /// [`Pool::open`] keeping at most `max_open_free` free files open.
    fn open_capped(
        dir: &Path,
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
        let (tx, rx) = mpsc::channel::<(u64, u64)>();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_open_free,
            state: Mutex::new(State {
                holds: HashMap::new(),
                discarded: HashMap::new(),
                next_free: free.iter().copied().max().unwrap_or(0),
                free,
                open_free: Vec::new(),
            }),
            settled: Condvar::new(),
            recycler: Mutex::new(tx),
        });
        // The thread holds only a weak reference: dropping the pool ends it.
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("veilfs-staging".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    std::thread::sleep(GATHER);
                    let Some(shared) = weak.upgrade() else { break };
                    let batch: Vec<(u64, u64)> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let mark = batch.iter().map(|&(_, mark)| mark).max().unwrap_or(0);
                    let ready = before_recycle(mark);
                    for (id, _) in batch {
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
            })?;
        Ok(Pool { shared })
    }

    pub fn path_of(&self, id: u64) -> PathBuf {
        self.shared.path_of(id)
    }

    /// A new, empty staging file `id` (0600): a free one renamed, or a new one.
    pub fn create(&self, id: u64) -> std::io::Result<Staged> {
        let hold = self.hold_new(id);
        let path = self.path_of(id);
        let taken = {
            let mut state = self.shared.state.lock();
            match state.open_free.pop() {
                Some((n, file)) => Some((n, Some(file))),
                None => state.free.pop().map(|n| (n, None)),
            }
        };
        if let Some((n, open)) = taken {
            let free = self.shared.free_path(n);
            if std::fs::rename(&free, &path).is_ok() {
                // An open one was emptied by the recycler and nobody has written it since.
                let file = match open {
                    Some(file) => file,
                    None => {
                        let file = OpenOptions::new().read(true).write(true).open(&path)?;
                        if file.metadata()?.len() > 0 {
                            file.set_len(0)?;
                        }
                        file
                    }
                };
                return Ok(Staged {
                    file,
                    hold,
                    reused: true,
                    direct: OnceLock::new(),
                });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Staged {
            file,
            hold,
            reused: false,
            direct: OnceLock::new(),
        })
    }

    /// Opens staging file `id` again (after a remount, or to read it besides its writer).
    pub fn reopen(&self, id: u64) -> std::io::Result<Staged> {
        let hold = self.hold(id)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path_of(id))?;
        // Reopened files are sealed: nothing enqueues them again.
        Ok(Staged {
            file,
            hold,
            reused: false,
            direct: OnceLock::new(),
        })
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

    /// A hold on a new id (never discarded).
    fn hold_new(&self, id: u64) -> Hold {
        self.claim(&mut self.shared.state.lock(), id)
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
        state.free.len() + state.open_free.len()
    }

    /// Empty files waiting for reuse with their descriptor.
    #[cfg(test)]
    fn open_free_count(&self) -> usize {
        self.shared.state.lock().open_free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn a_discarded_file_is_emptied_and_reused_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), |_| Ok(())).unwrap();
        let a = pool.create(1).unwrap();
        a.write_all_at(b"secret", 0).unwrap();
        let inode = a.metadata().unwrap().ino();
        drop(a);
        pool.discard(1, 0);
        pool.settle();
        assert!(!pool.path_of(1).exists());
        assert_eq!(pool.free_count(), 1);
        let b = pool.create(2).unwrap();
        assert_eq!(b.metadata().unwrap().ino(), inode, "the same inode, reused");
        assert_eq!(b.metadata().unwrap().len(), 0, "emptied before reuse");
        assert_eq!(pool.free_count(), 0);
    }

    #[test]
    fn a_held_file_is_not_reused_until_its_last_hold_goes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), |_| Ok(())).unwrap();
        let writer = pool.create(1).unwrap();
        writer.write_all_at(b"version one", 0).unwrap();
        let upload = pool.hold(1).unwrap();
        let reader = pool.reopen(1).unwrap();
        drop(writer);
        pool.discard(1, 0);
        // Discarded: nobody new may hold it, but the holders keep reading it intact.
        assert!(pool.hold(1).is_err());
        assert!(pool.reopen(1).is_err());
        pool.settle();
        let other = pool.create(2).unwrap();
        other.write_all_at(b"another file", 0).unwrap();
        let mut buf = [0u8; 11];
        reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"version one");
        assert!(pool.path_of(1).exists());
        drop(reader);
        assert!(pool.path_of(1).exists(), "the upload still holds it");
        drop(upload);
        pool.settle();
        assert!(!pool.path_of(1).exists());
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn a_file_is_emptied_only_after_the_hook_ran_for_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let pool = Pool::open(dir.path(), move |mark| {
            seen.lock().push(mark);
            Ok(())
        })
        .unwrap();
        for id in [1, 2] {
            drop(pool.create(id).unwrap());
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
        let pool = Pool::open(dir.path(), |_| Err(std::io::Error::other("disk gone"))).unwrap();
        drop(pool.create(1).unwrap());
        pool.discard(1, 1);
        pool.settle();
        assert!(pool.path_of(1).exists(), "kept for the next mount");
        assert_eq!(pool.free_count(), 0);
    }

    #[test]
    fn free_files_stay_open_up_to_the_cap_and_each_is_taken_empty() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open_capped(dir.path(), 2, |_| Ok(())).unwrap();
        let mut inodes = Vec::new();
        for id in 1..=3 {
            let f = pool.create(id).unwrap();
            f.write_all_at(b"old content", 0).unwrap();
            inodes.push(f.metadata().unwrap().ino());
        }
        for id in 1..=3 {
            pool.discard(id, 0);
        }
        pool.settle();
        assert_eq!((pool.free_count(), pool.open_free_count()), (3, 2));
        let mut reused = Vec::new();
        for (id, open_left) in [(4, 1), (5, 0), (6, 0)] {
            let f = pool.create(id).unwrap();
            // The open ones first: the recycler refills them, the others wait.
            assert_eq!(pool.open_free_count(), open_left);
            assert_eq!(f.metadata().unwrap().len(), 0, "file {id} taken empty");
            // Written through the descriptor taken, read through its new name.
            f.write_all_at(format!("new {id}").as_bytes(), 0).unwrap();
            assert_eq!(
                std::fs::read(pool.path_of(id)).unwrap(),
                format!("new {id}").as_bytes()
            );
            reused.push(f.metadata().unwrap().ino());
        }
        assert_eq!((pool.free_count(), pool.open_free_count()), (0, 0));
        reused.sort_unstable();
        inodes.sort_unstable();
        assert_eq!(reused, inodes, "the three inodes, reused");
    }

    #[test]
    fn free_files_survive_a_remount_and_a_torn_recycle_is_emptied_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pool = Pool::open(dir.path(), |_| Ok(())).unwrap();
            drop(pool.create(1).unwrap());
            pool.discard(1, 0);
            pool.settle();
        }
        // A crash after the rename into free/, before the truncation.
        std::fs::write(dir.path().join("free").join("77"), b"left over").unwrap();
        let pool = Pool::open(dir.path(), |_| Ok(())).unwrap();
        assert_eq!(pool.free_count(), 2);
        for id in [5, 6] {
            let f = pool.create(id).unwrap();
            assert_eq!(f.metadata().unwrap().len(), 0);
        }
        assert_eq!(pool.free_count(), 0);
        let fresh = pool.create(7).unwrap();
        assert_eq!(fresh.id(), 7);
        assert!(pool.path_of(7).exists());
    }
}
