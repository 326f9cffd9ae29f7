//! The built `veilfs` binary: `serve` prints its address and stops cleanly on SIGTERM,
//! `signup` creates accounts from a password file or `VEILFS_PASSWORD`, and those accounts log
//! in after a restart of the server process, and a SIGKILL in the middle of an upload loses
//! nothing acknowledged and leaves nothing half-written visible.

mod common;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use veilfs::crypto::mega::{b64_decode, b64_encode, derive_v2};

const BIN: &str = env!("CARGO_BIN_EXE_veilfs");

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "veilfs-server-cli-{}",
        hex::encode(veilfs::crypto::random_array::<6>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

use common::mount::serve;

/// Sends SIGTERM to the server we started and waits for a clean exit.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signup(
    url: &str,
    email: &str,
    password_file: Option<&Path>,
    env: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["signup", "--server", url, "--email", email]);
    if let Some(file) = password_file {
        cmd.arg("--password-file").arg(file);
    }
    cmd.env_remove("VEILFS_PASSWORD");
    if let Some(password) = env {
        cmd.env("VEILFS_PASSWORD", password);
    }
    cmd.output().unwrap()
}

async fn cmd(url: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}cs?id=1"))
        .json(&json!([body]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()[0].clone()
}

/// A v2 login; returns the `us` answer.
async fn login(url: &str, email: &str, password: &str) -> Value {
    let pre = cmd(url, json!({"a": "us0", "user": email})).await;
    let salt = b64_decode(pre["s"].as_str().unwrap()).unwrap();
    let keys = derive_v2(password.as_bytes(), &salt);
    cmd(
        url,
        json!({"a": "us", "user": email, "uh": b64_encode(&keys.auth_key)}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_signup_binaries() {
    let dir = temp_dir();
    let data = dir.join("data");
    let (server, url) = serve(&data);

    // Password from a file: its first line, without the newline.
    let file = dir.join("password");
    std::fs::write(&file, "file pässword\nignored second line\n").unwrap();
    let out = signup(&url, "File@Example.org", Some(&file), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created account file@example.org"));
    // From the environment.
    let out = signup(&url, "env@example.org", None, Some("env password"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No password at all, or an address already taken: a failure with a reason.
    let out = signup(&url, "none@example.org", None, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VEILFS_PASSWORD"));
    let out = signup(&url, "env@example.org", None, Some("again"));
    assert!(!out.status.success());

    let answer = login(&url, "file@example.org", "file pässword").await;
    assert!(answer["csid"].is_string(), "{answer}");
    stop(server);

    // A new process on the same data directory knows both accounts.
    let (server, url) = serve(&data);
    assert!(login(&url, "file@example.org", "file pässword").await["csid"].is_string());
    assert!(login(&url, "env@example.org", "env password").await["csid"].is_string());
    assert_eq!(login(&url, "env@example.org", "wrong").await, json!(-9));
    stop(server);
    let _ = std::fs::remove_dir_all(dir);
}

fn credentials(email: &str, password: &str) -> veilfs::mega::session::Credentials {
    veilfs::mega::session::Credentials {
        email: email.to_string(),
        password: zeroize::Zeroizing::new(password.to_string()),
        mfa_code: None,
    }
}

async fn client(url: &str, email: &str, password: &str) -> veilfs::mega::MegaClient {
    veilfs::mega::MegaClient::login(
        url,
        &credentials(email, password),
        veilfs::retry::RetryPolicy::quick(),
        veilfs::mega::transfer::TransferOptions::default(),
    )
    .await
    .unwrap()
}

/// Uploads `data` as `name` under the root and returns the node.
async fn upload(
    client: &veilfs::mega::MegaClient,
    dir: &Path,
    name: &str,
    data: &[u8],
) -> veilfs::mega::nodes::DecryptedNode {
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    let mut attrs = serde_json::Map::new();
    attrs.insert("n".into(), json!(name));
    client
        .upload(&root, &path, &attrs, None, |_| {})
        .await
        .unwrap()
}

async fn download(
    client: &veilfs::mega::MegaClient,
    node: &veilfs::mega::nodes::DecryptedNode,
) -> Vec<u8> {
    let info = client.download_info(&node.wire.h).await.unwrap();
    let Some(veilfs::mega::nodes::NodeKey::File { key, meta_mac }) = &node.key else {
        panic!("not a file node");
    };
    let mut data = client
        .fetch_range(&info.url, 0..info.size)
        .await
        .unwrap()
        .to_vec();
    veilfs::crypto::mega::decrypt_file(key, &mut data, meta_mac).expect("MAC verifies");
    data
}

fn dir_size(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                let (f, b) = dir_size(&entry.path());
                files += f;
                bytes += b;
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

/// SIGKILL in the middle of a large upload, with a chunk body half sent: after a restart on the
/// same data directory the account and its file are intact, the cut upload is neither a file
/// nor counted in the quota nor left on disk, and a new upload works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_loses_nothing_acknowledged() {
    let dir = temp_dir();
    let data = dir.join("data");
    let (mut server, url) = serve(&data);
    let (email, password) = ("kill@example.org", "kill -9 pässword");
    veilfs::mega::signup::create_account(&url, email, password, "kill")
        .await
        .unwrap();
    let c = client(&url, email, password).await;
    let kept: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let kept_node = upload(&c, &dir, "kept.bin", &kept).await;

    // A 48 MiB upload: 8 MiB acknowledged, then a 16 MiB chunk whose body stops half way.
    let total = 48u64 << 20;
    let answer = c
        .api()
        .call(json!({"a": "u", "s": total, "v": 2}))
        .await
        .unwrap();
    let upload_url = answer["p"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let first = http
        .post(format!("{upload_url}/0"))
        .body(vec![0x11u8; 8 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.bytes().await.unwrap().is_empty(), "not complete");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let second = tokio::spawn({
        let http = http.clone();
        let url = format!("{upload_url}/{}", 8u64 << 20);
        async move {
            http.post(url)
                .header("content-length", (16u64 << 20).to_string())
                .body(body)
                .send()
                .await
        }
    });
    tx.send(Ok(vec![0x22u8; 8 << 20])).await.unwrap();
    // Let the server read into the half-sent body, then kill it without warning.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child_alive(&mut server));
    Command::new("kill")
        .args(["-KILL", &server.id().to_string()])
        .status()
        .unwrap();
    let status = server.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status}");
    drop(tx);
    assert!(
        second.await.unwrap().is_err(),
        "the cut chunk was not acknowledged"
    );
    let (tmp_files, tmp_bytes) = dir_size(&data.join("blobs/tmp"));
    assert!(
        tmp_files >= 1 && tmp_bytes >= 8 << 20,
        "the kill left the half upload behind ({tmp_files} files, {tmp_bytes} bytes), as a crash would"
    );

    let (server, url) = serve(&data);
    let c = client(&url, email, password).await;
    let (nodes, _) = c.fetch_tree().await.unwrap();
    let files: Vec<_> = nodes.iter().filter(|n| n.wire.t == 0).collect();
    assert_eq!(files.len(), 1, "only the completed file");
    assert_eq!(files[0].wire.h, kept_node.wire.h);
    assert_eq!(files[0].name(), Some("kept.bin"));
    assert!(download(&c, files[0]).await == kept);
    assert_eq!(c.quota().await.unwrap().used, kept.len() as u64);
    assert_eq!(
        dir_size(&data.join("blobs/tmp")),
        (0, 0),
        "the restart removed the half upload"
    );
    // The old upload URL is dead; a new upload works.
    let stale = http
        .post(format!(
            "{url}ul/{}/{}",
            upload_url.rsplit('/').next().unwrap(),
            16u64 << 20
        ))
        .body(vec![0u8; 16])
        .send()
        .await
        .unwrap();
    assert_eq!(stale.text().await.unwrap(), "-8");
    let fresh: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    let node = upload(&c, &dir, "fresh.bin", &fresh).await;
    assert!(download(&c, &node).await == fresh);
    assert_eq!(
        c.quota().await.unwrap().used,
        (kept.len() + fresh.len()) as u64
    );
    stop(server);
    let _ = std::fs::remove_dir_all(dir);
}

fn child_alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// A receiver as a stream, for a request body sent piece by piece.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
