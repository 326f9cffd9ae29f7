//! The file tree: `f` (fetch), `p` (create folders, complete uploads), `a` (attributes),
//! `m` (move), `d` (delete).
//!
//! Nodes hold only what MEGA's servers see: handles, parent, type, size, time, the encrypted
//! attributes and the wrapped key as opaque base64. A child index (`c/<user>/<parent>/<child>`)
//! makes subtree walks and cycle checks cheap. Every change is one atomic batch that also
//! appends the action packets other sessions will receive.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::AppState;
use super::accounts::{self, Account};
use super::actions;
use super::api::{Answer, Ctx, handle_arg, instance_id, opt_str, str_arg};
use super::errors::{ApiError, ApiResult};
use super::store::{Writes, keys, now, random_handle};
use super::transfer;
use crate::crypto::mega::b64_decode;

pub const TYPE_FILE: i64 = 0;
pub const TYPE_FOLDER: i64 = 1;
pub const TYPE_ROOT: i64 = 2;
pub const TYPE_INBOX: i64 = 3;
pub const TYPE_RUBBISH: i64 = 4;

/// Most nodes one `p` may create.
const MAX_NEW_NODES: usize = 1000;
/// Largest encrypted attribute blob accepted.
const MAX_ATTRS: usize = 64 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Node {
    pub h: String,
    /// Parent handle; empty for the three roots.
    pub p: String,
    pub t: i64,
    /// Encrypted attributes (base64); empty for roots.
    pub a: String,
    /// The node key wrapped with the owner's master key (base64); empty for roots.
    pub k: String,
    pub s: Option<u64>,
    pub ts: i64,
    /// Blob id of a file's content.
    pub blob: Option<String>,
    pub fa: Option<String>,
}

impl Node {
    pub fn new_root(t: i64, ts: i64) -> Node {
        Node {
            h: random_handle::<6>(),
            p: String::new(),
            t,
            a: String::new(),
            k: String::new(),
            s: None,
            ts,
            blob: None,
            fa: None,
        }
    }

    /// Can hold children.
    pub fn is_container(&self) -> bool {
        self.t != TYPE_FILE
    }

    /// The wire form (§4.6). `k` is `<owner>:<key>`: go-mega takes only the first pair and
    /// requires it to be the owner's.
    pub fn wire(&self, uh: &str) -> Value {
        serde_json::to_value(self.wire_ref(uh)).expect("JSON values serialize")
    }

    /// [`Node::wire`] without building a [`Value`]: serialized as it is, borrowing every field.
    fn wire_ref<'a>(&'a self, uh: &'a str) -> WireRef<'a> {
        WireRef {
            h: &self.h,
            p: &self.p,
            u: uh,
            t: self.t,
            a: &self.a,
            k: KeyRef { uh, k: &self.k },
            s: (self.t == TYPE_FILE).then_some(self.s.unwrap_or(0)),
            ts: self.ts,
            fa: self.fa.as_deref(),
        }
    }
}

/// A node's wire form, borrowed from it.
#[derive(Serialize)]
struct WireRef<'a> {
    h: &'a str,
    p: &'a str,
    u: &'a str,
    t: i64,
    a: &'a str,
    k: KeyRef<'a>,
    /// Files only.
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fa: Option<&'a str>,
}

/// `<owner>:<key>`, or empty for the roots (which have no key).
struct KeyRef<'a> {
    uh: &'a str,
    k: &'a str,
}

impl Serialize for KeyRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.k.is_empty() {
            s.serialize_str("")
        } else {
            s.collect_str(&format_args!("{}:{}", self.uh, self.k))
        }
    }
}

/// Writes a node and its entry in the parent's child index.
pub fn put_node(writes: &mut Writes, uh: &str, node: &Node) {
    writes.put(keys::node(uh, &node.h), node);
    if !node.p.is_empty() {
        writes.put(keys::child(uh, &node.p, &node.h), &());
    }
}

