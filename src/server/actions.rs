//! Action packets: the per-account log of changes, `sc` to read it, and the wait URL that
//! long-polls until there is something new.
//!
//! Each state-changing command appends one batch to the log under the next sequence number, in
//! the same atomic write as the change itself. The `sn` clients hold is that number, encoded as
//! MEGA's 8-byte base64 string. A batch is never split across `sc` answers, so a move's `d` and
//! `t` always arrive together (megajs mishandles them otherwise).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::AppState;
use super::accounts::{self, Account};
use super::api::{base_url, force_https, query_pairs};
use super::errors::{ApiError, ApiResult};
use super::sessions;
use super::store::{Writes, keys};
use crate::crypto::mega::{b64_decode, b64_encode};

/// Most batches returned by one `sc` answer; the client asks again at once for the rest.
const MAX_BATCHES_PER_POLL: usize = 500;

/// `sn` on the wire: the sequence number as 8 big-endian bytes, base64 (11 characters).
pub fn encode_sn(seq: u64) -> String {
    b64_encode(&seq.to_be_bytes())
}

pub fn decode_sn(sn: &str) -> Option<u64> {
    let bytes: [u8; 8] = b64_decode(sn).ok()?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// One packet: `"a"` first, then the client instance id `i` if the command carried one
/// (§3.3), then the fields.
pub fn packet(kind: &str, i: Option<String>, fields: Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("a".into(), json!(kind));
    if let Some(i) = i {
        out.insert("i".into(), json!(i));
    }
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    Value::Object(out)
}

/// Adds a batch to `writes` under the account's next sequence number and returns it. The
/// caller saves the account in the same batch and calls [`Notifier::notify`] once it applied.
pub fn append(writes: &mut Writes, account: &mut Account, packets: Vec<Value>) -> u64 {
    account.seq += 1;
    writes.put(keys::action(&account.u, account.seq), &packets);
    account.seq
}

/// Wakes the long polls of an account when its log grows.
pub struct Notifier {
    channels: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            channels: Mutex::new(HashMap::new()),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Notifier {
    fn subscribe(&self, uh: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        // Drop channels nobody listens to, so the map stays as small as the set of waiters.
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels
            .entry(uh.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    pub fn notify(&self, uh: &str, seq: u64) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(uh) {
            tx.send_replace(seq);
        }
    }

    /// Ends every long poll (server shutdown).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}

fn json_ok(value: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The capability in a wait URL: user handle and `sn`, authenticated by the server secret, so
/// the URL reveals nothing and cannot be forged for another account.
fn wait_token(state: &AppState, uh: &str, seq: u64) -> String {
    let mut raw = Vec::with_capacity(11 + 8 + 16);
    raw.extend_from_slice(uh.as_bytes());
    raw.extend_from_slice(&seq.to_be_bytes());
    let mac = state.secret.mac("wait url", &[&raw]);
    raw.extend_from_slice(&mac[..16]);
    b64_encode(&raw)
}

fn open_wait_token(state: &AppState, token: &str) -> Option<(String, u64)> {
    let raw = b64_decode(token).ok()?;
    if raw.len() != 11 + 8 + 16 {
        return None;
    }
    let mac = state.secret.mac("wait url", &[&raw[..19]]);
    if !super::secret::ct_eq(&raw[19..], &mac[..16]) {
        return None;
    }
    let uh = std::str::from_utf8(&raw[..11]).ok()?.to_string();
    let seq = u64::from_be_bytes(raw[11..19].try_into().ok()?);
    Some((uh, seq))
}

/// What `sc` answers for a client at `since`.
pub fn poll_answer(
    state: &AppState,
    account: &Account,
    since: u64,
    base: &str,
) -> ApiResult<Value> {
    if since >= account.seq {
        return Ok(json!({"w": format!("{base}wsc/{}", wait_token(state, &account.u, since))}));
    }
    let prefix = keys::actions(&account.u);
    let batches = state.store.scan_after::<Vec<Value>>(
        &prefix,
        &keys::action(&account.u, since),
        MAX_BATCHES_PER_POLL,
    )?;
    let mut last = since;
    let mut packets = Vec::new();
    for (key, batch) in batches {
        let seq_bytes: [u8; 8] = key[prefix.len()..]
            .try_into()
            .map_err(|_| ApiError::Internal)?;
        last = u64::from_be_bytes(seq_bytes);
        packets.extend(batch);
    }
    if last == since {
        // The log has no entries past `since` although the account's counter is ahead: only
        // possible if entries were removed. Waiting is the answer that cannot loop the client.
        return Ok(json!({"w": format!("{base}wsc/{}", wait_token(state, &account.u, since))}));
    }
    Ok(json!({"a": packets, "sn": encode_sn(last)}))
}

/// `POST /sc?sn=…&sid=…`: packets newer than `sn`, or `{w: <wait URL>}` when there are none.
pub async fn poll(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query_pairs(query.as_deref());
    let result = (|| {
        let auth = sessions::authenticate(&state, query.get("sid").ok_or(ApiError::Sid)?)?;
        let since = query
            .get("sn")
            .and_then(|sn| decode_sn(sn))
            .ok_or(ApiError::Args)?;
        let account = accounts::load(&state, &auth.uh)?;
        let mut base = base_url(&state, &headers);
        if query.get("ssl").is_some_and(|s| s != "0") {
            base = force_https(&base);
        }
        poll_answer(&state, &account, since, &base)
    })();
    match result {
        Ok(v) => json_ok(v),
        Err(e) => json_ok(json!(e.code())),
    }
}

/// `GET|POST /wsc/<token>`: held until the account's log passes the token's `sn`, the wait
/// timeout, or shutdown; answers `0` either way (clients ignore the body and re-poll `sc`).
pub async fn wait(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    let Some((uh, since)) = open_wait_token(&state, &token) else {
        return json_ok(json!(ApiError::Args.code()));
    };
    let mut rx = state.notifier.subscribe(&uh);
    let mut shutdown = state.notifier.shutdown.subscribe();
    // Check after subscribing: a change committed in between is then either seen here or
    // delivered through the channel.
    match accounts::load(&state, &uh) {
        Ok(account) if account.seq > since => return json_ok(json!(0)),
        Ok(_) => {}
        Err(e) => return json_ok(json!(e.code())),
    }
    if *shutdown.borrow() {
        return json_ok(json!(0));
    }
    let changed = async {
        while rx.changed().await.is_ok() {
            if *rx.borrow() > since {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = changed => {},
        _ = shutdown.changed() => {},
        _ = tokio::time::sleep(state.config.wait_timeout) => {},
    }
    json_ok(json!(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sn_round_trips_as_an_11_char_string() {
        for seq in [0u64, 1, 255, u64::MAX] {
            let sn = encode_sn(seq);
            assert_eq!(sn.len(), 11);
            assert_eq!(decode_sn(&sn), Some(seq));
        }
        assert_eq!(decode_sn("short"), None);
        assert_eq!(decode_sn("!!!!!!!!!!!"), None);
    }

    #[test]
    fn packet_puts_a_then_i_first() {
        let p = packet("d", Some("inst".into()), json!({"n": "h", "m": 1}));
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a", "i", "n", "m"]);
    }
}
