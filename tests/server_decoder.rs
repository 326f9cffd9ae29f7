//! Random input at `POST /cs` of a real server over HTTP, with and without a live session:
//! JSON of every shape with MEGA's command names and argument names in it, and raw bytes.
//! Every answer is HTTP 200 with a JSON number or array, never a 500, never a dropped
//! connection. (The cargo-fuzz target in fuzz/ drives the same decoder without HTTP.)

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;
use zeroize::Zeroizing;

const COMMANDS: &[&str] = &[
    "us0", "us", "up", "uc2", "ud2", "ug", "uq", "sml", "usl", "usr", "f", "p", "a", "m", "d", "u",
    "g", "l", "s2", "zz",
];
const KEYS: &[&str] = &[
    "a", "n", "t", "p", "h", "k", "s", "g", "d", "cr", "ok", "ha", "u", "r", "v", "ssl", "user",
    "uh", "at", "attr", "i", "c", "ko", "fa", "x",
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    url: String,
    sid: String,
    http: reqwest::Client,
    _server: veilfs::server::RunningServer,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (server, sid) = runtime.block_on(async {
            let config = veilfs::server::ServerConfig::new(
                dir.path().to_path_buf(),
                "127.0.0.1:0".parse().unwrap(),
            );
            let server = veilfs::server::start(config).await.unwrap();
            let (email, password) = ("fuzz@example.org", "fuzz");
            veilfs::mega::signup::create_account(&server.url(), email, password, "fuzz")
                .await
                .unwrap();
            let client = veilfs::mega::MegaClient::login(
                &server.url(),
                &veilfs::mega::session::Credentials {
                    email: email.into(),
                    password: Zeroizing::new(password.into()),
                    mfa_code: None,
                },
                veilfs::retry::RetryPolicy::quick(),
                veilfs::mega::transfer::TransferOptions::default(),
            )
            .await
            .unwrap();
            let sid = client.api().session().unwrap();
            (server, sid)
        });
        Fixture {
            runtime,
            url: server.url(),
            sid,
            http: reqwest::Client::new(),
            _server: server,
            _dir: dir,
        }
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0u64..10).prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-zA-Z0-9_-]{0,12}".prop_map(Value::String),
        "\\PC{0,20}".prop_map(Value::String),
        proptest::sample::select(COMMANDS).prop_map(|s| json!(s)),
        Just(json!("xxxxxxxx")),
        Just(json!("AAAAAAAAAAAAAAAAAAAAAA")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |pairs| {
                    Value::Object(
                        pairs
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

/// A command object: a real command name and random arguments under MEGA's names.
fn command() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(COMMANDS),
        prop::collection::vec((proptest::sample::select(KEYS), value()), 0..6),
    )
        .prop_map(|(a, args)| {
            let mut m: Map<String, Value> =
                args.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            m.insert("a".into(), json!(a));
            Value::Object(m)
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(command(), 0..4).prop_map(|c| serde_json::to_vec(&c).unwrap()),
        1 => value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn post(body: Vec<u8>, with_session: bool, folder: Option<String>) -> (u16, Vec<u8>) {
    // A fresh request id each time: a repeated one is answered from the replay cache.
    static ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let f = fixture();
    let mut url = format!("{}cs?id={id}", f.url);
    if with_session {
        url.push_str(&format!("&sid={}", f.sid));
    }
    if let Some(n) = folder {
        url.push_str(&format!("&n={n}"));
    }
    f.runtime.block_on(async {
        let resp = f.http.post(url).body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_answer_is_a_json_number_or_array(
        body in body(),
        with_session in any::<bool>(),
        folder in proptest::option::of("[A-Za-z0-9_-]{8}"),
    ) {
        let (status, answer) = post(body.clone(), with_session, folder);
        prop_assert_eq!(status, 200, "body {:?}", String::from_utf8_lossy(&body));
        let value: Value = serde_json::from_slice(&answer).map_err(|e| {
            TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&answer)))
        })?;
        prop_assert!(value.is_array() || value.is_i64(), "{}", value);
        // A batch answers one result per command.
        if let (Ok(Value::Array(cmds)), Value::Array(results)) =
            (serde_json::from_slice::<Value>(&body), &value)
        {
            prop_assert_eq!(cmds.len(), results.len());
        }
    }
}
