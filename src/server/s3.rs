//! Blobs in an S3-compatible bucket (AWS, Garage, MinIO, …) through `object_store`.
//!
//! S3 objects cannot be written at an offset, and upload chunks arrive in any order, possibly
//! twice, possibly split differently on a retransmit. So each chunk is its own object,
//! `tmp/<id>/<offset>-<len>`; sealing reads them in offset order and writes the whole blob
//! as `tmp/<id>/sealed` in one atomic put or multipart upload (S3 shows an object only once it
//! is complete); publishing copies that to `blobs/<id>` and removes the temporary objects.
//! Nothing under `blobs/` is ever partial, and a crash at any point leaves only `tmp/` objects,
//! which the startup cleanup removes like the local store's temporary files.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::io;

use super::S3Location;
use super::blobs::{BlobStore, check_id};

/// Blobs up to this size are sealed with a single put; larger ones with a multipart upload
/// in parts of this size (S3 wants parts of at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Name of the assembled object among an upload's chunk objects.
const SEALED: &str = "sealed";

pub struct S3BlobStore {
    store: AmazonS3,
    /// Key prefix inside the bucket, empty or ending in `/`.
    prefix: String,
}

/// Why the S3 store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("S3 blob store: {0}")]
pub struct S3ConfigError(String);

fn to_io(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(other),
    }
}

