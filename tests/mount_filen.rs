//! The Filen mount and the real @filen/sdk 0.3.12 on one account made by
//! `veilfs signup --backend filen`: what the SDK uploads reads byte-exact through
//! `veilfs mount --backend filen`, a tampered chunk reads as EIO (never as wrong bytes), and what
//! the mount writes (new files, a replaced file, a renamed one) the SDK downloads byte-exact.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::mount::{MountFixture, PASSWORD, pattern};
use common::run_node;
use veilfs::crypto::filen as fc;

const MIB: u64 = 1024 * 1024;
const SIZES: [u64; 6] = [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 3];

/// What `filen_sdk.js` writes: byte i = (i·7 + seed) mod 251.
fn sdk_content(size: u64, seed: u64) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sdk(f: &MountFixture, ops: Vec<Value>) -> Vec<Value> {
    sdk_as(f, PASSWORD, ops)
}

/// The SDK logged in to the fixture's account with `password`.
fn sdk_as(f: &MountFixture, password: &str, ops: Vec<Value>) -> Vec<Value> {
    sdk_user(f, &f.email, password, false, ops)
}

/// The SDK as any user of the fixture's server (registered first with `register`).
fn sdk_user(
    f: &MountFixture,
    email: &str,
    password: &str,
    register: bool,
    ops: Vec<Value>,
) -> Vec<Value> {
    let port: u16 = f
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = run_node(
        "filen_sdk.js",
        &[],
        &json!({"port": port, "email": email, "password": password, "register": register,
            "ops": ops}),
    );
    let results = out["results"].as_array().unwrap().clone();
    for r in &results {
        assert!(r.get("error").is_none(), "an SDK call failed: {r}");
    }
    results
}

fn sdk_name(size: u64) -> String {
    format!("Größe {size} — ✓.bin")
}

#[test]
fn filen_mount_and_filen_sdk_read_each_others_files() {
    let mut f = MountFixture::filen();
    let folder = "Vom SDK — 日本語";
    let mut ops = vec![json!({"op": "mkdir", "path": format!("/{folder}")})];
    for (seed, size) in SIZES.iter().enumerate() {
        ops.push(
            json!({"op": "write", "path": format!("/{folder}/{}", sdk_name(*size)),
            "size": size, "seed": seed}),
        );
    }
    sdk(&f, ops);

    // Tamper with the last chunk of the 5 MiB + 3 file (the only 31-byte chunk on the server).
    let blobs = f.server_data().join("blobs").join("fc");
    let tail: Vec<_> = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::metadata(p).unwrap().len() == 3 + 28)
        .collect();
    assert_eq!(tail.len(), 1, "{tail:?}");
    let mut bytes = fs::read(&tail[0]).unwrap();
    bytes[20] ^= 0x40;
    fs::write(&tail[0], bytes).unwrap();

    // A new mount starts from the tree it kept and re-reads the server at once in the
    // background: wait (bounded) for the SDK's folder to appear.
    f.remount();
    let dir = f.path(folder);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the SDK's folder never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = SIZES.iter().map(|s| sdk_name(*s)).collect();
    expected.sort();
    assert_eq!(names, expected);
    for (seed, size) in SIZES.iter().enumerate() {
        let path = dir.join(sdk_name(*size));
        assert_eq!(fs::metadata(&path).unwrap().len(), *size);
        let want = sdk_content(*size, seed as u64);
        if *size == 5 * MIB + 3 {
            // The intact chunks read byte-exact; the tampered one is an I/O error.
            let mut file = fs::File::open(&path).unwrap();
            let mut head = vec![0u8; (5 * MIB) as usize];
            file.read_exact(&mut head).unwrap();
            assert!(
                head == want[..head.len()],
                "intact chunks of the tampered file"
            );
            let mut rest = Vec::new();
            file.seek(SeekFrom::Start(5 * MIB)).unwrap();
            let err = file.read_to_end(&mut rest).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        } else {
            let got = fs::read(&path).unwrap();
            assert_eq!(got.len(), want.len());
            assert!(got == want, "content of the {size}-byte file");
        }
    }

    // The mount writes; the SDK reads.
    let out = f.path("Vom Mount ✓");
    fs::create_dir(&out).unwrap();
    let written: Vec<(String, Vec<u8>)> = [0usize, 1, (MIB + 1) as usize, 3 * MIB as usize + 5]
        .iter()
        .enumerate()
        .map(|(i, &size)| (format!("geschrieben {size} ü.bin"), pattern(size, i as u8)))
        .collect();
    for (name, data) in &written {
        fs::write(out.join(name), data).unwrap();
    }
    // Replace one file's content, and rename another.
    let replaced = pattern(2 * MIB as usize + 7, 99);
    fs::write(out.join(&written[1].0), &replaced).unwrap();
    fs::rename(out.join(&written[2].0), out.join("umbenannt ß.bin")).unwrap();
    // Unmounting drains the upload queue.
    f.unmount();

    let base = "/Vom Mount ✓";
    let mut ops = vec![json!({"op": "readdir", "path": base})];
    let expect = [
        (written[0].0.clone(), written[0].1.clone()),
        (written[1].0.clone(), replaced),
        ("umbenannt ß.bin".to_string(), written[2].1.clone()),
        (written[3].0.clone(), written[3].1.clone()),
    ];
    for (name, _) in &expect {
        ops.push(json!({"op": "read", "path": format!("{base}/{name}")}));
    }
    let r = sdk(&f, ops);
    let mut names: Vec<String> = expect.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(r[0]["names"], json!(names));
    for (i, (name, data)) in expect.iter().enumerate() {
        assert_eq!(r[1 + i]["size"], json!(data.len()), "{name}");
        assert_eq!(r[1 + i]["sha256"], json!(sha256_hex(data)), "{name}");
    }
}