pub fn load_node(state: &AppState, uh: &str, h: &str) -> ApiResult<Node> {
    state
        .store
        .get(&keys::node(uh, h))?
        .ok_or(ApiError::NotFound)
}

pub fn children(state: &AppState, uh: &str, parent: &str) -> ApiResult<Vec<String>> {
    let prefix = keys::children(uh, parent);
    Ok(state
        .store
        .scan_keys(&prefix)?
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}

fn all_nodes(state: &AppState, uh: &str) -> ApiResult<Vec<Node>> {
    Ok(state
        .store
        .scan::<Node>(&keys::nodes(uh))?
        .into_iter()
        .map(|(_, n)| n)
        .collect())
}

/// Nodes ordered parents first: megajs attaches a node to its parent only if it has already
/// seen the parent.
fn parents_first(nodes: Vec<Node>) -> Vec<Node> {
    let mut by_parent: HashMap<String, Vec<usize>> = HashMap::new();
    let mut queue = VecDeque::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.p.is_empty() {
            queue.push_back(i);
        } else {
            by_parent.entry(n.p.clone()).or_default().push(i);
        }
    }
    let mut order = Vec::with_capacity(nodes.len());
    let mut seen = vec![false; nodes.len()];
    while let Some(i) = queue.pop_front() {
        seen[i] = true;
        order.push(i);
        if let Some(kids) = by_parent.get(&nodes[i].h) {
            queue.extend(kids.iter().copied());
        }
    }
    // Anything unreachable (a bug elsewhere) is still listed rather than hidden.
    order.extend((0..nodes.len()).filter(|&i| !seen[i]));
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// `f`: the whole tree, `ok: []` always (megajs reduces over it), and the sequence number
/// (a string) to start `sc` from. Written straight to JSON text: as a [`Value`], the answer of
/// a big account would cost several times its size to build.
///
/// The nodes come breadth first (see [`parents_first`]): each folder's children contiguous,
/// the folders' groups in the order the folders themselves were listed. `veilfs_groups`
/// promises that order, ahead of `f` so that a client reading the answer as it arrives knows
/// it in time: a veilfs mount then answers for a folder as soon as its group is complete,
/// before the rest of a big tree has arrived. Other clients ignore the field.
pub async fn fetch(ctx: &Ctx<'_>) -> ApiResult<Answer> {
    let uh = &ctx.auth()?.uh;
    // Read the sequence number before the nodes: a change landing in between is then both in
    // the listing and replayed by `sc`, which clients handle; the other order could lose it.
    let account = accounts::load(ctx.state, uh)?;
    let nodes = parents_first(all_nodes(ctx.state, uh)?);
    let (ok, ph) = super::links::owner_lists(ctx, uh)?;
    let answer = FetchAnswer {
        veilfs_groups: 1,
        sn: actions::encode_sn(account.seq),
        ok,
        ph,
        s: [],
        f: NodeList { nodes: &nodes, uh },
    };
    Ok(Answer::Json(
        serde_json::to_vec(&answer).expect("JSON values serialize"),
    ))
}

#[derive(Serialize)]
struct FetchAnswer<'a> {
    veilfs_groups: u8,
    sn: String,
    ok: Vec<Value>,
    ph: Vec<Value>,
    s: [(); 0],
    f: NodeList<'a>,
}

struct NodeList<'a> {
    nodes: &'a [Node],
    uh: &'a str,
}

impl Serialize for NodeList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.nodes.iter().map(|n| n.wire_ref(self.uh)))
    }
}

/// Validates encrypted attributes: base64 of whole AES blocks, bounded.
fn check_attrs(a: &str) -> ApiResult<()> {
    let bytes = b64_decode(a).map_err(|_| ApiError::Args)?;
    if bytes.is_empty() || bytes.len() % 16 != 0 || bytes.len() > MAX_ATTRS {
        return Err(ApiError::Args);
    }
    Ok(())
}

