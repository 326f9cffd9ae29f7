//! The metadata store: one sled tree, typed records as JSON, keys by prefix.
//!
//! Every record of one account lives under keys that start with its user handle, so a listing is
//! a prefix scan. A state change is built as one [`Writes`] batch and applied atomically, then
//! flushed to disk before the client hears about it. Mutations are serialized by one write lock:
//! a self-hosted server's write rate is far below what that allows, and it makes every
//! read-modify-write (quota, sequence numbers, tree shape) trivially consistent.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

use super::errors::ApiResult;

pub struct Store {
    db: sled::Db,
    write_lock: tokio::sync::Mutex<()>,
}

/// Key builders. Handles are fixed-length base64 strings, so prefixes never collide.
pub mod keys {
    pub fn account(uh: &str) -> Vec<u8> {
        format!("a/{uh}").into_bytes()
    }
    pub fn email(email: &str) -> Vec<u8> {
        format!("e/{email}").into_bytes()
    }
    pub fn node(uh: &str, h: &str) -> Vec<u8> {
        format!("n/{uh}/{h}").into_bytes()
    }
    pub fn nodes(uh: &str) -> Vec<u8> {
        format!("n/{uh}/").into_bytes()
    }
    pub fn child(uh: &str, parent: &str, child: &str) -> Vec<u8> {
        format!("c/{uh}/{parent}/{child}").into_bytes()
    }
    pub fn children(uh: &str, parent: &str) -> Vec<u8> {
        format!("c/{uh}/{parent}/").into_bytes()
    }
    pub fn action(uh: &str, seq: u64) -> Vec<u8> {
        let mut k = format!("l/{uh}/").into_bytes();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
    pub fn actions(uh: &str) -> Vec<u8> {
        format!("l/{uh}/").into_bytes()
    }
    pub fn session(uh: &str, sid_hash: &str) -> Vec<u8> {
        format!("s/{uh}/{sid_hash}").into_bytes()
    }
    pub fn sessions(uh: &str) -> Vec<u8> {
        format!("s/{uh}/").into_bytes()
    }
    pub fn upload(token: &str) -> Vec<u8> {
        format!("t/{token}").into_bytes()
    }
    pub fn uploads() -> Vec<u8> {
        b"t/".to_vec()
    }
    pub fn confirmation(token: &str) -> Vec<u8> {
        format!("p/{token}").into_bytes()
    }
    /// A public link: public handle → owner and node.
    pub fn public_link(ph: &str) -> Vec<u8> {
        format!("ph/{ph}").into_bytes()
    }
    /// A node's public handle, by owner and node.
    pub fn export(uh: &str, h: &str) -> Vec<u8> {
        format!("x/{uh}/{h}").into_bytes()
    }
    pub fn exports(uh: &str) -> Vec<u8> {
        format!("x/{uh}/").into_bytes()
    }
    /// A shared folder's share key, wrapped by the owner's master key, and its handle auth.
    pub fn share(uh: &str, h: &str) -> Vec<u8> {
        format!("sh/{uh}/{h}").into_bytes()
    }
    pub fn shares(uh: &str) -> Vec<u8> {
        format!("sh/{uh}/").into_bytes()
    }
    /// A node key wrapped by the share key of the shared folder `root` above it.
    pub fn share_key(uh: &str, root: &str, h: &str) -> Vec<u8> {
        format!("sk/{uh}/{root}/{h}").into_bytes()
    }
    pub fn share_keys(uh: &str, root: &str) -> Vec<u8> {
        format!("sk/{uh}/{root}/").into_bytes()
    }
}

/// A batch of writes applied atomically by [`Store::apply`].
pub struct Writes {
    batch: sled::Batch,
    count: usize,
    /// The batch's only write, while it has one: applied as a plain insert or removal, which
    /// is atomic by itself. sled writes its log buffer out (and waits for the disk) at every
    /// batch, not at every insert; an upload's completion token is one such lone write.
    single: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Default for Writes {
    fn default() -> Self {
        Self::new()
    }
}

impl Writes {
    pub fn new() -> Self {
        Writes {
            batch: sled::Batch::default(),
            count: 0,
            single: None,
        }
    }

    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        let bytes = serde_json::to_vec(value).expect("records always serialize");
        self.note(&key, Some(&bytes));
        self.batch.insert(key, bytes);
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.note(&key, None);
        self.batch.remove(key);
    }

