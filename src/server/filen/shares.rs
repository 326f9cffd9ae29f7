//! Items shared with other accounts (filen-reference §10). The sharer's client enumerates the
//! tree and sends one row per item and receiver, the item's metadata (name, and for files the
//! file key) encrypted to the receiver's RSA public key; the server keeps those rows as opaque
//! strings and lists them to the receiver, who downloads the same chunks from egest. The server
//! never sees a name or a key.
//!
//! Keys: `fsh/<receiver>/<uuid>` the row, `fsu/<uuid>/<receiver>` who receives an item (for
//! `item/shared`, which the sharer's client asks to keep receivers in step when it changes
//! something inside a shared folder).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::items::{self, MAX_META};
use super::{FCtx, FResult, FilenError, accounts, blob_arg, codes, str_arg, u64_arg, uuid_arg};
use crate::server::store::{Writes, now};

mod keys {
    pub fn row(receiver: u64, uuid: &str) -> Vec<u8> {
        format!("fsh/{receiver}/{uuid}").into_bytes()
    }
    pub fn rows(receiver: u64) -> Vec<u8> {
        format!("fsh/{receiver}/").into_bytes()
    }
    pub fn receiver(uuid: &str, receiver: u64) -> Vec<u8> {
        format!("fsu/{uuid}/{receiver}").into_bytes()
    }
    pub fn receivers(uuid: &str) -> Vec<u8> {
        format!("fsu/{uuid}/").into_bytes()
    }
}

#[derive(Serialize, Deserialize)]
struct Share {
    uuid: String,
    /// `none` for the top of a shared tree, else the (shared) parent folder's uuid.
    parent: String,
    sharer: u64,
    receiver: u64,
    /// Encrypted to the receiver's public key.
    metadata: String,
    timestamp: i64,
}

const NOT_SHARED: FilenError = FilenError::new("not_shared", "This item is not shared with you.");
const USER_NOT_FOUND: FilenError = FilenError::new("user_not_found", "User not found.");

/// `/v3/item/share {uuid, parent, email, type, metadata}`: shares one of the caller's items.
pub async fn share(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let parent = match str_arg(args, "parent")? {
        "none" => "none".to_string(),
        _ => uuid_arg(args, "parent")?,
    };
    let metadata = blob_arg(args, "metadata", MAX_META)?;
    let email = accounts::email_arg(args)?;
    let _guard = ctx.state.store.lock().await;
    let item = items::load(ctx.state, &uuid)?
        .filter(|i| i.owner == user && !i.trash)
        .ok_or(codes::FILE_NOT_FOUND)?;
    let receiver = accounts::by_email(ctx.state, &email)?
        .filter(|a| a.id != user && a.public_key.is_some())
        .ok_or(USER_NOT_FOUND)?;
    let mut writes = Writes::new();
    writes.put(
        keys::row(receiver.id, &item.uuid),
        &Share {
            uuid: item.uuid.clone(),
            parent,
            sharer: user,
            receiver: receiver.id,
            metadata: metadata.to_string(),
            timestamp: now(),
        },
    );
    writes.put(keys::receiver(&item.uuid, receiver.id), &());
    ctx.state.store.apply(writes).await?;
    Ok(json!({}))
}

