//! Public links (mega-reference §8): `veilfs link PATH` exports a file or folder and prints its
//! link in MEGA's current form, `veilfs get LINK` downloads what a link points at.
//!
//! The key travels only in the link's fragment (after `#`); the server holds the public handle
//! and ciphertext. A folder is exported as MEGA's clients do it: a fresh share key, stored at the
//! server wrapped by the master key (`s2` with the pseudo-user `EXP`), and every node key under
//! the folder wrapped by the share key, so a visitor with the share key opens the whole subtree.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use thiserror::Error;

use super::account::{self, AccountArgs};
use super::drive::{Drive, Index, mega};
use super::transfer::{Download, GetArgs, Source, plan_downloads, run_downloads};
use crate::crypto::mega::{self as mc, FileKey, b64_decode, b64_encode};
use crate::mega::nodes::KeyRing;
use crate::mega::remote::to_tree_node;
use crate::mega::transfer::DownloadInfo;
use crate::mega::wire::FetchNodes;
use crate::mega::{ApiClient, ErrorCode, MegaError};
use crate::retry::RetryPolicy;
use crate::tree::{Handle, NodeKind};

/// MEGA's API, for links on its web hosts.
const MEGA_API: &str = "https://g.api.mega.co.nz/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    File,
    Folder,
}

/// A parsed public link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub kind: LinkKind,
    /// The public handle (8 characters).
    pub handle: String,
    /// The key part, base64; `None` when the link lacks it.
    pub key: Option<String>,
    /// `scheme://host[:port]` the link names.
    pub origin: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error(
        "not a MEGA link (expected …/file/<handle>#<key>, …/folder/<handle>#<key>, #!<handle>!<key> or #F!<handle>!<key>)"
    )]
    Unrecognised,
    #[error("the link's handle {0:?} is not 8 base64 characters")]
    BadHandle(String),
    #[error("the link has no key (the part after #): ask its sender for the full link")]
    MissingKey,
    #[error("the link's key is malformed (a {0} link carries a {1}-byte key)")]
    BadKey(&'static str, usize),
    #[error("the link's key does not open this {0}: the link is wrong or incomplete")]
    WrongKey(&'static str),
}

fn is_b64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a `get` argument is a link rather than a remote path.
pub fn looks_like_link(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || s.contains("#!") || s.contains("#F!")
}

/// Parses both link forms: `…/file/<ph>#<key>`, `…/folder/<ph>#<key>[/…]`, `…/#!<ph>!<key>`,
/// `…/#F!<ph>!<key>[!…]`.
pub fn parse(link: &str) -> Result<Link, LinkError> {
    let link = link.trim();
    let (before, fragment) = match link.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (link, None),
    };
    let origin = before
        .split_once("://")
        .map(|(scheme, rest)| format!("{scheme}://{}", rest.split('/').next().unwrap_or("")))
        .unwrap_or_default();
    let nonempty = |s: Option<&str>| s.filter(|k| !k.is_empty()).map(str::to_string);
    let (kind, handle, key) = if let Some(rest) = fragment.and_then(|f| f.strip_prefix("F!")) {
        let mut parts = rest.split('!');
        (
            LinkKind::Folder,
            parts.next().unwrap_or(""),
            nonempty(parts.next()),
        )
    } else if let Some(rest) = fragment.and_then(|f| f.strip_prefix('!')) {
        let mut parts = rest.split('!');
        (
            LinkKind::File,
            parts.next().unwrap_or(""),
            nonempty(parts.next()),
        )
    } else if let Some((_, rest)) = before.split_once("/file/") {
        let key = fragment.map(|f| f.split('/').next().unwrap_or(""));
        (
            LinkKind::File,
            rest.split('/').next().unwrap_or(""),
            nonempty(key),
        )
    } else if let Some((_, rest)) = before.split_once("/folder/") {
        // A file or subfolder inside the folder follows the key: `#<key>/file/<node>`.
        let key = fragment.map(|f| f.split('/').next().unwrap_or(""));
        (
            LinkKind::Folder,
            rest.split('/').next().unwrap_or(""),
            nonempty(key),
        )
    } else {
        return Err(LinkError::Unrecognised);
    };
    if handle.len() != 8 || !is_b64(handle) {
        return Err(LinkError::BadHandle(handle.to_string()));
    }
    Ok(Link {
        kind,
        handle: handle.to_string(),
        key,
        origin,
    })
}

