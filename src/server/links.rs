//! Public links (reference §4.13, §8): `l` exports a node under a public handle, `s2` with the
//! pseudo-user `EXP` makes a folder shareable by storing its share key (wrapped by the owner's
//! master key) and its nodes' keys wrapped by the share key, and anyone holding a link reads
//! through `g` with `p` (a file) or `f`/`g` with `?n=<public handle>` (a folder).
//!
//! As everywhere, the server holds only wrapped keys: the link's key part (`#…`) never reaches
//! it, so a public handle alone lets a visitor fetch ciphertext and encrypted attributes only.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::accounts;
use super::actions;
use super::api::{Ctx, handle_arg, instance_id, is_handle};
use super::errors::{ApiError, ApiResult};
use super::nodes::{self, Node, TYPE_FILE, TYPE_FOLDER};
use super::store::{Writes, keys, random_handle};
use super::transfer;
use crate::crypto::mega::b64_decode;

/// What a public handle points at.
#[derive(Serialize, Deserialize, Clone)]
pub struct PublicLink {
    pub uh: String,
    pub h: String,
}

/// A folder shared by link: its share key wrapped by the owner's master key (`ok`) and the
/// handle auth the owner's client checks before trusting it (`ha`).
#[derive(Serialize, Deserialize, Clone)]
pub struct Share {
    pub ok: String,
    pub ha: String,
}

/// A flag argument: `1`, `"1"` or `true`.
fn flag(cmd: &Map<String, Value>, key: &str) -> bool {
    match cmd.get(key) {
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        Some(Value::String(s)) => !s.is_empty() && s != "0",
        Some(Value::Bool(b)) => *b,
        _ => false,
    }
}

/// `l`: the node's public handle, made on first call and the same on every later one; with
/// `d: 1` the link is removed. A folder needs an `s2` share first (its key travels in the
/// link), else EACCESS.
pub async fn export(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let h = handle_arg(cmd, "n")?;
    let state = ctx.state;
    let guard = state.store.lock().await;
    let mut account = accounts::load(state, &uh)?;
    let node = nodes::load_node(state, &uh, h)?;
    if node.p.is_empty() {
        return Err(ApiError::Access);
    }
    let existing: Option<String> = state.store.get(&keys::export(&uh, h))?;
    let mut writes = Writes::new();
    let (answer, packet) = if flag(cmd, "d") {
        let ph = existing.ok_or(ApiError::NotFound)?;
        writes.remove(keys::public_link(&ph));
        writes.remove(keys::export(&uh, h));
        (json!(0), json!({"h": h, "ph": ph, "d": 1}))
    } else {
        if let Some(ph) = existing {
            return Ok(json!(ph));
        }
        if node.t != TYPE_FILE && !state.store.contains(&keys::share(&uh, h))? {
            return Err(ApiError::Access);
        }
        let ph = loop {
            let ph = random_handle::<6>();
            if !state.store.contains(&keys::public_link(&ph))? {
                break ph;
            }
        };
        writes.put(
            keys::public_link(&ph),
            &PublicLink {
                uh: uh.clone(),
                h: h.to_string(),
            },
        );
        writes.put(keys::export(&uh, h), &ph);
        (json!(ph), json!({"h": h, "ph": ph}))
    };
    let packet = actions::packet("ph", instance_id(cmd), packet);
    let seq = actions::append(&mut writes, &mut account, vec![packet]);
    accounts::save(&mut writes, &account);
    state.store.apply(writes).await?;
    drop(guard);
    state.notifier.notify(&uh, seq);
    Ok(answer)
}

