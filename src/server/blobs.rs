//! Where file content (ciphertext) lives.
//!
//! An upload is written into a temporary blob, sealed at its size when its last byte arrived
//! ([`BlobStore::seal_temp`]), and becomes a permanent, durable blob only when the client
//! completes it with `p` ([`BlobStore::publish`]). Nothing half-written is ever readable as a
//! file. Durability is paid once, at `p`, the moment the server acknowledges a file: a crash
//! before it costs the client a new upload (its completion token, or the content behind it, is
//! gone), never a file.
//!
//! Two backends: [`LocalBlobStore`] (a directory) and [`super::s3::S3BlobStore`] (any
//! S3-compatible bucket).

use super::packs::{self, Packs};
use crate::direct_io;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Buffered bytes from which a chunk's writing to the disk is started as it arrives.
const EARLY_WRITEBACK_MIN: u64 = 128 * 1024;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes `data` at `offset` of temporary blob `id`, creating it if needed. `data` is one
    /// contiguous range in pieces (a request body as it arrived, see `transfer::upload_chunk`).
    async fn write_temp(&self, id: &str, offset: u64, data: Vec<Bytes>) -> io::Result<()>;
    /// Writes the whole of temporary blob `id`, which arrived in one request (a small file's
    /// upload, usually); `seal_temp` follows as after chunks.
    async fn write_whole_temp(&self, id: &str, data: Vec<Bytes>) -> io::Result<()> {
        self.write_temp(id, 0, data).await
    }
    /// Makes temporary blob `id` exactly `size` bytes long (durable once published).
    async fn seal_temp(&self, id: &str, size: u64) -> io::Result<()>;
    /// Turns sealed temporary blob `id` into permanent blob `id`, durably. Idempotent: a blob
    /// already published is fine (a retry after a crash between publishing and recording).
    async fn publish(&self, id: &str) -> io::Result<()>;
    /// Publishes ahead, together, those of `ids` a store can make durable together more
    /// cheaply than one by one; `publish` of each still follows (a no-op for those). A store
    /// that gains nothing from it does nothing: publishing each twice would cost it a second
    /// round of requests.
    async fn publish_together(&self, ids: &[String]) -> io::Result<()> {
        let _ = ids;
        Ok(())
    }
    /// Removes temporary blob `id` if it exists.
    async fn discard_temp(&self, id: &str) -> io::Result<()>;
    /// Reads up to `len` bytes of permanent blob `id` from `offset`.
    async fn read(&self, id: &str, offset: u64, len: usize) -> io::Result<Bytes>;
    /// Removes permanent blob `id` if it exists.
    async fn delete(&self, id: &str) -> io::Result<()>;
    /// Ids of all temporary blobs.
    async fn temp_ids(&self) -> io::Result<Vec<String>>;
}

/// Blobs as files: `<root>/tmp/<id>` while uploading, `<root>/<id[..2]>/<id>` once published,
/// or in a pack (`<root>/packs/`, see [`Packs`]) for blobs up to [`packs::MAX_BLOB`] bytes
/// published together.
/// Small uploads that arrive whole are held in memory instead of `tmp/` (see [`Held`]).
/// File I/O blocks, so each call runs on tokio's blocking pool, but for the writes of small
/// temporary blobs (see [`INLINE_IO_BYTES`]).
#[derive(Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
    packs: Arc<Packs>,
    held: Arc<Mutex<Held>>,
}

/// Temporary blobs of up to [`packs::MAX_BLOB`] bytes that arrived in one request, kept in
/// memory until they are packed at `p`, up to [`HELD_MAX_BYTES`] in all (beyond it, files).
///
/// Why not files: a temporary file is created and deleted within a second, and ext4 without a
/// journal, allocating an inode, skips — reading each one's inode block — every inode freed in
/// the last seconds. A burst of small uploads made each creation slower than the last: 43 % of
/// the server's CPU samples with 10 000 uploads of 1 KiB. Memory costs no durability: a temporary
/// blob becomes durable only at `p` anyway; one lost with the process makes that `p` fail with
/// ENOENT (see `nodes`), and the client uploads again, as after a lost completion token.
#[derive(Default)]
struct Held {
    blobs: HashMap<String, Vec<u8>>,
    bytes: usize,
}