impl Link {
    /// The key bytes, checked for the link's kind.
    pub fn key_bytes(&self) -> Result<Vec<u8>, LinkError> {
        let key = self.key.as_deref().ok_or(LinkError::MissingKey)?;
        let (what, len) = match self.kind {
            LinkKind::File => ("file", 32),
            LinkKind::Folder => ("folder", 16),
        };
        match b64_decode(key) {
            Ok(bytes) if bytes.len() == len => Ok(bytes),
            _ => Err(LinkError::BadKey(what, len)),
        }
    }

    /// The API the link's content is fetched from: MEGA's for its web hosts, otherwise the
    /// veilfs server the link was made on (its links carry the server's own address).
    pub fn gateway(&self) -> String {
        let host = self
            .origin
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or("")
            .trim_start_matches("www.");
        if matches!(host, "mega.nz" | "mega.co.nz" | "mega.app" | "") {
            MEGA_API.to_string()
        } else {
            format!("{}/", self.origin)
        }
    }
}

/// The web address links of a server start with.
fn link_base(server: &str) -> String {
    if server.contains("api.mega.co.nz") || server.contains("api.mega.nz") {
        "https://mega.nz".to_string()
    } else {
        server.trim_end_matches('/').to_string()
    }
}

#[derive(clap::Args, Debug)]
pub struct LinkArgs {
    /// The remote file or folder to export.
    pub path: String,
}

/// `veilfs link PATH`: exports the node and prints its public link.
pub async fn link(account: AccountArgs, args: LinkArgs) -> anyhow::Result<()> {
    let drive = Drive::load(account::open(&account).await?).await?;
    let node = drive.get(&args.path)?;
    if node.handle == drive.root().handle || node.kind == NodeKind::Rubbish {
        bail!("{}: only files and folders can be exported", args.path);
    }
    if node.key.is_empty() {
        bail!("{}: the account holds no key for this node", args.path);
    }
    let h = mega(node.handle)?;
    let base = link_base(&drive.client.session().server);
    let key = match node.kind {
        NodeKind::File => b64_encode(&node.key),
        _ => {
            let share = match drive.client.share_key(&h) {
                Some(k) => *k,
                None => share_folder(&drive, node.handle).await?,
            };
            b64_encode(&share)
        }
    };
    let ph = drive
        .client
        .api()
        .call(json!({"a": "l", "n": h}))
        .await
        .context("exporting")?;
    let ph = ph
        .as_str()
        .context("the server answered no public handle")?;
    let kind = if node.kind == NodeKind::File {
        "file"
    } else {
        "folder"
    };
    println!("{base}/{kind}/{ph}#{key}");
    Ok(())
}

