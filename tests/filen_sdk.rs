//! The real @filen/sdk 0.3.12 against `veilfs serve`'s Filen side: register, log in, create
//! folders, upload sizes around the 1 MiB chunk boundary with non-ASCII names, list, download
//! byte-exact, rename, move, trash. Afterwards the data directory is searched for plaintext.

mod common;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use veilfs::server::{self, ServerConfig};

const MIB: u64 = 1024 * 1024;
const SIZES: [u64; 6] = [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 3];

/// The content the script writes: byte i = (i·7 + seed) mod 251.
fn content(size: u64, seed: u64) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn run(port: u16, register: bool, ops: Vec<Value>) -> Vec<Value> {
    let out = common::run_node(
        "filen_sdk.js",
        &[],
        &json!({
            "port": port, "email": "sdk@example.org", "password": "sdk pässword 1",
            "register": register, "ops": ops,
        }),
    );
    let results = out["results"].as_array().unwrap().clone();
    for r in &results {
        assert!(r.get("error").is_none(), "an SDK call failed: {r}");
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filen_sdk_uses_our_server_end_to_end() {
    let dir = std::env::temp_dir().join(format!(
        "veilfs-server-filen-{}",
        hex::encode(veilfs::crypto::random_array::<6>())
    ));
    let server = server::start(ServerConfig::new(
        dir.clone(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let port = server.addr().port();
    let folder = "/Ünïcødé 文件夹";
    let name = |size: u64| format!("ファイル-{size}-é.bin");
    let mut ops = vec![
        json!({"op": "mkdir", "path": folder}),
        json!({"op": "mkdir", "path": format!("{folder}/sub")}),
        json!({"op": "mkdir", "path": "/Moved"}),
    ];
    for (seed, size) in SIZES.iter().enumerate() {
        ops.push(
            json!({"op": "write", "path": format!("{folder}/{}", name(*size)),
            "size": size, "seed": seed}),
        );
    }
    let (port_, ops_) = (port, ops);
    let written = tokio::task::spawn_blocking(move || run(port_, true, ops_))
        .await
        .unwrap();
    for (seed, size) in SIZES.iter().enumerate() {
        let expected = hex::encode(Sha256::digest(content(*size, seed as u64)));
        assert_eq!(written[3 + seed]["sha256"], json!(expected));
    }

    // A second SDK session (a fresh login) sees and reads everything.
    let mut ops = vec![json!({"op": "readdir", "path": folder})];
    for size in SIZES {
        ops.push(json!({"op": "read", "path": format!("{folder}/{}", name(size))}));
        ops.push(json!({"op": "stat", "path": format!("{folder}/{}", name(size))}));
    }
    ops.extend([
        json!({"op": "rename", "from": format!("{folder}/{}", name(1)),
            "to": format!("{folder}/umbenannt-ß.bin")}),
        json!({"op": "rename", "from": format!("{folder}/umbenannt-ß.bin"),
            "to": "/Moved/umbenannt-ß.bin"}),
        json!({"op": "rename", "from": format!("{folder}/sub"), "to": "/Moved/sub-ü"}),
        json!({"op": "read", "path": "/Moved/umbenannt-ß.bin"}),
        json!({"op": "unlink", "path": format!("{folder}/{}", name(MIB))}),
        json!({"op": "readdir", "path": folder}),
        json!({"op": "readdir", "path": "/Moved"}),
        json!({"op": "trash"}),
        json!({"op": "statfs"}),
    ]);
    let r = tokio::task::spawn_blocking(move || run(port, false, ops))
        .await
        .unwrap();
    let mut listed: Vec<String> = SIZES.iter().map(|s| name(*s)).collect();
    listed.push("sub".into());
    listed.sort();
    assert_eq!(r[0]["names"], json!(listed));
    for (i, size) in SIZES.iter().enumerate() {
        let expected = hex::encode(Sha256::digest(content(*size, i as u64)));
        assert_eq!(r[1 + 2 * i]["size"], json!(size), "read size of {size}");
        assert_eq!(r[1 + 2 * i]["sha256"], json!(expected), "content of {size}");
        assert_eq!(r[2 + 2 * i]["size"], json!(size), "stat of {size}");
    }
    let at = 1 + 2 * SIZES.len();
    let moved = hex::encode(Sha256::digest(content(1, 1)));
    assert_eq!(r[at + 3]["sha256"], json!(moved));
    let mut left: Vec<String> = [0, MIB - 1, MIB + 1, 5 * MIB + 3]
        .iter()
        .map(|s| name(*s))
        .collect();
    left.sort();
    assert_eq!(r[at + 5]["names"], json!(left));
    assert_eq!(r[at + 6]["names"], json!(["sub-ü", "umbenannt-ß.bin"]));
    assert_eq!(r[at + 7]["names"], json!([name(MIB)]));
    let used = r[at + 8]["used"].as_u64().unwrap();
    let stored: u64 = SIZES.iter().map(|s| s + s.div_ceil(MIB) * 28).sum();
    assert_eq!(used, stored, "storage used counts every stored chunk byte");

    // Zero knowledge: no name, content sample or password on the server's disk.
    server.shutdown().await.unwrap();
    let mut needles: Vec<Vec<u8>> = vec![
        "sdk pässword 1".into(),
        "Ünïcødé".into(),
        "umbenannt".into(),
        "ファイル".into(),
    ];
    needles.push(content(64, 4)[..].to_vec());
    for path in all_files(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
