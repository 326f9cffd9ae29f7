//! Filen as a [`Remote`]: the tree from `/v3/dir/download`, items decrypted with every master
//! key (the newest first), new metadata encrypted with the newest, and file content in 1 MiB
//! AES-GCM chunks, each authenticated (and its length checked for its index) before a byte of
//! it is served.
//!
//! Filen ids are uuids; the tree's [`Handle`] is the first 8 bytes of SHA-256 of the uuid, and
//! the uuid itself rides in the node's attributes with the rest of what Filen needs:
//! `uuid`, `region`, `bucket`, `chunks`, `version` and `meta`, the decrypted metadata JSON
//! (kept whole, so fields other clients wrote survive our renames). POSIX metadata goes into
//! that JSON under `vm` (mode), `vt` (mtime in ns, a string) and `vl` (symlink target); other
//! clients ignore them and read `lastModified`, which we keep in step.
//!
//! Filen offers no change feed over HTTP (its socket is out of scope), so [`Remote::poll`]
//! waits [`POLL_INTERVAL`] (not at all the first time) and asks for a full re-read, which the
//! tree diffs.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256, Sha512};

use super::session::FilenSession;
use super::{FilenError, new_uuid, now_ms};
use crate::cache::ContentId;
use crate::content::Content;
use crate::crypto::filen::{
    self as fc, CHUNK_SIZE, DataVersion, FileKey, MetadataVersion, random_string,
};
use crate::remote::{Fetched, Lookup, Meta, Polled, Quota, Remote, RemoteError, Result};
use crate::tree::{Handle, Node, NodeKind};

pub const POLL_INTERVAL: Duration = Duration::from_secs(15);
const SEQ: &str = "filen";

/// Content sent to ingest, waiting for `upload/done`.
pub struct FilenUpload {
    uuid: String,
    key: FileKey,
    upload_key: String,
    /// The folder the chunks were sent for (Filen binds them at ingest).
    parent: String,
    size: u64,
    chunks: u64,
    hash: String,
    region: String,
    bucket: String,
}

/// The folder at the root that holds what other users share with this account. Its uuid is
/// not a uuid, so it can never be a real item's.
const SHARED_UUID: &str = "shared-in";
const SHARED_NAME: &str = "Shared";
/// Marks nodes that belong to someone else's share: read-only.
const SHARED_ATTR: &str = "shared";

pub struct FilenRemote {
    session: FilenSession,
    /// The first poll after the mount starts re-reads at once: the tree kept from the last
    /// mount may be old.
    caught_up: std::sync::atomic::AtomicBool,
}

pub fn handle_of(uuid: &str) -> Handle {
    let d = Sha256::digest(uuid.as_bytes());
    let h = Handle::from_u64(u64::from_be_bytes(d[..8].try_into().expect("8 bytes")));
    if h.is_local() {
        // That range names files created locally and not uploaded yet (1 hash in 65 536).
        return Handle::from_u64(h.as_u64() & !(1 << 63));
    }
    h
}

fn uuid_of(node: &Node) -> Result<&str> {
    node.attrs
        .get("uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| RemoteError::Other("the node has no Filen uuid".into()))
}

fn remote_error(e: FilenError) -> RemoteError {
    match &e {
        FilenError::Api { code, .. } => match code.as_str() {
            "file_not_found" | "folder_not_found" => RemoteError::NotFound,
            "max_storage_reached" => RemoteError::OverQuota,
            "api_key_not_found" | "invalid_api_key" => RemoteError::Access,
            "cannot_move_folder_into_itself" => RemoteError::Circular,
            "internal_error" | "rate_limited" => RemoteError::Unavailable(e.to_string()),
            _ => RemoteError::Other(e.to_string()),
        },
        FilenError::Http(404) => RemoteError::NotFound,
        FilenError::Network(_) | FilenError::Http(_) => RemoteError::Unavailable(e.to_string()),
        FilenError::Crypto(c) => RemoteError::Integrity(c.to_string()),
        _ => RemoteError::Other(e.to_string()),
    }
}

/// A number in metadata JSON, which other clients write as numbers or numeric strings.
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The SDK's `convertTimestampToMs`: seconds or milliseconds, whichever is nearer to now.
fn to_ms(t: f64) -> i64 {
    let now = now_ms() as f64;
    if (now - t).abs() < (now - t * 1000.0).abs() {
        t as i64
    } else {
        (t * 1000.0) as i64
    }
}

/// Reads name and POSIX metadata out of the decrypted metadata JSON.
fn apply_meta(node: &mut Node, meta: &Map<String, Value>) {
    if let Some(name) = meta.get("name").and_then(Value::as_str)
        && !name.is_empty()
    {
        node.name = name.to_string();
    }
    node.mode = meta
        .get("vm")
        .and_then(Value::as_u64)
        .map(|m| (m & 0o7777) as u32);
    node.symlink = meta.get("vl").and_then(Value::as_str).map(str::to_string);
    let ns = meta
        .get("vt")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<i64>().ok())
        .or_else(|| number(meta.get("lastModified")).map(|t| to_ms(t).saturating_mul(1_000_000)));
    if let Some(ns) = ns {
        node.mtime_ns = ns;
    }
}

