//! Filen's cryptography: password derivation (auth v1/v2/v3), name hashes, the master-key list,
//! metadata encryption (`002`, `003`, legacy CryptoJS) and per-chunk AES-256-GCM file data.
//!
//! Everything here is byte-compatible with `@filen/sdk` 0.3.12 (the integration tests run the SDK
//! to prove it). Where the public docs and the SDK disagree, this follows the SDK.
//!
//! Filen handles every key as a *string*: how a key string becomes AES key bytes depends on the
//! encryption version of the data, never on the key itself. So the types below keep the key text
//! (which is what gets stored and shared) next to the bytes derived from it.

use std::borrow::Cow;
use std::fmt;

use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce, Tag};
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cipher::block_padding::Pkcs7;
use cipher::{BlockModeDecrypt, KeyIvInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::{Zeroize, Zeroizing};

use super::{CryptoError, Result, random_bytes};

// ---------------------------------------------------------------------------------------------
// Constants

/// Plaintext bytes per file chunk; the last chunk of a file may be shorter, an empty file has none.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Length of the IV that starts every encrypted chunk.
pub const CHUNK_IV_LEN: usize = 12;
/// Length of the GCM tag that ends every encrypted chunk.
pub const CHUNK_TAG_LEN: usize = 16;
/// Bytes an encrypted chunk has beyond its plaintext.
pub const CHUNK_OVERHEAD: usize = CHUNK_IV_LEN + CHUNK_TAG_LEN;
/// Largest valid encrypted chunk.
pub const MAX_ENCRYPTED_CHUNK_LEN: usize = CHUNK_SIZE + CHUNK_OVERHEAD;

/// The alphabet of the SDK's `generateRandomString`: nonces, v2 file keys, `uploadKey`, `rm`.
const RANDOM_STRING_CHARSET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const PBKDF2_V2_ROUNDS: u32 = 200_000;
const ARGON2_M_KIB: u32 = 65_536;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 4;
const HMAC_KEY_INFO: &[u8] = b"hmac-sha256-key";
const LEGACY_PREFIX: &str = "U2FsdGVk";
const LEGACY_MAGIC: &[u8; 8] = b"Salted__";

// ---------------------------------------------------------------------------------------------
// Encodings and random values

/// Node's base64 decoder accepts both alphabets and missing padding; SDK output always uses the
/// standard alphabet with padding. Be lenient on input, strict (`STANDARD`) on output.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn b64_decode(s: &[u8], what: &'static str) -> Result<Vec<u8>> {
    let normalized: Cow<'_, [u8]> = if s.iter().any(|&b| b == b'-' || b == b'_') {
        Cow::Owned(
            s.iter()
                .map(|&b| match b {
                    b'-' => b'+',
                    b'_' => b'/',
                    b => b,
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    };
    B64_LENIENT
        .decode(normalized.as_ref())
        .map_err(|_| CryptoError::Base64(what))
}

/// Decodes exactly 32 bytes of hex (upper or lower case), as Filen's 64-char hex keys.
fn hex_key(s: &str, what: &'static str) -> Result<Zeroizing<[u8; 32]>> {
    if s.len() != 64 {
        return Err(CryptoError::Length {
            what,
            expected: "64 hex characters",
            got: s.len(),
        });
    }
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(s, out.as_mut()).map_err(|_| CryptoError::Hex(what))?;
    Ok(out)
}

/// True for what the SDK's `isValidHexString` accepts at 64 chars: a key usable for `003`/v3.
fn is_hex_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Maps random bytes to the SDK's random-string alphabet (`byte % 64`, unbiased). Public so
/// tests can reproduce the SDK's strings from known bytes.
pub fn random_string_from_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| char::from(RANDOM_STRING_CHARSET[usize::from(b % 64)]))
        .collect()
}

/// A random string of `len` characters from `A–Z a–z 0–9 - _`, like the SDK's
/// `generateRandomString` (used for `uploadKey`, `rm` and v2 file keys).
pub fn random_string(len: usize) -> String {
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    random_bytes(&mut bytes);
    random_string_from_bytes(&bytes)
}

/// `n_bytes` random bytes as lowercase hex (`generateRandomHexString`): salts, DEKs, v3 file keys.
pub fn random_hex(n_bytes: usize) -> String {
    let mut bytes = Zeroizing::new(vec![0u8; n_bytes]);
    random_bytes(&mut bytes);
    hex::encode(&*bytes)
}

fn sha512_hex(data: &[u8]) -> String {
    hex::encode(Sha512::digest(data))
}

fn hex_digest<D: Digest>(data: &[u8]) -> String {
    hex::encode(D::digest(data))
}

// ---------------------------------------------------------------------------------------------
// Password → keys

