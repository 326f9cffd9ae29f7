//! Arbitrary bytes as a `/cs` body (the first line, if any, as its query string) through the
//! server's decoder and dispatcher: whatever arrives, the answer is JSON, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use veilfs::server::{AppState, ServerConfig};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: AppState,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("veilfs-fuzz-{}", std::process::id()));
        let config = ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
        let state = runtime.block_on(AppState::open(config)).unwrap();
        Fixture { runtime, state }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    let answer = f.runtime.block_on(veilfs::server::api::process(
        &f.state,
        query,
        &axum::http::HeaderMap::new(),
        body,
    ));
    let value: serde_json::Value =
        serde_json::from_slice(&answer).expect("the answer is always JSON");
    assert!(value.is_array() || value.is_i64());
});
