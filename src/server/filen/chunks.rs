//! File content: chunks arrive at ingest (`POST /v3/upload?uuid&index&parent&uploadKey&hash`),
//! become a file with `/v3/upload/done` (or `/v3/upload/empty` for no chunks), and leave
//! through egest (`GET /<region>/<bucket>/<uuid>/<index>`).
//!
//! An upload in progress is the record `fu/<uuid>`: owner, upload key, parent and the size of
//! every chunk received. Each chunk is checked against its SHA-512 and stored as its own blob,
//! made durable before it is acknowledged; nothing is listed until `upload/done` finds every
//! index from 0 to `chunks − 1`. Egest serves only chunks of finished files, without
//! authentication (the SDK sends none to egest hosts), and answers 404 for anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use super::accounts;
use super::items::{self, BUCKET, FileData, Item, MAX_META, REGION};
use super::{FCtx, FResult, blob_arg, codes, is_uuid, u64_arg, uuid_arg};
use crate::server::AppState;
use crate::server::api::query_pairs;
use crate::server::store::{Writes, now};

/// Plaintext chunk size and the GCM overhead (12-byte IV, 16-byte tag) of an encrypted chunk.
const CHUNK: usize = 1024 * 1024;
const OVERHEAD: usize = 28;
/// Most chunks one file may have (a 4 TiB file).
const MAX_CHUNKS: u64 = 4 * 1024 * 1024;

fn upload_key(uuid: &str) -> Vec<u8> {
    format!("fu/{uuid}").into_bytes()
}

fn blob_id(uuid: &str, index: u64) -> String {
    format!("fc-{uuid}-{index}")
}

#[derive(Serialize, Deserialize)]
struct Pending {
    owner: u64,
    upload_key: String,
    parent: String,
    /// Stored size of every chunk received, by index.
    chunks: BTreeMap<u64, u64>,
}

fn data_version(args: &Value) -> FResult<u8> {
    match u64_arg(args, "version")? {
        v @ 1..=3 => Ok(v as u8),
        _ => Err(codes::PARAMS),
    }
}

/// The ingest `POST /v3/upload?…` with one encrypted chunk as the body.
pub async fn ingest(ctx: &FCtx<'_>, query: Option<&str>, body: Bytes) -> FResult<Value> {
    let user = ctx.user()?;
    let q = query_pairs(query);
    let arg = |k: &str| q.get(k).map(String::as_str).ok_or(codes::PARAMS);
    let uuid = arg("uuid")?.to_ascii_lowercase();
    let parent = arg("parent")?.to_ascii_lowercase();
    let key = arg("uploadKey")?;
    let index: u64 = arg("index")?.parse().map_err(|_| codes::PARAMS)?;
    if !is_uuid(&uuid) || !is_uuid(&parent) || key.is_empty() || key.len() > 128 {
        return Err(codes::PARAMS);
    }
    if index >= MAX_CHUNKS || body.len() <= OVERHEAD || body.len() > CHUNK + OVERHEAD {
        return Err(codes::PARAMS);
    }
    if !arg("hash")?.eq_ignore_ascii_case(&hex::encode(Sha512::digest(&body))) {
        return Err(codes::HASH);
    }
    let state = ctx.state;
    // Claim the uuid for this upload before writing anything under its name.
    {
        let _guard = state.store.lock().await;
        items::target_folder(ctx, &parent)?;
        if items::load(state, &uuid)?.is_some() {
            return Err(codes::UUID_TAKEN);
        }
        let pending = state.store.get::<Pending>(&upload_key(&uuid))?;
        let account = accounts::load(state, user)?;
        let in_flight: u64 = pending.as_ref().map_or(0, |p| p.chunks.values().sum());
        if account.used + in_flight + body.len() as u64 > account.max_storage {
            return Err(codes::STORAGE);
        }
        match pending {
            Some(p) if p.owner != user || p.upload_key != key || p.parent != parent => {
                return Err(codes::UPLOAD_KEY);
            }
            Some(_) => {}
            None => {
                let mut writes = Writes::new();
                let p = Pending {
                    owner: user,
                    upload_key: key.to_string(),
                    parent: parent.clone(),
                    chunks: BTreeMap::new(),
                };
                writes.put(upload_key(&uuid), &p);
                state.store.apply(writes).await?;
            }
        }
    }
    let id = blob_id(&uuid, index);
    let len = body.len() as u64;
    state.blobs.write_temp(&id, 0, vec![body]).await?;
    state.blobs.seal_temp(&id, len).await?;
    state.blobs.publish(&id).await?;
    let _guard = state.store.lock().await;
    let mut p = state
        .store
        .get::<Pending>(&upload_key(&uuid))?
        .ok_or(codes::UPLOAD_KEY)?;
    p.chunks.insert(index, len);
    let mut writes = Writes::new();
    writes.put(upload_key(&uuid), &p);
    state.store.apply(writes).await?;
    Ok(json!({"bucket": BUCKET, "region": REGION}))
}

/// Adds a finished file under `parent`; a live file of the same name hash there is removed
/// (Filen's "a new upload supersedes the old file").
async fn publish_file(ctx: &FCtx<'_>, item: Item) -> FResult<()> {
    let state = ctx.state;
    let old = items::live_sibling(state, &item.parent, &item.name_hashed, false)?;
    let size = item.file.as_ref().map_or(0, |f| f.chunks_size);
    let mut writes = Writes::new();
    let mut account = accounts::load(state, item.owner)?;
    account.used += size;
    accounts::save(&mut writes, &account);
    items::put(&mut writes, &item);
    writes.remove(upload_key(&item.uuid));
    state.store.apply(writes).await?;
    if let Some(old) = old {
        items::purge(state, item.owner, vec![old]).await?;
    }
    Ok(())
}

