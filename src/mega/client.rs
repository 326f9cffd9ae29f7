//! `MegaClient`: a logged-in account — its transport, session and keys — and the commands that
//! read and change its node tree.

use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::api::ApiClient;
use super::error::{MegaError, Result};
use super::fetch::{FetchEvent, Groups, StreamedFetch};
use super::nodes::{DecryptedNode, KeyRing, NodeKey};
use super::session::{Credentials, Session};
use super::transfer::{self, DownloadInfo, TransferOptions};
use super::upload_urls::UploadUrls;
use super::wire::{self, ActionPackets, FetchNodes, WireNode};
use crate::content::Content;
use crate::crypto::mega::{self as mc, FileKey};
use crate::retry::RetryPolicy;

/// Storage use and limit, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub used: u64,
    pub total: u64,
}

/// One finished upload to commit with [`MegaClient::commit_uploads`].
pub struct UploadCommit<'a> {
    /// The folder the file goes into.
    pub parent: &'a str,
    pub key: &'a FileKey,
    pub uploaded: &'a transfer::UploadedData,
    pub attributes: &'a Map<String, Value>,
    /// A node the file replaces: deleted once the file exists.
    pub replaces: Option<&'a str>,
}

/// One entry of [`MegaClient::put_nodes`].
pub struct NewNode {
    /// The index, in the same batch, of the new folder this goes in; `None` for the target.
    pub parent: Option<usize>,
    pub content: NewContent,
    /// Attributes; must hold `n`, the name.
    pub attributes: Map<String, Value>,
}

pub enum NewContent {
    Folder,
    File {
        key: FileKey,
        uploaded: transfer::UploadedData,
    },
}

pub struct MegaClient {
    api: Arc<ApiClient>,
    /// The `u` of uploads that start together, sent in one request.
    upload_urls: UploadUrls,
    session: Session,
    keys: RwLock<KeyRing>,
    options: TransferOptions,
    /// Our client instance id (`i`, mega-reference §3.3): the server copies it into the action
    /// packets our own commands cause, so the poller can tell them from other clients' changes.
    instance: String,
    /// For a public folder link: the folder's root handle. Its `f` shows the folder as the
    /// tree's root, and there is no change feed to follow.
    public_root: Option<String>,
}

/// Nodes of a streamed `f` opened and handed on at once, at most.
const BATCH: usize = 512;
/// A pause in the answer after which what came is handed on without waiting for a batch.
const STALL: std::time::Duration = std::time::Duration::from_millis(5);

/// Where a streamed `f` stands.
#[derive(Default)]
struct StreamedTree {
    /// The server promised grouped order: nodes are opened and handed on as they come.
    grouped: bool,
    groups: Groups,
    /// Nodes read and not handed on yet; without the promise, all of them until the end.
    pending: Vec<WireNode>,
}

impl StreamedTree {
    fn take(&mut self, event: FetchEvent, client: &MegaClient) {
        match event {
            FetchEvent::Grouped => self.grouped = true,
            FetchEvent::ShareKeys(ok) => {
                let mut keys = client.keys.write().expect("key ring lock");
                keys.add_outgoing_shares(&ok);
            }
            FetchEvent::Node(node) => self.pending.push(*node),
        }
    }
}

impl MegaClient {
    /// Logs in with a password.
    pub async fn login(
        gateway: &str,
        credentials: &Credentials,
        policy: RetryPolicy,
        options: TransferOptions,
    ) -> Result<Self> {
        let api = ApiClient::new(gateway, policy)?;
        let session = Session::login(&api, credentials).await?;
        Self::with_session(api, session, options)
    }

    /// Resumes a saved session without the password.
    pub fn resume(session: Session, policy: RetryPolicy, options: TransferOptions) -> Result<Self> {
        let api = ApiClient::new(&session.server, policy)?;
        session.activate(&api);
        Self::with_session(api, session, options)
    }

    fn with_session(api: ApiClient, session: Session, options: TransferOptions) -> Result<Self> {
        let keys = session.key_ring()?;
        let api = Arc::new(api);
        Ok(MegaClient {
            upload_urls: UploadUrls::new(api.clone(), options),
            api,
            session,
            keys: RwLock::new(keys),
            options,
            instance: mc::b64_encode(&crate::crypto::random_array::<8>())[..10].to_string(),
            public_root: None,
        })
    }