/// The account's authentication version, from `/v3/auth/info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthVersion {
    /// Deprecated hash chain; readable, never registered.
    V1,
    /// PBKDF2-SHA512, 200 000 rounds: what the official SDKs register by default.
    V2,
    /// Argon2id; the password-derived key only wraps a random data-encryption key (DEK).
    V3,
}

impl AuthVersion {
    /// Parses the number the server sends.
    pub fn from_number(n: u64) -> Result<Self> {
        match n {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            3 => Ok(Self::V3),
            _ => Err(CryptoError::Unsupported("Filen auth version")),
        }
    }

    /// The number sent to the server (`authVersion`).
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// What the password yields: the master key string (the KEK on v3) and the login password sent
/// to `/v3/login` in place of the real password.
pub struct DerivedCredentials {
    /// v1: 40 hex chars; v2: 64 hex chars used as a *string*; v3: the 64-hex KEK.
    pub master_key: Zeroizing<String>,
    /// v1: 256 hex chars; v2: 128 hex chars; v3: 64 hex chars.
    pub login_password: Zeroizing<String>,
}

impl fmt::Debug for DerivedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedCredentials { .. }")
    }
}

/// Runs the SDK's `generatePasswordAndMasterKeyBasedOnAuthVersion`. `salt` is the string from
/// `/v3/auth/info`: v2 uses it as UTF-8 text (never hex-decoded), v3 hex-decodes it, v1 ignores
/// it. v2 and v3 are deliberately slow (PBKDF2 200 000 rounds; Argon2id with 64 MiB).
pub fn derive_credentials(
    version: AuthVersion,
    password: &str,
    salt: &str,
) -> Result<DerivedCredentials> {
    match version {
        AuthVersion::V1 => Ok(DerivedCredentials {
            master_key: Zeroizing::new(hash_fn(password)),
            login_password: Zeroizing::new(v1_login_password(password)),
        }),
        AuthVersion::V2 => {
            let mut raw = Zeroizing::new([0u8; 64]);
            pbkdf2::pbkdf2_hmac::<Sha512>(
                password.as_bytes(),
                salt.as_bytes(),
                PBKDF2_V2_ROUNDS,
                raw.as_mut(),
            );
            let hex_out = Zeroizing::new(hex::encode(raw.as_ref()));
            // The second half is hashed once more so the server never sees key material.
            Ok(DerivedCredentials {
                master_key: Zeroizing::new(hex_out[..64].to_owned()),
                login_password: Zeroizing::new(sha512_hex(hex_out[64..].as_bytes())),
            })
        }
        AuthVersion::V3 => {
            let salt_bytes = hex::decode(salt).map_err(|_| CryptoError::Hex("auth v3 salt"))?;
            if salt_bytes.len() < argon2::MIN_SALT_LEN {
                return Err(CryptoError::Length {
                    what: "auth v3 salt",
                    expected: "at least 8 bytes",
                    got: salt_bytes.len(),
                });
            }
            let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(64))
                .map_err(|_| CryptoError::Unsupported("Argon2 parameters"))?;
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut raw = Zeroizing::new([0u8; 64]);
            argon
                .hash_password_into(password.as_bytes(), &salt_bytes, raw.as_mut())
                .map_err(|_| CryptoError::Malformed("Argon2 input"))?;
            let hex_out = Zeroizing::new(hex::encode(raw.as_ref()));
            Ok(DerivedCredentials {
                master_key: Zeroizing::new(hex_out[..64].to_owned()),
                login_password: Zeroizing::new(hex_out[64..].to_owned()),
            })
        }
    }
}

/// The SDK's `hashFn`: `hex(SHA-1(hex(SHA-512(input))))`. The v1 master key and, over the
/// lower-cased name, the v1/v2 `nameHashed`.
fn hash_fn(input: &str) -> String {
    let inner = Zeroizing::new(sha512_hex(input.as_bytes()));
    hex_digest::<Sha1>(inner.as_bytes())
}

/// The v1 login password: two hash chains, each step hashing the previous step's hex text.
fn v1_login_password(password: &str) -> String {
    let chain = |steps: &[fn(&[u8]) -> String]| {
        steps
            .iter()
            .fold(Zeroizing::new(password.to_owned()), |acc, step| {
                Zeroizing::new(step(acc.as_bytes()))
            })
    };
    let a = chain(&[
        hex_digest::<Sha1>,
        hex_digest::<Sha256>,
        hex_digest::<Sha384>,
        hex_digest::<Sha512>,
    ]);
    let b = chain(&[
        hex_digest::<md2::Md2>,
        hex_digest::<md4::Md4>,
        hex_digest::<md5::Md5>,
        hex_digest::<Sha512>,
    ]);
    format!("{}{}", a.as_str(), b.as_str())
}

/// A fresh v3 data-encryption key: 32 random bytes as 64 hex chars (what the SDK creates at the
/// first login of a v3 account).
pub fn generate_dek() -> Zeroizing<String> {
    Zeroizing::new(random_hex(32))
}

