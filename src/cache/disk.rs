//! The on-disk layer: one file per chunk, AES-256-GCM sealed under a local key.
//!
//! Layout under the cache directory (mode 0700):
//! - `key`: 32 random bytes from the OS CSPRNG, mode 0600, created once (atomically: written to
//!   a temporary file, then hard-linked into place so that two processes agree on one key).
//! - `chunks/<content id, 32 hex>/<offset, 16 hex>`: `VFC1` ‖ nonce (12) ‖ ciphertext ‖ tag (16),
//!   sealed with a random nonce and `VFC1` ‖ content id ‖ offset as AAD, so a file copied or
//!   renamed to another chunk's path fails to open. Plaintext never reaches the disk.
//! - `tmp/`: files being written; each is renamed into place when complete, so a reader never
//!   sees half a chunk. Leftovers from a crash are removed at open.
//!
//! Any file that does not open (truncated, tampered, swapped, written under another key) is a
//! miss and is deleted. The in-memory index (an LRU of sizes) is rebuilt at open from the files,
//! oldest modification first.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::direct_io;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use lru::LruCache;
use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::{CacheError, ChunkId, ContentId};
use crate::crypto::{random_array, random_bytes};

const MAGIC: &[u8; 4] = b"VFC1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a stored chunk takes beyond its plaintext.
pub(crate) const OVERHEAD: u64 = (MAGIC.len() + NONCE_LEN + TAG_LEN) as u64;

/// What reading a chunk from disk found.
pub(crate) enum Read {
    Hit(Vec<u8>),
    Miss,
    /// The file existed but did not open; it has been deleted.
    Corrupt,
}

struct Index {
    /// Chunk → size of its file.
    lru: LruCache<ChunkId, u64>,
    bytes: u64,
}

pub(crate) struct DiskStore {
    chunks: PathBuf,
    tmp: PathBuf,
    /// AES-256-GCM. AWS-LC's (already built for TLS) rather than the `aes-gcm` crate's, the
    /// same format: every chunk a cold read fetches is sealed here, and the crate took 0.91 s
    /// of CPU per GiB on the benchmark VM, against 0.2 s for a stitched AES-GCM. AWS-LC keeps
    /// the expanded key in memory of its own and clears it when the key is dropped
    /// (`EVP_AEAD_CTX_free` → `OPENSSL_free`, which cleanses what it frees).
    cipher: LessSafeKey,
    budget: u64,
    index: Mutex<Index>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

fn private_dir(path: &Path) -> Result<(), CacheError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err(path))
}

/// Writes `data` to a new file at `path`, readable by the owner only. A large chunk's whole
/// blocks skip the page cache (`direct_io`): the cache keeps recent chunks in memory itself,
/// and on the benchmark VM copying a cold read's chunks into the page cache took more of the
/// daemon's CPU than anything else (decrypting, checking and sealing them included).
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    direct_io::write_once(&f, 0, &[data]).map(|_| ())
}

fn remove_quietly(path: &Path) {
    // Already gone is fine; any other failure leaves a file the next open will judge again.
    let _ = fs::remove_file(path);
}

fn tmp_name(tmp: &Path) -> PathBuf {
    tmp.join(hex::encode(random_array::<16>()))
}

/// The cache's key: read, or created once with mode 0600. A key file that is not 32 bytes is
/// replaced (the chunks it sealed can no longer be opened and are removed by the caller).
fn load_or_create_key(root: &Path, tmp: &Path) -> Result<(Zeroizing<[u8; 32]>, bool), CacheError> {
    let path = root.join("key");
    match fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(&path))?;
                return Ok((Zeroizing::new(key), false));
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let mut key = Zeroizing::new([0u8; 32]);
    random_bytes(key.as_mut());
    let staged = tmp_name(tmp);
    write_private(&staged, key.as_ref()).map_err(io_err(&staged))?;
    let linked = fs::hard_link(&staged, &path);
    remove_quietly(&staged);
    match linked {
        Ok(()) => Ok((key, true)),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let bytes = Zeroizing::new(fs::read(&path).map_err(io_err(&path))?);
            let theirs =
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| CacheError::BadKeyFile(path))?;
            Ok((Zeroizing::new(theirs), false))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn aad(id: &ChunkId) -> [u8; 28] {
    let mut aad = [0u8; 28];
    aad[..4].copy_from_slice(MAGIC);
    aad[4..20].copy_from_slice(&id.content.0);
    aad[20..].copy_from_slice(&id.offset.to_be_bytes());
    aad
}

fn parse_content(name: &str) -> Option<ContentId> {
    if name.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(name, &mut out).ok()?;
    // Only our own (lowercase) spelling, so that one chunk has one path.
    (hex::encode(out) == name).then_some(ContentId(out))
}

fn parse_offset(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    let v = u64::from_str_radix(name, 16).ok()?;
    (format!("{v:016x}") == name).then_some(v)
}

