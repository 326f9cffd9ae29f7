//! Sessions: creating them at login (`csid` / `tsid`), checking them on every request, logout,
//! and listing or revoking them.
//!
//! The store keeps only SHA-256 of each session id: a copy of the database does not let anyone
//! act as a user. The session id carries the user handle at bytes 16..27 (§6.3), which tells us
//! where to look it up.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest;

use super::AppState;
use super::api::Ctx;
use super::errors::{ApiError, ApiResult};
use super::store::{Writes, keys, now};
use crate::crypto::mega::{b64_decode, b64_encode};
use crate::crypto::rsa::{MegaPublicKey, SID_LEN, generate_session_id};

/// A verified session.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The account's user handle (11 characters).
    pub uh: String,
    /// Hex SHA-256 of the session id: the session's key in the store.
    pub sid_hash: String,
}

#[derive(Serialize, Deserialize)]
pub struct SessionRecord {
    pub created: i64,
    pub agent: Option<String>,
}

fn sid_hash(sid: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(sid))
}

/// Checks a `sid` query parameter. Anything unknown or malformed is ESID.
pub fn authenticate(state: &AppState, sid: &str) -> ApiResult<Auth> {
    let bytes = b64_decode(sid).map_err(|_| ApiError::Sid)?;
    if bytes.len() != SID_LEN {
        return Err(ApiError::Sid);
    }
    let uh = std::str::from_utf8(&bytes[16..27]).map_err(|_| ApiError::Sid)?;
    if !super::api::is_handle(uh, 11) {
        return Err(ApiError::Sid);
    }
    let hash = sid_hash(&bytes);
    if !state.store.contains(&keys::session(uh, &hash))? {
        return Err(ApiError::Sid);
    }
    Ok(Auth {
        uh: uh.to_string(),
        sid_hash: hash,
    })
}

fn record(writes: &mut Writes, uh: &str, sid: &[u8], agent: Option<&str>) {
    writes.put(
        keys::session(uh, &sid_hash(sid)),
        &SessionRecord {
            created: now(),
            agent: agent.map(str::to_string),
        },
    );
}

/// A new session for an account with an RSA key: the session id travels RSA-encrypted to the
/// account's public key, so only a client that unlocked the private key learns it.
pub async fn create_csid(
    state: &AppState,
    uh: &str,
    pubk: &str,
    agent: Option<&str>,
) -> ApiResult<String> {
    let key = MegaPublicKey::from_b64(pubk).map_err(|_| {
        tracing::error!(uh, "stored public key does not parse");
        ApiError::Internal
    })?;
    let sid = generate_session_id(uh).map_err(|_| ApiError::Internal)?;
    let csid = key
        .encrypt_session_id(&sid)
        .map_err(|_| ApiError::Internal)?;
    let mut writes = Writes::new();
    record(&mut writes, uh, &sid, agent);
    state.store.apply(writes).await?;
    Ok(csid)
}

/// The temporary session of an account without an RSA key (§6.4):
/// `ts[0..16] ‖ user handle ‖ ts[16..32]`, where `ts` is the client's own `r ‖ AES(master, r)`,
/// so the client can check it came from a server that knows its account.
pub async fn create_tsid(
    state: &AppState,
    uh: &str,
    ts: &[u8; 32],
    agent: Option<&str>,
) -> ApiResult<String> {
    let mut sid = [0u8; SID_LEN];
    sid[..16].copy_from_slice(&ts[..16]);
    sid[16..27].copy_from_slice(uh.as_bytes());
    sid[27..].copy_from_slice(&ts[16..]);
    let mut writes = Writes::new();
    record(&mut writes, uh, &sid, agent);
    state.store.apply(writes).await?;
    Ok(b64_encode(&sid))
}

/// `sml`: ends the current session.
pub async fn logout(ctx: &Ctx<'_>) -> ApiResult<Value> {
    let auth = ctx.auth()?;
    let mut writes = Writes::new();
    writes.remove(keys::session(&auth.uh, &auth.sid_hash));
    ctx.state.store.apply(writes).await?;
    ctx.state.replay.forget(&auth.sid_hash);
    Ok(json!(0))
}

/// The public id of a session in `usl`/`usr`: the first 8 bytes of its hash. It names a
/// session without being usable as one.
fn session_id(hash: &str) -> &str {
    &hash[..16]
}

/// `usl`: the account's sessions. MEGA's SDK names this command; the reference does not
/// document its answer, so ours is: an array of
/// `[created, last used, user agent, ip, country, current (0/1), id, alive (1)]`, where `ip`
/// and `country` are empty (we keep neither) and `last used` is the creation time.
pub async fn list(ctx: &Ctx<'_>) -> ApiResult<Value> {
    let auth = ctx.auth()?;
    let prefix = keys::sessions(&auth.uh);
    let mut out = Vec::new();
    for (key, rec) in ctx.state.store.scan::<SessionRecord>(&prefix)? {
        let hash = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        out.push(json!([
            rec.created,
            rec.created,
            rec.agent.unwrap_or_default(),
            "",
            "",
            i64::from(hash == auth.sid_hash),
            session_id(&hash),
            1
        ]));
    }
    Ok(Value::Array(out))
}

/// `usr`: ends sessions: `{s: [id, …]}` those listed by `usl`, or `{ko: 1}` every session but
/// the current one. Unknown ids are ignored (the session may have ended meanwhile).
pub async fn revoke(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let auth = ctx.auth()?;
    let all_others = cmd.get("ko").and_then(Value::as_i64) == Some(1);
    let wanted: Vec<&str> = match cmd.get("s") {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|v| v.as_str().ok_or(ApiError::Args))
            .collect::<ApiResult<_>>()?,
        None if all_others => Vec::new(),
        _ => return Err(ApiError::Args),
    };
    let prefix = keys::sessions(&auth.uh);
    let _guard = ctx.state.store.lock().await;
    let mut writes = Writes::new();
    for key in ctx.state.store.scan_keys(&prefix)? {
        let hash = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let hit = if all_others {
            hash != auth.sid_hash
        } else {
            wanted.contains(&session_id(&hash))
        };
        if hit {
            ctx.state.replay.forget(&hash);
            writes.remove(key);
        }
    }
    ctx.state.store.apply(writes).await?;
    Ok(json!(0))
}
