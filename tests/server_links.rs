//! Public links: a file link and a folder link made by `veilfs serve` (through the real
//! megajs's `link()`, i.e. `l` and `s2`) open in a logged-out megajs with `File.fromURL`, and
//! every file downloads byte-exact with megajs's MAC check; removing a link closes it. Plus
//! the raw commands' refusals.

mod common;

use serde_json::{Value, json};
use std::time::Duration;
use veilfs::server::{self, ServerConfig};

fn test_buffer(size: usize, start: usize, step: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((start + i * step) % 255) as u8)
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

async fn cs(url: &str, query: &str, cmd: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}cs?id=1{query}"))
        .json(&json!([cmd]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    match answer {
        Value::Array(mut a) => a.remove(0),
        bare => bare,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megajs_opens_file_and_folder_links_made_by_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.wait_timeout = Duration::from_secs(10);
    let server = server::start(config).await.unwrap();
    let (email, password) = ("links@example.org", "link pässword");
    veilfs::mega::signup::create_account(&server.url(), email, password, "Links")
        .await
        .unwrap();
    // Sizes around MAC chunk boundaries, away from megajs's quirk sizes.
    let files = [
        (1usize, "eins.txt"),
        (131_073, "über 128K"),
        (1_310_721, "große Datei 1280K+1"),
    ];
    let single = (393_217usize, "single ✓.bin");
    let input = json!({
        "gateway": server.url(),
        "email": email,
        "password": password,
        "folder": "Öffentlich 📂",
        "files": files.iter().enumerate().map(|(i, (size, name))| {
            json!({"name": name, "size": size, "start": i + 2, "step": i + 5})
        }).collect::<Vec<_>>(),
        "single": {"name": single.1, "size": single.0, "start": 9, "step": 4},
    });
    let out = tokio::task::spawn_blocking(move || common::run_node("megajs_links.js", &[], &input))
        .await
        .unwrap();

    let file_link = out["fileLink"].as_str().unwrap();
    let (ph, key) = file_link
        .strip_prefix("https://mega.nz/file/")
        .and_then(|rest| rest.split_once('#'))
        .unwrap_or_else(|| panic!("file link {file_link}"));
    assert_eq!(ph.len(), 8);
    assert_eq!(key.len(), 43, "32-byte file key");
    assert_eq!(out["fileLinkAgain"], out["fileLink"], "same handle twice");
    let folder_link = out["folderLink"].as_str().unwrap();
    let (fph, fkey) = folder_link
        .strip_prefix("https://mega.nz/folder/")
        .and_then(|rest| rest.split_once('#'))
        .unwrap_or_else(|| panic!("folder link {folder_link}"));
    assert_eq!(fph.len(), 8);
    assert_eq!(fkey.len(), 22, "16-byte share key");

    assert_eq!(out["file"]["name"], single.1);
    assert_eq!(out["file"]["size"], single.0);
    assert_eq!(
        out["file"]["sha256"],
        sha256_hex(&test_buffer(single.0, 9, 4))
    );
    assert_eq!(out["folder"]["name"], "Öffentlich 📂");
    let children = out["folder"]["children"].as_array().unwrap();
    assert_eq!(children.len(), files.len(), "{children:?}");
    let mut expected: Vec<(usize, usize, &str)> = files
        .iter()
        .enumerate()
        .map(|(i, (size, name))| (i, *size, *name))
        .collect();
    expected.sort_by(|a, b| a.2.cmp(b.2));
    for (child, (i, size, name)) in children.iter().zip(expected) {
        assert_eq!(child["name"], name);
        assert_eq!(child["size"], size);
        assert_eq!(
            child["sha256"],
            sha256_hex(&test_buffer(size, i + 2, i + 5)),
            "{name}"
        );
    }
    assert_eq!(out["ownerSeesLink"], true);
    assert!(
        out["afterUnshare"].as_str().unwrap().contains("ENOENT"),
        "{}",
        out["afterUnshare"]
    );

    // The folder link still works without a session; its handle is not a file link and vice
    // versa; unknown and malformed handles are refused with MEGA codes.
    let url = server.url();
    let listing = cs(
        &url,
        &format!("&n={fph}"),
        json!({"a": "f", "c": 1, "r": 1}),
    )
    .await;
    let nodes = listing["f"].as_array().unwrap();
    assert_eq!(nodes.len(), files.len() + 1);
    assert!(nodes.iter().all(|n| {
        n["k"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", nodes[0]["h"].as_str().unwrap()))
    }));
    assert_eq!(cs(&url, "", json!({"a": "g", "p": fph})).await, json!(-9));
    assert_eq!(
        cs(&url, "", json!({"a": "g", "p": ph})).await,
        json!(-9),
        "removed"
    );
    assert_eq!(
        cs(&url, "", json!({"a": "g", "p": "AAAAAAAA"})).await,
        json!(-9)
    );
    assert_eq!(
        cs(&url, "", json!({"a": "g", "p": "../x"})).await,
        json!(-2)
    );
    assert_eq!(
        cs(&url, "&n=AAAAAAAA", json!({"a": "f", "c": 1})).await,
        json!(-9)
    );
    // Without a session nothing can be exported.
    assert_eq!(
        cs(&url, "", json!({"a": "l", "n": "AAAAAAAA"})).await,
        json!(-15)
    );
    server.shutdown().await.unwrap();
}
