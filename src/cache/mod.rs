//! Block cache: decrypted file chunks, in memory and on disk.
//!
//! Reads are served from chunks of plaintext. [`BlockCache`] keeps them in two layers:
//! - memory: an LRU (`lru` crate) of `Bytes` within a byte budget;
//! - disk ([`disk`]): every inserted chunk is also written through to the cache directory,
//!   sealed with AES-256-GCM under a local key, within its own byte budget.
//!
//! Eviction is least-recently-used across both layers: a hit in memory also refreshes the
//! chunk's place in the disk layer's order, so a chunk read often from memory is not the first
//! to leave the disk. Chunks are keyed by [`ChunkId`]: a [`ContentId`] that changes whenever a
//! file's content does (for MEGA, derived from the node handle and the meta-MAC in its key) and
//! the chunk's offset. A replaced file therefore never serves old chunks; [`BlockCache::
//! invalidate`] reclaims their space.
//!
//! Thread safety: every method takes `&self`. Locks are held only to update the indexes, never
//! during disk I/O or decryption, so a slow miss does not hold up hits on other threads. The
//! fetch on a miss is the caller's, outside the cache.

mod disk;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use disk::{DiskStore, Read};

/// What can go wrong in the cache. Reading never fails (a bad chunk is a miss); opening and
/// writing can.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cache I/O on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cache key file {0} does not hold a 32-byte key")]
    BadKeyFile(std::path::PathBuf),
}

/// Identifies one version of one file's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 16]);

impl ContentId {
    /// A content id from any identifying parts (e.g. the node handle and its meta-MAC): the
    /// first 16 bytes of SHA-256 over the length-prefixed parts. Hashing keeps the parts (a MAC
    /// of the plaintext) out of the cache's file names.
    pub fn derive(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update(b"veilfs content id");
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        ContentId(out)
    }
}

impl std::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentId({})", hex::encode(self.0))
    }
}

/// One chunk: which content, starting at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    pub content: ContentId,
    pub offset: u64,
}

/// Usage and effectiveness, for `veilfs status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub mem_bytes: u64,
    pub mem_chunks: u64,
    pub mem_budget: u64,
    /// Bytes of the sealed files (plaintext plus a fixed overhead per chunk).
    pub disk_bytes: u64,
    pub disk_chunks: u64,
    pub disk_budget: u64,
    pub hits_mem: u64,
    pub hits_disk: u64,
    pub misses: u64,
    /// Files on disk that did not open (tampered, swapped, truncated) and were deleted.
    pub corrupt: u64,
    pub write_errors: u64,
}

struct Memory {
    lru: LruCache<ChunkId, Bytes>,
    bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits_mem: AtomicU64,
    hits_disk: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    write_errors: AtomicU64,
}

