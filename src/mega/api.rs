//! The MEGA API transport: `POST <gateway>cs?id=…&sid=…` with a JSON array of commands.
//!
//! One place for what every command needs: increasing request ids, the session id, the retry
//! policy for congestion and dropped connections, and the hashcash proof-of-work that MEGA demands
//! at login. Commands themselves live in the modules that use them.

use serde_json::Value;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::{ErrorCode, MegaError, Result};
use super::hashcash::Challenge;
use crate::retry::RetryPolicy;

/// How many proof-of-work rounds one request may go through before we give up: a server that
/// keeps challenging is refusing us.
const MAX_HASHCASH_ROUNDS: u32 = 3;

pub struct ApiClient {
    http: reqwest::Client,
    gateway: String,
    next_id: AtomicU64,
    sid: RwLock<Option<String>>,
    policy: RetryPolicy,
    /// Extra query parameters sent with every request (`n=<handle>` for public folders).
    extra_query: Vec<(String, String)>,
}

impl ApiClient {
    /// `gateway` is the API base URL, e.g. `https://g.api.mega.co.nz/` or `http://127.0.0.1:8787/`.
    pub fn new(gateway: &str, policy: RetryPolicy) -> Result<Self> {
        let mut gateway = gateway.trim().to_string();
        if !(gateway.starts_with("http://") || gateway.starts_with("https://")) {
            return Err(MegaError::malformed(format!(
                "server URL {gateway:?} must start with http:// or https://"
            )));
        }
        if !gateway.ends_with('/') {
            gateway.push('/');
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("veilfs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| MegaError::Network(e.to_string()))?;
        // megajs starts from a random 10-digit id; any increasing sequence works, and a random
        // start keeps two clients of one session from colliding in the server's replay cache.
        let random = u64::from_le_bytes(crate::crypto::random_array::<8>());
        Ok(ApiClient {
            http,
            gateway,
            next_id: AtomicU64::new(1_000_000_000 + random % 8_000_000_000),
            sid: RwLock::new(None),
            policy,
            extra_query: Vec::new(),
        })
    }

    /// Adds a query parameter to every request.
    pub fn with_query(mut self, key: &str, value: &str) -> Self {
        self.extra_query.push((key.to_string(), value.to_string()));
        self
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn set_session(&self, sid: Option<String>) {
        *self.sid.write().expect("sid lock") = sid;
    }

    pub fn session(&self) -> Option<String> {
        self.sid.read().expect("sid lock").clone()
    }

    /// Runs one command and returns its result, or its error code as an error.
    pub async fn call(&self, command: Value) -> Result<Value> {
        let mut results = self.batch(vec![command]).await?;
        results.pop().expect("batch returns one result per command")
    }

    /// Runs several commands in one request. The outer error is the request's; each command has
    /// its own result.
    pub async fn batch(&self, commands: Vec<Value>) -> Result<Vec<Result<Value>>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::to_vec(&commands).expect("JSON values serialize");
        let mut attempt = 0;
        let mut hashcash_rounds = 0;
        let mut hashcash: Option<String> = None;
        loop {
            let outcome = self.send(id, &body, hashcash.as_deref()).await;
            let error = match outcome {
                Ok(Reply::Answer(value)) => match split_results(value, commands.len()) {
                    Ok(results) => {
                        // A lone command that hit congestion is retried like a whole request.
                        let transient = results.len() == 1
                            && matches!(&results[0], Err(MegaError::Api(c)) if c.is_transient());
                        if !transient {
                            return Ok(results);
                        }
                        results.into_iter().next().unwrap().unwrap_err()
                    }
                    Err(e) => e,
                },
                Ok(Reply::Hashcash(challenge)) => {
                    hashcash_rounds += 1;
                    if hashcash_rounds > MAX_HASHCASH_ROUNDS {
                        return Err(MegaError::malformed(
                            "the server keeps demanding proof-of-work",
                        ));
                    }
                    tracing::debug!(easiness = challenge.easiness, "solving hashcash challenge");
                    let answer = tokio::task::spawn_blocking(move || challenge.solve())
                        .await
                        .map_err(|e| MegaError::Network(e.to_string()))?;
                    hashcash = Some(answer);
                    continue;
                }
                Err(e) => e,
            };
            if !is_retryable(&error) {
                return Err(error);
            }
            let Some(delay) = self.policy.delay(attempt) else {
                return Err(error);
            };
            tracing::debug!(%error, attempt, ?delay, "retrying MEGA request");
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    }

    async fn send(&self, id: u64, body: &[u8], hashcash: Option<&str>) -> Result<Reply> {
        let mut url = format!("{}cs?id={id}", self.gateway);
        if let Some(sid) = self.session() {
            url.push_str("&sid=");
            url.push_str(&sid);
        }
        for (k, v) in &self.extra_query {
            url.push_str(&format!("&{k}={v}"));
        }
        let mut request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(Duration::from_secs(120))
            .body(body.to_vec());
        if let Some(answer) = hashcash {
            request = request.header("X-Hashcash", answer);
        }
        let response = request.send().await.map_err(network_error)?;
        let status = response.status().as_u16();
        if status == 402
            && let Some(header) = response.headers().get("X-Hashcash")
        {
            let header = header
                .to_str()
                .map_err(|_| MegaError::malformed("hashcash header"))?;
            return Ok(Reply::Hashcash(Challenge::parse(header)?));
        }
        if status != 200 {
            return Err(MegaError::Http(status));
        }
        let bytes = response.bytes().await.map_err(network_error)?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|_| MegaError::malformed("API answer is not JSON"))?;
        Ok(Reply::Answer(value))
    }
}

enum Reply {
    Answer(Value),
    Hashcash(Challenge),
}

pub(crate) fn network_error(e: reqwest::Error) -> MegaError {
    MegaError::Network(e.to_string())
}

/// Congestion, server overload and dropped connections are worth another try; everything else
/// (a wrong password, a missing node) would fail the same way again.
pub(crate) fn is_retryable(error: &MegaError) -> bool {
    match error {
        MegaError::Api(code) => code.is_transient(),
        MegaError::Http(status) => matches!(status, 500 | 502 | 503 | 504),
        MegaError::Network(_) => true,
        _ => false,
    }
}

/// Splits an API answer into per-command results. A bare number is an error for the whole request.
fn split_results(answer: Value, expected: usize) -> Result<Vec<Result<Value>>> {
    match answer {
        Value::Number(n) => match n.as_i64() {
            Some(code) if code < 0 => Err(MegaError::Api(ErrorCode::from_code(code))),
            _ => Err(MegaError::malformed("API answer is a number, not an array")),
        },
        Value::Array(items) if items.len() == expected => Ok(items
            .into_iter()
            .map(|item| match item.as_i64() {
                Some(code) if code < 0 => Err(MegaError::Api(ErrorCode::from_code(code))),
                _ => Ok(item),
            })
            .collect()),
        Value::Array(items) => Err(MegaError::malformed(format!(
            "{} results for {expected} commands",
            items.len()
        ))),
        _ => Err(MegaError::malformed("API answer is not an array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_per_command_results_and_errors() {
        let r = split_results(json!([{"a": 1}, -9, 0]), 3).unwrap();
        assert_eq!(r[0].as_ref().unwrap(), &json!({"a": 1}));
        assert!(matches!(r[1], Err(MegaError::Api(ErrorCode::NotFound))));
        assert_eq!(r[2].as_ref().unwrap(), &json!(0));
        assert!(matches!(
            split_results(json!(-15), 1),
            Err(MegaError::Api(ErrorCode::Session))
        ));
        assert!(matches!(
            split_results(json!([1, 2]), 3),
            Err(MegaError::Malformed(_))
        ));
        assert!(matches!(
            split_results(json!({"x": 1}), 1),
            Err(MegaError::Malformed(_))
        ));
        assert!(matches!(
            split_results(json!(5), 1),
            Err(MegaError::Malformed(_))
        ));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(is_retryable(&MegaError::Api(ErrorCode::Again)));
        assert!(is_retryable(&MegaError::Http(503)));
        assert!(is_retryable(&MegaError::Network("reset".into())));
        assert!(!is_retryable(&MegaError::Api(ErrorCode::NotFound)));
        assert!(!is_retryable(&MegaError::Http(404)));
        assert!(!is_retryable(&MegaError::BadCredentials));
    }

    #[test]
    fn rejects_gateways_that_are_not_http() {
        assert!(ApiClient::new("ftp://x", RetryPolicy::quick()).is_err());
        let api = ApiClient::new("http://127.0.0.1:1", RetryPolicy::quick()).unwrap();
        assert_eq!(api.gateway(), "http://127.0.0.1:1/");
    }

    #[tokio::test]
    async fn a_dead_server_fails_after_bounded_retries() {
        // Port 9 on loopback: nothing listens, every connection is refused at once.
        let api = ApiClient::new("http://127.0.0.1:9/", RetryPolicy::quick()).unwrap();
        let started = std::time::Instant::now();
        let err = api
            .call(json!({"a": "us0", "user": "x@y"}))
            .await
            .unwrap_err();
        assert!(matches!(err, MegaError::Network(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
