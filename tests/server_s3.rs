//! `veilfs serve` with file content in S3, against a real Garage node on loopback that
//! scripts/test.sh starts (scripts/garage.sh) and describes in `VEILFS_GARAGE_*` variables:
//! the megajs round trip, our own client at chunk-boundary sizes with ranged reads, an
//! aborted upload that leaves nothing visible, and the bucket holding only ciphertext.
//!
//! Without those variables the tests say so and pass, unless `VEILFS_REQUIRE_GARAGE=1` (set
//! by scripts/test.sh, hence in CI), which makes a missing Garage a failure.

mod common;
#[path = "support/megajs_round_trip.rs"]
mod megajs_round_trip;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

use veilfs::crypto::mega as mc;
use veilfs::mega::MegaClient;
use veilfs::mega::nodes::{DecryptedNode, NodeKey};
use veilfs::mega::session::Credentials;
use veilfs::mega::transfer::TransferOptions;
use veilfs::retry::RetryPolicy;
use veilfs::server::{self, RunningServer, S3Location, ServerConfig};

/// The Garage node scripts/garage.sh started.
struct Garage {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

/// The Garage described by the environment; `None` (test skipped, said on stderr) when there
/// is none, unless one is required.
fn garage() -> Option<Garage> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("VEILFS_GARAGE_ENDPOINT"),
        var("VEILFS_GARAGE_BUCKET"),
        var("VEILFS_GARAGE_KEY_ID"),
        var("VEILFS_GARAGE_SECRET"),
    ) {
        (Some(endpoint), Some(bucket), Some(key_id), Some(secret)) => Some(Garage {
            endpoint,
            region: var("VEILFS_GARAGE_REGION").unwrap_or_else(|| "garage".into()),
            bucket,
            key_id,
            secret,
        }),
        _ => {
            assert!(
                var("VEILFS_REQUIRE_GARAGE").as_deref() != Some("1"),
                "VEILFS_REQUIRE_GARAGE=1 but VEILFS_GARAGE_* are not set: run scripts/test.sh, \
                 or `eval \"$(scripts/garage.sh start DIR)\"` first"
            );
            eprintln!("no Garage (VEILFS_GARAGE_* unset): S3 test not run");
            None
        }
    }
}

impl Garage {
    /// A fresh key prefix, so tests sharing the bucket see only their own objects.
    fn location(&self) -> S3Location {
        S3Location {
            bucket: self.bucket.clone(),
            prefix: format!("test-{}", hex::encode(veilfs::crypto::random_array::<6>())),
            settings: vec![
                ("aws_endpoint".into(), self.endpoint.clone()),
                ("aws_region".into(), self.region.clone()),
                ("aws_access_key_id".into(), self.key_id.clone()),
                ("aws_secret_access_key".into(), self.secret.clone()),
            ],
        }
    }

