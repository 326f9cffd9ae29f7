//! MEGA's cryptography: encodings, account keys, key wrapping, file data and attributes.
//!
//! Everything here is byte-compatible with MEGA's official clients and with megajs; the
//! integration tests run megajs to prove it. "a32" word operations are done on bytes in their
//! big-endian layout, which is equivalent and avoids conversions on hot paths.

use aes::Aes128;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

use super::{CryptoError, Result};

// ---------------------------------------------------------------------------------------------
// Encodings

/// MEGA's base64: url-safe alphabet, no padding on output.
const B64_ENCODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false),
);
/// Lenient decoder: every MEGA client accepts padding or none, and both alphabets (the standard
/// one is mapped to the url-safe one before decoding).
const B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Encodes bytes as MEGA base64 (url-safe, unpadded).
pub fn b64_encode(bytes: &[u8]) -> String {
    B64_ENCODE.encode(bytes)
}

/// Decodes MEGA base64, accepting either alphabet and optional padding.
pub fn b64_decode(s: &str) -> Result<Vec<u8>> {
    let normalized: String = s
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    B64_DECODE
        .decode(normalized.as_bytes())
        .map_err(|_| CryptoError::Base64("MEGA base64"))
}

/// Decodes MEGA base64 that must hold exactly `N` bytes (keys, handles).
pub fn b64_decode_array<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N]> {
    let bytes = b64_decode(s)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Length {
            what,
            expected: stringify!(N),
            got: bytes.len(),
        })
}

