//! `veilfs status` asks a real mount's daemon over its socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::mount::{MountFixture, pattern};

fn status(f: &MountFixture) -> serde_json::Value {
    let out = f
        .command()
        .arg("status")
        .arg(&f.mnt)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls until no upload is queued (the mount retries on its own schedule).
fn wait_until_idle(f: &MountFixture) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(f);
        if s["pending_uploads"] == 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never left the queue: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_shows_a_queued_upload_until_the_server_takes_it() {
    let mut f = MountFixture::new();
    let socket = f
        .root
        .path()
        .join("state/veilfs/mounts")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .expect("the daemon's status socket");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let idle = status(&f);
    assert_eq!(idle["pending_uploads"], 0);
    assert!(idle["cache_disk_budget"].as_u64().unwrap() > 0);
    std::fs::write(f.path("queued.bin"), b"first").unwrap();
    wait_until_idle(&f);

    // The kernel's requests so far: the write above, and a lookup of a name that is not there.
    assert!(std::fs::metadata(f.path("not-there")).is_err());
    let seen = status(&f);
    let requests = &seen["requests"];
    for op in ["create", "write", "flush", "release"] {
        let r = &requests[op];
        assert!(r["count"].as_u64().unwrap() >= 1, "{op}: {seen}");
        assert!(
            r["max_us"].as_u64().unwrap() * r["count"].as_u64().unwrap()
                >= r["total_us"].as_u64().unwrap(),
            "{op}: {seen}"
        );
    }
    assert!(
        requests["lookup"]["failed"].as_u64().unwrap() >= 1,
        "{seen}"
    );
    assert_eq!(requests["write"]["failed"], 0, "{seen}");
    let text = f.command().arg("status").output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("create ")),
        "{text}"
    );

    // With the server down, an overwritten file waits in the queue.
    f.stop_server();
    let data = pattern(200_000, 4);
    std::fs::write(f.path("queued.bin"), &data).unwrap();
    let queued = status(&f);
    assert_eq!(queued["pending_uploads"], 1, "{queued}");
    assert_eq!(queued["pending_bytes"], data.len() as u64, "{queued}");
    let text = f.command().arg("status").output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("pending uploads: 1 (195.3 KiB left)"),
        "{text}"
    );

    f.start_server();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(&f);
        if s["pending_uploads"] == 0 {
            assert!(s["uploaded"].as_u64().unwrap() >= 1, "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never left the queue: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    f.unmount();
    assert!(!socket.exists(), "the socket goes with the daemon");
}
