//! `POST /cs`: a JSON array of commands in, an array of results out.
//!
//! Whatever arrives, the answer is HTTP 200 with MEGA's own vocabulary: a per-command negative
//! code, or a bare negative number when the whole request is unusable (not JSON, not an array,
//! bad session). MEGA clients understand nothing else.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::AppState;
use super::errors::{ApiError, ApiResult};
use super::sessions::Auth;
use super::store::Writes;
use super::{accounts, links, nodes, sessions, transfer};

/// Largest accepted command batch body. The biggest legitimate commands (`p` with many nodes)
/// stay far below this.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most commands accepted in one request.
const MAX_COMMANDS: usize = 500;

/// What a command handler gets besides its own arguments.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    /// The session the request carried, if any (already verified).
    pub auth: Option<Auth>,
    /// Base URL (`http://host:port/`) as the client reached us; transfer URLs are built on it.
    pub base_url: String,
    pub user_agent: Option<String>,
    /// The public handle of a folder link the request reads through (`?n=`).
    pub folder_link: Option<String>,
    /// Changes applied by this request's commands and not yet flushed: (account, sequence
    /// number) for the long-pollers to hear of once they are durable.
    deferred: std::sync::Mutex<Vec<(String, u64)>>,
}

impl Ctx<'_> {
    /// Applies a command's node changes (and their action packets up to `seq`). They reach the
    /// disk together with every other change of the request, in one flush after its last
    /// command and before its answer is sent: a client committing many uploads in one
    /// request pays for one flush, not one per file. Other clients hear of the changes after
    /// that flush.
    pub fn commit(&self, writes: Writes, uh: &str, seq: u64) -> ApiResult<()> {
        self.state.store.apply_lazy(writes)?;
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((uh.to_string(), seq));
        Ok(())
    }

    /// Makes the request's deferred changes durable, then wakes the long-pollers.
    async fn finish(&self) -> ApiResult<()> {
        let deferred =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        if deferred.is_empty() {
            return Ok(());
        }
        self.state.store.flush().await?;
        for (uh, seq) in deferred {
            self.state.notifier.notify(&uh, seq);
        }
        Ok(())
    }

    /// The session, or ESID for commands that need one.
    pub fn auth(&self) -> ApiResult<&Auth> {
        self.auth.as_ref().ok_or(ApiError::Sid)
    }
}

/// The last answer per session and request id, replayed when a client re-sends a request it
/// did not hear back from (the SDK re-sends unchanged with the same id): the command must not
/// run twice.
#[derive(Default)]
pub struct ReplayCache {
    entries: Mutex<HashMap<String, (String, Bytes)>>,
}

/// Bound on sessions remembered by the replay cache; past it the cache starts over.
const REPLAY_CAPACITY: usize = 10_000;

impl ReplayCache {
    fn get(&self, sid_hash: &str, id: &str) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(sid_hash) {
            Some((cached_id, body)) if cached_id == id => Some(body.clone()),
            _ => None,
        }
    }

    fn put(&self, sid_hash: &str, id: &str, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= REPLAY_CAPACITY && !entries.contains_key(sid_hash) {
            entries.clear();
        }
        entries.insert(sid_hash.to_string(), (id.to_string(), body));
    }

    pub fn forget(&self, sid_hash: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(sid_hash);
    }
}

/// Parses a query string into pairs; malformed escapes are kept verbatim rather than failing
/// the request, since only a few known keys are ever read.
pub fn query_pairs(raw: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The base URL for transfer and wait URLs: the configured public URL, else the `Host` the
/// client used.
pub fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        let mut url = url.clone();
        if !url.ends_with('/') {
            url.push('/');
        }
        return url;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.config.listen.to_string());
    format!("http://{host}/")
}

/// `base` with its scheme forced to https, for clients that asked for `ssl: 2`.
pub fn force_https(base: &str) -> String {
    match base.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => base.to_string(),
    }
}

fn json_response(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn bare_error(e: ApiError) -> Response {
    json_response(Bytes::from(e.code().to_string()))
}

/// A panic in a handler is a bug; the client still gets a MEGA answer (EINTERNAL), not a 500.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    bare_error(ApiError::Internal)
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return bare_error(ApiError::Args);
    };
    json_response(process(&state, query.as_deref(), &headers, &body).await)
}

