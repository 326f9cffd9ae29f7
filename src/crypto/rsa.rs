//! RSA for both services.
//!
//! **MEGA** (reference §1.4, §6): numbers travel as MPIs (2-byte big-endian bit count, then the
//! magnitude). The private key blob `privk` is `MPI(p) ‖ MPI(q) ‖ MPI(d) ‖ MPI(u)` with
//! `u = p⁻¹ mod q`, padded to 16 bytes and AES-ECB-wrapped with the master key; the public key
//! `pubk` is `MPI(n) ‖ MPI(e)`. MEGA uses *raw* RSA (no padding scheme): the login `csid` and
//! RSA-encrypted node/share keys are plaintexts padded with random bytes by convention only.
//!
//! **Filen** (filen-reference §4.4, §10.1): RSA-OAEP with SHA-512 for both the OAEP hash and
//! MGF1, empty label; keys are base64 DER (SPKI public, PKCS#8 private), 4096-bit, e = 65537.

use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use num_bigint_dig::{BigUint, ModInverse};
use num_integer::Integer;
use num_traits::{One, Zero};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::OsRng;
use rsa::sha2::Sha512;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use zeroize::{Zeroize, Zeroizing};

use super::mega::{b64_decode, b64_encode, ecb_decrypt, ecb_encrypt};
use super::{CryptoError, Result, random_bytes};

/// Length of a MEGA session id in bytes (58 base64 characters).
pub const SID_LEN: usize = 43;
/// Modulus size of the MEGA keys we generate (the SDK rejects anything whose `d` is ≤ 2000 bits).
pub const MEGA_RSA_BITS: usize = 2048;
/// Public exponent of the MEGA keys we generate; every reader accepts any odd `e` (§6.1).
pub const MEGA_RSA_EXPONENT: u32 = 65_537;
/// Modulus size of the Filen keys the SDK generates.
pub const FILEN_RSA_BITS: usize = 4096;

/// Smallest modulus we accept from the wire. The SDK's private-key checks (`d` > 2000 bits)
/// already imply this for every real account; the bound also guarantees a 43-byte session id
/// fits in a plaintext.
const MIN_MODULUS_BITS: usize = 2000;
/// Largest modulus we accept from the wire: MEGA only uses 2048-bit keys, and the bound keeps
/// hostile input from making us spend seconds in modular exponentiation.
const MAX_MODULUS_BITS: usize = 8192;
/// SDK validity thresholds for a private key (§6.1): keys outside them fail login with -9 there.
const SDK_MIN_PRIME_BITS: usize = 1000;
const SDK_MIN_D_BITS: usize = 2000;

// ---------------------------------------------------------------------------------------------
// MPI encoding

/// Decodes one MPI from the front of `buf` and returns it with the bytes after it.
///
/// The magnitude is `(bits + 7) / 8` bytes, whatever the header's exact value: writers disagree
/// on whether it holds the exact bit length or byte length × 8 (§1.4), so the header is never
/// required to match the number's real bit length.
pub fn mpi_decode(buf: &[u8]) -> Result<(BigUint, &[u8])> {
    if buf.len() < 2 {
        return Err(CryptoError::Length {
            what: "MPI header",
            expected: "2 bytes",
            got: buf.len(),
        });
    }
    let bits = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    let len = bits.div_ceil(8);
    let rest = &buf[2..];
    if rest.len() < len {
        return Err(CryptoError::Length {
            what: "MPI magnitude",
            expected: "as many bytes as its bit-count header announces",
            got: rest.len(),
        });
    }
    let (magnitude, after) = rest.split_at(len);
    Ok((BigUint::from_bytes_be(magnitude), after))
}

/// Decodes `count` consecutive MPIs and returns them with the bytes after the last one.
pub fn mpi_decode_seq(mut buf: &[u8], count: usize) -> Result<(Vec<BigUint>, &[u8])> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (value, rest) = mpi_decode(buf)?;
        out.push(value);
        buf = rest;
    }
    Ok((out, buf))
}

