//! `PublishLimiter`: the publish rate limit, kept per identity rather than per session.
//!
//! One token bucket per identity (a token's subject, or the peer address of an anonymous
//! caller: the server decides, see [`crate::Identity::quota_key`]), shared by all of its
//! sessions and unary calls, so opening more sessions or switching to unary `Publish` buys
//! no more than the configured rate.
//!
//! Bounded: the map holds at most `max_identities` buckets. When it is full, buckets that
//! have refilled to their burst are dropped first (such a bucket is the same as a new one,
//! so forgetting it loses nothing); if every bucket is still in use, a publish by an
//! identity not yet in the map is refused with RESOURCE_EXHAUSTED until some refill.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::HubError;

/// One identity's bucket: `tokens` as of `refilled`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Token buckets by identity; see the module docs.
#[derive(Debug)]
pub(crate) struct PublishLimiter {
    /// Tokens earned per second.
    rate: f64,
    /// Most tokens a bucket holds: the burst an idle identity may publish at once.
    burst: f64,
    /// Most identities tracked at once; bounds the map's memory (about 200 bytes each).
    max_identities: usize,
    /// Keyed by [`crate::Identity::quota_key`]; std's SipHash, since the keys come from
    /// clients. A std `Mutex`, never held across an await.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl PublishLimiter {
    pub(crate) fn new(rate: u32, burst: u32, max_identities: usize) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(rate).max(1)),
            max_identities: max_identities.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one publish from `key`'s bucket, or says why not.
    pub(crate) fn take(&self, key: &str) -> Result<(), HubError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            let tokens = self.tokens_at(bucket, now);
            *bucket = Bucket {
                tokens,
                refilled: now,
            };
            if tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return Ok(());
            }
            return Err(HubError::ResourceExhausted(format!(
                "publish rate over {}/s for this identity (all its sessions and unary calls \
                 together): slow down and retry",
                self.rate
            )));
        }
        if buckets.len() >= self.max_identities {
            buckets.retain(|_, bucket| self.tokens_at(bucket, now) < self.burst);
        }
        if buckets.len() >= self.max_identities {
            return Err(HubError::ResourceExhausted(format!(
                "{} identities are publishing at their rate limit: retry shortly",
                self.max_identities
            )));
        }
        buckets.insert(
            key.to_owned(),
            Bucket {
                tokens: self.burst - 1.0,
                refilled: now,
            },
        );
        Ok(())
    }

    fn tokens_at(&self, bucket: &Bucket, now: Instant) -> f64 {
        let earned = now.duration_since(bucket.refilled).as_secs_f64() * self.rate;
        (bucket.tokens + earned).min(self.burst)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket_per_identity() {
        let limiter = PublishLimiter::new(1, 3, 100);
        for _ in 0..3 {
            limiter.take("sub:alice").unwrap();
        }
        assert_eq!(
            limiter.take("sub:alice").unwrap_err().code(),
            crate::Code::ResourceExhausted
        );
        limiter.take("sub:bob").unwrap();
    }

    #[test]
    fn the_map_is_bounded_and_forgets_idle_identities_first() {
        let limiter = PublishLimiter::new(1, 2, 2);
        limiter.take("a").unwrap();
        limiter.take("b").unwrap();
        // Both are below their burst: in use, so a third identity is refused.
        assert_eq!(
            limiter.take("c").unwrap_err().code(),
            crate::Code::ResourceExhausted
        );
        assert_eq!(limiter.tracked(), 2);
        // Once a bucket refills it is forgotten to make room.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        limiter.take("c").unwrap();
        assert!(limiter.tracked() <= 2);
    }
}