    /// Opens a public folder link (`ph` and its 16-byte share key) read-only: every request
    /// carries `n=<ph>` and no session. Fails with a key error when the key does not open the
    /// folder.
    pub async fn open_public_folder(
        gateway: &str,
        ph: &str,
        key: &[u8; 16],
        policy: RetryPolicy,
        options: TransferOptions,
    ) -> Result<Self> {
        let api = ApiClient::new(gateway, policy)?.with_query("n", ph);
        let fetched =
            Self::fetch_nodes_with(&api, json!({"a": "f", "c": 1, "ca": 1, "r": 1})).await?;
        // The root is the node whose key entry names itself.
        let root = fetched
            .f
            .iter()
            .find(|n| n.k.split(':').next() == Some(n.h.as_str()))
            .ok_or_else(|| MegaError::malformed("folder link without a root"))?
            .clone();
        let session = Session::public_folder(api.gateway(), &root.h, key);
        let mut client = Self::with_session(api, session, options)?;
        if client.decrypt(root.clone()).name().is_none() {
            return Err(MegaError::Crypto(
                crate::crypto::CryptoError::Authentication("folder link key"),
            ));
        }
        client.public_root = Some(root.h);
        Ok(client)
    }

    /// Runs `f` (`command`) and parses its answer straight into typed nodes.
    async fn fetch_nodes(&self, command: Value) -> Result<FetchNodes> {
        Self::fetch_nodes_with(&self.api, command).await
    }

    async fn fetch_nodes_with(api: &ApiClient, command: Value) -> Result<FetchNodes> {
        api.call_seeded(command, PhantomData::<FetchNodes>::default)
            .await
    }

    /// Whether this client reads a public folder link.
    pub fn is_public_folder(&self) -> bool {
        self.public_root.is_some()
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The instance id this client puts in its state-changing commands.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// A state-changing command, tagged with our instance id.
    fn tagged(&self, mut command: Value) -> Value {
        if let Some(map) = command.as_object_mut() {
            map.insert("i".into(), json!(self.instance));
        }
        command
    }

    /// Fetches and decrypts the whole tree (`f`). Returns the nodes and the sequence number to
    /// poll action packets from.
    pub async fn fetch_tree(&self) -> Result<(Vec<DecryptedNode>, Option<String>)> {
        self.fetch_tree_map(Some).await
    }

    /// [`MegaClient::fetch_tree`], handing each node to `map` as soon as it is decrypted and
    /// keeping what `map` returns: a big account's tree is then never held in two forms at
    /// once. The answer is parsed straight into typed nodes (no JSON tree of it), and the key
    /// ring is locked while `map` runs (so `map` must not call back into this client).
    pub async fn fetch_tree_map<T>(
        &self,
        mut map: impl FnMut(DecryptedNode) -> Option<T>,
    ) -> Result<(Vec<T>, Option<String>)> {
        let FetchNodes { f, ok, sn } = self.fetch_nodes(json!({"a": "f", "c": 1, "r": 1})).await?;
        let mut keys = self.keys.write().expect("key ring lock");
        keys.add_outgoing_shares(&ok);
        drop(ok);
        let out = self.open_all(&mut keys, f, &mut map);
        Ok((out, sn))
    }

    /// The whole tree like [`MegaClient::fetch_tree_map`], read as it arrives and handed to
    /// `deliver` in parts: mapped nodes, and the handles of the folders whose children have
    /// all been delivered by then. That needs the order `veilfs serve` promises
    /// (`mega::fetch`); without it (MEGA itself) everything is delivered at the end and no
    /// folder is named — when this returns `Ok`, every folder is complete. Returns `sn`.
    ///
    /// A failure after parts were delivered ([`MegaError::Cut`], a malformed answer) leaves
    /// them delivered: the caller discards or replaces them.
    pub async fn fetch_tree_streamed<T>(
        &self,
        mut map: impl FnMut(DecryptedNode) -> Option<T> + Send,
        mut deliver: impl FnMut(Vec<T>, Vec<String>) + Send,
    ) -> Result<Option<String>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let command = json!({"a": "f", "c": 1, "r": 1});
        let fetch = self
            .api
            .call_streamed(command, move || StreamedFetch { events: tx.clone() });
        tokio::pin!(fetch);
        let mut reading = StreamedTree::default();
        let sn = loop {
            tokio::select! {
                biased;
                Some(event) = rx.recv() => {
                    reading.take(event, self);
                    // Whatever else is there already, up to a batch.
                    while (reading.pending.len() < BATCH || !reading.grouped)
                        && let Ok(event) = rx.try_recv()
                    {
                        reading.take(event, self);
                    }
                    if reading.pending.len() >= BATCH {
                        self.deliver(&mut reading, &mut map, &mut deliver);
                    }
                }
                // Nothing new for a moment (a slow link): show what came.
                () = tokio::time::sleep(STALL), if reading.grouped && !reading.pending.is_empty() => {
                    self.deliver(&mut reading, &mut map, &mut deliver);
                }
                sn = &mut fetch => break sn?,
            }
        };
        // Everything the parser sent came before it returned.
        while let Ok(event) = rx.try_recv() {
            reading.take(event, self);
        }
        if reading.grouped {
            self.deliver(&mut reading, &mut map, &mut deliver);
        } else {
            let mut keys = self.keys.write().expect("key ring lock");
            let out = self.open_all(&mut keys, std::mem::take(&mut reading.pending), &mut map);
            drop(keys);
            deliver(out, Vec::new());
        }
        Ok(sn)
    }

