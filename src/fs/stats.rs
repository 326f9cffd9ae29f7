//! How many requests of each kind the kernel sent, how many failed, and how long we took to
//! answer them: `veilfs status` shows them, so a slow workload can be read off a running mount
//! (which request it makes most, which one takes long) without a tracer.
//!
//! The time is ours alone: from the request reaching the adapter to its reply being sent (for a
//! request run as a task, to the end of the task, which sends the reply last). The kernel's side
//! of the round trip is not in it.
//!
//! One table per process, as one process serves one mount: recording is a short critical
//! section of a lock that no other code takes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The figures of one kind of request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    pub count: u64,
    /// Answered with an error (a lookup of a name that is not there counts too).
    pub failed: u64,
    pub total_us: u64,
    pub max_us: u64,
}

impl OpStats {
    pub fn mean_us(&self) -> u64 {
        self.total_us.checked_div(self.count).unwrap_or(0)
    }
}

static TABLE: Mutex<BTreeMap<&'static str, OpStats>> = Mutex::new(BTreeMap::new());

/// Counts a request of kind `op` that took `took`.
pub fn record(op: &'static str, took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let mut table = TABLE.lock();
    let s = table.entry(op).or_default();
    s.count += 1;
    s.total_us = s.total_us.saturating_add(us);
    s.max_us = s.max_us.max(us);
}

/// Counts a request of kind `op` answered with an error.
pub fn record_failure(op: &'static str) {
    TABLE.lock().entry(op).or_default().failed += 1;
}

/// Every kind of request seen so far.
pub fn snapshot() -> BTreeMap<String, OpStats> {
    TABLE
        .lock()
        .iter()
        .map(|(op, s)| (op.to_string(), *s))
        .collect()
}

/// Records the time from its creation to its drop as one request of kind `op`.
pub struct Timed {
    op: &'static str,
    start: Instant,
}

impl Timed {
    pub fn start(op: &'static str) -> Self {
        Timed {
            op,
            start: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        record(self.op, self.start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_with_their_longest_and_mean_time() {
        // Names no real request has: the table is shared with the other tests.
        record("test-op", Duration::from_micros(100));
        record("test-op", Duration::from_micros(300));
        record_failure("test-op");
        drop(Timed::start("test-timed"));
        let all = snapshot();
        let s = all["test-op"];
        assert_eq!((s.count, s.failed, s.total_us, s.max_us), (2, 1, 400, 300));
        assert_eq!(s.mean_us(), 200);
        assert_eq!(all["test-timed"].count, 1);
        assert_eq!(OpStats::default().mean_us(), 0);
    }
}