/// Shares a folder with the public-link pseudo-user: a new share key, and every node key under
/// the folder wrapped by it (`s2` with `cr`). Returns the share key.
async fn share_folder(drive: &Drive, folder: Handle) -> anyhow::Result<[u8; 16]> {
    let share = zeroize::Zeroizing::new(mc::generate_folder_key());
    let master = drive.client.session().master_key()?;
    let h = mega(folder)?;
    let mut handles = Vec::new();
    let mut keys = Vec::new();
    let mut stack = vec![folder];
    while let Some(at) = stack.pop() {
        let node = drive.node(at);
        if !node.key.is_empty() {
            let j = handles.len();
            handles.push(json!(mega(at)?));
            keys.extend([
                json!(0),
                json!(j),
                json!(b64_encode(&mc::ecb_encrypt(&share, &node.key)?)),
            ]);
        }
        stack.extend(
            drive
                .children(at)
                .into_iter()
                .filter(|k| k.kind == NodeKind::File || k.kind == NodeKind::Folder)
                .map(|k| k.handle),
        );
    }
    drive
        .client
        .api()
        .call(json!({
            "a": "s2",
            "n": h,
            "s": [{"u": "EXP", "r": 0}],
            "ok": b64_encode(&mc::ecb_encrypt(&master, &*share)?),
            "ha": b64_encode(&mc::share_key_auth(&master, &h)?),
            "cr": [[h], handles, keys],
        }))
        .await
        .context("sharing the folder")?;
    Ok(*share)
}

/// `g` with `p`: a public file's size, encrypted attributes and download URL.
pub async fn public_file_info(
    api: &ApiClient,
    ph: &str,
) -> crate::mega::error::Result<DownloadInfo> {
    let answer = api
        .call(json!({"a": "g", "p": ph, "g": 1, "ssl": 0}))
        .await?;
    if let Some(e) = answer.get("e").and_then(Value::as_i64) {
        return Err(MegaError::Api(ErrorCode::from_code(e)));
    }
    let field = |k: &str| answer.get(k).cloned().unwrap_or(Value::Null);
    Ok(DownloadInfo {
        url: field("g").as_str().unwrap_or("").to_string(),
        size: field("s")
            .as_u64()
            .ok_or_else(|| MegaError::Malformed("public file without a size".into()))?,
        attributes: field("at").as_str().unwrap_or("").to_string(),
    })
}

fn link_gone(e: MegaError) -> anyhow::Error {
    match e {
        MegaError::Api(ErrorCode::NotFound) => {
            anyhow::anyhow!("the link does not exist (or was removed)")
        }
        other => other.into(),
    }
}

/// `veilfs get LINK [LOCAL]`.
pub async fn get(args: &GetArgs) -> anyhow::Result<()> {
    let link = parse(&args.remote)?;
    let key = link.key_bytes()?;
    let gateway = args.link_server.clone().unwrap_or_else(|| link.gateway());
    match link.kind {
        LinkKind::File => {
            let api = ApiClient::new(&gateway, RetryPolicy::default())?;
            let info = public_file_info(&api, &link.handle)
                .await
                .map_err(link_gone)?;
            let (file_key, meta_mac) = FileKey::unpack(&key)?;
            let attrs = mc::decrypt_attributes(&file_key.key, &info.attributes)
                .map_err(|_| LinkError::WrongKey("file"))?;
            let name = attrs
                .get("n")
                .and_then(Value::as_str)
                .context("the file has no name")?
                .to_string();
            let local = args.local.clone().unwrap_or_else(|| ".".into());
            let local = if local.is_dir() {
                local.join(
                    std::path::Path::new(&name)
                        .file_name()
                        .context("the file's name cannot be a local name")?,
                )
            } else {
                local
            };
            let mtime_ns = attrs
                .get("vt")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i64)
                });
            let job = Download {
                label: name,
                key: file_key,
                meta_mac,
                size: info.size,
                mtime_ns,
                mode: None,
                local,
                source: Source::PublicFile(link.handle.clone()),
            };
            run_downloads(&api, vec![job]).await
        }
        LinkKind::Folder => {
            let api =
                ApiClient::new(&gateway, RetryPolicy::default())?.with_query("n", &link.handle);
            let answer = api
                .call(json!({"a": "f", "c": 1, "ca": 1, "r": 1}))
                .await
                .map_err(link_gone)?;
            let fetched: FetchNodes =
                serde_json::from_value(answer).context("the folder listing is malformed")?;
            // The root is the node whose key entry names itself.
            let root = fetched
                .f
                .iter()
                .find(|n| n.k.split(':').next() == Some(n.h.as_str()))
                .context("the folder listing has no root")?
                .h
                .clone();
            let share: [u8; 16] = key.as_slice().try_into().expect("checked length");
            let ring = KeyRing::for_public_folder(&root, share);
            let nodes: Vec<_> = fetched.f.into_iter().map(|n| ring.decrypt(n)).collect();
            let root_node = nodes
                .iter()
                .find(|n| n.wire.h == root)
                .expect("found above");
            if root_node.name().is_none() {
                return Err(LinkError::WrongKey("folder").into());
            }
            let list: Vec<_> = nodes.into_iter().filter_map(to_tree_node).collect();
            let root = Handle::from_mega(&root)?;
            let index = Index::new(list, root);
            let jobs = plan_downloads(&index, index.root(), args.local.as_deref(), true)?;
            run_downloads(&api, jobs).await
        }
    }
}