    /// Opens and hands on the nodes of a grouped `f` read so far.
    fn deliver<T>(
        &self,
        reading: &mut StreamedTree,
        map: &mut impl FnMut(DecryptedNode) -> Option<T>,
        deliver: &mut impl FnMut(Vec<T>, Vec<String>),
    ) {
        if !reading.grouped {
            return;
        }
        let mut complete = Vec::new();
        let mut out = Vec::with_capacity(reading.pending.len());
        let mut keys = self.keys.write().expect("key ring lock");
        for node in reading.pending.drain(..) {
            reading.groups.next(&node, &mut complete);
            // Parents come first, so a share's root (and its key) precedes its nodes.
            keys.learn_incoming_share(&node);
            out.extend(map(self.open(&keys, node)));
        }
        drop(keys);
        deliver(out, complete);
    }

    /// Decrypts a whole listing in any order.
    fn open_all<T>(
        &self,
        keys: &mut KeyRing,
        nodes: Vec<WireNode>,
        map: &mut impl FnMut(DecryptedNode) -> Option<T>,
    ) -> Vec<T> {
        // Every share key first: a node may come before the share root whose key opens it.
        for node in &nodes {
            keys.learn_incoming_share(node);
        }
        let mut out = Vec::with_capacity(nodes.len());
        for node in nodes {
            out.extend(map(self.open(keys, node)));
        }
        out
    }

    /// Decrypts a node of `f`.
    fn open(&self, keys: &KeyRing, node: WireNode) -> DecryptedNode {
        let mut node = keys.decrypt(node);
        if let Some(root) = &self.public_root
            && &node.wire.h == root
        {
            // The shared folder stands in for the Cloud Drive root; its parent is not ours
            // to see.
            node.wire.t = wire::NODE_ROOT;
            node.wire.p = String::new();
        }
        node
    }

    /// The key of a folder this account shares (learnt from `f`'s `ok` list), e.g. to print the
    /// link of a folder exported earlier with the key it was exported with.
    pub fn share_key(&self, handle: &str) -> Option<zeroize::Zeroizing<[u8; 16]>> {
        let keys = self.keys.read().expect("key ring lock");
        keys.share_key(handle).map(|k| zeroize::Zeroizing::new(*k))
    }

    /// Decrypts nodes that arrive outside `f` (action packets, `p` answers).
    pub fn decrypt(&self, node: WireNode) -> DecryptedNode {
        let mut keys = self.keys.write().expect("key ring lock");
        keys.learn_incoming_share(&node);
        keys.decrypt(node)
    }

    /// Creates a folder under `parent` with the given attributes (which must hold `n`).
    pub async fn mkdir(
        &self,
        parent: &str,
        attributes: &Map<String, Value>,
    ) -> Result<DecryptedNode> {
        let key = NodeKey::Folder(mc::generate_folder_key());
        self.put_node(parent, "xxxxxxxx", wire::NODE_FOLDER, &key, attributes)
            .await
    }

