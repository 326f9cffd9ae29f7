//! Shared helpers for integration tests: running the real npm clients in node.
#![allow(dead_code)]

use std::io::Write;

pub mod mount;
pub mod shell;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `tests/interop/`, where the Node scripts and their pinned `node_modules` live.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs `node tests/interop/<script> <args…>` with `input` as JSON on stdin and parses the JSON it
/// prints on stdout. Panics with the script's stderr when it fails: an interop test must never
/// pass because the real client could not run.
pub fn run_node(script: &str, args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "tests/interop/node_modules is missing: run scripts/test.sh (or `npm ci` in tests/interop)"
    );
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed to run the interop tests");
    let body = serde_json::to_vec(input).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Write on a thread so a script that prints a lot before reading cannot deadlock us.
    let writer = std::thread::spawn(move || {
        stdin.write_all(&body).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node {script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