/// Unwraps the v3 DEK (`/v3/user/dek`) with the password-derived KEK. Accepts every metadata
/// format (the TypeScript SDK writes `002`, the Rust SDK `003`).
pub fn unwrap_dek(kek: &str, encrypted_dek: &str) -> Result<Zeroizing<String>> {
    let dek = Zeroizing::new(decrypt_metadata(encrypted_dek, kek)?);
    if !is_hex_key(&dek) {
        return Err(CryptoError::Malformed("v3 DEK (not 64 hex characters)"));
    }
    Ok(dek)
}

/// Wraps a DEK under the KEK as `003` (what Filen's newer clients write; every client reads it).
pub fn wrap_dek(kek: &str, dek: &str) -> String {
    encrypt_metadata(dek, kek, MetadataVersion::V3)
}

// ---------------------------------------------------------------------------------------------
// Name hashes

/// `nameHashed` on auth v1/v2 accounts: `hex(SHA-1(hex(SHA-512(lowercase(name)))))`.
pub fn name_hash_v1v2(name: &str) -> String {
    hash_fn(&name.to_lowercase())
}

/// The HMAC key of auth-v3 name hashes and of the search index, derived from the user's private
/// key. Follows the TypeScript SDK (HKDF over the PKCS#8 DER bytes), not filen-rs (which uses
/// the RSA exponent and so computes different hashes).
#[derive(Clone)]
pub struct NameHmacKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for NameHmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameHmacKey(..)")
    }
}

impl NameHmacKey {
    /// `HKDF-SHA256(IKM = PKCS#8 DER, salt = empty, info = "hmac-sha256-key", 32 bytes)`.
    pub fn from_private_key_der(pkcs8_der: &[u8]) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&[]), pkcs8_der);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        if hk.expand(HMAC_KEY_INFO, key.as_mut()).is_err() {
            unreachable!("HKDF-SHA256 can always expand 32 bytes");
        }
        Self(key)
    }

    /// Same, from the base64 PKCS#8 text the SDK keeps (the decrypted `privateKey`).
    pub fn from_private_key_b64(pkcs8_b64: &str) -> Result<Self> {
        let der = Zeroizing::new(b64_decode(pkcs8_b64.as_bytes(), "private key")?);
        Ok(Self::from_private_key_der(&der))
    }

    /// The raw 32-byte key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn hmac_hex(&self, data: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// `nameHashed` on auth v3 accounts: `hex(HMAC-SHA256(key, lowercase(name)))`.
    pub fn name_hash(&self, name: &str) -> String {
        self.hmac_hex(name.to_lowercase().as_bytes())
    }

    /// The hashes the SDK posts to `/v3/search/add` for a name (all auth versions): the whole
    /// lower-cased, trimmed name plus every substring of 2..=16 UTF-16 units, deduplicated.
    /// Substrings are cut in UTF-16 units like JavaScript; a cut through a surrogate pair
    /// becomes U+FFFD, as Node's UTF-8 encoder does. Order: shortest first (the SDK also sorts
    /// with `localeCompare` and keeps 4096; only names over ~270 units can tell the difference).
    pub fn search_hashes(&self, name: &str) -> Vec<String> {
        let lower = name.to_lowercase();
        let units: Vec<u16> = lower.trim().encode_utf16().collect();
        if units.is_empty() {
            return Vec::new();
        }
        // The SDK bounds substring lengths by the *untrimmed* lower-cased name's length.
        let max_len = 16.min(lower.encode_utf16().count());
        let mut parts: Vec<Vec<u16>> = vec![units.clone()];
        for start in 0..units.len() {
            for len in 2..=max_len {
                if start + len > units.len() {
                    break;
                }
                parts.push(units[start..start + len].to_vec());
            }
        }
        parts.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        parts.dedup();
        parts.truncate(4096);
        parts
            .iter()
            .map(|p| self.hmac_hex(String::from_utf16_lossy(p).as_bytes()))
            .collect()
    }
}

/// Computes `nameHashed` the way the account's auth version requires.
#[derive(Clone, Debug)]
pub enum NameHasher {
    /// Auth v1/v2: the unkeyed SHA-1/SHA-512 construction.
    V1V2,
    /// Auth v3: HMAC with the key derived from the private key.
    V3(NameHmacKey),
}