    /// Uploads the plaintext file at `path` as a new file node under `parent`. When `replaces`
    /// names an existing node, that node is deleted once the new one exists, so the folder never
    /// holds two nodes of the name (the old one is only removed after the new one is safe).
    pub async fn upload(
        &self,
        parent: &str,
        path: &Path,
        attributes: &Map<String, Value>,
        replaces: Option<&str>,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<DecryptedNode> {
        let (key, uploaded) = self.upload_data(path, progress).await?;
        self.commit_upload(parent, key, &uploaded, attributes, replaces)
            .await
    }

    /// The first half of [`MegaClient::upload`]: encrypts and sends the content. Nothing is
    /// visible in the tree until [`MegaClient::commit_upload`].
    pub async fn upload_data(
        &self,
        content: impl Into<Content>,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<(FileKey, transfer::UploadedData)> {
        let content = content.into();
        let file_key = FileKey::generate();
        let size = content.len().map_err(transfer::read_error)?;
        let resume = transfer::UploadResume {
            url: self.upload_urls.get(size).await?,
            ..Default::default()
        };
        let uploaded =
            transfer::upload_to(&self.api, &content, &file_key, &resume, progress, |_, _| {})
                .await?;
        Ok((file_key, uploaded))
    }

    /// The second half of [`MegaClient::upload`]: creates the node (and removes `replaces`).
    pub async fn commit_upload(
        &self,
        parent: &str,
        file_key: FileKey,
        uploaded: &transfer::UploadedData,
        attributes: &Map<String, Value>,
        replaces: Option<&str>,
    ) -> Result<DecryptedNode> {
        let item = UploadCommit {
            parent,
            key: &file_key,
            uploaded,
            attributes,
            replaces,
        };
        self.commit_uploads(&[item])
            .await?
            .pop()
            .expect("one result per upload")
    }

    /// Commits many uploads in one request: a `p` per folder with all of that folder's files
    /// (one write of the server's metadata instead of one per file), then, in a second
    /// request, a `d` for each node replaced by a file that now exists — never before, so a
    /// failed `p` leaves the old content in place. A `p` is all or nothing: one refused with
    /// several files is sent again file by file, so that each upload gets its own answer. The
    /// outer error is the request's; each upload has its own result.
    ///
    /// A replaced node that cannot be deleted is logged and left: the new content is safe
    /// and committed, and committing it again would only add another node.
    pub async fn commit_uploads(
        &self,
        items: &[UploadCommit<'_>],
    ) -> Result<Vec<Result<DecryptedNode>>> {
        let elements: Vec<Value> = {
            let keys = self.keys.read().expect("key ring lock");
            items
                .iter()
                .map(|item| {
                    let key = NodeKey::File {
                        key: item.key.clone(),
                        meta_mac: item.uploaded.meta_mac,
                    };
                    new_node_element(
                        &keys,
                        &item.uploaded.token,
                        wire::NODE_FILE,
                        &key,
                        item.attributes,
                    )
                })
                .collect()
        };
        // The items of each folder, folders in the order they first appear.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let g = *group_of.entry(item.parent).or_insert_with(|| {
                groups.push((item.parent, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let put = |parent: &str, members: &[usize]| {
            let n: Vec<Value> = members.iter().map(|&i| elements[i].clone()).collect();
            self.tagged(json!({"a": "p", "t": parent, "n": n}))
        };
        let commands = groups.iter().map(|(parent, m)| put(parent, m)).collect();
        let answers = self.api.batch(commands).await?;
        let mut results: Vec<Option<Result<DecryptedNode>>> = items.iter().map(|_| None).collect();
        let mut one_by_one = Vec::new();
        for ((_, members), answer) in groups.iter().zip(answers) {
            match answer.and_then(|a| created_nodes(&a, members.len())) {
                Ok(nodes) => {
                    for (&i, node) in members.iter().zip(nodes) {
                        results[i] = Some(Ok(self.decrypt(node)));
                    }
                }
                Err(_) if members.len() > 1 => one_by_one.extend(members.iter().copied()),
                Err(e) => results[members[0]] = Some(Err(e)),
            }
        }
        if !one_by_one.is_empty() {
            let commands = one_by_one
                .iter()
                .map(|&i| put(items[i].parent, &[i]))
                .collect();
            let answers = self.api.batch(commands).await?;
            for (&i, answer) in one_by_one.iter().zip(answers) {
                let node = answer
                    .and_then(|a| created_nodes(&a, 1))
                    .map(|mut n| n.remove(0));
                results[i] = Some(node.map(|n| self.decrypt(n)));
            }
        }
        let results: Vec<Result<DecryptedNode>> = results
            .into_iter()
            .map(|r| r.expect("every upload has an answer"))
            .collect();
        let replaced: Vec<&str> = items
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .filter_map(|(item, _)| item.replaces)
            .collect();
        if !replaced.is_empty() {
            let commands = replaced
                .iter()
                .map(|h| self.tagged(json!({"a": "d", "n": h})))
                .collect();
            let outcome = match self.api.batch(commands).await {
                Ok(answers) => answers.into_iter().filter_map(Result::err).collect(),
                Err(e) => vec![e],
            };
            for error in outcome {
                if !matches!(error, MegaError::Api(super::ErrorCode::NotFound)) {
                    tracing::warn!(%error, "a replaced node could not be deleted; it stays beside the new one");
                }
            }
        }
        Ok(results)
    }

    /// Creates many nodes under `target` in one `p` (the server takes up to 1 000): folders
    /// and files whose content [`MegaClient::upload_data`] already sent. A folder may be the
    /// parent of later entries of the same batch. All or nothing; the new nodes come back in
    /// the batch's order.
    pub async fn put_nodes(&self, target: &str, nodes: Vec<NewNode>) -> Result<Vec<DecryptedNode>> {
        let elements: Vec<Value> = {
            let keys = self.keys.read().expect("key ring lock");
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let (h, t, key) = match n.content {
                        NewContent::Folder => (
                            format!("x{i:07}"),
                            wire::NODE_FOLDER,
                            NodeKey::Folder(mc::generate_folder_key()),
                        ),
                        NewContent::File { key, uploaded } => (
                            uploaded.token,
                            wire::NODE_FILE,
                            NodeKey::File {
                                key,
                                meta_mac: uploaded.meta_mac,
                            },
                        ),
                    };
                    let mut e = new_node_element(&keys, &h, t, &key, &n.attributes);
                    if let Some(parent) = n.parent {
                        e["p"] = json!(format!("x{parent:07}"));
                    }
                    e
                })
                .collect()
        };
        let count = elements.len();
        let answer = self
            .api
            .call(self.tagged(json!({"a": "p", "t": target, "n": elements})))
            .await?;
        let created: Vec<WireNode> = answer
            .get("f")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| MegaError::malformed(format!("p: {e}")))?
            .unwrap_or_default();
        if created.len() != count {
            return Err(MegaError::malformed(format!(
                "p created {} nodes of {count}",
                created.len()
            )));
        }
        Ok(created.into_iter().map(|n| self.decrypt(n)).collect())
    }

    async fn put_node(
        &self,
        parent: &str,
        h: &str,
        t: i64,
        key: &NodeKey,
        attributes: &Map<String, Value>,
    ) -> Result<DecryptedNode> {
        let element = {
            let keys = self.keys.read().expect("key ring lock");
            new_node_element(&keys, h, t, key, attributes)
        };
        let answer = self
            .api
            .call(self.tagged(json!({"a": "p", "t": parent, "n": [element]})))
            .await?;
        let node = created_nodes(&answer, 1)?.remove(0);
        Ok(self.decrypt(node))
    }

    /// Replaces a node's attributes (rename, metadata). `key` is the node's key.
    pub async fn set_attributes(
        &self,
        handle: &str,
        key: &NodeKey,
        attributes: &Map<String, Value>,
    ) -> Result<()> {
        let at = mc::encrypt_attributes(key.attribute_key(), attributes);
        self.api
            .call(self.tagged(json!({"a": "a", "n": handle, "at": at})))
            .await
            .map(drop)
    }

    /// [`MegaClient::set_attributes`] of several nodes in one request: a result each.
    pub async fn set_attributes_many(
        &self,
        changes: &[(&str, &NodeKey, &Map<String, Value>)],
    ) -> Result<Vec<Result<()>>> {
        let commands = changes
            .iter()
            .map(|(handle, key, attributes)| {
                let at = mc::encrypt_attributes(key.attribute_key(), attributes);
                self.tagged(json!({"a": "a", "n": handle, "at": at}))
            })
            .collect();
        let results = self.api.batch(commands).await?;
        Ok(results.into_iter().map(|r| r.map(drop)).collect())
    }

    /// Moves a node under another folder.
    pub async fn move_node(&self, handle: &str, new_parent: &str) -> Result<()> {
        self.api
            .call(self.tagged(json!({"a": "m", "n": handle, "t": new_parent})))
            .await
            .map(drop)
    }

    /// Deletes a node and everything under it, permanently.
    pub async fn delete(&self, handle: &str) -> Result<()> {
        self.api
            .call(self.tagged(json!({"a": "d", "n": handle})))
            .await
            .map(drop)
    }

    /// Where to download a file's encrypted data from.
    pub async fn download_info(&self, handle: &str) -> Result<DownloadInfo> {
        transfer::download_info(&self.api, handle, self.options).await
    }

    /// Encrypted bytes `range` of a download URL.
    pub async fn fetch_range(
        &self,
        url: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes> {
        transfer::fetch_range(self.api.http(), self.api.policy(), url, range).await
    }

    /// Encrypted bytes `range` of a download URL, in one buffer per piece of `lens` (see
    /// [`transfer::fetch_split`]).
    pub async fn fetch_split(
        &self,
        url: &str,
        range: std::ops::Range<u64>,
        lens: &[usize],
    ) -> Result<Vec<Vec<u8>>> {
        transfer::fetch_split(self.api.http(), self.api.policy(), url, range, lens).await
    }

    /// Storage use and limit (`uq`).
    pub async fn quota(&self) -> Result<Quota> {
        if self.public_root.is_some() {
            // A visitor of a link has no storage of their own (and `uq` needs a session).
            return Ok(Quota { used: 0, total: 0 });
        }
        let answer = self.api.call(json!({"a": "uq", "strg": 1})).await?;
        let field = |name: &str| {
            answer
                .get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| MegaError::malformed(format!("uq answer without {name}")))
        };
        Ok(Quota {
            used: field("cstrg")?,
            total: field("mstrg")?,
        })
    }

    /// One `sc` poll: new action packets since `sn`, or a URL to wait on when there are none.
    pub async fn poll_actions(&self, sn: &str) -> Result<ActionPackets> {
        if self.public_root.is_some() {
            // A folder link is read as a snapshot (the server has no change feed for links):
            // answer "nothing new" at a long-poll's pace; a remount shows later changes.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            return Ok(ActionPackets {
                a: Some(Vec::new()),
                sn: Some(sn.to_string()),
                w: None,
            });
        }
        let sid = self.api.session().unwrap_or_default();
        let url = format!("{}sc?sn={sn}&sid={sid}", self.api.gateway());
        let response = self
            .api
            .http()
            .post(&url)
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .map_err(super::api::network_error)?;
        if response.status().as_u16() != 200 {
            return Err(MegaError::Http(response.status().as_u16()));
        }
        let value: Value = response.json().await.map_err(super::api::network_error)?;
        if let Some(code) = value.as_i64() {
            return Err(MegaError::Api(super::ErrorCode::from_code(code)));
        }
        serde_json::from_value(value).map_err(|e| MegaError::malformed(format!("sc: {e}")))
    }

