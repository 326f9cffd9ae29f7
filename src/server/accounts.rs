//! Accounts: registration (MEGA's v2 flow, reference §7.1), prelogin, login, user info, quota.
//!
//! The server stores what MEGA's does and nothing it could unlock: the v2 salt, the *hashed*
//! authentication key, the master key wrapped by the password key, the RSA private key wrapped
//! by the master key, and the public key.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use super::AppState;
use super::SignupPolicy;
use super::api::{Ctx, b64_arg, opt_str, str_arg};
use super::errors::{ApiError, ApiResult};
use super::nodes::{self, Node};
use super::secret::ct_eq;
use super::sessions;
use super::store::{Writes, keys, now, random_handle};
use crate::crypto::mega::{b64_decode, b64_encode, hashed_auth_key, v2_salt};
use crate::crypto::rsa::MegaPublicKey;

#[derive(Serialize, Deserialize, Clone)]
pub struct Account {
    /// User handle, 11 base64 characters.
    pub u: String,
    /// Lower-cased e-mail; `None` until registration is confirmed (an "ephemeral" account).
    pub email: Option<String>,
    /// Display name as the client registered it (plain UTF-8).
    pub name: Option<String>,
    /// Master key wrapped with the password key (base64, 16 bytes).
    pub k: String,
    /// The client's `r16 ‖ AES(master, r16)` (base64, 32 bytes), source of the `tsid`.
    pub ts: String,
    /// v2 salt (base64, 32 bytes).
    pub salt: Option<String>,
    /// First 16 bytes of SHA-256(auth key), base64.
    pub hak: Option<String>,
    pub pubk: Option<String>,
    /// RSA private key wrapped with the master key.
    pub privk: Option<String>,
    pub since: i64,
    pub quota: u64,
    /// Bytes of file content stored.
    pub used: u64,
    /// Sequence number of the last action-packet batch.
    pub seq: u64,
    /// Handles of the Cloud Drive, Inbox and Rubbish Bin roots.
    pub roots: [String; 3],
    /// Other user attributes set with `up` (`firstname`, `lastname`), opaque.
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

pub fn load(state: &AppState, uh: &str) -> ApiResult<Account> {
    state
        .store
        .get(&keys::account(uh))?
        .ok_or(ApiError::NotFound)
}

pub fn save(writes: &mut Writes, account: &Account) {
    writes.put(keys::account(&account.u), account);
}

fn by_email(state: &AppState, email: &str) -> ApiResult<Option<Account>> {
    match state.store.get::<String>(&keys::email(email))? {
        Some(uh) => Ok(Some(load(state, &uh)?)),
        None => Ok(None),
    }
}

/// Lower-cases an e-mail address as every MEGA client does before `us0`/`us`, and rejects
/// what cannot be one.
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.to_lowercase();
    if email.len() < 3
        || email.len() > 254
        || !email.contains('@')
        || email.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::Args);
    }
    Ok(email)
}

/// `us0`: the account version and salt. An unknown address gets a salt derived from it under
/// the server secret: same shape, stable across calls, computed on every call so both paths
/// cost the same; nothing in the answer tells whether the account exists.
pub async fn prelogin(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let email = normalize_email(str_arg(cmd, "user")?)?;
    let fake = ctx.state.secret.mac("us0 salt", &[email.as_bytes()]);
    let salt = match by_email(ctx.state, &email)? {
        Some(Account {
            salt: Some(salt), ..
        }) => salt,
        _ => b64_encode(&fake),
    };
    Ok(json!({"v": 2, "s": salt}))
}

