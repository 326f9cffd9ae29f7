//! The resume journal of `veilfs put`: for each upload in progress, a 0600 file under
//! `$XDG_STATE_HOME/veilfs/uploads` holding its URL, the POSTs the server acknowledged and the
//! file key. Rerunning the same `put` (same account, local file unchanged, same destination)
//! sends only what is missing; the node appears once, at the end, so an interrupted upload never
//! leaves a partial file behind.
//!
//! The file key is as secret as the content, hence 0600 and deleted as soon as the node exists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::mega::{FileKey, b64_decode, b64_encode};
use crate::mega::transfer::UploadResume;

#[derive(Serialize, Deserialize)]
struct Record {
    /// `key ‖ nonce`, base64.
    key: String,
    #[serde(flatten)]
    state: UploadResume,
}

impl Drop for Record {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.key.zeroize();
    }
}

/// What identifies one upload: a changed local file or another destination starts afresh.
pub struct UploadId<'a> {
    pub server: &'a str,
    pub user: &'a str,
    pub local: &'a Path,
    pub size: u64,
    pub mtime_ns: i64,
    pub parent: &'a str,
    pub name: &'a str,
}

pub fn path_for(id: &UploadId<'_>) -> PathBuf {
    let mut h = Sha256::new();
    for part in [
        id.server.as_bytes(),
        id.user.as_bytes(),
        id.local.as_os_str().as_encoded_bytes(),
        &id.size.to_be_bytes(),
        &id.mtime_ns.to_be_bytes(),
        id.parent.as_bytes(),
        id.name.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    super::mount::xdg("XDG_STATE_HOME", ".local/state")
        .join("veilfs")
        .join("uploads")
        .join(format!("{}.json", hex::encode(&h.finalize()[..12])))
}

/// The upload recorded at `path`, if any (a damaged record is ignored: the upload restarts).
pub fn load(path: &Path) -> Option<(FileKey, UploadResume)> {
    let bytes = Zeroizing::new(std::fs::read(path).ok()?);
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    let raw = Zeroizing::new(b64_decode(&record.key).ok()?);
    let raw: &[u8; 24] = raw.as_slice().try_into().ok()?;
    Some((FileKey::from_bytes24(raw), record.state.clone()))
}

pub fn save(path: &Path, key: &FileKey, state: &UploadResume) -> std::io::Result<()> {
    let mut raw = Zeroizing::new([0u8; 24]);
    raw[..16].copy_from_slice(&key.key);
    raw[16..].copy_from_slice(&key.nonce);
    let record = Record {
        key: b64_encode(&*raw),
        state: state.clone(),
    };
    let json = Zeroizing::new(serde_json::to_vec(&record).expect("record serializes"));
    crate::util::write_private_file(path, &json)
}

pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
}
