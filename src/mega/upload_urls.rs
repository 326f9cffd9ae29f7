//! Upload URLs for uploads that start together, asked for in one request.
//!
//! Every upload begins with `u`: an upload URL for its size. One request per upload made it
//! half of the API requests of a burst of small files — each an HTTP exchange for both sides,
//! the server's routing, session check and JSON on its side. MEGA's API takes an array of
//! commands per request (as its own clients send them), so the `u` of uploads that start while
//! another is being asked for wait for that answer and go together in the next request.
//!
//! A lone upload is never delayed: with nothing in flight its `u` is sent at once. But in a
//! burst (10 000 small files written one after another) uploads start one at a time, each
//! about as long after the last as a request takes, so requests still held one `u` each (949
//! requests for 1 000 files). So a request waits until [`LINGER`] after the previous answer,
//! gathering the uploads that start meanwhile; a `u` after a quiet spell goes at once. The
//! requests are sent by a task of their own, so that an upload abandoned while it waits (its file was
//! deleted) cannot strand the others waiting with it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::api::ApiClient;
use super::error::{MegaError, Result};
use super::transfer::TransferOptions;

/// Most `u` commands in one request: the answer is a URL each, a few kilobytes in all.
const MAX_BATCH: usize = 64;

/// How long after an answer the next request waits (see the module's doc).
const LINGER: Duration = Duration::from_millis(2);

/// The `u` command for an upload of `size` bytes.
pub fn command(size: u64, options: TransferOptions) -> Value {
    json!({"a": "u", "s": size, "ssl": options.ssl(), "v": 2, "ms": 0, "r": 0, "e": 0})
}

/// The URL in an answer to `u`.
pub fn url_of(answer: &Value) -> Result<String> {
    answer
        .get("p")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| MegaError::malformed("upload answer without p"))
}

/// The upload URLs of one client: asks for them, several per request when several uploads
/// wait.
pub struct UploadUrls {
    api: Arc<ApiClient>,
    options: TransferOptions,
    queue: Arc<Mutex<Queue>>,
    linger: Duration,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// A sender task is running: it takes what is waiting when its request is answered.
    sending: bool,
    /// When the last answer came.
    last_answer: Option<tokio::time::Instant>,
}

struct Waiter {
    size: u64,
    /// Congestion answers so far for this command alone (retried after the policy's delay).
    attempt: u32,
    reply: oneshot::Sender<Result<String>>,
}

impl UploadUrls {
    pub fn new(api: Arc<ApiClient>, options: TransferOptions) -> Self {
        Self::with_linger(api, options, LINGER)
    }

    fn with_linger(api: Arc<ApiClient>, options: TransferOptions, linger: Duration) -> Self {
        UploadUrls {
            api,
            options,
            queue: Arc::default(),
            linger,
        }
    }

    /// An upload URL for `size` bytes.
    pub async fn get(&self, size: u64) -> Result<String> {
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter {
            size,
            attempt: 0,
            reply,
        };
        enqueue(&self.api, &self.queue, self.options, self.linger, waiter);
        answer
            .await
            .map_err(|_| MegaError::Network("the upload URL request was dropped".into()))?
    }
}

/// Adds `waiter` to the queue, starting a sender when none is running.
fn enqueue(
    api: &Arc<ApiClient>,
    queue: &Arc<Mutex<Queue>>,
    options: TransferOptions,
    linger: Duration,
    waiter: Waiter,
) {
    let start = {
        let mut queue = queue.lock();
        queue.waiting.push_back(waiter);
        !std::mem::replace(&mut queue.sending, true)
    };
    if start {
        tokio::spawn(send_waiting(api.clone(), queue.clone(), options, linger));
    }
}

/// Sends what waits, a request at a time, until nothing does.
async fn send_waiting(
    api: Arc<ApiClient>,
    queue: Arc<Mutex<Queue>>,
    options: TransferOptions,
    linger: Duration,
) {
    loop {
        let until = {
            let queue = queue.lock();
            queue
                .last_answer
                .filter(|_| queue.waiting.len() < MAX_BATCH)
                .map(|at| at + linger)
        };
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        let batch: Vec<Waiter> = {
            let mut queue = queue.lock();
            if queue.waiting.is_empty() {
                queue.sending = false;
                return;
            }
            let n = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..n).collect()
        };
        let commands = batch.iter().map(|w| command(w.size, options)).collect();
        let answer = api.batch(commands).await;
        queue.lock().last_answer = Some(tokio::time::Instant::now());
        let results = match answer {
            Ok(results) => results,
            Err(error) => {
                // The request as a whole failed (retries spent, session gone …): each waiter
                // gets the error, as it would have from a request of its own.
                for waiter in batch {
                    let _ = waiter.reply.send(Err(copy_of(&error)));
                }
                continue;
            }
        };
        for (mut waiter, result) in batch.into_iter().zip(results) {
            match result {
                Err(MegaError::Api(code)) if code.is_transient() => {
                    // Congestion for this command alone: asked again after the policy's delay,
                    // as a request of its own would have been.
                    match api.policy().delay(waiter.attempt) {
                        Some(delay) => {
                            waiter.attempt += 1;
                            let (api, queue) = (api.clone(), queue.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                enqueue(&api, &queue, options, linger, waiter);
                            });
                        }
                        None => {
                            let _ = waiter.reply.send(Err(MegaError::Api(code)));
                        }
                    }
                }
                result => {
                    let _ = waiter.reply.send(result.and_then(|answer| url_of(&answer)));
                }
            }
        }
    }
}

