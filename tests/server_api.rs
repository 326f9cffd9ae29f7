//! `veilfs serve` through HTTP, from Rust: the command decoder, each command, transfers, action
//! packets, sessions, and a restart on the same data directory. A real server on an ephemeral
//! loopback port, real accounts made by `veilfs signup`'s code, no mocks.

use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use veilfs::crypto::mega::{
    FileKey, b64_decode, b64_decode_array, b64_encode, decrypt_attributes, decrypt_file, derive_v2,
    ecb_decrypt, ecb_encrypt, encrypt_attributes, encrypt_file, v2_salt,
};
use veilfs::crypto::rsa::MegaPrivateKey;
use veilfs::server::{self, RunningServer, ServerConfig, SignupPolicy};

// ---------------------------------------------------------------------------------------------
// Harness

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "veilfs-server-{tag}-{}",
        hex::encode(veilfs::crypto::random_array::<6>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start_with(dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.wait_timeout = Duration::from_secs(10);
    tweak(&mut config);
    server::start(config).await.unwrap()
}

async fn start(dir: &Path) -> RunningServer {
    start_with(dir, |_| {}).await
}

/// A raw MEGA API client: exactly what goes over the wire, nothing interpreted.
struct Api {
    http: reqwest::Client,
    base: String,
    sid: Option<String>,
    id: u64,
    master_key: [u8; 16],
}

impl Api {
    fn new(server: &RunningServer) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.url(),
            sid: None,
            id: 4_000_000_000,
            master_key: [0; 16],
        }
    }

    /// POSTs `body` to `path` and returns status and body.
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Vec<u8>) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    async fn get(&self, url: &str) -> (u16, Vec<u8>) {
        let resp = self.http.get(url).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    /// `POST /cs` with a raw body; asserts HTTP 200 (the server never answers otherwise) and
    /// parses the JSON answer.
    async fn cs_raw(&mut self, body: impl Into<reqwest::Body>) -> Value {
        self.id += 1;
        let mut path = format!("cs?id={}", self.id);
        if let Some(sid) = &self.sid {
            path.push_str(&format!("&sid={sid}"));
        }
        let (status, body) = self.post(&path, body).await;
        assert_eq!(status, 200, "body {:?}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    async fn cmd(&mut self, cmd: Value) -> Value {
        let answer = self
            .cs_raw(serde_json::to_vec(&json!([cmd])).unwrap())
            .await;
        match answer {
            Value::Array(mut results) => {
                assert_eq!(results.len(), 1);
                results.pop().unwrap()
            }
            bare => bare,
        }
    }

    /// Logs in like megajs: prelogin, v2 derivation, `us`, then unwraps the master key and the
    /// private key and decrypts `csid`.
    async fn login(&mut self, email: &str, password: &str) -> Value {
        self.sid = None;
        let pre = self.cmd(json!({"a": "us0", "user": email})).await;
        assert_eq!(pre["v"], 2);
        let salt = b64_decode(pre["s"].as_str().unwrap()).unwrap();
        let keys = derive_v2(password.as_bytes(), &salt);
        let answer = self
            .cmd(json!({"a": "us", "user": email, "uh": b64_encode(&keys.auth_key)}))
            .await;
        if answer.is_i64() {
            return answer;
        }
        let k = b64_decode(answer["k"].as_str().unwrap()).unwrap();
        self.master_key = ecb_decrypt(&keys.password_key, &k)
            .unwrap()
            .try_into()
            .unwrap();
        let private =
            MegaPrivateKey::from_wrapped(&self.master_key, answer["privk"].as_str().unwrap())
                .unwrap();
        let sid = private
            .decrypt_session_id(answer["csid"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            &b64_decode(&sid).unwrap()[16..27],
            answer["u"].as_str().unwrap().as_bytes()
        );
        self.sid = Some(sid);
        answer
    }

    async fn fetch(&mut self) -> Value {
        let f = self.cmd(json!({"a": "f", "c": 1})).await;
        assert!(f.is_object(), "f answered {f}");
        f
    }

    async fn root(&mut self) -> String {
        let f = self.fetch().await;
        node_of_type(&f, 2)["h"].as_str().unwrap().to_string()
    }

    fn folder_element(&self, name: &str) -> Value {
        let key = veilfs::crypto::random_array::<16>();
        let mut attrs = Map::new();
        attrs.insert("n".into(), json!(name));
        json!({
            "h": "xxxxxxxx",
            "t": 1,
            "a": encrypt_attributes(&key, &attrs),
            "k": b64_encode(&ecb_encrypt(&self.master_key, &key).unwrap()),
        })
    }

    async fn mkdir(&mut self, parent: &str, name: &str) -> String {
        let el = self.folder_element(name);
        let answer = self.cmd(json!({"a": "p", "t": parent, "n": [el]})).await;
        answer["f"][0]["h"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_string()
    }

    /// Encrypts `plain` as MEGA does, uploads it in `pieces` POSTs and returns the node key
    /// (32 bytes) and the completion token (base64).
    async fn upload(&mut self, plain: &[u8], pieces: usize) -> ([u8; 32], String) {
        let fk = FileKey::generate();
        let mut data = plain.to_vec();
        let mac = encrypt_file(&fk, &mut data);
        let url = self
            .cmd(json!({"a": "u", "s": data.len(), "ssl": 0, "v": 2}))
            .await;
        let url = url["p"].as_str().unwrap().to_string();
        let mut token = Vec::new();
        let step = data.len().div_ceil(pieces.max(1)).max(1);
        let mut offset = 0;
        loop {
            let end = (offset + step).min(data.len());
            let body = data[offset..end].to_vec();
            let resp = self
                .http
                .post(format!("{url}/{offset}"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let bytes = resp.bytes().await.unwrap();
            if end == data.len() {
                token = bytes.to_vec();
            } else {
                assert!(bytes.is_empty(), "non-final chunk answered {bytes:?}");
            }
            offset = end;
            if offset >= data.len() {
                break;
            }
        }
        assert_eq!(token.len(), 36);
        assert_eq!(token[35], 1);
        (fk.pack(&mac), b64_encode(&token))
    }

    fn file_element(&self, token: &str, node_key: &[u8; 32], name: &str) -> Value {
        let (fk, _) = FileKey::unpack(node_key).unwrap();
        let mut attrs = Map::new();
        attrs.insert("n".into(), json!(name));
        json!({
            "h": token,
            "t": 0,
            "a": encrypt_attributes(&fk.key, &attrs),
            "k": b64_encode(&ecb_encrypt(&self.master_key, node_key).unwrap()),
        })
    }

    async fn put_file(&mut self, parent: &str, plain: &[u8], name: &str) -> (String, [u8; 32]) {
        let (key, token) = self.upload(plain, 3).await;
        let el = self.file_element(&token, &key, name);
        let answer = self.cmd(json!({"a": "p", "t": parent, "n": [el]})).await;
        (
            answer["f"][0]["h"]
                .as_str()
                .unwrap_or_else(|| panic!("{answer}"))
                .to_string(),
            key,
        )
    }

    /// Downloads a file node through `g` and decrypts and MAC-checks it.
    async fn download(&mut self, handle: &str, node_key: &[u8; 32]) -> Vec<u8> {
        let g = self
            .cmd(json!({"a": "g", "g": 1, "ssl": 0, "n": handle}))
            .await;
        let size = g["s"].as_u64().unwrap() as usize;
        let url = g["g"].as_str().unwrap();
        let mut data = Vec::new();
        let mut start = 0;
        while start < size {
            let end = (start + 100_000).min(size) - 1;
            let (status, bytes) = self.get(&format!("{url}/{start}-{end}")).await;
            assert_eq!(status, 200);
            assert_eq!(bytes.len(), end - start + 1);
            data.extend(bytes);
            start = end + 1;
        }
        let (fk, mac) = FileKey::unpack(node_key).unwrap();
        decrypt_file(&fk, &mut data, &mac).unwrap();
        let attrs = decrypt_attributes(&fk.key, g["at"].as_str().unwrap()).unwrap();
        assert!(attrs["n"].is_string());
        data
    }
}

fn node_of_type(f: &Value, t: i64) -> &Value {
    f["f"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["t"] == t)
        .unwrap()
}

fn children_of<'a>(f: &'a Value, parent: &str) -> Vec<&'a Value> {
    f["f"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["p"] == parent)
        .collect()
}

async fn signup(server: &RunningServer, email: &str, password: &str) -> String {
    veilfs::mega::signup::create_account(&server.url(), email, password, "Test User")
        .await
        .unwrap()
}

/// A new account (`EMAIL`) on `server`, and a client logged in to it.
async fn signed_up(server: &RunningServer) -> Api {
    signup(server, EMAIL, PASSWORD).await;
    let mut api = Api::new(server);
    api.login(EMAIL, PASSWORD).await;
    api
}

/// Restarts `server` on `dir`; returns it with a client of the new one holding `api`'s session.
/// The old client goes first: its idle connections would keep the old server's state (and its
/// metadata store's lock) alive past the shutdown.
async fn restart(server: RunningServer, dir: &Path, api: Api) -> (RunningServer, Api) {
    let (sid, master_key) = (api.sid.clone(), api.master_key);
    drop(api);
    server.shutdown().await.unwrap();
    let server = start(dir).await;
    let mut api = Api::new(&server);
    api.sid = sid;
    api.master_key = master_key;
    (server, api)
}

const EMAIL: &str = "alice@example.org";
const PASSWORD: &str = "correct horse ✓ battery";

// ---------------------------------------------------------------------------------------------
// The decoder: malformed input gets MEGA error codes, never an HTTP error or a panic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_mega_error_codes() {
    let dir = temp_dir("malformed");
    let server = start(&dir).await;
    let mut api = Api::new(&server);
    // Whole-request failures are a bare number.
    for body in [
        &b"not json"[..],
        b"{}",
        b"\"us0\"",
        b"",
        b"[{\"a\":\"us0\"",
        &[0xff, 0xfe, 0x00],
    ] {
        assert_eq!(api.cs_raw(body.to_vec()).await, json!(-2), "{body:?}");
    }
    let too_many: Vec<Value> = (0..501)
        .map(|_| json!({"a": "us0", "user": "x@y.z"}))
        .collect();
    assert_eq!(
        api.cs_raw(serde_json::to_vec(&too_many).unwrap()).await,
        json!(-2)
    );
    // Over the body limit: EARGS. The server answers before reading everything, so the client
    // may instead see the connection close while it is still sending; either way no HTTP error
    // status, and the server keeps serving.
    let huge = format!("[{{\"a\":\"us0\",\"user\":\"{}\"}}]", "x".repeat(5 << 20));
    // A client of its own: the connection the server drops must not go back into the shared
    // pool, where the next request would find it dead.
    let sent = reqwest::Client::new()
        .post(format!("{}cs?id=1", api.base))
        .body(huge)
        .send()
        .await;
    if let Ok(resp) = sent {
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "-2");
    }
    assert_eq!(api.cmd(json!({"a": "us0", "user": "x@y.z"})).await["v"], 2);
    // Per-command failures sit in their slot; good commands beside them still run.
    let answer = api
        .cs_raw(
            serde_json::to_vec(&json!([
                1,
                [],
                {"a": 5},
                {"a": "nope"},
                {"a": "us0"},
                {"a": "us0", "user": 7},
                {"a": "us0", "user": "no-at-sign"},
                {"a": "us0", "user": "bob@example.org"},
                {"a": "f", "c": 1},
                {"a": "us", "user": "bob@example.org", "uh": "!!!"},
                {"a": "ud2", "c": "AAAA"},
            ]))
            .unwrap(),
        )
        .await;
    let answer = answer.as_array().unwrap();
    assert_eq!(answer.len(), 11);
    assert!(answer[..7].iter().all(|v| *v == json!(-2)), "{answer:?}");
    assert_eq!(answer[7]["v"], 2);
    assert_eq!(answer[8], json!(-15), "f without a session");
    assert_eq!(answer[9], json!(-9));
    assert_eq!(answer[10], json!(-2));
    // An unknown or garbled session fails the whole request with ESID.
    for sid in ["garbage", "", &b64_encode(&[7u8; 43])] {
        api.sid = Some(sid.to_string());
        assert_eq!(
            api.cs_raw(b"[{\"a\":\"ug\"}]".to_vec()).await,
            json!(-15),
            "{sid:?}"
        );
    }
    api.sid = None;

    // With a session: wrong types and unknown handles.
    signup(&server, EMAIL, PASSWORD).await;
    api.login(EMAIL, PASSWORD).await;
    let f = api.fetch().await;
    let root = node_of_type(&f, 2)["h"].as_str().unwrap().to_string();
    let bad = [
        json!({"a": "p", "t": 123, "n": []}),
        json!({"a": "p", "t": root, "n": "x"}),
        json!({"a": "p", "t": root, "n": []}),
        json!({"a": "p", "t": root, "n": [{"h": "xxxxxxxx", "t": 1, "a": "!!", "k": "AAAA"}]}),
        json!({"a": "p", "t": root, "n": [{"h": "xxxxxxxx", "t": 7, "a": b64_encode(&[0; 16]), "k": b64_encode(&[0; 16])}]}),
        json!({"a": "p", "t": root, "n": [{"h": "xxxxxxxx", "t": 1, "a": b64_encode(&[0; 16]), "k": b64_encode(&[0; 32])}]}),
        json!({"a": "u", "s": -5}),
        json!({"a": "u", "s": "10"}),
        json!({"a": "g", "n": "short"}),
        json!({"a": "a", "n": root}),
        json!({"a": "m", "n": root}),
        json!({"a": "usr"}),
    ];
    for cmd in bad {
        assert_eq!(api.cmd(cmd.clone()).await, json!(-2), "{cmd}");
    }
    assert_eq!(
        api.cmd(json!({"a": "g", "g": 1, "n": "zzzzzzzz"})).await,
        json!(-9)
    );
    assert_eq!(api.cmd(json!({"a": "d", "n": "zzzzzzzz"})).await, json!(-9));
    let el = api.folder_element("x");
    assert_eq!(
        api.cmd(json!({"a": "p", "t": "zzzzzzzz", "n": [el]})).await,
        json!(-9)
    );
    // The roots cannot be renamed, moved or deleted.
    let rubbish = node_of_type(&f, 4)["h"].as_str().unwrap();
    assert_eq!(
        api.cmd(json!({"a": "a", "n": root, "at": b64_encode(&[0; 16])}))
            .await,
        json!(-11)
    );
    assert_eq!(
        api.cmd(json!({"a": "m", "n": root, "t": rubbish})).await,
        json!(-11)
    );
    assert_eq!(api.cmd(json!({"a": "d", "n": root})).await, json!(-11));
    // A file token that was never issued.
    let fake = api.file_element(&b64_encode(&[1u8; 36]), &[3u8; 32], "f");
    assert_eq!(
        api.cmd(json!({"a": "p", "t": root, "n": [fake]})).await,
        json!(-9)
    );
    // Nothing above created a node.
    assert_eq!(api.fetch().await["f"].as_array().unwrap().len(), 3);

    // Transfer endpoints: unknown upload ids, bad offsets, bad download tokens and ranges.
    assert_eq!(
        api.post("ul/AAAAAAAAAAAAAAAAAAAAAA/0", "x").await,
        (200, b"-8".to_vec())
    );
    assert_eq!(
        api.post("ul/AAAAAAAAAAAAAAAAAAAAAA/x", "x").await,
        (200, b"-2".to_vec())
    );
    assert_eq!(api.post("ul/../../etc/0", "x").await.0, 404);
    let base = server.url();
    assert_eq!(
        api.get(&format!("{base}dl/{}", b64_encode(&[0; 43])))
            .await
            .0,
        403
    );
    assert_eq!(api.get(&format!("{base}dl/garbage/0-10")).await.0, 403);
    assert_eq!(api.get(&format!("{base}dl/garbage/10-0")).await.0, 400);
    assert_eq!(api.get(&format!("{base}nothing-here")).await.0, 404);
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Prelogin and login

/// Requests per e-mail in the prelogin timing comparison.
const PRELOGIN_SAMPLES: usize = 50;
/// The stated bound on how far the median `us0` latencies for a known and an unknown e-mail
/// may differ. Both paths do the same work (one keyed hash, one lookup) and differ by
/// microseconds; 5 ms is generous slack for a loaded 2-core CI machine, and still far below
/// what an attacker would need to tell the two apart over a network.
const PRELOGIN_MEDIAN_BOUND: Duration = Duration::from_millis(5);

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Median latencies of `us0` for `a` and `b`, measured request by request and interleaved so
/// that drift in machine load hits both alike.
async fn prelogin_medians(server: &RunningServer, a: &str, b: &str) -> (Duration, Duration) {
    let mut api = Api::new(server);
    // Warm up connections and caches so the first samples do not weigh on either side.
    for user in [a, b, a, b] {
        api.cmd(json!({"a": "us0", "user": user})).await;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..PRELOGIN_SAMPLES * 2 {
        let (user, times) = if i % 2 == 0 {
            (a, &mut ta)
        } else {
            (b, &mut tb)
        };
        let t = Instant::now();
        let answer = api.cmd(json!({"a": "us0", "user": user})).await;
        times.push(t.elapsed());
        assert_eq!(answer["v"], 2);
    }
    (median(ta), median(tb))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prelogin_does_not_reveal_whether_an_account_exists() {
    let dir = temp_dir("prelogin");
    let server = start(&dir).await;
    signup(&server, EMAIL, PASSWORD).await;
    let mut api = Api::new(&server);
    let known = api.cmd(json!({"a": "us0", "user": EMAIL})).await;
    let unknown = api
        .cmd(json!({"a": "us0", "user": "nobody@example.org"}))
        .await;
    let other = api
        .cmd(json!({"a": "us0", "user": "somebody@example.org"}))
        .await;
    // Same shape: the same keys, version 2, a 32-byte salt.
    for answer in [&known, &unknown, &other] {
        let obj = answer.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["v", "s"], "{answer}");
        assert_eq!(answer["v"], 2);
        let salt = answer["s"].as_str().unwrap();
        assert_eq!(salt.len(), 43);
        assert_eq!(b64_decode(salt).unwrap().len(), 32);
    }
    assert_ne!(unknown["s"], other["s"]);
    // Case does not matter, as every client lower-cases.
    assert_eq!(
        api.cmd(json!({"a": "us0", "user": "NoBody@Example.org"}))
            .await,
        unknown
    );
    assert_eq!(
        api.cmd(json!({"a": "us0", "user": "ALICE@example.org"}))
            .await,
        known
    );
    // A fake salt is stable, even across a restart (the secret lives in the data directory).
    server.shutdown().await.unwrap();
    let server = start(&dir).await;
    let mut api = Api::new(&server);
    assert_eq!(
        api.cmd(json!({"a": "us0", "user": "nobody@example.org"}))
            .await,
        unknown
    );
    assert_eq!(api.cmd(json!({"a": "us0", "user": EMAIL})).await, known);
    // Timing: the median latencies over 50 requests each differ by less than the stated bound.
    let (known_time, unknown_time) = prelogin_medians(&server, EMAIL, "nobody@example.org").await;
    let gap = known_time.abs_diff(unknown_time);
    eprintln!(
        "us0 median latency: known {known_time:?}, unknown {unknown_time:?}, gap {gap:?} \
         (bound {PRELOGIN_MEDIAN_BOUND:?})"
    );
    assert!(
        gap < PRELOGIN_MEDIAN_BOUND,
        "known {known_time:?} vs unknown {unknown_time:?}"
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_enoent_and_failures_are_rate_limited() {
    let dir = temp_dir("login");
    let server = start_with(&dir, |c| c.login_failures = 3).await;
    signup(&server, EMAIL, PASSWORD).await;
    let mut api = Api::new(&server);
    let ok = api.login(EMAIL, PASSWORD).await;
    assert_eq!(ok["u"].as_str().unwrap().len(), 11);
    let ug = api.cmd(json!({"a": "ug"})).await;
    assert_eq!(ug["email"], EMAIL);
    assert_eq!(ug["u"], ok["u"]);
    assert!(ug["ts"].is_string(), "go-mega needs ts as a string");
    assert_eq!(ug["name"], "Test User");
    for key in ["k", "pubk", "privk"] {
        assert!(ug[key].is_string(), "{key}");
    }
    // Unknown e-mail and wrong password look the same.
    assert_eq!(api.login("nobody@example.org", PASSWORD).await, json!(-9));
    for _ in 0..3 {
        assert_eq!(api.login(EMAIL, "wrong password").await, json!(-9));
    }
    // Now even the right password is refused for this address...
    assert_eq!(api.login(EMAIL, PASSWORD).await, json!(-6));
    // ...but not for another one.
    signup(&server, "bob@example.org", "bob's password").await;
    assert!(
        api.login("bob@example.org", "bob's password")
            .await
            .is_object()
    );
    // Once confirmed, an account can no longer be opened by its handle alone.
    assert_eq!(
        api.cmd(json!({"a": "us", "user": ok["u"]})).await,
        json!(-9)
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_follows_the_v2_flow_and_refuses_duplicates() {
    let dir = temp_dir("signup");
    let server = start(&dir).await;
    signup(&server, EMAIL, PASSWORD).await;
    // The same address again: the client's uc2 gets EEXIST, so signup fails.
    let url = server.url();
    let again = veilfs::mega::signup::create_account(&url, "Alice@Example.org", "x", "A");
    let err = again.await.unwrap_err();
    assert!(format!("{err:#}").contains("-12"), "{err:#}");
    // By hand: an ephemeral account, then a confirmation code for a fresh address.
    let mut api = Api::new(&server);
    let mk = [9u8; 16];
    let pw = [8u8; 16];
    let r = [7u8; 16];
    let mut ts = r.to_vec();
    ts.extend(ecb_encrypt(&mk, &r).unwrap());
    let uh = api
        .cmd(json!({"a": "up", "k": b64_encode(&ecb_encrypt(&pw, &mk).unwrap()), "ts": b64_encode(&ts)}))
        .await;
    let uh = uh.as_str().unwrap().to_string();
    let login = api.cmd(json!({"a": "us", "user": uh})).await;
    let tsid = b64_decode(login["tsid"].as_str().unwrap()).unwrap();
    assert_eq!(&tsid[..16], &ts[..16]);
    assert_eq!(&tsid[16..27], uh.as_bytes());
    assert_eq!(&tsid[27..], &ts[16..]);
    api.sid = Some(login["tsid"].as_str().unwrap().to_string());
    // The ephemeral account already has its three roots.
    assert_eq!(api.fetch().await["f"].as_array().unwrap().len(), 3);
    let crv = [5u8; 16];
    let uc2 = |email: &str| {
        json!({"a": "uc2", "n": b64_encode(b"Carol"), "m": b64_encode(email.as_bytes()),
               "crv": b64_encode(&crv), "hak": b64_encode(&[1; 16]), "k": b64_encode(&[2; 16]), "v": 2})
    };
    assert_eq!(api.cmd(uc2(EMAIL)).await, json!(-12));
    let code = api.cmd(uc2("carol@example.org")).await;
    let code = code.as_str().unwrap().to_string();
    let raw = b64_decode(&code).unwrap();
    assert!(raw.starts_with(b"ConfirmCodeV2"));
    // A tampered code is refused; the real one confirms, once.
    let mut tampered = raw.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        api.cmd(json!({"a": "ud2", "c": b64_encode(&tampered)}))
            .await,
        json!(-9)
    );
    let confirmed = api.cmd(json!({"a": "ud2", "c": code})).await;
    assert_eq!(
        confirmed,
        json!([
            b64_encode(b"carol@example.org"),
            b64_encode(b"Carol"),
            uh,
            2
        ])
    );
    assert_eq!(api.cmd(json!({"a": "ud2", "c": code})).await, json!(-9));
    let pre = api
        .cmd(json!({"a": "us0", "user": "carol@example.org"}))
        .await;
    assert_eq!(pre["s"], b64_encode(&v2_salt(&crv)));
    // Key pair: once only, and only a public key that parses.
    assert_eq!(
        api.cmd(json!({"a": "up", "pubk": "AAAA", "privk": b64_encode(&[0; 32])}))
            .await,
        json!(-2)
    );
    server.shutdown().await.unwrap();

    let _ = std::fs::remove_dir_all(&dir);

    // Closed signup refuses new accounts.
    let dir = temp_dir("signup-closed");
    let server = start_with(&dir, |c| c.signup = SignupPolicy::Closed).await;
    let mut api = Api::new(&server);
    assert_eq!(
        api.cmd(json!({"a": "up", "k": b64_encode(&[0; 16]), "ts": b64_encode(&[0; 32])}))
            .await,
        json!(-11)
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Transfers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_becomes_visible_only_when_completed() {
    let dir = temp_dir("upload");
    let server = start(&dir).await;
    let mut api = signed_up(&server).await;
    let root = api.root().await;
    let size = 300_000usize;
    let url = api
        .cmd(json!({"a": "u", "s": size, "ssl": 0, "v": 2, "ms": 0, "r": 0, "e": 0}))
        .await;
    let url = url["p"].as_str().unwrap().to_string();
    assert!(url.starts_with(&server.url()), "{url}");
    let upload_path = url.strip_prefix(&server.url()).unwrap().to_string();
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    // Second half first: chunks may arrive in any order.
    let (status, body) = api
        .post(&format!("{upload_path}/131072"), data[131072..].to_vec())
        .await;
    assert_eq!((status, body.len()), (200, 0));
    // Past the end, or overlapping it: ERANGE, nothing written.
    assert_eq!(
        api.post(&format!("{upload_path}/299999"), vec![0u8; 2])
            .await
            .1,
        b"-7"
    );
    // A checksum that does not match the body: EKEY, resend.
    assert_eq!(
        api.post(
            &format!("{upload_path}/0?c={}", b64_encode(&[0; 12])),
            data[..1000].to_vec()
        )
        .await
        .1,
        b"-14"
    );
    // The SDK's `d=` asks for "0" on non-final chunks.
    let mut crc = [0u8; 12];
    for (i, b) in data[..65536].iter().enumerate() {
        crc[i % 12] ^= b;
    }
    assert_eq!(
        api.post(
            &format!("{upload_path}/0?d={}", b64_encode(&crc)),
            data[..65536].to_vec()
        )
        .await
        .1,
        b"0"
    );
    // Not complete yet: no token, no file anywhere.
    assert_eq!(children_of(&api.fetch().await, &root).len(), 0);
    let (_, token) = api
        .post(
            &format!("{upload_path}/65536"),
            data[65536..131072].to_vec(),
        )
        .await;
    assert_eq!(token.len(), 36);
    assert_eq!(token[35], 1, "binary token for v=2");
    // A retransmitted chunk after completion gets the same token, not a second upload.
    assert_eq!(
        api.post(&format!("{upload_path}/0"), data[..1000].to_vec())
            .await
            .1,
        token
    );
    // Complete but not yet put: still invisible.
    assert_eq!(children_of(&api.fetch().await, &root).len(), 0);
    let tmp_files = std::fs::read_dir(dir.join("blobs/tmp")).unwrap().count();
    assert_eq!(tmp_files, 1);
    let key = [0x42u8; 32];
    let el = api.file_element(&b64_encode(&token), &key, "ünïcödé name.bin");
    let put = api
        .cmd(json!({"a": "p", "t": root, "n": [el.clone()]}))
        .await;
    let node = &put["f"][0];
    assert_eq!(node["s"], size);
    assert_eq!(node["t"], 0);
    assert_eq!(node["p"], root.as_str());
    let uh = api.cmd(json!({"a": "ug"})).await["u"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        node["k"].as_str().unwrap(),
        format!("{uh}:{}", el["k"].as_str().unwrap())
    );
    // The token is spent.
    assert_eq!(
        api.cmd(json!({"a": "p", "t": root, "n": [el]})).await,
        json!(-9)
    );
    assert_eq!(std::fs::read_dir(dir.join("blobs/tmp")).unwrap().count(), 0);
    // Download: exact ranges, 200, end clamped; whole file without a range.
    let h = node["h"].as_str().unwrap();
    let g = api.cmd(json!({"a": "g", "g": 1, "ssl": 0, "n": h})).await;
    assert_eq!(g["s"], size);
    assert_eq!(g["at"], put["f"][0]["a"]);
    let dl = g["g"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("{dl}/0-15")).await,
        (200, data[..16].to_vec())
    );
    assert_eq!(
        api.get(&format!("{dl}/299990-400000")).await,
        (200, data[299990..].to_vec())
    );
    assert_eq!(api.get(&format!("{dl}/300000-300001")).await.0, 416);
    assert_eq!(api.get(dl).await, (200, data.clone()));
    let resp = api.http.post(format!("{dl}/5-9")).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data[5..10].to_vec());
    // ssl: 2 gets https URLs.
    let g2 = api.cmd(json!({"a": "g", "g": 1, "ssl": 2, "n": h})).await;
    assert!(g2["g"].as_str().unwrap().starts_with("https://"));
    let u2 = api.cmd(json!({"a": "u", "s": 1, "ssl": 2, "v": 2})).await;
    assert!(u2["p"].as_str().unwrap().starts_with("https://"));
    // go-mega sends no `v`: a 36-character text token, accepted as-is by `p`.
    let u = api.cmd(json!({"a": "u", "s": 3})).await;
    let path = u["p"]
        .as_str()
        .unwrap()
        .strip_prefix(&server.url())
        .unwrap()
        .to_string();
    let (_, text_token) = api.post(&format!("{path}/0"), b"abc".to_vec()).await;
    let text_token = String::from_utf8(text_token).unwrap();
    assert_eq!(text_token.len(), 36);
    let el = api.file_element(&text_token, &key, "go-mega style");
    assert!(api.cmd(json!({"a": "p", "t": root, "n": [el]})).await["f"].is_array());
    // A zero-byte file: one empty POST to offset 0.
    let u = api.cmd(json!({"a": "u", "s": 0, "v": 2})).await;
    let path = u["p"]
        .as_str()
        .unwrap()
        .strip_prefix(&server.url())
        .unwrap()
        .to_string();
    let (_, zero_token) = api.post(&format!("{path}/0"), Vec::new()).await;
    assert_eq!(zero_token.len(), 36);
    let el = api.file_element(&b64_encode(&zero_token), &key, "empty");
    let put = api.cmd(json!({"a": "p", "t": root, "n": [el]})).await;
    let g = api
        .cmd(json!({"a": "g", "g": 1, "n": put["f"][0]["h"]}))
        .await;
    assert_eq!(g["s"], 0);
    assert_eq!(api.get(g["g"].as_str().unwrap()).await, (200, Vec::new()));
    // Another account cannot use this account's token or nodes.
    signup(&server, "eve@example.org", "eve").await;
    let mut eve = Api::new(&server);
    eve.login("eve@example.org", "eve").await;
    assert_eq!(eve.cmd(json!({"a": "g", "g": 1, "n": h})).await, json!(-9));
    assert_eq!(eve.cmd(json!({"a": "d", "n": h})).await, json!(-9));
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_uploads_and_leaves_nothing_behind() {
    let dir = temp_dir("quota");
    let server = start_with(&dir, |c| c.default_quota = 1000).await;
    let mut api = signed_up(&server).await;
    let root = api.root().await;
    assert_eq!(
        api.cmd(json!({"a": "u", "s": 1001, "v": 2})).await,
        json!(-17)
    );
    // Two uploads that fit alone but not together: the second completion is refused.
    let (key_a, token_a) = api.upload(&[1u8; 600], 1).await;
    let (key_b, token_b) = api.upload(&[2u8; 600], 2).await;
    let el_a = api.file_element(&token_a, &key_a, "a");
    let el_b = api.file_element(&token_b, &key_b, "b");
    assert!(api.cmd(json!({"a": "p", "t": root, "n": [el_a]})).await["f"].is_array());
    assert_eq!(
        api.cmd(json!({"a": "p", "t": root, "n": [el_b.clone()]}))
            .await,
        json!(-17)
    );
    // Nothing of the refused upload remains: no temp blob, and its token is gone.
    assert_eq!(std::fs::read_dir(dir.join("blobs/tmp")).unwrap().count(), 0);
    assert_eq!(
        api.cmd(json!({"a": "p", "t": root, "n": [el_b]})).await,
        json!(-9)
    );
    let uq = api
        .cmd(json!({"a": "uq", "strg": 1, "xfer": 1, "pro": 1}))
        .await;
    assert_eq!(uq["mstrg"], 1000);
    assert_eq!(uq["cstrg"], 600);
    assert_eq!(uq["cstrgn"][&root], json!([600, 1, 0, 0, 0]));
    // Deleting frees the space again.
    let f = api.fetch().await;
    let file = children_of(&f, &root)[0]["h"].as_str().unwrap().to_string();
    assert_eq!(api.cmd(json!({"a": "d", "n": file})).await, json!(0));
    assert_eq!(api.cmd(json!({"a": "uq"})).await["cstrg"], 0);
    assert!(api.cmd(json!({"a": "u", "s": 1000, "v": 2})).await["p"].is_string());
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The blobs' files outside the temporary folder, and the blocks the packs still take.
fn stored_blobs(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut files = Vec::new();
    let mut pack_blocks = 0;
    for path in walk(&dir.join("blobs")) {
        if path.starts_with(dir.join("blobs/tmp")) {
            continue;
        }
        if path.starts_with(dir.join("blobs/packs")) {
            if path.extension().is_some_and(|e| e == "pack") {
                pack_blocks +=
                    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
            }
            continue;
        }
        files.push(path);
    }
    (files, pack_blocks)
}

#[tokio::test]
async fn small_uploads_committed_together_share_a_pack_and_leave_it_when_deleted() {
    let dir = temp_dir("packs");
    let server = start(&dir).await;
    let mut api = signed_up(&server).await;
    let root = api.root().await;
    let contents: Vec<Vec<u8>> = [1usize, 3000, 100_000, 300_000, 2000]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j * 7 + i) as u8).collect())
        .collect();
    let mut elements = Vec::new();
    let mut keys = Vec::new();
    for (i, plain) in contents.iter().enumerate() {
        let (key, token) = api.upload(plain, 1).await;
        elements.push(api.file_element(&token, &key, &format!("f{i}")));
        keys.push(key);
    }
    // One request committing each file with a `p` of its own, as veilfs does; the last one
    // names a folder that does not exist and is refused.
    let mut commands: Vec<Value> = elements[..4]
        .iter()
        .map(|el| json!({"a": "p", "t": root, "n": [el]}))
        .collect();
    commands.push(json!({"a": "p", "t": "AAAAAAAA", "n": [elements[4]]}));
    let answers = api.cs_raw(serde_json::to_vec(&commands).unwrap()).await;
    let answers = answers.as_array().unwrap();
    assert!(
        answers[..4].iter().all(|a| a["f"].is_array()),
        "{answers:?}"
    );
    assert!(answers[4].is_i64(), "{answers:?}");
    // Its content was published with the others; the retry into a real folder still works.
    let retried = api
        .cmd(json!({"a": "p", "t": root, "n": [elements[4]]}))
        .await;
    let mut handles: Vec<String> = answers[..4]
        .iter()
        .chain([&retried])
        .map(|a| a["f"][0]["h"].as_str().unwrap().to_string())
        .collect();
    // The four small blobs of that request went into a pack (the refused one's too, ahead of
    // its `p`); the large one is a file of its own.
    let (files, pack_blocks) = stored_blobs(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(pack_blocks > 0);
    let (server, mut api2) = restart(server, &dir, api).await;
    for ((handle, key), plain) in handles.iter().zip(&keys).zip(&contents) {
        assert!(
            api2.download(handle, key).await == *plain,
            "{handle} differs"
        );
    }
    for handle in handles.drain(..) {
        assert_eq!(api2.cmd(json!({"a": "d", "n": handle})).await, json!(0));
    }
    assert_eq!(stored_blobs(&dir), (Vec::new(), 0), "content left behind");
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// The tree

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_commands_move_rename_delete_recursively() {
    let dir = temp_dir("tree");
    let server = start(&dir).await;
    let mut api = signed_up(&server).await;
    let f = api.fetch().await;
    assert_eq!(f["ok"], json!([]));
    assert!(f["sn"].is_string());
    let roots: Vec<&Value> = f["f"].as_array().unwrap().iter().collect();
    assert_eq!(roots.len(), 3);
    for r in &roots {
        assert_eq!(r["p"], "");
        assert_eq!(r["a"], "");
        assert_eq!(r["k"], "");
        assert!(r["ts"].is_i64());
    }
    let root = node_of_type(&f, 2)["h"].as_str().unwrap().to_string();
    let rubbish = node_of_type(&f, 4)["h"].as_str().unwrap().to_string();
    let a = api.mkdir(&root, "a").await;
    let b = api.mkdir(&a, "b").await;
    let c = api.mkdir(&b, "c").await;
    let (file, key) = api.put_file(&c, b"deep content", "deep.txt").await;
    // Nested creation in one `p`: the second element names the first's placeholder.
    let mut outer = api.folder_element("outer");
    outer["h"] = json!("tmpouter");
    let mut inner = api.folder_element("inner");
    inner["p"] = json!("tmpouter");
    let nested = api
        .cmd(json!({"a": "p", "t": root, "n": [outer, inner]}))
        .await;
    assert_eq!(nested["f"][1]["p"], nested["f"][0]["h"]);
    // ECIRCULAR: into itself or its own subtree.
    assert_eq!(api.cmd(json!({"a": "m", "n": a, "t": a})).await, json!(-10));
    assert_eq!(api.cmd(json!({"a": "m", "n": a, "t": c})).await, json!(-10));
    // Not into a file.
    assert_eq!(
        api.cmd(json!({"a": "m", "n": b, "t": file})).await,
        json!(-2)
    );
    // Rename, then move the file up; listing order puts parents first.
    let (fk, _) = FileKey::unpack(&key).unwrap();
    let mut attrs = Map::new();
    attrs.insert("n".into(), json!("renamed ✓.txt"));
    let at = encrypt_attributes(&fk.key, &attrs);
    assert_eq!(
        api.cmd(json!({"a": "a", "n": file, "at": at})).await,
        json!(0)
    );
    // go-mega's spelling: attr + key.
    assert_eq!(
        api.cmd(json!({"a": "a", "n": file, "attr": at, "key": "x"}))
            .await,
        json!(0)
    );
    assert_eq!(
        api.cmd(json!({"a": "m", "n": file, "t": a})).await,
        json!(0)
    );
    let f = api.fetch().await;
    let list = f["f"].as_array().unwrap();
    let pos = |h: &str| list.iter().position(|n| n["h"] == h).unwrap();
    assert!(pos(&root) < pos(&a) && pos(&a) < pos(&b) && pos(&b) < pos(&c) && pos(&a) < pos(&file));
    let moved = &list[pos(&file)];
    assert_eq!(moved["p"], a.as_str());
    assert_eq!(moved["a"], at.as_str());
    assert_eq!(api.download(&file, &key).await, b"deep content");
    // "Delete" in clients = move to the rubbish bin; then delete for real, recursively.
    assert_eq!(
        api.cmd(json!({"a": "m", "n": a, "t": rubbish})).await,
        json!(0)
    );
    assert_eq!(api.cmd(json!({"a": "d", "n": a})).await, json!(0));
    let f = api.fetch().await;
    let left: Vec<&str> = f["f"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["h"].as_str().unwrap())
        .collect();
    for gone in [&a, &b, &c, &file] {
        assert!(!left.contains(&gone.as_str()), "{gone} survived");
    }
    assert_eq!(left.len(), 5, "roots plus outer/inner");
    assert_eq!(
        api.cmd(json!({"a": "g", "g": 1, "n": file})).await,
        json!(-9)
    );
    // The content is gone from disk too: no blob file, and no block of a pack still taken.
    assert_eq!(stored_blobs(&dir), (Vec::new(), 0));
    // A repeated request id replays the answer instead of running the command twice.
    api.id += 1;
    let path = format!("cs?id={}&sid={}", api.id, api.sid.as_ref().unwrap());
    let body =
        serde_json::to_vec(&json!([{"a": "p", "t": root, "n": [api.folder_element("once")]}]))
            .unwrap();
    let first = api.post(&path, body.clone()).await;
    let second = api.post(&path, body).await;
    assert_eq!(first, second);
    let f = api.fetch().await;
    assert_eq!(children_of(&f, &root).len(), 2, "outer + once");
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Action packets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sc_delivers_other_sessions_changes_and_wait_url_long_polls() {
    let dir = temp_dir("sc");
    let server = start(&dir).await;
    let mut a = signed_up(&server).await;
    let mut b = Api::new(&server);
    b.login(EMAIL, PASSWORD).await;
    let f = b.fetch().await;
    let root = node_of_type(&f, 2)["h"].as_str().unwrap().to_string();
    let sn = f["sn"].as_str().unwrap().to_string();
    assert_eq!(sn.len(), 11);
    let sc = |api: &Api, sn: &str| format!("sc?sn={sn}&ssl=0&sid={}", api.sid.as_ref().unwrap());
    let json_of = |r: (u16, Vec<u8>)| -> Value {
        assert_eq!(r.0, 200);
        serde_json::from_slice(&r.1).unwrap()
    };
    // Idle: a wait URL, promptly.
    let idle = json_of(b.post(&sc(&b, &sn), "").await);
    let wait_url = idle["w"].as_str().unwrap().to_string();
    assert!(idle.get("a").is_none());
    // The long poll is held until A changes something.
    let http = b.http.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = http.post(&wait_url).send().await.unwrap();
        (r.status().as_u16(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "wait URL answered with nothing to report"
    );
    let folder = a.mkdir(&root, "shared").await;
    let (status, held) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        held >= Duration::from_millis(250) && held < Duration::from_secs(5),
        "{held:?}"
    );
    let news = json_of(b.post(&sc(&b, &sn), "").await);
    let packets = news["a"].as_array().unwrap();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0]["a"], "t");
    assert_eq!(packets[0]["t"]["f"][0]["h"], folder.as_str());
    let sn2 = news["sn"].as_str().unwrap().to_string();
    assert_ne!(sn2, sn);
    // Caught up again.
    assert!(json_of(b.post(&sc(&b, &sn2), "").await)["w"].is_string());
    // A move's `d` and `t` arrive together; the instance id `i` is copied after `a`.
    let other = a.mkdir(&root, "other").await;
    let f = b.fetch().await;
    let sn3 = f["sn"].as_str().unwrap().to_string();
    assert_eq!(
        a.cmd(json!({"a": "m", "n": folder, "t": other, "i": "inst123456"}))
            .await,
        json!(0)
    );
    let mut attrs = Map::new();
    attrs.insert("n".into(), json!("x"));
    let at = encrypt_attributes(&[0; 16], &attrs);
    assert_eq!(
        a.cmd(json!({"a": "a", "n": folder, "at": at})).await,
        json!(0)
    );
    assert_eq!(a.cmd(json!({"a": "d", "n": other})).await, json!(0));
    let news = json_of(b.post(&sc(&b, &sn3), "").await);
    let packets = news["a"].as_array().unwrap();
    let kinds: Vec<&str> = packets.iter().map(|p| p["a"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["d", "t", "u", "d"]);
    assert_eq!(packets[0]["m"], 1);
    assert_eq!(packets[0]["i"], "inst123456");
    assert_eq!(
        packets[0]
            .as_object()
            .unwrap()
            .keys()
            .take(2)
            .collect::<Vec<_>>(),
        ["a", "i"]
    );
    assert_eq!(packets[1]["t"]["f"][0]["p"], other.as_str());
    assert_eq!(packets[2]["at"], at.as_str());
    // Only the top of a deleted subtree is announced.
    assert_eq!(packets[3]["n"], other.as_str());
    // The acting session sees its own changes too (megajs relies on that for moves).
    let own = json_of(a.post(&sc(&a, &sn3), "").await);
    assert_eq!(own["a"].as_array().unwrap().len(), 4);
    // Bad inputs: a bare error code, never an HTTP failure.
    assert_eq!(
        json_of(b.post("sc?sn=AAAAAAAAAAA&sid=nope", "").await),
        json!(-15)
    );
    assert_eq!(json_of(b.post(&sc(&b, "garbage"), "").await), json!(-2));
    assert_eq!(json_of(b.post("wsc/forged", "").await), json!(-2));
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_can_be_listed_revoked_and_ended() {
    let dir = temp_dir("sessions");
    let server = start(&dir).await;
    let mut a = signed_up(&server).await;
    let mut b = Api::new(&server);
    b.login(EMAIL, PASSWORD).await;
    let mut c = Api::new(&server);
    c.login(EMAIL, PASSWORD).await;
    let list = a.cmd(json!({"a": "usl", "x": 1})).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(
        list.iter().filter(|s| s[5] == 1).count(),
        1,
        "exactly one current"
    );
    // The listed ids are not session ids.
    for s in list {
        let id = s[6].as_str().unwrap();
        for api in [&a, &b, &c] {
            assert!(!api.sid.as_ref().unwrap().contains(id));
        }
    }
    // Revoke one by id.
    let other_id = list.iter().find(|s| s[5] == 0).unwrap()[6]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(a.cmd(json!({"a": "usr", "s": [other_id]})).await, json!(0));
    let alive = [
        b.cmd(json!({"a": "ug"})).await,
        c.cmd(json!({"a": "ug"})).await,
    ];
    assert_eq!(alive.iter().filter(|v| **v == json!(-15)).count(), 1);
    // Kill all others, then log out.
    assert_eq!(a.cmd(json!({"a": "usr", "ko": 1})).await, json!(0));
    assert_eq!(b.cmd(json!({"a": "ug"})).await, json!(-15));
    assert_eq!(c.cmd(json!({"a": "ug"})).await, json!(-15));
    assert!(a.cmd(json!({"a": "ug"})).await.is_object());
    assert_eq!(a.cmd(json!({"a": "sml"})).await, json!(0));
    assert_eq!(a.cmd(json!({"a": "ug"})).await, json!(-15));
    // The store holds hashes, not session ids.
    a.login(EMAIL, PASSWORD).await;
    let sid = a.sid.clone().unwrap();
    server.shutdown().await.unwrap();
    let raw_sid = b64_decode(&sid).unwrap();
    for path in walk(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains(&bytes, sid.as_bytes()),
            "{} holds a session id",
            path.display()
        );
        assert!(
            !contains(&bytes, &raw_sid),
            "{} holds a session id",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_everything() {
    let dir = temp_dir("restart");
    let server = start(&dir).await;
    let mut api = signed_up(&server).await;
    let root = api.root().await;
    let folder = api.mkdir(&root, "kept").await;
    let content: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    let (file, key) = api.put_file(&folder, &content, "kept.bin").await;
    let before = api.fetch().await;
    let master_key = api.master_key;
    // The old session survives the restart.
    let (server, mut api2) = restart(server, &dir, api).await;
    let after = api2.fetch().await;
    assert_eq!(after["f"], before["f"]);
    assert_eq!(after["sn"], before["sn"]);
    assert_eq!(api2.download(&file, &key).await, content);
    // And a fresh login works.
    let mut api3 = Api::new(&server);
    api3.login(EMAIL, PASSWORD).await;
    assert_eq!(api3.master_key, master_key);
    assert_eq!(api3.download(&file, &key).await, content);
    let wrapped: [u8; 16] = b64_decode_array(
        after["f"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["h"] == folder)
            .unwrap()["k"]
            .as_str()
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap(),
        "k",
    )
    .unwrap();
    assert_eq!(ecb_decrypt(&api3.master_key, &wrapped).unwrap().len(), 16);
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A small upload that arrives in one request is held in memory until its `p` (no temporary
/// file: see `blobs::Held`). A restart in between loses it: that `p` answers ENOENT, like an
/// unknown token, so the client uploads again; a chunked upload's temporary file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_upload_held_in_memory_is_lost_with_a_restart_and_its_put_says_enoent() {
    let dir = temp_dir("held");
    let server = start(&dir).await;
    let mut api = signed_up(&server).await;
    let root = api.root().await;
    let small = b"held in memory, never a file".to_vec();
    let chunked: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let (small_key, small_token) = api.upload(&small, 1).await;
    let (chunked_key, chunked_token) = api.upload(&chunked, 2).await;
    let tmp = || std::fs::read_dir(dir.join("blobs/tmp")).unwrap().count();
    assert_eq!(tmp(), 1, "only the chunked upload has a temporary file");
    let (server, mut api2) = restart(server, &dir, api).await;
    let el = api2.file_element(&small_token, &small_key, "lost");
    assert_eq!(
        api2.cmd(json!({"a": "p", "t": root, "n": [el]})).await,
        json!(-9)
    );
    let el = api2.file_element(&chunked_token, &chunked_key, "kept");
    let put = api2.cmd(json!({"a": "p", "t": root, "n": [el]})).await;
    let kept = put["f"][0]["h"].as_str().unwrap().to_string();
    assert_eq!(api2.download(&kept, &chunked_key).await, chunked);
    // Uploaded again, the small file lands.
    let (key, token) = api2.upload(&small, 1).await;
    let el = api2.file_element(&token, &key, "again");
    let put = api2.cmd(json!({"a": "p", "t": root, "n": [el]})).await;
    let again = put["f"][0]["h"].as_str().unwrap().to_string();
    assert_eq!(api2.download(&again, &key).await, small);
    assert_eq!(tmp(), 0);
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