/// Decodes a `/cs` request (query string, headers, body) and runs its commands: the whole of
/// `POST /cs` but the HTTP plumbing, so a fuzzer can drive it directly. Always a JSON answer:
/// an array of per-command results, or a bare error code.
pub async fn process(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Bytes {
    let bare = |e: ApiError| Bytes::from(e.code().to_string());
    let query = query_pairs(query);
    let commands = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(commands)) if commands.len() <= MAX_COMMANDS => commands,
        _ => return bare(ApiError::Args),
    };
    let auth = match query.get("sid") {
        Some(sid) => match sessions::authenticate(state, sid) {
            Ok(auth) => Some(auth),
            Err(e) => return bare(e),
        },
        None => None,
    };
    let request_id = query.get("id").cloned();
    if let (Some(auth), Some(id)) = (&auth, &request_id)
        && let Some(cached) = state.replay.get(&auth.sid_hash, id)
    {
        return cached;
    }
    let ctx = Ctx {
        state,
        auth: auth.clone(),
        base_url: base_url(state, headers),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect()),
        folder_link: query.get("n").cloned(),
        deferred: Default::default(),
    };
    if let Some(auth) = &auth {
        publish_ahead(state, &auth.uh, &commands).await;
    }
    let mut results = Vec::with_capacity(commands.len());
    for command in &commands {
        let result = match command {
            Value::Object(cmd) => dispatch(&ctx, cmd).await,
            _ => Err(ApiError::Args),
        };
        results.push(result.unwrap_or_else(|e| Answer::Value(json!(e.code()))));
    }
    if let Err(e) = ctx.finish().await {
        // Nothing of this request is known to be on disk: no command may be reported done.
        tracing::error!(error = %e, "could not flush the request's changes");
        return bare(e);
    }
    let body = Bytes::from(answers_json(&results));
    if let (Some(auth), Some(id)) = (&auth, &request_id) {
        state.replay.put(&auth.sid_hash, id, body.clone());
    }
    body
}

/// A command's answer: a JSON value, or JSON text written without one (`f`).
pub enum Answer {
    Value(Value),
    Json(Vec<u8>),
}

/// The body of a `/cs` answer: the array of the commands' answers.
fn answers_json(answers: &[Answer]) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, answer) in answers.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match answer {
            Answer::Value(v) => serde_json::to_writer(&mut body, v).expect("JSON values serialize"),
            Answer::Json(text) => body.extend_from_slice(text),
        }
    }
    body.push(b']');
    body
}

/// Publishes together the content of every file the request's `p` commands create: a client
/// committing many uploads sends them in one request (veilfs a `p` per folder, other clients a
/// `p` per file), and the local blob store makes a batch durable with one sync (see `packs`)
/// where publishing file by file syncs each. Each `p` still publishes its own (a no-op now) and
/// reports any failure; a `p` refused after this leaves its blob published under its
/// completion token, for a retry or for the cleanup at expiry.
async fn publish_ahead(state: &AppState, uh: &str, commands: &[Value]) {
    let mut ids = Vec::new();
    for cmd in commands {
        if cmd.get("a").and_then(Value::as_str) != Some("p") {
            continue;
        }
        let Some(Value::Array(elements)) = cmd.get("n") else {
            continue;
        };
        for el in elements {
            if el.get("t").and_then(Value::as_i64) != Some(nodes::TYPE_FILE) {
                continue;
            }
            let Some(h) = el.get("h").and_then(Value::as_str) else {
                continue;
            };
            let token = transfer::normalize_token(h);
            if let Ok(upload) = transfer::completed_upload(state, uh, &token) {
                ids.push(upload.id);
            }
        }
    }
    if ids.len() < 2 {
        return;
    }
    if let Err(error) = state.blobs.publish_together(&ids).await {
        tracing::debug!(%error, "publishing a request's blobs together failed");
    }
}