/// `/v3/shared/in {uuid}`: `shared-in` lists the tops of the trees shared with the caller,
/// a folder's uuid its shared children.
pub async fn shared_in(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let wanted = match str_arg(args, "uuid")? {
        "shared-in" => "none".to_string(),
        _ => uuid_arg(args, "uuid")?,
    };
    let me = accounts::load(ctx.state, user)?;
    let mut uploads = Vec::new();
    let mut folders = Vec::new();
    for (_, share) in ctx.state.store.scan::<Share>(&keys::rows(user))? {
        if share.parent != wanted {
            continue;
        }
        let Some(item) = items::load(ctx.state, &share.uuid)?.filter(|i| !i.trash) else {
            continue;
        };
        let sharer = accounts::load(ctx.state, share.sharer)?;
        let common = json!({
            "uuid": item.uuid, "parent": share.parent, "metadata": share.metadata,
            "timestamp": share.timestamp, "sharerEmail": sharer.email, "sharerId": sharer.id,
            "receiverEmail": me.email, "receiverId": me.id, "writeAccess": 0,
        });
        let mut row = common.as_object().cloned().unwrap_or_default();
        match &item.file {
            Some(f) => {
                for (k, v) in [
                    ("type", json!("file")),
                    ("bucket", json!(f.bucket)),
                    ("region", json!(f.region)),
                    ("chunks", json!(f.chunks)),
                    ("size", json!(f.chunks_size)),
                    ("version", json!(f.version)),
                ] {
                    row.insert(k.into(), v);
                }
                uploads.push(Value::Object(row));
            }
            None => {
                for (k, v) in [
                    ("type", json!("folder")),
                    ("color", Value::Null),
                    ("is_sync", json!(0)),
                    ("is_default", json!(0)),
                ] {
                    row.insert(k.into(), v);
                }
                folders.push(Value::Object(row));
            }
        }
    }
    Ok(json!({"uploads": uploads, "folders": folders}))
}

/// `/v3/item/shared {uuid}` and `/v3/dir/shared {uuid}`: who receives the caller's item.
pub async fn receivers(ctx: &FCtx<'_>, args: &Value, with_id: bool) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    if items::load(ctx.state, &uuid)?.is_none_or(|i| i.owner != user) {
        return Ok(json!({"sharing": false, "users": []}));
    }
    let mut users = Vec::new();
    for key in ctx.state.store.scan_keys(&keys::receivers(&uuid))? {
        let id = std::str::from_utf8(&key)
            .ok()
            .and_then(|k| k.rsplit('/').next())
            .and_then(|id| id.parse().ok());
        let Some(account) = id.and_then(|id| accounts::load(ctx.state, id).ok()) else {
            continue;
        };
        let mut u = json!({"email": account.email, "publicKey": account.public_key});
        if with_id {
            u["id"] = json!(account.id);
        }
        users.push(u);
    }
    Ok(json!({"sharing": !users.is_empty(), "users": users}))
}

/// `/v3/item/shared/rename {uuid, receiverId, metadata}`: the sharer re-encrypted the
/// metadata of a shared item (renamed, or moved inside the shared tree).
pub async fn rename(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let receiver = u64_arg(args, "receiverId")?;
    let metadata = blob_arg(args, "metadata", MAX_META)?;
    let _guard = ctx.state.store.lock().await;
    let key = keys::row(receiver, &uuid);
    let mut share: Share = ctx
        .state
        .store
        .get(&key)?
        .filter(|s: &Share| s.sharer == user)
        .ok_or(NOT_SHARED)?;
    share.metadata = metadata.to_string();
    let mut writes = Writes::new();
    writes.put(key, &share);
    ctx.state.store.apply(writes).await?;
    Ok(json!({}))
}

/// `/v3/item/shared/in/remove {uuid}` (the receiver leaves) and `/v3/item/shared/out/remove
/// {uuid, receiverId}` (the sharer stops sharing): removes the row and every row below it.
pub async fn remove(ctx: &FCtx<'_>, args: &Value, as_receiver: bool) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let receiver = if as_receiver {
        user
    } else {
        u64_arg(args, "receiverId")?
    };
    let _guard = ctx.state.store.lock().await;
    let rows = ctx.state.store.scan::<Share>(&keys::rows(receiver))?;
    let top = rows
        .iter()
        .find(|(_, s)| s.uuid == uuid && (as_receiver || s.sharer == user))
        .ok_or(NOT_SHARED)?;
    let sharer = top.1.sharer;
    // The rows of the subtree: children name their parent.
    let mut gone = vec![uuid];
    let mut i = 0;
    while i < gone.len() {
        let parent = gone[i].clone();
        gone.extend(
            rows.iter()
                .filter(|(_, s)| s.parent == parent && s.sharer == sharer)
                .map(|(_, s)| s.uuid.clone()),
        );
        i += 1;
    }
    let mut writes = Writes::new();
    for uuid in &gone {
        writes.remove(keys::row(receiver, uuid));
        writes.remove(keys::receiver(uuid, receiver));
    }
    ctx.state.store.apply(writes).await?;
    Ok(json!({}))
}