/// Appends `value` as an MPI: minimal magnitude bytes and the exact bit count, the form the SDK
/// writes and every reader (megajs's strict `mpi2b` included) accepts.
pub fn mpi_encode_into(value: &BigUint, out: &mut Vec<u8>) -> Result<()> {
    let bits = value.bits();
    let header =
        u16::try_from(bits).map_err(|_| CryptoError::Unsupported("MPI above 65535 bits"))?;
    out.extend_from_slice(&header.to_be_bytes());
    if bits > 0 {
        // `to_bytes_be` is minimal for non-zero values; zero has no magnitude bytes at all.
        let magnitude = Zeroizing::new(value.to_bytes_be());
        out.extend_from_slice(&magnitude);
    }
    Ok(())
}

/// `value` as an MPI (see [`mpi_encode_into`]).
pub fn mpi_encode(value: &BigUint) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(2 + value.bits().div_ceil(8));
    mpi_encode_into(value, &mut out)?;
    Ok(out)
}

/// Concatenated MPIs of `values`.
pub fn mpi_encode_seq(values: &[&BigUint]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for value in values {
        mpi_encode_into(value, &mut out)?;
    }
    Ok(out)
}

/// Byte length of a number's minimal big-endian form.
fn byte_len(value: &BigUint) -> usize {
    value.bits().div_ceil(8)
}

/// A single MPI that must fill `buf` exactly: a ciphertext (`csid`, an RSA-encrypted key).
/// megajs reads the whole buffer as one number, so trailing bytes would silently turn into
/// garbage there; reject them here instead.
fn decode_ciphertext(buf: &[u8], modulus: &BigUint, what: &'static str) -> Result<BigUint> {
    let (c, rest) = mpi_decode(buf)?;
    if !rest.is_empty() {
        return Err(CryptoError::Malformed(what));
    }
    if &c >= modulus {
        return Err(CryptoError::Malformed(what));
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// MEGA public key

/// A MEGA RSA public key (`pubk`: `MPI(n) ‖ MPI(e)`).
#[derive(Clone, PartialEq, Eq)]
pub struct MegaPublicKey {
    n: BigUint,
    e: BigUint,
}

impl fmt::Debug for MegaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MegaPublicKey")
            .field("bits", &self.n.bits())
            .field("e", &self.e)
            .finish()
    }
}

