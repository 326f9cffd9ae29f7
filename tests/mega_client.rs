//! The MEGA client (`veilfs::mega`) against a real `veilfs serve` on loopback: login, the tree,
//! folders, uploads and downloads at chunk-boundary sizes, rename, move, replace, delete, quota,
//! saved sessions and action packets seen by a second client.

use serde_json::{Map, Value, json};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::Zeroizing;

use veilfs::crypto::mega as mc;
use veilfs::mega::client::UploadCommit;
use veilfs::mega::nodes::{DecryptedNode, NodeKey};
use veilfs::mega::session::{Credentials, Session};
use veilfs::mega::transfer::TransferOptions;
use veilfs::mega::wire::FetchNodes;
use veilfs::mega::{MegaClient, MegaError, NewContent, NewNode};
use veilfs::retry::RetryPolicy;
use veilfs::server::{self, ServerConfig};

const PASSWORD: &str = "correct horse battery stäple";

struct Fixture {
    _dir: tempfile::TempDir,
    server: server::RunningServer,
    email: String,
}

async fn fixture(email: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = server::start(config).await.unwrap();
    veilfs::mega::signup::create_account(&server.url(), email, PASSWORD, "test")
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        server,
        email: email.to_string(),
    }
}

fn credentials(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_string(),
        password: Zeroizing::new(password.to_string()),
        mfa_code: None,
    }
}

async fn login(f: &Fixture) -> MegaClient {
    MegaClient::login(
        &f.server.url(),
        &credentials(&f.email, PASSWORD),
        RetryPolicy::quick(),
        TransferOptions::default(),
    )
    .await
    .unwrap()
}

fn attrs(name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("n".into(), json!(name));
    m
}