/// Runs one command.
pub async fn dispatch(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Answer> {
    let name = cmd.get("a").and_then(Value::as_str).ok_or(ApiError::Args)?;
    tracing::debug!(command = name, "api command");
    if name == "f" && ctx.folder_link.is_none() {
        return nodes::fetch(ctx).await;
    }
    let answer = match name {
        "us0" => accounts::prelogin(ctx, cmd).await,
        "us" => accounts::login(ctx, cmd).await,
        "up" => accounts::update_user(ctx, cmd).await,
        "uc2" => accounts::send_signup_link(ctx, cmd).await,
        "ud2" => accounts::confirm_signup(ctx, cmd).await,
        "ug" => accounts::user_info(ctx).await,
        "uq" => accounts::quota(ctx).await,
        "sml" => sessions::logout(ctx).await,
        "usl" => sessions::list(ctx).await,
        "usr" => sessions::revoke(ctx, cmd).await,
        "f" => links::folder_fetch(ctx).await,
        "p" => nodes::put(ctx, cmd).await,
        "a" => nodes::set_attributes(ctx, cmd).await,
        "m" => nodes::move_node(ctx, cmd).await,
        "d" => nodes::delete(ctx, cmd).await,
        "u" => transfer::upload_url(ctx, cmd).await,
        "g" if cmd.contains_key("p") => links::public_file(ctx, cmd).await,
        "g" if ctx.folder_link.is_some() => links::folder_file(ctx, cmd).await,
        "g" => transfer::download_url(ctx, cmd).await,
        "l" => links::export(ctx, cmd).await,
        "s2" => links::share(ctx, cmd).await,
        _ => Err(ApiError::Args),
    };
    answer.map(Answer::Value)
}

// ---------------------------------------------------------------------------------------------
// Argument helpers: every missing or mistyped argument is EARGS, never a panic.

pub fn str_arg<'a>(cmd: &'a Map<String, Value>, key: &str) -> ApiResult<&'a str> {
    cmd.get(key).and_then(Value::as_str).ok_or(ApiError::Args)
}

pub fn opt_str<'a>(cmd: &'a Map<String, Value>, key: &str) -> ApiResult<Option<&'a str>> {
    match cmd.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::Args),
    }
}

/// A non-negative integer argument; absent means `default`.
pub fn u64_arg(cmd: &Map<String, Value>, key: &str, default: Option<u64>) -> ApiResult<u64> {
    match cmd.get(key) {
        None | Some(Value::Null) => default.ok_or(ApiError::Args),
        Some(v) => v.as_u64().ok_or(ApiError::Args),
    }
}

/// Decodes a base64 argument that must hold exactly `N` bytes.
pub fn b64_arg<const N: usize>(cmd: &Map<String, Value>, key: &str) -> ApiResult<[u8; N]> {
    crate::crypto::mega::b64_decode_array::<N>(str_arg(cmd, key)?, "argument")
        .map_err(|_| ApiError::Args)
}

/// A node handle argument: 8 base64 characters.
pub fn handle_arg<'a>(cmd: &'a Map<String, Value>, key: &str) -> ApiResult<&'a str> {
    let h = str_arg(cmd, key)?;
    if is_handle(h, 8) {
        Ok(h)
    } else {
        Err(ApiError::Args)
    }
}

/// Whether `s` is a base64url string of exactly `len` characters.
pub fn is_handle(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The client instance id `i`, copied into the action packets a command causes (§3.3).
pub fn instance_id(cmd: &Map<String, Value>) -> Option<String> {
    cmd.get("i")
        .and_then(Value::as_str)
        .filter(|i| i.len() <= 64)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decodes_and_tolerates_garbage() {
        let q = query_pairs(Some("id=12&sid=ab%2Dc&x=%zz&flag&n=%4"));
        assert_eq!(q["id"], "12");
        assert_eq!(q["sid"], "ab-c");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["flag"], "");
        assert_eq!(q["n"], "%4");
        assert!(query_pairs(None).is_empty());
    }

    #[test]
    fn handles_are_checked_by_alphabet_and_length() {
        assert!(is_handle("AbC-_123", 8));
        assert!(!is_handle("AbC-_12", 8));
        assert!(!is_handle("AbC/_123", 8));
        assert!(!is_handle("../../..", 8));
    }
}
