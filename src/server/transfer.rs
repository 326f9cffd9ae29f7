//! Transfers: `u` hands out an upload URL, chunks are POSTed to `<url>/<offset>`, the POST that
//! completes the file answers the completion token that `p` turns into a node; `g` hands out a
//! download URL served by ranges `<url>/<start>-<end>`.
//!
//! Upload and download URLs are capabilities: an upload id is 16 random bytes, known only to
//! the client that asked for it; a download token names the account, node and expiry under a
//! MAC of the server secret.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::AppState;
use super::accounts;
use super::api::{Ctx, force_https, handle_arg, query_pairs, u64_arg};
use super::errors::{ApiError, ApiResult};
use super::nodes::{self, TYPE_FILE};
use super::store::{Writes, keys, now, random_handle};
use crate::crypto::mega::{b64_decode, b64_encode};

/// Largest upload POST body. Clients send one or a few MAC chunks (at most 1 MiB each) per
/// POST; the SDK may send several MB.
pub const MAX_CHUNK: usize = 64 * 1024 * 1024;
/// Uploads one account may have in progress at once.
const MAX_OPEN_UPLOADS: usize = 256;
/// How long after it started a finished upload still replays its token to retransmits.
const COMPLETED_REPLAY: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a download URL stays valid.
const DOWNLOAD_TTL_SECS: i64 = 24 * 3600;
/// Download bodies are streamed in pieces of this size.
const READ_PIECE: usize = 1024 * 1024;

/// An upload in progress.
struct Upload {
    uh: String,
    size: u64,
    /// `u` had `v >= 2`: answer a binary token (§4.9).
    binary_token: bool,
    created: Instant,
    /// Received byte ranges, sorted and disjoint.
    ranges: Vec<(u64, u64)>,
    /// Someone is finishing the upload.
    completing: bool,
    /// The completion answer, once sent (replayed to a retransmitted chunk).
    token: Option<Bytes>,
}

impl Upload {
    fn add_range(&mut self, start: u64, end: u64) {
        if start == end {
            return;
        }
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }

    fn covered(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

/// Uploads in progress, in memory: an upload cut by a restart is restarted by the client (its
/// URL then answers EEXPIRED).
#[derive(Default)]
pub struct Uploads {
    map: Mutex<Registry>,
}

/// Finished uploads stay for an hour (token replay), so the registry holds every upload of the
/// last hour: nothing per request may walk it (`u` did, twice, and 10 000 small files made it
/// quadratic).
#[derive(Default)]
struct Registry {
    uploads: HashMap<String, Upload>,
    /// Unfinished uploads per account.
    open: HashMap<String, usize>,
    last_sweep: Option<Instant>,
}

/// How often `u` looks for uploads past their lifetime.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Registry {
    fn finished(&mut self, id: &str, token: Bytes) {
        if let Some(upload) = self.uploads.get_mut(id)
            && upload.token.replace(token).is_none()
        {
            Self::closed(&mut self.open, &upload.uh);
        }
    }

    fn closed(open: &mut HashMap<String, usize>, uh: &str) {
        if let Some(n) = open.get_mut(uh) {
            *n -= 1;
            if *n == 0 {
                open.remove(uh);
            }
        }
    }

    /// Forgets uploads past their lifetime (at most every `SWEEP_EVERY`); returns the
    /// unfinished ones, whose content goes too.
    fn sweep(&mut self, ttl: std::time::Duration) -> Vec<String> {
        if self.last_sweep.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return Vec::new();
        }
        self.last_sweep = Some(Instant::now());
        let mut expired = Vec::new();
        let open = &mut self.open;
        self.uploads.retain(|id, u| {
            let age = u.created.elapsed();
            match &u.token {
                None if age > ttl => {
                    Self::closed(open, &u.uh);
                    expired.push(id.clone());
                    false
                }
                Some(_) => age <= COMPLETED_REPLAY,
                None => true,
            }
        });
        expired
    }
}

/// A finished upload waiting for `p`, stored under its completion token.
#[derive(Serialize, Deserialize, Clone)]
pub struct CompletedUpload {
    pub id: String,
    pub uh: String,
    pub size: u64,
    pub created: i64,
}

/// The store key of a completion token as `p` presents it: binary tokens arrive base64
/// (48 characters) in whichever alphabet the client uses; text tokens as they were sent.
pub fn normalize_token(h: &str) -> String {
    if h.len() == 48
        && let Ok(raw) = b64_decode(h)
        && raw.len() == 36
    {
        return b64_encode(&raw);
    }
    h.to_string()
}

