//! MEGA's login proof-of-work (mega-reference §3.8).
//!
//! The server answers HTTP 402 with `X-Hashcash: 1:<easiness>:<timestamp>:<token>`; the client
//! finds a 4-byte prefix such that SHA-256(prefix ‖ token × 262 144) starts with a big-endian u32
//! at or below a threshold derived from the easiness, and re-sends the request with
//! `X-Hashcash: 1:<token>:<base64 prefix>`.

use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::error::{MegaError, Result};
use crate::crypto::mega::{b64_decode, b64_encode};

const TOKEN_REPEATS: usize = 262_144;

/// A parsed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub easiness: u8,
    pub token: String,
    token_bytes: Vec<u8>,
}

impl Challenge {
    /// Parses the `X-Hashcash` header of a 402 answer.
    pub fn parse(header: &str) -> Result<Self> {
        let bad = || MegaError::malformed(format!("hashcash challenge {header:?}"));
        let mut parts = header.trim().split(':');
        let (Some("1"), Some(easiness), Some(_timestamp), Some(token), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let easiness: u8 = easiness.parse().map_err(|_| bad())?;
        let token_bytes = b64_decode(token).map_err(|_| bad())?;
        if token_bytes.len() != 48 {
            return Err(bad());
        }
        Ok(Challenge {
            easiness,
            token: token.to_string(),
            token_bytes,
        })
    }

    /// The highest acceptable leading u32 of the hash.
    pub fn threshold(&self) -> u32 {
        let e = u32::from(self.easiness);
        (((e & 63) << 1) + 1) << ((e >> 6) * 7 + 3)
    }

    /// Whether `prefix` solves the challenge.
    pub fn check(&self, prefix: [u8; 4]) -> bool {
        let mut hasher = Sha256::new();
        hasher.update(prefix);
        for _ in 0..TOKEN_REPEATS {
            hasher.update(&self.token_bytes);
        }
        let digest = hasher.finalize();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) <= self.threshold()
    }

    /// Searches for a solution on every core and returns the header value to send back.
    pub fn solve(&self) -> String {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let found = AtomicBool::new(false);
        let answer = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for start in 0..threads {
                let (found, answer) = (&found, &answer);
                scope.spawn(move || {
                    let mut n = start;
                    while !found.load(Ordering::Relaxed) {
                        if self.check(n.to_le_bytes()) {
                            answer.store(n, Ordering::Relaxed);
                            found.store(true, Ordering::Relaxed);
                        }
                        n = n.wrapping_add(threads);
                    }
                });
            }
        });
        let prefix = answer.load(Ordering::Relaxed).to_le_bytes();
        format!("1:{}:{}", self.token, b64_encode(&prefix))
    }
}

/// Verifies a client's answer to `challenge` (the server side of the exchange).
pub fn verify_answer(challenge: &Challenge, answer: &str) -> bool {
    let mut parts = answer.trim().split(':');
    let (Some("1"), Some(token), Some(prefix), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(prefix) = b64_decode(prefix) else {
        return false;
    };
    let Ok(prefix) = <[u8; 4]>::try_from(prefix.as_slice()) else {
        return false;
    };
    token == challenge.token && challenge.check(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "RUvIePV2PNO8ofg8xp1aT5ugBcKSEzwKoLBw9o4E6F_fmn44eC3oMpv388UtFl2K";

    #[test]
    fn parses_the_sdk_example_and_computes_thresholds() {
        let c = Challenge::parse(&format!("1:100:1731410499:{TOKEN}")).unwrap();
        assert_eq!(c.easiness, 100);
        // e = 100: ((100 & 63) << 1) + 1 = 73, shifted by (100 >> 6) * 7 + 3 = 10.
        assert_eq!(c.threshold(), 73 << 10);
        let c = Challenge::parse(&format!("1:192:0:{TOKEN}")).unwrap();
        assert_eq!(c.threshold(), 1 << 24);
        let c = Challenge::parse(&format!("1:255:0:{TOKEN}")).unwrap();
        assert_eq!(c.threshold(), 127 << 24);
    }

    #[test]
    fn rejects_malformed_challenges() {
        for bad in [
            "",
            "2:100:0:abc",
            "1:300:0:abc",
            "1:100:0:short",
            &format!("1:x:0:{TOKEN}"),
            &format!("1:100:0:{TOKEN}:extra"),
        ] {
            assert!(Challenge::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn solution_verifies_and_tampering_does_not() {
        // Easiness 255 accepts about half of all prefixes, so this stays fast.
        let c = Challenge::parse(&format!("1:255:0:{TOKEN}")).unwrap();
        let answer = c.solve();
        assert!(answer.starts_with(&format!("1:{TOKEN}:")));
        assert!(verify_answer(&c, &answer));
        assert!(!verify_answer(
            &c,
            &answer.replace(TOKEN, &TOKEN.replace('R', "S"))
        ));
        assert!(!verify_answer(&c, "1:abc"));
        // At the hardest setting (threshold 8 of 2^32) a fixed prefix does not pass.
        let hard = Challenge::parse(&format!("1:0:0:{TOKEN}")).unwrap();
        assert_eq!(hard.threshold(), 8);
        assert!(!hard.check([0, 0, 0, 0]));
    }
}