/// Pops least recently used chunks until the index holds at most `limit` bytes; returns them
/// for deletion once the lock is released.
fn evict_down_to(index: &mut Index, limit: u64) -> Vec<ChunkId> {
    let mut victims = Vec::new();
    while index.bytes > limit {
        let Some((id, len)) = index.lru.pop_lru() else {
            break;
        };
        index.bytes -= len;
        victims.push(id);
    }
    victims
}

impl DiskStore {
    pub(crate) fn open(root: &Path, budget: u64) -> Result<Self, CacheError> {
        private_dir(root)?;
        // An existing directory keeps its mode under `DirBuilder`; the cache's must be private.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err(root))?;
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
        private_dir(&tmp)?;
        for leftover in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            remove_quietly(&leftover.path());
        }
        let (key, fresh) = load_or_create_key(root, &tmp)?;
        if fresh && chunks.exists() {
            // Sealed under a key that is gone: unreadable, so not worth their space.
            fs::remove_dir_all(&chunks).map_err(io_err(&chunks))?;
        }
        private_dir(&chunks)?;
        let store = DiskStore {
            cipher: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key[..]).expect("a 32-byte key"),
            ),
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            chunks,
            tmp,
            budget,
        };
        store.scan()?;
        Ok(store)
    }

    /// Rebuilds the index from the files present, least recently written first.
    fn scan(&self) -> Result<(), CacheError> {
        let mut found: Vec<(SystemTime, ChunkId, u64)> = Vec::new();
        for dir in fs::read_dir(&self.chunks)
            .map_err(io_err(&self.chunks))?
            .flatten()
        {
            let path = dir.path();
            let Some(content) = dir.file_name().to_str().and_then(parse_content) else {
                let _ = fs::remove_dir_all(&path);
                remove_quietly(&path);
                continue;
            };
            let Ok(files) = fs::read_dir(&path) else {
                continue;
            };
            let mut empty = true;
            for f in files.flatten() {
                empty = false;
                let fpath = f.path();
                let offset = f.file_name().to_str().and_then(parse_offset);
                match (offset, f.metadata()) {
                    (Some(offset), Ok(meta)) if meta.is_file() => {
                        let when = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((when, ChunkId { content, offset }, meta.len()));
                    }
                    _ => {
                        let _ = fs::remove_dir_all(&fpath);
                        remove_quietly(&fpath);
                    }
                }
            }
            if empty {
                let _ = fs::remove_dir(&path);
            }
        }
        found.sort_by_key(|&(when, _, _)| when);
        let victims = {
            let mut index = self.index.lock();
            for (_, id, len) in found {
                index.lru.put(id, len);
                index.bytes += len;
            }
            self.evict_over_budget(&mut index, 0)
        };
        self.remove_files(&victims);
        Ok(())
    }

    fn content_dir(&self, content: &ContentId) -> PathBuf {
        self.chunks.join(hex::encode(content.0))
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.content_dir(&id.content)
            .join(format!("{:016x}", id.offset))
    }

    /// Pops least recently used chunks until `extra` more bytes fit; returns them for deletion
    /// once the lock is released.
    fn evict_over_budget(&self, index: &mut Index, extra: u64) -> Vec<ChunkId> {
        evict_down_to(index, self.budget.saturating_sub(extra))
    }

    /// Deletes evicted chunks' files. Their directories stay (a read of the same file is
    /// likely writing its next chunk there right now); [`DiskStore::scan`] removes empty ones.
    fn remove_files(&self, victims: &[ChunkId]) {
        for id in victims {
            remove_quietly(&self.path(id));
        }
    }

    /// Marks a chunk as just used (it was served from memory).
    pub(crate) fn touch(&self, id: &ChunkId) {
        self.index.lock().lru.promote(id);
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.index.lock().lru.contains(id)
    }

    pub(crate) fn usage(&self) -> (u64, u64) {
        let index = self.index.lock();
        (index.bytes, index.lru.len() as u64)
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    fn forget(&self, id: &ChunkId) {
        let mut index = self.index.lock();
        if let Some(len) = index.lru.pop(id) {
            index.bytes -= len;
        }
    }

    pub(crate) fn read(&self, id: &ChunkId) -> Read {
        if self.index.lock().lru.get(id).is_none() {
            return Read::Miss;
        }
        let path = self.path(id);
        let sealed = match fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                // Evicted or invalidated meanwhile, or removed behind our back.
                self.forget(id);
                return Read::Miss;
            }
        };
        match self.unseal(id, &sealed) {
            Some(plain) => Read::Hit(plain),
            None => {
                self.forget(id);
                remove_quietly(&path);
                Read::Corrupt
            }
        }
    }

    fn unseal(&self, id: &ChunkId, sealed: &[u8]) -> Option<Vec<u8>> {
        let body = sealed.strip_prefix(MAGIC.as_slice())?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain_len = self
            .cipher
            .open_in_place(nonce, Aad::from(aad(id)), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }

    fn seal(&self, id: &ChunkId, data: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_array();
        let mut out = Vec::with_capacity(data.len() + OVERHEAD as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(data);
        let body = &mut out[MAGIC.len() + NONCE_LEN..];
        let tag = match self.cipher.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(id)),
            body,
        ) {
            Ok(tag) => tag,
            // Only inputs over 64 GiB are refused; chunks are at most a few MiB.
            Err(_) => unreachable!("AES-GCM input bounded by chunk size"),
        };
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Stores a chunk (sealed, atomically), evicting least recently used chunks to stay within
    /// the budget. A chunk that alone exceeds the budget is not stored.
    pub(crate) fn write(&self, id: &ChunkId, data: &[u8]) -> Result<(), CacheError> {
        let len = data.len() as u64 + OVERHEAD;
        if len > self.budget {
            return Ok(());
        }
        let sealed = self.seal(id, data);
        let staged = tmp_name(&self.tmp);
        if let Err(e) = write_private(&staged, &sealed) {
            remove_quietly(&staged);
            return Err(io_err(&staged)(e));
        }
        let dir = self.content_dir(&id.content);
        let path = self.path(id);
        // Invalidating a content removes its directory; should that race with this write, the
        // rename finds no directory and a retry recreates it.
        let mut placed = Ok(());
        for _ in 0..8 {
            placed =
                private_dir(&dir).and_then(|()| fs::rename(&staged, &path).map_err(io_err(&path)));
            if placed.is_ok() {
                break;
            }
        }
        if let Err(e) = placed {
            remove_quietly(&staged);
            return Err(e);
        }
        let victims = {
            let mut index = self.index.lock();
            if let Some(old) = index.lru.pop(id) {
                index.bytes -= old;
            }
            let victims = self.evict_over_budget(&mut index, len);
            index.lru.put(*id, len);
            index.bytes += len;
            victims
        };
        self.remove_files(&victims);
        Ok(())
    }

    /// Evicts least recently used chunks until `bytes` are freed or none is left; returns
    /// what was freed.
    pub(crate) fn release(&self, bytes: u64) -> u64 {
        let (victims, freed) = {
            let mut index = self.index.lock();
            let before = index.bytes;
            let victims = evict_down_to(&mut index, before.saturating_sub(bytes));
            (victims, before - index.bytes)
        };
        self.remove_files(&victims);
        freed
    }

    /// Removes every chunk of `content`.
    pub(crate) fn invalidate(&self, content: &ContentId) {
        {
            let mut index = self.index.lock();
            let ids: Vec<ChunkId> = index
                .lru
                .iter()
                .filter(|(id, _)| id.content == *content)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(len) = index.lru.pop(&id) {
                    index.bytes -= len;
                }
            }
        }
        let _ = fs::remove_dir_all(self.content_dir(content));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};

    /// The sealed format is plain AES-256-GCM: what the `aes-gcm` crate (which sealed the
    /// cache before AWS-LC did) makes, the store reads, and the other way round.
    #[test]
    fn chunks_sealed_by_either_aes_gcm_open_in_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let (key, fresh) = load_or_create_key(dir.path(), &dir.path().join("tmp")).unwrap();
        assert!(!fresh, "the store made the key");
        let other = Aes256Gcm::new((&*key).into());
        let plain: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();

        let ours = ChunkId {
            content: ContentId([3; 16]),
            offset: 1 << 17,
        };
        store.write(&ours, &plain).unwrap();
        let sealed = fs::read(store.path(&ours)).unwrap();
        let body = sealed.strip_prefix(MAGIC.as_slice()).unwrap();
        let (nonce, rest) = body.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut opened = ct.to_vec();
        other
            .decrypt_inout_detached(
                &aes_gcm::Nonce::try_from(nonce).unwrap(),
                &aad(&ours),
                opened.as_mut_slice().into(),
                &aes_gcm::Tag::try_from(tag).unwrap(),
            )
            .expect("the crate opens what AWS-LC sealed");
        assert_eq!(opened, plain);

        let theirs = ChunkId {
            content: ContentId([4; 16]),
            offset: 0,
        };
        let nonce = [9u8; NONCE_LEN];
        let mut ct = plain.clone();
        let tag = other
            .encrypt_inout_detached(&nonce.into(), &aad(&theirs), ct.as_mut_slice().into())
            .unwrap();
        let path = store.path(&theirs);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, [MAGIC.as_slice(), &nonce, &ct, &tag].concat()).unwrap();
        drop(store);
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        match store.read(&theirs) {
            Read::Hit(data) => assert_eq!(data, plain),
            _ => panic!("a chunk the crate sealed does not open"),
        }
    }
}
