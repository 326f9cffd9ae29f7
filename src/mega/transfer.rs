//! File transfers: encrypted upload in chunk-aligned POSTs, ranged download.
//!
//! Uploads read plaintext from a local file, compute the chunk MACs (interleaved, see
//! `crypto::mega::chunk_macs`) and the CTR ciphertext, and POST whole MAC chunks to
//! `<upload URL>/<offset>`, several at once. The POST that completes the file answers the
//! completion token that `p` turns into a node.

use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::api::{ApiClient, is_retryable, network_error};
use super::error::{ErrorCode, MegaError, Result};
use crate::content::{Content, Reader};
use crate::crypto::mega::{self as mc, FileKey};

/// Bytes per upload POST: whole MAC chunks up to this size. Large enough to amortise the HTTP
/// round trip, small enough that a retried POST costs little.
const UPLOAD_POST_BYTES: u64 = 8 * 1024 * 1024;
/// POSTs in flight at once per upload.
const UPLOAD_PARALLELISM: usize = 4;
/// POSTs up to this size are read and encrypted on the uploading task itself: a few tens of
/// microseconds of work, less than handing it to the blocking pool and back (two thread
/// wake-ups per small file).
const INLINE_ENCRYPT_BYTES: u64 = 128 * 1024;

/// Whether transfers must use HTTPS (`ssl: 2`) even where MEGA would hand out plain HTTP URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOptions {
    pub force_https: bool,
}

impl TransferOptions {
    pub(crate) fn ssl(self) -> u8 {
        if self.force_https { 2 } else { 0 }
    }
}

/// The outcome of a finished upload: what `p` needs to create the node.
#[derive(Debug, Clone)]
pub struct UploadedData {
    /// The completion token, base64, for the node's `h`.
    pub token: String,
    pub meta_mac: [u8; 8],
    pub size: u64,
    /// Each chunk's CBC-MAC, in order (empty for an empty file).
    pub chunk_macs: Vec<[u8; 16]>,
}

/// Byte ranges of the upload POSTs: whole MAC chunks, each POST at most [`UPLOAD_POST_BYTES`].
pub fn upload_posts(size: u64) -> Vec<std::ops::Range<u64>> {
    let mut posts: Vec<std::ops::Range<u64>> = Vec::new();
    for chunk in mc::chunk_spans(size) {
        match posts.last_mut() {
            Some(last) if chunk.end - last.start <= UPLOAD_POST_BYTES => last.end = chunk.end,
            _ => posts.push(chunk),
        }
    }
    posts
}

/// A local read failed: reported as a transfer failure, retried like one.
pub(super) fn read_error(e: std::io::Error) -> MegaError {
    MegaError::Network(format!("reading {e}"))
}

/// Asks for an upload URL for `size` bytes (`u`) in a request of its own (see
/// `upload_urls.rs` for uploads that start together).
pub async fn upload_url(api: &ApiClient, size: u64, options: TransferOptions) -> Result<String> {
    let answer = api.call(super::upload_urls::command(size, options)).await?;
    super::upload_urls::url_of(&answer)
}

/// Where an upload stands: its URL, the POSTs (by start offset) the server has acknowledged,
/// and the completion token once a POST answered it. Enough to carry on after the uploading
/// process died, for as long as the server keeps the upload open.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct UploadResume {
    pub url: String,
    pub done: std::collections::BTreeSet<u64>,
    pub token: Option<String>,
}