/// a32 words to bytes, big-endian per word.
pub fn a32_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Bytes to a32 words; the length must be a multiple of 4.
pub fn bytes_to_a32(bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(CryptoError::Length {
            what: "a32 array",
            expected: "a multiple of 4",
            got: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// AES-128-ECB key wrapping

fn aes128(key: &[u8; 16]) -> Aes128 {
    Aes128::new(key.into())
}

fn check_blocks(data: &[u8], what: &'static str) -> Result<()> {
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(CryptoError::Length {
            what,
            expected: "a non-zero multiple of 16",
            got: data.len(),
        });
    }
    Ok(())
}

/// AES-128-ECB encryption of a key (any non-zero multiple of 16 bytes), as MEGA wraps node keys,
/// the master key and the RSA private key.
pub fn ecb_encrypt(key: &[u8; 16], data: &[u8]) -> Result<Vec<u8>> {
    check_blocks(data, "ECB-wrapped key")?;
    let cipher = aes128(key);
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(16) {
        cipher.encrypt_block(block.try_into().expect("16-byte chunk"));
    }
    Ok(out)
}

/// AES-128-ECB decryption; the inverse of [`ecb_encrypt`].
pub fn ecb_decrypt(key: &[u8; 16], data: &[u8]) -> Result<Vec<u8>> {
    check_blocks(data, "ECB-wrapped key")?;
    let cipher = aes128(key);
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(16) {
        cipher.decrypt_block(block.try_into().expect("16-byte chunk"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Account keys

/// The fixed starting value of v1 `prepare_key`.
const PREPARE_KEY_SEED: [u8; 16] = [
    0x93, 0xc4, 0x67, 0xe3, 0x7d, 0xb0, 0xc7, 0xa4, 0xd1, 0xbe, 0x3f, 0x81, 0x01, 0x52, 0xcb, 0x56,
];

/// v1 password key from the password's bytes (`prepare_key`): 65 536 rounds of encrypting the
/// running key under each 16-byte slice of the password.
///
/// megajs, go-mega and megatools feed the UTF-8 bytes; MEGA's own clients feed one byte per UTF-16
/// unit ([`password_bytes_v1_sdk`]). Both agree on ASCII.
pub fn prepare_key_v1(password: &[u8]) -> [u8; 16] {
    // The password slices are the AES *keys*, and they never change between rounds: expanding
    // each key schedule once instead of 65 536 times is what makes this take milliseconds.
    let ciphers: Vec<Aes128> = password
        .chunks(16)
        .map(|slice| {
            let mut key = zeroize::Zeroizing::new([0u8; 16]);
            key[..slice.len()].copy_from_slice(slice);
            aes128(&key)
        })
        .collect();
    let mut pkey = PREPARE_KEY_SEED;
    for _ in 0..65_536 {
        for cipher in &ciphers {
            cipher.encrypt_block((&mut pkey).into());
        }
    }
    pkey
}

/// The password bytes MEGA's official clients (SDK, webclient) use for v1 accounts: one byte per
/// UTF-16 code unit, the bits of units above 0xFF OR-ed into the preceding byte of the same
/// 32-bit word (JavaScript's `str_to_a32`). This is what MEGA's servers hold for v1 accounts
/// created in the web client, so our client logs in with it.
pub fn password_bytes_v1_sdk(password: &str) -> Vec<u8> {
    let units: Vec<u16> = password.encode_utf16().collect();
    let mut words = vec![0u32; units.len().div_ceil(4)];
    for (i, &unit) in units.iter().enumerate() {
        // `<<` on a u32 drops bits shifted past the top, exactly like JavaScript's int32 shift.
        words[i >> 2] |= u32::from(unit) << (24 - 8 * (i & 3));
    }
    let mut bytes = a32_to_bytes(&words);
    bytes.truncate(units.len());
    bytes
}

/// v1 user hash `uh` sent at login: the lower-cased email folded into 16 bytes, encrypted
/// 16 384 times under the password key; words 0 and 2, base64.
pub fn user_hash_v1(email: &str, password_key: &[u8; 16]) -> String {
    let mut h = [0u8; 16];
    for (i, byte) in email.to_lowercase().bytes().enumerate() {
        h[i % 16] ^= byte;
    }
    let cipher = aes128(password_key);
    for _ in 0..16_384 {
        cipher.encrypt_block((&mut h).into());
    }
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&h[0..4]);
    out[4..].copy_from_slice(&h[8..12]);
    b64_encode(&out)
}

/// Keys derived from a v2 account's password.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct V2Keys {
    /// Unwraps the master key (`k` in the login answer).
    pub password_key: [u8; 16],
    /// Proves the password to the server; sent base64 as `uh`.
    pub auth_key: [u8; 16],
}

/// Iterations of PBKDF2-HMAC-SHA512 for v2 accounts, fixed by MEGA.
pub const V2_ITERATIONS: u32 = 100_000;

/// v2 derivation: PBKDF2-HMAC-SHA512(password, salt, 100 000, 32 bytes), split in two.
pub fn derive_v2(password: &[u8], salt: &[u8]) -> V2Keys {
    let mut dk = zeroize::Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, V2_ITERATIONS, &mut *dk);
    let mut keys = V2Keys {
        password_key: [0; 16],
        auth_key: [0; 16],
    };
    keys.password_key.copy_from_slice(&dk[..16]);
    keys.auth_key.copy_from_slice(&dk[16..]);
    keys
}

/// The salt a v2 registration creates: SHA-256 of "mega.nz" padded with `P` to 200 bytes,
/// followed by the 16-byte client random value.
pub fn v2_salt(client_random: &[u8; 16]) -> [u8; 32] {
    use sha2::Digest;
    let mut padded = [b'P'; 200];
    padded[..7].copy_from_slice(b"mega.nz");
    let mut hasher = sha2::Sha256::new();
    hasher.update(padded);
    hasher.update(client_random);
    hasher.finalize().into()
}

/// What the server stores to check a v2 login: the first 16 bytes of SHA-256(auth key).
pub fn hashed_auth_key(auth_key: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(auth_key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Share-key authenticity tag `ha`: the handle's ASCII twice, ECB-encrypted with the master key.
pub fn share_key_auth(master_key: &[u8; 16], handle: &str) -> Result<[u8; 16]> {
    let h = handle.as_bytes();
    if h.len() != 8 {
        return Err(CryptoError::Length {
            what: "node handle",
            expected: "8 characters",
            got: h.len(),
        });
    }
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(h);
    block[8..].copy_from_slice(h);
    aes128(master_key).encrypt_block((&mut block).into());
    Ok(block)
}

// ---------------------------------------------------------------------------------------------
// File keys

/// A file's content key and CTR nonce. The 32-byte node key additionally carries the meta-MAC.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct FileKey {
    pub key: [u8; 16],
    pub nonce: [u8; 8],
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs, not even through a stray `{:?}`.
        f.write_str("FileKey(..)")
    }
}

impl FileKey {
    /// A fresh key and nonce from the OS CSPRNG.
    pub fn generate() -> Self {
        let bytes = zeroize::Zeroizing::new(super::random_array::<24>());
        Self::from_bytes24(&bytes)
    }

    /// From the 24-byte `key ‖ nonce` form (megajs's `key24`).
    pub fn from_bytes24(bytes: &[u8; 24]) -> Self {
        let mut fk = FileKey {
            key: [0; 16],
            nonce: [0; 8],
        };
        fk.key.copy_from_slice(&bytes[..16]);
        fk.nonce.copy_from_slice(&bytes[16..]);
        fk
    }

    /// The 32-byte obfuscated node key: `(key XOR (nonce ‖ meta_mac)) ‖ nonce ‖ meta_mac`.
    pub fn pack(&self, meta_mac: &[u8; 8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[16..24].copy_from_slice(&self.nonce);
        out[24..].copy_from_slice(meta_mac);
        for i in 0..16 {
            out[i] = self.key[i] ^ out[16 + i];
        }
        out
    }

    /// Splits a 32-byte node key into the file key and the meta-MAC it carries.
    pub fn unpack(node_key: &[u8]) -> Result<(FileKey, [u8; 8])> {
        if node_key.len() != 32 {
            return Err(CryptoError::Length {
                what: "file node key",
                expected: "32",
                got: node_key.len(),
            });
        }
        let mut fk = FileKey {
            key: [0; 16],
            nonce: [0; 8],
        };
        for i in 0..16 {
            fk.key[i] = node_key[i] ^ node_key[16 + i];
        }
        fk.nonce.copy_from_slice(&node_key[16..24]);
        let mut meta_mac = [0u8; 8];
        meta_mac.copy_from_slice(&node_key[24..]);
        Ok((fk, meta_mac))
    }
}

/// A new random 16-byte folder key.
pub fn generate_folder_key() -> [u8; 16] {
    super::random_array::<16>()
}

// ---------------------------------------------------------------------------------------------
// Chunk schedule

const KIB128: u64 = 128 * 1024;
const MIB: u64 = 1024 * 1024;
/// Where the growing chunks end and 1 MiB chunks begin: 128 KiB × (1 + 2 + … + 8).
const GROWING_END: u64 = KIB128 * 36;

/// Start offset of chunk `index` (0-based).
pub fn chunk_start(index: u64) -> u64 {
    if index <= 8 {
        KIB128 * index * (index + 1) / 2
    } else {
        GROWING_END + (index - 8) * MIB
    }
}

/// The 0-based index of the chunk holding byte `offset`.
pub fn chunk_index(offset: u64) -> u64 {
    if offset >= GROWING_END {
        return 8 + (offset - GROWING_END) / MIB;
    }
    let mut index = 0;
    while chunk_start(index + 1) <= offset {
        index += 1;
    }
    index
}

/// Byte range of chunk `index` in a file of `size` bytes (empty past the end).
pub fn chunk_range(index: u64, size: u64) -> std::ops::Range<u64> {
    chunk_start(index).min(size)..chunk_start(index + 1).min(size)
}

/// Number of chunks in a file of `size` bytes (an empty file has none).
pub fn chunk_count(size: u64) -> u64 {
    if size == 0 {
        0
    } else {
        chunk_index(size - 1) + 1
    }
}

/// The chunks of a file of `size` bytes, in order: 128 KiB × i for i = 1..8, then 1 MiB.
pub fn chunk_spans(size: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    (0..chunk_count(size)).map(move |i| chunk_range(i, size))
}

/// Whether `offset` is a chunk boundary (0 included).
pub fn is_chunk_boundary(offset: u64) -> bool {
    chunk_start(chunk_index(offset)) == offset
}

// ---------------------------------------------------------------------------------------------
// Content encryption: AES-128-CTR

type Ctr = ctr::Ctr64BE<Aes128>;

/// Encrypts or decrypts (the same operation) `data` that sits at byte `offset` of the file.
/// The counter block is `nonce ‖ u64 block index`, so any range can be processed on its own.
pub fn ctr_apply(file_key: &FileKey, offset: u64, data: &mut [u8]) {
    use cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&file_key.nonce);
    let mut cipher = Ctr::new((&file_key.key).into(), (&iv).into());
    cipher.seek(offset);
    cipher.apply_keystream(data);
}

// ---------------------------------------------------------------------------------------------
// MACs

/// CBC-MAC of one chunk's plaintext: IV `nonce ‖ nonce`, last block zero padded.
pub fn chunk_mac(file_key: &FileKey, chunk: &[u8]) -> [u8; 16] {
    chunk_macs(file_key, &[chunk])[0]
}

/// CBC-MACs of several chunks at once. CBC-MAC is serial within a chunk, so a single chunk is
/// bound by AES latency; [`LANES`] chunks side by side, a block of each in turn, keep the AES
/// unit busy on one core (the blocks of different chunks do not wait for each other).
pub fn chunk_macs(file_key: &FileKey, chunks: &[&[u8]]) -> Vec<[u8; 16]> {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&file_key.nonce);
    iv[8..].copy_from_slice(&file_key.nonce);
    let mut macs = vec![iv; chunks.len()];
    aes128(&file_key.key).encrypt_with_backend(InterleavedCbcMac {
        chunks,
        macs: &mut macs,
    });
    macs
}

/// Chunks MACed side by side.
///
/// Why not the backend's own parallel blocks: each call of `encrypt_par_blocks` encrypts all
/// of its lanes, 64 blocks with VAES-512, and an upload MACs one chunk (a small file) or a few
/// (a piece of a big file) at a time: the idle lanes made the MAC 8 to 10 times slower than
/// this (`cargo bench --bench crypto`: one 16 KiB chunk 111 MiB/s, now 916 MiB/s; 8-chunk
/// pieces 670 MiB/s, now 6.4 GiB/s; `perf`: 14 % of the daemon's CPU in an `rsync` of small
/// files). Eight independent single-block chains fill the pipeline of AES-NI as well.
const LANES: usize = 8;

/// The interleaved CBC-MAC, run inside the cipher's backend so the round keys stay in registers
/// for the whole job instead of being reloaded for every block. `macs` start as the IV.
struct InterleavedCbcMac<'a> {
    chunks: &'a [&'a [u8]],
    macs: &'a mut [[u8; 16]],
}

