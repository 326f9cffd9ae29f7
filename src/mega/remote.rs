//! MEGA as a [`Remote`]: turns decrypted wire nodes into tree nodes, POSIX metadata into node
//! attributes, action packets into tree changes, and encrypted chunk downloads into plaintext
//! chunks with their CBC-MACs.
//!
//! POSIX metadata lives beside MEGA's own attributes `n` (name) and `c` (fingerprint), under
//! keys other MEGA clients ignore and keep:
//! - `vm`: permission bits (number, e.g. 493 for 0755);
//! - `vt`: modification time in nanoseconds since the epoch (a decimal string: the value does
//!   not fit a JSON double);
//! - `vl`: symlink target (the node is then a small file whose content is the target too, so
//!   other clients see an ordinary file).
//!
//! The fingerprint `c` carries the mtime in seconds for official clients; we read it back for
//! files they uploaded.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::client::{MegaClient, UploadCommit};
use super::error::{ErrorCode, MegaError};
use super::fingerprint;
use super::nodes::{DecryptedNode, NodeKey};
use super::session::{Credentials, Session};
use super::wire::{self, WireNode};
use crate::cache::ContentId;
use crate::content::Content;
use crate::crypto::mega as mc;
use crate::remote::{
    Commit, Fetched, Listing, Lookup, Meta, Polled, Quota, Remote, RemoteError, Result,
};
use crate::tree::{Change, Handle, Node, NodeKind};

const ATTR_MODE: &str = "vm";
const ATTR_MTIME: &str = "vt";
const ATTR_LINK: &str = "vl";
/// Every chunk's CBC-MAC (16 bytes each, base64) of content we uploaded, so each chunk is
/// checked before it is served; inside the attributes, so encrypted under the file key.
const ATTR_CHUNK_MACS: &str = "vc";
/// Files of more chunks (about 1 GiB) keep only MEGA's whole-file check: 16 KiB of MACs is
/// as much as we put into attributes every client downloads with the tree.
const MAX_STORED_CHUNK_MACS: usize = 1024;
/// How long a download URL from `g` is reused before asking again.
const URL_TTL: Duration = Duration::from_secs(600);

/// Content sent to MEGA, waiting for its node.
pub struct MegaUpload {
    key: mc::FileKey,
    data: super::transfer::UploadedData,
    fingerprint: String,
    mtime_ns: i64,
}

pub struct MegaRemote {
    client: MegaClient,
    urls: Mutex<HashMap<Handle, (String, Instant)>>,
    /// Kept (zeroized on drop) when the mount has the password, to log in again when the
    /// server ends the session (`-15`).
    credentials: Option<Credentials>,
    relogin: tokio::sync::Mutex<()>,
}

