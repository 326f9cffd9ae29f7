//! Filen crypto: known-answer vectors produced by @filen/sdk 0.3.12 (tests/vectors), property
//! round-trips, hostile input, and live interop with the real SDK through tests/interop/filen.js.

mod common;

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use veilfs::crypto::CryptoError;
use veilfs::crypto::filen::*;

static VECTORS: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/filen-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
});

fn v(path: &str) -> &'static str {
    VECTORS
        .pointer(path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("vector {path} missing"))
}

/// The vector generator replaced the CSPRNG with a counter: byte i = start + i.
fn counter_bytes(start: u8) -> [u8; 12] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn sha512_hex(data: &[u8]) -> String {
    hex::encode(Sha512::digest(data))
}

fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap()
}

/// Runs a batch of ops through the SDK and returns one result per op.
fn sdk(ops: Vec<Value>) -> Vec<Value> {
    let n = ops.len();
    let out = common::run_node("filen.js", &[], &json!({ "ops": ops }));
    let results = out["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), n, "the SDK script answered every op");
    results
}

fn ok_str<'a>(r: &'a Value, field: &str) -> &'a str {
    r[field]
        .as_str()
        .unwrap_or_else(|| panic!("SDK op failed or lacks {field}: {r}"))
}

const MK: &str = "4dea2174898ea2e9d700d615efe7faf75c0c7b6971c6ac32afc51c1866e50ca2";
const DEK: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const FILE_KEY_V2: &str = "0123456789abcdefghijklmnopqrstuv";
const FILE_KEY_V3: &str = "303132333435363738396162636465666768696a6b6c6d6e6f70717273747576";

// ---------------------------------------------------------------------------------------------
// Known answers: password derivation and name hashes

#[test]
fn auth_v1_matches_vectors() {
    let d = derive_credentials(AuthVersion::V1, v("/auth/password"), "ignored").unwrap();
    assert_eq!(d.master_key.as_str(), v("/auth/v1/derivedMasterKeys"));
    assert_eq!(d.login_password.as_str(), v("/auth/v1/derivedPassword"));
    assert_eq!(d.login_password.len(), 256);
    assert_eq!(d.master_key.as_str(), v("/v1/hashFn_password"));
}

#[test]
fn auth_v2_matches_vectors() {
    let d = derive_credentials(AuthVersion::V2, v("/auth/password"), v("/auth/saltV2")).unwrap();
    assert_eq!(d.master_key.as_str(), v("/auth/v2/derivedMasterKeys"));
    assert_eq!(d.login_password.as_str(), v("/auth/v2/derivedPassword"));
    assert_eq!(&v("/auth/v2raw")[..64], d.master_key.as_str());
}

#[test]
fn auth_v2_matches_third_party_vector_with_non_hex_salt() {
    // filen-py's vector, re-checked against the SDK in filen-reference.md §12.3: the salt is not
    // hex, proving it is used as text.
    let salt = "4bOVDgDoVqV9PMkuOXWi6FB91K2MvTV84weHsUNHpVmbWXzq8mclnCqjX9qEyA5guIu590W63HlcYAAPTQlbZLplZC_UBjNKnv-O";
    let d = derive_credentials(AuthVersion::V2, "Hello@W0rld123!", salt).unwrap();
    assert_eq!(
        d.master_key.as_str(),
        "c438c484766b8ff500b0b918fd44f1f643929f7656a648f6b3dd76aea56c121b"
    );
    assert_eq!(
        d.login_password.as_str(),
        "6391048cdfc0df0f933093f25ddb333cc7ea9363201f4e617b521227db88887f9e499040472fd5aefdf6f8fbbf03e75eacf8e2dedd680089b858fcf0a00b635f"
    );
}

#[test]
fn auth_v3_matches_vectors() {
    let d = derive_credentials(AuthVersion::V3, v("/auth/password"), v("/auth/saltV3")).unwrap();
    assert_eq!(d.master_key.as_str(), v("/auth/v3/derivedMasterKeys"));
    assert_eq!(d.login_password.as_str(), v("/auth/v3/derivedPassword"));
}

#[test]
fn auth_bad_input_is_typed() {
    assert_eq!(
        AuthVersion::from_number(4),
        Err(CryptoError::Unsupported("Filen auth version"))
    );
    assert_eq!(AuthVersion::from_number(3).unwrap().number(), 3);
    assert_eq!(
        derive_credentials(AuthVersion::V3, "pw", "zz00").unwrap_err(),
        CryptoError::Hex("auth v3 salt")
    );
    assert!(matches!(
        derive_credentials(AuthVersion::V3, "pw", "0011").unwrap_err(),
        CryptoError::Length { got: 2, .. }
    ));
}