impl cipher::BlockSizeUser for InterleavedCbcMac<'_> {
    type BlockSize = cipher::consts::U16;
}

impl cipher::BlockCipherEncClosure for InterleavedCbcMac<'_> {
    fn call<B: cipher::BlockCipherEncBackend<BlockSize = Self::BlockSize>>(self, backend: &B) {
        for (chunks, macs) in self.chunks.chunks(LANES).zip(self.macs.chunks_mut(LANES)) {
            cbc_mac_lanes(backend, chunks, macs);
        }
    }
}

/// CBC-MACs of up to [`LANES`] chunks; `macs` hold the IV and receive the MACs.
fn cbc_mac_lanes<B: cipher::BlockCipherEncBackend<BlockSize = cipher::consts::U16>>(
    backend: &B,
    chunks: &[&[u8]],
    macs: &mut [[u8; 16]],
) {
    let mut states = [cipher::Block::<B>::default(); LANES];
    for (state, mac) in states.iter_mut().zip(macs.iter()) {
        state.copy_from_slice(mac);
    }
    // An empty chunk takes no step: its MAC is the IV.
    let blocks = chunks
        .iter()
        .map(|c| c.len().div_ceil(16))
        .max()
        .unwrap_or(0);
    for step in 0..blocks {
        let at = step * 16;
        for (state, chunk) in states.iter_mut().zip(chunks) {
            if at < chunk.len() {
                // A short last block is zero-padded: only its bytes are XORed in.
                xor_into(state, &chunk[at..chunk.len().min(at + 16)]);
                backend.encrypt_block_inplace(state);
            }
        }
    }
    for (mac, state) in macs.iter_mut().zip(&states) {
        mac.copy_from_slice(state);
    }
}