impl MegaRemote {
    pub fn new(client: MegaClient, credentials: Option<Credentials>) -> Self {
        MegaRemote {
            client,
            urls: Mutex::new(HashMap::new()),
            credentials,
            relogin: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs one client call; when the server says the session is gone (`-15`) and we hold the
    /// password, logs in again and repeats the call once.
    async fn call<T, F, Fut>(&self, f: F) -> std::result::Result<T, MegaError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, MegaError>>,
    {
        match f().await {
            Err(MegaError::Api(ErrorCode::Session)) if self.credentials.is_some() => {
                let sid_before = self.client.api().session();
                let _one_at_a_time = self.relogin.lock().await;
                // Another call may have logged in again while we waited.
                if self.client.api().session() == sid_before {
                    tracing::warn!("the server ended our session; logging in again");
                    let credentials = self.credentials.as_ref().expect("checked above");
                    // The dead sid must not ride along on the login requests.
                    self.client.api().set_session(None);
                    Session::login(self.client.api(), credentials).await?;
                }
                f().await
            }
            other => other,
        }
    }

    pub fn client(&self) -> &MegaClient {
        &self.client
    }

    async fn download_url(&self, handle: Handle, fresh: bool) -> Result<String> {
        if !fresh
            && let Some((url, at)) = self.urls.lock().get(&handle).cloned()
            && at.elapsed() < URL_TTL
        {
            return Ok(url);
        }
        let h = mega_handle(handle)?;
        let info = self
            .call(|| self.client.download_info(&h))
            .await
            .map_err(remote_error)?;
        self.urls
            .lock()
            .insert(handle, (info.url.clone(), Instant::now()));
        Ok(info.url)
    }

    fn packet_changes(&self, packets: Vec<Value>, lookup: Lookup<'_>) -> Vec<Change> {
        let mine = self.client.instance_id();
        let mut changes = Vec::new();
        for packet in packets {
            if packet.get("i").and_then(Value::as_str) == Some(mine) {
                continue;
            }
            match packet.get("a").and_then(Value::as_str) {
                Some("t") => {
                    let nodes = packet
                        .pointer("/t/f")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for n in nodes {
                        match serde_json::from_value::<WireNode>(n) {
                            Ok(w) => {
                                if let Some(node) = to_tree_node(self.client.decrypt(w)) {
                                    changes.push(Change::Upsert(node));
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "ignoring a malformed node packet")
                            }
                        }
                    }
                }
                Some("u") => {
                    let (Some(h), Some(at)) = (
                        packet.get("n").and_then(Value::as_str),
                        packet.get("at").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    let Some(mut node) = Handle::from_mega(h).ok().and_then(lookup) else {
                        continue;
                    };
                    let Ok(key) = node_key(&node) else { continue };
                    match mc::decrypt_attributes(key.attribute_key(), at) {
                        Ok(attrs) => {
                            apply_attributes(&mut node, attrs);
                            changes.push(Change::Upsert(node));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "attributes in a packet do not decrypt")
                        }
                    }
                }
                Some("d") => {
                    if let Some(h) = packet.get("n").and_then(Value::as_str)
                        && let Ok(h) = Handle::from_mega(h)
                    {
                        changes.push(Change::Delete(h));
                    }
                }
                _ => {}
            }
        }
        changes
    }
}

impl Remote for MegaRemote {
    async fn snapshot(&self) -> Result<(Vec<Node>, Option<String>)> {
        self.call(|| self.client.fetch_tree_map(to_tree_node))
            .await
            .map_err(remote_error)
    }

    async fn snapshot_streamed(
        &self,
        sink: &mut (dyn FnMut(Listing) + Send),
    ) -> Result<Option<String>> {
        // `call` may run the fetch twice (after a new login); both runs feed the same sink.
        let sink = parking_lot::Mutex::new(sink);
        let deliver = |nodes: Vec<Node>, complete: Vec<String>| {
            let complete = complete
                .iter()
                .filter_map(|h| Handle::from_mega(h).ok())
                .collect();
            (sink.lock())(Listing { nodes, complete });
        };
        self.call(|| self.client.fetch_tree_streamed(to_tree_node, deliver))
            .await
            .map_err(remote_error)
    }

    async fn poll(&self, seq: &str, lookup: Lookup<'_>) -> Result<Polled> {
        let answer = match self.call(|| self.client.poll_actions(seq)).await {
            Ok(answer) => answer,
            Err(MegaError::Api(ErrorCode::Expired | ErrorCode::TooMany | ErrorCode::Args)) => {
                return Err(RemoteError::Reload);
            }
            Err(e) => return Err(remote_error(e)),
        };
        if let Some(packets) = answer.a {
            return Ok(Polled {
                changes: self.packet_changes(packets, lookup),
                seq: answer.sn,
            });
        }
        if let Some(url) = answer.w {
            self.client.wait(&url).await.map_err(remote_error)?;
        }
        Ok(Polled::default())
    }

    async fn mkdir(&self, parent: &Node, meta: &Meta) -> Result<Node> {
        let attrs = attributes(&Map::new(), meta, None);
        let p = mega_handle(parent.handle)?;
        let node = self
            .call(|| self.client.mkdir(&p, &attrs))
            .await
            .map_err(remote_error)?;
        to_tree_node(node).ok_or_else(|| RemoteError::Other("the new folder has no handle".into()))
    }

    type Upload = MegaUpload;

    async fn upload_content(
        &self,
        content: &Content,
        mtime_ns: i64,
        _parent: &Node,
    ) -> Result<MegaUpload> {
        let fingerprint = {
            let reader = content.open()?;
            fingerprint::fingerprint(&reader, reader.len(), mtime_ns.div_euclid(1_000_000_000))?
        };
        let (key, data) = self
            .call(|| self.client.upload_data(content, |_| {}))
            .await
            .map_err(remote_error)?;
        Ok(MegaUpload {
            key,
            data,
            fingerprint,
            mtime_ns,
        })
    }

    async fn commit_upload(
        &self,
        parent: &Node,
        meta: &Meta,
        upload: MegaUpload,
        replaces: Option<&Node>,
    ) -> Result<Node> {
        let commit = Commit {
            parent: parent.clone(),
            meta: meta.clone(),
            upload,
            replaces: replaces.cloned(),
        };
        self.commit_uploads(vec![commit])
            .await
            .pop()
            .expect("one result per upload")
    }

    async fn commit_uploads(&self, batch: Vec<Commit<MegaUpload>>) -> Vec<Result<Node>> {
        let prepared: Vec<Result<Prepared>> = batch
            .iter()
            .map(|c| {
                let attrs = upload_attributes(&c.meta, &c.upload, c.replaces.as_ref());
                let parent = mega_handle(c.parent.handle)?;
                let old = c
                    .replaces
                    .as_ref()
                    .map(|n| mega_handle(n.handle))
                    .transpose()?;
                Ok((parent, attrs, old))
            })
            .collect();
        let items: Vec<UploadCommit<'_>> = batch
            .iter()
            .zip(&prepared)
            .filter_map(|(c, prepared)| {
                let (parent, attrs, old) = prepared.as_ref().ok()?;
                Some(UploadCommit {
                    parent,
                    key: &c.upload.key,
                    uploaded: &c.upload.data,
                    attributes: attrs,
                    replaces: old.as_deref(),
                })
            })
            .collect();
        let answers = match self.call(|| self.client.commit_uploads(&items)).await {
            Ok(answers) => answers,
            Err(e) => {
                // The request failed as a whole: every upload gets the same kind of error.
                let e = remote_error(e);
                let message = e.to_string();
                return (0..batch.len())
                    .map(|_| {
                        Err(if e.is_transient() {
                            RemoteError::Unavailable(message.clone())
                        } else {
                            RemoteError::Other(message.clone())
                        })
                    })
                    .collect();
            }
        };
        // `answers` holds one result per prepared upload, in batch order.
        let mut answers = answers.into_iter();
        let mut results = Vec::with_capacity(batch.len());
        for (c, prepared) in batch.iter().zip(prepared) {
            let result = prepared.and_then(|_| {
                let node = answers
                    .next()
                    .expect("one answer per prepared upload")
                    .map_err(remote_error)?;
                if let Some(old) = &c.replaces {
                    self.urls.lock().remove(&old.handle);
                }
                to_tree_node(node)
                    .ok_or_else(|| RemoteError::Other("the new file has no handle".into()))
            });
            results.push(result);
        }
        results
    }

    async fn set_meta(&self, node: &Node, meta: &Meta) -> Result<Node> {
        let key = node_key(node)?;
        let attrs = attributes(&node.attrs, meta, None);
        let h = mega_handle(node.handle)?;
        self.call(|| self.client.set_attributes(&h, &key, &attrs))
            .await
            .map_err(remote_error)?;
        let mut updated = node.clone();
        apply_attributes(&mut updated, attrs);
        Ok(updated)
    }

    async fn set_meta_many(&self, changes: &[(Node, Meta)]) -> Vec<Result<Node>> {
        let prepared: Vec<Result<_>> = changes
            .iter()
            .map(|(node, meta)| {
                let (h, key) = (mega_handle(node.handle)?, node_key(node)?);
                Ok((h, key, attributes(&node.attrs, meta, None)))
            })
            .collect();
        let sent: Vec<_> = prepared
            .iter()
            .flatten()
            .map(|(h, key, attrs)| (h.as_str(), key, attrs))
            .collect();
        let answers = self
            .call(|| self.client.set_attributes_many(&sent))
            .await
            .map_err(remote_error);
        let mut answers = match answers {
            Ok(answers) => answers.into_iter(),
            Err(e) => {
                // The request as a whole failed: each change gets the error (as text, the
                // variant kept where it decides a retry).
                let message = e.to_string();
                let unavailable = e.is_transient();
                return changes
                    .iter()
                    .map(|_| {
                        Err(if unavailable {
                            RemoteError::Unavailable(message.clone())
                        } else {
                            RemoteError::Other(message.clone())
                        })
                    })
                    .collect();
            }
        };
        prepared
            .into_iter()
            .zip(changes)
            .map(|(prepared, (node, _))| {
                let (_, _, attrs) = prepared?;
                match answers.next() {
                    Some(Ok(())) => {
                        let mut updated = node.clone();
                        apply_attributes(&mut updated, attrs);
                        Ok(updated)
                    }
                    Some(Err(e)) => Err(remote_error(e)),
                    None => Err(RemoteError::Other("fewer answers than commands".into())),
                }
            })
            .collect()
    }

    async fn move_to(&self, node: &Node, parent: &Node) -> Result<Node> {
        let (h, p) = (mega_handle(node.handle)?, mega_handle(parent.handle)?);
        self.call(|| self.client.move_node(&h, &p))
            .await
            .map_err(remote_error)?;
        let mut moved = node.clone();
        moved.parent = Some(parent.handle);
        Ok(moved)
    }

    async fn delete(&self, node: &Node) -> Result<()> {
        let h = mega_handle(node.handle)?;
        self.urls.lock().remove(&node.handle);
        self.call(|| self.client.delete(&h))
            .await
            .map_err(remote_error)
    }

    async fn quota(&self) -> Result<Quota> {
        let q = self
            .call(|| self.client.quota())
            .await
            .map_err(remote_error)?;
        Ok(Quota {
            used: q.used,
            total: q.total,
        })
    }

    fn content_id(&self, node: &Node) -> ContentId {
        // The meta-MAC (bytes 24..32 of the packed key) changes with every new content.
        ContentId::derive(&[&node.handle.as_u64().to_be_bytes(), &node.key])
    }

    fn chunk_at(&self, size: u64, offset: u64) -> Range<u64> {
        mc::chunk_range(mc::chunk_index(offset), size)
    }

    /// Eight 1 MiB chunks: one ranged GET, and `chunk_macs` runs all eight side by side (the
    /// AES-NI backend's width), where one chunk alone runs at a fraction of that speed.
    fn fetch_batch(&self) -> u64 {
        8 * 1024 * 1024
    }

    async fn fetch(&self, node: &Node, range: Range<u64>) -> Result<Vec<Fetched>> {
        let NodeKey::File { key, .. } = node_key(node)? else {
            return Err(RemoteError::Other("not a file".into()));
        };
        // One buffer per chunk, decrypted in place and handed to the cache as it is.
        let mut spans = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let span = mc::chunk_range(mc::chunk_index(at), node.size);
            let end = span.end.min(range.end);
            spans.push(at..end);
            at = end;
        }
        let lens: Vec<usize> = spans.iter().map(|s| (s.end - s.start) as usize).collect();
        let mut fresh = false;
        let mut pieces = loop {
            let url = self.download_url(node.handle, fresh).await?;
            match self.client.fetch_split(&url, range.clone(), &lens).await {
                Ok(pieces) => break pieces,
                // An expired or revoked URL: ask for a new one once.
                Err(MegaError::Http(403 | 404 | 410)) if !fresh => fresh = true,
                Err(e) => return Err(remote_error(e)),
            }
        };
        for (span, piece) in spans.iter().zip(&mut pieces) {
            mc::ctr_apply(&key, span.start, piece);
        }
        let plain: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let macs = mc::chunk_macs(&key, &plain);
        if let Some(stored) = stored_chunk_macs(node) {
            for (span, mac) in spans.iter().zip(&macs) {
                let index = mc::chunk_index(span.start) as usize;
                if stored.get(index) != Some(mac) {
                    return Err(RemoteError::Integrity(format!(
                        "the chunk at byte {} does not match its MAC",
                        span.start
                    )));
                }
            }
        }
        Ok(spans
            .into_iter()
            .zip(pieces)
            .zip(macs)
            .map(|((s, piece), mac)| Fetched {
                offset: s.start,
                data: bytes::Bytes::from(piece),
                tag: Some(mac),
            })
            .collect())
    }

    fn verify(&self, node: &Node, tags: &BTreeMap<u64, [u8; 16]>) -> Result<()> {
        let NodeKey::File { key, meta_mac } = node_key(node)? else {
            return Ok(());
        };
        let mut acc = mc::MacAccumulator::new(&key, node.size);
        for (&offset, mac) in tags {
            acc.insert(mc::chunk_index(offset), *mac)
                .map_err(|e| RemoteError::Integrity(e.to_string()))?;
        }
        if !acc.is_complete() {
            return Err(RemoteError::Integrity("not every chunk was checked".into()));
        }
        acc.verify(&meta_mac)
            .map(drop)
            .map_err(|_| RemoteError::Integrity("the file's MAC does not match its key".into()))
    }
}

/// The per-chunk MACs stored with a node's content, when they are there and belong to it:
/// they must condense to the meta-MAC in the node key, so MACs carried over from other content
/// (by a client that copies attributes) are ignored rather than failing good chunks.
fn stored_chunk_macs(node: &Node) -> Option<Vec<[u8; 16]>> {
    let encoded = node.attrs.get(ATTR_CHUNK_MACS)?.as_str()?;
    let NodeKey::File { key, meta_mac } = node_key(node).ok()? else {
        return None;
    };
    let bytes = mc::b64_decode(encoded).ok()?;
    if bytes.len() as u64 != 16 * mc::chunk_count(node.size) {
        return None;
    }
    let macs: Vec<[u8; 16]> = bytes
        .chunks_exact(16)
        .map(|c| c.try_into().expect("16 bytes"))
        .collect();
    (mc::meta_mac(&mc::condense_macs(&key, &macs)) == meta_mac).then_some(macs)
}

fn remote_error(e: MegaError) -> RemoteError {
    match e {
        MegaError::Api(ErrorCode::NotFound) => RemoteError::NotFound,
        MegaError::Api(ErrorCode::OverQuota) => RemoteError::OverQuota,
        MegaError::Api(ErrorCode::Access | ErrorCode::Blocked) => RemoteError::Access,
        MegaError::Api(ErrorCode::Circular) => RemoteError::Circular,
        MegaError::Api(ErrorCode::Key) => RemoteError::NoKey,
        MegaError::Api(
            ErrorCode::Again
            | ErrorCode::RateLimit
            | ErrorCode::TempUnavailable
            | ErrorCode::TooManyConnections
            | ErrorCode::Internal,
        )
        | MegaError::Http(_)
        | MegaError::Network(_)
        | MegaError::Cut(_) => RemoteError::Unavailable(e.to_string()),
        other => RemoteError::Other(other.to_string()),
    }
}

/// An upload ready for `p`: its folder's handle, its attributes, the handle it replaces.
type Prepared = (String, Map<String, Value>, Option<String>);

/// The attributes of uploaded content: `meta`, the fingerprint, the chunk MACs, and what the
/// replaced node held that we do not set ourselves.
fn upload_attributes(
    meta: &Meta,
    upload: &MegaUpload,
    replaces: Option<&Node>,
) -> Map<String, Value> {
    let base = replaces.map(|n| n.attrs.clone()).unwrap_or_default();
    let mut attrs = attributes(&base, meta, Some(upload.fingerprint.clone()));
    // Never carried over from the replaced content.
    attrs.remove(ATTR_CHUNK_MACS);
    let macs = &upload.data.chunk_macs;
    if (2..=MAX_STORED_CHUNK_MACS).contains(&macs.len()) {
        attrs.insert(
            ATTR_CHUNK_MACS.into(),
            json!(mc::b64_encode(macs.as_flattened())),
        );
    }
    if meta.mtime_ns != upload.mtime_ns
        && let Some(c) = attrs.get("c").and_then(Value::as_str)
        && let Some(c) = fingerprint::with_mtime(c, meta.mtime_ns.div_euclid(1_000_000_000))
    {
        attrs.insert("c".into(), json!(c));
    }
    attrs
}

fn mega_handle(h: Handle) -> Result<String> {
    h.to_mega()
        .ok_or_else(|| RemoteError::Other(format!("{h:?} is not a MEGA node handle")))
}

fn node_key(node: &Node) -> Result<NodeKey> {
    let t = if node.kind == NodeKind::File {
        wire::NODE_FILE
    } else {
        wire::NODE_FOLDER
    };
    if node.key.is_empty() {
        return Err(RemoteError::NoKey);
    }
    NodeKey::from_bytes(t, &node.key).map_err(|e| RemoteError::Other(e.to_string()))
}

/// The attributes for `meta`, keeping every other key of `base` (other clients' attributes).
/// Also what `veilfs put` gives the files it uploads, so they look the same as the mount's.
pub fn attributes(
    base: &Map<String, Value>,
    meta: &Meta,
    fingerprint: Option<String>,
) -> Map<String, Value> {
    let mut attrs = base.clone();
    attrs.insert("n".into(), json!(meta.name));
    match meta.mode {
        Some(mode) => attrs.insert(ATTR_MODE.into(), json!(mode & 0o7777)),
        None => attrs.remove(ATTR_MODE),
    };
    attrs.insert(ATTR_MTIME.into(), json!(meta.mtime_ns.to_string()));
    match &meta.symlink {
        Some(target) => attrs.insert(ATTR_LINK.into(), json!(target)),
        None => attrs.remove(ATTR_LINK),
    };
    let secs = meta.mtime_ns.div_euclid(1_000_000_000);
    match fingerprint {
        Some(c) => {
            attrs.insert("c".into(), json!(c));
        }
        None => {
            if let Some(c) = attrs.get("c").and_then(Value::as_str)
                && let Some(c) = fingerprint::with_mtime(c, secs)
            {
                attrs.insert("c".into(), json!(c));
            }
        }
    }
    attrs
}

/// Reads name and POSIX metadata out of `attrs` into `node`, and keeps `attrs`.
fn apply_attributes(node: &mut Node, attrs: Map<String, Value>) {
    if let Some(name) = attrs.get("n").and_then(Value::as_str) {
        node.name = name.to_string();
    }
    node.mode = attrs
        .get(ATTR_MODE)
        .and_then(Value::as_u64)
        .map(|m| (m & 0o7777) as u32);
    node.symlink = attrs
        .get(ATTR_LINK)
        .and_then(Value::as_str)
        .map(str::to_string);
    let from_c = attrs
        .get("c")
        .and_then(Value::as_str)
        .and_then(fingerprint::mtime_of)
        .map(|s| s.saturating_mul(1_000_000_000));
    if let Some(ns) = attrs
        .get(ATTR_MTIME)
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<i64>().ok())
        .or(from_c)
    {
        node.mtime_ns = ns;
    }
    node.attrs = attrs;
}