/// Sends the POSTs of `content` that `resume` does not list as done to `resume.url`. The MACs
/// of the chunks already sent are recomputed from the content (the server never returns them).
/// `on_post(start, token)` runs after each acknowledged POST, before `progress`.
pub async fn upload_to(
    api: &ApiClient,
    content: &Content,
    key: &FileKey,
    resume: &UploadResume,
    progress: impl Fn(u64) + Send + Sync + 'static,
    on_post: impl Fn(u64, Option<&str>) + Send + Sync + 'static,
) -> Result<UploadedData> {
    let reader = Arc::new(content.open().map_err(read_error)?);
    let size = reader.len();
    let url = resume.url.clone();
    if size == 0 {
        let token = match &resume.token {
            Some(token) => Some(token.clone()),
            None => post_chunk(api, &url, 0, Bytes::new()).await?,
        };
        let token =
            token.ok_or_else(|| MegaError::malformed("no completion token for an empty file"))?;
        on_post(0, Some(&token));
        return Ok(UploadedData {
            token,
            meta_mac: [0; 8],
            size,
            chunk_macs: Vec::new(),
        });
    }

    let posts = upload_posts(size);
    let macs = Arc::new(std::sync::Mutex::new(mc::MacAccumulator::new(key, size)));
    let progress = Arc::new(progress);
    let on_post = Arc::new(on_post);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(UPLOAD_PARALLELISM));
    let mut tasks = tokio::task::JoinSet::new();
    for range in posts {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let already_sent = resume.done.contains(&range.start);
        let (reader, key, macs, progress, on_post, url) = (
            reader.clone(),
            key.clone(),
            macs.clone(),
            progress.clone(),
            on_post.clone(),
            url.clone(),
        );
        let api_http = api.http().clone();
        let policy = api.policy().clone();
        tasks.spawn(async move {
            let _permit = permit;
            let start = range.start;
            let len = range.end - range.start;
            let body = if len <= INLINE_ENCRYPT_BYTES {
                encrypt_range(&reader, &key, range, &macs)?
            } else {
                tokio::task::spawn_blocking(move || encrypt_range(&reader, &key, range, &macs))
                    .await
                    .map_err(|e| MegaError::Network(e.to_string()))??
            };
            if already_sent {
                progress(len);
                return Ok(None);
            }
            let token = post_with_retry(&api_http, &policy, &url, start, body).await?;
            on_post(start, token.as_deref());
            progress(len);
            Ok::<_, MegaError>(token)
        });
    }
    let mut token = resume.token.clone();
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| MegaError::Network(e.to_string()))?;
        if let Some(t) = result? {
            token = Some(t);
        }
    }
    let token =
        token.ok_or_else(|| MegaError::malformed("upload finished without a completion token"))?;
    let (meta_mac, chunk_macs) = {
        let acc = macs.lock().expect("mac lock");
        let missing = || MegaError::malformed("upload finished with chunks missing");
        (
            acc.meta_mac().ok_or_else(missing)?,
            acc.chunk_macs().ok_or_else(missing)?,
        )
    };
    Ok(UploadedData {
        token,
        meta_mac,
        size,
        chunk_macs,
    })
}

/// Downloads a whole file from `url` into `out` (which must be empty), decrypting under `key`
/// and checking every chunk's MAC against `meta_mac` before it returns: a file that does not
/// match its key is an error, never a silent success. `progress` gets the bytes of each range
/// written.
#[allow(clippy::too_many_arguments)]
pub async fn download_to_file(
    http: &reqwest::Client,
    policy: &crate::retry::RetryPolicy,
    url: &str,
    key: &FileKey,
    meta_mac: &[u8; 8],
    size: u64,
    out: &std::fs::File,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    let out = Arc::new(
        out.try_clone()
            .map_err(|e| MegaError::Network(format!("local file: {e}")))?,
    );
    let macs = Arc::new(std::sync::Mutex::new(mc::MacAccumulator::new(key, size)));
    let progress = Arc::new(progress);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(UPLOAD_PARALLELISM));
    let mut tasks = tokio::task::JoinSet::new();
    // The same chunk-aligned ranges as an upload: each range's MACs can be computed alone.
    for range in upload_posts(size) {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (http, policy, url, key, macs, out, progress) = (
            http.clone(),
            policy.clone(),
            url.to_string(),
            key.clone(),
            macs.clone(),
            out.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let data = fetch_range(&http, &policy, &url, range.clone()).await?;
            let len = range.end - range.start;
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut plain = data.to_vec();
                mc::ctr_apply(&key, range.start, &mut plain);
                let first = mc::chunk_index(range.start);
                let spans: Vec<_> = (first..)
                    .map(|i| mc::chunk_range(i, range.end))
                    .take_while(|r| !r.is_empty())
                    .collect();
                let chunks: Vec<&[u8]> = spans
                    .iter()
                    .map(|r| {
                        &plain[(r.start - range.start) as usize..(r.end - range.start) as usize]
                    })
                    .collect();
                let chunk_macs = mc::chunk_macs(&key, &chunks);
                {
                    let mut acc = macs.lock().expect("mac lock");
                    for (i, mac) in chunk_macs.into_iter().enumerate() {
                        acc.insert(first + i as u64, mac)?;
                    }
                }
                out.write_all_at(&plain, range.start)
                    .map_err(|e| MegaError::Network(format!("writing the local file: {e}")))
            })
            .await
            .map_err(|e| MegaError::Network(e.to_string()))??;
            progress(len);
            Ok::<_, MegaError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| MegaError::Network(e.to_string()))??;
    }
    macs.lock().expect("mac lock").verify(meta_mac)?;
    Ok(())
}

