//! Limits failed logins per e-mail address, in bounded memory.
//!
//! A fixed table of buckets indexed by a keyed hash of the address: memory never grows with the
//! number of addresses tried, and flooding many addresses cannot evict the one under attack
//! (at worst an innocent address sharing its bucket is slowed down for one window).

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 4096;

pub struct LoginLimiter {
    hasher: std::collections::hash_map::RandomState,
    buckets: Vec<Mutex<Bucket>>,
    max_failures: u32,
    window: Duration,
}

#[derive(Clone, Copy)]
struct Bucket {
    failures: u32,
    since: Instant,
}

impl LoginLimiter {
    /// Allows `max_failures` failed logins per address within `window`; more are refused until
    /// the window has passed since the first failure.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        let now = Instant::now();
        LoginLimiter {
            hasher: std::collections::hash_map::RandomState::new(),
            buckets: (0..BUCKETS)
                .map(|_| {
                    Mutex::new(Bucket {
                        failures: 0,
                        since: now,
                    })
                })
                .collect(),
            max_failures,
            window,
        }
    }

    fn bucket(&self, email: &str) -> &Mutex<Bucket> {
        &self.buckets[(self.hasher.hash_one(email) % BUCKETS as u64) as usize]
    }

    /// Whether another attempt for `email` may be checked now.
    pub fn allowed(&self, email: &str) -> bool {
        let b = self.bucket(email).lock().unwrap_or_else(|p| p.into_inner());
        b.failures < self.max_failures || b.since.elapsed() >= self.window
    }

    pub fn record_failure(&self, email: &str) {
        let mut b = self.bucket(email).lock().unwrap_or_else(|p| p.into_inner());
        if b.since.elapsed() >= self.window {
            *b = Bucket {
                failures: 0,
                since: Instant::now(),
            };
        }
        b.failures = b.failures.saturating_add(1);
    }

    pub fn record_success(&self, email: &str) {
        let mut b = self.bucket(email).lock().unwrap_or_else(|p| p.into_inner());
        b.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_max_failures_and_forgives_after_window() {
        let limiter = LoginLimiter::new(3, Duration::from_millis(50));
        for _ in 0..3 {
            assert!(limiter.allowed("a@example.com"));
            limiter.record_failure("a@example.com");
        }
        assert!(!limiter.allowed("a@example.com"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.allowed("a@example.com"));
    }

    #[test]
    fn success_resets() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        limiter.record_failure("b@example.com");
        limiter.record_success("b@example.com");
        limiter.record_failure("b@example.com");
        assert!(limiter.allowed("b@example.com"));
    }
}
