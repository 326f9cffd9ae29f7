//! Small blobs packed into shared files, so that publishing many of them costs one sync.
//!
//! A blob stored as a file of its own is durable after two disk flushes: its fsync and its
//! folder's. For a burst of small uploads that was the server's largest single cost (a fifth of
//! its CPU samples in a profile of 10 000 uploads of 1 KiB, and as many flushes of the disk).
//! Blobs up to [`MAX_BLOB`] bytes published together (the uploads one request commits) are
//! instead appended to a pack, and made durable by one sync of the pack and one of its index.
//!
//! On-disk format, in `<blobs>/packs/`:
//!
//! ```text
//!   <n>.pack   the blobs' bytes, each starting at a multiple of 4096 (zeros or holes between)
//!   <n>.idx    text lines: "+ <id> <offset> <len>" (a blob added), "- <id>" (a blob deleted)
//! ```
//!
//! The index files are read into memory at open (about 60 bytes per blob); a line cut short by
//! a crash, and anything after it, is ignored: it was never acknowledged. Deleting a blob
//! punches its blocks out of the pack (`fallocate(PUNCH_HOLE)`), so its space is free at once
//! and the pack becomes a sparse file; as blobs start at block boundaries, a blob's blocks are
//! its own. A pack takes appends until it reaches [`MAX_PACK`] bytes, then the next one starts.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// Blobs up to this size are packed; larger ones gain nothing from it (their own data takes
/// longer to write than the flushes it would save) and stay files of their own.
pub const MAX_BLOB: u64 = 128 * 1024;

/// A pack stops taking blobs at this length.
const MAX_PACK: u64 = 1 << 30;

/// Blobs start at multiples of this: a file system block, so deleting one frees its blocks.
const ALIGN: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Loc {
    pack: u32,
    offset: u64,
    len: u64,
}

pub struct Packs {
    dir: PathBuf,
    index: RwLock<HashMap<String, Loc>>,
    /// Open packs, for reading.
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// The pack being appended to; held while blobs are added or deleted.
    writer: Mutex<Option<Writer>>,
    /// The number the next new pack gets.
    next: Mutex<u32>,
}

struct Writer {
    n: u32,
    pack: File,
    idx: File,
    /// Where the next blob goes (a multiple of [`ALIGN`]).
    end: u64,
}

impl Writer {
    /// Makes the blobs written so far durable, then their index `lines`.
    fn seal(&mut self, lines: &str) -> io::Result<()> {
        self.pack.sync_data()?;
        self.idx.write_all(lines.as_bytes())?;
        self.idx.sync_data()
    }
}

