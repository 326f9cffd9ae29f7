//! Turning wire nodes into usable ones: picking and unwrapping each node's key, decrypting its
//! attributes (mega-reference §4.5, §4.6, §5.7–5.9, §6.5).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::wire::{self, ShareKey, WireNode, key_pairs};
use crate::crypto::mega::{self as mc, FileKey};
use crate::crypto::{CryptoError, rsa};

/// What a node's key is, once unwrapped.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeKey {
    Folder([u8; 16]),
    File { key: FileKey, meta_mac: [u8; 8] },
}

impl NodeKey {
    /// The AES key the node's attributes are encrypted with.
    pub fn attribute_key(&self) -> &[u8; 16] {
        match self {
            NodeKey::Folder(k) => k,
            NodeKey::File { key, .. } => &key.key,
        }
    }

    /// The raw key as MEGA stores it (16 bytes for folders, the 32-byte obfuscated form for
    /// files), before wrapping.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            NodeKey::Folder(k) => k.to_vec(),
            NodeKey::File { key, meta_mac } => key.pack(meta_mac).to_vec(),
        }
    }

    pub fn from_bytes(t: i64, raw: &[u8]) -> Result<Self, CryptoError> {
        match (t, raw.len()) {
            (wire::NODE_FILE, 32) => {
                let (key, meta_mac) = FileKey::unpack(raw)?;
                Ok(NodeKey::File { key, meta_mac })
            }
            (wire::NODE_FOLDER, 16) => Ok(NodeKey::Folder(raw.try_into().expect("16 bytes"))),
            (_, got) => Err(CryptoError::Length {
                what: "node key",
                expected: "16 for folders, 32 for files",
                got,
            }),
        }
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeKey::Folder(_) => "NodeKey::Folder(..)",
            NodeKey::File { .. } => "NodeKey::File(..)",
        })
    }
}

/// A node with its key and attributes decrypted, when the account holds its key.
#[derive(Debug, Clone)]
pub struct DecryptedNode {
    pub wire: WireNode,
    /// `None` when no key the account holds opens this node (e.g. a share whose key never
    /// arrived): such nodes are still listed, read-only, under a placeholder name.
    pub key: Option<NodeKey>,
    /// Decrypted attributes; empty when the key is missing or the attributes do not decrypt.
    pub attributes: Map<String, Value>,
}

impl DecryptedNode {
    pub fn name(&self) -> Option<&str> {
        self.attributes.get("n").and_then(Value::as_str)
    }
}

/// The keys that open an account's nodes: the master key, share keys, and the RSA private key
/// for keys shared with us.
pub struct KeyRing {
    user_handle: String,
    master_key: [u8; 16],
    share_keys: HashMap<String, [u8; 16]>,
    private_key: Option<rsa::MegaPrivateKey>,
}

impl Drop for KeyRing {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.master_key.zeroize();
        for key in self.share_keys.values_mut() {
            key.zeroize();
        }
    }
}

impl KeyRing {
    pub fn new(
        user_handle: &str,
        master_key: [u8; 16],
        private_key: Option<rsa::MegaPrivateKey>,
    ) -> Self {
        KeyRing {
            user_handle: user_handle.to_string(),
            master_key,
            share_keys: HashMap::new(),
            private_key,
        }
    }

    /// A key ring for a public folder link: the folder key plays the master key's part, and the
    /// link's root handle is "us".
    pub fn for_public_folder(root_handle: &str, folder_key: [u8; 16]) -> Self {
        KeyRing::new(root_handle, folder_key, None)
    }

    pub fn master_key(&self) -> &[u8; 16] {
        &self.master_key
    }

    pub fn user_handle(&self) -> &str {
        &self.user_handle
    }

    pub fn share_key(&self, handle: &str) -> Option<&[u8; 16]> {
        self.share_keys.get(handle)
    }

    pub fn add_share_key(&mut self, handle: &str, key: [u8; 16]) {
        self.share_keys.insert(handle.to_string(), key);
    }

    /// Accepts the outgoing share keys of `f`'s `ok` list whose authenticity tag verifies;
    /// returns how many were rejected.
    pub fn add_outgoing_shares(&mut self, shares: &[ShareKey]) -> usize {
        let mut rejected = 0;
        for share in shares {
            match self.unwrap_share(share) {
                Ok(key) => self.add_share_key(&share.h, key),
                Err(error) => {
                    tracing::warn!(handle = %share.h, %error, "ignoring an outgoing share key");
                    rejected += 1;
                }
            }
        }
        rejected
    }