impl MegaPublicKey {
    /// Builds a key from its modulus and exponent, rejecting values no MEGA client could use.
    pub fn new(n: BigUint, e: BigUint) -> Result<Self> {
        let bits = n.bits();
        if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bits) || n.is_even() {
            return Err(CryptoError::Malformed("RSA modulus"));
        }
        if e < BigUint::from(3u32) || e.is_even() || e >= n {
            return Err(CryptoError::Malformed("RSA public exponent"));
        }
        Ok(Self { n, e })
    }

    /// Parses `MPI(n) ‖ MPI(e)`. `e`'s length comes from its own header (webclient accounts pad
    /// it to 4 bytes). Up to 15 trailing bytes are tolerated as block padding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (mut parts, rest) = mpi_decode_seq(bytes, 2)?;
        if rest.len() >= 16 {
            return Err(CryptoError::Malformed(
                "MEGA public key: data after n and e",
            ));
        }
        let e = parts.pop().expect("two MPIs decoded");
        let n = parts.pop().expect("two MPIs decoded");
        Self::new(n, e)
    }

    /// Parses the base64url `pubk` string.
    pub fn from_b64(s: &str) -> Result<Self> {
        Self::from_bytes(&b64_decode(s)?)
    }

    /// `MPI(n) ‖ MPI(e)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        mpi_encode_seq(&[&self.n, &self.e]).expect("modulus bounded to 8192 bits at construction")
    }

    /// The base64url `pubk` string.
    pub fn to_b64(&self) -> String {
        b64_encode(&self.to_bytes())
    }

    pub fn modulus(&self) -> &BigUint {
        &self.n
    }

    pub fn exponent(&self) -> &BigUint {
        &self.e
    }

    /// Byte length of the modulus (256 for MEGA's 2048-bit keys).
    pub fn modulus_len(&self) -> usize {
        byte_len(&self.n)
    }

    fn encrypt_raw(&self, plaintext: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(plaintext);
        debug_assert!(
            m < self.n,
            "callers keep plaintexts shorter than the modulus"
        );
        let c = m.modpow(&self.e, &self.n);
        mpi_encode(&c).expect("ciphertext is below the bounded modulus")
    }

    /// Builds the login `csid` for `sid` the way §6.3 says the server must: raw RSA of the
    /// (modulus bytes − 1)-byte number `sid ‖ random`, MPI-encoded with the exact bit count,
    /// base64url.
    ///
    /// Why exactly that length: megajs, go-mega and megatools strip the leading zero bytes of
    /// the decrypted number and take the first 43 bytes, so `sid[0]` must be non-zero; the
    /// webclient requires a 255-byte result for a 2048-bit key; the SDK accepts 254 or 255.
    pub fn encrypt_session_id(&self, sid: &[u8; SID_LEN]) -> Result<String> {
        if sid[0] == 0 {
            return Err(CryptoError::Malformed(
                "session id: a leading zero byte is lost by megajs's decryption",
            ));
        }
        let mut plaintext = Zeroizing::new(vec![0u8; self.modulus_len() - 1]);
        plaintext[..SID_LEN].copy_from_slice(sid);
        random_bytes(&mut plaintext[SID_LEN..]);
        Ok(b64_encode(&self.encrypt_raw(&plaintext)))
    }

    /// RSA-encrypts a share or node key for this key's owner, as the SDK and webclient do
    /// (§6.5): the key, then random bytes up to (modulus bytes − 2), raw RSA, MPI with the exact
    /// bit count. Returns the MPI bytes (base64url them for `k` / `sk`).
    pub fn encrypt_key(&self, key: &[u8]) -> Result<Vec<u8>> {
        let window = self.modulus_len() - 2;
        if key.is_empty() || key.len() > window {
            return Err(CryptoError::Length {
                what: "key to RSA-encrypt",
                expected: "1 to (modulus bytes − 2)",
                got: key.len(),
            });
        }
        let mut plaintext = Zeroizing::new(vec![0u8; window]);
        plaintext[..key.len()].copy_from_slice(key);
        random_bytes(&mut plaintext[key.len()..]);
        Ok(self.encrypt_raw(&plaintext))
    }
}

// ---------------------------------------------------------------------------------------------
// MEGA private key

/// A MEGA RSA private key (`privk`). `e` is not part of the blob; it is recovered from `d`.
pub struct MegaPrivateKey {
    p: BigUint,
    q: BigUint,
    d: BigUint,
    /// `p⁻¹ mod q`, MEGA's CRT coefficient.
    u: BigUint,
    /// `d mod (p − 1)` and `d mod (q − 1)`, precomputed for CRT decryption.
    dp: BigUint,
    dq: BigUint,
    public: MegaPublicKey,
}

impl Drop for MegaPrivateKey {
    fn drop(&mut self) {
        self.p.zeroize();
        self.q.zeroize();
        self.d.zeroize();
        self.u.zeroize();
        self.dp.zeroize();
        self.dq.zeroize();
    }
}