/// `us`: login by e-mail and auth key, or (during registration) by user handle alone.
pub async fn login(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let user = str_arg(cmd, "user")?;
    let Some(uh) = opt_str(cmd, "uh")? else {
        return ephemeral_login(ctx, user).await;
    };
    let email = normalize_email(user)?;
    let limiter = &ctx.state.limiter;
    if !limiter.allowed(&email) {
        return Err(ApiError::TooMany);
    }
    let account = by_email(ctx.state, &email)?;
    // Hash even when the address is unknown, so both failures take the same path.
    let presented = match b64_decode(uh) {
        Ok(auth_key) => hashed_auth_key(&auth_key),
        Err(_) => [0u8; 16],
    };
    let expected = account
        .as_ref()
        .and_then(|a| a.hak.as_deref())
        .and_then(|h| b64_decode(h).ok())
        .unwrap_or_else(|| vec![0xff; 16]);
    let account = match account {
        Some(a) if ct_eq(&presented, &expected) => a,
        _ => {
            limiter.record_failure(&email);
            return Err(ApiError::NotFound);
        }
    };
    limiter.record_success(&email);
    session_answer(ctx, &account).await
}

/// The `us` answer: `csid` once the account has an RSA key, else `tsid` (the client then
/// uploads a key pair).
async fn session_answer(ctx: &Ctx<'_>, account: &Account) -> ApiResult<Value> {
    let agent = ctx.user_agent.as_deref();
    match (&account.pubk, &account.privk) {
        (Some(pubk), Some(privk)) => {
            let csid = sessions::create_csid(ctx.state, &account.u, pubk, agent).await?;
            Ok(json!({"k": account.k, "privk": privk, "csid": csid, "u": account.u}))
        }
        _ => {
            let ts = crate::crypto::mega::b64_decode_array::<32>(&account.ts, "ts")
                .map_err(|_| ApiError::Internal)?;
            let tsid = sessions::create_tsid(ctx.state, &account.u, &ts, agent).await?;
            Ok(json!({"k": account.k, "tsid": tsid, "u": account.u}))
        }
    }
}

/// `us` with a user handle and no auth key resumes an account still being registered. Once
/// the account has an e-mail, only the password opens it.
async fn ephemeral_login(ctx: &Ctx<'_>, user: &str) -> ApiResult<Value> {
    if !super::api::is_handle(user, 11) {
        return Err(ApiError::Args);
    }
    let account = load(ctx.state, user)?;
    if account.email.is_some() {
        return Err(ApiError::NotFound);
    }
    session_answer(ctx, &account).await
}

/// `up`: without a session, creates an ephemeral account from `k` and `ts` (§7.1 step 1);
/// with one, sets the RSA key pair once (`pubk` + `privk`) and name attributes.
pub async fn update_user(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    match &ctx.auth {
        None => create_ephemeral(ctx, cmd).await,
        Some(auth) => {
            let _guard = ctx.state.store.lock().await;
            let mut account = load(ctx.state, &auth.uh)?;
            if cmd.contains_key("k") || cmd.contains_key("uh") {
                // Password change is not part of this server yet.
                return Err(ApiError::Args);
            }
            match (opt_str(cmd, "pubk")?, opt_str(cmd, "privk")?) {
                (Some(pubk), Some(privk)) => {
                    if account.pubk.is_some() {
                        return Err(ApiError::Exist);
                    }
                    MegaPublicKey::from_b64(pubk).map_err(|_| ApiError::Args)?;
                    let wrapped = b64_decode(privk).map_err(|_| ApiError::Args)?;
                    if wrapped.is_empty() || wrapped.len() % 16 != 0 || wrapped.len() > 8192 {
                        return Err(ApiError::Args);
                    }
                    account.pubk = Some(pubk.to_string());
                    account.privk = Some(privk.to_string());
                }
                (None, None) => {}
                _ => return Err(ApiError::Args),
            }
            for attr in ["firstname", "lastname"] {
                if let Some(value) = opt_str(cmd, attr)? {
                    if value.len() > 1024 {
                        return Err(ApiError::Args);
                    }
                    account.attrs.insert(attr.to_string(), value.to_string());
                }
            }
            let mut writes = Writes::new();
            save(&mut writes, &account);
            ctx.state.store.apply(writes).await?;
            Ok(json!(account.u))
        }
    }
}