/// The metadata JSON for `meta`, keeping every other field of `base`.
fn with_meta(base: &Map<String, Value>, meta: &Meta) -> Map<String, Value> {
    let mut m = base.clone();
    m.insert("name".into(), json!(meta.name));
    match meta.mode {
        Some(mode) => m.insert("vm".into(), json!(mode & 0o7777)),
        None => m.remove("vm"),
    };
    match &meta.symlink {
        Some(t) => m.insert("vl".into(), json!(t)),
        None => m.remove("vl"),
    };
    m.insert("vt".into(), json!(meta.mtime_ns.to_string()));
    m
}

/// Decrypted metadata: a JSON object, or nothing usable.
fn json_object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn chunk_range(size: u64, index: u64) -> Range<u64> {
    let c = CHUNK_SIZE as u64;
    index * c..((index + 1) * c).min(size)
}

impl FilenRemote {
    pub fn new(session: FilenSession) -> Self {
        FilenRemote {
            session,
            caught_up: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn session(&self) -> &FilenSession {
        &self.session
    }

    fn api(&self) -> &super::api::FilenApi {
        &self.session.api
    }

    fn blank(&self, uuid: &str, parent: Option<Handle>, kind: NodeKind, ts: i64) -> Node {
        Node {
            handle: handle_of(uuid),
            parent,
            kind,
            name: format!("undecryptable-{uuid}"),
            size: 0,
            mtime_ns: ts.saturating_mul(1_000_000_000),
            created: ts,
            mode: None,
            symlink: None,
            key: Vec::new(),
            attrs: Map::new(),
        }
    }

    fn decrypt_json(&self, s: &str) -> Option<Map<String, Value>> {
        let plain = zeroize::Zeroizing::new(self.session.keys.decrypt_metadata(s).ok()?);
        json_object(&plain)
    }

    fn folder_node(&self, row: &Value) -> Option<Node> {
        self.folder_node_from(row, "name", |s| self.decrypt_json(s))
    }

    fn folder_node_from(
        &self,
        row: &Value,
        field: &str,
        decrypt: impl Fn(&str) -> Option<Map<String, Value>>,
    ) -> Option<Node> {
        let uuid = row.get("uuid")?.as_str()?;
        let ts = row.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
        if uuid == self.session.base_folder {
            let mut node = self.blank(uuid, None, NodeKind::Root, ts);
            node.name = "Cloud Drive".into();
            node.attrs.insert("uuid".into(), json!(uuid));
            return Some(node);
        }
        let parent = row.get("parent")?.as_str()?;
        let mut node = self.blank(uuid, Some(handle_of(parent)), NodeKind::Folder, ts);
        node.attrs.insert("uuid".into(), json!(uuid));
        if let Some(meta) = row.get(field).and_then(Value::as_str).and_then(decrypt) {
            apply_meta(&mut node, &meta);
            node.attrs.insert("meta".into(), Value::Object(meta));
        }
        Some(node)
    }

    fn file_node(&self, row: &Value) -> Option<Node> {
        self.file_node_from(row, |s| self.decrypt_json(s))
    }

    fn file_node_from(
        &self,
        row: &Value,
        decrypt: impl Fn(&str) -> Option<Map<String, Value>>,
    ) -> Option<Node> {
        let uuid = row.get("uuid")?.as_str()?;
        let parent = row.get("parent")?.as_str()?;
        let ts = row.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
        let mut node = self.blank(uuid, Some(handle_of(parent)), NodeKind::File, ts);
        for k in ["uuid", "region", "bucket", "chunks", "version"] {
            node.attrs
                .insert(k.into(), row.get(k).cloned().unwrap_or(Value::Null));
        }
        if let Some(meta) = row
            .get("metadata")
            .and_then(Value::as_str)
            .and_then(decrypt)
        {
            apply_meta(&mut node, &meta);
            node.size = number(meta.get("size")).map_or(0, |s| s.max(0.0) as u64);
            if let Some(key) = meta.get("key").and_then(Value::as_str) {
                node.key = key.as_bytes().to_vec();
            }
            node.attrs.insert("meta".into(), Value::Object(meta));
        }
        Some(node)
    }

    /// Metadata a sharer encrypted to our public key: UTF-8 JSON, or Latin-1 as some Filen
    /// apps write it (filen-reference §10.3).
    fn decrypt_shared_json(&self, s: &str) -> Option<Map<String, Value>> {
        let plain = self.session.private_key.as_ref()?.decrypt_b64(s).ok()?;
        let text = match std::str::from_utf8(&plain) {
            Ok(t) => zeroize::Zeroizing::new(t.to_owned()),
            Err(_) => zeroize::Zeroizing::new(plain.iter().map(|&b| b as char).collect()),
        };
        json_object(&text)
    }

    /// What other users share with this account, as a read-only folder `Shared` at the root:
    /// the tops of the shared trees in it, then each shared folder's children, a level at a
    /// time (`shared/in`). Every node is marked shared, which makes it read-only.
    async fn shared_nodes(&self) -> Result<Vec<Node>> {
        if self.session.private_key.is_none() {
            return Ok(Vec::new());
        }
        let mut shared = self.blank(
            SHARED_UUID,
            Some(handle_of(&self.session.base_folder)),
            NodeKind::Folder,
            0,
        );
        shared.name = SHARED_NAME.into();
        let mut nodes = vec![shared];
        let mut pending = vec![SHARED_UUID.to_string()];
        while let Some(folder) = pending.pop() {
            let listing = self.call("shared/in", json!({"uuid": folder})).await?;
            let rows = |key: &str| {
                listing
                    .get(key)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            for mut row in rows("folders") {
                row["parent"] = json!(folder);
                if let Some(node) =
                    self.folder_node_from(&row, "metadata", |s| self.decrypt_shared_json(s))
                {
                    pending.push(uuid_of(&node)?.to_string());
                    nodes.push(node);
                }
            }
            for mut row in rows("uploads") {
                row["parent"] = json!(folder);
                nodes.extend(self.file_node_from(&row, |s| self.decrypt_shared_json(s)));
            }
        }
        for node in &mut nodes {
            node.attrs.insert(SHARED_ATTR.into(), json!(true));
        }
        Ok(nodes)
    }

    fn file_key(&self, node: &Node) -> Result<FileKey> {
        if node.key.is_empty() {
            return Err(RemoteError::NoKey);
        }
        let version = node
            .attrs
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| RemoteError::Other("file without data version".into()))?;
        let version =
            DataVersion::from_number(version).map_err(|e| RemoteError::Other(e.to_string()))?;
        let text = std::str::from_utf8(&node.key).map_err(|_| RemoteError::NoKey)?;
        FileKey::parse(text, version).map_err(|_| RemoteError::NoKey)
    }

    /// Metadata encrypted under a file key: 002 for v2 keys, 003 for v3 keys.
    fn encrypt_with_file_key(key: &FileKey, text: &str) -> String {
        let version = match key.version() {
            DataVersion::V2 => MetadataVersion::V2,
            DataVersion::V3 => MetadataVersion::V3,
        };
        fc::encrypt_metadata(text, key.as_str(), version)
    }

    fn meta_of(node: &Node) -> Map<String, Value> {
        node.attrs
            .get("meta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    async fn call(&self, endpoint: &str, body: Value) -> Result<Value> {
        self.api().post(endpoint, &body).await.map_err(remote_error)
    }
}

impl Remote for FilenRemote {
    async fn snapshot(&self) -> Result<(Vec<Node>, Option<String>)> {
        let tree = self
            .call("dir/download", json!({"uuid": self.session.base_folder}))
            .await?;
        let mut nodes = Vec::new();
        for row in tree
            .get("folders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            nodes.extend(self.folder_node(row));
        }
        for row in tree
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            nodes.extend(self.file_node(row));
        }
        if !nodes.iter().any(|n| n.kind == NodeKind::Root) {
            return Err(RemoteError::Other("the tree lacks the base folder".into()));
        }
        nodes.extend(self.shared_nodes().await?);
        Ok((nodes, Some(SEQ.into())))
    }

    async fn poll(&self, _seq: &str, _lookup: Lookup<'_>) -> Result<Polled> {
        if self
            .caught_up
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(RemoteError::Reload)
    }

    async fn mkdir(&self, parent: &Node, meta: &Meta) -> Result<Node> {
        let uuid = new_uuid();
        let mut m = with_meta(&Map::new(), meta);
        m.insert("creation".into(), json!(now_ms()));
        let answer = self
            .call(
                "dir/create",
                json!({
                    "uuid": uuid,
                    "name": self.session.keys.encrypt_metadata(&Value::Object(m.clone()).to_string()),
                    "nameHashed": self.session.hasher.hash(&meta.name),
                    "parent": uuid_of(parent)?,
                }),
            )
            .await?;
        if answer.get("uuid").and_then(Value::as_str) != Some(uuid.as_str()) {
            // The server answered a folder that already has this name up to case: Filen
            // compares names case-insensitively.
            return Err(RemoteError::Other(format!(
                "a folder named like {:?} (ignoring case) already exists",
                meta.name
            )));
        }
        let ts = answer.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
        let mut node = self.blank(&uuid, Some(parent.handle), NodeKind::Folder, ts);
        node.attrs.insert("uuid".into(), json!(uuid));
        apply_meta(&mut node, &m);
        node.attrs.insert("meta".into(), Value::Object(m));
        Ok(node)
    }

    type Upload = FilenUpload;

    async fn upload_content(
        &self,
        content: &Content,
        _mtime_ns: i64,
        parent: &Node,
    ) -> Result<FilenUpload> {
        let parent = uuid_of(parent)?.to_string();
        let key = FileKey::generate(self.session.file_version);
        let uuid = new_uuid();
        let upload_key = random_string(32);
        let reader = content.open()?;
        let mut hasher = Sha512::new();
        let (mut size, mut index) = (0u64, 0u64);
        let (mut region, mut bucket) = ("de-1".to_string(), "filen-1".to_string());
        while size < reader.len() {
            let filled = (reader.len() - size).min(CHUNK_SIZE as u64) as usize;
            let buf = reader.read_vec(size, filled)?;
            hasher.update(&buf);
            size += filled as u64;
            let enc = key
                .encrypt_chunk(&buf)
                .map_err(|e| RemoteError::Other(e.to_string()))?;
            let hash = hex::encode(Sha512::digest(&enc));
            let answer = self
                .api()
                .ingest(
                    &[
                        ("uuid", uuid.clone()),
                        ("index", index.to_string()),
                        ("parent", parent.clone()),
                        ("uploadKey", upload_key.clone()),
                        ("hash", hash),
                    ],
                    Bytes::from(enc),
                )
                .await
                .map_err(remote_error)?;
            if let (Some(r), Some(b)) = (
                answer.get("region").and_then(Value::as_str),
                answer.get("bucket").and_then(Value::as_str),
            ) {
                (region, bucket) = (r.to_string(), b.to_string());
            }
            index += 1;
            if filled < CHUNK_SIZE {
                break;
            }
        }
        Ok(FilenUpload {
            uuid,
            key,
            upload_key,
            parent,
            size,
            chunks: index,
            hash: hex::encode(hasher.finalize()),
            region,
            bucket,
        })
    }

    async fn commit_upload(
        &self,
        parent: &Node,
        meta: &Meta,
        upload: FilenUpload,
        replaces: Option<&Node>,
    ) -> Result<Node> {
        let parent_uuid = uuid_of(parent)?;
        if parent_uuid != upload.parent {
            // Filen binds chunks to a folder when they arrive; the file moved meanwhile, so
            // the content goes again, to the folder it is in now.
            return Err(RemoteError::Unavailable(
                "the file changed folders during its upload".into(),
            ));
        }
        let name_hashed = self.session.hasher.hash(&meta.name);
        let replaced_same_name = replaces.is_some_and(|old| {
            self.session.hasher.hash(&old.name) == name_hashed && old.parent == Some(parent.handle)
        });
        if !replaced_same_name {
            // Filen replaces a file whose name matches up to case: never let that happen to
            // a file we did not mean to replace.
            let exists = self
                .call(
                    "file/exists",
                    json!({"parent": parent_uuid, "nameHashed": name_hashed}),
                )
                .await?;
            if exists.get("exists").and_then(Value::as_bool) == Some(true) {
                return Err(RemoteError::Other(format!(
                    "a file named like {:?} (ignoring case) already exists",
                    meta.name
                )));
            }
        }
        let base = replaces.map(Self::meta_of).unwrap_or_default();
        let mime = base
            .get("mime")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_string();
        let mut m = with_meta(&base, meta);
        m.insert("size".into(), json!(upload.size));
        m.insert("mime".into(), json!(mime));
        m.insert("key".into(), json!(upload.key.as_str()));
        m.insert(
            "lastModified".into(),
            json!(meta.mtime_ns.div_euclid(1_000_000)),
        );
        if !m.contains_key("creation") {
            m.insert("creation".into(), json!(now_ms()));
        }
        m.insert("hash".into(), json!(upload.hash));
        let metadata = self
            .session
            .keys
            .encrypt_metadata(&Value::Object(m.clone()).to_string());
        let name = Self::encrypt_with_file_key(&upload.key, &meta.name);
        let size = Self::encrypt_with_file_key(&upload.key, &upload.size.to_string());
        let mime_enc = Self::encrypt_with_file_key(&upload.key, &mime);
        let version = upload.key.version().number();
        if upload.chunks == 0 {
            self.call(
                "upload/empty",
                json!({
                    "uuid": upload.uuid, "name": name, "nameHashed": name_hashed, "size": size,
                    "parent": parent_uuid, "mime": mime_enc, "metadata": metadata,
                    "version": version,
                }),
            )
            .await?;
        } else {
            self.call(
                "upload/done",
                json!({
                    "uuid": upload.uuid, "name": name, "nameHashed": name_hashed, "size": size,
                    "chunks": upload.chunks, "mime": mime_enc, "rm": random_string(32),
                    "metadata": metadata, "version": version, "uploadKey": upload.upload_key,
                }),
            )
            .await?;
        }
        if let Some(old) = replaces
            && !replaced_same_name
        {
            // The server superseded a same-named file itself; any other goes to the trash.
            match self
                .call("file/trash", json!({"uuid": uuid_of(old)?}))
                .await
            {
                Ok(_) | Err(RemoteError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let mut node = self.blank(&upload.uuid, Some(parent.handle), NodeKind::File, 0);
        node.created = now_ms() / 1000;
        node.size = upload.size;
        node.key = upload.key.as_str().as_bytes().to_vec();
        for (k, v) in [
            ("uuid", json!(upload.uuid)),
            ("region", json!(upload.region)),
            ("bucket", json!(upload.bucket)),
            ("chunks", json!(upload.chunks)),
            ("version", json!(version)),
        ] {
            node.attrs.insert(k.into(), v);
        }
        apply_meta(&mut node, &m);
        node.attrs.insert("meta".into(), Value::Object(m));
        Ok(node)
    }

    async fn set_meta(&self, node: &Node, meta: &Meta) -> Result<Node> {
        let uuid = uuid_of(node)?;
        let m = with_meta(&Self::meta_of(node), meta);
        let name_hashed = self.session.hasher.hash(&meta.name);
        let encrypted = self
            .session
            .keys
            .encrypt_metadata(&Value::Object(m.clone()).to_string());
        match node.kind {
            NodeKind::Folder => {
                self.call(
                    "dir/rename",
                    json!({"uuid": uuid, "name": encrypted, "nameHashed": name_hashed}),
                )
                .await?;
            }
            NodeKind::File => {
                let key = self.file_key(node)?;
                let mut m = m.clone();
                m.insert(
                    "lastModified".into(),
                    json!(meta.mtime_ns.div_euclid(1_000_000)),
                );
                let encrypted = self
                    .session
                    .keys
                    .encrypt_metadata(&Value::Object(m).to_string());
                self.call(
                    "file/rename",
                    json!({
                        "uuid": uuid, "name": Self::encrypt_with_file_key(&key, &meta.name),
                        "nameHashed": name_hashed, "metadata": encrypted,
                    }),
                )
                .await?;
            }
            _ => return Err(RemoteError::Access),
        }
        let mut updated = node.clone();
        apply_meta(&mut updated, &m);
        updated.attrs.insert("meta".into(), Value::Object(m));
        Ok(updated)
    }

    async fn move_to(&self, node: &Node, parent: &Node) -> Result<Node> {
        let endpoint = match node.kind {
            NodeKind::File => "file/move",
            NodeKind::Folder => "dir/move",
            _ => return Err(RemoteError::Access),
        };
        self.call(
            endpoint,
            json!({"uuid": uuid_of(node)?, "to": uuid_of(parent)?}),
        )
        .await?;
        let mut moved = node.clone();
        moved.parent = Some(parent.handle);
        Ok(moved)
    }

    /// Deleting moves to Filen's trash, as Filen's own clients do: recoverable from there.
    async fn delete(&self, node: &Node) -> Result<()> {
        let endpoint = match node.kind {
            NodeKind::File => "file/trash",
            NodeKind::Folder => "dir/trash",
            _ => return Err(RemoteError::Access),
        };
        self.call(endpoint, json!({"uuid": uuid_of(node)?}))
            .await
            .map(drop)
    }

    async fn quota(&self) -> Result<Quota> {
        let a = self.api().get("user/account").await.map_err(remote_error)?;
        Ok(Quota {
            used: a.get("storage").and_then(Value::as_u64).unwrap_or(0),
            total: a.get("maxStorage").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    fn read_only(&self, node: &Node) -> bool {
        node.attrs.get(SHARED_ATTR) == Some(&json!(true))
    }

    fn content_id(&self, node: &Node) -> ContentId {
        // Every new content is a new uuid with a new key.
        let uuid = node.attrs.get("uuid").and_then(Value::as_str).unwrap_or("");
        ContentId::derive(&[b"filen", uuid.as_bytes(), &node.key])
    }

    fn chunk_at(&self, size: u64, offset: u64) -> Range<u64> {
        chunk_range(size, offset / CHUNK_SIZE as u64)
    }

    /// One chunk: `fetch` downloads a range's chunks one after another, so separate fetches
    /// of single chunks run in parallel instead.
    fn fetch_batch(&self) -> u64 {
        CHUNK_SIZE as u64
    }

    async fn fetch(&self, node: &Node, range: Range<u64>) -> Result<Vec<Fetched>> {
        let key = self.file_key(node)?;
        let uuid = uuid_of(node)?;
        let attr = |k: &str| node.attrs.get(k).and_then(Value::as_str).unwrap_or("");
        let (region, bucket) = (attr("region"), attr("bucket"));
        let c = CHUNK_SIZE as u64;
        let mut out = Vec::new();
        let mut index = range.start / c;
        while index * c < range.end.min(node.size) {
            let enc = self
                .api()
                .egest(region, bucket, uuid, index)
                .await
                .map_err(remote_error)?;
            // GCM authenticates the chunk; the length check binds it to its position.
            let plain = key
                .decrypt_file_chunk(&enc, node.size, index)
                .map_err(|e| RemoteError::Integrity(format!("chunk {index}: {e}")))?;
            out.push(Fetched {
                offset: index * c,
                data: Bytes::from(plain),
                tag: None,
            });
            index += 1;
        }
        Ok(out)
    }

    fn verify(&self, _node: &Node, _tags: &BTreeMap<u64, [u8; 16]>) -> Result<()> {
        // Every chunk was authenticated when fetched.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_handles_stay_out_of_the_local_range() {
        let raw =
            |s: &str| u64::from_be_bytes(Sha256::digest(s.as_bytes())[..8].try_into().unwrap());
        // About one name in 65 536 hashes into the range local handles use.
        let colliding = (0u32..)
            .map(|i| format!("uuid-{i}"))
            .find(|s| Handle::from_u64(raw(s)).is_local())
            .unwrap();
        let h = handle_of(&colliding);
        assert!(!h.is_local());
        assert_eq!(h.as_u64(), raw(&colliding) & !(1 << 63));
        // Every other name keeps its plain hash.
        assert_eq!(handle_of("uuid-other").as_u64(), raw("uuid-other"));
        assert!(!Handle::from_u64(raw("uuid-other")).is_local());
    }
}
