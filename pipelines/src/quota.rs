//! Per-key rate limits ([`Quota`]): one pair of token buckets (events, bytes) per API key, shared
//! by every source of this node (HTTP, NATS, replays), so a key cannot get around its quota by
//! switching protocols.
//!
//! Each bucket holds at most one second's allowance and refills continuously. A batch passes
//! when the bucket holds its whole cost, and takes it. A batch larger than one second's
//! allowance passes when the bucket is full and leaves it in debt: the key then waits until the
//! debt is paid back. Either way the sustained rate never exceeds the quota. A refused batch
//! costs nothing and its answer says how long to wait (429 `quota_exceeded` with
//! `Retry-After`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alluvium_actors::auth::{Principal, Quota};

use crate::PipelineError;

/// Past this many keys, the buckets that have refilled completely are forgotten (a full
/// bucket is what a forgotten key starts with again).
const FORGET_ABOVE: usize = 10_000;

/// One token bucket: `tokens` of `rate` per second, at most `rate`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate as f64,
            at: now,
        }
    }

    fn refill(&mut self, rate: u64, now: Instant) {
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
    }

    /// How long until the bucket holds enough for `amount` (a full bucket for an amount over
    /// one second's worth); `None` if it does now.
    fn wait(&self, rate: u64, amount: u64) -> Option<Duration> {
        let needed = amount.min(rate) as f64;
        (self.tokens < needed)
            .then(|| Duration::from_secs_f64((needed - self.tokens) / rate as f64))
    }
}

#[derive(Debug, Default)]
struct KeyBuckets {
    events: Option<Bucket>,
    bytes: Option<Bucket>,
    /// The key's rates (events, bytes), to tell when its buckets are full again.
    rates: (Option<u64>, Option<u64>),
}

/// The buckets of every key with a quota, by key id.
#[derive(Debug, Default)]
pub struct Quotas {
    keys: Mutex<HashMap<String, KeyBuckets>>,
}

/// Which allowance a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `events_per_sec`.
    Events,
    /// `bytes_per_sec`.
    Bytes,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Events => "events_per_sec",
            Limit::Bytes => "bytes_per_sec",
        }
    }
}

impl Quotas {
    /// Takes `amount` of `limit` from the principal's allowance, or refuses with
    /// [`PipelineError::QuotaExceeded`] (taking nothing). Principals without a quota pass.
    pub fn take(
        &self,
        principal: &Principal,
        limit: Limit,
        amount: u64,
    ) -> Result<(), PipelineError> {
        self.take_at(principal, limit, amount, Instant::now())
    }

    fn take_at(
        &self,
        principal: &Principal,
        limit: Limit,
        amount: u64,
        now: Instant,
    ) -> Result<(), PipelineError> {
        let Some(quota) = principal.quota else {
            return Ok(());
        };
        let Some(rate) = rate(&quota, limit) else {
            return Ok(());
        };
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() > FORGET_ABOVE {
            let settled = |b: &Option<Bucket>, rate: Option<u64>| match (b, rate) {
                (Some(b), Some(rate)) => {
                    let mut b = *b;
                    b.refill(rate, now);
                    b.tokens >= rate as f64
                }
                _ => true,
            };
            keys.retain(|_, b| !(settled(&b.events, b.rates.0) && settled(&b.bytes, b.rates.1)));
        }
        let buckets = keys.entry(principal.subject.clone()).or_default();
        buckets.rates = (quota.events_per_sec, quota.bytes_per_sec);
        let slot = match limit {
            Limit::Events => &mut buckets.events,
            Limit::Bytes => &mut buckets.bytes,
        };
        let bucket = slot.get_or_insert_with(|| Bucket::full(rate, now));
        bucket.refill(rate, now);
        if let Some(wait) = bucket.wait(rate, amount) {
            return Err(PipelineError::QuotaExceeded {
                key: principal.subject.clone(),
                limit: limit.name(),
                rate,
                retry_after: wait,
            });
        }
        bucket.tokens -= amount as f64;
        Ok(())
    }

