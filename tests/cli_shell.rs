//! The shell commands against a real `veilfs serve`: `login`, `ls`, `get`, `put`, `mkdir`, `mv`,
//! `rm`, `sessions`, `logout`, `link`, exit codes, completions and the man page.

mod common;

use std::fs;
use std::path::Path;

use common::mount::pattern;
use common::shell::{Shell, assert_ok};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Chunk-boundary sizes: empty, one byte, the first chunk (128 KiB) ±1, past the 1 MiB chunks,
/// and past one upload POST (8 MiB).
const SIZES: [usize; 7] = [0, 1, 131_071, 131_072, 131_073, 1_048_577, 8_388_609];

#[test]
fn put_and_get_are_byte_exact_at_chunk_boundaries_and_recursive() {
    let sh = Shell::new();
    let tree = sh.local("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    for (i, size) in SIZES.iter().enumerate() {
        fs::write(tree.join(format!("f{size}")), pattern(*size, i as u8)).unwrap();
    }
    fs::write(tree.join("sub/deeper/note.txt"), b"deep").unwrap();

    // A single file to a new path, and back.
    let single = tree.join("f1048577");
    sh.ok(&["put", p(&single), "/one.bin"]);
    let back = sh.local("one.bin");
    sh.ok(&["get", "/one.bin", p(&back)]);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&single).unwrap());

    // The whole tree into a new folder, listed, and back into an existing local folder.
    sh.ok(&["put", "-r", p(&tree), "/up"]);
    let listing = sh.ok(&["ls", "-l", "/up"]);
    for size in SIZES {
        assert!(
            listing.lines().any(|l| l.starts_with('-')
                && l.contains(&format!(" {size}  "))
                && l.ends_with(&format!("f{size}"))),
            "{size} missing from:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('d') && l.ends_with("sub/"))
    );
    let recursive = sh.ok(&["ls", "-R", "/up"]);
    assert!(
        recursive.contains("/up/sub/deeper:\nnote.txt\n"),
        "{recursive}"
    );

    let out = sh.local("out");
    fs::create_dir_all(&out).unwrap();
    sh.ok(&["get", "-r", "/up", p(&out)]);
    for size in SIZES {
        let name = format!("f{size}");
        assert_eq!(
            fs::read(out.join("up").join(&name)).unwrap(),
            fs::read(tree.join(&name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        fs::read(out.join("up/sub/deeper/note.txt")).unwrap(),
        b"deep"
    );
    let leftovers: Vec<_> = fs::read_dir(out.join("up"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("veilfs-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Putting again replaces: still one node of the name, with the new content.
    fs::write(&single, b"replaced").unwrap();
    sh.ok(&["put", p(&single), "/one.bin"]);
    let root = sh.ok(&["ls", "/"]);
    assert_eq!(
        root.lines().filter(|l| *l == "one.bin").count(),
        1,
        "{root}"
    );
    let again = sh.local("again.bin");
    sh.ok(&["get", "/one.bin", p(&again)]);
    assert_eq!(fs::read(&again).unwrap(), b"replaced");
}

#[test]
fn folder_commands_and_exit_codes() {
    let sh = Shell::new();
    sh.ok(&["mkdir", "-p", "/a/b/c"]);
    sh.ok(&["mkdir", "-p", "/a/b/c"]);
    assert_eq!(sh.run(&["mkdir", "/a"]).status.code(), Some(1));
    assert_eq!(sh.run(&["mkdir", "/x/y"]).status.code(), Some(1));
    let f = sh.local("f.txt");
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(&f, b"hello").unwrap();
    // A trailing slash names a folder: never a file of that name.
    let out = sh.run(&["put", p(&f), "/missing/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/missing/: no such folder"));
    sh.ok(&["put", p(&f), "/a/b"]);
    sh.ok(&["mv", "/a/b/f.txt", "/a/renamed.txt"]);
    sh.ok(&["mv", "/a/b", "/"]);
    assert_eq!(sh.ok(&["ls", "/a"]), "renamed.txt\n");
    assert_eq!(sh.ok(&["ls", "/b"]), "c/\n");

    // A folder needs -r; a missing path fails; nothing is deleted by a failing rm.
    let out = sh.run(&["rm", "/b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a folder (use -r)"));
    let out = sh.run(&["rm", "-r", "/b", "/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nope: no such file or folder"));
    assert_eq!(sh.ok(&["ls", "/b"]), "c/\n");
    sh.ok(&["rm", "-r", "/b", "/a/renamed.txt"]);
    assert_eq!(sh.ok(&["ls", "/"]), "a/\n");

    // Usage errors exit 2: clap's own, and no saved session to act on.
    assert_eq!(sh.run(&["ls", "-Z"]).status.code(), Some(2));
    assert_eq!(sh.run_in("elsewhere", &["ls"]).status.code(), Some(2));

    let bash = sh.ok(&["completions", "bash"]);
    assert!(
        bash.contains("_veilfs()") && bash.contains("sessions"),
        "{bash}"
    );
    let man = sh.ok(&["man"]);
    assert!(man.contains(".TH veilfs 1"), "{man}");
    let pages = sh.local("man");
    sh.ok(&["man", "--out-dir", p(&pages)]);
    let ls_page = fs::read_to_string(pages.join("veilfs-ls.1")).unwrap();
    assert!(
        ls_page.contains(".TH veilfs-ls 1") && ls_page.contains("Long listing"),
        "{ls_page}"
    );
}

#[test]
fn sessions_are_listed_revoked_and_logged_out() {
    let sh = Shell::new();
    assert_ok(&sh.login("laptop"));
    let list = sh.ok(&["sessions"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{list}");
    let other = rows
        .iter()
        .find(|r| !r.contains(" yes "))
        .expect("the laptop's session")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    sh.ok(&["sessions", "--revoke", &other]);
    assert_eq!(sh.ok(&["sessions"]).lines().count(), 2);
    // The laptop's saved session no longer works, with a clear word on what to do.
    let out = sh.run_in("laptop", &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("veilfs login"));

    sh.ok(&["logout"]);
    assert_eq!(sh.run(&["ls"]).status.code(), Some(2));
    let saved: Vec<_> = fs::read_dir(sh.home("home").join("config/veilfs/sessions"))
        .unwrap()
        .collect();
    assert!(saved.is_empty());
}

#[test]
fn public_links_download_files_and_folders() {
    let sh = Shell::new();
    let tree = sh.local("shared");
    fs::create_dir_all(tree.join("inner")).unwrap();
    let big = pattern(300_000, 3);
    fs::write(tree.join("big.bin"), &big).unwrap();
    fs::write(tree.join("inner/small.txt"), b"small").unwrap();
    sh.ok(&["put", "-r", p(&tree), "/"]);

    let link = sh.ok(&["link", "/shared/big.bin"]).trim().to_string();
    assert!(
        link.starts_with(&format!("{}/file/", sh.url.trim_end_matches('/'))),
        "{link}"
    );
    // A file link, in both forms, opened by someone without the account.
    let got = sh.local("got");
    fs::create_dir_all(&got).unwrap();
    assert_ok(&sh.run_in("stranger", &["get", &link, p(&got)]));
    assert_eq!(fs::read(got.join("big.bin")).unwrap(), big);
    let (base, rest) = link.split_once("/file/").unwrap();
    let (ph, key) = rest.split_once('#').unwrap();
    let legacy = format!("{base}/#!{ph}!{key}");
    let legacy_out = sh.local("legacy.bin");
    assert_ok(&sh.run_in("stranger", &["get", &legacy, p(&legacy_out)]));
    assert_eq!(fs::read(&legacy_out).unwrap(), big);
    // The same link again: same handle.
    assert_eq!(sh.ok(&["link", "/shared/big.bin"]).trim(), link);

    // Without the key, or with another file's key: a clear error, nothing written.
    let out = sh.run_in("stranger", &["get", &format!("{base}/file/{ph}"), p(&got)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no key"));
    let wrong = veilfs::crypto::mega::b64_encode(&[5u8; 32]);
    let out = sh.run_in(
        "stranger",
        &[
            "get",
            &format!("{base}/file/{ph}#{wrong}"),
            p(&sh.local("wrong.bin")),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not open"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sh.local("wrong.bin").exists());

    // A folder link brings the whole subtree.
    let folder = sh.ok(&["link", "/shared"]).trim().to_string();
    assert!(folder.contains("/folder/"), "{folder}");
    let tree_out = sh.local("tree-out");
    fs::create_dir_all(&tree_out).unwrap();
    assert_ok(&sh.run_in("stranger", &["get", &folder, p(&tree_out)]));
    assert_eq!(fs::read(tree_out.join("shared/big.bin")).unwrap(), big);
    assert_eq!(
        fs::read(tree_out.join("shared/inner/small.txt")).unwrap(),
        b"small"
    );
    let (fbase, frest) = folder.split_once("/folder/").unwrap();
    let (fph, _) = frest.split_once('#').unwrap();
    let wrong16 = veilfs::crypto::mega::b64_encode(&[5u8; 16]);
    let out = sh.run_in(
        "stranger",
        &[
            "get",
            &format!("{fbase}/#F!{fph}!{wrong16}"),
            p(&sh.local("nowhere")),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not open this folder"));
}

#[test]
fn an_interrupted_put_resumes_and_makes_one_node() {
    let sh = Shell::new();
    // Several upload POSTs (8 MiB each), more than run at once.
    let data = pattern(48 << 20, 9);
    let local = sh.local("big.bin");
    fs::create_dir_all(local.parent().unwrap()).unwrap();
    fs::write(&local, &data).unwrap();
    let journal_dir = sh.home("home").join("state/veilfs/uploads");

    let mut put = sh
        .command_in("home")
        .args(["put", p(&local), "/big.bin"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once the server holds part of the file, freeze the server so the put cannot finish,
    // then kill the put: an interruption in mid-upload, whatever the machine's speed.
    let server_pid = sh.server.id() as i32;
    loop {
        if let Some(status) = put.try_wait().unwrap() {
            panic!("put finished ({status}) before it could be interrupted");
        }
        let sent = fs::read_dir(&journal_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| fs::read_to_string(e.unwrap().path()).ok())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|j| j["done"].as_array().is_some_and(|d| !d.is_empty()));
        if sent {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    unsafe { libc::kill(server_pid, libc::SIGSTOP) };
    put.kill().unwrap();
    put.wait().unwrap();
    unsafe { libc::kill(server_pid, libc::SIGCONT) };
    assert_eq!(
        sh.ok(&["ls", "/"]),
        "",
        "no node before the upload is complete"
    );

    let out = sh.run(&["put", p(&local), "/big.bin"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resuming the upload"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sh.ok(&["ls", "/"]), "big.bin\n");
    let back = sh.local("back.bin");
    sh.ok(&["get", "/big.bin", p(&back)]);
    assert!(fs::read(&back).unwrap() == data, "content differs");
    let journals = fs::read_dir(&journal_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(journals, 0, "journal left");
}

/// A node whose key the account cannot open (another client's bug, a share whose key never
/// arrived) is listed under its stable placeholder name with its size, and downloading it is a
/// clear failure that leaves nothing behind.
#[test]
fn a_node_the_account_cannot_open_is_listed_and_refused() {
    let sh = Shell::new();
    let data = pattern(200_000, 6);
    let local = sh.local("opaque.bin");
    fs::create_dir_all(local.parent().unwrap()).unwrap();
    fs::write(&local, &data).unwrap();
    let sessions = sh.home("home").join("config/veilfs/sessions");
    let session_file = fs::read_dir(&sessions)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.block_on(async {
        use veilfs::mega::client::MegaClient;
        let session = veilfs::mega::session::Session::load(&session_file).unwrap();
        let client = MegaClient::resume(session, Default::default(), Default::default()).unwrap();
        let (nodes, _) = client.fetch_tree().await.unwrap();
        let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();
        let (_, uploaded) = client.upload_data(&local, |_| {}).await.unwrap();
        // The content is real, but the key stored with it is not the one it was encrypted with.
        let bogus = veilfs::crypto::random_array::<32>();
        let mut attrs = serde_json::Map::new();
        attrs.insert("n".into(), serde_json::json!("secret.bin"));
        let a =
            veilfs::crypto::mega::encrypt_attributes(&veilfs::crypto::random_array::<16>(), &attrs);
        let answer = client
            .api()
            .call(serde_json::json!({"a": "p", "t": root, "n": [{
                "h": uploaded.token, "t": 0, "a": a,
                "k": veilfs::crypto::mega::b64_encode(&bogus),
            }]}))
            .await
            .unwrap();
        answer["f"][0]["h"].as_str().unwrap().to_string()
    });
    let placeholder = format!("undecryptable-{handle}");
    let listing = sh.ok(&["ls", "-l", "/"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('-') && l.contains(" 200000  ") && l.ends_with(&placeholder)),
        "{listing}"
    );
    let out_dir = sh.local("out");
    fs::create_dir_all(&out_dir).unwrap();
    let out = sh.run(&["get", &format!("/{placeholder}"), p(&out_dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        // The key does not open the attributes, so it is not the node's key: refused before
        // any byte is fetched.
        String::from_utf8_lossy(&out.stderr).contains("holds no key for this node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_dir(&out_dir).unwrap().count(),
        0,
        "nothing left behind"
    );
}
