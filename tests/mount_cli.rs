//! The mount as a user runs it: the embedded default (no server given) detaching into the
//! background, `veilfs unmount`, persistence across mounts, and SIGTERM.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{BIN, is_mounted, pattern};

fn veilfs(home: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_DATA_HOME", home.join("data"));
    c
}

#[test]
fn the_embedded_default_mounts_in_the_background_and_keeps_files() {
    let home = tempfile::tempdir().unwrap();
    let mnt = home.path().join("drive");
    fs::create_dir(&mnt).unwrap();
    let data = pattern(1_500_000, 7);

    let out = veilfs(home.path()).arg("mount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(&mnt),
        "the command returned before the mount was live"
    );
    fs::write(mnt.join("note.bin"), &data).unwrap();
    fs::create_dir(mnt.join("folder")).unwrap();

    let embedded = home.path().join("data/veilfs/embedded");
    let mode = fs::metadata(embedded.join("password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the generated password file must be private"
    );

    let out = veilfs(home.path())
        .arg("unmount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    // The server's blobs hold no plaintext.
    let mut stack = vec![embedded.join("server")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(64).any(|w| w == &data[1000..1064]),
                    "plaintext found in {}",
                    p.display()
                );
            }
        }
    }

    let out = veilfs(home.path()).arg("mount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(mnt.join("note.bin")).unwrap() == data);
    assert!(mnt.join("folder").is_dir());
    let out = veilfs(home.path())
        .arg("unmount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_unmounts_cleanly_and_mounting_twice_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let mnt = home.path().join("drive");
    fs::create_dir(&mnt).unwrap();
    let mut daemon = veilfs(home.path())
        .arg("mount")
        .arg(&mnt)
        .arg("--foreground")
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !is_mounted(&mnt) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "mount did not appear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(mnt.join("before-term"), b"kept").unwrap();
    let out = veilfs(home.path()).arg("mount").arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already mounted"));

    let rc = unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exited with {status}");
    assert!(!is_mounted(&mnt));

    let out = veilfs(home.path()).arg("mount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(mnt.join("before-term")).unwrap(), b"kept");
    let out = veilfs(home.path())
        .arg("unmount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
}
