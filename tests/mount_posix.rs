//! Real mounts of a real server: POSIX behaviour through the kernel, persistence across
//! remounts, `rsync -a` round trips, and a daemon killed right after `close()`.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::{MountFixture, pattern, write_and_close};

fn mtime_ns(p: &Path) -> i128 {
    let m = fs::symlink_metadata(p).unwrap();
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// The errno of `getxattr(path, name)` (it must fail).
fn xattr_errno(path: &Path, name: &str) -> i32 {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut value = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and `value` outlives the call.
    let rc = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(rc, -1, "getxattr succeeded");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}

#[test]
fn posix_operations_and_their_persistence_across_remounts() {
    let mut f = MountFixture::new();
    let big = pattern(3 * 1024 * 1024 + 17, 3);

    // Files: create, write at offsets, read back, truncate, overwrite in place.
    fs::write(f.path("small.txt"), b"hello").unwrap();
    fs::write(f.path("big.bin"), &big).unwrap();
    let mut h = fs::OpenOptions::new()
        .write(true)
        .open(f.path("small.txt"))
        .unwrap();
    h.seek(SeekFrom::Start(10)).unwrap();
    h.write_all(b"world").unwrap();
    drop(h);
    assert_eq!(
        fs::read(f.path("small.txt")).unwrap(),
        b"hello\0\0\0\0\0world"
    );
    let mut h = fs::OpenOptions::new()
        .write(true)
        .open(f.path("big.bin"))
        .unwrap();
    h.seek(SeekFrom::Start(1_000_000)).unwrap();
    h.write_all(b"PATCH").unwrap();
    drop(h);
    let mut expected_big = big.clone();
    expected_big[1_000_000..1_000_005].copy_from_slice(b"PATCH");
    assert_eq!(fs::read(f.path("big.bin")).unwrap(), expected_big);
    fs::OpenOptions::new()
        .write(true)
        .open(f.path("small.txt"))
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(fs::read(f.path("small.txt")).unwrap(), b"hel");

    // Folders, symlinks (relative, absolute, dangling), modes and nanosecond times.
    fs::create_dir_all(f.path("a/b/c")).unwrap();
    symlink("../small.txt", f.path("a/rel")).unwrap();
    symlink("/etc/hostname", f.path("a/abs")).unwrap();
    symlink("nowhere/at all", f.path("a/dangling")).unwrap();
    fs::set_permissions(f.path("big.bin"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::set_permissions(f.path("a/b"), fs::Permissions::from_mode(0o700)).unwrap();
    set_mtime(&f.path("big.bin"), 1_000_000_000, 123_456_789);
    set_mtime(&f.path("a/b"), 1_100_000_000, 5);
    set_mtime(&f.path("a/rel"), 1_200_000_000, 987_654_321);

    // Renames: across folders, over an existing file, RENAME_NOREPLACE refused.
    fs::write(f.path("a/b/c/moved"), b"m").unwrap();
    fs::rename(f.path("a/b/c/moved"), f.path("moved")).unwrap();
    fs::write(f.path("target"), b"old").unwrap();
    fs::write(f.path(".target.tmp"), b"new content").unwrap();
    fs::rename(f.path(".target.tmp"), f.path("target")).unwrap();
    assert_eq!(fs::read(f.path("target")).unwrap(), b"new content");
    let out = Command::new("mv")
        .arg("--no-clobber")
        .arg("--update=none-fail")
        .arg(f.path("moved"))
        .arg(f.path("target"))
        .output()
        .unwrap();
    assert!(!out.status.success() || fs::read(f.path("target")).unwrap() == b"new content");

    // What cannot be stored is refused, not silently lost.
    assert_eq!(
        errno_of(fs::hard_link(f.path("moved"), f.path("hard"))),
        libc::EPERM
    );
    assert_eq!(errno_of(fs::remove_dir(f.path("a/b"))), libc::ENOTEMPTY);
    // Extended attributes are not stored: the answers of a file system without them, the
    // same for the first call and the ones the kernel answers itself after it.
    for _ in 0..2 {
        assert_eq!(xattr_errno(&f.path("moved"), "user.tag"), libc::EOPNOTSUPP);
    }
    let h = fs::File::open(f.path("moved")).unwrap();
    let mut tty = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: TCGETS fills a termios of the caller's, which outlives the call.
    let rc = unsafe { libc::ioctl(h.as_raw_fd(), libc::TCGETS, tty.as_mut_ptr()) };
    assert_eq!(rc, -1, "a file is not a terminal");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    drop(h);
    assert_eq!(errno_of(fs::remove_file(f.path("a"))), libc::EISDIR);
    assert_eq!(errno_of(fs::read(f.path("missing"))), libc::ENOENT);
    fs::create_dir(f.path("gone")).unwrap();
    fs::remove_dir(f.path("gone")).unwrap();
    fs::write(f.path("gone.txt"), b"x").unwrap();
    fs::remove_file(f.path("gone.txt")).unwrap();

    let check = |f: &MountFixture| {
        assert_eq!(fs::read(f.path("small.txt")).unwrap(), b"hel");
        assert_eq!(fs::read(f.path("big.bin")).unwrap(), expected_big);
        assert_eq!(fs::read(f.path("target")).unwrap(), b"new content");
        assert_eq!(fs::read(f.path("moved")).unwrap(), b"m");
        assert!(f.path("a/b/c").is_dir());
        assert_eq!(
            fs::read_link(f.path("a/rel")).unwrap(),
            Path::new("../small.txt")
        );
        assert_eq!(
            fs::read_link(f.path("a/abs")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert_eq!(
            fs::read_link(f.path("a/dangling")).unwrap(),
            Path::new("nowhere/at all")
        );
        assert_eq!(fs::read(f.path("a/rel")).unwrap(), b"hel");
        let mode = |p: &str| fs::symlink_metadata(f.path(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("big.bin"), 0o751);
        assert_eq!(mode("a/b"), 0o700);
        assert_eq!(mtime_ns(&f.path("big.bin")), 1_000_000_000_123_456_789);
        assert_eq!(mtime_ns(&f.path("a/b")), 1_100_000_000_000_000_005);
        assert_eq!(mtime_ns(&f.path("a/rel")), 1_200_000_000_987_654_321);
        assert!(!f.path("gone").exists() && !f.path("gone.txt").exists());
        assert!(!f.path(".target.tmp").exists());
        let mut names: Vec<String> = fs::read_dir(&f.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "big.bin", "moved", "small.txt", "target"]);
    };
    check(&f);
    f.remount();
    check(&f);
    // With the local cache gone too: everything comes from the server.
    f.unmount();
    fs::remove_dir_all(f.cache_dir()).unwrap();
    f.mount();
    check(&f);

    // statfs reports the account's quota.
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&f.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>().unwrap());
    let (blocks, bsize) = (it.next().unwrap(), it.next().unwrap());
    assert!(blocks * bsize >= 1 << 30, "quota shown: {text}");
}

#[test]
fn rsync_a_round_trips_and_the_second_pass_is_a_no_op() {
    let mut f = MountFixture::new();
    let src = f.root.path().join("src");
    for d in [
        "tree/empty",
        "tree/sub/deeper",
        "tree/with space",
        "tree/ünï €",
    ] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for i in 0..40 {
        let dir = ["tree", "tree/sub", "tree/sub/deeper", "tree/ünï €"][i % 4];
        fs::write(
            src.join(dir).join(format!("file {i}.dat")),
            pattern(i * 997, i as u8),
        )
        .unwrap();
    }
    fs::write(src.join("tree/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("tree/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("tree/private"), b"secret").unwrap();
    fs::set_permissions(src.join("tree/private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(src.join("tree/big"), pattern(2_500_000, 9)).unwrap();
    symlink("sub/deeper", src.join("tree/rel-link")).unwrap();
    symlink("/usr/share", src.join("tree/abs-link")).unwrap();
    symlink("does/not/exist", src.join("tree/dangling")).unwrap();
    fs::write(src.join("tree/odd'name\"with$chars"), b"odd").unwrap();
    // Directory times last, as they change when entries are added.
    let mut t = 1_500_000_000;
    for d in [
        "tree/empty",
        "tree/sub/deeper",
        "tree/sub",
        "tree/with space",
        "tree",
    ] {
        set_mtime(&src.join(d), t, 250_000_000);
        t += 1000;
    }

    let rsync = |f: &MountFixture| {
        Command::new("rsync")
            .args(["-a", "-i"])
            .arg(format!("{}/", src.join("tree").display()))
            .arg(format!("{}/", f.path("tree").display()))
            .output()
            .unwrap()
    };
    let first = rsync(&f);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(!first.stdout.is_empty());
    let second = rsync(&f);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        "",
        "the second rsync found differences"
    );

    let diff = |f: &MountFixture| {
        let out = Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(src.join("tree"))
            .arg(f.path("tree"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "diff: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    diff(&f);
    f.remount();
    diff(&f);
    let third = rsync(&f);
    assert_eq!(
        String::from_utf8_lossy(&third.stdout),
        "",
        "differences after a remount"
    );
}

#[test]
fn a_file_closed_before_sigkill_is_intact_after_restart() {
    let mut f = MountFixture::new();
    let data = pattern(24 * 1024 * 1024 + 5, 1);
    {
        let mut h = fs::File::create(f.path("survivor.bin")).unwrap();
        h.write_all(&data).unwrap();
    } // close(): the content is in the journal now
    f.kill();
    f.mount();
    // The resumed upload finishes, then a cold read from the server proves it arrived.
    f.unmount();
    fs::remove_dir_all(f.cache_dir().join("blocks")).ok();
    f.mount();
    let mut back = Vec::new();
    fs::File::open(f.path("survivor.bin"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "content differs after SIGKILL and restart");
}

/// A second mount of the same account, playing another client; unmounted by `stop_second`.
fn second_mount(f: &MountFixture) -> (std::path::PathBuf, std::process::Child) {
    let mnt2 = f.root.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let log = fs::File::create(f.root.path().join("second.log")).unwrap();
    let second = f
        .command()
        .env("XDG_CACHE_HOME", f.root.path().join("cache2"))
        .arg("mount")
        .arg(&mnt2)
        .args(["--server", &f.url, "--email", &f.email, "--password-file"])
        .arg(f.root.path().join("password"))
        .arg("--foreground")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !common::mount::is_mounted(&mnt2) {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    (mnt2, second)
}

fn stop_second(mnt2: &std::path::Path, mut second: std::process::Child) {
    let _ = Command::new("fusermount3").arg("-u").arg(mnt2).status();
    second.wait().unwrap();
}

/// Polls `check` for up to ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn another_clients_change_appears_in_the_mount() {
    let f = MountFixture::new();
    fs::create_dir(f.path("shared")).unwrap();
    assert!(fs::read_dir(f.path("shared")).unwrap().next().is_none());
    let (mnt2, second) = second_mount(&f);
    fs::write(mnt2.join("shared/from-the-other.txt"), b"hi there").unwrap();
    stop_second(&mnt2, second);
    eventually("the change never arrived", || {
        fs::read(f.path("shared/from-the-other.txt")).is_ok_and(|d| d == b"hi there")
    });
}

/// The kernel may keep names and attributes for a minute (`--attr-timeout`): what it cached
/// must still follow another client's changes within seconds, pushed as invalidations.
#[test]
fn cached_names_attributes_and_pages_follow_another_clients_changes() {
    let f = MountFixture::new();
    fs::create_dir(f.path("shared")).unwrap();
    fs::write(f.path("shared/edited.txt"), b"first version").unwrap();
    fs::write(f.path("shared/moved.txt"), b"moved").unwrap();
    let (mnt2, second) = second_mount(&f);
    eventually("the second mount never saw the files", || {
        fs::read(mnt2.join("shared/edited.txt")).is_ok_and(|d| d == b"first version")
            && mnt2.join("shared/moved.txt").exists()
    });
    // Cached here: both names, their attributes and the edited file's pages; and looked up
    // here, in vain, the names the other client is about to create.
    assert!(!f.path("shared/renamed.txt").exists());
    assert!(!f.path("shared/created.txt").exists());
    assert_eq!(fs::metadata(f.path("shared/edited.txt")).unwrap().len(), 13);
    assert_eq!(
        fs::read(f.path("shared/edited.txt")).unwrap(),
        b"first version"
    );
    assert!(fs::metadata(f.path("shared/moved.txt")).is_ok());

    fs::write(
        mnt2.join("shared/edited.txt"),
        b"the second, longer version",
    )
    .unwrap();
    fs::rename(
        mnt2.join("shared/moved.txt"),
        mnt2.join("shared/renamed.txt"),
    )
    .unwrap();
    fs::write(mnt2.join("shared/created.txt"), b"new here").unwrap();
    stop_second(&mnt2, second);

    eventually("the edit never showed in the cached attributes", || {
        fs::metadata(f.path("shared/edited.txt")).is_ok_and(|m| m.len() == 26)
    });
    assert_eq!(
        fs::read(f.path("shared/edited.txt")).unwrap(),
        b"the second, longer version"
    );
    eventually("the rename never showed in the cached names", || {
        !f.path("shared/moved.txt").exists() && f.path("shared/renamed.txt").exists()
    });
    assert_eq!(fs::read(f.path("shared/renamed.txt")).unwrap(), b"moved");
    eventually("the new file never replaced its cached absence", || {
        fs::read(f.path("shared/created.txt")).is_ok_and(|d| d == b"new here")
    });
}

#[test]
fn a_session_ended_by_the_server_is_renewed_with_the_password() {
    let mut f = MountFixture::new();
    fs::write(f.path("before"), b"1").unwrap();
    // Another login ends every other session of the account, the mount's included.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let other = f.other_client().await;
        other
            .api()
            .call(serde_json::json!({"a": "usr", "ko": 1}))
            .await
            .unwrap();
    });
    fs::create_dir(f.path("after")).unwrap();
    fs::write(f.path("after/file"), b"2").unwrap();
    f.remount();
    assert_eq!(fs::read(f.path("after/file")).unwrap(), b"2");
    assert_eq!(fs::read(f.path("before")).unwrap(), b"1");
}

#[test]
fn a_node_whose_key_we_lack_is_listed_with_its_size_and_refuses_access() {
    let mut f = MountFixture::new();
    fs::write(f.path("ordinary"), b"readable").unwrap();
    // Another client creates a file whose key is wrapped under a share key this account
    // never received, as a share whose key got lost would leave it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.block_on(async {
        let other = f.other_client().await;
        let (nodes, _) = other.fetch_tree().await.unwrap();
        let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();
        let tmp = f.root.path().join("keyless.src");
        fs::write(&tmp, vec![7u8; 5000]).unwrap();
        let (_key, data) = other.upload_data(&tmp, |_| {}).await.unwrap();
        let answer = other
            .api()
            .call(serde_json::json!({"a": "p", "t": root, "n": [{
                "h": data.token, "t": 0,
                // Random bytes: a key wrapped by someone else, attributes nobody here opens.
                "a": veilfs::crypto::mega::b64_encode(&veilfs::crypto::random_array::<16>()),
                "k": veilfs::crypto::mega::b64_encode(&veilfs::crypto::random_array::<32>()),
            }]}))
            .await
            .unwrap();
        answer["f"][0]["h"].as_str().unwrap().to_string()
    });
    f.remount();
    let name = format!("undecryptable-{handle}");
    let mut names: Vec<String> = fs::read_dir(&f.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ordinary".to_string(), name.clone()]);
    let meta = fs::metadata(f.path(&name)).unwrap();
    assert_eq!(meta.len(), 5000);
    assert_eq!(errno_of(fs::read(f.path(&name))), libc::EACCES);
    assert_eq!(
        errno_of(fs::OpenOptions::new().append(true).open(f.path(&name))),
        libc::EACCES
    );
    assert_eq!(
        errno_of(fs::rename(f.path(&name), f.path("x"))),
        libc::EACCES
    );
    // Everything else still works.
    assert_eq!(fs::read(f.path("ordinary")).unwrap(), b"readable");
}

/// A folder's mode and time are set here at once, without the server (`vfs/attrs.rs`): they
/// survive a SIGKILL of the daemon through the journal, and reach the server after the
/// restart; a rename right after a change keeps both.
/// A file waiting for its upload holds no descriptor: with the server frozen, more files than
/// the daemon may have open are written, closed and read back, and all reach the server. (Each
/// held one: `create` failed with EMFILE once the queue reached the limit, 1024 by default.)
#[test]
fn more_files_wait_for_their_upload_than_the_daemon_may_have_open() {
    const FILES: usize = 300;
    let mut f = MountFixture::new();
    fs::create_dir(f.path("q")).unwrap();
    f.unmount();
    f.limit_open_files(128);
    f.mount();
    f.pause_server(true);
    let content = |i: usize| format!("queued file {i}\n").repeat(i % 7 + 1);
    for i in 0..FILES {
        write_and_close(&f.path(&format!("q/f{i:03}")), content(i).as_bytes())
            .unwrap_or_else(|e| panic!("file {i}: {e}"));
    }
    for i in [0, 150, FILES - 1] {
        assert_eq!(
            fs::read_to_string(f.path(&format!("q/f{i:03}"))).unwrap(),
            content(i)
        );
    }
    let fds = f.daemon_fds();
    f.pause_server(false);
    assert!(
        fds < 100,
        "{fds} descriptors open with {FILES} files queued"
    );
    f.unmount();

    let (mnt2, second) = second_mount(&f);
    let seen: Vec<_> = (0..FILES)
        .map(|i| fs::read_to_string(mnt2.join(format!("q/f{i:03}"))).map_err(|e| e.to_string()))
        .collect();
    stop_second(&mnt2, second);
    for (i, text) in seen.into_iter().enumerate() {
        assert_eq!(text, Ok(content(i)), "file {i} on the server");
    }
}

/// Staging files in a cache directory: those named by an id (the files being written or
/// queued), not the free ones kept for reuse.
fn staging_files(cache: &Path) -> usize {
    let mut count = 0;
    let mut dirs = vec![cache.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "free") {
                dirs.push(path);
            } else if dir.file_name().is_some_and(|n| n == "staging")
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u64>().is_ok())
                && entry.metadata().unwrap().len() > 0
            {
                count += 1;
            }
        }
    }
    count
}

/// Small files are staged in memory up to a budget (8 MiB), the others on the disk. With the
/// server away and the daemon killed, only the journal holds the ones in memory: the next
/// mount writes them back from it, and every file reaches the server, whichever way it was
/// staged — as does one that began small and grew past 64 KiB.
#[test]
fn small_files_staged_in_memory_survive_a_sigkill_and_all_reach_the_server() {
    const FILES: usize = 200;
    let mut f = MountFixture::new();
    fs::create_dir(f.path("m")).unwrap();
    f.pause_server(true);
    let content = |i: usize| pattern(60 * 1024 - i, i as u8);
    for i in 0..FILES {
        write_and_close(&f.path(&format!("m/f{i:03}")), &content(i))
            .unwrap_or_else(|e| panic!("file {i}: {e}"));
    }
    let grown = pattern(1000 + 100 * 1024, 77);
    {
        let mut g = fs::File::create(f.path("m/grown")).unwrap();
        g.write_all(&grown[..1000]).unwrap();
        g.write_all(&grown[1000..]).unwrap();
    }
    for i in [0, 99, FILES - 1] {
        assert_eq!(fs::read(f.path(&format!("m/f{i:03}"))).unwrap(), content(i));
    }
    assert_eq!(fs::read(f.path("m/grown")).unwrap(), grown);
    // 200 files of about 60 KiB are 11.7 MiB: the first ones in memory, the rest on the disk.
    let on_disk = staging_files(&f.cache_dir());
    assert!(
        (2..FILES / 2).contains(&on_disk),
        "{on_disk} staging files for {FILES} small files and a grown one"
    );
    f.kill();
    f.pause_server(false);
    f.mount();
    for i in [0, 99, FILES - 1] {
        assert_eq!(fs::read(f.path(&format!("m/f{i:03}"))).unwrap(), content(i));
    }
    f.unmount();

    let (mnt2, second) = second_mount(&f);
    let seen: Vec<_> = (0..FILES)
        .map(|i| fs::read(mnt2.join(format!("m/f{i:03}"))).map_err(|e| e.to_string()))
        .collect();
    let seen_grown = fs::read(mnt2.join("m/grown")).map_err(|e| e.to_string());
    stop_second(&mnt2, second);
    for (i, data) in seen.into_iter().enumerate() {
        assert!(data == Ok(content(i)), "file {i} on the server");
    }
    assert!(seen_grown == Ok(grown), "the grown file on the server");
}

/// A queued file rests without a descriptor (above) until it is opened: a handle opened before
/// the file is deleted or replaced reads its content afterwards, even once the staging files
/// let go have been emptied and reused.
#[test]
fn a_queued_file_deleted_or_replaced_while_open_stays_readable() {
    let f = MountFixture::new();
    f.pause_server(true);
    write_and_close(&f.path("gone"), b"deleted while open").unwrap();
    write_and_close(&f.path("old"), b"replaced while open").unwrap();
    write_and_close(&f.path("new"), b"the new content").unwrap();
    let gone = fs::File::open(f.path("gone")).unwrap();
    let old = fs::File::open(f.path("old")).unwrap();
    fs::remove_file(f.path("gone")).unwrap();
    fs::rename(f.path("new"), f.path("old")).unwrap();
    // Time for the recycler (it gathers for 20 ms), then new files to take what it freed.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..4 {
        write_and_close(&f.path(&format!("later{i}")), &[b'x'; 4096]).unwrap();
    }
    let read_uncached = |file: &fs::File| {
        // The pages the writes left in the kernel's cache would answer without the daemon.
        let fd = file.as_raw_fd();
        assert_eq!(
            unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) },
            0
        );
        let mut text = String::new();
        (&*file).read_to_string(&mut text).map(|_| text)
    };
    assert_eq!(read_uncached(&gone).unwrap(), "deleted while open");
    assert_eq!(read_uncached(&old).unwrap(), "replaced while open");
    assert_eq!(fs::read(f.path("old")).unwrap(), b"the new content");
    f.pause_server(false);
}

#[test]
fn a_folders_mode_and_time_are_set_without_the_server_and_reach_it_after_a_sigkill() {
    let mut f = MountFixture::new();
    fs::create_dir(f.path("kept")).unwrap();
    fs::create_dir(f.path("before")).unwrap();
    f.pause_server(true);
    let kept = f.path("kept");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        fs::set_permissions(&kept, fs::Permissions::from_mode(0o701)).unwrap();
        set_mtime(&kept, 1_000_000_000, 123_456_789);
        tx.send(()).unwrap();
    });
    let answered = rx.recv_timeout(Duration::from_secs(10));
    let shown = (
        fs::metadata(f.path("kept")).unwrap().mode() & 0o7777,
        mtime_ns(&f.path("kept")),
    );
    f.kill();
    f.pause_server(false);
    answered.expect("chmod and utimensat of a folder waited for the server");
    assert_eq!(shown, (0o701, 1_000_000_000_123_456_789));

    f.mount();
    fs::set_permissions(f.path("before"), fs::Permissions::from_mode(0o711)).unwrap();
    set_mtime(&f.path("before"), 2_000_000_000, 5);
    fs::rename(f.path("before"), f.path("after")).unwrap();
    f.unmount();

    let (mnt2, second) = second_mount(&f);
    let seen = |name: &str| {
        let m = fs::metadata(mnt2.join(name)).unwrap();
        (m.mode() & 0o7777, mtime_ns(&mnt2.join(name)))
    };
    let (kept, after, before) = (seen("kept"), seen("after"), mnt2.join("before").exists());
    stop_second(&mnt2, second);
    assert_eq!(kept, (0o701, 1_000_000_000_123_456_789));
    assert_eq!(after, (0o711, 2_000_000_000_000_000_005));
    assert!(!before, "the renamed folder is still under its old name");
}

