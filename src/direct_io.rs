//! Large writes that bypass the page cache (`O_DIRECT`).
//!
//! Why: two kinds of data are written once, synced at once and not read back soon — a staging
//! file before `close()` returns (it is synced then, and read once by its upload), and an
//! uploaded blob on `veilfs serve` (synced when the upload completes). The page cache gains
//! them nothing, and copying bytes into it is the dearest part of writing them: on the 2-core
//! benchmark VM a buffered 1 GiB write costs 2.8–4.5 s of kernel CPU (`perf`: nearly all of it
//! `copy_folio_from_iter_atomic`), the same write with `O_DIRECT` 0.5 s, at the disk's speed.
//! A 1 GiB `cp` into the mount crossed the page cache twice (staging, then the server's blob),
//! which was most of its time.
//!
//! Only large writes at a block-aligned offset go direct, and only their whole blocks; the
//! rest (a tail, small or unaligned writes, whose callers often write again close by) stays
//! buffered. The kernel keeps the two coherent: a direct write first writes back and drops the
//! cached pages of its range, so buffered reads and writes through another descriptor of the
//! same file see it. A file system that refuses `O_DIRECT` (tmpfs before Linux 6.6) is written
//! buffered, as before.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The alignment of offsets, lengths and memory for direct writes: the page size, which every
/// Linux file system accepts (most need only the device's 512-byte sector).
pub const ALIGN: usize = 4096;

/// Writes smaller than this stay buffered: a direct write waits for the device, which for a
/// program writing a few kilobytes at a time would cost more than the copy it saves.
pub const MIN_DIRECT: usize = 256 * 1024;

/// How much is copied into the aligned buffer per direct write: the buffer is per thread and
/// reused, so it stays warm (a new one for each write would fault in fresh pages every time).
const BOUNCE: usize = 1024 * 1024;

thread_local! {
    static BOUNCE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A second descriptor of `file` opened for direct writes, or `None` where the file system
/// refuses `O_DIRECT`. Opened through `/proc/self/fd`, so it follows the file, not a path
/// that may since have been renamed.
pub fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// Whether a write of `len` bytes at `offset` is worth sending direct.
pub fn qualifies(offset: u64, len: usize) -> bool {
    len >= MIN_DIRECT && offset.is_multiple_of(ALIGN as u64)
}

/// Writes the whole blocks at the start of `pieces` (concatenated) at `offset` through
/// `direct`, a descriptor from [`reopen_direct`]. Returns how many bytes it wrote, a multiple
/// of [`ALIGN`]: the caller writes the rest buffered. Stops early when the file system rejects
/// a direct write (`EINVAL`), and writes nothing when the write does not qualify; other errors
/// (a full disk) are returned.
pub fn write_blocks(direct: &File, offset: u64, pieces: &[&[u8]]) -> io::Result<usize> {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    if !qualifies(offset, total) {
        return Ok(0);
    }
    let blocks = total / ALIGN * ALIGN;
    BOUNCE_BUF.with(|cell| {
        let mut storage = cell.borrow_mut();
        if storage.len() < BOUNCE + ALIGN {
            storage.resize(BOUNCE + ALIGN, 0);
        }
        let pad = storage.as_ptr().align_offset(ALIGN);
        let bounce = &mut storage[pad..pad + BOUNCE];
        let mut source = Pieces::new(pieces);
        let mut written = 0;
        while written < blocks {
            let n = (blocks - written).min(BOUNCE);
            source.copy_to(&mut bounce[..n]);
            match direct.write_all_at(&bounce[..n], offset + written as u64) {
                Ok(()) => written += n,
                // Refused (an alignment this file system does not take): the rest buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(written),
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    })
}

/// A cursor over a list of byte slices read as one.
struct Pieces<'a> {
    pieces: &'a [&'a [u8]],
    index: usize,
    at: usize,
}

impl<'a> Pieces<'a> {
    fn new(pieces: &'a [&'a [u8]]) -> Self {
        Pieces {
            pieces,
            index: 0,
            at: 0,
        }
    }

    /// Fills `out` from the cursor on; the caller asks for no more than there is.
    fn copy_to(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let piece = &self.pieces[self.index][self.at..];
            let n = piece.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&piece[..n]);
            filled += n;
            self.at += n;
            if self.at == self.pieces[self.index].len() {
                self.index += 1;
                self.at = 0;
            }
        }
    }
}

