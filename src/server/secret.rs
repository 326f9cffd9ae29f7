//! The server's own secret: keys the fake prelogin salts and the capability tokens in transfer
//! and wait URLs. Kept in the data directory so both survive a restart (a salt that changed
//! between two `us0` calls for the same unknown e-mail would reveal that it is fake).

use hmac::{Hmac, KeyInit, Mac};
use std::io::Write;
use std::path::Path;

pub struct Secret([u8; 32]);

impl Secret {
    /// Reads `<dir>/secret.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Secret> {
        let path = dir.join("secret.key");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} must hold exactly 32 bytes", path.display()),
                    )
                })?;
                Ok(Secret(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::crypto::random_array::<32>();
                let tmp = dir.join("secret.key.tmp");
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(&tmp)?;
                file.write_all(&key)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                Ok(Secret(key))
            }
            Err(e) => Err(e),
        }
    }

    /// HMAC-SHA256 over `parts` under a per-purpose domain. Each part is length-prefixed so that
    /// no two different part lists hash the same input.
    pub fn mac(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(domain.as_bytes());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// Equality in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
