//! The Filen HTTP transport: JSON gateway calls in `{status, message, code, data}` envelopes,
//! chunk uploads to ingest and chunk downloads from egest.
//!
//! One base URL serves all three host families (as `veilfs serve` does). Network failures,
//! 5xx answers and `internal_error` are retried a few times with a growing pause; anything else
//! is the caller's to handle.

use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use serde_json::Value;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::FilenError;

const ATTEMPTS: u32 = 4;

pub struct FilenApi {
    http: reqwest::Client,
    /// Ends with `/`.
    base: String,
    api_key: RwLock<Option<Zeroizing<String>>>,
}

impl FilenApi {
    pub fn new(base: &str) -> Result<Self, FilenError> {
        let mut base = base.trim().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let http = reqwest::Client::builder()
            .user_agent("veilfs")
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| FilenError::Network(e.to_string()))?;
        Ok(FilenApi {
            http,
            base,
            api_key: RwLock::new(None),
        })
    }

    pub fn set_api_key(&self, key: Option<Zeroizing<String>>) {
        *self.api_key.write() = key;
    }

    fn bearer(&self) -> String {
        match self.api_key.read().as_ref() {
            Some(k) => format!("Bearer {}", k.as_str()),
            None => "Bearer anonymous".into(),
        }
    }

    /// Sends one request (built anew per attempt) and unwraps the envelope.
    async fn call(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Value, FilenError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let response = build()
                    .header("Authorization", self.bearer())
                    .send()
                    .await
                    .map_err(|e| FilenError::Network(e.to_string()))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(FilenError::Http(status.as_u16()));
                }
                let body: Value = response
                    .json()
                    .await
                    .map_err(|e| FilenError::Protocol(format!("answer is not JSON: {e}")))?;
                unwrap_envelope(body)
            }
            .await;
            match result {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "retrying a Filen request");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// `POST <gateway>/v3/<endpoint>` with a JSON body; answers `data`.
    pub async fn post(&self, endpoint: &str, body: &Value) -> Result<Value, FilenError> {
        let url = format!("{}v3/{endpoint}", self.base);
        let text = body.to_string();
        // The SDK sends SHA-512 of the body; servers may check it.
        let checksum = hex::encode(Sha512::digest(text.as_bytes()));
        self.call(|| {
            self.http
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Checksum", &checksum)
                .body(text.clone())
        })
        .await
    }

    /// `GET <gateway>/v3/<endpoint>`.
    pub async fn get(&self, endpoint: &str) -> Result<Value, FilenError> {
        let url = format!("{}v3/{endpoint}", self.base);
        self.call(|| self.http.get(&url)).await
    }

    /// Ingest: one encrypted chunk, `hash` its SHA-512 hex.
    pub async fn ingest(
        &self,
        query: &[(&str, String)],
        chunk: Bytes,
    ) -> Result<Value, FilenError> {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        let url = format!("{}v3/upload?{}", self.base, query.join("&"));
        self.call(|| self.http.post(&url).body(chunk.clone())).await
    }

    /// Egest: chunk `index` of file `uuid` as stored.
    pub async fn egest(
        &self,
        region: &str,
        bucket: &str,
        uuid: &str,
        index: u64,
    ) -> Result<Bytes, FilenError> {
        let url = format!("{}{region}/{bucket}/{uuid}/{index}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let response = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| FilenError::Network(e.to_string()))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(FilenError::Http(status.as_u16()));
                }
                response
                    .bytes()
                    .await
                    .map_err(|e| FilenError::Network(e.to_string()))
            }
            .await;
            match result {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                other => return other,
            }
        }
    }
}

fn unwrap_envelope(body: Value) -> Result<Value, FilenError> {
    match body.get("status").and_then(Value::as_bool) {
        Some(true) => Ok(body.get("data").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(FilenError::Api {
            code: body
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            message: body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        None => Err(FilenError::Protocol("answer has no status".into())),
    }
}

/// Query-string encoding: unreserved characters as they are, every other byte as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
