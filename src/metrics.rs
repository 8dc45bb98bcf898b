//! Counters for allowed and denied calls, the cache and Auth2, readable as a snapshot.
//!
//! Every call bumps a counter, so counters are striped per thread: a single shared atomic would
//! make all gRPC threads fight over one cache line on the hot path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use once_cell::sync::Lazy;

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
    /// Background re-validations started by refresh ahead.
    pub refreshes: Counter,
    /// Calls allowed on a stale verdict while Auth2 could not answer (stale if error).
    pub stale_allows: Counter,
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
            refreshes: self.refreshes.get(),
            stale_allows: self.stale_allows.get(),
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub allowed: u64,
    /// Denials by reason name, in the order of [`Reason::ALL`].
    pub denied: Vec<(&'static str, u64)>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub auth2_requests: u64,
    /// Auth2 exchanges that ended without an answer (transport, timeout, 5xx, bad body).
    pub auth2_failures: u64,
    /// Lookups refused without asking Auth2 (breaker open, too many in flight); the new-token
    /// budget's refusals are counted as denials (`too_many_new_tokens`) instead.
    pub auth2_fail_fast: u64,
    pub auth2_latency_us_sum: u64,
    pub auth2_latency_us_max: u64,
    pub refreshes: u64,
    pub stale_allows: u64,
}

/// The names of [`MetricsSnapshot::values`], in order: the gauge names of the metrics source.
pub static METRIC_NAMES: Lazy<Vec<String>> = Lazy::new(|| {
    let mut names = vec!["allowed".to_owned()];
    names.extend(Reason::ALL.iter().map(|r| format!("denied.{}", r.name())));
    names.extend(
        [
            "cacheHits",
            "cacheMisses",
            "auth2Requests",
            "auth2Failures",
            "auth2FailFast",
            "auth2LatencyMicrosSum",
            "auth2LatencyMicrosMax",
            "refreshes",
            "staleAllows",
        ]
        .map(str::to_owned),
    );
    names
});

impl MetricsSnapshot {
    pub fn denied_for(&self, reason: Reason) -> u64 {
        self.denied.iter().find(|(n, _)| *n == reason.name()).map_or(0, |(_, v)| *v)
    }

    /// Every counter, in the order of [`METRIC_NAMES`].
    pub fn values(&self) -> Vec<u64> {
        let mut v = vec![self.allowed];
        v.extend(self.denied.iter().map(|(_, n)| *n));
        v.extend([
            self.cache_hits,
            self.cache_misses,
            self.auth2_requests,
            self.auth2_failures,
            self.auth2_fail_fast,
            self.auth2_latency_us_sum,
            self.auth2_latency_us_max,
            self.refreshes,
            self.stale_allows,
        ]);
        v
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
    fn snapshot_values_match_their_names() {
        let m = Metrics::default();
        m.decided(None, true);
        m.decided(Some(Reason::Expired), true);
        m.decided(Some(Reason::Expired), false);
        m.decided(Some(Reason::TooManyNewTokens), false);
        m.auth2_latency(Duration::from_micros(1500));
        m.stale_allows.inc();
        let s = m.snapshot();
        assert_eq!(s.denied_for(Reason::Expired), 2);
        assert_eq!((s.allowed, s.cache_hits), (1, 2));
        let named: std::collections::HashMap<_, _> = METRIC_NAMES.iter().map(String::as_str).zip(s.values()).collect();
        assert_eq!(named.len(), METRIC_NAMES.len());
        assert_eq!(named["allowed"], 1);
        assert_eq!(named["denied.expired_token"], 2);
        assert_eq!(named["denied.too_many_new_tokens"], 1);
        assert_eq!(named["auth2LatencyMicrosMax"], 1500);
        assert_eq!(named["staleAllows"], 1);
        assert_eq!(named["refreshes"], 0);
    }
}