    /// Gives back what [`Quotas::take`] took for a batch that was then refused.
    pub fn give_back(&self, principal: &Principal, limit: Limit, amount: u64) {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(buckets) = keys.get_mut(&principal.subject) else {
            return;
        };
        let slot = match limit {
            Limit::Events => &mut buckets.events,
            Limit::Bytes => &mut buckets.bytes,
        };
        if let (Some(bucket), Some(rate)) =
            (slot.as_mut(), principal.quota.and_then(|q| rate(&q, limit)))
        {
            bucket.tokens = (bucket.tokens + amount as f64).min(rate as f64);
        }
    }
}

fn rate(quota: &Quota, limit: Limit) -> Option<u64> {
    match limit {
        Limit::Events => quota.events_per_sec,
        Limit::Bytes => quota.bytes_per_sec,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alluvium_actors::auth::{Grant, Scope};
    use alluvium_actors::ids::TenantId;

    fn key(id: &str, events: Option<u64>, bytes: Option<u64>) -> Principal {
        let mut p = Principal::new(
            TenantId::new("acme").unwrap(),
            [Grant::all(Scope::Ingest)],
            id,
        );
        p.quota = Some(Quota {
            events_per_sec: events,
            bytes_per_sec: bytes,
        });
        p
    }

    fn retry(r: Result<(), PipelineError>) -> Duration {
        match r {
            Err(PipelineError::QuotaExceeded { retry_after, .. }) => retry_after,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let q = Quotas::default();
        let p = key("k1", Some(100), None);
        let t0 = Instant::now();
        for _ in 0..10 {
            q.take_at(&p, Limit::Events, 10, t0).unwrap();
        }
        let wait = retry(q.take_at(&p, Limit::Events, 10, t0));
        assert_eq!(wait.as_millis(), 100, "{wait:?}");
        // 100 ms later, 10 events' worth came back.
        q.take_at(&p, Limit::Events, 10, t0 + Duration::from_millis(100))
            .unwrap();
        retry(q.take_at(&p, Limit::Events, 1, t0 + Duration::from_millis(100)));
        // The bytes allowance is unlimited for this key.
        q.take_at(&p, Limit::Bytes, u64::MAX, t0).unwrap();
    }

    #[test]
    fn a_batch_over_one_second_passes_once_then_pays_its_debt() {
        let q = Quotas::default();
        let p = key("k2", None, Some(1000));
        let t0 = Instant::now();
        q.take_at(&p, Limit::Bytes, 5000, t0).unwrap();
        let wait = retry(q.take_at(&p, Limit::Bytes, 1, t0));
        assert!(
            wait >= Duration::from_secs(4) && wait <= Duration::from_millis(4010),
            "{wait:?}"
        );
        retry(q.take_at(&p, Limit::Bytes, 1, t0 + Duration::from_secs(3)));
        q.take_at(&p, Limit::Bytes, 1, t0 + Duration::from_millis(4100))
            .unwrap();
    }

    #[test]
    fn what_is_given_back_can_be_taken_again() {
        let q = Quotas::default();
        let p = key("k3", None, Some(100));
        let t0 = Instant::now();
        q.take_at(&p, Limit::Bytes, 100, t0).unwrap();
        retry(q.take_at(&p, Limit::Bytes, 100, t0));
        q.give_back(&p, Limit::Bytes, 100);
        q.take_at(&p, Limit::Bytes, 100, t0).unwrap();
        // Giving back never fills a bucket past one second's allowance.
        q.give_back(&p, Limit::Bytes, 1_000_000);
        q.take_at(&p, Limit::Bytes, 100, t0).unwrap();
        retry(q.take_at(&p, Limit::Bytes, 1, t0));
    }

    #[test]
    fn keys_and_principals_without_quota_are_independent() {
        let q = Quotas::default();
        let t0 = Instant::now();
        let a = key("a", Some(1), None);
        let b = key("b", Some(1), None);
        q.take_at(&a, Limit::Events, 1, t0).unwrap();
        retry(q.take_at(&a, Limit::Events, 1, t0));
        q.take_at(&b, Limit::Events, 1, t0).unwrap();
        let free = Principal::new(
            TenantId::new("acme").unwrap(),
            [Grant::all(Scope::Ingest)],
            "c",
        );
        for _ in 0..1000 {
            q.take_at(&free, Limit::Events, 1_000_000, t0).unwrap();
        }
    }
}