#[test]
fn after_a_password_change_old_files_read_and_new_ones_use_the_new_key() {
    const NEW: &str = "a brand-new pässword 2";
    let mut f = MountFixture::filen();
    let mounted = pattern((MIB + 9) as usize, 21);
    fs::write(f.path("vorher (Mount).bin"), &mounted).unwrap();
    f.unmount();
    sdk(
        &f,
        vec![
            json!({"op": "write", "path": "/vorher (SDK).bin", "size": 70_000, "seed": 3}),
            json!({"op": "changePassword", "current": PASSWORD, "new": NEW}),
        ],
    );

    // The old password no longer opens the account, and says so.
    let out = f
        .command()
        .args([
            "mount",
            "--backend",
            "filen",
            "--server",
            &f.url,
            "--email",
            &f.email,
        ])
        .arg(f.mnt.clone())
        .arg("--password-file")
        .arg(f.root.path().join("password"))
        .arg("--cache-dir")
        .arg(f.cache_dir())
        .arg("--foreground")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the old password mounted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("logging in to Filen"), "{err}");

    // The new one reads what both wrote under the old master key…
    f.set_password(NEW);
    f.mount();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !f.path("vorher (SDK).bin").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the SDK's file never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(fs::read(f.path("vorher (Mount).bin")).unwrap() == mounted);
    assert!(fs::read(f.path("vorher (SDK).bin")).unwrap() == sdk_content(70_000, 3));
    // … and writes with the new one.
    let after = pattern(300_000, 22);
    fs::write(f.path("nachher.bin"), &after).unwrap();
    f.unmount();

    let r = sdk_as(
        &f,
        NEW,
        vec![
            json!({"op": "read", "path": "/nachher.bin"}),
            json!({"op": "read", "path": "/vorher (Mount).bin"}),
        ],
    );
    assert_eq!(r[0]["sha256"], json!(sha256_hex(&after)));
    assert_eq!(r[1]["sha256"], json!(sha256_hex(&mounted)));

    // On the server, the new file's metadata opens with the newest master key only.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = veilfs::filen::session::FilenSession::login(&f.url, &f.email, NEW)
            .await
            .unwrap();
        let keys: Vec<String> = session.keys.iter().map(str::to_owned).collect();
        assert!(
            keys.len() >= 2,
            "the key list kept the old key: {}",
            keys.len()
        );
        let newest = session.keys.current().as_str().to_owned();
        let listing = session
            .api
            .post("dir/content", &json!({"uuid": session.base_folder}))
            .await
            .unwrap();
        let mut seen = 0;
        for item in listing["uploads"].as_array().unwrap() {
            let meta = item["metadata"].as_str().unwrap();
            let opens = |key: &str| fc::decrypt_metadata(meta, key).ok();
            let name = keys
                .iter()
                .find_map(|k| opens(k))
                .map(|m| serde_json::from_str::<Value>(&m).unwrap()["name"].clone());
            if name == Some(json!("nachher.bin")) {
                seen += 1;
                assert!(opens(&newest).is_some());
                for old in keys.iter().filter(|k| **k != newest) {
                    assert!(opens(old).is_none(), "the new file opens with an old key");
                }
            }
        }
        assert_eq!(seen, 1, "the new file in the listing");
    });
}