impl fmt::Debug for MegaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MegaPrivateKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl MegaPrivateKey {
    /// Builds a key from MEGA's four components and checks that they form a working key: the
    /// SDK's size thresholds, `u == p⁻¹ mod q`, an exponent `e` recoverable from `d`, and an
    /// encrypt/decrypt round trip (which catches a `d` or a composite "prime" that does not fit).
    pub fn from_components(p: BigUint, q: BigUint, d: BigUint, u: BigUint) -> Result<Self> {
        let malformed = CryptoError::Malformed("MEGA private key");
        if p.bits() <= SDK_MIN_PRIME_BITS
            || q.bits() <= SDK_MIN_PRIME_BITS
            || u.bits() <= SDK_MIN_PRIME_BITS
            || d.bits() <= SDK_MIN_D_BITS
            || p.is_even()
            || q.is_even()
            || p == q
            || u >= q
        {
            return Err(malformed);
        }
        if !(&u * &p % &q).is_one() {
            return Err(malformed);
        }
        let n = &p * &q;
        if n.bits() > MAX_MODULUS_BITS {
            return Err(malformed);
        }
        let one = BigUint::one();
        let p1 = &p - &one;
        let q1 = &q - &one;
        // `d` was computed modulo φ(n) or λ(n); either way `e ≡ d⁻¹ (mod λ(n))`, and the real
        // `e` is far below λ(n), so the inverse *is* `e`.
        let lambda = p1.lcm(&q1);
        let e = (&d)
            .mod_inverse(&lambda)
            .and_then(|e| e.to_biguint())
            .ok_or(CryptoError::Malformed("MEGA private key"))?;
        let dp = &d % &p1;
        let dq = &d % &q1;
        let public = MegaPublicKey::new(n, e)?;
        let key = Self {
            p,
            q,
            d,
            u,
            dp,
            dq,
            public,
        };
        // Round trip through the public operation and our CRT path.
        let probe = BigUint::from(0x6d65_6761_u32); // "mega"
        let c = probe.modpow(&key.public.e, &key.public.n);
        if key.decrypt_raw(&c) != probe {
            return Err(malformed);
        }
        Ok(key)
    }

    /// Parses the unwrapped blob: four MPIs, then fewer than 16 bytes of padding (the SDK's
    /// rule; megajs only checks that four MPIs parse).
    pub fn from_bytes(blob: &[u8]) -> Result<Self> {
        let (parts, rest) = mpi_decode_seq(blob, 4)?;
        if rest.len() >= 16 {
            return Err(CryptoError::Malformed(
                "MEGA private key: data after the four MPIs",
            ));
        }
        let [p, q, d, u]: [BigUint; 4] = parts
            .try_into()
            .map_err(|_| CryptoError::Malformed("MEGA private key"))?;
        Self::from_components(p, q, d, u)
    }

