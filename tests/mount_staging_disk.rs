//! A full staging disk: cached chunks give way to a write, a write that cannot fit fails with
//! `ENOSPC`, and nothing acknowledged is lost.
//!
//! In a test binary of its own: a test running beside it that forks (every mount fixture
//! spawns processes) makes the kernel send `FLUSH` for the file being written here when the
//! child's copies of the descriptors close at `exec`. A flush queues the file and later writes
//! go to a copy of it, which on this deliberately small disk leaves no room.

mod common;

use std::fs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::mount::{MountFixture, pattern, write_and_close};

/// A small tmpfs, unmounted when dropped (declare it before the fixture using it, so it
/// outlives the mount).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("veilfs-tmpfs-")
            .tempdir()
            .unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs (the tests run as root)");
        Tmpfs(dir)
    }

    fn path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_staging_disk_fails_the_write_with_enospc_and_loses_nothing_acknowledged() {
    let disk = Tmpfs::new("24m");
    let mut f = MountFixture::with_cache_dir(disk.path());

    // Cached chunks are expendable and give way to a write: 12 MiB read into the on-disk cache,
    // then 16 MiB written, more than what is left beside them.
    let cached = pattern(12 * 1024 * 1024, 5);
    fs::write(f.path("cached.bin"), &cached).unwrap();
    f.unmount();
    f.mount();
    assert!(fs::read(f.path("cached.bin")).unwrap() == cached);
    let fits = pattern(16 * 1024 * 1024, 6);
    if let Err(e) = write_and_close(&f.path("fits.bin"), &fits) {
        // What holds the disk, to tell why the cache could not make room.
        let du = std::process::Command::new("du")
            .arg("-ak")
            .arg(disk.path())
            .output()
            .unwrap();
        panic!(
            "the cache makes room for a write: {e}\n{}",
            String::from_utf8_lossy(&du.stdout)
        );
    }
    assert!(fs::read(f.path("fits.bin")).unwrap() == fits);

    let kept = pattern(2 * 1024 * 1024, 3);
    fs::write(f.path("kept.bin"), &kept).unwrap();

    // More than the staging disk holds: the write (or the close) says so.
    let big = pattern(64 * 1024 * 1024, 4);
    let e = write_and_close(&f.path("big.bin"), &big).expect_err("64 MiB fit on 24 MiB");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");

    // What was acknowledged before is intact, and the mount still works once space is freed.
    assert!(fs::read(f.path("kept.bin")).unwrap() == kept);
    fs::remove_file(f.path("big.bin")).unwrap();
    // The kernel sends the closed handle's RELEASE after `close()` returns, so the removed
    // file's staging space comes back a moment after `rm`: wait for it as a user would.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fs::write(f.path("after.txt"), b"written after the disk was full") {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the space of the removed file never came back: {e}"),
        }
    }

    f.unmount(); // waits for the uploads
    fs::remove_dir_all(
        disk.path()
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    f.mount();
    assert!(fs::read(f.path("kept.bin")).unwrap() == kept);
    assert!(fs::read(f.path("fits.bin")).unwrap() == fits);
    assert_eq!(
        fs::read(f.path("after.txt")).unwrap(),
        b"written after the disk was full"
    );
    assert!(!f.path("big.bin").exists());
    let log = fs::read_to_string(f.log(1)).unwrap();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}