/// A decrypted wire node as the tree holds it; `None` for a node without a valid handle.
pub fn to_tree_node(d: DecryptedNode) -> Option<Node> {
    let handle = Handle::from_mega(&d.wire.h).ok()?;
    let parent = if d.wire.p.is_empty() {
        None
    } else {
        Handle::from_mega(&d.wire.p).ok()
    };
    let kind = match d.wire.t {
        wire::NODE_FILE => NodeKind::File,
        wire::NODE_FOLDER => NodeKind::Folder,
        2 => NodeKind::Root,
        3 => NodeKind::Inbox,
        4 => NodeKind::Rubbish,
        _ => return None,
    };
    let name = match kind {
        NodeKind::Root => "Cloud Drive".to_string(),
        NodeKind::Inbox => "Inbox".to_string(),
        NodeKind::Rubbish => "Rubbish Bin".to_string(),
        // A node we hold no key for keeps a stable placeholder name derived from its handle.
        _ => format!("undecryptable-{}", d.wire.h),
    };
    let mut node = Node {
        handle,
        parent,
        kind,
        name,
        size: d.wire.s.unwrap_or(0),
        mtime_ns: d.wire.ts.saturating_mul(1_000_000_000),
        created: d.wire.ts,
        mode: None,
        symlink: None,
        key: d.key.as_ref().map(NodeKey::to_bytes).unwrap_or_default(),
        attrs: Map::new(),
    };
    if d.key.is_some() {
        apply_attributes(&mut node, d.attributes);
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_metadata_round_trips_through_attributes_and_keeps_foreign_keys() {
        let mut base = Map::new();
        base.insert("n".into(), json!("old"));
        base.insert("zz".into(), json!({"x": 1}));
        let meta = Meta {
            name: "new/name".into(),
            mode: Some(0o100755),
            mtime_ns: 1_700_000_000_123_456_789,
            symlink: Some("../t".into()),
        };
        let attrs = attributes(&base, &meta, None);
        assert_eq!(attrs["zz"], json!({"x": 1}));
        let mut node = Node {
            handle: Handle::from_u64(1),
            parent: None,
            kind: NodeKind::File,
            name: String::new(),
            size: 0,
            mtime_ns: 0,
            created: 0,
            mode: None,
            symlink: None,
            key: vec![],
            attrs: Map::new(),
        };
        apply_attributes(&mut node, attrs);
        assert_eq!(node.name, "new/name");
        assert_eq!(node.mode, Some(0o755));
        assert_eq!(node.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(node.symlink.as_deref(), Some("../t"));
        let plain = Meta {
            symlink: None,
            mode: None,
            ..meta
        };
        let attrs = attributes(&node.attrs, &plain, None);
        apply_attributes(&mut node, attrs);
        assert_eq!((node.mode, node.symlink), (None, None));
    }
}