impl NameHasher {
    /// `nameHashed` for `name` (case-folded, so `A.txt` and `a.txt` collide by design).
    pub fn hash(&self, name: &str) -> String {
        match self {
            Self::V1V2 => name_hash_v1v2(name),
            Self::V3(key) => key.name_hash(name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata encryption

/// Which format to *write*; reading always dispatches on the ciphertext's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetadataVersion {
    /// `"002" ‖ nonce(12 chars) ‖ base64(ct ‖ tag)`, AES key = PBKDF2(key, key, 1).
    V2,
    /// `"003" ‖ hex(iv) ‖ base64(ct ‖ tag)`, AES key = the 64-hex key decoded. Written as `002`
    /// when the key is not 64 hex chars, exactly like the SDK.
    V3,
}

/// A metadata ciphertext, parsed and decoded once so it can be tried against several keys.
enum Sealed {
    Legacy { salt: [u8; 8], body: Vec<u8> },
    V2 { iv: [u8; 12], body: Vec<u8> },
    V3 { iv: [u8; 12], body: Vec<u8> },
}

impl Sealed {
    fn parse(s: &str) -> Result<Self> {
        // Prefix dispatch as the SDK does: the legacy check comes first, on 8 characters.
        if s.starts_with(LEGACY_PREFIX) {
            let raw = b64_decode(s.as_bytes(), "legacy metadata")?;
            if raw.len() < 32 || &raw[..8] != LEGACY_MAGIC || !(raw.len() - 16).is_multiple_of(16) {
                return Err(CryptoError::Length {
                    what: "legacy metadata",
                    expected: "Salted__ ‖ 8-byte salt ‖ whole AES blocks",
                    got: raw.len(),
                });
            }
            let mut salt = [0u8; 8];
            salt.copy_from_slice(&raw[8..16]);
            return Ok(Self::Legacy {
                salt,
                body: raw[16..].to_vec(),
            });
        }
        // Slice bytes, not chars: hostile input may put a multi-byte char across an offset.
        let bytes = s.as_bytes();
        let (version, iv_end) = match bytes.get(..3) {
            Some(b"002") => (MetadataVersion::V2, 15),
            Some(b"003") => (MetadataVersion::V3, 27),
            _ => return Err(CryptoError::Unsupported("metadata version prefix")),
        };
        let Some(iv_text) = bytes.get(3..iv_end) else {
            return Err(CryptoError::Length {
                what: "metadata",
                expected: "a complete nonce after the version prefix",
                got: bytes.len(),
            });
        };
        let body = b64_decode(&bytes[iv_end..], "metadata")?;
        if body.len() < CHUNK_TAG_LEN {
            return Err(CryptoError::Length {
                what: "metadata ciphertext",
                expected: "at least the 16-byte tag",
                got: body.len(),
            });
        }
        let mut iv = [0u8; 12];
        match version {
            MetadataVersion::V2 => iv.copy_from_slice(iv_text),
            MetadataVersion::V3 => {
                hex::decode_to_slice(iv_text, &mut iv).map_err(|_| CryptoError::Hex("003 IV"))?
            }
        }
        Ok(match version {
            MetadataVersion::V2 => Self::V2 { iv, body },
            MetadataVersion::V3 => Self::V3 { iv, body },
        })
    }
}

/// A metadata key string with the AES keys derived from it, ready to encrypt or decrypt many
/// items. Any key string works for `002` and legacy; only 64-hex keys work for `003`.
#[derive(Clone)]
pub struct MetadataKey {
    text: Zeroizing<String>,
    /// `PBKDF2-HMAC-SHA512(text, text, 1 round, 32 bytes)`: the `002` AES key. One HMAC block,
    /// but computed once here rather than for every item.
    v2: Zeroizing<[u8; 32]>,
    /// The hex-decoded key for `003`, when the text is 64 hex chars.
    v3: Option<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for MetadataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetadataKey(..)")
    }
}

impl MetadataKey {
    /// Prepares `key` (a master key, DEK, file key or link key string).
    pub fn new(key: &str) -> Self {
        let mut v2 = Zeroizing::new([0u8; 32]);
        pbkdf2::pbkdf2_hmac::<Sha512>(key.as_bytes(), key.as_bytes(), 1, v2.as_mut());
        let v3 = if is_hex_key(key) {
            hex_key(key, "metadata key").ok()
        } else {
            None
        };
        Self {
            text: Zeroizing::new(key.to_owned()),
            v2,
            v3,
        }
    }

    /// The key string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `002` AES key derived from this key string.
    pub fn v2_aes_key(&self) -> &[u8; 32] {
        &self.v2
    }

    /// Encrypts with fresh randomness. `V3` falls back to `002` for keys that are not 64 hex.
    pub fn encrypt(&self, plaintext: &str, version: MetadataVersion) -> String {
        let nonce_bytes = super::random_array::<12>();
        self.encrypt_with_nonce_bytes(plaintext, version, nonce_bytes)
    }

    /// Deterministic encryption for known-answer tests: `nonce_bytes` stand for the 12 random
    /// bytes the SDK would draw (a `002` nonce maps them to characters, `003` uses them as the
    /// IV). Never reuse nonce bytes with one key: GCM loses all security.
    pub fn encrypt_with_nonce_bytes(
        &self,
        plaintext: &str,
        version: MetadataVersion,
        nonce_bytes: [u8; 12],
    ) -> String {
        let mut buf = plaintext.as_bytes().to_vec();
        let out = match (version, &self.v3) {
            (MetadataVersion::V3, Some(key)) => {
                let tag = gcm_seal(key, &nonce_bytes, &mut buf);
                buf.extend_from_slice(&tag);
                format!("003{}{}", hex::encode(nonce_bytes), STANDARD.encode(&buf))
            }
            // Version 2, or version 3 with a key that cannot be hex-decoded: the SDK downgrades.
            _ => {
                let nonce = random_string_from_bytes(&nonce_bytes);
                let mut iv = [0u8; 12];
                iv.copy_from_slice(nonce.as_bytes());
                let tag = gcm_seal(&self.v2, &iv, &mut buf);
                buf.extend_from_slice(&tag);
                format!("002{nonce}{}", STANDARD.encode(&buf))
            }
        };
        buf.zeroize();
        out
    }

    /// Decrypts any metadata format, dispatching on its prefix.
    pub fn decrypt(&self, ciphertext: &str) -> Result<String> {
        self.open(&Sealed::parse(ciphertext)?)
    }

    fn open(&self, sealed: &Sealed) -> Result<String> {
        match sealed {
            Sealed::V2 { iv, body } => gcm_open_to_string(&self.v2, iv, body),
            Sealed::V3 { iv, body } => match &self.v3 {
                Some(key) => gcm_open_to_string(key, iv, body),
                None => Err(CryptoError::Unsupported("003 metadata with a non-hex key")),
            },
            Sealed::Legacy { salt, body } => legacy_open(self.text.as_bytes(), salt, body),
        }
    }
}

/// AES-256-GCM encryption of `buf` in place with a 12-byte IV and no AAD; returns the tag.
fn gcm_seal(key: &[u8; 32], iv: &[u8; 12], buf: &mut [u8]) -> [u8; 16] {
    let cipher = Aes256Gcm::new(key.into());
    match cipher.encrypt_inout_detached(&Nonce::from(*iv), b"", buf.into()) {
        Ok(tag) => tag.into(),
        // Only inputs over 64 GiB fail; every caller passes at most one chunk.
        Err(_) => unreachable!("AES-GCM input is bounded by CHUNK_SIZE"),
    }
}

/// Authenticates and decrypts `iv`, `body = ct ‖ tag`; a metadata plaintext is UTF-8 text.
fn gcm_open_to_string(key: &[u8; 32], iv: &[u8; 12], body: &[u8]) -> Result<String> {
    let (ct, tag) = body.split_at(body.len() - CHUNK_TAG_LEN);
    let mut buf = ct.to_vec();
    let tag = Tag::try_from(tag).map_err(|_| CryptoError::Malformed("GCM tag"))?;
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt_inout_detached(&Nonce::from(*iv), b"", buf.as_mut_slice().into(), &tag)
        .map_err(|_| CryptoError::Authentication("metadata"))?;
    // The SDK decodes with Node's lossy UTF-8 decoder; the tag already proved authenticity, so
    // match it rather than refusing a name a buggy writer produced.
    Ok(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => {
            let mut bytes = e.into_bytes();
            let s = String::from_utf8_lossy(&bytes).into_owned();
            bytes.zeroize();
            s
        }
    })
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one round, as CryptoJS uses: 32-byte key, 16-byte IV.
fn evp_bytes_to_key(password: &[u8], salt: &[u8; 8]) -> Zeroizing<[u8; 48]> {
    let mut out = Zeroizing::new([0u8; 48]);
    let mut prev: Option<[u8; 16]> = None;
    for block in out.chunks_mut(16) {
        let mut h = md5::Md5::new();
        if let Some(p) = &prev {
            h.update(p);
        }
        h.update(password);
        h.update(salt);
        let d: [u8; 16] = h.finalize().into();
        block.copy_from_slice(&d);
        prev = Some(d);
    }
    if let Some(p) = &mut prev {
        p.zeroize();
    }
    out
}

/// CryptoJS `AES.decrypt(text, passphrase)`: AES-256-CBC, PKCS#7. CBC has no integrity, so a
/// wrong key shows up only as bad padding or non-UTF-8 output; both count as authentication
/// failures (CryptoJS throws "Malformed UTF-8" in the second case).
fn legacy_open(password: &[u8], salt: &[u8; 8], body: &[u8]) -> Result<String> {
    let key_iv = evp_bytes_to_key(password, salt);
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&key_iv[..32]);
    iv.copy_from_slice(&key_iv[32..]);
    let dec = cbc::Decryptor::<aes::Aes256>::new((&key).into(), (&iv).into());
    key.zeroize();
    iv.zeroize();
    let mut buf = body.to_vec();
    let len = match dec.decrypt_padded::<Pkcs7>(&mut buf) {
        Ok(plain) => plain.len(),
        Err(_) => {
            buf.zeroize();
            return Err(CryptoError::Authentication("legacy metadata"));
        }
    };
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| {
        let mut bytes = e.into_bytes();
        bytes.zeroize();
        CryptoError::Authentication("legacy metadata")
    })
}

