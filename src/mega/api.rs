//! The MEGA API transport: `POST <gateway>cs?id=…&sid=…` with a JSON array of commands.
//!
//! One place for what every command needs: increasing request ids, the session id, the retry
//! policy for congestion and dropped connections, and the hashcash proof-of-work that MEGA demands
//! at login. Commands themselves live in the modules that use them.

use bytes::{Buf, Bytes};
use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, Visitor};
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::io::{self, BufReader, Read};
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

    /// Runs one command and deserializes its result with `seed` straight from the answer's
    /// bytes, without building a [`Value`] of it first: for large answers (`f`), where a JSON
    /// tree of the whole answer would cost several times its size. Errors, retries and
    /// proof-of-work are those of [`ApiClient::call`]. `seed` may be used more than once (once
    /// per answer received), so it is made afresh for every attempt.
    pub async fn call_seeded<T, S, F>(&self, command: Value, mut seed: F) -> Result<T>
    where
        F: FnMut() -> S + Send,
        S: for<'de> DeserializeSeed<'de, Value = T>,
        T: Send,
    {
        let what = command_name(&command);
        let body = serde_json::to_vec(&[command]).expect("JSON values serialize");
        let parse = |answer: &[u8]| single_result(answer, seed(), &what);
        self.request(body, &mut Whole(parse)).await
    }

    /// [`ApiClient::call_seeded`] reading the answer as it arrives: `seed` runs on a blocking
    /// thread over the body's chunks as the network delivers them, so what it does with the
    /// start of a large answer overlaps the transfer of the rest. Answers that fail before
    /// their content (HTTP errors, error codes, proof-of-work) are retried as usual; a
    /// connection lost partway is [`MegaError::Cut`], not retried, since `seed` has already
    /// seen part of an answer.
    pub async fn call_streamed<T, S, F>(&self, command: Value, seed: F) -> Result<T>
    where
        F: FnMut() -> S + Send,
        S: for<'de> DeserializeSeed<'de, Value = T> + Send + 'static,
        T: Send + 'static,
    {
        let what = command_name(&command);
        let body = serde_json::to_vec(&[command]).expect("JSON values serialize");
        self.request(body, &mut Streamed { seed, what }).await
    }

    /// Runs several commands in one request. The outer error is the request's; each command has
    /// its own result.
    pub async fn batch(&self, commands: Vec<Value>) -> Result<Vec<Result<Value>>> {
        let body = serde_json::to_vec(&commands).expect("JSON values serialize");
        let parse = |answer: &[u8]| {
            let value: Value = serde_json::from_slice(answer)
                .map_err(|_| MegaError::malformed("API answer is not JSON"))?;
            let mut results = split_results(value, commands.len())?;
            // A lone command that hit congestion is retried like a whole request.
            if results.len() == 1
                && matches!(&results[0], Err(MegaError::Api(c)) if c.is_transient())
            {
                return Err(results.pop().expect("one result").unwrap_err());
            }
            Ok(results)
        };
        self.request(body, &mut Whole(parse)).await
    }

    /// Sends `body` until `reader` accepts an answer, solving proof-of-work challenges and
    /// retrying what [`is_retryable`] allows (including errors `reader` returns).
    async fn request<T>(&self, body: Vec<u8>, reader: &mut impl ReadAnswer<T>) -> Result<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0;
        let mut hashcash_rounds = 0;
        let mut hashcash: Option<String> = None;
        loop {
            let outcome = self.send(id, &body, hashcash.as_deref()).await;
            let error = match outcome {
                Ok(Reply::Answer(answer)) => match reader.read(answer).await {
                    Ok(parsed) => return Ok(parsed),
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
        Ok(Reply::Answer(response))
    }
}

enum Reply {
    /// The answer, its body not yet read.
    Answer(reqwest::Response),
    Hashcash(Challenge),
}

fn command_name(command: &Value) -> String {
    let name = command.get("a").and_then(Value::as_str);
    name.unwrap_or("answer").to_string()
}

/// How an answer's body is read and parsed.
trait ReadAnswer<T> {
    fn read(&mut self, response: reqwest::Response) -> impl Future<Output = Result<T>> + Send;
}

/// The whole body first, then the parser over its bytes.
struct Whole<F>(F);

impl<T, F: FnMut(&[u8]) -> Result<T> + Send> ReadAnswer<T> for Whole<F> {
    async fn read(&mut self, response: reqwest::Response) -> Result<T> {
        let bytes = response.bytes().await.map_err(network_error)?;
        (self.0)(&bytes)
    }
}

/// A seed parsing the body on a blocking thread as its chunks arrive (see
/// [`ApiClient::call_streamed`]).
struct Streamed<F> {
    seed: F,
    what: String,
}

impl<T, S, F> ReadAnswer<T> for Streamed<F>
where
    F: FnMut() -> S + Send,
    S: for<'de> DeserializeSeed<'de, Value = T> + Send + 'static,
    T: Send + 'static,
{
    async fn read(&mut self, mut response: reqwest::Response) -> Result<T> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let seed = (self.seed)();
        let what = self.what.clone();
        let parser = tokio::task::spawn_blocking(move || {
            let body = ChunkReader {
                chunks: rx,
                current: Bytes::new(),
            };
            let reader = BufReader::with_capacity(64 * 1024, body);
            parse_single(serde_json::Deserializer::from_reader(reader), seed, &what)
        });
        // Feed the parser until the body ends or the parser stops reading (it failed).
        loop {
            let chunk = response.chunk().await;
            let end = !matches!(chunk, Ok(Some(_)));
            let sent = match chunk {
                Ok(Some(bytes)) => tx.send(Ok(bytes)).await,
                Ok(None) => Ok(()),
                Err(e) => tx.send(Err(io::Error::other(e.to_string()))).await,
            };
            if end || sent.is_err() {
                break;
            }
        }
        drop(tx);
        parser
            .await
            .map_err(|e| MegaError::Network(format!("answer parser: {e}")))?
    }
}

