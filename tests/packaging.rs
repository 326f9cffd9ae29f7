//! packaging/: the systemd units pass `systemd-analyze verify`, and the mount(8) helper turns
//! fstab-style options into a working mount of an account on a real server.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::{BIN, PASSWORD, is_mounted, pattern, serve};

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

/// `systemd-analyze verify` of a unit file, its `/usr/bin/veilfs` pointed at the test binary
/// (verify checks that the executables exist). Returns success and what it printed.
fn verify(dir: &Path, source: &str, installed_name: &str) -> (bool, String) {
    let text = fs::read_to_string(packaging().join(source))
        .unwrap()
        .replace("/usr/bin/veilfs", BIN);
    let path = dir.join(installed_name);
    fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed for the packaging tests");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn systemd_units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for (source, name) in [
        ("veilfs-serve.service", "veilfs-serve.service"),
        // A template is verified through an instance: the mount point comes from its name.
        ("veilfs@.service", "veilfs@home-me-drive.service"),
    ] {
        let (ok, said) = verify(dir.path(), source, name);
        assert!(ok && said.trim().is_empty(), "{source}:\n{said}");
    }
    // The check has teeth: a unit whose program is missing fails it.
    fs::write(
        dir.path().join("veilfs-broken.source"),
        "[Service]\nExecStart=/usr/bin/veilfs-missing\n",
    )
    .unwrap();
    let broken = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("veilfs-broken.source"))
        .output()
        .unwrap();
    assert!(!broken.status.success());
}

/// Unmounts lazily whatever a failed test left mounted.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn mount_helper_mounts_with_fstab_options() {
    let root = tempfile::Builder::new()
        .prefix("veilfs-pkg-")
        .tempdir()
        .unwrap();
    let r = root.path();
    let (mut server, url) = serve(&r.join("server"));
    let email = format!(
        "p{}@test.veilfs",
        hex::encode(veilfs::crypto::random_array::<4>())
    );
    fs::write(r.join("password"), PASSWORD).unwrap();
    let veilfs = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.env("HOME", r)
            .env("XDG_CONFIG_HOME", r.join("config"))
            .env("XDG_STATE_HOME", r.join("state"))
            .env("XDG_CACHE_HOME", r.join("cache"))
            .env("VEILFS_BIN", BIN)
            .args(args);
        c
    };
    let password = r.join("password").display().to_string();
    let out = veilfs(&[
        "signup",
        "--server",
        &url,
        "--email",
        &email,
        "--password-file",
        &password,
    ])
    .output()
    .unwrap();
    assert!(out.status.success());

    let mnt = r.join("drive");
    fs::create_dir(&mnt).unwrap();
    let _guard = Unmount(mnt.clone());
    let options = format!(
        "rw,noatime,nofail,_netdev,x-systemd.automount,server={url},password_file={password},cache_size=64M"
    );
    // What mount(8) runs for `mount -t veilfs EMAIL MNT -o OPTIONS` (through sh: the helper
    // is a script, and the test machine need not have it installed).
    let helper = |options: &str| {
        Command::new("sh")
            .arg(packaging().join("mount.veilfs"))
            .arg(&email)
            .arg(&mnt)
            .args(["-o", options])
            .env("HOME", r)
            .env("XDG_CONFIG_HOME", r.join("config"))
            .env("XDG_STATE_HOME", r.join("state"))
            .env("XDG_CACHE_HOME", r.join("cache"))
            .env("VEILFS_BIN", BIN)
            .env_remove("VEILFS_PASSWORD")
            .output()
            .unwrap()
    };
    let out = helper(&options);
    assert!(
        out.status.success(),
        "mount.veilfs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(&mnt),
        "the helper returned before the mount was live"
    );
    let data = pattern(400_000, 2);
    fs::write(mnt.join("via-fstab.bin"), &data).unwrap();
    assert!(fs::read(mnt.join("via-fstab.bin")).unwrap() == data);
    let out = veilfs(&["unmount", mnt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));

    // The upload reached the server: the shell commands see it on the session the mount saved.
    let out = veilfs(&["ls", "-l", "/"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(" 400000  ") && listing.contains("via-fstab.bin"),
        "{listing}"
    );

    // An option veilfs does not know is refused, with the reason, and nothing is mounted.
    let out = helper(&format!("server={url},bogus_option=1"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus-option"));
    assert!(!is_mounted(&mnt));
    let _ = server.kill();
    let _ = server.wait();
}