/// Encrypts metadata under `key` with fresh randomness (see [`MetadataKey::encrypt`]).
pub fn encrypt_metadata(plaintext: &str, key: &str, version: MetadataVersion) -> String {
    MetadataKey::new(key).encrypt(plaintext, version)
}

/// Decrypts `002`, `003` or legacy `U2FsdGVk…` metadata under `key`.
pub fn decrypt_metadata(ciphertext: &str, key: &str) -> Result<String> {
    MetadataKey::new(key).decrypt(ciphertext)
}

// ---------------------------------------------------------------------------------------------
// The master-key list

/// The account's metadata keys. The first is the current key (password-derived on v1/v2, the
/// DEK on v3) and encrypts everything new; the others are older keys from the server's list,
/// kept only to read. Decryption tries the current key first, then every other key, because
/// the official clients disagree on the list's order and the TypeScript SDK even writes new
/// items with an *older* key after a password change.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Vec<MetadataKey>,
    write_version: MetadataVersion,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("count", &self.keys.len())
            .field("write_version", &self.write_version)
            .finish()
    }
}

impl MasterKeys {
    /// Starts the list with the current key; new metadata is written in `write_version`.
    pub fn new(current: &str, write_version: MetadataVersion) -> Self {
        Self {
            keys: vec![MetadataKey::new(current)],
            write_version,
        }
    }