/// An answer's body as [`Read`], fed chunk by chunk as the network delivers it.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
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

/// Parses the answer to a single command, `[result]`, deserializing `result` with `seed`; a
/// negative number in its place (or instead of the array) is an error code. The same outcomes
/// as [`split_results`] for one command followed by deserializing the result, without the
/// intermediate [`Value`]. `what` names the command in errors about the result's shape.
fn single_result<'de, S: DeserializeSeed<'de>>(
    answer: &'de [u8],
    seed: S,
    what: &str,
) -> Result<S::Value> {
    parse_single(serde_json::Deserializer::from_slice(answer), seed, what)
}

/// [`single_result`] over any JSON source; a failure to read the source (a connection lost
/// under a streamed answer) is [`MegaError::Cut`].
fn parse_single<'de, R, S>(
    mut de: serde_json::Deserializer<R>,
    seed: S,
    what: &str,
) -> Result<S::Value>
where
    R: serde_json::de::Read<'de>,
    S: DeserializeSeed<'de>,
{
    let parsed = de::Deserializer::deserialize_any(&mut de, AnswerVisitor(seed))
        .and_then(|parsed| de.end().map(|()| parsed));
    let parsed = parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => MegaError::malformed(format!("{what}: {e}")),
        serde_json::error::Category::Io => MegaError::Cut(e.to_string()),
        _ => MegaError::malformed("API answer is not JSON"),
    })?;
    match parsed {
        Answer::Result(Element::Value(value)) => Ok(value),
        Answer::Result(Element::Code(code)) | Answer::Code(code) => {
            Err(MegaError::Api(ErrorCode::from_code(code)))
        }
        Answer::Number => Err(MegaError::malformed("API answer is a number, not an array")),
        Answer::Count(n) => Err(MegaError::malformed(format!("{n} results for 1 commands"))),
        Answer::Other => Err(MegaError::malformed("API answer is not an array")),
    }
}

/// The shapes an answer to one command can take.
enum Answer<T> {
    Result(Element<T>),
    /// A negative number: an error for the whole request.
    Code(i64),
    /// Any other number.
    Number,
    /// An array of another length than one.
    Count(usize),
    Other,
}

enum Element<T> {
    Value(T),
    Code(i64),
}

struct AnswerVisitor<S>(S);

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for AnswerVisitor<S> {
    type Value = Answer<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an API answer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(if v < 0 {
            Answer::Code(v)
        } else {
            Answer::Number
        })
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(Answer::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Ok(Answer::Number)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(Answer::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Ok(Answer::Other)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(Answer::Other)
    }

    fn visit_map<A: de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Answer::Other)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let Some(first) = seq.next_element_seed(ElementSeed(self.0))? else {
            return Ok(Answer::Count(0));
        };
        let mut count = 1;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(if count == 1 {
            Answer::Result(first)
        } else {
            Answer::Count(count)
        })
    }
}

