//! The mount and the real megajs 1.3.10 on one account: what megajs uploads reads byte-exact
//! through the mount, what the mount writes megajs downloads with its MAC check passing, and a
//! file replaced through the mount is one node in megajs's listing.

mod common;

use std::fs;
use std::io::Write;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use veilfs::crypto::mega::is_megajs_quirk_size;

use common::mount::{MountFixture, PASSWORD};
use common::run_node;

/// Sizes around the first chunk boundary (128 KiB) and beyond; 0, 131071 and 131072 are among
/// the sizes megajs's MAC quirk affects.
const SIZES: [u64; 8] = [
    0,
    1,
    16,
    131_071,
    131_072,
    131_073,
    1_048_577,
    5 * 1024 * 1024 + 3,
];

/// megajs's test rule, as in the script: byte i = (start + i·step) mod 255.
fn test_buffer(size: u64, start: u64, step: u64) -> Vec<u8> {
    (0..size)
        .map(|i| ((start + i * step) % 255) as u8)
        .collect()
}

fn megajs(f: &MountFixture, action: &str, folder: &str, files: Value) -> Value {
    run_node(
        "megajs_mount.js",
        &[action],
        &json!({
            "gateway": f.url,
            "email": f.email,
            "password": PASSWORD,
            "folder": folder,
            "files": files,
        }),
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn files_megajs_uploads_read_byte_exact_through_the_mount() {
    let mut f = MountFixture::new();
    let folder = "von megajs — ✓";
    let files: Vec<(String, u64, u64, u64)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = if i == 3 {
                "日本語 ünïcödé €.bin".to_string()
            } else {
                format!("größe {size}")
            };
            (name, size, i as u64 * 5 + 1, i as u64 + 2)
        })
        .collect();
    let input: Vec<Value> = files
        .iter()
        .map(|(name, size, start, step)| {
            json!({"name": name, "size": size, "start": start, "step": step})
        })
        .collect();
    let out = megajs(&f, "upload", folder, json!(input));
    assert_eq!(out["uploaded"].as_array().unwrap().len(), files.len());

    // A remount loads the changes without depending on how soon the poller sees them.
    f.remount();
    let dir = f.path(folder);
    let mut want_names: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    want_names.sort();
    assert_eq!(names_in(&dir), want_names);
    for (name, size, start, step) in &files {
        let want = test_buffer(*size, *start, *step);
        assert_eq!(fs::metadata(dir.join(name)).unwrap().len(), *size, "{name}");
        let got = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"));
        assert!(
            got == want,
            "{name} ({size} bytes) differs through the mount"
        );
    }
}

#[test]
fn files_the_mount_writes_pass_megajs_mac_check() {
    let mut f = MountFixture::new();
    let folder = "vom mount";
    fs::create_dir(f.path(folder)).unwrap();
    let mut expected = serde_json::Map::new();
    for (i, &size) in SIZES.iter().enumerate() {
        if is_megajs_quirk_size(size) {
            continue;
        }
        let name = format!("datei ñ {size}");
        let data = test_buffer(size, i as u64 * 3 + 2, i as u64 + 5);
        // Written in pieces, as programs do, not in one request.
        let mut h = fs::File::create(f.path(folder).join(&name)).unwrap();
        for piece in data.chunks(100_000) {
            h.write_all(piece).unwrap();
        }
        drop(h);
        expected.insert(name, json!({"size": size, "sha256": sha256_hex(&data)}));
    }
    assert!(expected.len() >= 4);
    f.unmount(); // waits for the uploads
    let out = megajs(&f, "download", folder, json!([]));
    assert_eq!(out["files"], Value::Object(expected));
}

#[test]
fn a_file_replaced_through_the_mount_is_one_node_for_megajs() {
    let mut f = MountFixture::new();
    let folder = "replaced";
    let dir = f.path(folder);
    fs::create_dir(&dir).unwrap();

    // Atomic save: a temporary file renamed over the original.
    fs::write(dir.join("doc.txt"), b"first version").unwrap();
    fs::write(
        dir.join(".doc.txt.tmp"),
        b"second version, saved atomically",
    )
    .unwrap();
    fs::rename(dir.join(".doc.txt.tmp"), dir.join("doc.txt")).unwrap();
    // Overwrites in place, several while earlier uploads may still be queued: O_TRUNC, then
    // ftruncate + write.
    fs::write(dir.join("plain.txt"), b"one").unwrap();
    fs::write(dir.join("plain.txt"), b"two, longer").unwrap();
    {
        let mut h = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("plain.txt"))
            .unwrap();
        h.set_len(0).unwrap();
        h.write_all(b"three").unwrap();
    }
    // A bigger file, replaced by a smaller one.
    fs::write(dir.join("big.bin"), test_buffer(700_000, 1, 3)).unwrap();
    fs::write(dir.join("big.bin"), test_buffer(140_000, 2, 7)).unwrap();
    f.unmount();

    let out = megajs(&f, "list", folder, json!([]));
    assert_eq!(out["names"], json!(["big.bin", "doc.txt", "plain.txt"]));
    let out = megajs(&f, "download", folder, json!([]));
    let want = |data: &[u8]| json!({"size": data.len(), "sha256": sha256_hex(data)});
    assert_eq!(
        out["files"],
        json!({
            "big.bin": want(&test_buffer(140_000, 2, 7)),
            "doc.txt": want(b"second version, saved atomically"),
            "plain.txt": want(b"three"),
        })
    );
    f.mount();
    assert_eq!(
        fs::read(dir.join("doc.txt")).unwrap(),
        b"second version, saved atomically"
    );
    assert_eq!(fs::read(dir.join("plain.txt")).unwrap(), b"three");
    assert_eq!(names_in(&dir), ["big.bin", "doc.txt", "plain.txt"]);
}