    /// The list as an account of `version` uses it: v1/v2 write `002` with the password-derived
    /// key (every client reads it); v3 writes `003` with the DEK, like Filen's newer clients.
    pub fn for_account(version: AuthVersion, current: &str) -> Self {
        let write_version = match version {
            AuthVersion::V1 | AuthVersion::V2 => MetadataVersion::V2,
            AuthVersion::V3 => MetadataVersion::V3,
        };
        Self::new(current, write_version)
    }

    /// The key that encrypts new metadata.
    pub fn current(&self) -> &MetadataKey {
        &self.keys[0]
    }

    /// The format new metadata is written in.
    pub fn write_version(&self) -> MetadataVersion {
        self.write_version
    }

    /// Every key string, current first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(MetadataKey::as_str)
    }

    /// Number of keys (at least one).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: the list holds at least the current key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds the keys of a decrypted `k1|k2|…` list, skipping empty entries and keys already
    /// known. Returns how many keys were new.
    pub fn merge_list(&mut self, list: &str) -> usize {
        let before = self.keys.len();
        for key in list.split('|').filter(|k| !k.is_empty()) {
            if !self.keys.iter().any(|k| k.as_str() == key) {
                self.keys.push(MetadataKey::new(key));
            }
        }
        self.keys.len() - before
    }

    /// Decrypts the list the server returns from `/v3/user/masterKeys` (with any known key) and
    /// merges it. Returns how many keys were new.
    pub fn merge_encrypted_list(&mut self, encrypted: &str) -> Result<usize> {
        let list = Zeroizing::new(self.decrypt_metadata(encrypted)?);
        Ok(self.merge_list(&list))
    }

    /// The joined list `k1|k2|…` (current first) encrypted with the current key, as posted to
    /// `/v3/user/masterKeys`.
    pub fn encrypted_list(&self) -> String {
        let joined = Zeroizing::new(self.iter().collect::<Vec<_>>().join("|"));
        self.encrypt_metadata(&joined)
    }

    /// Encrypts new metadata with the current key in the account's format.
    pub fn encrypt_metadata(&self, plaintext: &str) -> String {
        self.current().encrypt(plaintext, self.write_version)
    }

    /// Decrypts metadata with whichever key opens it, current key first. Malformed input fails
    /// at once; input no key opens is an authentication failure.
    pub fn decrypt_metadata(&self, ciphertext: &str) -> Result<String> {
        let sealed = Sealed::parse(ciphertext)?;
        self.keys
            .iter()
            .find_map(|k| k.open(&sealed).ok())
            .ok_or(CryptoError::Authentication(
                "metadata (no master key opens it)",
            ))
    }
}

// ---------------------------------------------------------------------------------------------
// File contents

/// How a file's key string is read and how its chunk IVs are made (the upload's `version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataVersion {
    /// 32 random base64url chars used as raw key bytes; IVs are 12 random base64url chars.
    V2,
    /// 64 hex chars, hex-decoded; IVs are 12 random bytes.
    V3,
}