#[test]
fn folders_shared_with_the_account_read_byte_exact_under_shared_and_refuse_writes() {
    let mut f = MountFixture::filen();
    // A Filen app's first login gives the account its key pair, which sharing needs.
    sdk(&f, vec![]);
    let top = "/Projekt ✓";
    let files = [
        (format!("{top}/a.bin"), 0u64, 1u64),
        (format!("{top}/Größe.bin"), 2 * MIB + 5, 2),
        (format!("{top}/unter/tief.txt"), 1000, 3),
    ];
    let mut ops = vec![
        json!({"op": "mkdir", "path": top}),
        json!({"op": "mkdir", "path": format!("{top}/unter")}),
    ];
    for (path, size, seed) in &files {
        ops.push(json!({"op": "write", "path": path, "size": size, "seed": seed}));
    }
    ops.push(json!({"op": "share", "path": top, "email": f.email}));
    sdk_user(&f, "sharer@example.org", "sharer pw 1", true, ops);
    // Someone else's files that nobody shares with us.
    sdk_user(
        &f,
        "stranger@example.org",
        "stranger pw 1",
        true,
        vec![json!({"op": "write", "path": "/privat.bin", "size": 10, "seed": 9})],
    );

    f.remount();
    let shared = f.path("Shared");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !shared.join("Projekt ✓/unter/tief.txt").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the share never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let names: Vec<String> = fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["Projekt ✓"]);
    for (path, size, seed) in &files {
        let got = fs::read(shared.join(path.trim_start_matches('/'))).unwrap();
        assert!(got == sdk_content(*size, *seed), "{path}");
    }

    // Read-only: no write, create, removal or rename inside, and nothing reaches the server.
    let dir = shared.join("Projekt ✓");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(fs::write(dir.join("neu.txt"), b"x"), "create");
    erofs(
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("a.bin"))
            .map(drop),
        "open for writing",
    );
    erofs(fs::remove_file(dir.join("Größe.bin")), "unlink");
    erofs(fs::create_dir(dir.join("neu")), "mkdir");
    erofs(fs::rename(dir.join("a.bin"), dir.join("b.bin")), "rename");
    erofs(
        fs::rename(dir.join("a.bin"), f.path("mine.bin")),
        "move out",
    );
    erofs(fs::remove_dir_all(&shared), "remove Shared");
    let r = sdk_user(
        &f,
        "sharer@example.org",
        "sharer pw 1",
        false,
        vec![json!({"op": "readdir", "path": top})],
    );
    assert_eq!(r[0]["names"], json!(["Größe.bin", "a.bin", "unter"]));
}