    fn note(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.count += 1;
        self.single = (self.count == 1).then(|| (key.to_vec(), value.map(<[u8]>::to_vec)));
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            // Acknowledged writes are flushed explicitly; the periodic flush only bounds what an
            // unacknowledged write could lose.
            .flush_every_ms(Some(1000))
            .open()?;
        Ok(Store {
            db,
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Serializes mutations; hold the guard from the first read of a read-modify-write until
    /// [`Store::apply`] returns.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> ApiResult<Option<T>> {
        match self.db.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, key: &[u8]) -> ApiResult<bool> {
        Ok(self.db.contains_key(key)?)
    }

    /// All records under `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> ApiResult<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefix) {
            let (k, v) = item?;
            out.push((k.to_vec(), serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Keys under `prefix`, without their values.
    pub fn scan_keys(&self, prefix: &[u8]) -> ApiResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefix) {
            out.push(item?.0.to_vec());
        }
        Ok(out)
    }

    /// Records under `prefix` whose key is greater than `after`, at most `limit` of them.
    pub fn scan_after<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> ApiResult<Vec<(Vec<u8>, T)>> {
        let mut end = prefix.to_vec();
        // The prefixes used here end in '/', so bumping that byte gives the first key past them.
        *end.last_mut().expect("non-empty prefix") += 1;
        let mut out = Vec::new();
        for item in self
            .db
            .range((
                std::ops::Bound::Excluded(after.to_vec()),
                std::ops::Bound::Excluded(end),
            ))
            .take(limit)
        {
            let (k, v) = item?;
            out.push((k.to_vec(), serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Applies `writes` atomically and makes them durable before returning.
    pub async fn apply(&self, writes: Writes) -> ApiResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write(writes)?;
        self.flush().await
    }

    /// Applies without waiting for the disk: for state whose loss costs a client nothing but a
    /// new login (sessions being refreshed).
    pub fn apply_lazy(&self, writes: Writes) -> ApiResult<()> {
        self.write(writes)
    }

    fn write(&self, writes: Writes) -> ApiResult<()> {
        match writes.single {
            Some((key, Some(value))) => {
                self.db.insert(key, value)?;
            }
            Some((key, None)) => {
                self.db.remove(key)?;
            }
            None if writes.is_empty() => {}
            None => self.db.apply_batch(writes.batch)?,
        }
        Ok(())
    }

    /// Waits until everything applied so far is on disk.
    ///
    /// sled 0.34's `flush_async` deadlocks when several run at once beside batches (sled
    /// issue #1308: every request of a busy server hung for good, found by the benchmarks'
    /// 16 parallel uploaders); its blocking `flush`, on the blocking pool, does not.
    pub async fn flush(&self) -> ApiResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush()).await??;
        Ok(())
    }
}

/// A random handle of `N` bytes, base64url (6 → 8 chars for nodes, 8 → 11 for users).
pub fn random_handle<const N: usize>() -> String {
    loop {
        let h = crate::crypto::mega::b64_encode(&crate::crypto::random_array::<N>());
        // Clients use "xxxxxxxx" as the placeholder of a node still to be created.
        if h != "xxxxxxxx" {
            return h;
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lone_writes_and_batches_both_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let get = |k: &[u8]| store.get::<u32>(k).unwrap();

        let mut one = Writes::new();
        one.put(b"k/a".to_vec(), &1u32);
        store.apply_lazy(one).unwrap();
        assert_eq!(get(b"k/a"), Some(1));

        // Two writes of one key: a batch, applied in order.
        let mut two = Writes::new();
        two.put(b"k/b".to_vec(), &2u32);
        two.remove(b"k/b".to_vec());
        store.apply(two).await.unwrap();
        assert_eq!(get(b"k/b"), None);

        let mut many = Writes::new();
        many.put(b"k/c".to_vec(), &3u32);
        many.put(b"k/a".to_vec(), &4u32);
        store.apply(many).await.unwrap();
        assert_eq!((get(b"k/a"), get(b"k/c")), (Some(4), Some(3)));

        let mut lone_remove = Writes::new();
        lone_remove.remove(b"k/a".to_vec());
        store.apply(lone_remove).await.unwrap();
        assert_eq!(get(b"k/a"), None);
        store.apply(Writes::new()).await.unwrap();
        assert_eq!(get(b"k/c"), Some(3));
    }
}