fn root(nodes: &[DecryptedNode]) -> String {
    nodes
        .iter()
        .find(|n| n.wire.t == 2)
        .expect("a root node")
        .wire
        .h
        .clone()
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Downloads a file node through the client and decrypts it, checking the MAC.
async fn download(client: &MegaClient, node: &DecryptedNode) -> Vec<u8> {
    let info = client.download_info(&node.wire.h).await.unwrap();
    let Some(NodeKey::File { key, meta_mac }) = &node.key else {
        panic!("not a file node");
    };
    let mut data = client
        .fetch_range(&info.url, 0..info.size)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(data.len() as u64, info.size);
    mc::decrypt_file(key, &mut data, meta_mac).expect("MAC verifies");
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tree_transfers_and_changes() {
    let f = fixture("Alice@Example.com").await;
    let client = login(&f).await;
    assert_eq!(client.session().email, "alice@example.com");

    let (nodes, sn) = client.fetch_tree().await.unwrap();
    assert!(sn.is_some(), "f carries a sequence number");
    let kinds: Vec<i64> = nodes.iter().map(|n| n.wire.t).collect();
    for t in [2, 3, 4] {
        assert!(kinds.contains(&t), "root of type {t} present: {kinds:?}");
    }
    let root = root(&nodes);

    let folder = client.mkdir(&root, &attrs("Fotos ✓")).await.unwrap();
    assert_eq!(folder.name(), Some("Fotos ✓"));
    assert!(matches!(folder.key, Some(NodeKey::Folder(_))));

    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 131_071, 131_073, 1_048_575, (5 << 20) + 3];
    let mut uploaded = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let path = dir.path().join(format!("f{i}"));
        let data = pattern(size, i as u8);
        std::fs::write(&path, &data).unwrap();
        let progressed = Arc::new(AtomicU64::new(0));
        let p = progressed.clone();
        let node = client
            .upload(
                &folder.wire.h,
                &path,
                &attrs(&format!("файл {size}.bin")),
                None,
                move |n| {
                    p.fetch_add(n, Ordering::Relaxed);
                },
            )
            .await
            .unwrap();
        assert_eq!(progressed.load(Ordering::Relaxed), size as u64);
        assert_eq!(node.wire.s, Some(size as u64));
        assert_eq!(download(&client, &node).await, data, "size {size}");
        uploaded.push((node, data));
    }

    // A fresh fetch sees everything, decrypted with the right names and keys.
    let (nodes, _) = client.fetch_tree().await.unwrap();
    for (node, data) in &uploaded {
        let again = nodes.iter().find(|n| n.wire.h == node.wire.h).unwrap();
        assert_eq!(again.name(), node.name());
        assert_eq!(download(&client, again).await, *data);
    }

    // Rename, move, replace, delete.
    let (target, data) = &uploaded[2];
    let key = target.key.clone().unwrap();
    client
        .set_attributes(&target.wire.h, &key, &attrs("renamed.bin"))
        .await
        .unwrap();
    client.move_node(&target.wire.h, &root).await.unwrap();
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let moved = nodes.iter().find(|n| n.wire.h == target.wire.h).unwrap();
    assert_eq!(moved.name(), Some("renamed.bin"));
    assert_eq!(moved.wire.p, root);
    assert_eq!(download(&client, moved).await, *data);

    let path = dir.path().join("new");
    std::fs::write(&path, b"new content").unwrap();
    let replacement = client
        .upload(
            &root,
            &path,
            &attrs("renamed.bin"),
            Some(&target.wire.h),
            |_| {},
        )
        .await
        .unwrap();
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let same_name: Vec<_> = nodes
        .iter()
        .filter(|n| n.wire.p == root && n.name() == Some("renamed.bin"))
        .collect();
    assert_eq!(same_name.len(), 1, "a replaced file leaves one node");
    assert_eq!(same_name[0].wire.h, replacement.wire.h);

    client.delete(&folder.wire.h).await.unwrap();
    let (nodes, _) = client.fetch_tree().await.unwrap();
    for (node, _) in &uploaded[3..] {
        assert!(
            nodes.iter().all(|n| n.wire.h != node.wire.h),
            "deleted with its folder"
        );
    }
    assert!(matches!(
        client.delete(&folder.wire.h).await,
        Err(MegaError::Api(veilfs::mega::ErrorCode::NotFound))
    ));

    let quota = client.quota().await.unwrap();
    assert!(quota.total > 0);
    assert!(
        quota.used >= 11,
        "used {} counts the replacement",
        quota.used
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_are_bad_credentials() {
    let f = fixture("bob@example.com").await;
    for (email, password) in [
        ("bob@example.com", "wrong"),
        ("nobody@example.com", PASSWORD),
    ] {
        let err = MegaClient::login(
            &f.server.url(),
            &credentials(email, password),
            RetryPolicy::quick(),
            TransferOptions::default(),
        )
        .await
        .err()
        .expect("login fails");
        assert!(matches!(err, MegaError::BadCredentials), "{email}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_session_resumes_without_password_and_is_private() {
    let f = fixture("carol@example.com").await;
    let client = login(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.json");
    client.session().save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(PASSWORD));

    let resumed = MegaClient::resume(
        Session::load(&path).unwrap(),
        RetryPolicy::quick(),
        TransferOptions::default(),
    )
    .unwrap();
    let (nodes, _) = resumed.fetch_tree().await.unwrap();
    let folder = resumed
        .mkdir(&root(&nodes), &attrs("from resumed"))
        .await
        .unwrap();
    assert_eq!(folder.name(), Some("from resumed"));

    // After logout the session no longer works.
    let api_url = f.server.url();
    drop(client);
    let again = MegaClient::resume(
        Session::load(&path).unwrap(),
        RetryPolicy::quick(),
        TransferOptions::default(),
    )
    .unwrap();
    let session = Session::load(&path).unwrap();
    session.logout(again.api()).await.unwrap();
    let err = resumed
        .fetch_tree()
        .await
        .expect_err("revoked session fails");
    assert!(
        matches!(err, MegaError::Api(veilfs::mega::ErrorCode::Session)),
        "{err} at {api_url}"
    );
    assert!(Session::load(&dir.path().join("missing")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_sees_changes_through_action_packets() {
    let f = fixture("dave@example.com").await;
    let first = login(&f).await;
    let second = login(&f).await;
    let (nodes, sn) = second.fetch_tree().await.unwrap();
    let mut sn = sn.unwrap();
    let folder = first
        .mkdir(&root(&nodes), &attrs("made by first"))
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = false;
    while !seen && std::time::Instant::now() < deadline {
        let answer = second.poll_actions(&sn).await.unwrap();
        if let Some(packets) = answer.a {
            for packet in packets {
                if packet["a"] == "t" {
                    for node in packet["t"]["f"].as_array().unwrap() {
                        let node: veilfs::mega::wire::WireNode =
                            serde_json::from_value(node.clone()).unwrap();
                        let decrypted = second.decrypt(node);
                        if decrypted.wire.h == folder.wire.h {
                            assert_eq!(decrypted.name(), Some("made by first"));
                            seen = true;
                        }
                    }
                }
            }
            sn = answer.sn.expect("packets come with the next sn");
        } else if let Some(w) = answer.w {
            tokio::time::timeout(std::time::Duration::from_secs(3), second.wait(&w))
                .await
                .ok();
        }
    }
    assert!(seen, "the second client saw the first one's folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_creates_nested_folders_and_files_in_order() {
    let f = fixture("batch@example.com").await;
    let client = login(&f).await;
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = root(&nodes);
    let dir = tempfile::tempdir().unwrap();
    let mut batch = vec![NewNode {
        parent: None,
        content: NewContent::Folder,
        attributes: attrs("outer"),
    }];
    batch.push(NewNode {
        parent: Some(0),
        content: NewContent::Folder,
        attributes: attrs("inner ✓"),
    });
    let mut contents = Vec::new();
    for (i, size) in [0usize, 1, 300_000].into_iter().enumerate() {
        let data = pattern(size, i as u8);
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, &data).unwrap();
        let (key, uploaded) = client.upload_data(&path, |_| {}).await.unwrap();
        batch.push(NewNode {
            parent: Some(1),
            content: NewContent::File { key, uploaded },
            attributes: attrs(&format!("file {i}")),
        });
        contents.push(data);
    }
    let created = client.put_nodes(&root, batch).await.unwrap();
    assert_eq!(created.len(), 5);
    assert_eq!(created[0].wire.p, root);
    assert_eq!(created[1].wire.p, created[0].wire.h);
    assert_eq!(created[1].attributes["n"], json!("inner ✓"));
    for (i, data) in contents.iter().enumerate() {
        let node = &created[2 + i];
        assert_eq!(node.wire.p, created[1].wire.h);
        assert_eq!(node.attributes["n"], json!(format!("file {i}")));
        if !data.is_empty() {
            assert!(download(&client, node).await == *data);
        }
    }
    // What a fresh login sees is the same tree.
    let (again, _) = login(&f).await.fetch_tree().await.unwrap();
    let inner = again
        .iter()
        .find(|n| n.wire.h == created[1].wire.h)
        .unwrap();
    assert_eq!(inner.wire.p, created[0].wire.h);
    assert_eq!(again.iter().filter(|n| n.wire.p == inner.wire.h).count(), 3);

    // A batch with a token already used creates nothing.
    let path = dir.path().join("again");
    std::fs::write(&path, b"x").unwrap();
    let (key, uploaded) = client.upload_data(&path, |_| {}).await.unwrap();
    let twice = vec![
        NewNode {
            parent: None,
            content: NewContent::Folder,
            attributes: attrs("never"),
        },
        NewNode {
            parent: None,
            content: NewContent::File {
                key: key.clone(),
                uploaded: uploaded.clone(),
            },
            attributes: attrs("a"),
        },
        NewNode {
            parent: None,
            content: NewContent::File { key, uploaded },
            attributes: attrs("b"),
        },
    ];
    assert!(client.put_nodes(&root, twice).await.is_err());
    let (after, _) = client.fetch_tree().await.unwrap();
    assert_eq!(after.len(), again.len());
}

/// Many clients writing at once: every command is answered (the server's store once deadlocked
/// when several durable writes waited for the disk together).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_writers_are_all_answered() {
    let f = fixture("busy@example.com").await;
    let client = Arc::new(login(&f).await);
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = root(&nodes);
    let work = async {
        let tasks: Vec<_> = (0..24)
            .map(|t| {
                let client = client.clone();
                let root = root.clone();
                tokio::spawn(async move {
                    for i in 0..15 {
                        client
                            .mkdir(&root, &attrs(&format!("t{t} d{i}")))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    };
    // A generous bound that only a hang exceeds; it is not a speed assertion.
    tokio::time::timeout(std::time::Duration::from_secs(120), work)
        .await
        .expect("the server stopped answering");
    let (after, _) = client.fetch_tree().await.unwrap();
    assert_eq!(after.len(), nodes.len() + 24 * 15);
}

/// `commit_uploads`: many files in one request, each succeeding or failing on its own; a
/// replaced node goes only when its replacement exists.
#[tokio::test]
async fn a_commit_batch_makes_each_file_on_its_own_and_replaces_only_after_success() {
    let f = fixture("commits@example.com").await;
    let client = login(&f).await;
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = root(&nodes);
    let folder = client.mkdir(&root, &attrs("A")).await.unwrap().wire.h;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        path
    };
    let old = client
        .upload(
            &root,
            &write("old", b"old content"),
            &attrs("doc"),
            None,
            |_| {},
        )
        .await
        .unwrap()
        .wire
        .h;
    let keep = client
        .upload(
            &root,
            &write("keep", b"keep me"),
            &attrs("kept"),
            None,
            |_| {},
        )
        .await
        .unwrap()
        .wire
        .h;
    let new_doc = pattern(200_000, 3);
    let (k0, u0) = client
        .upload_data(&write("n0", &new_doc), |_| {})
        .await
        .unwrap();
    let (k2, u2) = client
        .upload_data(&write("n2", b"into A"), |_| {})
        .await
        .unwrap();
    let (a0, a1, a2) = (attrs("doc"), attrs("kept"), attrs("in A ✓"));
    let items = [
        UploadCommit {
            parent: &root,
            key: &k0,
            uploaded: &u0,
            attributes: &a0,
            replaces: Some(&old),
        },
        // The same completion token again: the server refuses it, so "kept" must stay.
        UploadCommit {
            parent: &root,
            key: &k0,
            uploaded: &u0,
            attributes: &a1,
            replaces: Some(&keep),
        },
        UploadCommit {
            parent: &folder,
            key: &k2,
            uploaded: &u2,
            attributes: &a2,
            replaces: None,
        },
    ];
    let results = client.commit_uploads(&items).await.unwrap();
    assert_eq!(results.len(), 3);
    let doc = results[0].as_ref().expect("the first file is committed");
    assert!(results[1].is_err(), "a reused token must fail on its own");
    let in_a = results[2].as_ref().expect("the third file is committed");
    assert_eq!(in_a.wire.p, folder);
    // Several files of one folder go in one `p`; each answer is its own file's.
    let (k3, u3) = client
        .upload_data(&write("n3", b"three"), |_| {})
        .await
        .unwrap();
    let (k4, u4) = client
        .upload_data(&write("n4", b"four"), |_| {})
        .await
        .unwrap();
    let (a3, a4) = (attrs("three"), attrs("four"));
    let together =
        [(&k3, &u3, &a3), (&k4, &u4, &a4)].map(|(key, uploaded, attributes)| UploadCommit {
            parent: &folder,
            key,
            uploaded,
            attributes,
            replaces: None,
        });
    let results = client.commit_uploads(&together).await.unwrap();
    let names: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap().name().unwrap().to_string())
        .collect();
    assert_eq!(names, ["three", "four"]);

    let (after, _) = login(&f).await.fetch_tree().await.unwrap();
    let names_in = |parent: &str| {
        let mut v: Vec<String> = after
            .iter()
            .filter(|n| n.wire.p == parent)
            .filter_map(|n| n.name().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names_in(&root), ["A", "doc", "kept"]);
    assert_eq!(names_in(&folder), ["four", "in A ✓", "three"]);
    assert!(
        after.iter().all(|n| n.wire.h != old),
        "the replaced node is gone"
    );
    assert!(
        after.iter().any(|n| n.wire.h == keep),
        "the node whose replacement failed stays"
    );
    assert!(download(&client, doc).await == new_doc);
}

/// The tree as `f` was read before answers were parsed straight into typed nodes: the whole
/// answer as a JSON value, converted, then every share key learnt before any node is decrypted.
async fn fetch_tree_via_json_value(
    client: &MegaClient,
    command: Value,
    public_root: Option<&str>,
) -> (Vec<DecryptedNode>, Option<String>) {
    let answer = client.api().call(command).await.unwrap();
    let fetched: FetchNodes = serde_json::from_value(answer).unwrap();
    let mut keys = client.session().key_ring().unwrap();
    keys.add_outgoing_shares(&fetched.ok);
    for node in &fetched.f {
        keys.learn_incoming_share(node);
    }
    let mut nodes: Vec<DecryptedNode> = fetched.f.into_iter().map(|n| keys.decrypt(n)).collect();
    for node in nodes
        .iter_mut()
        .filter(|n| Some(n.wire.h.as_str()) == public_root)
    {
        node.wire.t = 2;
        node.wire.p = String::new();
    }
    (nodes, fetched.sn)
}

/// Field by field (a decrypted node has no `PartialEq`): wire node, key, attributes.
fn assert_same_nodes(got: &[DecryptedNode], want: &[DecryptedNode]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.wire, w.wire);
        assert_eq!(g.key, w.key, "key of {}", w.wire.h);
        assert_eq!(g.attributes, w.attributes, "attributes of {}", w.wire.h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_fetch_gives_the_same_nodes_as_the_json_value_path() {
    let f = fixture("parse@example.com").await;
    let client = login(&f).await;
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = root(&nodes);

    let folder = client.mkdir(&root, &attrs("Ordner ✓")).await.unwrap();
    let sub = client
        .mkdir(&folder.wire.h, &attrs("サブ \"quoted\" \\ back"))
        .await
        .unwrap();
    let mut shared = vec![folder.clone(), sub.clone()];
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["файл.bin", "emoji 🎉.txt", "plain.txt"].iter().enumerate() {
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, pattern(1000 * i + 7, i as u8)).unwrap();
        let parent = if i == 0 { &folder.wire.h } else { &sub.wire.h };
        let file = client
            .upload(parent, &path, &attrs(name), None, |_| {})
            .await
            .unwrap();
        shared.push(file);
    }
    // Nodes whose key does not open their attributes: listed without a key.
    let path = dir.path().join("keyless");
    std::fs::write(&path, b"sealed for nobody").unwrap();
    let (_, data) = client.upload_data(&path, |_| {}).await.unwrap();
    for (h, t) in [(data.token.as_str(), 0), ("xxxxxxxx", 1)] {
        let key = mc::b64_encode(&vec![7u8; if t == 0 { 32 } else { 16 }]);
        let a = mc::encrypt_attributes(&[9; 16], &attrs("never seen"));
        client
            .api()
            .call(json!({"a": "p", "t": sub.wire.h, "n": [{"h": h, "t": t, "a": a, "k": key}]}))
            .await
            .unwrap();
    }
    // An outgoing share (the folder's key in `f`'s `ok` list) with a public link on it.
    let share = mc::generate_folder_key();
    let master = client.session().master_key().unwrap();
    let h = &folder.wire.h;
    let handles: Vec<&str> = shared.iter().map(|n| n.wire.h.as_str()).collect();
    let mut wrapped = Vec::new();
    for (j, node) in shared.iter().enumerate() {
        let key = node.key.as_ref().unwrap().to_bytes();
        let key = mc::b64_encode(&mc::ecb_encrypt(&share, &key).unwrap());
        wrapped.extend([json!(0), json!(j), json!(key)]);
    }
    client
        .api()
        .call(json!({
            "a": "s2", "n": h, "s": [{"u": "EXP", "r": 0}],
            "ok": mc::b64_encode(&mc::ecb_encrypt(&master, &share).unwrap()),
            "ha": mc::b64_encode(&mc::share_key_auth(&master, h).unwrap()),
            "cr": [[h], handles, wrapped],
        }))
        .await
        .unwrap();
    let ph = client.api().call(json!({"a": "l", "n": h})).await.unwrap();
    let ph = ph.as_str().unwrap().to_string();

    let command = json!({"a": "f", "c": 1, "r": 1});
    let (want, want_sn) = fetch_tree_via_json_value(&client, command, None).await;
    let (got, got_sn) = client.fetch_tree().await.unwrap();
    assert_same_nodes(&got, &want);
    assert_eq!(got_sn, want_sn);
    assert!(want_sn.is_some());
    let names: Vec<&str> = got.iter().filter_map(DecryptedNode::name).collect();
    for name in [
        "Ordner ✓",
        "サブ \"quoted\" \\ back",
        "файл.bin",
        "emoji 🎉.txt",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let keyless = got
        .iter()
        .filter(|n| n.wire.t < 2 && n.key.is_none())
        .count();
    assert_eq!(keyless, 2);
    assert!(
        client.share_key(h).is_some(),
        "the outgoing share key was learnt"
    );

    // The tree nodes the mount builds from it: converted node by node, the same.
    let (tree_nodes, _) = client
        .fetch_tree_map(veilfs::mega::remote::to_tree_node)
        .await
        .unwrap();
    let want_tree: Vec<_> = want
        .into_iter()
        .filter_map(veilfs::mega::remote::to_tree_node)
        .collect();
    assert_eq!(tree_nodes, want_tree);
    assert_eq!(tree_nodes.len(), got.len());

    // The folder link: its `f` has the folder as root.
    let link = MegaClient::open_public_folder(
        &f.server.url(),
        &ph,
        &share,
        RetryPolicy::quick(),
        TransferOptions::default(),
    )
    .await
    .unwrap();
    let command = json!({"a": "f", "c": 1, "r": 1});
    let (want, want_sn) = fetch_tree_via_json_value(&link, command, Some(h)).await;
    let (got, got_sn) = link.fetch_tree().await.unwrap();
    assert_same_nodes(&got, &want);
    assert_eq!(got_sn, want_sn);
    assert_eq!(got.iter().filter(|n| n.wire.t == 2).count(), 1);
    assert!(got.iter().any(|n| n.name() == Some("emoji 🎉.txt")));
}

/// What `fetch_tree_streamed` handed over: the nodes in order, and after how many of them
/// each folder was declared complete.
async fn fetch_streamed(client: &MegaClient) -> (Vec<DecryptedNode>, Vec<(usize, String)>) {
    let mut nodes = Vec::new();
    let mut claims = Vec::new();
    client
        .fetch_tree_streamed(Some, |part, complete| {
            nodes.extend(part);
            claims.extend(complete.into_iter().map(|h| (nodes.len(), h)));
        })
        .await
        .unwrap();
    (nodes, claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_fetch_declares_a_folder_complete_only_after_all_its_children() {
    let f = fixture("stream@example.com").await;
    let client = login(&f).await;
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = root(&nodes);
    // root → empty, b → (b1 empty, b2 → file), c → file
    let empty = client.mkdir(&root, &attrs("empty")).await.unwrap();
    let b = client.mkdir(&root, &attrs("b")).await.unwrap();
    let c = client.mkdir(&root, &attrs("c")).await.unwrap();
    client.mkdir(&b.wire.h, &attrs("b1")).await.unwrap();
    let b2 = client.mkdir(&b.wire.h, &attrs("b2")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    for parent in [&b2.wire.h, &c.wire.h] {
        client
            .upload(parent, &path, &attrs("f.txt"), None, |_| {})
            .await
            .unwrap();
    }

    let (want, _) = client.fetch_tree().await.unwrap();
    let (got, claims) = fetch_streamed(&client).await;
    assert_same_nodes(&got, &want);
    for (seen, folder) in &claims {
        assert!(
            got[..*seen]
                .iter()
                .any(|n| &n.wire.h == folder && n.wire.t != 0),
            "{folder} declared complete before it was listed, or is not a folder"
        );
        let late: Vec<_> = got[*seen..]
            .iter()
            .filter(|n| &n.wire.p == folder)
            .collect();
        assert!(
            late.is_empty(),
            "{folder} declared complete before {late:?}"
        );
    }
    let claimed: Vec<&str> = claims.iter().map(|(_, h)| h.as_str()).collect();
    assert!(claimed.contains(&root.as_str()), "{claimed:?}");
    // Listed in the root's group, with a group after it (b2's) whichever the order: an empty
    // folder is known to be empty before the end.
    assert!(claimed.contains(&empty.wire.h.as_str()), "{claimed:?}");
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), claimed.len(), "a folder declared twice");
}

/// A TCP relay in front of the server that counts the API requests (`POST /cs`) passing
/// through it and holds each for 100 ms. Returns its URL.
fn counting_relay(server_url: &str, api_requests: Arc<AtomicU64>) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let upstream = server_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(&upstream).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let counter = api_requests.clone();
            std::thread::spawn(move || {
                // Keeps the last bytes of each read, so a request line split across two
                // reads is still seen once.
                let (mut buf, mut tail) = ([0u8; 65536], Vec::new());
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    let hits = tail.windows(8).filter(|w| w == b"POST /cs").count();
                    counter.fetch_add(hits as u64, Ordering::SeqCst);
                    if hits > 0 {
                        // A slow link: what starts meanwhile has time to queue, however busy
                        // the machine running the test.
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let keep = tail.len().min(7);
                    tail.drain(..tail.len() - keep);
                }
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    url
}

/// Uploads that start together ask for their upload URLs (`u`) in a few requests, not one
/// each; each still gets a URL of its own, and an upload abandoned while it waits leaves the
/// others to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_starting_together_share_their_url_requests() {
    const FILES: usize = 32;
    let f = fixture("urls@example.com").await;
    let api_requests = Arc::new(AtomicU64::new(0));
    let url = counting_relay(&f.server.url(), api_requests.clone());
    let client = Arc::new(
        MegaClient::login(
            &url,
            &credentials(&f.email, PASSWORD),
            RetryPolicy::quick(),
            TransferOptions::default(),
        )
        .await
        .unwrap(),
    );
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = root(&nodes);
    let dir = tempfile::tempdir().unwrap();
    let contents: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(100 + i * 37, i as u8)).collect();
    let paths: Vec<_> = contents
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, data).unwrap();
            path
        })
        .collect();

    let before = api_requests.load(Ordering::SeqCst);
    let tasks: Vec<_> = paths
        .iter()
        .map(|path| {
            let (client, path) = (client.clone(), path.clone());
            tokio::spawn(async move { client.upload_data(&path, |_| {}).await })
        })
        .collect();
    // Abandoned at once: their commands may be in a request already, or still waiting.
    let abandoned: Vec<_> = (0..4)
        .map(|i| {
            let (client, path) = (client.clone(), paths[i].clone());
            tokio::spawn(async move { client.upload_data(&path, |_| {}).await })
        })
        .collect();
    for task in abandoned {
        task.abort();
    }
    let mut uploads = Vec::new();
    for task in tasks {
        uploads.push(task.await.unwrap().unwrap());
    }
    let requests = api_requests.load(Ordering::SeqCst) - before;
    assert!(
        requests <= (FILES / 4) as u64,
        "{requests} API requests for {FILES} upload URLs"
    );

    let names: Vec<_> = (0..FILES).map(|i| attrs(&format!("f{i}"))).collect();
    let items: Vec<_> = uploads
        .iter()
        .zip(&names)
        .map(|((key, uploaded), name)| UploadCommit {
            parent: &root,
            key,
            uploaded,
            attributes: name,
            replaces: None,
        })
        .collect();
    let results = client.commit_uploads(&items).await.unwrap();
    for (i, result) in results.iter().enumerate() {
        let node = result.as_ref().expect("committed");
        assert_eq!(download(&client, node).await, contents[i], "file {i}");
    }
}