    /// The unwrapped blob: `MPI(p) ‖ MPI(q) ‖ MPI(d) ‖ MPI(u)`, zero-padded to a multiple of 16.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(16 * 42));
        for part in [&self.p, &self.q, &self.d, &self.u] {
            mpi_encode_into(part, &mut out).expect("components bounded at construction");
        }
        let padded = out.len().next_multiple_of(16);
        out.resize(padded, 0);
        out
    }

    /// Unwraps `privk` (base64url, AES-ECB under the master key) and validates it. A wrong
    /// master key yields garbage MPIs and therefore an error, never a key.
    pub fn from_wrapped(master_key: &[u8; 16], privk_b64: &str) -> Result<Self> {
        let wrapped = b64_decode(privk_b64)?;
        let blob = Zeroizing::new(ecb_decrypt(master_key, &wrapped)?);
        Self::from_bytes(&blob)
    }

    /// The `privk` string for `up`: the blob AES-ECB-wrapped with the master key, base64url.
    pub fn to_wrapped(&self, master_key: &[u8; 16]) -> String {
        let blob = self.to_bytes();
        let wrapped = ecb_encrypt(master_key, &blob).expect("blob is padded to whole blocks");
        b64_encode(&wrapped)
    }

    /// Generates a 2048-bit key pair in MEGA's format (§6.6), e = 65537, from the OS CSPRNG.
    pub fn generate() -> Result<Self> {
        let exponent = rsa::BigUint::from(MEGA_RSA_EXPONENT);
        // A key whose `u` or `d` falls under the SDK thresholds would be refused at login; the
        // chance is about 2⁻²⁰ per key, so a few attempts always suffice.
        for _ in 0..8 {
            let key = RsaPrivateKey::new_with_exp(&mut OsRng, MEGA_RSA_BITS, &exponent)
                .map_err(|_| CryptoError::Unsupported("RSA key generation"))?;
            let [p, q] = match key.primes() {
                [p, q] => [from_rsa_biguint(p), from_rsa_biguint(q)],
                _ => return Err(CryptoError::Unsupported("multi-prime RSA key")),
            };
            let d = from_rsa_biguint(key.d());
            let Some(u) = (&p).mod_inverse(&q).and_then(|u| u.to_biguint()) else {
                continue;
            };
            match Self::from_components(p, q, d, u) {
                Ok(key) => return Ok(key),
                Err(_) => continue,
            }
        }
        Err(CryptoError::Unsupported(
            "RSA key generation kept producing keys the MEGA SDK would reject",
        ))
    }

    /// The matching public key (`pubk`).
    pub fn public_key(&self) -> &MegaPublicKey {
        &self.public
    }

    /// `c^d mod n` by CRT with MEGA's `u = p⁻¹ mod q` (§6.1):
    /// `xp = c^dp mod p`, `xq = c^dq mod q`, `t = (xq − xp)·u mod q`, `m = t·p + xp`.
    ///
    /// Each exponent gets a fresh random multiple of (prime − 1) added (exponent blinding): by
    /// Fermat the result is unchanged, but the bit pattern that a timing or cache observer sees
    /// differs on every call. Cheap (64 extra bits on a 1024-bit exponent); the bignum library
    /// itself is not constant-time, which this legacy raw-RSA scheme accepts.
    fn decrypt_raw(&self, c: &BigUint) -> BigUint {
        let one = BigUint::one();
        let blind = |d_mod: &BigUint, prime: &BigUint| -> BigUint {
            let r = u64::from_be_bytes(super::random_array::<8>());
            d_mod + (prime - &one) * BigUint::from(r)
        };
        let mut ep = blind(&self.dp, &self.p);
        let mut eq = blind(&self.dq, &self.q);
        let mut xp = (c % &self.p).modpow(&ep, &self.p);
        let mut xq = (c % &self.q).modpow(&eq, &self.q);
        // (xq − xp) mod q without going negative: xp < p may exceed q.
        let xp_mod_q = &xp % &self.q;
        let mut diff = (&xq + &self.q - &xp_mod_q) % &self.q;
        let mut t = (&diff * &self.u) % &self.q;
        let m = &t * &self.p + &xp;
        for secret in [&mut ep, &mut eq, &mut xq, &mut diff, &mut t, &mut xp] {
            secret.zeroize();
        }
        m
    }

    /// Decrypts a raw MEGA ciphertext MPI and returns the plaintext's minimal big-endian bytes.
    fn decrypt_mpi(&self, ciphertext: &[u8], what: &'static str) -> Result<Zeroizing<Vec<u8>>> {
        let c = decode_ciphertext(ciphertext, &self.public.n, what)?;
        let mut m = self.decrypt_raw(&c);
        let bytes = if m.is_zero() {
            Zeroizing::new(Vec::new())
        } else {
            Zeroizing::new(m.to_bytes_be())
        };
        m.zeroize();
        Ok(bytes)
    }

    /// Decrypts the raw `csid` bytes into the 43-byte session id exactly as megajs does: strip
    /// the decrypted number's leading zero bytes, take the first 43.
    pub fn decrypt_csid(&self, csid: &[u8]) -> Result<[u8; SID_LEN]> {
        let plain = self.decrypt_mpi(csid, "csid")?;
        if plain.len() < SID_LEN {
            return Err(CryptoError::Length {
                what: "decrypted csid",
                expected: "at least 43 bytes",
                got: plain.len(),
            });
        }
        let mut sid = [0u8; SID_LEN];
        sid.copy_from_slice(&plain[..SID_LEN]);
        Ok(sid)
    }

    /// Decrypts the `csid` string from `us` into the `sid` string (58 base64url characters)
    /// sent on every later request.
    pub fn decrypt_session_id(&self, csid_b64: &str) -> Result<String> {
        let sid = self.decrypt_csid(&b64_decode(csid_b64)?)?;
        Ok(b64_encode(&sid))
    }

    /// Decrypts an RSA-encrypted share/node key (§6.5: `sk`, or a `k` entry longer than 32
    /// bytes) and returns its first `len` bytes (16 for folder/share keys, 32 for file keys).
    ///
    /// Follows the SDK (`AsymmCipher::decrypt`): the plaintext is read as a window of
    /// `len(p) + len(q) − 2` bytes (254 for 2048-bit keys, the length senders pad to), widened if
    /// the number is longer. Unlike megajs, which strips leading zeros, this keeps a key whose
    /// first byte is zero intact.
    pub fn decrypt_key(&self, ciphertext: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>> {
        let plain = self.decrypt_mpi(ciphertext, "RSA-encrypted key")?;
        let window = (byte_len(&self.p) + byte_len(&self.q) - 2).max(plain.len());
        if len == 0 || len > window {
            return Err(CryptoError::Length {
                what: "RSA-encrypted key",
                expected: "a requested length within the plaintext",
                got: len,
            });
        }
        let mut padded = Zeroizing::new(vec![0u8; window]);
        padded[window - plain.len()..].copy_from_slice(&plain);
        Ok(Zeroizing::new(padded[..len].to_vec()))
    }

    /// [`decrypt_key`](Self::decrypt_key) for the base64url form found in `k` / `sk`.
    pub fn decrypt_key_b64(&self, ciphertext_b64: &str, len: usize) -> Result<Zeroizing<Vec<u8>>> {
        self.decrypt_key(&b64_decode(ciphertext_b64)?, len)
    }
}

