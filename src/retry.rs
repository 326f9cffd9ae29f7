//! The one retry policy every remote call goes through: bounded exponential backoff with jitter.
//!
//! Servers answer congestion (`-3`, HTTP 500/503) and networks drop connections; a client that
//! retries at once makes congestion worse, and one that retries forever hangs the filesystem.
//! So: wait `base × 2^attempt` (capped), plus up to 50 % random jitter so many clients do not retry
//! in lock-step, and give up after `max_attempts`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound of one delay, before jitter.
    pub cap: Duration,
    /// Total tries, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// About a minute of retrying in all: 0.25 s, 0.5 s, 1 s … capped at 16 s, 8 tries.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(16),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// A policy for tests that must fail fast.
    pub fn quick() -> Self {
        RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            max_attempts: 3,
        }
    }

    /// How long to wait after failed try number `attempt` (0-based), or `None` when the tries are
    /// used up.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt + 1 >= self.max_attempts {
            return None;
        }
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.cap);
        let jitter_permille = u64::from(crate::crypto::random_array::<2>()[0]) * 500 / 255;
        Some(exp + exp.mul_f64(jitter_permille as f64 / 1000.0))
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails with an error `retryable` refuses, or the tries
    /// are used up; waits [`delay`](Self::delay) between tries.
    pub async fn run<T, E, F, Fut>(
        &self,
        retryable: impl Fn(&E) -> bool,
        mut attempt: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut tries = 0;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !retryable(&error) {
                return Err(error);
            }
            let Some(delay) = self.delay(tries) else {
                return Err(error);
            };
            tracing::debug!(%error, tries, ?delay, "retrying");
            tries += 1;
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_jittered_and_end() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            max_attempts: 5,
        };
        let bounds = [(100, 150), (200, 300), (400, 600), (400, 600)];
        for (attempt, (lo, hi)) in bounds.iter().enumerate() {
            let d = p.delay(attempt as u32).unwrap();
            assert!(
                d >= Duration::from_millis(*lo) && d <= Duration::from_millis(*hi),
                "attempt {attempt}: {d:?}"
            );
        }
        assert_eq!(p.delay(4), None);
        assert_eq!(p.delay(100), None);
    }

    #[tokio::test]
    async fn run_retries_only_what_is_retryable_and_stops() {
        let p = RetryPolicy::quick();
        let mut calls = 0;
        let r: Result<(), String> = p
            .run(
                |_| true,
                || {
                    calls += 1;
                    async { Err("down".to_string()) }
                },
            )
            .await;
        assert_eq!(r, Err("down".into()));
        assert_eq!(calls, p.max_attempts);

        let mut calls = 0;
        let r: Result<(), String> = p
            .run(
                |_| false,
                || {
                    calls += 1;
                    async { Err("fatal".to_string()) }
                },
            )
            .await;
        assert_eq!(r, Err("fatal".into()));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r: Result<u32, String> = p
            .run(
                |_| true,
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        if n < 2 {
                            Err("once".to_string())
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(r, Ok(2));
    }
}