/// The completed upload behind `token`, if it belongs to `uh`.
pub fn completed_upload(state: &AppState, uh: &str, token: &str) -> ApiResult<CompletedUpload> {
    if token.is_empty() || token.len() > 64 {
        return Err(ApiError::Args);
    }
    match state.store.get::<CompletedUpload>(&keys::upload(token))? {
        Some(upload) if upload.uh == uh => Ok(upload),
        _ => Err(ApiError::NotFound),
    }
}

/// Forgets completed uploads and removes their content.
pub async fn discard_completed(
    state: &AppState,
    uploads: &[(String, CompletedUpload)],
) -> ApiResult<()> {
    let mut writes = Writes::new();
    for (token, _) in uploads {
        writes.remove(keys::upload(token));
    }
    state.store.apply(writes).await?;
    for (_, upload) in uploads {
        state.blobs.discard_temp(&upload.id).await?;
        // Published ahead of its `p` (see `api::publish_ahead`): no node refers to it.
        state.blobs.delete(&upload.id).await?;
    }
    Ok(())
}

/// At startup: removes temporary blobs no completed upload refers to (uploads cut by the
/// restart) and completed uploads never turned into nodes within the upload lifetime, with
/// their content.
pub async fn discard_orphan_temps(state: &AppState) -> ApiResult<()> {
    let ttl = state.config.upload_ttl.as_secs() as i64;
    let mut keep = std::collections::HashSet::new();
    let mut expired = Vec::new();
    let mut writes = Writes::new();
    for (key, upload) in state.store.scan::<CompletedUpload>(&keys::uploads())? {
        if now() - upload.created > ttl {
            writes.remove(key);
            expired.push(upload.id);
        } else {
            keep.insert(upload.id);
        }
    }
    state.store.apply_lazy(writes)?;
    for id in expired {
        // Its content may have been published ahead of a `p` that was refused and never
        // retried (see `api::publish_ahead`); no node refers to it.
        state.blobs.delete(&id).await?;
    }
    for id in state.blobs.temp_ids().await? {
        if !keep.contains(&id) {
            state.blobs.discard_temp(&id).await?;
        }
    }
    Ok(())
}

/// `u`: an upload URL for `s` bytes. Refused with EOVERQUOTA when the file cannot fit, before
/// a byte is sent.
pub async fn upload_url(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let size = u64_arg(cmd, "s", None)?;
    let version = u64_arg(cmd, "v", Some(0))?;
    let ssl = u64_arg(cmd, "ssl", Some(0))?;
    let account = accounts::load(ctx.state, &uh)?;
    if account.used.saturating_add(size) > account.quota {
        return Err(ApiError::OverQuota);
    }
    let id = random_handle::<16>();
    let (expired, too_many) = {
        let mut map = ctx
            .state
            .uploads
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Unfinished uploads past their lifetime go with their content. Finished ones are
        // kept only to replay the token to a retransmitted chunk; their content waits for `p`
        // under the token record, so it stays.
        let expired = map.sweep(ctx.state.config.upload_ttl);
        // Bounded memory: an account cannot hold open more uploads than any client runs.
        let too_many = map.open.get(&uh).copied().unwrap_or(0) >= MAX_OPEN_UPLOADS;
        if !too_many {
            *map.open.entry(uh.clone()).or_default() += 1;
            map.uploads.insert(
                id.clone(),
                Upload {
                    uh,
                    size,
                    binary_token: version >= 2,
                    created: Instant::now(),
                    ranges: Vec::new(),
                    completing: false,
                    token: None,
                },
            );
        }
        (expired, too_many)
    };
    if !expired.is_empty() {
        let blobs = ctx.state.blobs.clone();
        // In the background: the client waits for its URL, not for someone else's cleanup.
        tokio::spawn(async move {
            for id in expired {
                let _ = blobs.discard_temp(&id).await;
            }
        });
    }
    if too_many {
        return Err(ApiError::TooMany);
    }
    let base = if ssl >= 2 {
        force_https(&ctx.base_url)
    } else {
        ctx.base_url.clone()
    };
    Ok(json!({"p": format!("{base}ul/{id}")}))
}

fn text(body: impl Into<Body>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        body.into(),
    )
        .into_response()
}