/// Converts the `rsa` crate's big integer (num-bigint-dig 0.8) to ours (0.9) through bytes.
fn from_rsa_biguint(value: &rsa::BigUint) -> BigUint {
    let bytes = Zeroizing::new(value.to_bytes_be());
    BigUint::from_bytes_be(&bytes)
}

/// A fresh session id for `user_handle` (its 11-character base64url form), laid out as the SDK
/// and webclient expect (§6.3): `r16 ‖ ASCII(user handle) ‖ r16`, with a non-zero first byte
/// so that [`MegaPublicKey::encrypt_session_id`] can carry it to megajs.
pub fn generate_session_id(user_handle_b64: &str) -> Result<[u8; SID_LEN]> {
    let handle = user_handle_b64.as_bytes();
    if handle.len() != 11 || b64_decode(user_handle_b64)?.len() != 8 {
        return Err(CryptoError::Length {
            what: "user handle",
            expected: "11 base64url characters (8 bytes)",
            got: handle.len(),
        });
    }
    let mut sid = [0u8; SID_LEN];
    random_bytes(&mut sid);
    sid[16..27].copy_from_slice(handle);
    if sid[0] == 0 {
        // megajs would lose a leading zero byte (see `encrypt_session_id`). Remapping the one
        // value costs a fraction of a bit out of the 256 random bits in the id.
        sid[0] = 1;
    }
    Ok(sid)
}

// ---------------------------------------------------------------------------------------------
// Filen: RSA-OAEP-SHA512 with DER keys

/// Filen writes standard base64 with padding; decoders (Node's) also take the url-safe alphabet
/// and missing padding, so we do too.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn std_b64_decode(s: &str, what: &'static str) -> Result<Vec<u8>> {
    let normalized: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    B64_LENIENT
        .decode(normalized.as_bytes())
        .map_err(|_| CryptoError::Base64(what))
}

fn oaep() -> Oaep {
    // SHA-512 for both the OAEP hash and MGF1, empty label: what Node's
    // `publicEncrypt({oaepHash: "sha512"})` and WebCrypto `{name: "RSA-OAEP", hash: "SHA-512"}`
    // do in the Filen SDK.
    Oaep::new::<Sha512>()
}

/// SHA-512 output length, for the OAEP size bound.
const OAEP_HASH_LEN: usize = 64;

/// A Filen public key (base64 SPKI DER).
#[derive(Clone, PartialEq, Eq)]
pub struct OaepPublicKey(RsaPublicKey);

impl fmt::Debug for OaepPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OaepPublicKey")
            .field("bits", &self.0.n().bits())
            .finish()
    }
}

