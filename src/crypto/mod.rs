//! Cryptography for both supported services. Pure functions: no I/O, no logging of secrets.
//!
//! - [`mega`]: MEGA's account keys, key wrapping, file data (CTR + chunked CBC-MAC), attributes.
//! - [`rsa`]: MEGA's MPI-encoded RSA keys and raw RSA; RSA-OAEP-SHA512 with DER keys for Filen.
//! - [`filen`]: Filen's password derivation, metadata (`002`/`003`/legacy), per-chunk GCM.

pub mod filen;
pub mod mega;
pub mod rsa;

use thiserror::Error;

/// Every way crypto input can be wrong. Decoding hostile input returns one of these; it never
/// panics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("invalid base64 in {0}")]
    Base64(&'static str),
    #[error("invalid hex in {0}")]
    Hex(&'static str),
    #[error("{what}: expected {expected}, got {got} bytes")]
    Length {
        what: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Decryption produced no valid plaintext: wrong key or tampered ciphertext. The two cannot be
    /// told apart, by design of the schemes.
    #[error("{0}: wrong key or corrupted data")]
    Authentication(&'static str),
    #[error("MAC mismatch: the file's content does not match its meta-MAC")]
    MacMismatch,
    #[error("unsupported {0}")]
    Unsupported(&'static str),
}

pub type Result<T> = std::result::Result<T, CryptoError>;

/// Fills `buf` from the operating system's CSPRNG. Every key and nonce comes from here.
pub fn random_bytes(buf: &mut [u8]) {
    // The OS CSPRNG failing is not recoverable: continuing would mean weak keys.
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// `N` fresh random bytes from the OS CSPRNG.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    random_bytes(&mut out);
    out
}