/// Reads `range` of the plaintext, records its chunk MACs and returns the ciphertext.
fn encrypt_range(
    reader: &Reader,
    key: &FileKey,
    range: std::ops::Range<u64>,
    macs: &std::sync::Mutex<mc::MacAccumulator>,
) -> Result<Bytes> {
    let len = range.end - range.start;
    let mut buf = reader
        .read_vec(range.start, len as usize)
        .map_err(read_error)?;
    let first = mc::chunk_index(range.start);
    let spans: Vec<_> = (first..)
        .map(|i| mc::chunk_range(i, range.end))
        .take_while(|r| !r.is_empty())
        .collect();
    let chunks: Vec<&[u8]> = spans
        .iter()
        .map(|r| &buf[(r.start - range.start) as usize..(r.end - range.start) as usize])
        .collect();
    let chunk_macs = mc::chunk_macs(key, &chunks);
    {
        let mut acc = macs.lock().expect("mac lock");
        for (i, mac) in chunk_macs.into_iter().enumerate() {
            acc.insert(first + i as u64, mac)?;
        }
    }
    mc::ctr_apply(key, range.start, &mut buf);
    Ok(Bytes::from(buf))
}

async fn post_chunk(
    api: &ApiClient,
    url: &str,
    offset: u64,
    body: Bytes,
) -> Result<Option<String>> {
    post_with_retry(api.http(), api.policy(), url, offset, body).await
}

/// POSTs one range, retrying transient failures. Returns the completion token if this POST
/// completed the upload.
async fn post_with_retry(
    http: &reqwest::Client,
    policy: &crate::retry::RetryPolicy,
    url: &str,
    offset: u64,
    body: Bytes,
) -> Result<Option<String>> {
    policy
        .run(is_retryable, || post_once(http, url, offset, body.clone()))
        .await
}

async fn post_once(
    http: &reqwest::Client,
    url: &str,
    offset: u64,
    body: Bytes,
) -> Result<Option<String>> {
    let response = http
        .post(format!("{url}/{offset}"))
        .timeout(Duration::from_secs(300))
        .body(body)
        .send()
        .await
        .map_err(network_error)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(MegaError::Http(status));
    }
    let reply = response.bytes().await.map_err(network_error)?;
    parse_upload_reply(&reply)
}

/// An upload POST answers nothing (more to come), a negative number as text (an error), or the
/// completion token as raw bytes.
pub fn parse_upload_reply(reply: &[u8]) -> Result<Option<String>> {
    if reply.is_empty() {
        return Ok(None);
    }
    if reply.len() < 10
        && let Ok(text) = std::str::from_utf8(reply)
        && let Ok(code) = text.trim().parse::<i64>()
    {
        return if code < 0 {
            Err(MegaError::Api(ErrorCode::from_code(code)))
        } else {
            Err(MegaError::malformed(format!("upload answered {code}")))
        };
    }
    if reply.len() != 36 {
        return Err(MegaError::malformed(format!(
            "completion token of {} bytes",
            reply.len()
        )));
    }
    Ok(Some(mc::b64_encode(reply)))
}

/// Where and how big a file's encrypted data is.
#[derive(Debug, Clone)]
pub struct DownloadInfo {
    pub url: String,
    pub size: u64,
    /// The encrypted attributes, as the server has them.
    pub attributes: String,
}

/// Asks for a download URL for node `handle` (`g`).
pub async fn download_info(
    api: &ApiClient,
    handle: &str,
    options: TransferOptions,
) -> Result<DownloadInfo> {
    let answer = api
        .call(json!({"a": "g", "g": 1, "ssl": options.ssl(), "n": handle}))
        .await?;
    if let Some(e) = answer.get("e").and_then(|e| e.as_i64()) {
        return Err(MegaError::Api(ErrorCode::from_code(e)));
    }
    let url = answer
        .get("g")
        .and_then(|g| g.as_str())
        .filter(|g| g.starts_with("http"))
        .ok_or_else(|| MegaError::malformed("download answer without a URL"))?;
    let size = answer
        .get("s")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| MegaError::malformed("download answer without a size"))?;
    Ok(DownloadInfo {
        url: url.to_string(),
        size,
        attributes: answer
            .get("at")
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string(),
    })
}