fn file_fields(args: &Value) -> FResult<(String, String, String, String, u8)> {
    Ok((
        blob_arg(args, "name", MAX_META)?.to_string(),
        blob_arg(args, "size", MAX_META)?.to_string(),
        blob_arg(args, "mime", MAX_META)?.to_string(),
        blob_arg(args, "metadata", MAX_META)?.to_string(),
        data_version(args)?,
    ))
}

fn name_hashed(args: &Value) -> FResult<String> {
    let h = blob_arg(args, "nameHashed", 128)?;
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(codes::PARAMS);
    }
    Ok(h.to_ascii_lowercase())
}

/// `/v3/upload/done {uuid, name, nameHashed, size, chunks, mime, rm, metadata, version,
/// uploadKey}`.
pub async fn done(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let (name, size, mime, metadata, version) = file_fields(args)?;
    let hash = name_hashed(args)?;
    let chunks = u64_arg(args, "chunks")?;
    let rm = args.get("rm").and_then(Value::as_str).unwrap_or("");
    let key = super::str_arg(args, "uploadKey")?;
    let _guard = ctx.state.store.lock().await;
    if let Some(existing) = items::load(ctx.state, &uuid)? {
        // A retried completion of this very upload.
        if existing.owner == user && !existing.is_folder() {
            let f = existing.file.as_ref().expect("checked");
            return Ok(json!({"chunks": f.chunks, "size": f.chunks_size}));
        }
        return Err(codes::UUID_TAKEN);
    }
    let p = ctx
        .state
        .store
        .get::<Pending>(&upload_key(&uuid))?
        .filter(|p| p.owner == user && p.upload_key == key)
        .ok_or(codes::UPLOAD_KEY)?;
    if chunks == 0
        || p.chunks.len() as u64 != chunks
        || p.chunks.keys().next_back() != Some(&(chunks - 1))
    {
        return Err(codes::CHUNKS);
    }
    let parent = items::target_folder(ctx, &p.parent)?;
    let chunks_size = p.chunks.values().sum();
    let item = Item {
        uuid,
        owner: user,
        parent: parent.uuid,
        name,
        name_hashed: hash,
        file: Some(FileData {
            metadata,
            size,
            mime,
            rm: rm.chars().take(128).collect(),
            version,
            chunks,
            chunks_size,
            region: REGION.into(),
            bucket: BUCKET.into(),
        }),
        timestamp: now(),
        trash: false,
        favorited: false,
    };
    publish_file(ctx, item).await?;
    Ok(json!({"chunks": chunks, "size": chunks_size}))
}

/// `/v3/upload/empty {uuid, name, nameHashed, size, parent, mime, metadata, version}`.
pub async fn empty(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let (name, size, mime, metadata, version) = file_fields(args)?;
    let hash = name_hashed(args)?;
    let parent = uuid_arg(args, "parent")?;
    let _guard = ctx.state.store.lock().await;
    if let Some(existing) = items::load(ctx.state, &uuid)? {
        if existing.owner == user && !existing.is_folder() {
            return Ok(json!({"chunks": 0, "size": 0}));
        }
        return Err(codes::UUID_TAKEN);
    }
    let parent = items::target_folder(ctx, &parent)?;
    let item = Item {
        uuid,
        owner: user,
        parent: parent.uuid,
        name,
        name_hashed: hash,
        file: Some(FileData {
            metadata,
            size,
            mime,
            rm: String::new(),
            version,
            chunks: 0,
            chunks_size: 0,
            region: REGION.into(),
            bucket: BUCKET.into(),
        }),
        timestamp: now(),
        trash: false,
        favorited: false,
    };
    publish_file(ctx, item).await?;
    Ok(json!({"chunks": 0, "size": 0}))
}

/// Removes a file's chunk blobs (after its record is gone; a failure only leaks space).
pub async fn delete_chunks(state: &AppState, uuid: &str, chunks: u64) {
    for index in 0..chunks {
        if let Err(error) = state.blobs.delete(&blob_id(uuid, index)).await {
            tracing::warn!(%error, "could not remove a chunk blob");
        }
    }
}

/// Egest: `GET /<region>/<bucket>/<uuid>/<index>` answers the chunk exactly as uploaded.
pub async fn egest(
    State(state): State<Arc<AppState>>,
    Path((_region, _bucket, uuid, index)): Path<(String, String, String, String)>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found").into_response();
    let uuid = uuid.to_ascii_lowercase();
    let Ok(index) = index.parse::<u64>() else {
        return not_found();
    };
    if !is_uuid(&uuid) {
        return not_found();
    }
    match items::load(&state, &uuid) {
        Ok(Some(Item { file: Some(f), .. })) if index < f.chunks => {}
        Ok(_) => return not_found(),
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
    match state
        .blobs
        .read(&blob_id(&uuid, index), 0, CHUNK + OVERHEAD)
        .await
    {
        Ok(data) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            data,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => not_found(),
        Err(error) => {
            tracing::error!(%error, "reading a chunk failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}