/// What [`Held`] may hold in all: 512 uploads of 128 KiB, or 65 536 of 1 KiB. Uploads completed
/// but never committed stay until the server restarts; past this bound, uploads go to files.
const HELD_MAX_BYTES: usize = 64 << 20;

impl Held {
    /// Holds `data` as blob `id` unless it is too large or the bound is reached.
    fn put(&mut self, id: &str, data: &[Bytes]) -> bool {
        let len: usize = data.iter().map(Bytes::len).sum();
        let replaced = self.blobs.get(id).map_or(0, Vec::len);
        if len as u64 > packs::MAX_BLOB || self.bytes - replaced + len > HELD_MAX_BYTES {
            return false;
        }
        let mut blob = Vec::with_capacity(len);
        for piece in data {
            blob.extend_from_slice(piece);
        }
        self.bytes = self.bytes - replaced + len;
        self.blobs.insert(id.to_string(), blob);
        true
    }

    fn remove(&mut self, id: &str) -> Option<Vec<u8>> {
        let blob = self.blobs.remove(id)?;
        self.bytes -= blob.len();
        Some(blob)
    }
}

/// Blob ids are server-made base64url strings; checking anyway keeps a bug elsewhere from
/// turning into a path traversal.
pub fn check_id(id: &str) -> io::Result<()> {
    if id.len() >= 4
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid blob id",
        ))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    // A rename or create is durable only once its directory is synced.
    File::open(dir)?.sync_all()
}

impl LocalBlobStore {
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join("tmp"))?;
        Ok(LocalBlobStore {
            root: root.to_path_buf(),
            packs: Arc::new(Packs::open(&root.join("packs"))?),
            held: Arc::default(),
        })
    }

    fn temp_path(&self, id: &str) -> io::Result<PathBuf> {
        check_id(id)?;
        Ok(self.root.join("tmp").join(id))
    }

    fn blob_path(&self, id: &str) -> io::Result<PathBuf> {
        check_id(id)?;
        Ok(self.root.join(&id[..2]).join(id))
    }
}