fn access(p: &Path, mode: i32) -> i32 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

fn requests(f: &MountFixture, op: &str) -> u64 {
    let out = f
        .command()
        .args(["status", "--json"])
        .arg(&f.mnt)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["requests"][op]["count"].as_u64().unwrap_or(0)
}

/// The tests run as root, whose mounts the kernel does not check modes on (`cli/mount.rs`):
/// root must meet the same rules as with the kernel's checks, and the folder round trip those
/// checks cost must be gone; `--default-permissions` brings them back.
#[test]
fn root_is_held_to_execute_bits_and_asks_no_folder_attributes_per_file_written() {
    let mut f = MountFixture::new();
    fs::create_dir(f.path("bin")).unwrap();
    let script = f.path("bin/run.sh");
    fs::write(&script, b"#!/bin/sh\nexit 7\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(access(&script, libc::X_OK), libc::EACCES);
    let refused = Command::new(&script).status().unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(access(&script, libc::X_OK), 0);
    assert_eq!(Command::new(&script).status().unwrap().code(), Some(7));

    // Nothing else is refused to root: a file no one may read or write, a folder no one may
    // enter or change.
    let locked = f.path("bin/locked");
    fs::write(&locked, b"secret").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    assert_eq!(access(&locked, libc::R_OK | libc::W_OK), 0);
    assert_eq!(fs::read(&locked).unwrap(), b"secret");
    fs::write(&locked, b"changed").unwrap();
    assert_eq!(fs::read(&locked).unwrap(), b"changed");
    fs::set_permissions(f.path("bin"), fs::Permissions::from_mode(0o000)).unwrap();
    assert_eq!(
        access(&f.path("bin"), libc::R_OK | libc::W_OK | libc::X_OK),
        0
    );
    fs::write(f.path("bin/more"), b"x").unwrap();
    assert_eq!(fs::read(&locked).unwrap(), b"changed");
    fs::set_permissions(f.path("bin"), fs::Permissions::from_mode(0o755)).unwrap();

    // Files written into a folder one after another: without the kernel's checks it asks
    // for no attributes; with them, for the folder's after each create.
    let written = |f: &MountFixture, dir: &str| {
        fs::create_dir(f.path(dir)).unwrap();
        let before = requests(f, "getattr");
        for i in 0..20 {
            fs::write(f.path(&format!("{dir}/f{i}")), b"data").unwrap();
        }
        requests(f, "getattr") - before
    };
    let unchecked = written(&f, "plain");
    assert!(unchecked < 5, "{unchecked} GETATTRs for 20 files");
    f.mount_options(&["--default-permissions"]);
    f.remount();
    let checked = written(&f, "checked");
    assert!(checked >= 19, "{checked} GETATTRs for 20 files");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(access(&script, libc::X_OK), libc::EACCES);
}
