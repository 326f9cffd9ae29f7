//! `veilfs mount --link`: a public folder link mounted read-only, without an account, and read
//! byte-exact through the kernel.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::mount::{is_mounted, pattern};
use common::shell::Shell;

#[test]
fn a_public_folder_link_mounts_read_only_and_reads_byte_exact() {
    let sh = Shell::new();
    let tree = sh.local("public");
    fs::create_dir_all(tree.join("sub")).unwrap();
    let big = pattern(2_500_000, 8);
    fs::write(tree.join("big.bin"), &big).unwrap();
    fs::write(tree.join("sub/hello.txt"), b"hello from a link").unwrap();
    sh.ok(&["put", "-r", tree.to_str().unwrap(), "/"]);
    let link = sh.ok(&["link", "/public"]).trim().to_string();

    // A wrong key is refused before anything is mounted.
    let (base, _) = link.split_once('#').unwrap();
    let wrong = format!("{base}#{}", veilfs::crypto::mega::b64_encode(&[1u8; 16]));
    let mnt = sh.local("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = sh.run_in(
        "stranger",
        &[
            "mount",
            "--link",
            &wrong,
            mnt.to_str().unwrap(),
            "--foreground",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not open this folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));

    let mut daemon = sh
        .command_in("stranger")
        .args([
            "mount",
            "--link",
            &link,
            mnt.to_str().unwrap(),
            "--foreground",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_mounted(&mnt) {
        if let Some(status) = daemon.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("mount --link exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "the link mount did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = || -> (Vec<u8>, Vec<u8>) {
        (
            fs::read(mnt.join("big.bin")).unwrap(),
            fs::read(mnt.join("sub/hello.txt")).unwrap(),
        )
    };
    let (got_big, got_hello) = read();
    let writable = fs::write(mnt.join("new.txt"), b"x");
    // `df` works too: a visitor has no quota of their own.
    let statfs = {
        let path = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statvfs(path.as_ptr(), &mut st) }
    };
    let _ = sh
        .command_in("stranger")
        .args(["unmount", mnt.to_str().unwrap()])
        .output()
        .unwrap();
    let status = daemon.wait().unwrap();
    assert!(got_big == big, "big.bin differs");
    assert_eq!(got_hello, b"hello from a link");
    assert_eq!(
        writable.unwrap_err().raw_os_error(),
        Some(libc::EROFS),
        "a link mount is read-only"
    );
    assert_eq!(statfs, 0, "statfs on a link mount");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt));
}