#[inline(always)]
fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Folds chunk MACs, in file order, into the 16-byte file MAC.
pub fn condense_macs(file_key: &FileKey, chunk_macs: &[[u8; 16]]) -> [u8; 16] {
    let cipher = aes128(&file_key.key);
    let mut f = [0u8; 16];
    for mac in chunk_macs {
        xor_into(&mut f, mac);
        cipher.encrypt_block((&mut f).into());
    }
    f
}

/// The 8-byte meta-MAC stored in the node key: words `(w0 ^ w1, w2 ^ w3)` of the file MAC.
pub fn meta_mac(file_mac: &[u8; 16]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for i in 0..4 {
        out[i] = file_mac[i] ^ file_mac[4 + i];
        out[4 + i] = file_mac[8 + i] ^ file_mac[12 + i];
    }
    out
}

/// Whether megajs's MAC quirk applies to a file of `size` bytes: size 0, or the size rounded up
/// to 16 is a chunk boundary. megajs then folds one extra `nonce ‖ nonce` block into the file MAC.
pub fn is_megajs_quirk_size(size: u64) -> bool {
    size == 0 || is_chunk_boundary(size.div_ceil(16) * 16)
}

/// The meta-MAC megajs computes for quirk sizes: the canonical fold plus one more step with
/// `nonce ‖ nonce`.
pub fn megajs_variant_meta_mac(file_key: &FileKey, file_mac: &[u8; 16]) -> [u8; 8] {
    let mut nn = [0u8; 16];
    nn[..8].copy_from_slice(&file_key.nonce);
    nn[8..].copy_from_slice(&file_key.nonce);
    let mut f = *file_mac;
    xor_into(&mut f, &nn);
    aes128(&file_key.key).encrypt_block((&mut f).into());
    meta_mac(&f)
}

/// Which computation a file's stored meta-MAC matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacMatch {
    /// MEGA's official clients' value (what veilfs writes).
    Canonical,
    /// megajs's value for sizes its quirk affects.
    MegajsVariant,
}

/// Checks a file MAC against the meta-MAC from its node key, accepting megajs's variant where
/// its quirk applies.
pub fn verify_meta_mac(
    file_key: &FileKey,
    size: u64,
    file_mac: &[u8; 16],
    expected: &[u8; 8],
) -> Result<MacMatch> {
    use subtle_eq as eq;
    if eq(&meta_mac(file_mac), expected) {
        return Ok(MacMatch::Canonical);
    }
    if is_megajs_quirk_size(size) && eq(&megajs_variant_meta_mac(file_key, file_mac), expected) {
        return Ok(MacMatch::MegajsVariant);
    }
    Err(CryptoError::MacMismatch)
}

/// Constant-time comparison, so a MAC check leaks nothing through timing.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Collects chunk MACs as chunks are processed — in any order, from any thread — and condenses
/// them once the file is complete.
#[derive(Clone)]
pub struct MacAccumulator {
    file_key: FileKey,
    size: u64,
    macs: Vec<Option<[u8; 16]>>,
    missing: usize,
}

impl MacAccumulator {
    pub fn new(file_key: &FileKey, size: u64) -> Self {
        let count = chunk_count(size) as usize;
        MacAccumulator {
            file_key: file_key.clone(),
            size,
            macs: vec![None; count],
            missing: count,
        }
    }