/// Validates a wrapped node key: 16 bytes for folders, 32 for files.
fn check_key(k: &str, t: i64) -> ApiResult<()> {
    let bytes = b64_decode(k).map_err(|_| ApiError::Args)?;
    let expected = if t == TYPE_FILE { 32 } else { 16 };
    if bytes.len() != expected {
        return Err(ApiError::Args);
    }
    Ok(())
}

/// `p`: creates nodes under `t`. Folders get `h: "xxxxxxxx"` (any placeholder); files carry
/// the upload completion token in `h`. An element's optional `p` names an earlier element's
/// placeholder as its parent (nested creation). All or nothing.
pub async fn put(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let target = handle_arg(cmd, "t")?;
    let elements = match cmd.get("n") {
        Some(Value::Array(n)) if !n.is_empty() && n.len() <= MAX_NEW_NODES => n,
        _ => return Err(ApiError::Args),
    };
    let state = ctx.state;
    let guard = state.store.lock().await;
    let mut account = accounts::load(state, &uh)?;
    if !load_node(state, &uh, target)?.is_container() {
        return Err(ApiError::Args);
    }
    let ts = now();
    let mut created: Vec<Node> = Vec::with_capacity(elements.len());
    let mut placeholders: HashMap<&str, String> = HashMap::new();
    let mut uploads: Vec<(String, transfer::CompletedUpload)> = Vec::new();
    for element in elements {
        let el = element.as_object().ok_or(ApiError::Args)?;
        let t = el.get("t").and_then(Value::as_i64).ok_or(ApiError::Args)?;
        let h = str_arg(el, "h")?;
        let a = str_arg(el, "a")?;
        let k = str_arg(el, "k")?;
        if t != TYPE_FILE && t != TYPE_FOLDER {
            return Err(ApiError::Args);
        }
        check_attrs(a)?;
        check_key(k, t)?;
        let fa = opt_str(el, "fa")?;
        if fa.is_some_and(|fa| fa.len() > 1024) {
            return Err(ApiError::Args);
        }
        let parent = match opt_str(el, "p")? {
            Some(p) => placeholders.get(p).cloned().ok_or(ApiError::Args)?,
            None => target.to_string(),
        };
        let mut node = Node {
            h: random_handle::<6>(),
            p: parent,
            t,
            a: a.to_string(),
            k: k.to_string(),
            s: None,
            ts,
            blob: None,
            fa: fa.map(str::to_string),
        };
        if t == TYPE_FILE {
            let token = transfer::normalize_token(h);
            if uploads.iter().any(|(t, _)| *t == token) {
                return Err(ApiError::Args);
            }
            let upload = transfer::completed_upload(state, &uh, &token)?;
            node.s = Some(upload.size);
            node.blob = Some(upload.id.clone());
            uploads.push((token, upload));
        } else {
            if h.len() > 64 {
                return Err(ApiError::Args);
            }
            placeholders.insert(h, node.h.clone());
        }
        created.push(node);
    }
    let added: u64 = uploads.iter().map(|(_, u)| u.size).sum();
    if account.used.saturating_add(added) > account.quota {
        // Over quota: the content is dropped, not kept waiting for a retry that cannot succeed.
        drop(guard);
        transfer::discard_completed(state, &uploads).await?;
        return Err(ApiError::OverQuota);
    }
    for (_, upload) in &uploads {
        state.blobs.publish(&upload.id).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // The content is gone (held in memory by a server that restarted since, see
                // `blobs::Held`): as for an unknown token, the client uploads again.
                ApiError::NotFound
            } else {
                e.into()
            }
        })?;
    }
    let mut writes = Writes::new();
    for node in &created {
        put_node(&mut writes, &uh, node);
    }
    for (token, _) in &uploads {
        writes.remove(keys::upload(token));
    }
    account.used += added;
    let wire: Vec<Value> = created.iter().map(|n| n.wire(&uh)).collect();
    let packet = actions::packet(
        "t",
        instance_id(cmd),
        json!({"t": {"f": wire.clone()}, "ou": uh}),
    );
    let seq = actions::append(&mut writes, &mut account, vec![packet]);
    accounts::save(&mut writes, &account);
    ctx.commit(writes, &uh, seq)?;
    drop(guard);
    Ok(json!({"f": wire}))
}