async fn create_ephemeral(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    if ctx.state.config.signup == SignupPolicy::Closed {
        return Err(ApiError::Access);
    }
    let k = b64_arg::<16>(cmd, "k")?;
    let ts = b64_arg::<32>(cmd, "ts")?;
    let _guard = ctx.state.store.lock().await;
    let uh = loop {
        let uh = random_handle::<8>();
        if !ctx.state.store.contains(&keys::account(&uh))? {
            break uh;
        }
    };
    let roots = [nodes::TYPE_ROOT, nodes::TYPE_INBOX, nodes::TYPE_RUBBISH]
        .map(|t| Node::new_root(t, now()));
    let account = Account {
        u: uh.clone(),
        email: None,
        name: None,
        k: b64_encode(&k),
        ts: b64_encode(&ts),
        salt: None,
        hak: None,
        pubk: None,
        privk: None,
        since: now(),
        quota: ctx.state.config.default_quota,
        used: 0,
        seq: 0,
        roots: [roots[0].h.clone(), roots[1].h.clone(), roots[2].h.clone()],
        attrs: BTreeMap::new(),
    };
    let mut writes = Writes::new();
    for root in &roots {
        nodes::put_node(&mut writes, &uh, root);
    }
    save(&mut writes, &account);
    ctx.state.store.apply(writes).await?;
    tracing::info!(uh, "ephemeral account created");
    Ok(json!(uh))
}

/// A registration waiting for its confirmation code.
#[derive(Serialize, Deserialize)]
struct PendingSignup {
    uh: String,
    email: String,
    name: String,
    salt: String,
    hak: String,
    k: String,
    created: i64,
}

const CONFIRM_PREFIX: &[u8] = b"ConfirmCodeV2";
const CONFIRM_TOKEN_LEN: usize = 15;
const CONFIRM_MAC_LEN: usize = 8;
/// How long a confirmation code stays valid.
const CONFIRM_TTL_SECS: i64 = 7 * 24 * 3600;

fn b64_utf8_arg(cmd: &Map<String, Value>, key: &str, max: usize) -> ApiResult<String> {
    let bytes = b64_decode(str_arg(cmd, key)?).map_err(|_| ApiError::Args)?;
    let s = String::from_utf8(bytes).map_err(|_| ApiError::Args)?;
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(ApiError::Args);
    }
    Ok(s)
}

/// `uc2`: the ephemeral account asks to become a v2 account with an e-mail and password.
/// MEGA would e-mail a confirmation link; with open signup we answer the confirmation code
/// itself (base64), which the client passes to `ud2`. The code has MEGA's layout:
/// `"ConfirmCodeV2" ‖ token(15) ‖ email ‖ '\t' ‖ name ‖ check(8)`.
pub async fn send_signup_link(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let auth = ctx.auth()?;
    if ctx.state.config.signup == SignupPolicy::Closed {
        return Err(ApiError::Access);
    }
    if cmd.get("v").and_then(Value::as_i64) != Some(2) {
        return Err(ApiError::Args);
    }
    let name = b64_utf8_arg(cmd, "n", 256)?;
    let email = normalize_email(&b64_utf8_arg(cmd, "m", 254)?)?;
    let crv = b64_arg::<16>(cmd, "crv")?;
    let hak = b64_arg::<16>(cmd, "hak")?;
    let k = b64_arg::<16>(cmd, "k")?;
    let account = load(ctx.state, &auth.uh)?;
    if account.email.is_some() || by_email(ctx.state, &email)?.is_some() {
        return Err(ApiError::Exist);
    }
    let token = crate::crypto::random_array::<CONFIRM_TOKEN_LEN>();
    let check = ctx
        .state
        .secret
        .mac("signup confirmation", &[&token, email.as_bytes()]);
    let pending = PendingSignup {
        uh: auth.uh.clone(),
        email: email.clone(),
        name: name.clone(),
        salt: b64_encode(&v2_salt(&crv)),
        hak: b64_encode(&hak),
        k: b64_encode(&k),
        created: now(),
    };
    let mut writes = Writes::new();
    writes.put(keys::confirmation(&b64_encode(&token)), &pending);
    ctx.state.store.apply(writes).await?;
    let mut code = Vec::with_capacity(64 + email.len() + name.len());
    code.extend_from_slice(CONFIRM_PREFIX);
    code.extend_from_slice(&token);
    code.extend_from_slice(email.as_bytes());
    code.push(b'\t');
    code.extend_from_slice(name.as_bytes());
    code.extend_from_slice(&check[..CONFIRM_MAC_LEN]);
    tracing::info!(uh = auth.uh, "signup confirmation code issued");
    Ok(json!(b64_encode(&code)))
}