    /// A client of our own to look into the bucket.
    fn inspector(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Every object under `prefix`: its key below the prefix and its content.
    async fn objects(&self, prefix: &str) -> Vec<(String, Bytes)> {
        let store = self.inspector();
        let metas: Vec<_> = store
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for meta in metas {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let key = meta.location.as_ref()[prefix.len() + 1..].to_string();
            out.push((key, bytes));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

async fn start(data: &Path, location: &S3Location) -> RunningServer {
    let mut config = ServerConfig::new(data.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.wait_timeout = Duration::from_secs(20);
    config.s3 = Some(location.clone());
    server::start(config).await.unwrap()
}

fn assert_no_plaintext(what: &str, bytes: &[u8], needles: &[Vec<u8>]) {
    for needle in needles {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{what} holds plaintext {:?}",
            String::from_utf8_lossy(needle)
        );
    }
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megajs_round_trip_with_blobs_on_garage() {
    let Some(garage) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let location = garage.location();
    let server = start(dir.path(), &location).await;
    let needles = megajs_round_trip::megajs_round_trip(&server).await;
    server.shutdown().await.unwrap();

    // The content is in the bucket, published and complete, not in the data directory.
    let objects = garage.objects(&location.prefix).await;
    let blobs = objects.iter().filter(|(k, _)| k.starts_with("blobs/"));
    // Nine uploads, one deleted.
    assert_eq!(blobs.count(), 8, "{:?}", keys(&objects));
    assert!(
        objects.iter().all(|(k, _)| k.starts_with("blobs/")),
        "temporary objects left: {:?}",
        keys(&objects)
    );
    assert!(!dir.path().join("blobs").exists());
    for (key, bytes) in &objects {
        assert_no_plaintext(key, bytes, &needles);
    }
    for path in all_files(dir.path()) {
        assert_no_plaintext(
            &path.display().to_string(),
            &std::fs::read(&path).unwrap(),
            &needles,
        );
    }
}

fn keys(objects: &[(String, Bytes)]) -> Vec<&str> {
    objects.iter().map(|(k, _)| k.as_str()).collect()
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| ((i * 7 + i / 251) as u8).wrapping_add(seed))
        .collect()
}

fn attrs(name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("n".into(), json!(name));
    m
}

const EMAIL: &str = "s3@example.org";
const PASSWORD: &str = "garage pässword";

async fn login(server: &RunningServer) -> MegaClient {
    MegaClient::login(
        &server.url(),
        &Credentials {
            email: EMAIL.into(),
            password: Zeroizing::new(PASSWORD.into()),
            mfa_code: None,
        },
        RetryPolicy::quick(),
        TransferOptions::default(),
    )
    .await
    .unwrap()
}

/// The whole ciphertext of a file, and its plaintext after the MAC check.
async fn download(client: &MegaClient, node: &DecryptedNode) -> (Bytes, Vec<u8>) {
    let info = client.download_info(&node.wire.h).await.unwrap();
    let Some(NodeKey::File { key, meta_mac }) = &node.key else {
        panic!("not a file node");
    };
    let cipher = client.fetch_range(&info.url, 0..info.size).await.unwrap();
    let mut plain = cipher.to_vec();
    mc::decrypt_file(key, &mut plain, meta_mac).expect("MAC verifies");
    (cipher, plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_boundary_files_ranges_and_aborted_upload_on_garage() {
    let Some(garage) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let location = garage.location();
    let server = start(&dir.path().join("data"), &location).await;
    veilfs::mega::signup::create_account(&server.url(), EMAIL, PASSWORD, "S3")
        .await
        .unwrap();
    let client = login(&server).await;
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();

    // Sizes on and next to MAC chunk boundaries, and one past the store's 8 MiB single-put
    // limit so sealing goes through a multipart upload.
    let sizes = [
        0usize,
        1,
        131_072,
        131_073,
        393_215,
        1_310_720,
        (8 << 20) + 17,
    ];
    let mut files = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern(size, i as u8);
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, &data).unwrap();
        let node = client
            .upload(
                &root,
                &path,
                &attrs(&format!("Datei {size} ✓")),
                None,
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(node.wire.s, Some(size as u64));
        let (cipher, plain) = download(&client, &node).await;
        assert!(plain == data, "size {size} round trip");
        // Ranged reads are served from the object by range: across a chunk boundary, at the
        // very end, a single byte.
        for range in [
            131_000u64..131_200,
            (size as u64).saturating_sub(1)..size as u64,
            0..1,
            1_000_000..1_300_000,
        ] {
            if range.end > size as u64 || range.start >= range.end {
                continue;
            }
            let got = client
                .fetch_range(
                    &client.download_info(&node.wire.h).await.unwrap().url,
                    range.clone(),
                )
                .await
                .unwrap();
            assert!(
                got[..] == cipher[range.start as usize..range.end as usize],
                "size {size} range {range:?}"
            );
        }
        files.push((node, data));
    }
    let used = client.quota().await.unwrap().used;
    assert_eq!(used, sizes.iter().sum::<usize>() as u64);

    // An upload cut off after its first chunk: not a file, not in the quota, not a blob.
    let total = 3u64 << 20;
    let answer = client
        .api()
        .call(json!({"a": "u", "s": total, "v": 2}))
        .await
        .unwrap();
    let url = answer["p"].as_str().unwrap().to_string();
    let first = reqwest::Client::new()
        .post(format!("{url}/0"))
        .body(vec![0x5au8; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.bytes().await.unwrap().len(), 0, "not complete yet");
    let objects = garage.objects(&location.prefix).await;
    let blobs: Vec<&str> = keys(&objects)
        .into_iter()
        .filter(|k| k.starts_with("blobs/"))
        .collect();
    assert_eq!(blobs.len(), sizes.len(), "{:?}", keys(&objects));
    let upload_id = url.rsplit('/').next().unwrap();
    assert!(
        keys(&objects)
            .iter()
            .any(|k| k.starts_with(&format!("tmp/{upload_id}/"))),
        "the received chunk is kept as a temporary object: {:?}",
        keys(&objects)
    );
    assert!(
        keys(&objects)
            .iter()
            .all(|k| !k.contains(upload_id) || k.starts_with("tmp/"))
    );
    let (nodes, _) = client.fetch_tree().await.unwrap();
    assert_eq!(nodes.iter().filter(|n| n.wire.t == 0).count(), sizes.len());
    assert_eq!(client.quota().await.unwrap().used, used);

    // Restarted, the server drops the temporary objects of the cut upload; every file is
    // still there, byte for byte.
    server.shutdown().await.unwrap();
    let server = start(&dir.path().join("data"), &location).await;
    let objects = garage.objects(&location.prefix).await;
    assert!(
        objects.iter().all(|(k, _)| k.starts_with("blobs/")),
        "{:?}",
        keys(&objects)
    );
    assert_eq!(objects.len(), sizes.len());
    let client = login(&server).await;
    let (nodes, _) = client.fetch_tree().await.unwrap();
    for (node, data) in &files {
        let again = nodes.iter().find(|n| n.wire.h == node.wire.h).unwrap();
        assert!(download(&client, again).await.1 == *data);
    }

    // Only ciphertext in the bucket: no name, no run of any file's content.
    let mut needles: Vec<Vec<u8>> = vec![b"Datei".to_vec(), PASSWORD.as_bytes().to_vec()];
    for (_, data) in &files {
        if data.len() >= 200_000 {
            needles.push(data[100_000..100_048].to_vec());
        } else if data.len() >= 48 {
            needles.push(data[..48].to_vec());
        }
    }
    for (key, bytes) in &objects {
        assert_no_plaintext(key, bytes, &needles);
    }

    // Deleting a file removes its object.
    client.delete(&files[6].0.wire.h).await.unwrap();
    let objects = garage.objects(&location.prefix).await;
    assert_eq!(objects.len(), sizes.len() - 1, "{:?}", keys(&objects));
    server.shutdown().await.unwrap();
}

/// The built binary takes the bucket from `--s3-bucket`/`--s3-prefix` and everything else from
/// the standard `AWS_*` variables, with plain http allowed because the endpoint is loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_reads_s3_settings_from_the_environment() {
    use std::process::Command;
    let Some(garage) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cli-{}", hex::encode(veilfs::crypto::random_array::<6>()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veilfs"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .args(["--s3-bucket", &garage.bucket, "--s3-prefix", &prefix])
        .env("AWS_ENDPOINT_URL", &garage.endpoint)
        .env("AWS_REGION", &garage.region)
        .env("AWS_ACCESS_KEY_ID", &garage.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
        .env_remove("AWS_ALLOW_HTTP");
    let (mut child, url) = common::mount::spawn_serve(cmd);
    veilfs::mega::signup::create_account(&url, EMAIL, PASSWORD, "cli")
        .await
        .unwrap();
    let client = MegaClient::login(
        &url,
        &Credentials {
            email: EMAIL.into(),
            password: Zeroizing::new(PASSWORD.into()),
            mfa_code: None,
        },
        RetryPolicy::quick(),
        TransferOptions::default(),
    )
    .await
    .unwrap();
    let (nodes, _) = client.fetch_tree().await.unwrap();
    let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();
    let path = dir.path().join("hello");
    let data = pattern(300_000, 9);
    std::fs::write(&path, &data).unwrap();
    let node = client
        .upload(&root, &path, &attrs("hello"), None, |_| {})
        .await
        .unwrap();
    assert!(download(&client, &node).await.1 == data);
    let _ = child.kill();
    let _ = child.wait();
    let objects = garage.objects(&prefix).await;
    assert_eq!(keys(&objects).len(), 1, "{:?}", keys(&objects));
    assert!(objects[0].0.starts_with("blobs/"));
    assert_eq!(objects[0].1.len(), data.len());
}