fn upload_error(e: ApiError) -> Response {
    text(e.code().to_string())
}

/// The optional chunk checksum (`c=` or `d=`) of a body received in `pieces`: 12 bytes,
/// `crc[i % 12] ^= data[i]`.
fn checksum_matches(expected_b64: &str, pieces: &[Bytes]) -> bool {
    let Ok(expected) = b64_decode(expected_b64) else {
        return false;
    };
    let mut crc = [0u8; 12];
    let mut i = 0;
    for piece in pieces {
        for b in piece.iter() {
            crc[i % 12] ^= b;
            i += 1;
        }
    }
    expected == crc
}

/// A request body as the pieces it arrived in, at most `limit` bytes in all. Gathering them
/// into one buffer would cost a fresh allocation and a copy of every uploaded byte (a third of
/// the server's CPU time during a large upload); the blob store writes the pieces as they are.
async fn body_pieces(body: Body, limit: usize) -> Option<(Vec<Bytes>, usize)> {
    let mut pieces = Vec::new();
    let mut len = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.ok()?;
        len += piece.len();
        if len > limit {
            return None;
        }
        if !piece.is_empty() {
            pieces.push(piece);
        }
    }
    Some((pieces, len))
}

/// `POST /ul/<id>/<offset>`: one chunk. Answers an empty body (or `0` if the client sent `d=`,
/// as the SDK requires), the completion token when this chunk completes the file, or `-N`.
pub async fn upload_chunk(
    State(state): State<Arc<AppState>>,
    Path((id, offset)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let Some((pieces, len)) = body_pieces(body, MAX_CHUNK).await else {
        return upload_error(ApiError::Args);
    };
    let Ok(offset) = offset.parse::<u64>() else {
        return upload_error(ApiError::Args);
    };
    let query = query_pairs(query.as_deref());
    let ack_zero = query.contains_key("d");
    let size = {
        let map = state.uploads.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.uploads.get(&id) {
            None => return upload_error(ApiError::Expired),
            Some(upload) if upload.created.elapsed() > state.config.upload_ttl => {
                return upload_error(ApiError::Expired);
            }
            Some(Upload {
                token: Some(token), ..
            }) => return token_response(token.clone()),
            Some(upload) => upload.size,
        }
    };
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > size) {
        return upload_error(ApiError::Range);
    }
    let end = end.expect("checked above");
    if let Some(sum) = query.get("c").or_else(|| query.get("d"))
        && !checksum_matches(sum, &pieces)
    {
        return upload_error(ApiError::Key);
    }
    let written = if offset == 0 && end == size {
        state.blobs.write_whole_temp(&id, pieces).await
    } else if len > 0 {
        state.blobs.write_temp(&id, offset, pieces).await
    } else {
        Ok(())
    };
    if let Err(e) = written {
        return upload_error(e.into());
    }
    let finish = {
        let mut map = state.uploads.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(upload) = map.uploads.get_mut(&id) else {
            return upload_error(ApiError::Expired);
        };
        upload.add_range(offset, end);
        if upload.covered() == upload.size && !upload.completing {
            upload.completing = true;
            Some((upload.uh.clone(), upload.binary_token))
        } else {
            None
        }
    };
    let Some((uh, binary)) = finish else {
        return text(if ack_zero { "0" } else { "" });
    };
    match complete(&state, &id, &uh, size, binary).await {
        Ok(token) => {
            let mut map = state.uploads.map.lock().unwrap_or_else(|p| p.into_inner());
            map.finished(&id, token.clone());
            token_response(token)
        }
        Err(e) => {
            let mut map = state.uploads.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(upload) = map.uploads.get_mut(&id) {
                upload.completing = false;
            }
            upload_error(e)
        }
    }
}

fn token_response(token: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        token,
    )
        .into_response()
}