/// The synchronous operations behind the trait.
impl LocalBlobStore {
    fn write_temp_sync(&self, id: &str, offset: u64, data: &[Bytes]) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        // Each write opens the file anew and writes at its own offsets, so concurrent chunks
        // of one upload do not disturb each other.
        let file = options.open(self.temp_path(id)?)?;
        let pieces: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
        // A blob is synced when its upload completes and read back only by later downloads:
        // its large chunks skip the page cache (see `direct_io`).
        let buffered = direct_io::write_once(&file, offset, &pieces)?;
        // The blob is made durable only at `p`, by an fsync that would otherwise find what was
        // written buffered still in memory and write it while the client waits; started as
        // each chunk arrives, that writing overlaps the rest of the upload. Not for a few
        // kilobytes: the fsync writes those with the file's inode in one request to the disk,
        // where starting them here cost a request of their own (`sync_file_range` was a tenth
        // of the server's samples in a profile of 10 000 small uploads).
        if buffered >= EARLY_WRITEBACK_MIN {
            let total: u64 = data.iter().map(|d| d.len() as u64).sum();
            crate::util::start_writeback(&file, offset + total - buffered, buffered);
        }
        Ok(())
    }

    fn seal_temp_sync(&self, id: &str, size: u64) -> io::Result<()> {
        if let Some(blob) = self.held.lock().blobs.get(id) {
            return if blob.len() as u64 == size {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a held blob has the wrong size",
                ))
            };
        }
        let path = self.temp_path(id)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(size)
    }

    /// Publishes `ids`: the held ones and, when there are several, the small ones into a pack
    /// with one sync of it and one of its index; the others as files of their own (a lone blob
    /// costs two syncs either way: its file's and its folder's, or the pack's and its index's).
    /// A blob neither held, packed nor in `tmp/` fails with `NotFound`.
    fn publish_many_sync(&self, ids: &[String]) -> io::Result<()> {
        let mut held = Vec::new();
        let mut small = Vec::new();
        let mut files = Vec::new();
        {
            let blobs = &self.held.lock().blobs;
            for id in ids {
                if self.packs.contains(id) {
                    continue;
                }
                if let Some(blob) = blobs.get(id) {
                    held.push((id.clone(), blob.clone()));
                    continue;
                }
                match fs::metadata(self.temp_path(id)?) {
                    Ok(meta) if meta.len() <= packs::MAX_BLOB => small.push(id),
                    _ => files.push(id),
                }
            }
        }
        if held.is_empty() && small.len() < 2 {
            files.append(&mut small);
        }
        for id in files {
            self.publish_file(id)?;
        }
        let mut packed = held;
        for id in &small {
            packed.push(((*id).clone(), fs::read(self.temp_path(id)?)?));
        }
        if packed.is_empty() {
            return Ok(());
        }
        self.packs.add(&packed)?;
        let mut held = self.held.lock();
        for (id, _) in &packed {
            held.remove(id);
        }
        drop(held);
        for id in small {
            // Once packed, a leftover temporary blob is only space: it goes at the next start.
            let _ = self.discard_temp_sync(id);
        }
        Ok(())
    }

    /// Publishes `id` as a file of its own.
    fn publish_file(&self, id: &str) -> io::Result<()> {
        let from = self.temp_path(id)?;
        let to = self.blob_path(id)?;
        let dir = to.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir)?;
        let synced = File::open(&from).and_then(|f| f.sync_all());
        match synced.and_then(|()| fs::rename(&from, &to)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => return Ok(()),
            Err(e) => return Err(e),
        }
        // The new name is durable once its folder is; the old name's removal need not be (a
        // leftover temporary name is cleaned at the next start).
        sync_dir(dir)
    }

    /// Removes the file of temporary blob `id` (a held one is dropped by `discard_temp`).
    fn discard_temp_sync(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.temp_path(id)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read_sync(&self, id: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if let Some(data) = self.packs.read(id, offset, len)? {
            return Ok(data);
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut file = File::open(self.blob_path(id)?)?;
        file.seek(SeekFrom::Start(offset))?;
        // Read into spare capacity: zeroing a buffer the read overwrites anyway was a pass over
        // every byte served (`memset`, 2 % of the samples of a cold 1 GiB read).
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn delete_sync(&self, id: &str) -> io::Result<()> {
        if self.packs.delete(id)? {
            return Ok(());
        }
        match fs::remove_file(self.blob_path(id)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn temp_ids_sync(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join("tmp"))? {
            if let Some(name) = entry?.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

/// Temporary-blob writes up to this size run on the calling task: writing a few kilobytes into
/// the page cache takes less than the two thread wake-ups of a trip through the blocking pool
/// (three such trips per small upload were 7 % of the server's samples with 10 000 of them).
const INLINE_IO_BYTES: usize = 64 * 1024;

/// Runs `f` on a clone of `store` in the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &LocalBlobStore,
    f: impl FnOnce(&LocalBlobStore) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(io::Error::other)?
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn write_temp(&self, id: &str, offset: u64, data: Vec<Bytes>) -> io::Result<()> {
        if data.iter().map(Bytes::len).sum::<usize>() <= INLINE_IO_BYTES {
            return self.write_temp_sync(id, offset, &data);
        }
        let id = id.to_string();
        blocking(self, move |s| s.write_temp_sync(&id, offset, &data)).await
    }

    async fn write_whole_temp(&self, id: &str, data: Vec<Bytes>) -> io::Result<()> {
        check_id(id)?;
        if self.held.lock().put(id, &data) {
            return Ok(());
        }
        self.write_temp(id, 0, data).await
    }

    async fn seal_temp(&self, id: &str, size: u64) -> io::Result<()> {
        if size <= INLINE_IO_BYTES as u64 {
            return self.seal_temp_sync(id, size);
        }
        let id = id.to_string();
        blocking(self, move |s| s.seal_temp_sync(&id, size)).await
    }

    async fn publish(&self, id: &str) -> io::Result<()> {
        // Published ahead into a pack (the usual case for small files): nothing to do, and no
        // trip through the blocking pool to find that out.
        if self.packs.contains(id) {
            return Ok(());
        }
        let ids = vec![id.to_string()];
        blocking(self, move |s| s.publish_many_sync(&ids)).await
    }

    async fn publish_together(&self, ids: &[String]) -> io::Result<()> {
        let ids = ids.to_vec();
        blocking(self, move |s| s.publish_many_sync(&ids)).await
    }

    async fn discard_temp(&self, id: &str) -> io::Result<()> {
        if self.held.lock().remove(id).is_some() {
            return Ok(());
        }
        let id = id.to_string();
        blocking(self, move |s| s.discard_temp_sync(&id)).await
    }

    async fn read(&self, id: &str, offset: u64, len: usize) -> io::Result<Bytes> {
        let id = id.to_string();
        blocking(self, move |s| {
            s.read_sync(&id, offset, len).map(Bytes::from)
        })
        .await
    }

    async fn delete(&self, id: &str) -> io::Result<()> {
        let id = id.to_string();
        blocking(self, move |s| s.delete_sync(&id)).await
    }

    async fn temp_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = blocking(self, |s| s.temp_ids_sync()).await?;
        ids.extend(self.held.lock().blobs.keys().cloned());
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "veilfs-blobs-{name}-{}",
            crate::crypto::mega::b64_encode(&crate::crypto::random_array::<6>())
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn temp_blob_is_unreadable_until_published() {
        let dir = tempdir("publish");
        let store = LocalBlobStore::open(&dir).unwrap();
        let id = "abcdEF12";
        store
            .write_temp(
                id,
                5,
                vec![Bytes::from_static(b"wor"), Bytes::from_static(b"ld")],
            )
            .await
            .unwrap();
        store
            .write_temp(id, 0, vec![Bytes::from_static(b"hello")])
            .await
            .unwrap();
        assert!(store.read(id, 0, 10).await.is_err());
        assert_eq!(store.temp_ids().await.unwrap(), [id]);
        store.seal_temp(id, 10).await.unwrap();
        store.publish(id).await.unwrap();
        store.publish(id).await.unwrap();
        assert_eq!(&store.read(id, 0, 100).await.unwrap()[..], b"helloworld");
        assert_eq!(&store.read(id, 3, 4).await.unwrap()[..], b"lowo");
        assert!(store.temp_ids().await.unwrap().is_empty());
        store.delete(id).await.unwrap();
        assert!(store.read(id, 0, 1).await.is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Large chunks go to the disk directly (`direct_io`), in pieces as the network delivered
    /// them, out of order and with a tail; the published blob is byte-exact.
    #[tokio::test]
    async fn large_chunks_out_of_order_in_odd_pieces_land_byte_exact() {
        let dir = tempdir("large");
        let store = LocalBlobStore::open(&dir).unwrap();
        let id = "bigBLOB1";
        let size = (3 << 20) + 1234;
        let blob: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
        // MEGA-style POSTs at chunk boundaries, the last one ending in a partial block.
        let posts = [(1 << 20)..(3 << 20), 0..(1 << 20), (3 << 20)..size];
        for range in posts {
            let body = &blob[range.clone()];
            let pieces: Vec<Bytes> = body.chunks(16_381).map(Bytes::copy_from_slice).collect();
            store
                .write_temp(id, range.start as u64, pieces)
                .await
                .unwrap();
        }
        store.seal_temp(id, size as u64).await.unwrap();
        store.publish(id).await.unwrap();
        let back = store.read(id, 0, size + 10).await.unwrap();
        assert!(back[..] == blob[..], "the published blob differs");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_batch_publishes_small_blobs_into_a_pack_and_large_ones_as_files() {
        let dir = tempdir("batch");
        let store = LocalBlobStore::open(&dir).unwrap();
        let sizes = [
            1usize,
            1024,
            packs::MAX_BLOB as usize,
            packs::MAX_BLOB as usize + 1,
        ];
        let mut blobs = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let id = format!("batch{i:03}");
            let data: Vec<u8> = (0..size).map(|j| (j * 13 + i) as u8).collect();
            let pieces = vec![Bytes::from(data.clone())];
            store.write_temp(&id, 0, pieces).await.unwrap();
            store.seal_temp(&id, size as u64).await.unwrap();
            blobs.push((id, data));
        }
        let ids: Vec<String> = blobs.iter().map(|(id, _)| id.clone()).collect();
        store.publish_together(&ids).await.unwrap();
        // Again, as a `p` after its request published ahead: nothing to do, no error.
        store.publish(&ids[1]).await.unwrap();
        assert!(store.temp_ids().await.unwrap().is_empty());
        assert!(store.packs.contains(&ids[2]) && !store.packs.contains(&ids[3]));
        assert!(store.blob_path(&ids[3]).unwrap().exists());
        let reopened = LocalBlobStore::open(&dir).unwrap();
        for (id, data) in &blobs {
            let back = reopened.read(id, 0, data.len() + 5).await.unwrap();
            assert!(back[..] == data[..], "{id} differs");
        }
        for id in &ids {
            reopened.delete(id).await.unwrap();
            assert!(
                reopened.read(id, 0, 1).await.is_err(),
                "{id} still readable"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// Whole small uploads stay in memory and go into a pack even alone; a larger one, a
    /// discarded one and one that would pass the bound behave as before.
    #[tokio::test]
    async fn whole_small_uploads_are_held_in_memory_until_packed() {
        let dir = tempdir("held");
        let store = LocalBlobStore::open(&dir).unwrap();
        let tmp = || fs::read_dir(dir.join("tmp")).unwrap().count();
        let small = vec![Bytes::from_static(b"sma"), Bytes::from_static(b"ll")];
        store.write_whole_temp("heldAAA1", small).await.unwrap();
        let large = vec![Bytes::from(vec![7u8; packs::MAX_BLOB as usize + 1])];
        store.write_whole_temp("fileAAA1", large).await.unwrap();
        store.write_whole_temp("goneAAA1", vec![]).await.unwrap();
        assert_eq!(tmp(), 1, "only the large upload is a file");
        let mut ids = store.temp_ids().await.unwrap();
        ids.sort();
        assert_eq!(ids, ["fileAAA1", "goneAAA1", "heldAAA1"]);
        assert!(store.seal_temp("heldAAA1", 4).await.is_err(), "wrong size");
        store.seal_temp("heldAAA1", 5).await.unwrap();
        store.discard_temp("goneAAA1").await.unwrap();
        assert!(
            store
                .publish("goneAAA1")
                .await
                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        );
        store.publish("heldAAA1").await.unwrap();
        assert!(store.packs.contains("heldAAA1"));
        assert_eq!(&store.read("heldAAA1", 0, 10).await.unwrap()[..], b"small");
        assert_eq!(store.held.lock().bytes, 0);
        // The bound: a blob that would pass it is written to a file instead.
        store.held.lock().bytes = HELD_MAX_BYTES - 2;
        let three = vec![Bytes::from_static(b"abc")];
        store.write_whole_temp("overAAA1", three).await.unwrap();
        assert_eq!(tmp(), 2);
        store.seal_temp("overAAA1", 3).await.unwrap();
        store.publish("overAAA1").await.unwrap();
        assert_eq!(&store.read("overAAA1", 0, 10).await.unwrap()[..], b"abc");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn ids_that_could_escape_are_refused() {
        let dir = tempdir("ids");
        let store = LocalBlobStore::open(&dir).unwrap();
        for bad in ["../../etc/passwd", "a/b/c/d", "", "..", "ab"] {
            let data = vec![Bytes::from_static(b"x")];
            assert!(store.write_temp(bad, 0, data).await.is_err(), "{bad}");
            assert!(store.read(bad, 0, 1).await.is_err(), "{bad}");
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
