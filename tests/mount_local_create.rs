//! Files created through the mount exist locally until their first upload (`src/vfs/local.rs`):
//! what a second client sees once they are uploaded, and what a crash leaves.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::mount::{MountFixture, pattern};
use veilfs::mega::nodes::DecryptedNode;

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nsec as u32);
    f.set_modified(t).unwrap();
}

/// The account's nodes as another client lists them: path → node.
fn listing(f: &MountFixture) -> BTreeMap<String, DecryptedNode> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nodes = rt.block_on(async {
        let other = f.other_client().await;
        other.fetch_tree().await.unwrap().0
    });
    let by_handle: BTreeMap<String, DecryptedNode> = nodes
        .iter()
        .map(|n| (n.wire.h.clone(), n.clone()))
        .collect();
    let path_of = |n: &DecryptedNode| {
        let mut parts = vec![n.name().unwrap_or("?").to_string()];
        let mut p = n.wire.p.clone();
        while let Some(parent) = by_handle.get(&p) {
            if parent.wire.t != 1 {
                break; // the root
            }
            parts.push(parent.name().unwrap_or("?").to_string());
            p = parent.wire.p.clone();
        }
        parts.reverse();
        parts.join("/")
    };
    nodes
        .iter()
        .filter(|n| n.wire.t == 0 || n.wire.t == 1)
        .map(|n| (path_of(n), n.clone()))
        .collect()
}

#[test]
fn new_files_reach_the_server_with_their_final_name_mode_and_time() {
    let mut f = MountFixture::new();
    fs::create_dir(f.path("d")).unwrap();
    fs::create_dir(f.path("e")).unwrap();
    // Created and closed without a write: still a file on the server.
    fs::File::create(f.path("d/empty")).unwrap();
    // What rsync does: a temporary name, then mode, times and the final name.
    let data = pattern(3000, 4);
    fs::write(f.path("d/.final.txt.Xy12"), &data).unwrap();
    fs::set_permissions(
        f.path("d/.final.txt.Xy12"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    set_mtime(&f.path("d/.final.txt.Xy12"), 1_000_000_123, 456_789_012);
    fs::rename(f.path("d/.final.txt.Xy12"), f.path("d/final.txt")).unwrap();
    // Moved to another folder, and one created then deleted before any upload.
    fs::write(f.path("d/moving"), b"moves").unwrap();
    fs::rename(f.path("d/moving"), f.path("e/moved")).unwrap();
    fs::write(f.path("d/gone"), b"never uploaded").unwrap();
    fs::remove_file(f.path("d/gone")).unwrap();
    // Written again while the first version may be uploading.
    fs::write(f.path("d/twice"), b"first").unwrap();
    fs::write(f.path("d/twice"), b"second version").unwrap();
    f.unmount(); // waits for every upload

    let nodes = listing(&f);
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["d", "d/empty", "d/final.txt", "d/twice", "e", "e/moved"],
        "the server holds each file once, under its final name"
    );
    let fin = &nodes["d/final.txt"];
    assert_eq!(fin.wire.s, Some(3000));
    assert_eq!(fin.attributes["vm"], serde_json::json!(0o640));
    assert_eq!(
        fin.attributes["vt"],
        serde_json::json!("1000000123456789012")
    );
    assert_eq!(nodes["d/empty"].wire.s, Some(0));
    assert_eq!(nodes["d/twice"].wire.s, Some(14));

    // Read back cold, from the server.
    fs::remove_dir_all(f.cache_dir().join("blocks")).ok();
    f.mount();
    assert_eq!(fs::read(f.path("d/final.txt")).unwrap(), data);
    let m = fs::metadata(f.path("d/final.txt")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_123, 456_789_012));
    assert_eq!(fs::read(f.path("e/moved")).unwrap(), b"moves");
    assert_eq!(fs::read(f.path("d/twice")).unwrap(), b"second version");
    assert_eq!(fs::read(f.path("d/empty")).unwrap(), b"");
    assert!(!f.path("d/gone").exists());
}

#[test]
fn a_sigkill_keeps_closed_new_files_under_their_last_name_and_drops_unclosed_ones() {
    let mut f = MountFixture::new();
    let data = pattern(70_000, 9);
    fs::write(f.path("save.tmp"), &data).unwrap();
    // What rsync does after the close: mode, times, then the final name. The journal keeps
    // each change without syncing it, and a SIGKILL right after loses none of them.
    fs::set_permissions(f.path("save.tmp"), fs::Permissions::from_mode(0o604)).unwrap();
    set_mtime(&f.path("save.tmp"), 1_100_000_000, 123_456_789);
    fs::rename(f.path("save.tmp"), f.path("document.txt")).unwrap();
    // Created, written, never closed when the daemon dies: unacknowledged.
    let mut open = fs::File::create(f.path("half-written")).unwrap();
    open.write_all(b"not closed").unwrap();
    f.kill();
    drop(open);
    f.mount();
    assert_eq!(fs::read(f.path("document.txt")).unwrap(), data);
    let meta = fs::metadata(f.path("document.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o604);
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_100_000_000, 123_456_789)
    );
    assert!(!f.path("save.tmp").exists());
    assert!(
        !f.path("half-written").exists(),
        "a file never closed must not linger as an empty ghost"
    );
    f.unmount();

    let nodes = listing(&f);
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(names, ["document.txt"]);
    assert_eq!(
        nodes["document.txt"].attributes["vm"],
        serde_json::json!(0o604)
    );
    fs::remove_dir_all(f.cache_dir().join("blocks")).ok();
    f.mount();
    assert_eq!(fs::read(f.path("document.txt")).unwrap(), data);
}
