//! Folders and files: what the server knows of them is their uuid (made by the client), owner,
//! parent, the client-encrypted name or metadata, the name hash siblings are compared by, and
//! for files the chunk count, stored size, data version and where the chunks are.
//!
//! Keys: `fi/<uuid>` the item, `fc/<parent>/<uuid>` the children index, `fo/<owner>/<uuid>`
//! the owner index (for the trash). A trashed item keeps its parent (restore puts it back) and
//! is left out of its parent's listing.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::accounts;
use super::{FCtx, FResult, blob_arg, codes, str_arg, uuid_arg};
use crate::server::AppState;
use crate::server::store::{Writes, now};

/// Longest encrypted name or metadata string accepted.
pub const MAX_META: usize = 16 * 1024;
/// Region and bucket handed out for chunks; egest serves any, since chunks are found by uuid.
pub const REGION: &str = "de-1";
pub const BUCKET: &str = "filen-1";

pub mod keys {
    pub fn item(uuid: &str) -> Vec<u8> {
        format!("fi/{uuid}").into_bytes()
    }
    pub fn child(parent: &str, uuid: &str) -> Vec<u8> {
        format!("fc/{parent}/{uuid}").into_bytes()
    }
    pub fn children(parent: &str) -> Vec<u8> {
        format!("fc/{parent}/").into_bytes()
    }
    pub fn owned(owner: u64, uuid: &str) -> Vec<u8> {
        format!("fo/{owner}/{uuid}").into_bytes()
    }
    pub fn owned_all(owner: u64) -> Vec<u8> {
        format!("fo/{owner}/").into_bytes()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FileData {
    /// File metadata JSON encrypted under a master key / the DEK.
    pub metadata: String,
    /// Size and mime encrypted under the file key.
    pub size: String,
    pub mime: String,
    pub rm: String,
    pub version: u8,
    pub chunks: u64,
    /// Stored (encrypted) bytes.
    pub chunks_size: u64,
    pub region: String,
    pub bucket: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Item {
    pub uuid: String,
    pub owner: u64,
    /// Empty for the base folder.
    pub parent: String,
    /// Folders: the encrypted folder metadata; files: the name encrypted under the file key.
    pub name: String,
    pub name_hashed: String,
    pub file: Option<FileData>,
    pub timestamp: i64,
    pub trash: bool,
    pub favorited: bool,
}

impl Item {
    /// A new account's root folder. Its name is Filen's legacy literal `default`, which the
    /// SDK shows as "Default" (the server cannot encrypt a name).
    pub fn base_folder(owner: u64) -> Item {
        Item {
            uuid: super::new_uuid(),
            owner,
            parent: String::new(),
            name: "default".into(),
            name_hashed: String::new(),
            file: None,
            timestamp: now(),
            trash: false,
            favorited: false,
        }
    }

    pub fn is_folder(&self) -> bool {
        self.file.is_none()
    }

    fn parent_wire(&self) -> &str {
        if self.parent.is_empty() {
            "base"
        } else {
            &self.parent
        }
    }

    pub fn folder_row(&self) -> Value {
        json!({
            "uuid": self.uuid, "name": self.name, "parent": self.parent_wire(), "color": null,
            "timestamp": self.timestamp, "favorited": self.favorited as u8, "is_sync": 0,
            "is_default": self.parent.is_empty() as u8,
        })
    }

    pub fn file_row(&self) -> Value {
        let f = self.file.as_ref().expect("file rows are made for files");
        json!({
            "uuid": self.uuid, "metadata": f.metadata, "rm": f.rm, "timestamp": self.timestamp,
            "chunks": f.chunks, "size": f.chunks_size, "chunksSize": f.chunks_size,
            "bucket": f.bucket, "region": f.region, "parent": self.parent_wire(),
            "version": f.version, "favorited": self.favorited as u8, "stableUUID": self.uuid,
        })
    }
}

pub fn load(state: &AppState, uuid: &str) -> FResult<Option<Item>> {
    Ok(state.store.get(&keys::item(uuid))?)
}

/// Writes an item and its indexes.
pub fn put(writes: &mut Writes, item: &Item) {
    writes.put(keys::item(&item.uuid), item);
    writes.put(keys::owned(item.owner, &item.uuid), &());
    if !item.parent.is_empty() {
        writes.put(keys::child(&item.parent, &item.uuid), &());
    }
}

fn unlink(writes: &mut Writes, item: &Item) {
    writes.remove(keys::item(&item.uuid));
    writes.remove(keys::owned(item.owner, &item.uuid));
    if !item.parent.is_empty() {
        writes.remove(keys::child(&item.parent, &item.uuid));
    }
}

/// The caller's item `uuid` of the given kind, or the SDK's not-found code for that kind.
pub fn owned(ctx: &FCtx<'_>, uuid: &str, folder: bool) -> FResult<Item> {
    let user = ctx.user()?;
    let missing = if folder {
        codes::FOLDER_NOT_FOUND
    } else {
        codes::FILE_NOT_FOUND
    };
    match load(ctx.state, uuid)? {
        Some(item) if item.owner == user && item.is_folder() == folder => Ok(item),
        _ => Err(missing),
    }
}

/// A folder new items may go into: the caller's, not in the trash.
pub fn target_folder(ctx: &FCtx<'_>, uuid: &str) -> FResult<Item> {
    let folder = owned(ctx, uuid, true)?;
    if folder.trash {
        return Err(codes::INVALID_FOLDER);
    }
    Ok(folder)
}

pub fn children(state: &AppState, parent: &str) -> FResult<Vec<Item>> {
    let mut out = Vec::new();
    for key in state.store.scan_keys(&keys::children(parent))? {
        let uuid = String::from_utf8_lossy(&key[3 + parent.len() + 1..]).into_owned();
        if let Some(item) = load(state, &uuid)? {
            out.push(item);
        }
    }
    Ok(out)
}

/// A live item of the kind under `parent` whose name hashes to `name_hashed`.
pub fn live_sibling(
    state: &AppState,
    parent: &str,
    name_hashed: &str,
    folder: bool,
) -> FResult<Option<Item>> {
    Ok(children(state, parent)?
        .into_iter()
        .find(|i| !i.trash && i.is_folder() == folder && i.name_hashed == name_hashed))
}

fn name_hashed_arg(args: &Value) -> FResult<String> {
    let h = str_arg(args, "nameHashed")?;
    if h.is_empty() || h.len() > 128 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(codes::PARAMS);
    }
    Ok(h.to_ascii_lowercase())
}

/// `/v3/dir/content {uuid, foldersOnly?}`; `uuid: "trash"` lists the trash.
pub async fn content(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = str_arg(args, "uuid")?;
    let folders_only = args.get("foldersOnly").and_then(Value::as_bool) == Some(true);
    let listed: Vec<Item> = if uuid == "trash" {
        let mut out = Vec::new();
        for key in ctx.state.store.scan_keys(&keys::owned_all(user))? {
            let uuid = String::from_utf8_lossy(&key[key.len() - 36..]).into_owned();
            if let Some(item) = load(ctx.state, &uuid)?
                && item.trash
            {
                out.push(item);
            }
        }
        out
    } else {
        let folder = owned(ctx, &uuid_arg(args, "uuid")?, true)?;
        children(ctx.state, &folder.uuid)?
            .into_iter()
            .filter(|i| !i.trash)
            .collect()
    };
    let folders: Vec<Value> = listed
        .iter()
        .filter(|i| i.is_folder())
        .map(Item::folder_row)
        .collect();
    let uploads: Vec<Value> = if folders_only {
        Vec::new()
    } else {
        listed
            .iter()
            .filter(|i| !i.is_folder())
            .map(Item::file_row)
            .collect()
    };
    Ok(json!({"uploads": uploads, "folders": folders}))
}

pub async fn dir_info(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let d = owned(ctx, &uuid_arg(args, "uuid")?, true)?;
    Ok(json!({
        "uuid": d.uuid, "nameEncrypted": d.name, "nameHashed": d.name_hashed,
        "parent": d.parent_wire(), "trash": d.trash, "favorited": d.favorited, "color": null,
    }))
}

pub async fn file_info(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let i = owned(ctx, &uuid_arg(args, "uuid")?, false)?;
    let f = i.file.as_ref().expect("owned(…, false) is a file");
    Ok(json!({
        "uuid": i.uuid, "region": f.region, "bucket": f.bucket, "nameEncrypted": i.name,
        "nameHashed": i.name_hashed, "sizeEncrypted": f.size, "mimeEncrypted": f.mime,
        "metadata": f.metadata, "size": f.chunks_size, "chunks": f.chunks,
        "parent": i.parent_wire(), "versioned": false, "trash": i.trash, "version": f.version,
        "timestamp": i.timestamp,
    }))
}

/// `dir/present` and `file/present {uuid}`.
pub async fn present(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    Ok(match load(ctx.state, &uuid)? {
        Some(i) if i.owner == user => {
            json!({"present": true, "trash": i.trash, "versioned": false})
        }
        _ => json!({"present": false, "trash": false, "versioned": false}),
    })
}

/// `dir/exists` and `file/exists {parent, nameHashed}`.
pub async fn exists(ctx: &FCtx<'_>, args: &Value, folder: bool) -> FResult<Value> {
    let parent = owned(ctx, &uuid_arg(args, "parent")?, true)?;
    let hash = name_hashed_arg(args)?;
    Ok(
        match live_sibling(ctx.state, &parent.uuid, &hash, folder)? {
            Some(i) => json!({"exists": true, "uuid": i.uuid}),
            None => json!({"exists": false, "uuid": ""}),
        },
    )
}

/// `/v3/dir/create {uuid, name, nameHashed, parent}`. A live folder of the same name hash in
/// the parent is answered instead of creating a second one (as the real server does).
pub async fn create_dir(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let name = blob_arg(args, "name", MAX_META)?;
    let hash = name_hashed_arg(args)?;
    let parent_uuid = uuid_arg(args, "parent")?;
    let _guard = ctx.state.store.lock().await;
    let parent = target_folder(ctx, &parent_uuid)?;
    if let Some(existing) = live_sibling(ctx.state, &parent.uuid, &hash, true)? {
        return Ok(json!({"uuid": existing.uuid, "timestamp": existing.timestamp}));
    }
    if load(ctx.state, &uuid)?.is_some() {
        return Err(codes::UUID_TAKEN);
    }
    let item = Item {
        uuid,
        owner: user,
        parent: parent.uuid,
        name: name.to_string(),
        name_hashed: hash,
        file: None,
        timestamp: now(),
        trash: false,
        favorited: false,
    };
    let mut writes = Writes::new();
    put(&mut writes, &item);
    ctx.state.store.apply(writes).await?;
    Ok(json!({"uuid": item.uuid, "timestamp": item.timestamp}))
}

/// `dir/rename` `{uuid, name, nameHashed}` and `file/rename` `{…, metadata}` (and their
/// `…/metadata` twins). Refused when a live sibling of the kind already has the name hash.
pub async fn rename(ctx: &FCtx<'_>, args: &Value, folder: bool) -> FResult<Value> {
    let uuid = uuid_arg(args, "uuid")?;
    let name = blob_arg(args, "name", MAX_META)?;
    let hash = name_hashed_arg(args)?;
    let metadata = if folder {
        None
    } else {
        Some(blob_arg(args, "metadata", MAX_META)?)
    };
    let _guard = ctx.state.store.lock().await;
    let mut item = owned(ctx, &uuid, folder)?;
    if item.parent.is_empty() {
        return Err(codes::BASE_FOLDER);
    }
    if !item.trash
        && let Some(other) = live_sibling(ctx.state, &item.parent, &hash, folder)?
        && other.uuid != item.uuid
    {
        return Err(codes::NAME_TAKEN);
    }
    item.name = name.to_string();
    item.name_hashed = hash;
    if let (Some(m), Some(f)) = (metadata, item.file.as_mut()) {
        f.metadata = m.to_string();
    }
    let mut writes = Writes::new();
    put(&mut writes, &item);
    ctx.state.store.apply(writes).await?;
    Ok(Value::Null)
}

/// `dir/move` and `file/move {uuid, to}`.
pub async fn move_item(ctx: &FCtx<'_>, args: &Value, folder: bool) -> FResult<Value> {
    let uuid = uuid_arg(args, "uuid")?;
    let to = uuid_arg(args, "to")?;
    let _guard = ctx.state.store.lock().await;
    let mut item = owned(ctx, &uuid, folder)?;
    if item.parent.is_empty() {
        return Err(codes::BASE_FOLDER);
    }
    let target = target_folder(ctx, &to)?;
    if item.parent == target.uuid {
        return Ok(Value::Null);
    }
    if folder {
        // Walk up from the target: meeting the folder itself means a cycle.
        let mut at = Some(target.clone());
        while let Some(f) = at {
            if f.uuid == item.uuid {
                return Err(codes::CIRCULAR);
            }
            at = if f.parent.is_empty() {
                None
            } else {
                load(ctx.state, &f.parent)?
            };
        }
    }
    if !item.trash && live_sibling(ctx.state, &target.uuid, &item.name_hashed, folder)?.is_some() {
        return Err(codes::NAME_TAKEN);
    }
    let mut writes = Writes::new();
    writes.remove(keys::child(&item.parent, &item.uuid));
    item.parent = target.uuid;
    put(&mut writes, &item);
    ctx.state.store.apply(writes).await?;
    Ok(Value::Null)
}

/// `…/trash` (`to_trash`) and `…/restore {uuid}`.
pub async fn trash(ctx: &FCtx<'_>, args: &Value, folder: bool, to_trash: bool) -> FResult<Value> {
    let uuid = uuid_arg(args, "uuid")?;
    let _guard = ctx.state.store.lock().await;
    let mut item = owned(ctx, &uuid, folder)?;
    if item.parent.is_empty() {
        return Err(codes::BASE_FOLDER);
    }
    if item.trash == to_trash {
        return Ok(Value::Null);
    }
    if !to_trash && live_sibling(ctx.state, &item.parent, &item.name_hashed, folder)?.is_some() {
        return Err(codes::NAME_TAKEN);
    }
    item.trash = to_trash;
    let mut writes = Writes::new();
    put(&mut writes, &item);
    ctx.state.store.apply(writes).await?;
    Ok(Value::Null)
}

/// The item and everything under it, parents before children.
fn subtree(state: &AppState, root: Item) -> FResult<Vec<Item>> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(item) = queue.pop_front() {
        if item.is_folder() {
            queue.extend(children(state, &item.uuid)?);
        }
        out.push(item);
    }
    Ok(out)
}

/// Removes items for good: records in one batch, then their chunks, then the quota.
pub async fn purge(state: &AppState, owner: u64, items: Vec<Item>) -> FResult<()> {
    let mut writes = Writes::new();
    let mut freed = 0u64;
    for item in &items {
        unlink(&mut writes, item);
        if let Some(f) = &item.file {
            freed += f.chunks_size;
        }
    }
    let mut account = accounts::load(state, owner)?;
    account.used = account.used.saturating_sub(freed);
    accounts::save(&mut writes, &account);
    state.store.apply(writes).await?;
    for item in &items {
        if let Some(f) = &item.file {
            super::chunks::delete_chunks(state, &item.uuid, f.chunks).await;
        }
    }
    Ok(())
}

/// `dir/delete/permanent` and `file/delete/permanent {uuid}`.
pub async fn delete_permanent(ctx: &FCtx<'_>, args: &Value, folder: bool) -> FResult<Value> {
    let user = ctx.user()?;
    let uuid = uuid_arg(args, "uuid")?;
    let _guard = ctx.state.store.lock().await;
    let item = owned(ctx, &uuid, folder)?;
    if item.parent.is_empty() {
        return Err(codes::BASE_FOLDER);
    }
    let all = subtree(ctx.state, item)?;
    purge(ctx.state, user, all).await?;
    Ok(Value::Null)
}

/// `/v3/trash/empty`.
pub async fn empty_trash(ctx: &FCtx<'_>) -> FResult<Value> {
    let user = ctx.user()?;
    let _guard = ctx.state.store.lock().await;
    let mut all = Vec::new();
    for key in ctx.state.store.scan_keys(&keys::owned_all(user))? {
        let uuid = String::from_utf8_lossy(&key[key.len() - 36..]).into_owned();
        if let Some(item) = load(ctx.state, &uuid)?
            && item.trash
            // A trashed item inside a trashed folder goes with the folder.
            && !all.iter().any(|i: &Item| i.uuid == item.uuid)
        {
            for i in subtree(ctx.state, item)? {
                if !all.iter().any(|a: &Item| a.uuid == i.uuid) {
                    all.push(i);
                }
            }
        }
    }
    purge(ctx.state, user, all).await?;
    Ok(Value::Null)
}

/// `/v3/dir/download {uuid}`: the live subtree, flat, parents before children; the requested
/// folder's parent reads `base`.
pub async fn download_tree(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let root = owned(ctx, &uuid_arg(args, "uuid")?, true)?;
    let root_uuid = root.uuid.clone();
    let mut folders = Vec::new();
    let mut files = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(item) = queue.pop_front() {
        if item.is_folder() {
            let mut row = item.folder_row();
            if item.uuid == root_uuid {
                row["parent"] = json!("base");
            }
            folders.push(row);
            queue.extend(
                children(ctx.state, &item.uuid)?
                    .into_iter()
                    .filter(|c| !c.trash),
            );
        } else {
            files.push(item.file_row());
        }
    }
    Ok(json!({"files": files, "folders": folders}))
}

/// `/v3/dir/size {uuid}`: stored bytes, folders and files below a folder.
pub async fn size(ctx: &FCtx<'_>, args: &Value) -> FResult<Value> {
    let root = owned(ctx, &uuid_arg(args, "uuid")?, true)?;
    let (mut size, mut folders, mut files) = (0u64, 0u64, 0u64);
    for item in subtree(ctx.state, root)?.into_iter().skip(1) {
        if item.trash {
            continue;
        }
        match &item.file {
            Some(f) => {
                files += 1;
                size += f.chunks_size;
            }
            None => folders += 1,
        }
    }
    Ok(json!({"size": size, "folders": folders, "files": files}))
}
