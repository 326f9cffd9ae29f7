//! MEGA's wire types: the JSON shapes of nodes and command answers (mega-reference §4).
//!
//! Shared by the client and `veilfs serve`. Fields keep MEGA's one- and two-letter names; unknown
//! fields are ignored on input.

use serde::{Deserialize, Serialize};

/// Node types (`t`).
pub const NODE_FILE: i64 = 0;
pub const NODE_FOLDER: i64 = 1;
pub const NODE_ROOT: i64 = 2;
pub const NODE_INBOX: i64 = 3;
pub const NODE_RUBBISH: i64 = 4;

/// A node as `f`, `p` and action packets carry it (§4.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireNode {
    /// Handle: 8 base64 characters.
    pub h: String,
    /// Parent handle; empty for the root nodes.
    #[serde(default)]
    pub p: String,
    /// Owner's user handle.
    #[serde(default)]
    pub u: String,
    /// Type: file, folder, root, inbox, rubbish.
    pub t: i64,
    /// Encrypted attributes (base64); empty for the roots.
    #[serde(default)]
    pub a: String,
    /// Key list `<handle>:<encrypted key>` joined by `/`; empty for the roots.
    #[serde(default)]
    pub k: String,
    /// Size in bytes (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<u64>,
    /// Creation time, unix seconds.
    #[serde(default)]
    pub ts: i64,
    /// File attributes (thumbnails): opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fa: Option<String>,
    /// Sharing user, on the root of an incoming share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub su: Option<String>,
    /// Share key, on the root of an incoming share (RSA- or master-key-encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sk: Option<String>,
    /// Access level of an incoming share: 0 read-only, 1 read-write, 2 full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<i64>,
}

/// An outgoing share key in `f`'s `ok` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKey {
    pub h: String,
    pub ha: String,
    pub k: String,
}

/// The answer to `f`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchNodes {
    pub f: Vec<WireNode>,
    #[serde(default)]
    pub ok: Vec<ShareKey>,
    /// Sequence number to start action-packet polling from.
    #[serde(default)]
    pub sn: Option<String>,
}

/// The answer to `us0`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prelogin {
    pub v: i64,
    #[serde(default)]
    pub s: Option<String>,
}

/// The answer to `us`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Login {
    pub k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
}

/// The answer to `sc`: packets and the next sequence number, or a URL to wait on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionPackets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<String>,
}

/// Splits a key list `h1:k1/h2:k2` into pairs; malformed entries are skipped.
pub fn key_pairs(k: &str) -> impl Iterator<Item = (&str, &str)> {
    k.split('/').filter_map(|pair| pair.split_once(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_node_with_unknown_fields_and_round_trips() {
        let json = r#"{"h":"AbCdEfGh","p":"RootRoot","u":"uuuuuuuuuuu","t":0,"a":"xx","k":"uuuuuuuuuuu:key/ShareHnd:key2","s":12,"ts":1700000000,"zz":1}"#;
        let node: WireNode = serde_json::from_str(json).unwrap();
        assert_eq!(node.s, Some(12));
        let pairs: Vec<_> = key_pairs(&node.k).collect();
        assert_eq!(pairs, vec![("uuuuuuuuuuu", "key"), ("ShareHnd", "key2")]);
        let back: WireNode = serde_json::from_value(serde_json::to_value(&node).unwrap()).unwrap();
        assert_eq!(back, node);
        assert!(key_pairs("nocolon").next().is_none());
    }

    #[test]
    fn fetch_answer_tolerates_missing_optional_lists() {
        let f: FetchNodes = serde_json::from_str(r#"{"f":[]}"#).unwrap();
        assert!(f.ok.is_empty() && f.sn.is_none());
        assert!(serde_json::from_str::<FetchNodes>(r#"{"ok":[]}"#).is_err());
    }
}