    /// Records the MAC of chunk `index`. Recording a chunk twice keeps the latest value.
    pub fn insert(&mut self, index: u64, mac: [u8; 16]) -> Result<()> {
        let slot = self
            .macs
            .get_mut(index as usize)
            .ok_or(CryptoError::Malformed(
                "chunk index past the end of the file",
            ))?;
        if slot.is_none() {
            self.missing -= 1;
        }
        *slot = Some(mac);
        Ok(())
    }

    /// Computes and records the MAC of a chunk's full plaintext.
    pub fn add_chunk(&mut self, index: u64, plaintext: &[u8]) -> Result<()> {
        let range = chunk_range(index, self.size);
        if (range.end - range.start) as usize != plaintext.len() || range.is_empty() {
            return Err(CryptoError::Length {
                what: "chunk plaintext",
                expected: "the chunk's size in the schedule",
                got: plaintext.len(),
            });
        }
        self.insert(index, chunk_mac(&self.file_key, plaintext))
    }

    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    pub fn has_chunk(&self, index: u64) -> bool {
        matches!(self.macs.get(index as usize), Some(Some(_)))
    }

    /// Every chunk's MAC in order, once all have been recorded.
    pub fn chunk_macs(&self) -> Option<Vec<[u8; 16]>> {
        self.macs.iter().copied().collect()
    }

    /// The file MAC, once every chunk has been recorded.
    pub fn file_mac(&self) -> Option<[u8; 16]> {
        let macs: Option<Vec<[u8; 16]>> = self.macs.iter().copied().collect();
        Some(condense_macs(&self.file_key, &macs?))
    }

    /// The canonical meta-MAC, once every chunk has been recorded.
    pub fn meta_mac(&self) -> Option<[u8; 8]> {
        self.file_mac().map(|f| meta_mac(&f))
    }

    /// Verifies the complete file against the meta-MAC from its node key.
    pub fn verify(&self, expected: &[u8; 8]) -> Result<MacMatch> {
        let file_mac = self.file_mac().ok_or(CryptoError::Malformed(
            "MAC check before every chunk was read",
        ))?;
        verify_meta_mac(&self.file_key, self.size, &file_mac, expected)
    }
}

/// Chunk MACs of a whole plaintext buffer, computed interleaved.
pub fn file_chunk_macs(file_key: &FileKey, plaintext: &[u8]) -> Vec<[u8; 16]> {
    let chunks: Vec<&[u8]> = chunk_spans(plaintext.len() as u64)
        .map(|r| &plaintext[r.start as usize..r.end as usize])
        .collect();
    chunk_macs(file_key, &chunks)
}

/// Encrypts a whole file in place and returns its canonical meta-MAC. For streaming, use
/// [`chunk_macs`] + [`ctr_apply`] per chunk and a [`MacAccumulator`].
pub fn encrypt_file(file_key: &FileKey, data: &mut [u8]) -> [u8; 8] {
    let macs = file_chunk_macs(file_key, data);
    ctr_apply(file_key, 0, data);
    meta_mac(&condense_macs(file_key, &macs))
}

/// Decrypts a whole file in place and verifies it against its meta-MAC. On a mismatch the
/// buffer holds unverified plaintext that must not be used.
pub fn decrypt_file(file_key: &FileKey, data: &mut [u8], expected: &[u8; 8]) -> Result<MacMatch> {
    ctr_apply(file_key, 0, data);
    let macs = file_chunk_macs(file_key, data);
    verify_meta_mac(
        file_key,
        data.len() as u64,
        &condense_macs(file_key, &macs),
        expected,
    )
}

// ---------------------------------------------------------------------------------------------
// Node attributes

/// Encrypts node attributes: `MEGA` + JSON, zero padded to 16, AES-128-CBC with a zero IV, base64.
/// JSON is written as `JSON.stringify` does (raw UTF-8, only `"`, `\` and controls escaped),
/// which every MEGA client parses.
pub fn encrypt_attributes(
    key: &[u8; 16],
    attrs: &serde_json::Map<String, serde_json::Value>,
) -> String {
    use cipher::{BlockModeEncrypt, KeyIvInit};
    let json = serde_json::to_string(attrs).expect("a JSON map always serializes");
    let mut plain = Vec::with_capacity(4 + json.len() + 16);
    plain.extend_from_slice(b"MEGA");
    plain.extend_from_slice(json.as_bytes());
    plain.resize(plain.len().div_ceil(16) * 16, 0);
    let mut enc = cbc::Encryptor::<Aes128>::new(key.into(), &[0u8; 16].into());
    for block in plain.chunks_exact_mut(16) {
        enc.encrypt_block(block.try_into().expect("16-byte chunk"));
    }
    b64_encode(&plain)
}