/// Whether `endpoint` names this machine: plain http is then allowed without being asked for
/// (a local Garage or MinIO); anywhere else it takes `AWS_ALLOW_HTTP=true`.
fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl S3BlobStore {
    /// The bucket of `location`, with endpoint, region and credentials from the usual `AWS_*`
    /// environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, …), then `location.settings` over them.
    pub fn open(location: &S3Location) -> Result<S3BlobStore, S3ConfigError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&location.bucket);
        for (key, value) in &location.settings {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|_| S3ConfigError(format!("unknown S3 setting {key:?}")))?;
            builder = builder.with_config(key, value);
        }
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_default();
        if is_loopback_http(&endpoint) {
            builder = builder.with_allow_http(true);
        }
        if !endpoint.is_empty() {
            // Self-hosted stores serve buckets by path, not as subdomains.
            builder = builder.with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| S3ConfigError(e.to_string()))?;
        let prefix = location.prefix.trim_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(S3ConfigError(format!("invalid key prefix {prefix:?}")));
        }
        Ok(S3BlobStore {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    fn key(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }

    fn temp_dir(&self, id: &str) -> io::Result<Path> {
        check_id(id)?;
        Ok(self.key(&format!("tmp/{id}")))
    }

    fn blob(&self, id: &str) -> io::Result<Path> {
        check_id(id)?;
        Ok(self.key(&format!("blobs/{id}")))
    }

    /// The chunk objects of upload `id` as `(offset, len, key)`, sorted by offset, and whether
    /// the sealed object exists.
    async fn chunks(&self, id: &str) -> io::Result<(Vec<(u64, u64, Path)>, bool)> {
        let dir = self.temp_dir(id)?;
        let mut chunks = Vec::new();
        let mut sealed = false;
        let mut listing = self.store.list(Some(&dir));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(to_io)?;
            let name = meta.location.filename().unwrap_or("");
            if name == SEALED {
                sealed = true;
                continue;
            }
            let parsed = name
                .split_once('-')
                .and_then(|(o, l)| Some((o.parse::<u64>().ok()?, l.parse::<u64>().ok()?)));
            match parsed {
                Some((offset, len)) if meta.size == len => {
                    chunks.push((offset, len, meta.location))
                }
                // A chunk object of the wrong size was not written by us; refusing to seal is
                // safer than serving it.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected object {}", meta.location),
                    ));
                }
            }
        }
        chunks.sort_by_key(|(offset, len, _)| (*offset, std::cmp::Reverse(*len)));
        Ok((chunks, sealed))
    }

    async fn delete_all(&self, keys: Vec<Path>) -> io::Result<()> {
        let keys = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(keys);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn write_temp(&self, id: &str, offset: u64, data: Vec<Bytes>) -> io::Result<()> {
        let len: usize = data.iter().map(Bytes::len).sum();
        // Offset and length in the name, zero-padded so a listing is in offset order: a chunk
        // re-sent with another split is a new object, never a truncated old one.
        let key = self
            .temp_dir(id)?
            .join(format!("{offset:020}-{len:020}").as_str());
        self.store
            .put(&key, data.into_iter().collect::<PutPayload>())
            .await
            .map_err(to_io)?;
        Ok(())
    }

    async fn seal_temp(&self, id: &str, size: u64) -> io::Result<()> {
        let (chunks, sealed) = self.chunks(id).await?;
        let target = self.temp_dir(id)?.join(SEALED);
        if sealed && chunks.is_empty() {
            // A retry after the chunks were already folded in.
            let meta = self.store.head(&target).await.map_err(to_io)?;
            return if meta.size == size {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "sealed blob has the wrong size",
                ))
            };
        }
        // Chunks overlap when a client re-sent data split differently; each byte is taken
        // from the first chunk that covers it.
        let mut pos = 0u64;
        let mut pieces = Vec::new();
        for (offset, len, key) in &chunks {
            let end = offset + len;
            if end <= pos {
                continue;
            }
            if *offset > pos {
                break;
            }
            pieces.push((pos - offset, key.clone()));
            pos = end;
        }
        if pos != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("upload {id} covers {pos} of {size} bytes"),
            ));
        }
        let fetch = |skip: u64, key: Path| async move {
            let bytes = self
                .store
                .get(&key)
                .await
                .map_err(to_io)?
                .bytes()
                .await
                .map_err(to_io)?;
            Ok::<Bytes, io::Error>(bytes.slice(skip as usize..))
        };
        if size as usize <= PART_SIZE {
            let mut payload = Vec::with_capacity(pieces.len());
            for (skip, key) in pieces {
                payload.push(fetch(skip, key).await?);
            }
            self.store
                .put(&target, PutPayload::from_iter(payload))
                .await
                .map_err(to_io)?;
        } else {
            let upload = self.store.put_multipart(&target).await.map_err(to_io)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            for (skip, key) in pieces {
                let piece = match fetch(skip, key).await {
                    Ok(piece) => piece,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(e);
                    }
                };
                if let Err(e) = writer.wait_for_capacity(4).await {
                    return Err(to_io(e));
                }
                writer.put(piece);
            }
            writer.finish().await.map_err(to_io)?;
        }
        // The sealed object now holds every byte; the chunks are garbage.
        self.delete_all(chunks.into_iter().map(|(_, _, key)| key).collect())
            .await
    }

    async fn publish(&self, id: &str) -> io::Result<()> {
        let sealed = self.temp_dir(id)?.join(SEALED);
        let blob = self.blob(id)?;
        match self.store.copy(&sealed, &blob).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => {
                // Published before a crash kept the record from saying so.
                self.store.head(&blob).await.map_err(to_io)?;
            }
            Err(e) => return Err(to_io(e)),
        }
        self.discard_temp(id).await
    }

    async fn discard_temp(&self, id: &str) -> io::Result<()> {
        let dir = self.temp_dir(id)?;
        let keys: Vec<Path> = self
            .store
            .list(Some(&dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(to_io)?;
        self.delete_all(keys).await
    }

    async fn read(&self, id: &str, offset: u64, len: usize) -> io::Result<Bytes> {
        let blob = self.blob(id)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&blob, offset..offset + len as u64)
            .await
            .map_err(to_io)
    }

    async fn delete(&self, id: &str) -> io::Result<()> {
        match self.store.delete(&self.blob(id)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    async fn temp_ids(&self) -> io::Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.key("tmp")))
            .await
            .map_err(to_io)?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|id| check_id(id).is_ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(is_loopback_http("http://127.0.0.1:3900"));
        assert!(is_loopback_http("http://localhost:3900/"));
        assert!(is_loopback_http("http://[::1]:3900"));
        assert!(!is_loopback_http("http://10.0.0.5:3900"));
        assert!(!is_loopback_http("http://s3.example.org"));
        assert!(!is_loopback_http("https://127.0.0.1:3900"));
        assert!(!is_loopback_http(""));
    }
}