/// The node named by `n`, which must exist and not be one of the roots.
fn movable_node(ctx: &Ctx<'_>, uh: &str, cmd: &Map<String, Value>) -> ApiResult<Node> {
    let node = load_node(ctx.state, uh, handle_arg(cmd, "n")?)?;
    if node.p.is_empty() {
        return Err(ApiError::Access);
    }
    Ok(node)
}

/// `a`: replaces a node's encrypted attributes (`at`; go-mega sends `attr`, plus a `key` we
/// ignore).
pub async fn set_attributes(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let at = match opt_str(cmd, "at")? {
        Some(at) => at,
        None => str_arg(cmd, "attr")?,
    };
    check_attrs(at)?;
    let state = ctx.state;
    let guard = state.store.lock().await;
    let mut account = accounts::load(state, &uh)?;
    let mut node = movable_node(ctx, &uh, cmd)?;
    node.a = at.to_string();
    let mut writes = Writes::new();
    writes.put(keys::node(&uh, &node.h), &node);
    let packet = actions::packet(
        "u",
        instance_id(cmd),
        json!({"n": node.h, "u": uh, "at": node.a, "ts": node.ts}),
    );
    let seq = actions::append(&mut writes, &mut account, vec![packet]);
    accounts::save(&mut writes, &account);
    ctx.commit(writes, &uh, seq)?;
    drop(guard);
    Ok(json!(0))
}

/// `m`: moves a node under another folder. Moving a folder into its own subtree is ECIRCULAR.
/// The packets are a `d` (marked `m: 1`) and a `t` for the same node in one batch: megajs pairs
/// them only when they arrive together.
pub async fn move_node(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let target_h = handle_arg(cmd, "t")?;
    let state = ctx.state;
    let guard = state.store.lock().await;
    let mut account = accounts::load(state, &uh)?;
    let mut node = movable_node(ctx, &uh, cmd)?;
    let target = load_node(state, &uh, target_h)?;
    if !target.is_container() {
        return Err(ApiError::Args);
    }
    // Walk up from the target: meeting the node means the target is inside it.
    let mut cursor = target.clone();
    loop {
        if cursor.h == node.h {
            return Err(ApiError::Circular);
        }
        if cursor.p.is_empty() {
            break;
        }
        cursor = load_node(state, &uh, &cursor.p)?;
    }
    if node.p == target.h {
        return Ok(json!(0));
    }
    let mut writes = Writes::new();
    writes.remove(keys::child(&uh, &node.p, &node.h));
    node.p = target.h.clone();
    put_node(&mut writes, &uh, &node);
    let i = instance_id(cmd);
    let packets = vec![
        actions::packet("d", i.clone(), json!({"n": node.h, "m": 1})),
        actions::packet("t", i, json!({"t": {"f": [node.wire(&uh)]}, "ou": uh})),
    ];
    let seq = actions::append(&mut writes, &mut account, packets);
    accounts::save(&mut writes, &account);
    ctx.commit(writes, &uh, seq)?;
    drop(guard);
    Ok(json!(0))
}

