//! What an upload reads: a local file by its path, or bytes held in memory.
//!
//! Why memory: a small file written through the mount needs no staging file of its own (see
//! `writeback/staging.rs`); its content is in the daemon's memory and, once closed, in the
//! journal's record. The backends read both kinds through [`Reader`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// The plaintext an upload sends.
#[derive(Clone, Debug)]
pub enum Content {
    File(PathBuf),
    Memory(Bytes),
}

impl Content {
    /// Opens the content for reading (the file's descriptor; the bytes themselves).
    pub fn open(&self) -> io::Result<Reader> {
        match self {
            Content::File(path) => {
                let file = File::open(path).map_err(|e| with_path(e, self))?;
                let len = file.metadata()?.len();
                Ok(Reader::File(file, path.clone(), len))
            }
            Content::Memory(bytes) => Ok(Reader::Memory(bytes.clone())),
        }
    }

    /// Its length now (a file's, from one `stat`).
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Content::File(path) => Ok(std::fs::metadata(path)
                .map_err(|e| with_path(e, self))?
                .len()),
            Content::Memory(bytes) => Ok(bytes.len() as u64),
        }
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Where the content is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Content::File(path) => path.display().to_string(),
            Content::Memory(bytes) => format!("{} bytes in memory", bytes.len()),
        }
    }
}

impl From<PathBuf> for Content {
    fn from(path: PathBuf) -> Self {
        Content::File(path)
    }
}

impl From<&Path> for Content {
    fn from(path: &Path) -> Self {
        Content::File(path.to_path_buf())
    }
}

impl From<&PathBuf> for Content {
    fn from(path: &PathBuf) -> Self {
        Content::File(path.clone())
    }
}

impl From<&Content> for Content {
    fn from(content: &Content) -> Self {
        content.clone()
    }
}

fn with_path(error: io::Error, content: &Content) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", content.describe()))
}

/// Content opened for reading at offsets, with its length as it was when opened. Shared by
/// the tasks of an upload, which read its ranges in parallel.
pub enum Reader {
    File(File, PathBuf, u64),
    Memory(Bytes),
}

impl Reader {
    pub fn len(&self) -> u64 {
        match self {
            Reader::File(_, _, len) => *len,
            Reader::Memory(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `offset..offset + len` in a buffer of their own (to encrypt in place), or
    /// `UnexpectedEof` when the content is shorter. A file is read into spare capacity:
    /// zero-filling a buffer the read overwrites anyway costs a pass over every byte.
    pub fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        match self {
            // A descriptor of its own: reading into spare capacity needs `read`, which moves
            // the descriptor's offset, and the ranges are read in parallel.
            Reader::File(_, path, _) => read_into_spare(&File::open(path)?, &mut buf, offset, len)?,
            Reader::Memory(bytes) => buf.extend_from_slice(slice_at(bytes, offset, len)?),
        }
        Ok(buf)
    }
}

/// Bytes `offset..offset + len` of content held in memory, or `UnexpectedEof` when it is
/// shorter (as `read_exact_at` of a file answers).
pub(crate) fn slice_at(bytes: &[u8], offset: u64, len: usize) -> io::Result<&[u8]> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

/// Reads exactly `len` bytes at `offset` into `buf`'s spare capacity.
fn read_into_spare(file: &File, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.take(len as u64).read_to_end(buf)?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reading at an offset, from a file or from [`Reader`] (the MEGA fingerprint reads both).
pub trait ReadExactAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadExactAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadExactAt for Reader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Reader::File(file, _, _) => FileExt::read_exact_at(file, buf, offset),
            Reader::Memory(bytes) => {
                buf.copy_from_slice(slice_at(bytes, offset, buf.len())?);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_file_read_the_same_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let readers = [
            Content::File(path).open().unwrap(),
            Content::Memory(Bytes::from(data.clone())).open().unwrap(),
        ];
        for r in &readers {
            assert_eq!(r.len(), 5000);
            assert_eq!(&r.read_vec(100, 300).unwrap()[..], &data[100..400]);
            assert_eq!(&r.read_vec(4990, 10).unwrap()[..], &data[4990..]);
            let err = r.read_vec(4990, 11).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            let mut buf = [0u8; 7];
            r.read_exact_at(&mut buf, 13).unwrap();
            assert_eq!(&buf, &data[13..20]);
            assert!(r.read_exact_at(&mut buf, 4995).is_err());
            assert!(r.read_exact_at(&mut buf, u64::MAX).is_err());
        }
    }

    #[test]
    fn ranges_of_a_file_read_in_parallel_are_each_right() {
        // An upload's tasks share one reader: a shared descriptor's offset would mix them up.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let reader = std::sync::Arc::new(Content::File(path).open().unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let reader = reader.clone();
                std::thread::spawn(move || {
                    (0..50u64)
                        .map(|i| {
                            let at = (t * 50 + i) * 9973;
                            (at, reader.read_vec(at, 4099).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            for (at, got) in t.join().unwrap() {
                assert_eq!(got, data[at as usize..at as usize + 4099], "at {at}");
            }
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = Content::File("/nonexistent/veilfs-x".into())
            .open()
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/veilfs-x"));
    }
}