/// One command's result: a negative number is its error code, anything else goes to the seed.
struct ElementSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ElementSeed<S> {
    type Value = Element<S::Value>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for ElementSeed<S> {
    type Value = Element<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a command's result")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
        if v < 0 {
            return Ok(Element::Code(v));
        }
        self.0
            .deserialize(v.into_deserializer())
            .map(Element::Value)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
        self.0
            .deserialize(v.into_deserializer())
            .map(Element::Value)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
        self.0
            .deserialize(v.into_deserializer())
            .map(Element::Value)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Self::Value, E> {
        self.0
            .deserialize(v.into_deserializer())
            .map(Element::Value)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        self.0
            .deserialize(de::value::BorrowedStrDeserializer::new(v))
            .map(Element::Value)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        self.0
            .deserialize(v.to_string().into_deserializer())
            .map(Element::Value)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        self.0
            .deserialize(().into_deserializer())
            .map(Element::Value)
    }

    fn visit_map<A: de::MapAccess<'de>>(
        self,
        map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        self.0
            .deserialize(de::value::MapAccessDeserializer::new(map))
            .map(Element::Value)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        self.0
            .deserialize(de::value::SeqAccessDeserializer::new(seq))
            .map(Element::Value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mega::wire::FetchNodes;
    use serde_json::json;
    use std::marker::PhantomData;

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

    /// How an answer was read before [`single_result`]: a JSON value, split, then converted.
    fn via_value<T: serde::de::DeserializeOwned>(answer: &[u8]) -> Result<T> {
        let value: Value = serde_json::from_slice(answer)
            .map_err(|_| MegaError::malformed("API answer is not JSON"))?;
        let item = split_results(value, 1)?.pop().unwrap()?;
        serde_json::from_value(item).map_err(|e| MegaError::malformed(format!("f: {e}")))
    }

    fn same_outcome<T: PartialEq + fmt::Debug>(got: Result<T>, want: Result<T>, answer: &str) {
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{answer}"),
            (Err(MegaError::Api(g)), Err(MegaError::Api(w))) => assert_eq!(g, w, "{answer}"),
            (Err(MegaError::Malformed(_)), Err(MegaError::Malformed(_))) => {}
            (got, want) => panic!("{answer}: {got:?} instead of {want:?}"),
        }
    }

    #[test]
    fn a_single_result_parses_as_through_a_json_value() {
        let fetch = r#"[{"f":[
            {"h":"RootRoot","p":"","u":"uuuuuuuuuuu","t":2,"a":"","k":"","ts":1},
            {"h":"AbCdEfGh","p":"RootRoot","u":"uuuuuuuuuuu","t":0,"a":"a\/b\u00e9\ud83c\udf89","k":"uuuuuuuuuuu:key/ShareHnd:key2","s":12,"ts":1700000000,"fa":"0:x","zz":{"nested":[1,{"q":null}]}},
            {"h":"InShare1","p":"","u":"otheruser00","t":1,"a":"ä","k":"InShare1:kk","ts":-5,"su":"otheruser00","sk":"c2s","r":2}
        ],"ok":[{"h":"ShareHnd","ha":"aa","k":"kk"}],"sn":"seq1","u":[{"x":1}],"s":[]}]"#;
        let typed = |answer: &str| single_result(answer.as_bytes(), PhantomData::<FetchNodes>, "f");
        let parsed = typed(fetch).unwrap();
        let want: FetchNodes = via_value(fetch.as_bytes()).unwrap();
        assert_eq!(parsed.f, want.f);
        assert_eq!(parsed.ok, want.ok);
        assert_eq!(parsed.sn, want.sn);
        assert_eq!(parsed.f.len(), 3);
        assert_eq!(parsed.f[1].a, "a/b\u{e9}\u{1f389}");
        assert_eq!(parsed.f[2].sk.as_deref(), Some("c2s"));
        assert_eq!(parsed.f[2].r, Some(2));

        let answers = [
            fetch,
            "-3",
            "[-3]",
            "[-9]",
            "-15",
            "5",
            "1.5",
            "[1.5]",
            "[0]",
            "[\"x\"]",
            "[null]",
            "[true]",
            "[[1,2]]",
            "[]",
            "[1,2]",
            "[{\"f\":[]},-3]",
            "{\"x\":1}",
            "\"str\"",
            "null",
            "not json",
            "[{\"f\":[]}] trailing",
            "[{\"f\":[]}",
            "[{\"ok\":[]}]",
            "[{\"f\":[{\"h\":1}]}]",
            "[{\"f\":[]}]",
            " [ { \"f\" : [ ] , \"sn\" : \"s\" } ] ",
        ];
        for answer in answers {
            // As any JSON value (what `call` returns) and as the typed answer of `f`.
            let value = single_result(answer.as_bytes(), PhantomData::<Value>, "f");
            same_outcome(value, via_value::<Value>(answer.as_bytes()), answer);
            let fetched = typed(answer).map(|f| (f.f, f.ok, f.sn));
            let want = via_value::<FetchNodes>(answer.as_bytes()).map(|f| (f.f, f.ok, f.sn));
            same_outcome(fetched, want, answer);
        }
        // Congestion in place of the result is retried, as through `call`.
        assert!(is_retryable(&typed("[-3]").unwrap_err()));
        assert!(is_retryable(&typed("-3").unwrap_err()));
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