/// Seals the upload and records its completion token: 35 random bytes and `0x01` for
/// clients that asked with `v >= 2` (they base64 it), else 36 base64 characters that go-mega
/// puts into `p` as they are.
async fn complete(
    state: &AppState,
    id: &str,
    uh: &str,
    size: u64,
    binary: bool,
) -> ApiResult<Bytes> {
    state.blobs.seal_temp(id, size).await?;
    let (body, key) = if binary {
        let mut raw = crate::crypto::random_array::<36>();
        raw[35] = 1;
        (Bytes::copy_from_slice(&raw), b64_encode(&raw))
    } else {
        let t = b64_encode(&crate::crypto::random_array::<27>());
        (Bytes::from(t.clone()), t)
    };
    let mut writes = Writes::new();
    writes.put(
        keys::upload(&key),
        &CompletedUpload {
            id: id.to_string(),
            uh: uh.to_string(),
            size,
            created: now(),
        },
    );
    // Not flushed: the token matters only until `p`, which makes everything durable; after a
    // crash the client's `p` fails and it uploads again.
    state.store.apply_lazy(writes)?;
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Downloads

fn download_token(state: &AppState, uh: &str, h: &str, expires: i64) -> String {
    let mut raw = Vec::with_capacity(11 + 8 + 8 + 16);
    raw.extend_from_slice(uh.as_bytes());
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&expires.to_be_bytes());
    let mac = state.secret.mac("download url", &[&raw]);
    raw.extend_from_slice(&mac[..16]);
    b64_encode(&raw)
}

fn open_download_token(state: &AppState, token: &str) -> Option<(String, String)> {
    let raw = b64_decode(token).ok()?;
    if raw.len() != 11 + 8 + 8 + 16 {
        return None;
    }
    let mac = state.secret.mac("download url", &[&raw[..27]]);
    if !super::secret::ct_eq(&raw[27..], &mac[..16]) {
        return None;
    }
    let expires = i64::from_be_bytes(raw[19..27].try_into().ok()?);
    if now() > expires {
        return None;
    }
    let uh = std::str::from_utf8(&raw[..11]).ok()?.to_string();
    let h = std::str::from_utf8(&raw[11..19]).ok()?.to_string();
    Some((uh, h))
}

/// `g`: download URL, size and encrypted attributes of one of the user's files.
pub async fn download_url(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = &ctx.auth()?.uh;
    let node = nodes::load_node(ctx.state, uh, handle_arg(cmd, "n")?)?;
    if node.t != TYPE_FILE {
        return Err(ApiError::Args);
    }
    download_answer(ctx, cmd, uh, &node, true)
}

/// The `g` answer for file `node` of account `uh`: size and encrypted attributes, and the
/// download URL when `with_url` (megajs asks a file link's attributes without one).
pub fn download_answer(
    ctx: &Ctx<'_>,
    cmd: &Map<String, Value>,
    uh: &str,
    node: &nodes::Node,
    with_url: bool,
) -> ApiResult<Value> {
    let ssl = u64_arg(cmd, "ssl", Some(0))?;
    let base = if ssl >= 2 {
        force_https(&ctx.base_url)
    } else {
        ctx.base_url.clone()
    };
    let mut out = json!({
        "s": node.s.unwrap_or(0),
        "at": node.a,
    });
    if with_url {
        let token = download_token(ctx.state, uh, &node.h, now() + DOWNLOAD_TTL_SECS);
        out["g"] = json!(format!("{base}dl/{token}"));
    }
    if let Some(fa) = &node.fa {
        out["fa"] = json!(fa);
    }
    Ok(out)
}

fn status(code: StatusCode, msg: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], msg).into_response()
}

