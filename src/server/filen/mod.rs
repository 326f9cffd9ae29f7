//! The Filen API subset, on the same listener and over the same stores as the MEGA side.
//!
//! Filen's three host families share one listener here because their paths never collide:
//! the gateway and ingest answer under `/v3/…`, egest serves chunks at
//! `/<region>/<bucket>/<uuid>/<index>`. Every gateway and ingest answer is HTTP 200 with
//! `{status, message, code, data}`: the SDK retries any other status every second for an hour.
//!
//! Zero knowledge as on the MEGA side: the server keeps the account's salt, a hash of the login
//! password (itself derived from the password by PBKDF2 or Argon2id), the client-encrypted
//! master-key list, key pair and DEK, encrypted names and metadata, name hashes, and the
//! ciphertext chunks. Layout:
//! - [`accounts`]: registration, auth info, login, API keys, keys, password change;
//! - [`items`]: folders and files (listing, create, rename, move, trash, delete);
//! - [`chunks`]: ingest uploads, upload completion, egest downloads.
//!
//! Records live in the MEGA side's sled store under prefixes of their own (`f…/`), chunks in its
//! blob store as blobs `fc-<uuid>-<index>`.

pub mod accounts;
pub mod chunks;
pub mod items;
pub mod shares;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::errors::ApiError;

/// Largest request body: one encrypted chunk (1 MiB + 28) with room to spare; JSON bodies are
/// far smaller.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// A Filen API error: the snake_case `code` clients switch on and a human message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilenError {
    pub code: &'static str,
    pub message: &'static str,
}

impl FilenError {
    pub const fn new(code: &'static str, message: &'static str) -> Self {
        FilenError { code, message }
    }
}

/// The codes the SDKs know (reference §9.3) and a few of our own, all snake_case.
pub mod codes {
    use super::FilenError;
    pub const API_KEY: FilenError = FilenError::new("api_key_not_found", "API key not found.");
    pub const CREDENTIALS: FilenError = FilenError::new(
        "email_or_password_wrong",
        "Email address or password wrong.",
    );
    pub const WRONG_PASSWORD: FilenError =
        FilenError::new("wrong_password", "Current password is wrong.");
    pub const PARAMS: FilenError = FilenError::new("invalid_params", "Invalid parameters.");
    pub const INTERNAL: FilenError = FilenError::new("internal_error", "Internal error.");
    pub const RATE_LIMITED: FilenError = FilenError::new("rate_limited", "Too many requests.");
    pub const FOLDER_NOT_FOUND: FilenError =
        FilenError::new("folder_not_found", "Folder not found.");
    pub const FILE_NOT_FOUND: FilenError = FilenError::new("file_not_found", "File not found.");
    pub const INVALID_FOLDER: FilenError = FilenError::new("invalid_folder", "Invalid folder.");
    pub const STORAGE: FilenError =
        FilenError::new("max_storage_reached", "Maximum storage reached.");
    pub const EMAIL_TAKEN: FilenError = FilenError::new(
        "email_address_already_registered",
        "This email address is already registered.",
    );
    pub const REGISTRATION_CLOSED: FilenError =
        FilenError::new("registration_disabled", "Registration is disabled.");
    pub const UUID_TAKEN: FilenError = FilenError::new("uuid_exists", "This UUID is taken.");
    pub const NAME_TAKEN: FilenError = FilenError::new(
        "name_already_exists",
        "An item with this name already exists here.",
    );
    pub const CIRCULAR: FilenError = FilenError::new(
        "cannot_move_folder_into_itself",
        "A folder cannot move into itself.",
    );
    pub const HASH: FilenError =
        FilenError::new("chunk_hash_mismatch", "The chunk does not match its hash.");
    pub const UPLOAD_KEY: FilenError =
        FilenError::new("invalid_upload_key", "The upload key does not match.");
    pub const CHUNKS: FilenError = FilenError::new(
        "upload_chunks_missing",
        "Not every chunk of the upload arrived.",
    );
    pub const ENDPOINT: FilenError = FilenError::new("endpoint_not_found", "Endpoint not found.");
    pub const BASE_FOLDER: FilenError = FilenError::new(
        "cannot_change_base_folder",
        "The base folder cannot be changed.",
    );
}

impl From<ApiError> for FilenError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Args => codes::PARAMS,
            ApiError::TooMany | ApiError::RateLimit => codes::RATE_LIMITED,
            _ => codes::INTERNAL,
        }
    }
}

impl From<std::io::Error> for FilenError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "blob store failure");
        codes::INTERNAL
    }
}

pub type FResult<T> = Result<T, FilenError>;

/// What a handler gets: the state and the account the request's API key names, if any.
pub struct FCtx<'a> {
    pub state: &'a AppState,
    pub account: Option<u64>,
}

impl FCtx<'_> {
    /// The authenticated account, or `api_key_not_found`.
    pub fn user(&self) -> FResult<u64> {
        self.account.ok_or(codes::API_KEY)
    }
}

fn envelope(result: FResult<Value>) -> Response {
    let body = match result {
        Ok(data) => json!({"status": true, "message": "OK", "code": "ok", "data": data}),
        Err(e) => json!({"status": false, "message": e.message, "code": e.code, "data": null}),
    };
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty() && *k != "anonymous")
}