impl DataVersion {
    /// Parses the `version` the server stores for an upload. Version 1 (CryptoJS CBC) is
    /// legacy and not supported.
    pub fn from_number(n: u64) -> Result<Self> {
        match n {
            2 => Ok(Self::V2),
            3 => Ok(Self::V3),
            _ => Err(CryptoError::Unsupported("Filen file encryption version")),
        }
    }

    /// The number sent to the server.
    pub fn number(self) -> u8 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// Number of chunks of a file of `size` plaintext bytes (0 for an empty file).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE as u64)
}

/// Plaintext length of chunk `index` of a file of `size` bytes; an error past the end.
pub fn chunk_plain_len(size: u64, index: u64) -> Result<usize> {
    let start = index
        .checked_mul(CHUNK_SIZE as u64)
        .filter(|&s| s < size)
        .ok_or(CryptoError::Malformed(
            "chunk index past the end of the file",
        ))?;
    // At most CHUNK_SIZE, so the conversion cannot truncate.
    Ok((size - start).min(CHUNK_SIZE as u64) as usize)
}

/// A file's key: the string stored in the file metadata plus the ready AES-GCM cipher.
#[derive(Clone)]
pub struct FileKey {
    text: Zeroizing<String>,
    version: DataVersion,
    cipher: Aes256Gcm,
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl FileKey {
    /// Reads a key string as the upload's `version` says: v2 = 32 characters used as bytes,
    /// v3 = 64 hex characters decoded.
    pub fn parse(key: &str, version: DataVersion) -> Result<Self> {
        let bytes = match version {
            DataVersion::V2 => {
                let mut b = Zeroizing::new([0u8; 32]);
                if key.len() != 32 {
                    return Err(CryptoError::Length {
                        what: "v2 file key",
                        expected: "32 bytes",
                        got: key.len(),
                    });
                }
                b.copy_from_slice(key.as_bytes());
                b
            }
            DataVersion::V3 => hex_key(key, "v3 file key")?,
        };
        Ok(Self {
            text: Zeroizing::new(key.to_owned()),
            version,
            cipher: Aes256Gcm::new((&*bytes).into()),
        })
    }

    /// A fresh random key as the SDK makes them: v2 `generateRandomString(32)`, v3
    /// `generateRandomHexString(32)`.
    pub fn generate(version: DataVersion) -> Self {
        let text = Zeroizing::new(match version {
            DataVersion::V2 => random_string(32),
            DataVersion::V3 => random_hex(32),
        });
        match Self::parse(&text, version) {
            Ok(k) => k,
            Err(_) => unreachable!("generated keys have the right shape"),
        }
    }

    /// The key string, as stored in the file metadata's `key` field.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The data version this key was read for.
    pub fn version(&self) -> DataVersion {
        self.version
    }

    /// A chunk IV from 12 random bytes: v2 maps them to base64url characters (whose ASCII
    /// bytes are the IV), v3 uses them as they are.
    fn iv_from(&self, nonce_bytes: [u8; 12]) -> [u8; 12] {
        match self.version {
            DataVersion::V2 => nonce_bytes.map(|b| RANDOM_STRING_CHARSET[usize::from(b % 64)]),
            DataVersion::V3 => nonce_bytes,
        }
    }

    fn check_plain_len(len: usize) -> Result<()> {
        if len > CHUNK_SIZE {
            return Err(CryptoError::Length {
                what: "file chunk plaintext",
                expected: "at most 1048576 bytes",
                got: len,
            });
        }
        Ok(())
    }

    fn check_encrypted_len(len: usize) -> Result<()> {
        if !(CHUNK_OVERHEAD..=MAX_ENCRYPTED_CHUNK_LEN).contains(&len) {
            return Err(CryptoError::Length {
                what: "encrypted file chunk",
                expected: "28 to 1048604 bytes",
                got: len,
            });
        }
        Ok(())
    }

    fn seal(&self, iv: &[u8; 12], buf: &mut [u8]) -> [u8; 16] {
        match self
            .cipher
            .encrypt_inout_detached(&Nonce::from(*iv), b"", buf.into())
        {
            Ok(tag) => tag.into(),
            Err(_) => unreachable!("chunk lengths are checked against CHUNK_SIZE"),
        }
    }

    /// Encrypts `plain` (at most [`CHUNK_SIZE`] bytes) into `out` (cleared first) as
    /// `iv ‖ ct ‖ tag`, reusing `out`'s allocation across chunks.
    pub fn encrypt_chunk_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.encrypt_chunk_into_with_nonce_bytes(plain, out, super::random_array())
    }