    /// Waits on a wait URL from `sc` until the server has news (or its timeout passes).
    pub async fn wait(&self, url: &str) -> Result<()> {
        self.api
            .http()
            .post(url)
            .timeout(std::time::Duration::from_secs(300))
            .send()
            .await
            .map_err(super::api::network_error)?;
        Ok(())
    }
}

/// One element of `p`'s `n`: `h` (a placeholder, or an upload's completion token), the type,
/// the attributes encrypted under the node key and the node key wrapped under the master key.
fn new_node_element(
    keys: &KeyRing,
    h: &str,
    t: i64,
    key: &NodeKey,
    attributes: &Map<String, Value>,
) -> Value {
    json!({
        "h": h, "t": t,
        "a": mc::encrypt_attributes(key.attribute_key(), attributes),
        "k": keys.wrap_key(key),
    })
}

/// The `count` nodes a `p` answered with, in the order they were asked for.
fn created_nodes(answer: &Value, count: usize) -> Result<Vec<WireNode>> {
    let mut nodes: Vec<WireNode> = answer
        .get("f")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| MegaError::malformed(format!("p: {e}")))?
        .unwrap_or_default();
    if nodes.len() < count {
        return Err(MegaError::malformed(format!(
            "p answered {} nodes for {count}",
            nodes.len()
        )));
    }
    nodes.truncate(count);
    Ok(nodes)
}