impl Packs {
    /// Opens the packs under `dir` (creating it), reading every index.
    pub fn open(dir: &Path) -> io::Result<Packs> {
        fs::create_dir_all(dir)?;
        let mut index = HashMap::new();
        let mut numbers = Vec::new();
        let mut next = 0;
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some((n, ext)) = name
                .to_str()
                .and_then(|s| s.split_once('.'))
                .and_then(|(n, ext)| Some((n.parse::<u32>().ok()?, ext)))
            else {
                continue;
            };
            // Past every pack, even one whose index a crash kept from being created.
            next = next.max(n + 1);
            if ext == "idx" {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        for &n in &numbers {
            read_index(&fs::read(dir.join(format!("{n}.idx")))?, n, &mut index);
        }
        Ok(Packs {
            dir: dir.to_path_buf(),
            index: RwLock::new(index),
            readers: Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
            next: Mutex::new(next),
        })
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.read().contains_key(id)
    }

    /// Appends `blobs` (id and whole content) to the current pack, durably, in one sync of the
    /// pack and one of its index. Ids already packed are skipped.
    pub fn add(&self, blobs: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut writer = self.writer.lock();
        let mut lines = String::new();
        let mut added = Vec::with_capacity(blobs.len());
        for (id, data) in blobs {
            if self.contains(id) || added.iter().any(|(a, _)| a == id) {
                continue;
            }
            let w = self.writable(&mut writer, &mut lines)?;
            w.pack.write_all_at(data, w.end)?;
            let loc = Loc {
                pack: w.n,
                offset: w.end,
                len: data.len() as u64,
            };
            lines.push_str(&format!("+ {id} {} {}\n", loc.offset, loc.len));
            w.end = (w.end + loc.len).next_multiple_of(ALIGN);
            added.push((id.clone(), loc));
        }
        if let Some(w) = writer.as_mut()
            && !lines.is_empty()
            && let Err(e) = w.seal(&lines)
        {
            // The index may end in a line cut short, which would hide every line after it:
            // this pack takes no more blobs.
            *writer = None;
            return Err(e);
        }
        let mut index = self.index.write();
        index.extend(added);
        Ok(())
    }

    /// The current pack, a new one when there is none or it is full. Blobs already written to a
    /// full pack are made durable first, with their index lines (`lines`, emptied).
    fn writable<'w>(
        &self,
        writer: &'w mut Option<Writer>,
        lines: &mut String,
    ) -> io::Result<&'w mut Writer> {
        if writer.as_ref().is_some_and(|w| w.end >= MAX_PACK) {
            let mut w = writer.take().expect("checked");
            if !lines.is_empty() {
                w.seal(lines)?;
                lines.clear();
            }
        }
        if writer.is_none() {
            *writer = Some(self.create()?);
        }
        Ok(writer.as_mut().expect("just set"))
    }

    /// Starts pack number `next`: both files created, and their names durable.
    fn create(&self) -> io::Result<Writer> {
        let mut next = self.next.lock();
        let n = *next;
        // Appending, the index: a deletion appends to it through a descriptor of its own.
        let open = |ext: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .append(ext == "idx")
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(format!("{n}.{ext}")))
        };
        let pack = open("pack")?;
        let idx = open("idx")?;
        File::open(&self.dir)?.sync_all()?;
        *next += 1;
        Ok(Writer {
            n,
            pack,
            idx,
            end: 0,
        })
    }

    /// Up to `len` bytes of packed blob `id` from `offset`; `None` if it is not packed.
    pub fn read(&self, id: &str, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let Some(loc) = self.index.read().get(id).copied() else {
            return Ok(None);
        };
        let start = offset.min(loc.len);
        let len = (len as u64).min(loc.len - start) as usize;
        let pack = self.reader(loc.pack)?;
        let mut buf = vec![0; len];
        pack.read_exact_at(&mut buf, loc.offset + start)?;
        Ok(Some(buf))
    }

    fn reader(&self, n: u32) -> io::Result<Arc<File>> {
        let mut readers = self.readers.lock();
        if let Some(file) = readers.get(&n) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.dir.join(format!("{n}.pack")))?);
        readers.insert(n, file.clone());
        Ok(file)
    }

    /// Deletes packed blob `id` and frees its blocks; `false` if it is not packed. The deletion
    /// is not synced: should a crash lose it, the blob stays listed, unreferenced.
    pub fn delete(&self, id: &str) -> io::Result<bool> {
        let mut writer = self.writer.lock();
        let Some(loc) = self.index.write().remove(id) else {
            return Ok(false);
        };
        let appended = OpenOptions::new()
            .append(true)
            .open(self.dir.join(format!("{}.idx", loc.pack)))
            .and_then(|mut idx| idx.write_all(format!("- {id}\n").as_bytes()));
        if let Err(e) = appended {
            if writer.as_ref().is_some_and(|w| w.n == loc.pack) {
                // As in `add`: an index that may end in a cut line takes no more.
                *writer = None;
            }
            return Err(e);
        }
        let pack = OpenOptions::new()
            .write(true)
            .open(self.dir.join(format!("{}.pack", loc.pack)))?;
        if loc.len > 0 {
            punch_hole(&pack, loc.offset, loc.len.next_multiple_of(ALIGN));
        }
        Ok(true)
    }
}

/// Adds the blobs listed in index `bytes` of pack `n` to `index`, up to the first line cut
/// short or malformed.
fn read_index(bytes: &[u8], n: u32, index: &mut HashMap<String, Loc>) {
    let mut rest = bytes;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(&rest[..end]) else {
            break;
        };
        rest = &rest[end + 1..];
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["+", id, offset, len] => {
                let (Ok(offset), Ok(len)) = (offset.parse(), len.parse()) else {
                    break;
                };
                index.insert(
                    id.to_string(),
                    Loc {
                        pack: n,
                        offset,
                        len,
                    },
                );
            }
            ["-", id] => {
                index.remove(id);
            }
            _ => break,
        }
    }
}

