//! The built `veilfs` binary: `serve` prints its address and stops cleanly on SIGTERM,
//! `signup` creates accounts from a password file or `VEILFS_PASSWORD`, and those accounts log
//! in after a restart of the server process.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Starts `veilfs serve` on a free port and returns the child and the URL it printed.
fn serve(data: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("veilfs serve: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );
    (child, url)
}

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
