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
    let mut listed = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.wire.t == 0 || n.wire.t == 1) {
        let path = path_of(n);
        assert!(
            listed.insert(path.clone(), n.clone()).is_none(),
            "{path} is on the server twice"
        );
    }
    listed
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

/// Runs `f` on another thread and fails if it takes more than `secs`: what a local-only
/// operation must do while the server does not answer.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} waited for the server"))
}

#[test]
fn folders_made_here_answer_without_the_server_and_reach_it_nested_with_their_files() {
    let mut f = MountFixture::new();
    fs::create_dir(f.path("top")).unwrap();
    f.unmount();
    f.mount();
    // The server stops answering: making folders, files in them, and their modes and times
    // are all answered here.
    f.pause_server(true);
    let root = f.path("");
    let data = pattern(5000, 3);
    let expected = data.clone();
    within(30, "mkdir", move || {
        let p = |rel: &str| root.join(rel);
        fs::create_dir_all(p("top/a/b/c")).unwrap();
        fs::create_dir(p("empty")).unwrap();
        fs::create_dir(p("top/a/scratch")).unwrap();
        fs::write(p("top/a/b/c/deep.bin"), &data).unwrap();
        fs::write(p("top/a/one.txt"), b"one").unwrap();
        fs::write(p("top/a/scratch/tmp"), b"x").unwrap();
        fs::set_permissions(p("top/a/b"), fs::Permissions::from_mode(0o750)).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_200_000_000, 7);
        fs::File::open(p("top/a")).unwrap().set_modified(t).unwrap();
        assert!(fs::metadata(p("top/a/b/c")).unwrap().is_dir());
        assert_eq!(fs::read_dir(p("top/a")).unwrap().count(), 3);
    });
    f.pause_server(false);
    // Removed, whether or not it reached the server meanwhile.
    fs::remove_file(f.path("top/a/scratch/tmp")).unwrap();
    fs::remove_dir(f.path("top/a/scratch")).unwrap();
    fs::create_dir(f.path("top/a/brief")).unwrap();
    fs::remove_dir(f.path("top/a/brief")).unwrap();
    f.unmount(); // waits for the folders and the uploads

    let nodes = listing(&f);
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "empty",
            "top",
            "top/a",
            "top/a/b",
            "top/a/b/c",
            "top/a/b/c/deep.bin",
            "top/a/one.txt"
        ],
        "each folder once, nested, the removed one never"
    );
    assert_eq!(nodes["top/a/b"].wire.t, 1);
    assert_eq!(nodes["top/a/b"].attributes["vm"], serde_json::json!(0o750));
    assert_eq!(
        nodes["top/a"].attributes["vt"],
        serde_json::json!("1200000000000000007")
    );
    fs::remove_dir_all(f.cache_dir().join("blocks")).ok();
    f.mount();
    assert_eq!(fs::read(f.path("top/a/b/c/deep.bin")).unwrap(), expected);
    assert_eq!(
        fs::metadata(f.path("top/a/b")).unwrap().mode() & 0o7777,
        0o750
    );
}

#[test]
fn a_sigkill_keeps_folders_made_here_and_the_files_in_them_and_makes_each_once() {
    let mut f = MountFixture::new();
    f.pause_server(true);
    fs::create_dir_all(f.path("x/y")).unwrap();
    fs::write(f.path("x/y/kept.txt"), b"closed before the kill").unwrap();
    fs::create_dir(f.path("x/y/z")).unwrap();
    // Time for the daemon to send the first folder to the paused server: the server creates
    // it once resumed, after the daemon is gone, so the next mount must find it there.
    std::thread::sleep(std::time::Duration::from_millis(300));
    f.kill();
    f.pause_server(false);
    f.mount();
    assert_eq!(
        fs::read(f.path("x/y/kept.txt")).unwrap(),
        b"closed before the kill"
    );
    assert!(fs::metadata(f.path("x/y/z")).unwrap().is_dir());
    // Renamed while it may still be on its way to the server.
    fs::create_dir(f.path("x/late")).unwrap();
    fs::write(f.path("x/late/f"), b"late").unwrap();
    fs::rename(f.path("x/late"), f.path("x/renamed")).unwrap();
    f.unmount();

    let nodes = listing(&f);
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "x",
            "x/renamed",
            "x/renamed/f",
            "x/y",
            "x/y/kept.txt",
            "x/y/z"
        ]
    );
    f.mount();
    assert_eq!(fs::read(f.path("x/renamed/f")).unwrap(), b"late");
}

#[test]
fn a_folder_put_back_after_a_crash_is_matched_among_its_siblings_not_with_its_grandparent() {
    let mut f = MountFixture::new();
    fs::create_dir_all(f.path("x/y")).unwrap();
    f.unmount();
    f.mount();
    // Made while the server does not answer, so the next mount puts it back and looks for
    // it on the server. Its grandparent has the same name.
    f.pause_server(true);
    fs::create_dir(f.path("x/y/x")).unwrap();
    fs::write(f.path("x/y/x/inner.txt"), b"stays in x/y/x").unwrap();
    f.kill();
    f.pause_server(false);
    f.mount();
    f.unmount();

    let nodes = listing(&f);
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(names, ["x", "x/y", "x/y/x", "x/y/x/inner.txt"]);
    f.mount();
    assert_eq!(
        fs::read(f.path("x/y/x/inner.txt")).unwrap(),
        b"stays in x/y/x"
    );
}