/// Frees `len` bytes of `file` from `offset`, keeping its length. Where the file system cannot
/// (`EOPNOTSUPP`), the space stays taken; nothing reads it again.
fn punch_hole(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor stays open for the call, which touches no memory of ours.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            tracing::debug!(%error, "could not free a deleted blob's blocks");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn blob(i: usize, len: usize) -> (String, Vec<u8>) {
        let data = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        (format!("blob{i:04}"), data)
    }

    #[test]
    fn packed_blobs_read_back_after_reopening_and_deleted_ones_stay_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let first: Vec<_> = (0..10).map(|i| blob(i, 1000 + i * 500)).collect();
        packs.add(&first).unwrap();
        let second = vec![blob(10, 0), blob(11, MAX_BLOB as usize), blob(3, 5)];
        packs.add(&second).unwrap();
        let check = |packs: &Packs, deleted: &str| {
            for (id, data) in first.iter().chain(&second[..2]) {
                if id == deleted {
                    assert_eq!(packs.read(id, 0, 10).unwrap(), None);
                    continue;
                }
                let back = packs.read(id, 0, 1 << 20).unwrap().unwrap();
                assert!(back == *data, "{id} differs");
            }
            let (id, data) = &first[7];
            assert_eq!(packs.read(id, 100, 50).unwrap().unwrap(), data[100..150]);
            assert_eq!(packs.read(id, 1 << 20, 10).unwrap().unwrap(), b"");
            assert_eq!(packs.read("absent", 0, 1).unwrap(), None);
        };
        check(&packs, "");
        assert!(packs.delete("blob0004").unwrap());
        assert!(!packs.delete("blob0004").unwrap());
        drop(packs);

        let packs = Packs::open(dir.path()).unwrap();
        check(&packs, "blob0004");
        // The next blobs go to a new pack: the old one is never appended to again.
        packs.add(&[blob(20, 300)]).unwrap();
        assert_eq!(
            packs.read("blob0020", 0, 300).unwrap().unwrap(),
            blob(20, 300).1
        );
        assert!(dir.path().join("1.pack").exists());
    }

    #[test]
    fn a_deletion_in_the_pack_being_written_survives_the_blobs_added_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        packs.add(&[blob(1, 10), blob(2, 20)]).unwrap();
        assert!(packs.delete("blob0001").unwrap());
        packs.add(&[blob(3, 30), blob(4, 40)]).unwrap();
        drop(packs);
        let packs = Packs::open(dir.path()).unwrap();
        assert!(!packs.contains("blob0001"));
        for i in 2..=4 {
            let (id, data) = blob(i, i * 10);
            assert_eq!(packs.read(&id, 0, 100).unwrap().unwrap(), data, "{id}");
        }
    }

    #[test]
    fn deleting_frees_the_blobs_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let blobs: Vec<_> = (0..64).map(|i| blob(i, 10_000)).collect();
        packs.add(&blobs).unwrap();
        let pack = dir.path().join("0.pack");
        let before = fs::metadata(&pack).unwrap().blocks();
        for (id, _) in &blobs[..32] {
            packs.delete(id).unwrap();
        }
        let after = fs::metadata(&pack).unwrap().blocks();
        // 32 blobs of three 4 KiB blocks each: 96 blocks of 4 KiB, 768 of 512 bytes.
        assert!(
            before - after >= 700,
            "{before} → {after} blocks of 512 bytes"
        );
        let (id, data) = &blobs[40];
        assert_eq!(packs.read(id, 0, 10_000).unwrap().unwrap(), *data);
    }

    #[test]
    fn an_index_line_cut_short_is_ignored_with_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        packs.add(&[blob(1, 100), blob(2, 100)]).unwrap();
        drop(packs);
        let idx = dir.path().join("0.idx");
        let mut text = fs::read_to_string(&idx).unwrap();
        text.push_str("+ blob0003 8192 1");
        fs::write(&idx, text).unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        assert!(packs.contains("blob0001") && packs.contains("blob0002"));
        assert!(!packs.contains("blob0003"));
        let mode = fs::metadata(dir.path().join("0.pack")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