/// Parses a crypto request `cr: [[share roots], [nodes], [i, j, key, …]]` into
/// `(share root, node, key wrapped by that share's key)`. `resolve` maps a node reference to a
/// node handle (placeholders in `p`); each node must lie under its share root.
pub fn crypto_request(
    ctx: &Ctx<'_>,
    uh: &str,
    cr: &Value,
    new_share: Option<&str>,
    resolve: impl Fn(&str) -> Option<String>,
    parent_of: impl Fn(&str) -> ApiResult<String>,
) -> ApiResult<Vec<(String, String, String)>> {
    let parts = cr
        .as_array()
        .filter(|p| p.len() == 3)
        .ok_or(ApiError::Args)?;
    let strings = |v: &Value| -> ApiResult<Vec<String>> {
        v.as_array()
            .ok_or(ApiError::Args)?
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or(ApiError::Args))
            .collect()
    };
    let roots = strings(&parts[0])?;
    let refs = strings(&parts[1])?;
    let triples = parts[2].as_array().ok_or(ApiError::Args)?;
    if triples.len() % 3 != 0 {
        return Err(ApiError::Args);
    }
    for root in &roots {
        if Some(root.as_str()) != new_share && !ctx.state.store.contains(&keys::share(uh, root))? {
            return Err(ApiError::Access);
        }
    }
    let mut out = Vec::with_capacity(triples.len() / 3);
    for t in triples.chunks(3) {
        let i = t[0].as_u64().ok_or(ApiError::Args)? as usize;
        let j = t[1].as_u64().ok_or(ApiError::Args)? as usize;
        let key = t[2].as_str().ok_or(ApiError::Args)?;
        let root = roots.get(i).ok_or(ApiError::Args)?;
        let node = resolve(refs.get(j).ok_or(ApiError::Args)?).ok_or(ApiError::Args)?;
        match b64_decode(key) {
            Ok(k) if k.len() == 16 || k.len() == 32 => {}
            _ => return Err(ApiError::Args),
        }
        // The node must be the root or below it.
        let mut cursor = node.clone();
        let mut hops = 0;
        while cursor != *root {
            cursor = parent_of(&cursor)?;
            hops += 1;
            if cursor.is_empty() || hops > 10_000 {
                return Err(ApiError::Args);
            }
        }
        out.push((root.clone(), node, key.to_string()));
    }
    Ok(out)
}

/// `s2`: shares a folder. Only the public-link pseudo-user `EXP` is supported (no sharing
/// between accounts); `r: ""` removes the share, its keys and its link.
pub async fn share(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let uh = ctx.auth()?.uh.clone();
    let h = handle_arg(cmd, "n")?;
    let targets = cmd
        .get("s")
        .and_then(Value::as_array)
        .filter(|s| s.len() == 1)
        .ok_or(ApiError::Args)?;
    let target = targets[0].as_object().ok_or(ApiError::Args)?;
    if target.get("u").and_then(Value::as_str) != Some("EXP") {
        return Err(ApiError::Access);
    }
    let revoke = target.get("r") == Some(&json!(""));
    let state = ctx.state;
    let guard = state.store.lock().await;
    let node = nodes::load_node(state, &uh, h)?;
    if node.t != TYPE_FOLDER {
        return Err(ApiError::Args);
    }
    let mut writes = Writes::new();
    for key in state.store.scan_keys(&keys::share_keys(&uh, h))? {
        writes.remove(key);
    }
    if revoke {
        writes.remove(keys::share(&uh, h));
        if let Some(ph) = state.store.get::<String>(&keys::export(&uh, h))? {
            writes.remove(keys::public_link(&ph));
            writes.remove(keys::export(&uh, h));
        }
    } else {
        // Both are 16 bytes the server cannot open: checked for shape only.
        super::api::b64_arg::<16>(cmd, "ok")?;
        super::api::b64_arg::<16>(cmd, "ha")?;
        let record = Share {
            ok: super::api::str_arg(cmd, "ok")?.to_string(),
            ha: super::api::str_arg(cmd, "ha")?.to_string(),
        };
        if let Some(cr) = cmd.get("cr") {
            let parent_of = |n: &str| Ok(nodes::load_node(state, &uh, n)?.p);
            let resolve = |r: &str| is_handle(r, 8).then(|| r.to_string());
            for (root, n, key) in crypto_request(ctx, &uh, cr, Some(h), resolve, parent_of)? {
                writes.put(keys::share_key(&uh, &root, &n), &key);
            }
        }
        writes.put(keys::share(&uh, h), &record);
    }
    state.store.apply(writes).await?;
    drop(guard);
    Ok(json!({"r": [0], "u": []}))
}

/// The shares and links of an account, for the owner's `f`: `ok` as megajs and the SDK read
/// it, and `ph` (node → public handle).
pub fn owner_lists(ctx: &Ctx<'_>, uh: &str) -> ApiResult<(Vec<Value>, Vec<Value>)> {
    let share_prefix = keys::shares(uh);
    let ok = ctx
        .state
        .store
        .scan::<Share>(&share_prefix)?
        .into_iter()
        .map(|(k, s)| {
            let h = String::from_utf8_lossy(&k[share_prefix.len()..]).into_owned();
            json!({"h": h, "k": s.ok, "ha": s.ha})
        })
        .collect();
    let export_prefix = keys::exports(uh);
    let ph = ctx
        .state
        .store
        .scan::<String>(&export_prefix)?
        .into_iter()
        .map(|(k, ph)| {
            let h = String::from_utf8_lossy(&k[export_prefix.len()..]).into_owned();
            json!({"h": h, "ph": ph})
        })
        .collect();
    Ok((ok, ph))
}