/// Decrypts node attributes; anything that does not decrypt to `MEGA{"…` JSON is rejected (a
/// wrong key looks exactly like that).
pub fn decrypt_attributes(
    key: &[u8; 16],
    encoded: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    use cipher::{BlockModeDecrypt, KeyIvInit};
    let mut data = b64_decode(encoded)?;
    check_blocks(&data, "attributes")?;
    let mut dec = cbc::Decryptor::<Aes128>::new(key.into(), &[0u8; 16].into());
    for block in data.chunks_exact_mut(16) {
        dec.decrypt_block(block.try_into().expect("16-byte chunk"));
    }
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let plain = &data[..end];
    if !plain.starts_with(b"MEGA{\"") {
        return Err(CryptoError::Authentication("node attributes"));
    }
    match serde_json::from_slice(&plain[4..]) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(CryptoError::Malformed("node attributes JSON")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// megajs's `testBuffer`: byte i = (start + i × step) mod 255.
    fn tb(n: usize, start: usize, step: usize) -> Vec<u8> {
        (0..n).map(|i| ((start + i * step) % 255) as u8).collect()
    }

    fn key_tb24() -> FileKey {
        FileKey::from_bytes24(&tb(24, 100, 7).try_into().unwrap())
    }

    /// Serial CBC-MAC straight from the definition, to check the interleaved one against.
    fn reference_chunk_mac(fk: &FileKey, data: &[u8]) -> [u8; 16] {
        let cipher = aes128(&fk.key);
        let mut m = [0u8; 16];
        m[..8].copy_from_slice(&fk.nonce);
        m[8..].copy_from_slice(&fk.nonce);
        for block in data.chunks(16) {
            xor_into(&mut m, block);
            cipher.encrypt_block((&mut m).into());
        }
        m
    }

    #[test]
    fn chunk_schedule_matches_go_mega_table() {
        let k = 1024u64;
        let spans: Vec<_> = chunk_spans(5 * MIB)
            .map(|r| (r.start, r.end - r.start))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 128 * k),
                (128 * k, 256 * k),
                (384 * k, 384 * k),
                (768 * k, 512 * k),
                (1280 * k, 640 * k),
                (1920 * k, 768 * k),
                (2688 * k, 896 * k),
                (3584 * k, 1024 * k),
                (4608 * k, 512 * k),
            ]
        );
        assert_eq!(chunk_spans(0).count(), 0);
        let spans: Vec<_> = chunk_spans(128 * k + 1).collect();
        assert_eq!(spans, vec![0..128 * k, 128 * k..128 * k + 1]);
        assert_eq!(chunk_start(10), 5632 * k + 1024 * k);
        assert_eq!(chunk_index(4608 * k - 1), 7);
        assert_eq!(chunk_index(4608 * k), 8);
        assert_eq!(chunk_index(5632 * k), 9);
    }

    #[test]
    fn quirk_sizes_match_the_reference_list() {
        for size in [0, 131_057, 131_071, 131_072, 393_201, 393_216, 4_718_592] {
            assert!(is_megajs_quirk_size(size), "{size}");
        }
        for size in [1, 15, 16, 131_056, 131_073, 151_511, 4_718_593] {
            assert!(!is_megajs_quirk_size(size), "{size}");
        }
    }

    #[test]
    fn prepare_key_and_user_hash_known_answers() {
        // mega-reference §9.1 and §9.2 (megajs's own tests, mega-mock's fixture).
        assert_eq!(
            hex::encode(prepare_key_v1(&tb(8, 0, 1))),
            "c4589a459956887caf0b408635c3c03b"
        );
        assert_eq!(
            hex::encode(prepare_key_v1(&tb(64, 0, 1))),
            "83bd84689f057f9ed9834b3ecb81d80e"
        );
        let pkey = prepare_key_v1(b"mock");
        assert_eq!(hex::encode(pkey), "148ed5027fa78a9e97a444159a54c621");
        assert_eq!(user_hash_v1("mock@test", &pkey), "jCf2Pc0pLCU");
    }

    #[test]
    fn sdk_password_bytes_follow_str_to_a32() {
        // mega-reference §9.4: the official clients' v1 keys for non-ASCII passwords.
        let key = prepare_key_v1(&password_bytes_v1_sdk("pässwörd"));
        assert_eq!(hex::encode(key), "f38493e354193dd028c8ed07d52c7a25");
        let key = prepare_key_v1(&password_bytes_v1_sdk("пароль"));
        assert_eq!(hex::encode(key), "bd8633fc21006e6fc7c19dac2055038b");
        assert_eq!(password_bytes_v1_sdk("mock"), b"mock");
    }

    #[test]
    fn v2_salt_and_hashed_auth_key_known_answers() {
        let crv: [u8; 16] = core::array::from_fn(|i| i as u8);
        let salt = v2_salt(&crv);
        assert_eq!(
            hex::encode(salt),
            "efc68bf1440fb0ad7f9a39fe07670fd9b7320e10e337fb3e628c5bb297b7f277"
        );
        let keys = derive_v2(b"mock", &salt);
        assert_eq!(
            hex::encode(keys.password_key),
            "06da48d5bd3bc292e0bf88155bf5cc13"
        );
        assert_eq!(b64_encode(&keys.auth_key), "g7G9n-JzTE8dv03mAygt3g");
        assert_eq!(
            hex::encode(hashed_auth_key(&keys.auth_key)),
            "99f67e9e014f13471a1829cd29ceccd7"
        );
        let master = a32_to_bytes(&[109, 111, 99, 107]);
        assert_eq!(
            b64_encode(&ecb_encrypt(&keys.password_key, &master).unwrap()),
            "zUD-mFFYCh8SIccjGCEO5g"
        );
    }

    #[test]
    fn file_mac_and_node_key_known_answers() {
        // mega-reference §9.6 (megajs's crypto-stream test).
        let fk = key_tb24();
        let mut data = tb(151_511, 0, 1);
        let mac = encrypt_file(&fk, &mut data);
        assert_eq!(hex::encode(mac), "75f47bd299c3e9f2");
        assert_eq!(
            b64_encode(&fk.pack(&mac)),
            "sLCQkHBwcJPpV9FjIXwvP9Tb4unw9_4GdfR70pnD6fI"
        );
        use sha1::Digest;
        assert_eq!(
            hex::encode(sha1::Sha1::digest(&data)),
            "addb96c07ac4e6b66316b81530256c911b0b49d1"
        );
        assert_eq!(decrypt_file(&fk, &mut data, &mac), Ok(MacMatch::Canonical));
        assert_eq!(data, tb(151_511, 0, 1));
    }

    #[test]
    fn megajs_variant_known_answers() {
        // mega-reference §9.6: canonical vs megajs meta-MAC at quirk sizes.
        let fk = key_tb24();
        for (size, canonical, variant) in [
            (0, "0000000000000000", "cb5181a4b82ac57d"),
            (131_072, "446ddc4e6ce5d36b", "9d36e6ac0f740b0e"),
            (131_071, "276f6f439b948558", "909f74882c1d0179"),
        ] {
            let data = tb(size, 0, 1);
            let file_mac = condense_macs(&fk, &file_chunk_macs(&fk, &data));
            assert_eq!(hex::encode(meta_mac(&file_mac)), canonical, "size {size}");
            let v = megajs_variant_meta_mac(&fk, &file_mac);
            assert_eq!(hex::encode(v), variant, "size {size}");
            assert_eq!(
                verify_meta_mac(&fk, size as u64, &file_mac, &v),
                Ok(MacMatch::MegajsVariant)
            );
        }
        // Outside the quirk sizes the variant is not accepted.
        let data = tb(1000, 0, 1);
        let file_mac = condense_macs(&fk, &file_chunk_macs(&fk, &data));
        let v = megajs_variant_meta_mac(&fk, &file_mac);
        assert_eq!(
            verify_meta_mac(&fk, 1000, &file_mac, &v),
            Err(CryptoError::MacMismatch)
        );
    }

    #[test]
    fn ctr_known_answer() {
        // mega-reference §9.5 (megajs's aes-ctr test).
        let fk = FileKey::from_bytes24(&tb(24, 0, 1).try_into().unwrap());
        let mut data = tb(32, 0, 1);
        ctr_apply(&fk, 0, &mut data);
        assert_eq!(
            hex::encode(data),
            "8de7dac3d95eca9fd74f30c1ecf8247a8f25d1b3fd2d11a8a7b458d16a085434"
        );
    }

    #[test]
    fn attributes_known_answer_and_rejections() {
        // mega-reference §9.7.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let mut attrs = serde_json::Map::new();
        attrs.insert("n".into(), "test.txt".into());
        let a = encrypt_attributes(&key, &attrs);
        assert_eq!(a, "YrRWTOsV7TZ0ApBZWn12UlHlrsWuwRQn8KxzmiDjS4E");
        assert_eq!(decrypt_attributes(&key, &a).unwrap(), attrs);
        let wrong = [7u8; 16];
        assert_eq!(
            decrypt_attributes(&wrong, &a),
            Err(CryptoError::Authentication("node attributes"))
        );
        assert!(matches!(
            decrypt_attributes(&key, "abc"),
            Err(CryptoError::Length { .. })
        ));
        assert_eq!(
            decrypt_attributes(&key, "!!!!"),
            Err(CryptoError::Base64("MEGA base64"))
        );
        assert!(matches!(
            decrypt_attributes(&key, ""),
            Err(CryptoError::Length { .. })
        ));
    }

    #[test]
    fn base64_is_lenient_on_input_strict_on_output() {
        assert_eq!(b64_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(b64_decode("+/8=").unwrap(), vec![0xfb, 0xff]);
        assert!(b64_decode("a").is_err());
        assert!(b64_decode_array::<16>("AAAA", "key").is_err());
        assert!(bytes_to_a32(&[1, 2, 3]).is_err());
        assert_eq!(
            bytes_to_a32(&a32_to_bytes(&[0x93C467E3, 7])).unwrap(),
            vec![0x93C467E3, 7]
        );
    }

    #[test]
    fn ecb_rejects_partial_blocks() {
        let key = [1u8; 16];
        assert!(ecb_encrypt(&key, &[0; 15]).is_err());
        assert!(ecb_decrypt(&key, &[]).is_err());
        let wrapped = ecb_encrypt(&key, &[9; 32]).unwrap();
        assert_eq!(ecb_decrypt(&key, &wrapped).unwrap(), vec![9; 32]);
    }

    #[test]
    fn node_key_unpack_rejects_wrong_length() {
        assert!(FileKey::unpack(&[0; 31]).is_err());
        assert!(FileKey::unpack(&[0; 33]).is_err());
    }

    #[test]
    fn accumulator_rejects_bad_chunks_and_needs_every_chunk() {
        let fk = key_tb24();
        let data = tb(400_000, 0, 1);
        let mut acc = MacAccumulator::new(&fk, data.len() as u64);
        assert!(acc.add_chunk(0, &data[..10]).is_err());
        assert!(acc.add_chunk(9, &data[..10]).is_err());
        acc.add_chunk(2, &data[393_216..]).unwrap();
        acc.add_chunk(0, &data[..131_072]).unwrap();
        assert!(!acc.is_complete());
        assert!(acc.verify(&[0; 8]).is_err());
        acc.add_chunk(1, &data[131_072..393_216]).unwrap();
        let mut copy = data.clone();
        assert_eq!(acc.meta_mac().unwrap(), encrypt_file(&fk, &mut copy));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn interleaved_macs_equal_serial(sizes in proptest::collection::vec(0usize..3000, 0..80), seed in any::<u8>()) {
            let fk = FileKey::from_bytes24(&[seed; 24]);
            let bufs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| tb(n, i + seed as usize, 3)).collect();
            let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            let fast = chunk_macs(&fk, &refs);
            for (buf, mac) in bufs.iter().zip(&fast) {
                prop_assert_eq!(*mac, reference_chunk_mac(&fk, buf));
            }
        }

        #[test]
        fn ctr_at_any_offset_equals_the_stream(len in 0usize..2000, from in 0usize..2000, seed in any::<u8>()) {
            let fk = FileKey::from_bytes24(&[seed; 24]);
            let plain = tb(len, seed as usize, 1);
            let mut whole = plain.clone();
            ctr_apply(&fk, 0, &mut whole);
            let from = from.min(len);
            let mut part = plain[from..].to_vec();
            ctr_apply(&fk, from as u64, &mut part);
            prop_assert_eq!(&part[..], &whole[from..]);
        }

        #[test]
        fn accumulator_is_order_independent(size in 0u64..3_000_000, seed in any::<u64>()) {
            let fk = FileKey::from_bytes24(&[seed as u8; 24]);
            let data = tb(size as usize, seed as usize % 255, 1);
            let mut acc = MacAccumulator::new(&fk, size);
            let mut order: Vec<u64> = (0..chunk_count(size)).collect();
            // A cheap deterministic shuffle driven by the seed.
            let n = order.len();
            for i in 0..n { order.swap(i, (seed as usize).wrapping_mul(i + 7) % n); }
            for i in order {
                let r = chunk_range(i, size);
                acc.add_chunk(i, &data[r.start as usize..r.end as usize]).unwrap();
            }
            let mut enc = data.clone();
            let mac = encrypt_file(&fk, &mut enc);
            prop_assert_eq!(acc.meta_mac().unwrap(), mac);
            prop_assert_eq!(acc.verify(&mac), Ok(MacMatch::Canonical));
            let mut dec = enc.clone();
            prop_assert_eq!(decrypt_file(&fk, &mut dec, &mac), Ok(MacMatch::Canonical));
            prop_assert_eq!(dec, data);
        }

        #[test]
        fn attributes_round_trip(name in ".{0,300}", key in any::<[u8; 16]>()) {
            let mut attrs = serde_json::Map::new();
            attrs.insert("n".into(), name.into());
            attrs.insert("veilfs".into(), serde_json::json!({"m": 0o755}));
            prop_assert_eq!(decrypt_attributes(&key, &encrypt_attributes(&key, &attrs)).unwrap(), attrs);
        }

        #[test]
        fn decoders_never_panic(s in ".{0,200}", key in any::<[u8; 16]>()) {
            let _ = decrypt_attributes(&key, &s);
            let _ = b64_decode(&s);
            if let Ok(bytes) = b64_decode(&s) { let _ = FileKey::unpack(&bytes); }
        }

        #[test]
        fn node_key_round_trips(k in any::<[u8; 24]>(), mac in any::<[u8; 8]>()) {
            let fk = FileKey::from_bytes24(&k);
            let (back, m) = FileKey::unpack(&fk.pack(&mac)).unwrap();
            prop_assert_eq!(back, fk);
            prop_assert_eq!(m, mac);
        }
    }
}
