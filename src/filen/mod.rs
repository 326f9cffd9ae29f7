//! A Filen API client: login (auth v2 and v3) and key material in [`session`], registration in
//! [`signup`], the HTTP transport in [`api`], and the [`Remote`](crate::remote::Remote) the
//! mount uses in [`remote`]. The cryptography is `crypto::filen`'s.

pub mod api;
pub mod remote;
pub mod session;
pub mod signup;

use thiserror::Error;

use crate::crypto::CryptoError;

#[derive(Debug, Error)]
pub enum FilenError {
    #[error("Filen API error {code}: {message}")]
    Api { code: String, message: String },
    #[error("HTTP status {0}")]
    Http(u16),
    #[error("network: {0}")]
    Network(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FilenError {
    /// Whether repeating the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FilenError::Network(_) => true,
            FilenError::Http(s) => *s >= 500 || *s == 408 || *s == 429,
            FilenError::Api { code, .. } => code == "internal_error" || code == "rate_limited",
            _ => false,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            FilenError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A fresh random (v4) uuid: Filen clients name new items themselves.
pub fn new_uuid() -> String {
    let mut b = crate::crypto::random_array::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