    fn unwrap_share(&self, share: &ShareKey) -> Result<[u8; 16], CryptoError> {
        let auth = mc::share_key_auth(&self.master_key, &share.h)?;
        if mc::b64_decode(&share.ha)? != auth {
            return Err(CryptoError::Authentication("share key"));
        }
        let key = mc::ecb_decrypt(&self.master_key, &mc::b64_decode(&share.k)?)?;
        key.as_slice().try_into().map_err(|_| CryptoError::Length {
            what: "share key",
            expected: "16",
            got: key.len(),
        })
    }

    /// Decrypts a key that is either AES-wrapped (≤ 32 bytes) under `wrapping`, or RSA-encrypted
    /// to us (longer), taking `len` bytes of it.
    fn unwrap_key(
        &self,
        encrypted: &str,
        wrapping: &[u8; 16],
        len: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        let bytes = mc::b64_decode(encrypted)?;
        if bytes.len() > 32 {
            let private = self.private_key.as_ref().ok_or(CryptoError::Unsupported(
                "RSA-encrypted key without a private key",
            ))?;
            return Ok(private.decrypt_key(&bytes, len)?.to_vec());
        }
        mc::ecb_decrypt(wrapping, &bytes)
    }

    /// Learns the share key carried by the root of an incoming share (`sk`).
    pub fn learn_incoming_share(&mut self, node: &WireNode) {
        let Some(sk) = node.sk.as_deref() else {
            return;
        };
        let master = self.master_key;
        match self.unwrap_key(sk, &master, 16) {
            Ok(key) if key.len() == 16 => self.add_share_key(&node.h, key.try_into().expect("16")),
            Ok(_) => tracing::warn!(handle = %node.h, "incoming share key of the wrong length"),
            Err(error) => {
                tracing::warn!(handle = %node.h, %error, "cannot open incoming share key")
            }
        }
    }

    /// Finds the entry of a node's key list that we can open and unwraps it: our user handle with
    /// the master key, or a share handle we hold a key for. Chosen by handle, never by position.
    pub fn node_key(&self, node: &WireNode) -> Result<NodeKey, CryptoError> {
        let len = if node.t == wire::NODE_FILE { 32 } else { 16 };
        let mut last_error = CryptoError::Malformed("node key list without a usable entry");
        for (handle, encrypted) in key_pairs(&node.k) {
            let wrapping = if handle == self.user_handle {
                self.master_key
            } else if let Some(share) = self.share_keys.get(handle) {
                *share
            } else {
                continue;
            };
            match self
                .unwrap_key(encrypted, &wrapping, len)
                .and_then(|raw| NodeKey::from_bytes(node.t, &raw))
            {
                Ok(key) => return Ok(key),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Decrypts a node. Root nodes have no key; nodes we cannot open come back without one.
    pub fn decrypt(&self, node: WireNode) -> DecryptedNode {
        if !matches!(node.t, wire::NODE_FILE | wire::NODE_FOLDER) {
            return DecryptedNode {
                wire: node,
                key: None,
                attributes: Map::new(),
            };
        }
        let key = match self.node_key(&node) {
            Ok(key) => key,
            Err(error) => {
                tracing::debug!(handle = %node.h, %error, "node key not available");
                return DecryptedNode {
                    wire: node,
                    key: None,
                    attributes: Map::new(),
                };
            }
        };
        let attributes = match mc::decrypt_attributes(key.attribute_key(), &node.a) {
            Ok(attributes) => attributes,
            Err(error) => {
                // A key that does not open the attributes is not the node's key (as MEGA's
                // web client shows such nodes "undecrypted"): content read with it would only
                // fail its MAC.
                tracing::warn!(handle = %node.h, %error, "node attributes do not decrypt");
                return DecryptedNode {
                    wire: node,
                    key: None,
                    attributes: Map::new(),
                };
            }
        };
        DecryptedNode {
            wire: node,
            key: Some(key),
            attributes,
        }
    }

    /// Wraps a new node's key for `p` (whose `k` is the key ECB-encrypted with the master key;
    /// the server files it under our user handle).
    pub fn wrap_key(&self, key: &NodeKey) -> String {
        let wrapped = mc::ecb_encrypt(&self.master_key, &key.to_bytes()).expect("16 or 32 bytes");
        mc::b64_encode(&wrapped)
    }
}