fn link(ctx: &Ctx<'_>, ph: &str) -> ApiResult<PublicLink> {
    if !is_handle(ph, 8) {
        return Err(ApiError::Args);
    }
    ctx.state
        .store
        .get(&keys::public_link(ph))?
        .ok_or(ApiError::NotFound)
}

/// The folder link named by the request's `?n=`: owner and shared folder.
fn folder_link(ctx: &Ctx<'_>) -> ApiResult<(PublicLink, Node)> {
    let ph = ctx.folder_link.as_deref().ok_or(ApiError::Args)?;
    let link = link(ctx, ph)?;
    let root = nodes::load_node(ctx.state, &link.uh, &link.h)?;
    if root.t != TYPE_FOLDER {
        return Err(ApiError::NotFound);
    }
    Ok((link, root))
}

/// `g` with `p`: a file link's size and encrypted attributes, and with `g: 1` its download URL.
pub async fn public_file(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let ph = super::api::str_arg(cmd, "p")?;
    let link = link(ctx, ph)?;
    let node = nodes::load_node(ctx.state, &link.uh, &link.h)?;
    if node.t != TYPE_FILE {
        return Err(ApiError::NotFound);
    }
    transfer::download_answer(ctx, cmd, &link.uh, &node, flag(cmd, "g"))
}

/// `f` with `?n=`: the shared folder and everything under it that has a key wrapped by the
/// share key, each `k` as `<root>:<key>`, the way megajs and the SDK find the root.
pub async fn folder_fetch(ctx: &Ctx<'_>) -> ApiResult<Value> {
    let (link, root) = folder_link(ctx)?;
    let account = accounts::load(ctx.state, &link.uh)?;
    let prefix = keys::share_keys(&link.uh, &root.h);
    let wrapped: std::collections::HashMap<String, String> = ctx
        .state
        .store
        .scan::<String>(&prefix)?
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v))
        .collect();
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(node) = queue.pop_front() {
        for child in nodes::children(ctx.state, &link.uh, &node.h)? {
            queue.push_back(nodes::load_node(ctx.state, &link.uh, &child)?);
        }
        // A node added without a key for this share is not part of the link's view.
        if let Some(key) = wrapped.get(&node.h) {
            let mut wire = node.wire(&link.uh);
            wire["k"] = json!(format!("{}:{key}", link.h));
            out.push(wire);
        }
    }
    Ok(json!({
        "f": out,
        "ok": [],
        "s": [],
        "sn": actions::encode_sn(account.seq),
    }))
}

/// `g` with `n` and `?n=`: download URL of a file inside a folder link.
pub async fn folder_file(ctx: &Ctx<'_>, cmd: &Map<String, Value>) -> ApiResult<Value> {
    let (link, root) = folder_link(ctx)?;
    let node = nodes::load_node(ctx.state, &link.uh, handle_arg(cmd, "n")?)?;
    if node.t != TYPE_FILE {
        return Err(ApiError::Args);
    }
    let mut cursor = node.p.clone();
    while cursor != root.h {
        if cursor.is_empty() {
            return Err(ApiError::NotFound);
        }
        cursor = nodes::load_node(ctx.state, &link.uh, &cursor)?.p;
    }
    transfer::download_answer(ctx, cmd, &link.uh, &node, true)
}

/// Store keys to remove with a deleted node: its link and, for a shared folder, the share.
pub fn forget_node(ctx: &Ctx<'_>, uh: &str, h: &str, writes: &mut Writes) -> ApiResult<()> {
    if let Some(ph) = ctx.state.store.get::<String>(&keys::export(uh, h))? {
        writes.remove(keys::public_link(&ph));
        writes.remove(keys::export(uh, h));
    }
    if ctx.state.store.contains(&keys::share(uh, h))? {
        writes.remove(keys::share(uh, h));
        for key in ctx.state.store.scan_keys(&keys::share_keys(uh, h))? {
            writes.remove(key);
        }
    }
    Ok(())
}