/// The client of a public folder link, for `veilfs mount --link`.
pub async fn open_folder_link(
    link: &str,
    server: Option<&str>,
    options: crate::mega::transfer::TransferOptions,
) -> anyhow::Result<crate::mega::client::MegaClient> {
    let link = parse(link)?;
    if link.kind != LinkKind::Folder {
        bail!("only folder links can be mounted; download a file link with `veilfs get LINK`");
    }
    let key: [u8; 16] = link
        .key_bytes()?
        .as_slice()
        .try_into()
        .expect("checked length");
    let gateway = server.map_or_else(|| link.gateway(), str::to_string);
    match crate::mega::client::MegaClient::open_public_folder(
        &gateway,
        &link.handle,
        &key,
        RetryPolicy::default(),
        options,
    )
    .await
    {
        Ok(client) => Ok(client),
        Err(MegaError::Crypto(_)) => Err(LinkError::WrongKey("folder").into()),
        Err(e) => Err(link_gone(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_link_forms_parse() {
        let key32 = b64_encode(&[7u8; 32]);
        let key16 = b64_encode(&[9u8; 16]);
        let new_file = parse(&format!("https://mega.nz/file/AbCd-_12#{key32}")).unwrap();
        let old_file = parse(&format!("https://mega.nz/#!AbCd-_12!{key32}")).unwrap();
        assert_eq!(new_file.kind, LinkKind::File);
        assert_eq!(
            (&new_file.handle, &new_file.key),
            (&old_file.handle, &old_file.key)
        );
        assert_eq!(new_file.gateway(), MEGA_API);
        assert_eq!(new_file.key_bytes().unwrap(), vec![7u8; 32]);

        let new_folder = parse(&format!(
            "http://127.0.0.1:8787/folder/ZZZZzzzz#{key16}/file/abcdefgh"
        ))
        .unwrap();
        let old_folder = parse(&format!("http://127.0.0.1:8787/#F!ZZZZzzzz!{key16}")).unwrap();
        assert_eq!(new_folder, old_folder);
        assert_eq!(new_folder.kind, LinkKind::Folder);
        assert_eq!(new_folder.gateway(), "http://127.0.0.1:8787/");

        assert_eq!(
            parse("https://mega.nz/file/AbCd-_12").unwrap().key_bytes(),
            Err(LinkError::MissingKey)
        );
        assert_eq!(
            parse("https://mega.nz/file/AbCd-_12#").unwrap().key_bytes(),
            Err(LinkError::MissingKey)
        );
        assert_eq!(
            parse(&format!("https://mega.nz/folder/AbCd-_12#{key32}"))
                .unwrap()
                .key_bytes(),
            Err(LinkError::BadKey("folder", 16))
        );
        assert_eq!(parse("https://example.com/x"), Err(LinkError::Unrecognised));
        assert!(matches!(
            parse("https://mega.nz/file/short#abc"),
            Err(LinkError::BadHandle(_))
        ));
    }
}