    fn encrypt_chunk_into_with_nonce_bytes(
        &self,
        plain: &[u8],
        out: &mut Vec<u8>,
        nonce_bytes: [u8; 12],
    ) -> Result<()> {
        Self::check_plain_len(plain.len())?;
        let iv = self.iv_from(nonce_bytes);
        out.clear();
        out.reserve(plain.len() + CHUNK_OVERHEAD);
        out.extend_from_slice(&iv);
        // Copy, then encrypt in place: measured faster than zero-filling `out` and encrypting
        // buffer-to-buffer, because the copy streams and GCM then works on cached data.
        out.extend_from_slice(plain);
        let tag = self.seal(&iv, &mut out[CHUNK_IV_LEN..]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Encrypts the plaintext chunk in `buf` in place, leaving `iv ‖ ct ‖ tag` in it. The
    /// ciphertext is shifted by 12 bytes to make room for the IV (a memmove, cheap next to GCM).
    pub fn encrypt_chunk_in_place(&self, buf: &mut Vec<u8>) -> Result<()> {
        Self::check_plain_len(buf.len())?;
        let iv = self.iv_from(super::random_array());
        let n = buf.len();
        buf.reserve(CHUNK_OVERHEAD);
        buf.resize(n + CHUNK_IV_LEN, 0);
        buf.copy_within(..n, CHUNK_IV_LEN);
        buf[..CHUNK_IV_LEN].copy_from_slice(&iv);
        let tag = self.seal(&iv, &mut buf[CHUNK_IV_LEN..]);
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Encrypts one chunk into a new buffer.
    pub fn encrypt_chunk(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + CHUNK_OVERHEAD);
        self.encrypt_chunk_into(plain, &mut out)?;
        Ok(out)
    }

    /// Deterministic chunk encryption for known-answer tests: `nonce_bytes` stand for the 12
    /// random bytes the SDK would draw. Never reuse nonce bytes with one key.
    pub fn encrypt_chunk_with_nonce_bytes(
        &self,
        plain: &[u8],
        nonce_bytes: [u8; 12],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + CHUNK_OVERHEAD);
        self.encrypt_chunk_into_with_nonce_bytes(plain, &mut out, nonce_bytes)?;
        Ok(out)
    }

    fn split_chunk(enc: &[u8]) -> Result<([u8; 12], &[u8], Tag)> {
        Self::check_encrypted_len(enc.len())?;
        let (iv, rest) = enc.split_at(CHUNK_IV_LEN);
        let (ct, tag) = rest.split_at(rest.len() - CHUNK_TAG_LEN);
        let mut iv_arr = [0u8; 12];
        iv_arr.copy_from_slice(iv);
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Malformed("GCM tag"))?;
        Ok((iv_arr, ct, tag))
    }

    /// Decrypts `iv ‖ ct ‖ tag` into `out` (cleared first). Fails with
    /// [`CryptoError::Authentication`] when the tag does not match (wrong key, corrupt data) and
    /// leaves `out` empty then.
    pub fn decrypt_chunk_into(&self, enc: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let (iv, ct, tag) = Self::split_chunk(enc)?;
        out.clear();
        out.extend_from_slice(ct);
        if self
            .cipher
            .decrypt_inout_detached(&Nonce::from(iv), b"", out.as_mut_slice().into(), &tag)
            .is_err()
        {
            // GCM checks the tag before decrypting, so `out` holds only ciphertext; drop it so
            // callers never mistake it for data.
            out.clear();
            return Err(CryptoError::Authentication("file chunk"));
        }
        Ok(())
    }

    /// Decrypts the chunk in `buf` in place, leaving only the plaintext. On failure `buf` is
    /// left as it was.
    pub fn decrypt_chunk_in_place(&self, buf: &mut Vec<u8>) -> Result<()> {
        let (iv, _, tag) = Self::split_chunk(buf)?;
        let end = buf.len() - CHUNK_TAG_LEN;
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(iv),
                b"",
                (&mut buf[CHUNK_IV_LEN..end]).into(),
                &tag,
            )
            .map_err(|_| CryptoError::Authentication("file chunk"))?;
        buf.copy_within(CHUNK_IV_LEN..end, 0);
        buf.truncate(end - CHUNK_IV_LEN);
        Ok(())
    }

    /// Decrypts one chunk into a new buffer.
    pub fn decrypt_chunk(&self, enc: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt_chunk_into(enc, &mut out)?;
        Ok(out)
    }

    /// Decrypts chunk `index` of a file of `size` bytes, first checking that the chunk has the
    /// length that position requires. GCM does not bind a chunk to its index (no AAD), so this
    /// is the check that catches truncated or swapped-in chunks of another size.
    pub fn decrypt_file_chunk(&self, enc: &[u8], size: u64, index: u64) -> Result<Vec<u8>> {
        let expected = chunk_plain_len(size, index)? + CHUNK_OVERHEAD;
        if enc.len() != expected {
            return Err(CryptoError::Length {
                what: "encrypted file chunk at this index",
                expected: "min(1 MiB, remaining size) + 28 bytes",
                got: enc.len(),
            });
        }
        self.decrypt_chunk(enc)
    }
}