/// Everything under `/v3/`: the gateway's JSON endpoints and the ingest upload.
pub async fn gateway(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if path == "health" {
        return "OK".into_response();
    }
    let Ok(body) = body else {
        return envelope(Err(codes::PARAMS));
    };
    // A bad key only matters to endpoints that need an account; those answer api_key_not_found.
    let account = match bearer(&headers) {
        Some(key) => accounts::authenticate(&state, key).ok().flatten(),
        None => None,
    };
    let ctx = FCtx {
        state: &state,
        account,
    };
    if path == "upload" && method == Method::POST {
        return envelope(chunks::ingest(&ctx, query.as_deref(), body).await);
    }
    let args = if method == Method::POST {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ if body.is_empty() => json!({}),
            _ => return envelope(Err(codes::PARAMS)),
        }
    } else {
        json!({})
    };
    tracing::debug!(endpoint = %path, "filen request");
    envelope(dispatch(&ctx, &path, &args).await)
}

async fn dispatch(ctx: &FCtx<'_>, path: &str, args: &Value) -> FResult<Value> {
    match path {
        "register" => accounts::register(ctx, args).await,
        "auth/info" => accounts::auth_info(ctx, args).await,
        "login" => accounts::login(ctx, args).await,
        "user/info" => accounts::user_info(ctx).await,
        "user/baseFolder" => accounts::base_folder(ctx).await,
        "user/account" => accounts::account(ctx).await,
        "user/masterKeys" => accounts::master_keys(ctx, args).await,
        "user/keyPair/info" => accounts::key_pair_info(ctx).await,
        "user/keyPair/set" | "user/keyPair/update" => accounts::set_key_pair(ctx, args).await,
        "user/dek" => accounts::dek(ctx, args).await,
        "user/publicKey" => accounts::public_key(ctx, args).await,
        "user/lock" => accounts::lock(ctx, args).await,
        "user/settings/password/change" => accounts::change_password(ctx, args).await,
        "dir/content" => items::content(ctx, args).await,
        "dir" => items::dir_info(ctx, args).await,
        "file" => items::file_info(ctx, args).await,
        "dir/present" | "file/present" => items::present(ctx, args).await,
        "dir/exists" => items::exists(ctx, args, true).await,
        "file/exists" => items::exists(ctx, args, false).await,
        "dir/create" => items::create_dir(ctx, args).await,
        "dir/rename" | "dir/metadata" => items::rename(ctx, args, true).await,
        "file/rename" | "file/metadata" => items::rename(ctx, args, false).await,
        "dir/move" => items::move_item(ctx, args, true).await,
        "file/move" => items::move_item(ctx, args, false).await,
        "dir/trash" => items::trash(ctx, args, true, true).await,
        "file/trash" => items::trash(ctx, args, false, true).await,
        "dir/restore" => items::trash(ctx, args, true, false).await,
        "file/restore" => items::trash(ctx, args, false, false).await,
        "dir/delete/permanent" => items::delete_permanent(ctx, args, true).await,
        "file/delete/permanent" => items::delete_permanent(ctx, args, false).await,
        "trash/empty" => items::empty_trash(ctx).await,
        "dir/download" => items::download_tree(ctx, args).await,
        "dir/size" => items::size(ctx, args).await,
        "search/add" => {
            ctx.user()?;
            let n = args
                .get("items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Ok(json!({"added": n, "skipped": 0}))
        }
        "item/share" => shares::share(ctx, args).await,
        "shared/in" => shares::shared_in(ctx, args).await,
        "dir/shared" => shares::receivers(ctx, args, false).await,
        "item/shared" => shares::receivers(ctx, args, true).await,
        "item/shared/rename" => shares::rename(ctx, args).await,
        "item/shared/in/remove" => shares::remove(ctx, args, true).await,
        "item/shared/out/remove" => shares::remove(ctx, args, false).await,
        // Public links are not offered by this server: every item reports none.
        "dir/linked" | "item/linked" => {
            ctx.user()?;
            Ok(json!({"link": false, "links": []}))
        }
        "upload/done" => chunks::done(ctx, args).await,
        "upload/empty" => chunks::empty(ctx, args).await,
        _ => Err(codes::ENDPOINT),
    }
}

/// A string argument, or `invalid_params`.
pub fn str_arg<'a>(args: &'a Value, key: &str) -> FResult<&'a str> {
    args.get(key).and_then(Value::as_str).ok_or(codes::PARAMS)
}

/// An unsigned number argument, given as a number or as a decimal string.
pub fn u64_arg(args: &Value, key: &str) -> FResult<u64> {
    match args.get(key) {
        Some(Value::Number(n)) => n.as_u64().ok_or(codes::PARAMS),
        Some(Value::String(s)) => s.parse().map_err(|_| codes::PARAMS),
        _ => Err(codes::PARAMS),
    }
}

/// An opaque client-encrypted string: non-empty and bounded, so one account cannot fill the
/// metadata store with a single field.
pub fn blob_arg<'a>(args: &'a Value, key: &str, max: usize) -> FResult<&'a str> {
    let s = str_arg(args, key)?;
    if s.is_empty() || s.len() > max {
        return Err(codes::PARAMS);
    }
    Ok(s)
}

/// A client-made item uuid (`xxxxxxxx-xxxx-…`, 36 characters of hex and hyphens), lower-cased.
pub fn uuid_arg(args: &Value, key: &str) -> FResult<String> {
    let s = str_arg(args, key)?;
    if is_uuid(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(codes::PARAMS)
    }
}

pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A fresh random (v4) uuid, for the server-made base folder.
pub fn new_uuid() -> String {
    let mut b = crate::crypto::random_array::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
