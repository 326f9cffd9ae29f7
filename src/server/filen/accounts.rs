//! Filen accounts: registration, `auth/info`, login and API keys, the stored key material
//! (master-key list, key pair, DEK, all encrypted by the client) and password change.
//!
//! The server holds SHA-512 of the login password. That value is itself a PBKDF2 (v2) or
//! Argon2id (v3) derivative of the password whose other half is the master key, so neither
//! what is stored nor what is sent unlocks anything.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

use super::items::{self, Item};
use super::{FCtx, FResult, blob_arg, codes, str_arg, u64_arg};
use crate::server::AppState;
use crate::server::SignupPolicy;
use crate::server::accounts::normalize_email;
use crate::server::secret::ct_eq;
use crate::server::store::{Writes, now};

/// Longest key-material string accepted (an encrypted RSA-4096 private key is ~4.3 KB).
const MAX_KEY_FIELD: usize = 64 * 1024;

pub mod keys {
    pub fn account(id: u64) -> Vec<u8> {
        format!("fa/{id}").into_bytes()
    }
    pub fn email(email: &str) -> Vec<u8> {
        format!("fe/{email}").into_bytes()
    }
    pub fn api_key(hash: &str) -> Vec<u8> {
        format!("fk/{hash}").into_bytes()
    }
    pub const NEXT_ID: &[u8] = b"fm/next_id";
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Account {
    pub id: u64,
    pub email: String,
    pub auth_version: u8,
    pub salt: String,
    /// Hex SHA-512 of the login password.
    pub password_hash: String,
    /// The client-encrypted `k1|k2|…` list (auth v1/v2).
    pub master_keys: Option<String>,
    pub public_key: Option<String>,
    /// Encrypted by the client under a master key or the DEK.
    pub private_key: Option<String>,
    /// v3: the DEK wrapped by the KEK.
    pub dek: Option<String>,
    pub base_folder: String,
    pub used: u64,
    pub max_storage: u64,
    pub created: i64,
}

pub fn load(state: &AppState, id: u64) -> FResult<Account> {
    state.store.get(&keys::account(id))?.ok_or(codes::API_KEY)
}

pub fn save(writes: &mut Writes, account: &Account) {
    writes.put(keys::account(account.id), account);
}

pub fn by_email(state: &AppState, email: &str) -> FResult<Option<Account>> {
    match state.store.get::<u64>(&keys::email(email))? {
        Some(id) => Ok(Some(load(state, id)?)),
        None => Ok(None),
    }
}

fn password_hash(login_password: &str) -> String {
    hex::encode(Sha512::digest(login_password.as_bytes()))
}

fn key_hash(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

/// The account an API key belongs to (`None` for an unknown key).
pub fn authenticate(state: &AppState, api_key: &str) -> FResult<Option<u64>> {
    if api_key.len() > 256 {
        return Ok(None);
    }
    Ok(state.store.get::<u64>(&keys::api_key(&key_hash(api_key)))?)
}

fn new_api_key(writes: &mut Writes, id: u64) -> String {
    let key = crate::crypto::filen::random_hex(32);
    writes.put(keys::api_key(&key_hash(&key)), &id);
    key
}

pub fn email_arg(args: &Value) -> FResult<String> {
    normalize_email(str_arg(args, "email")?).map_err(|_| codes::PARAMS)
}

fn auth_version_arg(args: &Value) -> FResult<u8> {
    match u64_arg(args, "authVersion")? {
        v @ (2 | 3) => Ok(v as u8),
        _ => Err(codes::PARAMS),
    }
}

/// `/v3/register {email, password, salt, authVersion}`: creates the account and its base
/// folder at once (there is no e-mail to confirm through).
pub async fn register(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let state = ctx.state;
    if state.config.signup == SignupPolicy::Closed {
        return Err(codes::REGISTRATION_CLOSED);
    }
    let email = email_arg(args)?;
    let password = blob_arg(args, "password", 1024)?;
    let salt = blob_arg(args, "salt", 1024)?;
    let auth_version = auth_version_arg(args)?;
    let _guard = state.store.lock().await;
    if by_email(state, &email)?.is_some() {
        return Err(codes::EMAIL_TAKEN);
    }
    let id = state.store.get::<u64>(keys::NEXT_ID)?.unwrap_or(1);
    let base = Item::base_folder(id);
    let account = Account {
        id,
        email: email.clone(),
        auth_version,
        salt: salt.to_string(),
        password_hash: password_hash(password),
        master_keys: None,
        public_key: None,
        private_key: None,
        dek: None,
        base_folder: base.uuid.clone(),
        used: 0,
        max_storage: state.config.default_quota,
        created: now(),
    };
    let mut writes = Writes::new();
    writes.put(keys::NEXT_ID.to_vec(), &(id + 1));
    writes.put(keys::email(&email), &id);
    save(&mut writes, &account);
    items::put(&mut writes, &base);
    state.store.apply(writes).await?;
    tracing::info!(id, "filen account registered");
    Ok(Value::Null)
}

/// `/v3/auth/info {email}`: the derivation to run. An unknown address gets a v2 answer with a
/// salt derived from it under the server secret, stable across calls, so the answer does not
/// tell whether the account exists.
pub async fn auth_info(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let email = email_arg(args)?;
    let fake = ctx
        .state
        .secret
        .mac("filen auth info salt", &[email.as_bytes()]);
    Ok(match by_email(ctx.state, &email)? {
        Some(a) => {
            json!({"email": email, "authVersion": a.auth_version, "salt": a.salt, "id": a.id})
        }
        None => {
            let mut salt = hex::encode(fake);
            salt = salt.repeat(4);
            json!({"email": email, "authVersion": 2, "salt": salt, "id": 0})
        }
    })
}

/// `/v3/login {email, password, twoFactorCode, authVersion}` → a new API key and the stored
/// key material.
pub async fn login(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let state = ctx.state;
    let email = email_arg(args)?;
    let password = str_arg(args, "password")?;
    let limiter_key = format!("filen:{email}");
    if !state.limiter.allowed(&limiter_key) {
        return Err(codes::RATE_LIMITED);
    }
    let _guard = state.store.lock().await;
    let account = by_email(state, &email)?;
    let given = password_hash(password);
    let Some(account) = account.filter(|a| ct_eq(a.password_hash.as_bytes(), given.as_bytes()))
    else {
        state.limiter.record_failure(&limiter_key);
        return Err(codes::CREDENTIALS);
    };
    state.limiter.record_success(&limiter_key);
    let mut writes = Writes::new();
    let api_key = new_api_key(&mut writes, account.id);
    state.store.apply(writes).await?;
    Ok(json!({
        "apiKey": api_key,
        "masterKeys": account.master_keys,
        "publicKey": account.public_key,
        "privateKey": account.private_key,
        "dek": account.dek,
    }))
}

pub async fn user_info(ctx: &FCtx<'_>) -> FResult<Value> {
    let a = load(ctx.state, ctx.user()?)?;
    Ok(json!({
        "id": a.id, "email": a.email, "isPremium": 0, "maxStorage": a.max_storage,
        "storageUsed": a.used, "avatarURL": "", "baseFolderUUID": a.base_folder,
    }))
}

pub async fn base_folder(ctx: &FCtx<'_>) -> FResult<Value> {
    let a = load(ctx.state, ctx.user()?)?;
    Ok(json!({"uuid": a.base_folder}))
}

pub async fn account(ctx: &FCtx<'_>) -> FResult<Value> {
    let a = load(ctx.state, ctx.user()?)?;
    Ok(json!({
        "email": a.email, "storage": a.used, "maxStorage": a.max_storage, "isPremium": 0,
        "personal": {}, "subs": [], "invoices": [],
    }))
}

/// `/v3/user/masterKeys {masterKeys}`: stores the posted list when the account has none, and
/// always answers the stored one.
pub async fn master_keys(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let id = ctx.user()?;
    let posted = blob_arg(args, "masterKeys", MAX_KEY_FIELD)?;
    let _guard = ctx.state.store.lock().await;
    let mut a = load(ctx.state, id)?;
    if a.master_keys.is_none() {
        a.master_keys = Some(posted.to_string());
        let mut writes = Writes::new();
        save(&mut writes, &a);
        ctx.state.store.apply(writes).await?;
    }
    Ok(json!({"keys": a.master_keys}))
}

pub async fn key_pair_info(ctx: &FCtx<'_>) -> FResult<Value> {
    let a = load(ctx.state, ctx.user()?)?;
    Ok(json!({"publicKey": a.public_key, "privateKey": a.private_key}))
}

/// `keyPair/set` and `keyPair/update {publicKey, privateKey}`.
pub async fn set_key_pair(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let id = ctx.user()?;
    let public = blob_arg(args, "publicKey", MAX_KEY_FIELD)?;
    let private = blob_arg(args, "privateKey", MAX_KEY_FIELD)?;
    let _guard = ctx.state.store.lock().await;
    let mut a = load(ctx.state, id)?;
    a.public_key = Some(public.to_string());
    a.private_key = Some(private.to_string());
    let mut writes = Writes::new();
    save(&mut writes, &a);
    ctx.state.store.apply(writes).await?;
    Ok(Value::Null)
}

/// `GET /v3/user/dek` answers the stored DEK; `POST {dek}` stores one.
pub async fn dek(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let id = ctx.user()?;
    let Some(posted) = args.get("dek") else {
        let a = load(ctx.state, id)?;
        return Ok(json!({"dek": a.dek}));
    };
    let posted = posted
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= MAX_KEY_FIELD);
    let posted = posted.ok_or(codes::PARAMS)?;
    let _guard = ctx.state.store.lock().await;
    let mut a = load(ctx.state, id)?;
    a.dek = Some(posted.to_string());
    let mut writes = Writes::new();
    save(&mut writes, &a);
    ctx.state.store.apply(writes).await?;
    Ok(Value::Null)
}

/// `/v3/user/publicKey {email}`: another user's public key, for sharing.
pub async fn public_key(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    ctx.user()?;
    let email = email_arg(args)?;
    match by_email(ctx.state, &email)?.and_then(|a| a.public_key) {
        Some(key) => Ok(json!({"publicKey": key})),
        None => Err(super::FilenError::new("user_not_found", "User not found.")),
    }
}

/// `/v3/user/lock`: the SDK brackets logins and writes with it and waits for `acquired`. The
/// server serializes every write itself, so the lock grants at once.
pub async fn lock(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    ctx.user()?;
    let resource = args.get("resource").cloned().unwrap_or(Value::Null);
    Ok(json!({
        "acquired": true, "released": true, "refreshed": true,
        "resource": resource, "status": "locked",
    }))
}

/// `/v3/user/settings/password/change {password, currentPassword, authVersion, salt,
/// masterKeys}`: replaces salt, password hash and the key list (v3: the wrapped DEK) and
/// answers a new API key.
pub async fn change_password(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let id = ctx.user()?;
    let password = blob_arg(args, "password", 1024)?;
    let current = str_arg(args, "currentPassword")?;
    let salt = blob_arg(args, "salt", 1024)?;
    let auth_version = auth_version_arg(args)?;
    let keys = blob_arg(args, "masterKeys", MAX_KEY_FIELD)?;
    let _guard = ctx.state.store.lock().await;
    let mut a = load(ctx.state, id)?;
    if !ct_eq(
        a.password_hash.as_bytes(),
        password_hash(current).as_bytes(),
    ) {
        return Err(codes::WRONG_PASSWORD);
    }
    a.password_hash = password_hash(password);
    a.salt = salt.to_string();
    a.auth_version = auth_version;
    if auth_version == 3 {
        a.dek = Some(keys.to_string());
    } else {
        a.master_keys = Some(keys.to_string());
    }
    let mut writes = Writes::new();
    save(&mut writes, &a);
    let api_key = new_api_key(&mut writes, id);
    ctx.state.store.apply(writes).await?;
    Ok(json!({"newAPIKey": api_key}))
}