/// [`write_pieces`] for a descriptor used for this one write (a new file, or one opened per
/// write): a direct descriptor is opened only when the write qualifies.
pub fn write_once(file: &File, offset: u64, pieces: &[&[u8]]) -> io::Result<u64> {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let direct = qualifies(offset, total)
        .then(|| reopen_direct(file))
        .flatten();
    write_pieces(file, direct.as_ref(), offset, pieces)
}

/// Writes `pieces` at `offset` in `file`: the whole blocks of a large aligned write through
/// `direct` when there is one, the rest buffered. Returns the bytes written buffered (the
/// caller may start their write-back). Positional for one piece; several move `file`'s
/// position (one vectored write), which is for a descriptor of the caller's own.
pub fn write_pieces(
    file: &File,
    direct: Option<&File>,
    offset: u64,
    pieces: &[&[u8]],
) -> io::Result<u64> {
    let direct_done = match direct {
        Some(direct) => write_blocks(direct, offset, pieces)?,
        None => 0,
    };
    // What is left, from the first byte not written direct: one system call for many pieces
    // rather than one per piece.
    let mut rest: Vec<IoSlice<'_>> = Vec::with_capacity(pieces.len());
    let mut pos = 0;
    for piece in pieces {
        let start = pos;
        pos += piece.len();
        if pos > direct_done {
            rest.push(IoSlice::new(&piece[direct_done.saturating_sub(start)..]));
        }
    }
    let buffered = (pos - direct_done) as u64;
    let at = offset + direct_done as u64;
    // All of it went direct (a large write of whole blocks, the usual case for `cp`): no
    // seek, no empty write.
    if rest.is_empty() {
        return Ok(0);
    }
    if let [only] = rest[..] {
        file.write_all_at(&only, at)?;
        return Ok(buffered);
    }
    let mut file = file;
    file.seek(SeekFrom::Start(at))?;
    let mut left = &mut rest[..];
    while !left.is_empty() {
        let n = file.write_vectored(left)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(buffered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("veilfs-direct-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (dir, file)
    }

    #[test]
    fn pieces_of_any_shape_land_where_they_belong_direct_or_not() {
        let (dir, file) = temp_file("shapes");
        // Where the temp directory's file system refuses O_DIRECT, everything goes buffered
        // and the content is still checked.
        let direct = reopen_direct(&file);
        let mut expected = vec![0u8; 0];
        let cases: &[(u64, &[usize])] = &[
            // Large, aligned, cut at odd places, with a tail: direct blocks + buffered tail.
            (0, &[100_000, 1_000_000, 3, 1_500_000 + 17]),
            // Unaligned offset: all buffered.
            (2_600_123, &[300_000]),
            // Small: buffered.
            (4096 * 1000, &[4096]),
            // Overwrites what was written direct, partly, with a direct write again.
            (ALIGN as u64 * 10, &[MIN_DIRECT * 2]),
        ];
        for (k, (offset, shape)) in cases.iter().enumerate() {
            let data: Vec<Vec<u8>> = shape
                .iter()
                .enumerate()
                .map(|(i, &n)| pattern(n, (k * 10 + i) as u8))
                .collect();
            let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let total: usize = shape.iter().sum();
            let buffered = write_pieces(&file, direct.as_ref(), *offset, &slices).unwrap();
            let direct_part = total as u64 - buffered;
            if direct.is_some() && qualifies(*offset, total) {
                assert_eq!(direct_part, (total / ALIGN * ALIGN) as u64, "case {k}");
            } else {
                assert_eq!(direct_part, 0, "case {k}");
            }
            let end = *offset as usize + total;
            if expected.len() < end {
                expected.resize(end, 0);
            }
            expected[*offset as usize..end].copy_from_slice(&data.concat());
            // Read back buffered, through the first descriptor: coherent with direct writes.
            let mut back = vec![0u8; expected.len()];
            file.read_exact_at(&mut back, 0).unwrap();
            assert!(back == expected, "case {k}: content differs");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_direct_descriptor_everything_is_buffered() {
        let (dir, file) = temp_file("none");
        let data = pattern(MIN_DIRECT * 3, 9);
        let buffered = write_pieces(&file, None, 0, &[&data]).unwrap();
        assert_eq!(buffered, data.len() as u64);
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), data);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