/// `d`: deletes a node and everything under it, and their content. One `d` packet for the top
/// node only: megajs crashes on a `d` for a node it no longer knows.
pub async fn delete(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let state = ctx.state;
    let guard = state.store.lock().await;
    let mut account = accounts::load(state, &uh)?;
    let top = movable_node(ctx, &uh, cmd)?;
    let mut writes = Writes::new();
    let mut blobs = Vec::new();
    let mut freed = 0u64;
    let mut stack = vec![top.clone()];
    while let Some(node) = stack.pop() {
        for child in children(state, &uh, &node.h)? {
            stack.push(load_node(state, &uh, &child)?);
        }
        writes.remove(keys::node(&uh, &node.h));
        writes.remove(keys::child(&uh, &node.p, &node.h));
        super::links::forget_node(ctx, &uh, &node.h, &mut writes)?;
        if let Some(blob) = &node.blob {
            blobs.push(blob.clone());
            freed += node.s.unwrap_or(0);
        }
    }
    account.used = account.used.saturating_sub(freed);
    let packet = actions::packet("d", instance_id(cmd), json!({"n": top.h}));
    let seq = actions::append(&mut writes, &mut account, vec![packet]);
    accounts::save(&mut writes, &account);
    state.store.apply(writes).await?;
    drop(guard);
    state.notifier.notify(&uh, seq);
    // The nodes are gone for good; content removal failing only leaks disk space.
    for blob in blobs {
        if let Err(e) = state.blobs.delete(&blob).await {
            tracing::warn!(blob, error = %e, "could not delete blob of a deleted node");
        }
    }
    Ok(json!(0))
}

/// Bytes, files and folders under each root, for `uq`.
pub fn usage_per_root(
    state: &AppState,
    account: &Account,
) -> ApiResult<BTreeMap<String, (u64, u64, u64)>> {
    let nodes = all_nodes(state, &account.u)?;
    let parent: HashMap<&str, &str> = nodes.iter().map(|n| (n.h.as_str(), n.p.as_str())).collect();
    let mut out: BTreeMap<String, (u64, u64, u64)> = account
        .roots
        .iter()
        .map(|r| (r.clone(), (0, 0, 0)))
        .collect();
    for node in nodes.iter().filter(|n| !n.p.is_empty()) {
        let mut cursor = node.p.as_str();
        let mut hops = HashSet::new();
        while let Some(&p) = parent.get(cursor) {
            if p.is_empty() || !hops.insert(cursor) {
                break;
            }
            cursor = p;
        }
        if let Some(entry) = out.get_mut(cursor) {
            if node.t == TYPE_FILE {
                entry.0 += node.s.unwrap_or(0);
                entry.1 += 1;
            } else {
                entry.2 += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::api::is_handle;

    fn node(h: &str, p: &str, t: i64) -> Node {
        Node {
            h: h.into(),
            p: p.into(),
            t,
            a: String::new(),
            k: String::new(),
            s: None,
            ts: 0,
            blob: None,
            fa: None,
        }
    }

    #[test]
    fn parents_come_before_children() {
        let nodes = vec![
            node("cccccccc", "bbbbbbbb", 0),
            node("bbbbbbbb", "aaaaaaaa", 1),
            node("aaaaaaaa", "", 2),
            node("dddddddd", "zzzzzzzz", 0),
        ];
        let order: Vec<String> = parents_first(nodes).into_iter().map(|n| n.h).collect();
        assert_eq!(order, ["aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd"]);
    }

    #[test]
    fn wire_form_prefixes_the_owner_and_sizes_files_only() {
        let mut file = node("cccccccc", "bbbbbbbb", 0);
        file.k = "KEY".into();
        file.s = Some(5);
        let w = file.wire("uuuuuuuuuuu");
        assert_eq!(w["k"], "uuuuuuuuuuu:KEY");
        assert_eq!(w["s"], 5);
        let root = node("aaaaaaaa", "", 2).wire("uuuuuuuuuuu");
        assert_eq!(root["k"], "");
        assert!(root.get("s").is_none());
        assert!(is_handle(root["h"].as_str().unwrap(), 8));
    }

    #[test]
    fn attribute_and_key_checks() {
        assert!(check_attrs("").is_err());
        assert!(check_attrs("not base64!").is_err());
        assert!(check_attrs(&crate::crypto::mega::b64_encode(&[0; 15])).is_err());
        assert!(check_attrs(&crate::crypto::mega::b64_encode(&[0; 32])).is_ok());
        assert!(check_key(&crate::crypto::mega::b64_encode(&[0; 16]), TYPE_FOLDER).is_ok());
        assert!(check_key(&crate::crypto::mega::b64_encode(&[0; 16]), TYPE_FILE).is_err());
    }
}