/// Fetches encrypted bytes `range` (end exclusive) of a download URL, retrying transient
/// failures; the answer must have exactly the requested length.
pub async fn fetch_range(
    http: &reqwest::Client,
    policy: &crate::retry::RetryPolicy,
    url: &str,
    range: std::ops::Range<u64>,
) -> Result<Bytes> {
    let len = (range.end - range.start) as usize;
    let mut pieces = fetch_split(http, policy, url, range, &[len]).await?;
    Ok(Bytes::from(pieces.pop().unwrap_or_default()))
}

/// [`fetch_range`] read into one buffer per piece of `lens` (their lengths in order, summing to
/// the range's): each piece arrives in a buffer of its own, sized up front, so a reader that
/// keeps chunks apart decrypts them in place and keeps them without copying any byte again.
pub async fn fetch_split(
    http: &reqwest::Client,
    policy: &crate::retry::RetryPolicy,
    url: &str,
    range: std::ops::Range<u64>,
    lens: &[usize],
) -> Result<Vec<Vec<u8>>> {
    debug_assert_eq!(
        lens.iter().sum::<usize>() as u64,
        range.end - range.start,
        "pieces cover the range"
    );
    if range.is_empty() {
        return Ok(lens.iter().map(|_| Vec::new()).collect());
    }
    policy
        .run(is_retryable, || fetch_once(http, url, range.clone(), lens))
        .await
}

async fn fetch_once(
    http: &reqwest::Client,
    url: &str,
    range: std::ops::Range<u64>,
    lens: &[usize],
) -> Result<Vec<Vec<u8>>> {
    let mut response = http
        .get(format!("{url}/{}-{}", range.start, range.end - 1))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(network_error)?;
    let status = response.status().as_u16();
    if status == 509 {
        return Err(MegaError::Api(ErrorCode::OverQuota));
    }
    if status != 200 {
        return Err(MegaError::Http(status));
    }
    let want = range.end - range.start;
    let mut pieces: Vec<Vec<u8>> = lens.iter().map(|&n| Vec::with_capacity(n)).collect();
    let mut got = 0u64;
    let mut index = 0;
    while let Some(mut frame) = response.chunk().await.map_err(network_error)? {
        got += frame.len() as u64;
        if got > want {
            return Err(MegaError::malformed(
                "a download returned more than it was asked",
            ));
        }
        while !frame.is_empty() {
            while pieces[index].len() == lens[index] {
                index += 1;
            }
            let take = (lens[index] - pieces[index].len()).min(frame.len());
            pieces[index].extend_from_slice(&frame.split_to(take));
        }
    }
    if got != want {
        // A short read is what a dropped connection looks like: worth a retry.
        return Err(MegaError::Network(format!(
            "download returned {got} of {want} bytes"
        )));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_cover_the_file_in_whole_chunks() {
        for size in [1u64, 131_072, 131_073, 5 << 20, (40 << 20) + 7] {
            let posts = upload_posts(size);
            assert_eq!(posts.first().unwrap().start, 0);
            assert_eq!(posts.last().unwrap().end, size);
            for pair in posts.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            for post in &posts {
                assert!(mc::is_chunk_boundary(post.start));
                assert!(post.end == size || mc::is_chunk_boundary(post.end));
                assert!(post.end - post.start <= UPLOAD_POST_BYTES);
            }
        }
        assert!(upload_posts(0).is_empty());
    }

    #[test]
    fn upload_replies() {
        assert_eq!(parse_upload_reply(b"").unwrap(), None);
        assert!(matches!(
            parse_upload_reply(b"-4"),
            Err(MegaError::Api(ErrorCode::RateLimit))
        ));
        assert!(matches!(
            parse_upload_reply(b"-17"),
            Err(MegaError::Api(ErrorCode::OverQuota))
        ));
        let token = [7u8; 36];
        assert_eq!(
            parse_upload_reply(&token).unwrap(),
            Some(mc::b64_encode(&token))
        );
        assert!(parse_upload_reply(&[1u8; 20]).is_err());
    }
}
