//! The first mount of a drive, with no local tree (`src/vfs/load.rs`): over a slow link the
//! mount is live once the root folder is listed, and every folder is shown complete or not at
//! all while the rest of the listing is still arriving; a listing cut off midway fails what
//! waits for it and is fetched again.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::mount::MountFixture;
use serde_json::json;
use veilfs::mega::{NewContent, NewNode};

const TOP: usize = 8;
const SUB: usize = 60;
const FILES: usize = 2;

/// A TCP proxy in front of the server whose answers trickle at `rate` bytes per second, as
/// over a slow link, and which can cut one connection after `cut_after` bytes of answers.
struct SlowLink {
    url: String,
    rate: Arc<AtomicU64>,
    /// Bytes of answers after which one connection is cut; 0: never.
    cut_after: Arc<AtomicU64>,
}

impl SlowLink {
    fn start(upstream: &str) -> SlowLink {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let rate = Arc::new(AtomicU64::new(0));
        let cut_after = Arc::new(AtomicU64::new(0));
        let (r, c) = (rate.clone(), cut_after.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(&upstream).unwrap();
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (rate, cut_after) = (r.clone(), c.clone());
                std::thread::spawn(move || answers(server, client, &rate, &cut_after));
            }
        });
        SlowLink {
            url,
            rate,
            cut_after,
        }
    }
}

/// Copies the server's answers to the client at the link's rate, cutting when told to.
fn answers(mut server: TcpStream, mut client: TcpStream, rate: &AtomicU64, cut_after: &AtomicU64) {
    let mut buf = [0u8; 1024];
    let mut sent = 0u64;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sent += n as u64;
        let cut = cut_after.load(Ordering::SeqCst);
        if cut > 0
            && sent > cut
            && cut_after
                .compare_exchange(cut, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            break;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(nanos) = (n as u64 * 1_000_000_000).checked_div(rate.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_nanos(nanos));
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// `TOP` folders, each with `SUB` empty subfolders and `FILES` empty files, made by a second
/// client; returns each top folder's expected listing.
fn populate(f: &MountFixture) -> Vec<(String, BTreeSet<String>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = f.other_client().await;
        let (nodes, _) = client.fetch_tree().await.unwrap();
        let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();
        let empty = f.root.path().join("empty");
        fs::write(&empty, b"").unwrap();
        let named = |name: &str| json!({ "n": name }).as_object().unwrap().clone();
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        for t in 0..TOP {
            let top = batch.len();
            let name = format!("top-{t:02}");
            batch.push(NewNode {
                parent: None,
                content: NewContent::Folder,
                attributes: named(&name),
            });
            let mut children = BTreeSet::new();
            for s in 0..SUB {
                let sub = format!("sub-{s:02}");
                batch.push(NewNode {
                    parent: Some(top),
                    content: NewContent::Folder,
                    attributes: named(&sub),
                });
                children.insert(sub);
            }
            for i in 0..FILES {
                let (key, uploaded) = client.upload_data(&empty, |_| {}).await.unwrap();
                let file = format!("file-{i}.txt");
                batch.push(NewNode {
                    parent: Some(top),
                    content: NewContent::File { key, uploaded },
                    attributes: named(&file),
                });
                children.insert(file);
            }
            expected.push((name, children));
        }
        client.put_nodes(&root, batch).await.unwrap();
        expected
    })
}

fn names(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn log_has(f: &MountFixture, n: u32, text: &str) -> bool {
    fs::read_to_string(f.log(n))
        .unwrap_or_default()
        .contains(text)
}

fn wait_for_log(f: &MountFixture, n: u32, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_has(f, n, text) {
        assert!(Instant::now() < deadline, "no {text:?} in the mount's log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Populates the account, unmounts, and mounts again through a slow link with no local tree
/// (a new server address is a new local state).
fn first_mount_over_slow_link(
    rate: u64,
    cut_after: u64,
) -> (MountFixture, SlowLink, Vec<(String, BTreeSet<String>)>) {
    let mut f = MountFixture::new();
    let expected = populate(&f);
    f.unmount();
    let link = SlowLink::start(&f.url);
    link.rate.store(rate, Ordering::SeqCst);
    link.cut_after.store(cut_after, Ordering::SeqCst);
    f.url = link.url.clone();
    f.mount();
    (f, link, expected)
}

#[test]
fn a_first_mount_is_live_before_the_listing_is_in_and_shows_no_folder_partly() {
    // About 100 kB of listing at 40 kB/s: the whole tree takes seconds to arrive.
    let (mut f, link, expected) = first_mount_over_slow_link(40_000, 0);
    let top: BTreeSet<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names(&f.mnt).unwrap(), top);
    assert!(
        !log_has(&f, 2, "drive listing loaded"),
        "the root was listed only after the whole tree had arrived"
    );
    // Each folder, asked for while the listing is still arriving, is shown whole.
    for (name, children) in expected.iter().rev() {
        assert_eq!(&names(&f.mnt.join(name)).unwrap(), children, "{name}");
    }
    wait_for_log(&f, 2, "drive listing loaded");
    // Changes work as soon as the folder they touch is listed, and the tree is kept: the
    // remount (at full speed now) starts from it.
    fs::create_dir(f.mnt.join("top-00/new")).unwrap();
    fs::remove_dir(f.mnt.join("top-01/sub-00")).unwrap();
    link.rate.store(0, Ordering::SeqCst);
    f.remount();
    assert!(f.mnt.join("top-00/new").is_dir());
    assert!(!f.mnt.join("top-01/sub-00").exists());
    assert_eq!(names(&f.mnt.join("top-07")).unwrap(), expected[7].1);
    f.unmount();
}

#[test]
fn a_listing_cut_off_after_the_mount_is_live_fails_its_waiters_and_is_fetched_again() {
    // The link breaks once, a third of the way into the listing; the mount is live before.
    let (mut f, _link, expected) = first_mount_over_slow_link(40_000, 35_000);
    // The last folder's listing comes last: asked for now, it waits for the cut and fails
    // (EIO), or — if the listing was fetched again meanwhile — is shown whole.
    let (last, children) = expected.last().unwrap();
    match names(&f.mnt.join(last)) {
        Ok(got) => assert_eq!(&got, children),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    wait_for_log(&f, 2, "drive listing loaded");
    assert!(log_has(&f, 2, "reading the drive's listing failed"));
    for (name, children) in &expected {
        assert_eq!(&names(&f.mnt.join(name)).unwrap(), children, "{name}");
    }
    let err = fs::read_dir(f.mnt.join("no-such-folder")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    f.unmount();
}