/// The two-layer chunk cache; see the module documentation.
pub struct BlockCache {
    mem: Mutex<Memory>,
    mem_budget: u64,
    disk: Option<DiskStore>,
    counters: Counters,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache with `mem_budget` bytes in memory and `disk_budget` bytes in `dir` (created,
    /// mode 0700). Chunks already in `dir` from an earlier run are kept if they open.
    pub fn open(dir: &Path, mem_budget: u64, disk_budget: u64) -> Result<Self, CacheError> {
        let disk = DiskStore::open(dir, disk_budget)?;
        Ok(Self::with_disk(mem_budget, Some(disk)))
    }

    /// A cache without a disk layer.
    pub fn in_memory(mem_budget: u64) -> Self {
        Self::with_disk(mem_budget, None)
    }

    fn with_disk(mem_budget: u64, disk: Option<DiskStore>) -> Self {
        BlockCache {
            mem: Mutex::new(Memory {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            mem_budget,
            disk,
            counters: Counters::default(),
        }
    }

    /// The chunk, from memory or disk; `None` on a miss.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let hit = self.mem.lock().lru.get(id).cloned();
        if let Some(data) = hit {
            self.counters.hits_mem.fetch_add(1, Ordering::Relaxed);
            if let Some(disk) = &self.disk {
                disk.touch(id);
            }
            return Some(data);
        }
        let read = match &self.disk {
            Some(disk) => disk.read(id),
            None => Read::Miss,
        };
        match read {
            Read::Hit(plain) => {
                self.counters.hits_disk.fetch_add(1, Ordering::Relaxed);
                let data: Bytes = plain.into();
                self.insert_memory(*id, data.clone());
                Some(data)
            }
            Read::Corrupt => {
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Read::Miss => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether the chunk is cached in either layer (does not count as a use).
    pub fn contains(&self, id: &ChunkId) -> bool {
        if self.mem.lock().lru.contains(id) {
            return true;
        }
        self.disk.as_ref().is_some_and(|d| d.contains(id))
    }

    /// Caches a chunk in memory and writes it through to disk. The chunk is in memory (and
    /// served) even when the disk write fails; the error is returned for logging.
    pub fn insert(&self, id: ChunkId, data: Bytes) -> Result<(), CacheError> {
        self.insert_memory(id, data.clone());
        self.write_through(&id, &data)
    }

    /// The disk half of [`BlockCache::insert`], for a caller that has put the chunk in memory
    /// with [`BlockCache::insert_memory`] and seals it to disk later, off the path of the read
    /// that waits for it.
    pub fn write_through(&self, id: &ChunkId, data: &[u8]) -> Result<(), CacheError> {
        if let Some(disk) = &self.disk {
            disk.write(id, data).inspect_err(|_| {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            })?;
        }
        Ok(())
    }

    /// Whether chunks are also kept on disk.
    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Caches a chunk in memory only (see [`BlockCache::write_through`]).
    pub fn insert_memory(&self, id: ChunkId, data: Bytes) {
        let len = data.len() as u64;
        if len > self.mem_budget {
            return;
        }
        // Evicted chunks are dropped after the lock is released: the last reference frees the
        // buffer, which need not happen while other readers wait.
        let mut evicted = Vec::new();
        {
            let mut mem = self.mem.lock();
            if let Some(old) = mem.lru.put(id, data) {
                mem.bytes -= old.len() as u64;
                evicted.push(old);
            }
            mem.bytes += len;
            while mem.bytes > self.mem_budget {
                let Some((_, old)) = mem.lru.pop_lru() else {
                    break;
                };
                mem.bytes -= old.len() as u64;
                evicted.push(old);
            }
        }
        drop(evicted);
    }

    /// Gives disk space back to the system: evicts least recently used chunks from the disk
    /// layer until `bytes` are freed. The cache is expendable; staged writes are not, so a
    /// write that finds the disk full asks the cache to make room first.
    pub fn release_disk(&self, bytes: u64) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.release(bytes))
    }

    /// Drops every chunk of `content` from both layers (its file changed or is gone).
    pub fn invalidate(&self, content: &ContentId) {
        let mut evicted = Vec::new();
        {
            let mut mem = self.mem.lock();
            let ids: Vec<ChunkId> = mem
                .lru
                .iter()
                .filter(|(id, _)| id.content == *content)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(old) = mem.lru.pop(&id) {
                    mem.bytes -= old.len() as u64;
                    evicted.push(old);
                }
            }
        }
        drop(evicted);
        if let Some(disk) = &self.disk {
            disk.invalidate(content);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (mem_bytes, mem_chunks) = {
            let mem = self.mem.lock();
            (mem.bytes, mem.lru.len() as u64)
        };
        let (disk_bytes, disk_chunks) = self.disk.as_ref().map_or((0, 0), DiskStore::usage);
        let c = &self.counters;
        CacheStats {
            mem_bytes,
            mem_chunks,
            mem_budget: self.mem_budget,
            disk_bytes,
            disk_chunks,
            disk_budget: self.disk.as_ref().map_or(0, DiskStore::budget),
            hits_mem: c.hits_mem.load(Ordering::Relaxed),
            hits_disk: c.hits_disk.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Bytes a chunk of `len` bytes takes on disk (for sizing budgets and tests).
    pub fn disk_size_of(len: usize) -> u64 {
        len as u64 + disk::OVERHEAD
    }
}