/// `GET|POST /dl/<token>`: the whole file.
pub async fn download_all(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response {
    serve_download(&state, &token, None).await
}

/// `GET|POST /dl/<token>/<start>-<end>`: bytes `start..=end`, answered 200 with exactly those
/// bytes (megajs and go-mega accept nothing else); `end` past the file is clamped.
pub async fn download_range(
    State(state): State<Arc<AppState>>,
    Path((token, range)): Path<(String, String)>,
) -> Response {
    let parsed = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match parsed {
        Some((start, end)) if start <= end => {
            serve_download(&state, &token, Some((start, end))).await
        }
        _ => status(StatusCode::BAD_REQUEST, "bad range"),
    }
}

async fn serve_download(state: &Arc<AppState>, token: &str, range: Option<(u64, u64)>) -> Response {
    let Some((uh, h)) = open_download_token(state, token) else {
        return status(StatusCode::FORBIDDEN, "invalid or expired download URL");
    };
    let node = match nodes::load_node(state, &uh, &h) {
        Ok(node) => node,
        Err(ApiError::NotFound) => return status(StatusCode::NOT_FOUND, "no such file"),
        Err(_) => return status(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"),
    };
    let (Some(blob), size) = (node.blob.clone(), node.s.unwrap_or(0)) else {
        return status(StatusCode::NOT_FOUND, "no such file");
    };
    let (start, len) = match range {
        None => (0, size),
        Some((start, _)) if start >= size => {
            if size == 0 && start == 0 {
                (0, 0)
            } else {
                return status(StatusCode::RANGE_NOT_SATISFIABLE, "range past the end");
            }
        }
        Some((start, end)) => (start, end.min(size - 1) - start + 1),
    };
    let blobs = state.blobs.clone();
    let stream = futures_util::stream::unfold((start, len), move |(pos, left)| {
        let blobs = blobs.clone();
        let blob = blob.clone();
        async move {
            if left == 0 {
                return None;
            }
            let want = left.min(READ_PIECE as u64) as usize;
            let piece = match blobs.read(&blob, pos, want).await {
                Ok(piece) if !piece.is_empty() => piece,
                Ok(_) => {
                    return Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob shorter than its node",
                        )),
                        (pos, 0),
                    ));
                }
                Err(e) => return Some((Err(e), (pos, 0))),
            };
            let n = piece.len() as u64;
            Some((Ok(piece), (pos + n, left - n)))
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(uh: &str, age: std::time::Duration) -> Upload {
        Upload {
            uh: uh.into(),
            size: 1,
            binary_token: true,
            created: Instant::now() - age,
            ranges: Vec::new(),
            completing: false,
            token: None,
        }
    }

    #[test]
    fn the_registry_counts_open_uploads_per_account_and_sweeps_expired_ones() {
        let second = std::time::Duration::from_secs(1);
        let mut reg = Registry::default();
        for (id, uh, age) in [
            ("a", "u1", 0),
            ("b", "u1", 0),
            ("c", "u2", 100),
            ("d", "u1", 100),
        ] {
            *reg.open.entry(uh.into()).or_default() += 1;
            reg.uploads.insert(id.into(), upload(uh, second * age));
        }
        reg.finished("b", Bytes::from_static(b"t"));
        reg.finished("b", Bytes::from_static(b"t"));
        assert_eq!(
            reg.open.get("u1"),
            Some(&2),
            "a finished upload is no longer open"
        );
        let mut expired = reg.sweep(second * 10);
        expired.sort();
        assert_eq!(expired, ["c", "d"]);
        assert_eq!(reg.open.get("u1"), Some(&1));
        assert_eq!(reg.open.get("u2"), None);
        assert!(
            reg.uploads.contains_key("b"),
            "finished ones stay for token replay"
        );
        // Swept at most every SWEEP_EVERY.
        reg.uploads.insert("e".into(), upload("u2", second * 100));
        assert!(reg.sweep(second * 10).is_empty());
    }

    #[test]
    fn ranges_merge_and_count_once() {
        let mut u = Upload {
            uh: String::new(),
            size: 100,
            binary_token: true,
            created: Instant::now(),
            ranges: Vec::new(),
            completing: false,
            token: None,
        };
        u.add_range(50, 100);
        u.add_range(0, 30);
        u.add_range(0, 30);
        assert_eq!(u.covered(), 80);
        u.add_range(20, 60);
        assert_eq!(u.ranges, vec![(0, 100)]);
        assert_eq!(u.covered(), 100);
    }

    #[test]
    fn checksum_is_xor_in_12_lanes() {
        let data: Vec<u8> = (0..30u8).collect();
        let mut crc = [0u8; 12];
        for (i, b) in data.iter().enumerate() {
            crc[i % 12] ^= b;
        }
        let whole = [Bytes::from(data.clone())];
        // Split unevenly, as a body arrives: the lanes carry on across pieces.
        let split = [
            Bytes::from(data[..7].to_vec()),
            Bytes::from(data[7..].to_vec()),
        ];
        assert!(checksum_matches(&b64_encode(&crc), &whole));
        assert!(checksum_matches(&b64_encode(&crc), &split));
        crc[0] ^= 1;
        assert!(!checksum_matches(&b64_encode(&crc), &whole));
        assert!(!checksum_matches("%%%", &whole));
    }

    #[test]
    fn binary_tokens_normalize_across_alphabets() {
        let raw = [0xfbu8; 36];
        let url = b64_encode(&raw);
        let standard = url.replace('-', "+").replace('_', "/");
        assert_ne!(url, standard);
        assert_eq!(normalize_token(&standard), url);
        assert_eq!(normalize_token("text-token"), "text-token");
    }
}