impl OaepPublicKey {
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        RsaPublicKey::from_public_key_der(der)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("SPKI RSA public key"))
    }

    pub fn from_spki_b64(s: &str) -> Result<Self> {
        Self::from_spki_der(&std_b64_decode(s, "SPKI public key")?)
    }

    pub fn to_spki_der(&self) -> Result<Vec<u8>> {
        self.0
            .to_public_key_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|_| CryptoError::Malformed("SPKI RSA public key"))
    }

    /// Standard base64 with padding, as Filen stores `publicKey`.
    pub fn to_spki_b64(&self) -> Result<String> {
        Ok(STANDARD.encode(self.to_spki_der()?))
    }

    /// Modulus size in bytes (512 for Filen's keys).
    pub fn modulus_len(&self) -> usize {
        self.0.size()
    }

    /// The longest message OAEP-SHA512 can carry: modulus bytes − 2·64 − 2 (382 for 4096 bits).
    pub fn max_plaintext_len(&self) -> usize {
        self.modulus_len().saturating_sub(2 * OAEP_HASH_LEN + 2)
    }

    /// RSA-OAEP-SHA512 encryption with fresh randomness.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.len() > self.max_plaintext_len() {
            return Err(CryptoError::Length {
                what: "RSA-OAEP plaintext",
                expected: "at most modulus bytes − 130",
                got: plaintext.len(),
            });
        }
        self.0
            .encrypt(&mut OsRng, oaep(), plaintext)
            .map_err(|_| CryptoError::Unsupported("RSA-OAEP encryption"))
    }

    /// [`encrypt`](Self::encrypt), returning standard padded base64 as Filen's `metadata`.
    pub fn encrypt_b64(&self, plaintext: &[u8]) -> Result<String> {
        Ok(STANDARD.encode(self.encrypt(plaintext)?))
    }
}

/// A Filen private key (base64 PKCS#8 DER). The `rsa` crate zeroizes it on drop.
#[derive(Clone)]
pub struct OaepPrivateKey(RsaPrivateKey);

impl fmt::Debug for OaepPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OaepPrivateKey")
            .field("bits", &self.0.n().bits())
            .finish_non_exhaustive()
    }
}

impl OaepPrivateKey {
    /// A fresh key pair with e = 65537 (Filen uses [`FILEN_RSA_BITS`]).
    pub fn generate(bits: usize) -> Result<Self> {
        RsaPrivateKey::new_with_exp(&mut OsRng, bits, &rsa::BigUint::from(65_537u32))
            .map(Self)
            .map_err(|_| CryptoError::Unsupported("RSA key size"))
    }

    /// Parses PKCS#8 DER; the key's components are checked for consistency on the way in.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        RsaPrivateKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("PKCS#8 RSA private key"))
    }

    pub fn from_pkcs8_b64(s: &str) -> Result<Self> {
        let der = Zeroizing::new(std_b64_decode(s, "PKCS#8 private key")?);
        Self::from_pkcs8_der(&der)
    }

    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        self.0
            .to_pkcs8_der()
            .map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|_| CryptoError::Malformed("PKCS#8 RSA private key"))
    }

    /// Standard base64 with padding, the text Filen encrypts into `privateKey`.
    pub fn to_pkcs8_b64(&self) -> Result<Zeroizing<String>> {
        Ok(Zeroizing::new(STANDARD.encode(&*self.to_pkcs8_der()?)))
    }

    pub fn public_key(&self) -> OaepPublicKey {
        OaepPublicKey(self.0.to_public_key())
    }

    /// Whether `public` is this key's public half (the Rust SDK refuses mismatched pairs).
    pub fn matches(&self, public: &OaepPublicKey) -> bool {
        self.0.n() == public.0.n() && self.0.e() == public.0.e()
    }

    /// RSA-OAEP-SHA512 decryption (blinded). Any padding failure is one opaque error: telling
    /// callers *why* would hand out a padding oracle.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if ciphertext.len() != self.0.size() {
            return Err(CryptoError::Length {
                what: "RSA-OAEP ciphertext",
                expected: "the modulus length",
                got: ciphertext.len(),
            });
        }
        self.0
            .decrypt_blinded(&mut OsRng, oaep(), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Authentication("RSA-OAEP ciphertext"))
    }

    /// [`decrypt`](Self::decrypt) of Filen's base64 `metadata`.
    pub fn decrypt_b64(&self, ciphertext_b64: &str) -> Result<Zeroizing<Vec<u8>>> {
        self.decrypt(&std_b64_decode(ciphertext_b64, "RSA-OAEP ciphertext")?)
    }
}