#[test]
fn name_hashes_match_vectors() {
    let names = VECTORS["nameHashV1V2"].as_object().unwrap();
    assert_eq!(names.len(), 3);
    for (name, hash) in names {
        assert_eq!(name_hash_v1v2(name), hash.as_str().unwrap(), "{name}");
        assert_eq!(NameHasher::V1V2.hash(name), hash.as_str().unwrap());
    }
    // filen-py's vectors (filen-reference.md §12.3).
    assert_eq!(
        name_hash_v1v2("Backup"),
        "bee4407adc7501da1a6facafe587fe30aada4bff"
    );
    assert_eq!(
        name_hash_v1v2("Docs"),
        "455f3194ec552fbc452397fc4d6676427fe1bb96"
    );
    assert_eq!(
        name_hash_v1v2("Temp"),
        "c6392de62a260845105a4d76095bfa656a37203b"
    );
    assert_eq!(name_hash_v1v2("hello.txt"), v("/file/nameHashed"));
    // Case folding is what makes A.txt and a.txt collide on Filen.
    assert_eq!(name_hash_v1v2("HELLO.TXT"), v("/file/nameHashed"));

    let key = NameHmacKey::from_private_key_b64(v("/nameHashV3/privateKeyB64")).unwrap();
    assert_eq!(hex::encode(key.as_bytes()), v("/nameHashV3/hmacKeyHex"));
    let hashes = VECTORS["nameHashV3"]["hashes"].as_object().unwrap();
    assert_eq!(hashes.len(), 3);
    let hasher = NameHasher::V3(key.clone());
    for (name, hash) in hashes {
        assert_eq!(key.name_hash(name), hash.as_str().unwrap(), "{name}");
        assert_eq!(
            hasher.hash(&name.to_ascii_uppercase()),
            hash.as_str().unwrap()
        );
    }
    let search: Vec<&str> = VECTORS["searchHashesOf_abc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(key.search_hashes("abc"), search);
    assert_eq!(key.search_hashes("ABC "), search, "lower-cased and trimmed");
    assert!(key.search_hashes("  ").is_empty());

    // HKDF over a real PKCS#8 DER key; filen-rs's variant (over `d`) must differ.
    let real = NameHmacKey::from_private_key_b64(v("/rsa/privateKeyPkcs8DerB64")).unwrap();
    assert_eq!(
        hex::encode(real.as_bytes()),
        v("/rsa/hmacKeyFromThisPrivateKeyHex")
    );
    assert_ne!(
        hex::encode(real.as_bytes()),
        v("/rsa/hmacKeyFromD_filenRsStyleHex")
    );
    assert_eq!(
        NameHmacKey::from_private_key_b64("not base64!").unwrap_err(),
        CryptoError::Base64("private key")
    );
}

#[test]
fn random_strings_use_the_sdk_alphabet() {
    let bytes: Vec<u8> = (0..64).collect();
    assert_eq!(
        random_string_from_bytes(&bytes),
        v("/generateRandomString64")
    );
    // byte % 64: 64 and 0 map to the same character.
    assert_eq!(random_string_from_bytes(&[64, 0, 255]), "AA_");
    let s = random_string(1000);
    assert_eq!(s.len(), 1000);
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_ne!(random_string(32), random_string(32));
    let h = random_hex(32);
    assert_eq!(h.len(), 64);
    assert!(
        h.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let dek = generate_dek();
    assert_eq!(dek.len(), 64);
}

// ---------------------------------------------------------------------------------------------
// Known answers: metadata

#[test]
fn metadata_002_matches_vectors() {
    let key = MetadataKey::new(v("/metadata/masterKeyV2"));
    assert_eq!(
        hex::encode(key.v2_aes_key()),
        v("/metadata/v002/derivedAesKeyHex")
    );
    let plain = v("/metadata/plaintext");
    assert_eq!(key.decrypt(v("/metadata/v002/ciphertext")).unwrap(), plain);
    assert_eq!(
        key.encrypt_with_nonce_bytes(plain, MetadataVersion::V2, counter_bytes(0)),
        v("/metadata/v002/ciphertext")
    );
    assert_eq!(
        decrypt_metadata(v("/metadata/v002/ciphertext"), MK).unwrap(),
        v("/metadata/v002/decrypted")
    );
}

#[test]
fn metadata_003_matches_vectors() {
    let key = MetadataKey::new(v("/metadata/dekV3"));
    let plain = v("/metadata/plaintext");
    assert_eq!(key.decrypt(v("/metadata/v003/ciphertext")).unwrap(), plain);
    assert_eq!(
        key.encrypt_with_nonce_bytes(plain, MetadataVersion::V3, counter_bytes(0)),
        v("/metadata/v003/ciphertext")
    );
    // Uppercase hex keys are accepted.
    assert_eq!(
        decrypt_metadata(v("/metadata/v003/ciphertext"), &DEK.to_uppercase()).unwrap(),
        plain
    );
}

#[test]
fn metadata_003_with_non_hex_key_writes_002_like_the_sdk() {
    let expected = v("/metadata/v3RequestedWithNonHexKey");
    let key = MetadataKey::new(FILE_KEY_V2);
    let ours = key.encrypt_with_nonce_bytes("x", MetadataVersion::V3, counter_bytes(0));
    // Same prefix and nonce as the SDK's output (its key is not recorded in the vectors).
    assert_eq!(&ours[..15], &expected[..15]);
    assert_eq!(&ours[..15], "002ABCDEFGHIJKL");
    assert_eq!(key.decrypt(&ours).unwrap(), "x");
    // 40-hex v1 keys are not 64 hex either.
    let v1 = "0364c40188b54143c7628cf84053a687efcd07cd";
    assert!(encrypt_metadata("y", v1, MetadataVersion::V3).starts_with("002"));
}

#[test]
fn metadata_legacy_matches_vectors() {
    assert_eq!(
        decrypt_metadata(v("/metadata/legacy/ciphertext"), MK).unwrap(),
        v("/metadata/legacy/decrypted")
    );
    assert_eq!(
        decrypt_metadata(v("/metadata/legacy/ciphertext"), DEK).unwrap_err(),
        CryptoError::Authentication("legacy metadata")
    );
}

#[test]
fn metadata_tampered_fails_authentication() {
    let ct = v("/metadata/v002/ciphertext");
    // Flip one base64 character of the body (keeping it valid base64).
    let mut bytes = ct.as_bytes().to_vec();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_eq!(
        decrypt_metadata(&tampered, MK).unwrap_err(),
        CryptoError::Authentication("metadata")
    );
    // A different nonce character also breaks it.
    let mut nonce = ct.as_bytes().to_vec();
    nonce[3] = b'Z';
    assert_eq!(
        decrypt_metadata(&String::from_utf8(nonce).unwrap(), MK).unwrap_err(),
        CryptoError::Authentication("metadata")
    );
}

#[test]
fn file_metadata_vectors() {
    let mk = MetadataKey::new(MK);
    assert_eq!(
        mk.decrypt(v("/file/metadataEncrypted")).unwrap(),
        v("/file/metadataJson")
    );
    assert_eq!(
        mk.encrypt_with_nonce_bytes(
            v("/file/metadataJson"),
            MetadataVersion::V2,
            counter_bytes(200)
        ),
        v("/file/metadataEncrypted")
    );
    let fk = MetadataKey::new(v("/file/fileKey"));
    for (field, plain) in [
        ("/file/nameEncrypted", "hello.txt"),
        ("/file/sizeEncrypted", "14"),
        ("/file/mimeEncrypted", "text/plain"),
    ] {
        assert_eq!(fk.decrypt(v(field)).unwrap(), plain);
        assert_eq!(
            fk.encrypt_with_nonce_bytes(plain, MetadataVersion::V2, counter_bytes(200)),
            v(field)
        );
    }
    let meta: Value = serde_json::from_str(v("/file/metadataJson")).unwrap();
    assert_eq!(meta["key"], v("/file/fileKey"));
}

#[test]
fn master_key_list_vectors() {
    let list: Vec<&str> = VECTORS["masterKeys"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let encrypted = v("/masterKeys/encryptedWithNewest");
    // The SDK wrote `old|new` under the newest key.
    assert_eq!(
        MetadataKey::new(MK).encrypt_with_nonce_bytes(
            &list.join("|"),
            MetadataVersion::V2,
            counter_bytes(100)
        ),
        encrypted
    );
    let mut keys = MasterKeys::for_account(AuthVersion::V2, MK);
    assert_eq!(keys.merge_encrypted_list(encrypted).unwrap(), 1);
    assert_eq!(keys.iter().collect::<Vec<_>>(), vec![MK, list[0]]);
    assert_eq!(keys.len(), 2);
    assert!(!keys.is_empty());
    // Merging again adds nothing; empty entries are ignored.
    assert_eq!(keys.merge_list(&format!("|{}||{MK}|", list[0])), 0);
    assert_eq!(
        keys.decrypt_metadata(v("/masterKeys/privateKeyEncrypted"))
            .unwrap(),
        v("/nameHashV3/privateKeyB64")
    );
    // A list the current key cannot open is refused.
    let mut stranger = MasterKeys::for_account(AuthVersion::V2, DEK);
    assert!(matches!(
        stranger.merge_encrypted_list(encrypted).unwrap_err(),
        CryptoError::Authentication(_)
    ));
    assert_eq!(stranger.len(), 1);
}

#[test]
fn master_keys_try_every_key_regardless_of_order() {
    let old = "0364c40188b54143c7628cf84053a687efcd07cd"; // a 40-hex v1 key
    let older = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";
    let mut keys = MasterKeys::for_account(AuthVersion::V2, MK);
    keys.merge_list(&format!("{older}|{old}"));
    for key in [MK, old, older] {
        for version in [MetadataVersion::V2, MetadataVersion::V3] {
            let ct = encrypt_metadata("{\"name\":\"x\"}", key, version);
            assert_eq!(keys.decrypt_metadata(&ct).unwrap(), "{\"name\":\"x\"}");
        }
    }
    // Legacy items under an old key decrypt too.
    let mut legacy_keys = MasterKeys::for_account(AuthVersion::V2, DEK);
    legacy_keys.merge_list(MK);
    assert_eq!(
        legacy_keys
            .decrypt_metadata(v("/metadata/legacy/ciphertext"))
            .unwrap(),
        v("/metadata/legacy/decrypted")
    );
    // New metadata: 002 under the current key only.
    let ct = keys.encrypt_metadata("new");
    assert!(ct.starts_with("002"));
    assert_eq!(decrypt_metadata(&ct, MK).unwrap(), "new");
    assert!(decrypt_metadata(&ct, old).is_err());
    // The posted list round-trips through a fresh login with only the derived key.
    let mut fresh = MasterKeys::for_account(AuthVersion::V2, MK);
    assert_eq!(
        fresh.merge_encrypted_list(&keys.encrypted_list()).unwrap(),
        2
    );
    assert_eq!(fresh.iter().collect::<Vec<_>>(), vec![MK, older, old]);
    // Unknown key, malformed input.
    let foreign = encrypt_metadata("x", DEK, MetadataVersion::V2);
    assert!(matches!(
        keys.decrypt_metadata(&foreign).unwrap_err(),
        CryptoError::Authentication(_)
    ));
    assert_eq!(
        keys.decrypt_metadata("004abc").unwrap_err(),
        CryptoError::Unsupported("metadata version prefix")
    );
}

#[test]
fn v3_accounts_write_003_with_the_dek() {
    let kek = "f6d3b93cd0c5b1370294dfee2da6b926eb8b1bf87ef7a1ff4ce4b914ff231d7c";
    let wrapped = wrap_dek(kek, DEK);
    assert!(wrapped.starts_with("003"));
    assert_eq!(unwrap_dek(kek, &wrapped).unwrap().as_str(), DEK);
    // The TypeScript SDK wraps with 002 by default: also readable.
    let ts_style = encrypt_metadata(DEK, kek, MetadataVersion::V2);
    assert_eq!(unwrap_dek(kek, &ts_style).unwrap().as_str(), DEK);
    assert_eq!(
        unwrap_dek(kek, &encrypt_metadata("short", kek, MetadataVersion::V3)).unwrap_err(),
        CryptoError::Malformed("v3 DEK (not 64 hex characters)")
    );
    let keys = MasterKeys::for_account(AuthVersion::V3, DEK);
    assert_eq!(keys.write_version(), MetadataVersion::V3);
    let ct = keys.encrypt_metadata("{\"name\":\"a\"}");
    assert!(ct.starts_with("003"));
    assert_eq!(
        MetadataKey::new(DEK).decrypt(&ct).unwrap(),
        "{\"name\":\"a\"}"
    );
    assert_eq!(keys.current().as_str(), DEK);
}

#[test]
fn metadata_bad_input_is_typed() {
    let cases: &[(&str, CryptoError)] = &[
        ("", CryptoError::Unsupported("metadata version prefix")),
        (
            "001abc",
            CryptoError::Unsupported("metadata version prefix"),
        ),
        (
            "{\"name\":1}",
            CryptoError::Unsupported("metadata version prefix"),
        ),
        (
            "002short",
            CryptoError::Length {
                what: "metadata",
                expected: "a complete nonce after the version prefix",
                got: 8,
            },
        ),
        ("002ABCDEFGHIJKL!!!!", CryptoError::Base64("metadata")),
        (
            "002ABCDEFGHIJKLAAAA",
            CryptoError::Length {
                what: "metadata ciphertext",
                expected: "at least the 16-byte tag",
                got: 3,
            },
        ),
        (
            "003zz0102030405060708090a0bbTrbVy0s74zrfwCfRLgBQRpGhQOwYpDLtCuIAIJQlvG6NU4s",
            CryptoError::Hex("003 IV"),
        ),
        ("U2FsdGVk%%%", CryptoError::Base64("legacy metadata")),
    ];
    for (input, err) in cases {
        assert_eq!(&decrypt_metadata(input, MK).unwrap_err(), err, "{input:?}");
    }
    // A multi-byte character straddling the nonce boundary must not panic.
    let straddle = format!("002ABCDEFGHIJK\u{e9}{}", "A".repeat(24));
    assert!(decrypt_metadata(&straddle, MK).is_err());
    let straddle3 = format!("003{}\u{e9}{}", "0".repeat(23), "A".repeat(24));
    assert!(decrypt_metadata(&straddle3, DEK).is_err());
    // Truncated legacy: not whole blocks.
    let legacy = v("/metadata/legacy/ciphertext");
    assert!(matches!(
        decrypt_metadata(&legacy[..30], MK).unwrap_err(),
        CryptoError::Length { .. } | CryptoError::Base64(_)
    ));
    // 003 needs a 64-hex key; the SDK refuses other keys too.
    assert_eq!(
        decrypt_metadata(v("/metadata/v003/ciphertext"), FILE_KEY_V2).unwrap_err(),
        CryptoError::Unsupported("003 metadata with a non-hex key")
    );
    // Wrong 64-hex key.
    assert_eq!(
        decrypt_metadata(v("/metadata/v003/ciphertext"), MK).unwrap_err(),
        CryptoError::Authentication("metadata")
    );
    // Lenient base64 like Node: url-safe alphabet and missing padding decode the same.
    let ct = v("/file/nameEncrypted");
    let url = ct
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_owned();
    assert_eq!(decrypt_metadata(&url, FILE_KEY_V2).unwrap(), "hello.txt");
}

// ---------------------------------------------------------------------------------------------
// Known answers: file chunks

#[test]
fn chunk_v2_matches_vectors() {
    let key = FileKey::parse(v("/data/v2/key"), DataVersion::V2).unwrap();
    let chunk = hex::decode(v("/data/v2/chunkHex")).unwrap();
    assert_eq!(sha512_hex(&chunk), v("/data/v2/chunkSha512"));
    assert_eq!(
        key.decrypt_chunk(&chunk).unwrap(),
        v("/data/v2/decrypted").as_bytes()
    );
    assert_eq!(
        key.encrypt_chunk_with_nonce_bytes(v("/data/v2/decrypted").as_bytes(), counter_bytes(0))
            .unwrap(),
        chunk
    );
    assert_eq!(
        &chunk[..12],
        b"ABCDEFGHIJKL",
        "v2 IVs are base64url characters"
    );
    assert_eq!(key.as_str(), FILE_KEY_V2);
    assert_eq!(key.version(), DataVersion::V2);
}

#[test]
fn chunk_v3_matches_vectors() {
    let key = FileKey::parse(v("/data/v3/key"), DataVersion::V3).unwrap();
    let chunk = hex::decode(v("/data/v3/chunkHex")).unwrap();
    assert_eq!(
        key.decrypt_chunk(&chunk).unwrap(),
        v("/data/v3/decrypted").as_bytes()
    );
    assert_eq!(
        key.encrypt_chunk_with_nonce_bytes(v("/data/v3/decrypted").as_bytes(), counter_bytes(0))
            .unwrap(),
        chunk
    );
    // The v3 key is the hex of the v2 key's bytes: same AES key, different IV convention.
    let v2 = FileKey::parse(FILE_KEY_V2, DataVersion::V2).unwrap();
    assert_eq!(v2.decrypt_chunk(&chunk).unwrap(), b"Hello, Filen!\n");
}

#[test]
fn full_chunk_matches_vector() {
    let plain: Vec<u8> = (0..CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
    assert_eq!(sha512_hex(&plain), v("/data/v2FullChunk/plaintextSha512"));
    let key = FileKey::parse(FILE_KEY_V2, DataVersion::V2).unwrap();
    let enc = key
        .encrypt_chunk_with_nonce_bytes(&plain, counter_bytes(0))
        .unwrap();
    assert_eq!(
        enc.len() as u64,
        VECTORS["data"]["v2FullChunk"]["encryptedLength"]
            .as_u64()
            .unwrap()
    );
    assert_eq!(enc.len(), MAX_ENCRYPTED_CHUNK_LEN);
    assert_eq!(hex::encode(&enc[..32]), v("/data/v2FullChunk/first32Hex"));
    assert_eq!(
        hex::encode(&enc[enc.len() - 16..]),
        v("/data/v2FullChunk/last16Hex")
    );
    assert_eq!(sha512_hex(&enc), v("/data/v2FullChunk/encryptedSha512"));
    // Every decryption API gives the plaintext back.
    assert_eq!(key.decrypt_chunk(&enc).unwrap(), plain);
    assert_eq!(
        key.decrypt_file_chunk(&enc, CHUNK_SIZE as u64 + 5, 0)
            .unwrap(),
        plain
    );
    let mut buf = enc.clone();
    key.decrypt_chunk_in_place(&mut buf).unwrap();
    assert_eq!(buf, plain);
    let mut out = vec![7u8; 3];
    key.decrypt_chunk_into(&enc, &mut out).unwrap();
    assert_eq!(out, plain);
}

#[test]
fn chunk_layout_helpers() {
    assert_eq!(chunk_count(0), 0);
    assert_eq!(chunk_count(1), 1);
    assert_eq!(chunk_count(CHUNK_SIZE as u64), 1);
    assert_eq!(chunk_count(CHUNK_SIZE as u64 + 1), 2);
    assert_eq!(
        chunk_plain_len(CHUNK_SIZE as u64 + 1, 0).unwrap(),
        CHUNK_SIZE
    );
    assert_eq!(chunk_plain_len(CHUNK_SIZE as u64 + 1, 1).unwrap(), 1);
    assert!(matches!(
        chunk_plain_len(CHUNK_SIZE as u64, 1).unwrap_err(),
        CryptoError::Malformed(_)
    ));
    assert!(chunk_plain_len(0, 0).is_err());
    assert!(chunk_plain_len(u64::MAX, u64::MAX).is_err());
    assert_eq!(DataVersion::from_number(3).unwrap(), DataVersion::V3);
    assert_eq!(DataVersion::V2.number(), 2);
    assert_eq!(
        DataVersion::from_number(1).unwrap_err(),
        CryptoError::Unsupported("Filen file encryption version")
    );
}

#[test]
fn chunk_bad_input_is_typed() {
    let key = FileKey::parse(FILE_KEY_V2, DataVersion::V2).unwrap();
    let enc = key.encrypt_chunk(b"some data").unwrap();
    assert_eq!(enc.len(), 9 + CHUNK_OVERHEAD);
    // Too short to hold IV and tag.
    for len in [0, 1, 27] {
        assert!(matches!(
            key.decrypt_chunk(&enc[..len.min(enc.len())]).unwrap_err(),
            CryptoError::Length { got, .. } if got == len
        ));
    }
    // Too long.
    assert!(matches!(
        key.decrypt_chunk(&vec![0u8; MAX_ENCRYPTED_CHUNK_LEN + 1])
            .unwrap_err(),
        CryptoError::Length { .. }
    ));
    // Truncated by one byte: the tag no longer matches.
    assert_eq!(
        key.decrypt_chunk(&enc[..enc.len() - 1]).unwrap_err(),
        CryptoError::Authentication("file chunk")
    );
    // Any flipped bit: IV, ciphertext or tag.
    for i in [0, 12, enc.len() - 1] {
        let mut bad = enc.clone();
        bad[i] ^= 1;
        assert_eq!(
            key.decrypt_chunk(&bad).unwrap_err(),
            CryptoError::Authentication("file chunk")
        );
        let mut in_place = bad.clone();
        assert!(key.decrypt_chunk_in_place(&mut in_place).is_err());
        assert_eq!(
            in_place, bad,
            "a failed in-place decryption leaves the buffer"
        );
        let mut out = Vec::new();
        assert!(key.decrypt_chunk_into(&bad, &mut out).is_err());
        assert!(out.is_empty(), "no unauthenticated plaintext escapes");
    }
    // Wrong key.
    let other = FileKey::generate(DataVersion::V2);
    assert_eq!(
        other.decrypt_chunk(&enc).unwrap_err(),
        CryptoError::Authentication("file chunk")
    );
    // A valid chunk at the wrong position (wrong length for that index) is refused.
    assert!(matches!(
        key.decrypt_file_chunk(&enc, 2 * CHUNK_SIZE as u64, 1)
            .unwrap_err(),
        CryptoError::Length { .. }
    ));
    assert!(key.decrypt_file_chunk(&enc, 9, 0).is_ok());
    assert!(matches!(
        key.decrypt_file_chunk(&enc, 9, 1).unwrap_err(),
        CryptoError::Malformed(_)
    ));
    // Oversized plaintext is refused rather than producing an unreadable chunk.
    let big = vec![0u8; CHUNK_SIZE + 1];
    assert!(matches!(
        key.encrypt_chunk(&big).unwrap_err(),
        CryptoError::Length { .. }
    ));
    let mut big_buf = big.clone();
    assert!(key.encrypt_chunk_in_place(&mut big_buf).is_err());
    assert_eq!(big_buf, big);
    // Key shapes.
    assert!(matches!(
        FileKey::parse("short", DataVersion::V2).unwrap_err(),
        CryptoError::Length { got: 5, .. }
    ));
    assert!(matches!(
        FileKey::parse(FILE_KEY_V3, DataVersion::V2).unwrap_err(),
        CryptoError::Length { got: 64, .. }
    ));
    assert!(matches!(
        FileKey::parse(FILE_KEY_V2, DataVersion::V3).unwrap_err(),
        CryptoError::Length { got: 32, .. }
    ));
    assert_eq!(
        FileKey::parse(&"g".repeat(64), DataVersion::V3).unwrap_err(),
        CryptoError::Hex("v3 file key")
    );
    // 32 bytes but not 32 characters: still 32 raw key bytes, like Node's Buffer.from(key).
    assert!(FileKey::parse(&"é".repeat(16), DataVersion::V2).is_ok());
    // Debug output never shows key material.
    assert!(!format!("{key:?}").contains(FILE_KEY_V2));
    assert!(!format!("{:?}", MetadataKey::new(MK)).contains(MK));
}

#[test]
fn generated_keys_have_the_sdk_shapes() {
    let k2 = FileKey::generate(DataVersion::V2);
    assert_eq!(k2.as_str().len(), 32);
    assert!(
        k2.as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let k3 = FileKey::generate(DataVersion::V3);
    assert_eq!(k3.as_str().len(), 64);
    assert!(k3.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    // IV conventions: v2 IVs are base64url characters.
    for _ in 0..16 {
        let enc = k2.encrypt_chunk(b"x").unwrap();
        assert!(
            enc[..12]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        );
    }
    let a = k3.encrypt_chunk(b"same").unwrap();
    let b = k3.encrypt_chunk(b"same").unwrap();
    assert_ne!(a[..12], b[..12], "fresh IV per chunk");
}

// ---------------------------------------------------------------------------------------------
// Properties

fn file_key_strategy() -> impl Strategy<Value = FileKey> {
    prop_oneof![
        "[A-Za-z0-9_-]{32}".prop_map(|k| FileKey::parse(&k, DataVersion::V2).unwrap()),
        "[0-9a-f]{64}".prop_map(|k| FileKey::parse(&k, DataVersion::V3).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn metadata_round_trips(
        plain in any::<String>(),
        key in prop_oneof!["[0-9a-f]{64}", "[0-9a-f]{40}", "[A-Za-z0-9_-]{32}", any::<String>()],
        v3 in any::<bool>(),
    ) {
        let version = if v3 { MetadataVersion::V3 } else { MetadataVersion::V2 };
        let ct = encrypt_metadata(&plain, &key, version);
        let hex_key = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
        prop_assert_eq!(ct.starts_with("003"), v3 && hex_key);
        prop_assert_eq!(decrypt_metadata(&ct, &key).unwrap(), plain.clone());
        // Documented length: prefix + nonce + base64(n + 16).
        let iv_chars = if ct.starts_with("003") { 24 } else { 12 };
        prop_assert_eq!(ct.len(), 3 + iv_chars + 4 * (plain.len() + 16).div_ceil(3));
        // Another key never opens it.
        let other = format!("{key}x");
        prop_assert!(decrypt_metadata(&ct, &other).is_err());
    }

    #[test]
    fn metadata_garbage_never_panics(
        prefix in prop_oneof![Just(""), Just("002"), Just("003"), Just("U2FsdGVk")],
        rest in any::<String>(),
    ) {
        let s = format!("{prefix}{rest}");
        let _ = decrypt_metadata(&s, MK);
        let _ = decrypt_metadata(&s, FILE_KEY_V2);
        let keys = MasterKeys::for_account(AuthVersion::V2, MK);
        let _ = keys.decrypt_metadata(&s);
    }

    #[test]
    fn metadata_bit_flips_are_detected(plain in ".{0,40}", pos in any::<prop::sample::Index>()) {
        let ct = encrypt_metadata(&plain, MK, MetadataVersion::V2);
        let mut raw = STANDARD.decode(&ct[15..]).unwrap();
        let i = pos.index(raw.len());
        raw[i] ^= 0x80;
        let tampered = format!("{}{}", &ct[..15], b64(&raw));
        prop_assert_eq!(
            decrypt_metadata(&tampered, MK).unwrap_err(),
            CryptoError::Authentication("metadata")
        );
    }

    #[test]
    fn master_keys_open_items_of_any_listed_key(
        keys in prop::collection::vec("[0-9a-f]{64}|[A-Za-z0-9]{20}", 1..6),
        which in any::<prop::sample::Index>(),
        current_last in any::<bool>(),
    ) {
        let current = "f".repeat(64);
        let mut list = keys.clone();
        if current_last { list.push(current.clone()) } else { list.insert(0, current.clone()) }
        let mut mk = MasterKeys::for_account(AuthVersion::V2, &current);
        mk.merge_list(&list.join("|"));
        let k = which.get(&list);
        let ct = encrypt_metadata("{\"name\":\"n\"}", k, MetadataVersion::V2);
        prop_assert_eq!(mk.decrypt_metadata(&ct).unwrap(), "{\"name\":\"n\"}");
    }

    #[test]
    fn chunks_round_trip(key in file_key_strategy(), plain in prop::collection::vec(any::<u8>(), 0..5000)) {
        let enc = key.encrypt_chunk(&plain).unwrap();
        prop_assert_eq!(enc.len(), plain.len() + CHUNK_OVERHEAD);
        prop_assert_eq!(key.decrypt_chunk(&enc).unwrap(), plain.clone());
        let mut buf = plain.clone();
        key.encrypt_chunk_in_place(&mut buf).unwrap();
        prop_assert_eq!(buf.len(), plain.len() + CHUNK_OVERHEAD);
        key.decrypt_chunk_in_place(&mut buf).unwrap();
        prop_assert_eq!(&buf, &plain);
        let mut out = vec![1, 2, 3];
        key.encrypt_chunk_into(&plain, &mut out).unwrap();
        prop_assert_eq!(key.decrypt_file_chunk(&out, plain.len() as u64, 0).ok(), (!plain.is_empty()).then(|| plain.clone()));
    }

    #[test]
    fn chunk_garbage_never_panics(key in file_key_strategy(), data in prop::collection::vec(any::<u8>(), 0..200)) {
        prop_assert!(key.decrypt_chunk(&data).is_err());
        let mut buf = data.clone();
        prop_assert!(key.decrypt_chunk_in_place(&mut buf).is_err());
        prop_assert_eq!(buf, data);
    }

    #[test]
    fn chunk_tampering_is_detected(key in file_key_strategy(), plain in prop::collection::vec(any::<u8>(), 0..300), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut enc = key.encrypt_chunk(&plain).unwrap();
        let i = pos.index(enc.len());
        enc[i] ^= 1 << bit;
        prop_assert_eq!(key.decrypt_chunk(&enc).unwrap_err(), CryptoError::Authentication("file chunk"));
    }

    #[test]
    fn name_hashes_fold_case(name in "[A-Za-zÄÖÜäöü0-9 ._-]{1,30}") {
        prop_assert_eq!(name_hash_v1v2(&name), name_hash_v1v2(&name.to_uppercase()));
        let key = NameHmacKey::from_private_key_der(b"not really a key");
        prop_assert_eq!(key.name_hash(&name), key.name_hash(&name.to_lowercase()));
        prop_assert_eq!(key.name_hash(&name).len(), 64);
        prop_assert_eq!(name_hash_v1v2(&name).len(), 40);
    }
}

// ---------------------------------------------------------------------------------------------
// Interop with the real @filen/sdk

#[test]
fn interop_metadata_both_directions() {
    let v1_key = "0364c40188b54143c7628cf84053a687efcd07cd";
    let keys = [MK, DEK, FILE_KEY_V2, v1_key];
    let plains = [
        "{\"name\":\"Documents\"}".to_owned(),
        String::new(),
        "Grüße 日本語 🗂 \"quoted\" \\ / \n".to_owned(),
        "x".repeat(5000),
    ];
    let mut ops = Vec::new();
    let mut expect_sdk_decrypts = Vec::new();
    // SDK encrypts → we decrypt (002 always; 003 where the SDK writes it).
    for key in keys {
        for plain in &plains {
            for version in [2, 3] {
                ops.push(json!({"op": "encryptMetadata", "plaintext": plain, "key": key, "version": version}));
            }
        }
    }
    let n_sdk_encrypt = ops.len();
    // We encrypt → the SDK decrypts.
    for key in keys {
        for plain in &plains {
            for version in [MetadataVersion::V2, MetadataVersion::V3] {
                let ct = encrypt_metadata(plain, key, version);
                ops.push(json!({"op": "decryptMetadata", "ciphertext": ct, "key": key}));
                expect_sdk_decrypts.push(plain.clone());
            }
        }
    }
    // Tampered output of ours must be refused by the SDK too.
    // Flip a bit of the decoded ciphertext and re-encode: editing a base64 character could touch
    // only the unused trailing bits, which decode to the same bytes.
    let sealed = encrypt_metadata("secret", MK, MetadataVersion::V2);
    let (head, body) = sealed.split_at(15);
    let mut raw = STANDARD.decode(body).unwrap();
    raw[0] ^= 0x01;
    let tampered = format!("{head}{}", STANDARD.encode(&raw));
    ops.push(json!({"op": "decryptMetadata", "ciphertext": tampered, "key": MK}));

    let results = sdk(ops);
    let mut i = 0;
    for key in keys {
        for plain in &plains {
            for version in [2, 3] {
                let ct = ok_str(&results[i], "ciphertext");
                let hex_key = key.len() == 64;
                let expected_prefix = if version == 3 && hex_key {
                    "003"
                } else {
                    "002"
                };
                assert!(ct.starts_with(expected_prefix), "{ct} for key {key}");
                assert_eq!(&decrypt_metadata(ct, key).unwrap(), plain);
                // Our writer makes the same choice of format.
                let ours = encrypt_metadata(
                    plain,
                    key,
                    if version == 3 {
                        MetadataVersion::V3
                    } else {
                        MetadataVersion::V2
                    },
                );
                assert_eq!(&ours[..3], expected_prefix);
                assert_eq!(ours.len(), ct.len());
                i += 1;
            }
        }
    }
    assert_eq!(i, n_sdk_encrypt);
    for plain in &expect_sdk_decrypts {
        assert_eq!(ok_str(&results[i], "plaintext"), plain);
        i += 1;
    }
    assert!(
        results[i]["error"].as_str().is_some(),
        "the SDK refuses tampered metadata: {}",
        results[i]
    );
}

#[test]
fn interop_master_key_lists() {
    // A v2 account after a password change: NEW is derived from the new password, OLD is the
    // previous key. The SDK orders its list [derived, …] and writes with the *last* key.
    const NEW: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut ours = MasterKeys::for_account(AuthVersion::V2, NEW);
    ours.merge_list(MK);
    let our_list = ours.encrypted_list();
    let our_item = ours.encrypt_metadata("{\"name\":\"written by veilfs\"}");
    let results = sdk(vec![
        // SDK writes with at(-1) = the OLD key.
        json!({"op": "encryptMetadata", "plaintext": "{\"name\":\"written by sdk\"}", "masterKeys": [NEW, MK]}),
        // SDK writes with at(-1) = NEW.
        json!({"op": "encryptMetadata", "plaintext": "{\"name\":\"sdk, new last\"}", "masterKeys": [MK, NEW]}),
        // SDK reads our item with either list order.
        json!({"op": "decryptFolderMetadata", "ciphertext": our_item, "masterKeys": [MK, NEW]}),
        json!({"op": "decryptFolderMetadata", "ciphertext": our_item, "masterKeys": [NEW, MK]}),
        // SDK reads our posted list with the derived key.
        json!({"op": "decryptMetadata", "ciphertext": our_list, "key": NEW}),
        // Without the current key the SDK cannot read our item.
        json!({"op": "decryptFolderMetadata", "ciphertext": our_item, "masterKeys": [MK]}),
    ]);
    let sdk_old = ok_str(&results[0], "ciphertext");
    assert!(
        decrypt_metadata(sdk_old, NEW).is_err(),
        "the SDK really used the old key"
    );
    assert_eq!(
        ours.decrypt_metadata(sdk_old).unwrap(),
        "{\"name\":\"written by sdk\"}"
    );
    assert_eq!(
        ours.decrypt_metadata(ok_str(&results[1], "ciphertext"))
            .unwrap(),
        "{\"name\":\"sdk, new last\"}"
    );
    assert_eq!(ok_str(&results[2], "name"), "written by veilfs");
    assert_eq!(ok_str(&results[3], "name"), "written by veilfs");
    assert_eq!(ok_str(&results[4], "plaintext"), format!("{NEW}|{MK}"));
    assert_eq!(ok_str(&results[5], "name"), "");
}

#[test]
fn interop_chunks_both_directions() {
    let sizes = [0usize, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE];
    let keys = [
        FileKey::parse(FILE_KEY_V2, DataVersion::V2).unwrap(),
        FileKey::generate(DataVersion::V3),
    ];
    let plain_of = |size: usize, salt: usize| -> Vec<u8> {
        (0..size).map(|i| ((i * 31 + salt) % 256) as u8).collect()
    };
    let mut ops = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let version = key.version().number();
        for &size in &sizes {
            let plain = plain_of(size, k);
            // SDK encrypts → we decrypt.
            ops.push(json!({"op": "encryptData", "data": b64(&plain), "key": key.as_str(), "version": version}));
            // We encrypt → SDK decrypts.
            let mut enc = Vec::new();
            key.encrypt_chunk_into(&plain, &mut enc).unwrap();
            ops.push(json!({"op": "decryptData", "data": b64(&enc), "key": key.as_str(), "version": version}));
        }
    }
    // A chunk of ours with one flipped bit is refused by the SDK as well.
    let mut bad = keys[0].encrypt_chunk(b"tamper me").unwrap();
    bad[15] ^= 4;
    ops.push(json!({"op": "decryptData", "data": b64(&bad), "key": FILE_KEY_V2, "version": 2}));

    let results = sdk(ops);
    let mut i = 0;
    for (k, key) in keys.iter().enumerate() {
        for &size in &sizes {
            let plain = plain_of(size, k);
            let sdk_enc = unb64(ok_str(&results[i], "data"));
            assert_eq!(sdk_enc.len(), size + CHUNK_OVERHEAD);
            if key.version() == DataVersion::V2 {
                assert!(
                    sdk_enc[..12]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                );
            }
            assert_eq!(key.decrypt_chunk(&sdk_enc).unwrap(), plain, "size {size}");
            let mut in_place = sdk_enc.clone();
            key.decrypt_chunk_in_place(&mut in_place).unwrap();
            assert_eq!(in_place, plain);
            if size > 0 {
                assert_eq!(
                    key.decrypt_file_chunk(&sdk_enc, size as u64, 0).unwrap(),
                    plain
                );
            }
            assert_eq!(unb64(ok_str(&results[i + 1], "data")), plain, "size {size}");
            i += 2;
        }
    }
    assert!(results[i]["error"].as_str().is_some(), "{}", results[i]);
}

#[test]
fn interop_password_derivation() {
    let salt_v2 = random_hex(128);
    let salt_v2_change = random_hex(256);
    let salt_v3 = random_hex(256);
    let cases: Vec<(u8, &str, &str)> = vec![
        (1, "correct horse battery staple", ""),
        (1, "pässwörd 日本語 🔑", ""),
        (2, "hunter2", &salt_v2),
        (2, "pässwörd 日本語 🔑", &salt_v2_change),
        (2, "", "A-non-hex_salt"),
        (3, "Grüße 🔐 secret", &salt_v3),
    ];
    let ops = cases
        .iter()
        .map(
            |(v, pw, salt)| json!({"op": "derive", "authVersion": v, "password": pw, "salt": salt}),
        )
        .collect();
    let results = sdk(ops);
    for ((version, pw, salt), r) in cases.iter().zip(&results) {
        let d = derive_credentials(
            AuthVersion::from_number(u64::from(*version)).unwrap(),
            pw,
            salt,
        )
        .unwrap();
        assert_eq!(
            d.master_key.as_str(),
            ok_str(r, "masterKey"),
            "v{version} {pw}"
        );
        assert_eq!(
            d.login_password.as_str(),
            ok_str(r, "loginPassword"),
            "v{version} {pw}"
        );
    }
}

#[test]
fn interop_name_hashes() {
    let pk = v("/rsa/privateKeyPkcs8DerB64");
    let names = [
        "Hello World.txt",
        "ÄÖÜ ß Straße.PDF",
        "日本語.txt",
        "MiXeD CaSe",
        "emoji 🗂📁 name",
        "  padded  ",
        "a",
        "a-name-that-is-rather-long-for-a-file-name-indeed.tar.gz",
    ];
    let mut ops = vec![json!({"op": "hmacKey", "privateKey": pk})];
    for name in names {
        ops.push(json!({"op": "nameHash", "name": name, "authVersion": 2}));
        ops.push(json!({"op": "nameHash", "name": name, "authVersion": 3, "privateKey": pk}));
        ops.push(json!({"op": "searchHashes", "name": name, "privateKey": pk}));
    }
    let results = sdk(ops);
    let key = NameHmacKey::from_private_key_b64(pk).unwrap();
    assert_eq!(hex::encode(key.as_bytes()), ok_str(&results[0], "key"));
    for (name, r) in names.iter().zip(results[1..].chunks(3)) {
        assert_eq!(name_hash_v1v2(name), ok_str(&r[0], "hash"), "{name}");
        assert_eq!(key.name_hash(name), ok_str(&r[1], "hash"), "{name}");
        let mut sdk_set: Vec<String> = r[2]["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_owned())
            .collect();
        let mut ours = key.search_hashes(name);
        assert_eq!(ours.len(), sdk_set.len(), "{name}");
        sdk_set.sort();
        ours.sort();
        assert_eq!(ours, sdk_set, "{name}");
    }
}
