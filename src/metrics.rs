//! Counters for allowed and denied calls, the cache and Auth2, readable as a snapshot.
//!
//! Every call bumps a counter, so counters are striped per thread: a single shared atomic would
//! make all gRPC threads fight over one cache line on the hot path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::decision::Reason;

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter that threads can bump without contending with each other.
pub struct Counter([Stripe; STRIPES]);

impl Default for Counter {
    fn default() -> Self {
        Counter(std::array::from_fn(|_| Stripe::default()))
    }
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES);
    INDEX.with(|i| *i)
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.0[stripe_index()].0.fetch_add(n, Relaxed);
    }

    pub fn inc(&self) {
        self.add(1)
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Allowed from the cache: the hot path, one counter bump and nothing else.
    allowed_hits: Counter,
    /// Allowed after an Auth2 exchange, or token-less from a trusted address.
    allowed_other: Counter,
    denied: [Counter; Reason::ALL.len()],
    denied_hits: Counter,
    /// Decisions on a token that went to the miss path (single flight included).
    cache_misses: Counter,
    pub auth2_requests: Counter,
    pub auth2_failures: Counter,
    pub fail_fast: Counter,
    auth2_latency_us_sum: AtomicU64,
    auth2_latency_us_max: AtomicU64,
}

impl Metrics {
    /// Counts one decision: `denied` is its reason if it was denied; `cache_hit` whether the
    /// verdict came from the cache (false for calls that never got as far as a token lookup).
    #[inline]
    pub fn decided(&self, denied: Option<Reason>, cache_hit: bool) {
        match (denied, cache_hit) {
            (None, true) => self.allowed_hits.inc(),
            (None, false) => self.allowed_other.inc(),
            (Some(reason), hit) => {
                self.denied[reason.index()].inc();
                if hit {
                    self.denied_hits.inc();
                }
            }
        }
    }

    pub fn miss(&self) {
        self.cache_misses.inc();
    }

    /// Records one Auth2 exchange (not on the hot path: misses only).
    pub fn auth2_latency(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.auth2_latency_us_sum.fetch_add(us, Relaxed);
        self.auth2_latency_us_max.fetch_max(us, Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            allowed: self.allowed_hits.get() + self.allowed_other.get(),
            denied: Reason::ALL.iter().map(|r| (r.name(), self.denied[r.index()].get())).collect(),
            cache_hits: self.allowed_hits.get() + self.denied_hits.get(),
            cache_misses: self.cache_misses.get(),
            auth2_requests: self.auth2_requests.get(),
            auth2_failures: self.auth2_failures.get(),
            auth2_fail_fast: self.fail_fast.get(),
            auth2_latency_us_sum: self.auth2_latency_us_sum.load(Relaxed),
            auth2_latency_us_max: self.auth2_latency_us_max.load(Relaxed),
        }
    }
}

/// A point-in-time copy of the counters; serialises to the JSON the JVM side exposes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    pub allowed: u64,
    /// Denials by reason name, in the order of [`Reason::ALL`].
    pub denied: Vec<(&'static str, u64)>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub auth2_requests: u64,
    /// Auth2 exchanges that ended without an answer (transport, timeout, 5xx, bad body).
    pub auth2_failures: u64,
    /// Misses answered UNAVAILABLE without asking Auth2 (cool-down or too many in flight).
    pub auth2_fail_fast: u64,
    pub auth2_latency_us_sum: u64,
    pub auth2_latency_us_max: u64,
}

impl MetricsSnapshot {
    pub fn denied_for(&self, reason: Reason) -> u64 {
        self.denied.iter().find(|(n, _)| *n == reason.name()).map_or(0, |(_, v)| *v)
    }

    pub fn to_json(&self) -> String {
        let denied: serde_json::Map<String, serde_json::Value> =
            self.denied.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
        serde_json::json!({
            "allowed": self.allowed,
            "denied": denied,
            "cacheHits": self.cache_hits,
            "cacheMisses": self.cache_misses,
            "auth2Requests": self.auth2_requests,
            "auth2Failures": self.auth2_failures,
            "auth2FailFast": self.auth2_fail_fast,
            "auth2LatencyMicrosSum": self.auth2_latency_us_sum,
            "auth2LatencyMicrosMax": self.auth2_latency_us_max,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = Counter::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..1000).for_each(|_| c.inc()));
            }
        });
        assert_eq!(c.get(), 8000);
    }

    #[test]
    fn snapshot_json() {
        let m = Metrics::default();
        m.decided(None, true);
        m.decided(Some(Reason::Expired), true);
        m.decided(Some(Reason::Expired), false);
        m.auth2_latency(Duration::from_micros(1500));
        let s = m.snapshot();
        assert_eq!(s.denied_for(Reason::Expired), 2);
        assert_eq!((s.allowed, s.cache_hits), (1, 2));
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["allowed"], 1);
        assert_eq!(v["denied"]["expired_token"], 2);
        assert_eq!(v["auth2LatencyMicrosMax"], 1500);
    }
}