/// `ud2`: confirms a registration. Answers `[email b64, name b64, user handle, 2]`.
pub async fn confirm_signup(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let code = b64_decode(str_arg(cmd, "c")?).map_err(|_| ApiError::Args)?;
    let header = CONFIRM_PREFIX.len() + CONFIRM_TOKEN_LEN;
    if code.len() < header + CONFIRM_MAC_LEN || !code.starts_with(CONFIRM_PREFIX) {
        return Err(ApiError::Args);
    }
    let token = &code[CONFIRM_PREFIX.len()..header];
    let key = keys::confirmation(&b64_encode(token));
    let _guard = ctx.state.store.lock().await;
    let pending: PendingSignup = ctx.state.store.get(&key)?.ok_or(ApiError::NotFound)?;
    let check = ctx
        .state
        .secret
        .mac("signup confirmation", &[token, pending.email.as_bytes()]);
    if !ct_eq(
        &code[code.len() - CONFIRM_MAC_LEN..],
        &check[..CONFIRM_MAC_LEN],
    ) {
        return Err(ApiError::NotFound);
    }
    let mut writes = Writes::new();
    if now() - pending.created > CONFIRM_TTL_SECS {
        writes.remove(key);
        ctx.state.store.apply(writes).await?;
        return Err(ApiError::Expired);
    }
    let mut account = load(ctx.state, &pending.uh)?;
    if account.email.is_some() || by_email(ctx.state, &pending.email)?.is_some() {
        return Err(ApiError::Exist);
    }
    account.email = Some(pending.email.clone());
    account.name = Some(pending.name.clone());
    account.salt = Some(pending.salt);
    account.hak = Some(pending.hak);
    account.k = pending.k;
    save(&mut writes, &account);
    writes.put(keys::email(&pending.email), &account.u);
    writes.remove(key);
    ctx.state.store.apply(writes).await?;
    tracing::info!(uh = account.u, "account confirmed");
    Ok(json!([
        b64_encode(pending.email.as_bytes()),
        b64_encode(pending.name.as_bytes()),
        account.u,
        2
    ]))
}

/// `ug`: the logged-in user's record.
pub async fn user_info(ctx: &Ctx<'_>) -> ApiResult<Value> {
    let account = load(ctx.state, &ctx.auth()?.uh)?;
    let mut out = json!({
        "u": account.u,
        "k": account.k,
        "since": account.since,
        "s": 1,
        "c": 1,
        // A string: go-mega's user record types `ts` so.
        "ts": account.ts,
        "aav": 2,
    });
    let obj = out.as_object_mut().expect("object literal");
    for (key, value) in [
        ("email", &account.email),
        ("name", &account.name),
        ("pubk", &account.pubk),
        ("privk", &account.privk),
        ("aas", &account.salt),
    ] {
        if let Some(v) = value {
            obj.insert(key.to_string(), json!(v));
        }
    }
    for (key, value) in &account.attrs {
        obj.insert(key.clone(), json!(value));
    }
    Ok(out)
}

/// `uq`: storage used and allowed. `cstrgn` has `[bytes, files, folders, 0, 0]` per root.
pub async fn quota(ctx: &Ctx<'_>) -> ApiResult<Value> {
    let account = load(ctx.state, &ctx.auth()?.uh)?;
    let per_root = nodes::usage_per_root(ctx.state, &account)?;
    let cstrgn: Map<String, Value> = per_root
        .into_iter()
        .map(|(root, (bytes, files, folders))| (root, json!([bytes, files, folders, 0, 0])))
        .collect();
    Ok(json!({
        "mstrg": account.quota,
        "cstrg": account.used,
        "cstrgn": cstrgn,
        "caxfer": 0,
        "csxfer": 0,
        "srvratio": 0,
        "utype": 0,
    }))
}