/// The same error for another waiter (`MegaError` holds an I/O-free description of each case,
/// so nothing is lost but the type of a crypto error, which `u` cannot cause).
fn copy_of(error: &MegaError) -> MegaError {
    match error {
        MegaError::Api(code) => MegaError::Api(*code),
        MegaError::Http(status) => MegaError::Http(*status),
        MegaError::Network(s) => MegaError::Network(s.clone()),
        MegaError::Cut(s) => MegaError::Cut(s.clone()),
        MegaError::Malformed(s) => MegaError::Malformed(s.clone()),
        MegaError::BadCredentials => MegaError::BadCredentials,
        MegaError::SessionFile(s) => MegaError::SessionFile(s.clone()),
        MegaError::Crypto(e) => MegaError::Malformed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::RetryPolicy;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// An HTTP server that answers the API requests it gets with `answers`, in order, the
    /// first one late; it records how many commands each request held.
    fn canned_api(answers: Vec<&'static str>) -> (String, Arc<Mutex<Vec<usize>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut first = true;
            loop {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let commands: Vec<Value> = serde_json::from_slice(&body).unwrap();
                log.lock().push(commands.len());
                if std::mem::take(&mut first) {
                    // Long enough for the other uploads to queue behind this request.
                    std::thread::sleep(Duration::from_millis(300));
                }
                let answer = answers.next().expect("no more answers");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                writer.write_all(reply.as_bytes()).unwrap();
            }
        });
        (url, seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_uploads_share_a_request_and_a_congested_one_is_asked_again() {
        let (url, seen) = canned_api(vec![
            r#"[{"p":"http://up/0"}]"#,
            r#"[-3,{"p":"http://up/2"}]"#,
            r#"[{"p":"http://up/1"}]"#,
        ]);
        let api = Arc::new(ApiClient::new(&url, RetryPolicy::quick()).unwrap());
        let urls = Arc::new(UploadUrls::new(api, TransferOptions::default()));
        let get = |size| {
            let urls = urls.clone();
            tokio::spawn(async move { urls.get(size).await })
        };
        let first = get(10);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // In this order (two tasks spawned together may queue either way round).
        let second = get(20);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = get(30);
        assert_eq!(first.await.unwrap().unwrap(), "http://up/0");
        assert_eq!(second.await.unwrap().unwrap(), "http://up/1");
        assert_eq!(third.await.unwrap().unwrap(), "http://up/2");
        assert_eq!(*seen.lock(), vec![1, 2, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_starting_one_after_another_share_a_request_but_one_after_a_pause_goes_at_once()
    {
        let (url, seen) = canned_api(vec![
            r#"[{"p":"http://up/0"}]"#,
            r#"[{"p":"http://up/1"},{"p":"http://up/2"}]"#,
            r#"[{"p":"http://up/3"}]"#,
        ]);
        let api = Arc::new(ApiClient::new(&url, RetryPolicy::quick()).unwrap());
        let linger = Duration::from_millis(400);
        let urls = Arc::new(UploadUrls::with_linger(
            api,
            TransferOptions::default(),
            linger,
        ));
        let get = |size| {
            let urls = urls.clone();
            tokio::spawn(async move { urls.get(size).await })
        };
        // A burst: each upload starts after the previous one got its URL.
        assert_eq!(get(10).await.unwrap().unwrap(), "http://up/0");
        let second = get(20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = get(30);
        assert_eq!(second.await.unwrap().unwrap(), "http://up/1");
        assert_eq!(third.await.unwrap().unwrap(), "http://up/2");
        // After a quiet spell, no waiting.
        tokio::time::sleep(linger).await;
        let started = std::time::Instant::now();
        assert_eq!(get(40).await.unwrap().unwrap(), "http://up/3");
        assert!(started.elapsed() < linger, "{:?}", started.elapsed());
        assert_eq!(*seen.lock(), vec![1, 2, 1]);
    }

    #[tokio::test]
    async fn a_request_refused_as_a_whole_gives_its_error() {
        let (url, _) = canned_api(vec!["-11"]);
        let api = Arc::new(ApiClient::new(&url, RetryPolicy::quick()).unwrap());
        let urls = UploadUrls::new(api, TransferOptions::default());
        let error = urls.get(5).await.unwrap_err();
        assert!(
            matches!(error, MegaError::Api(code) if code.code() == -11),
            "{error:?}"
        );
    }
}
