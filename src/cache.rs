//! The verdict cache: token hash → what Auth2 and the policy said, for a bounded time.
//!
//! * Keyed by SHA-256 of the token, never the token.
//! * A hit is a synchronous `moka` lookup in the calling thread: no runtime hop, no lock held
//!   across I/O. The token's expiry is re-checked by the caller on every hit.
//! * Misses for one key share a single Auth2 exchange (`try_get_with` is single-flight).
//! * Lifetimes: valid tokens `min(cachefor, cap, expires − now)`; rejected tokens the short
//!   invalid TTL; transport failures are never stored.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::decision::Denial;
use crate::token::TokenKey;

/// What a token is worth, as cached.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Token expiry (epoch ms); checked on every use. `i64::MAX` for rejected tokens.
    pub expires_ms: i64,
    pub outcome: Outcome,
    /// How long the cache keeps it (decided at insertion).
    pub ttl: Duration,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Allow(Arc<str>),
    /// Auth2 rejected the token, or the policy denied its user.
    Deny(Arc<Denial>),
}

struct VerdictTtl;

impl Expiry<TokenKey, Verdict> for VerdictTtl {
    fn expire_after_create(&self, _key: &TokenKey, value: &Verdict, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The key is already a uniform cryptographic hash, so its first 8 bytes are the hash value:
/// no SipHash round per lookup.
#[derive(Clone, Default)]
pub struct KeyHashBuilder;

#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
            if bytes.len() >= 32 {
                break; // a whole SHA-256: 8 bytes of it are plenty
            }
        }
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

pub struct VerdictCache {
    inner: Cache<TokenKey, Verdict, KeyHashBuilder>,
}

impl VerdictCache {
    pub fn new(max_entries: u64) -> VerdictCache {
        let inner = Cache::builder().max_capacity(max_entries).expire_after(VerdictTtl).build_with_hasher(KeyHashBuilder);
        VerdictCache { inner }
    }

    /// The hot path: a synchronous lookup.
    #[inline]
    pub fn get(&self, key: &TokenKey) -> Option<Verdict> {
        self.inner.get(key)
    }

    /// On a miss: runs `fetch` once for all concurrent callers of the same key, stores an `Ok`
    /// verdict for its `ttl`, and stores nothing on `Err`.
    pub fn get_or_fetch<E, F>(&self, key: TokenKey, fetch: F) -> Result<Verdict, Arc<E>>
    where
        F: FnOnce() -> Result<Verdict, E>,
        E: Send + Sync + 'static,
    {
        self.inner.try_get_with(key, fetch)
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

/// Lifetime of a valid token's entry: `min(cachefor, cap, expires − now)`, never negative.
pub fn valid_ttl(cache_for: Option<Duration>, cap: Duration, expires_ms: i64, now_ms: i64) -> Duration {
    let until_expiry = Duration::from_millis(expires_ms.saturating_sub(now_ms).max(0) as u64);
    cache_for.unwrap_or(cap).min(cap).min(until_expiry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Reason;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(n: u8) -> TokenKey {
        TokenKey([n; 32])
    }

    fn allow(ttl: Duration) -> Verdict {
        Verdict { expires_ms: i64::MAX, outcome: Outcome::Allow("alice".into()), ttl }
    }

    #[test]
    fn ttl_is_the_minimum() {
        let cap = Duration::from_secs(300);
        assert_eq!(valid_ttl(Some(Duration::from_secs(60)), cap, 1_000_000, 0), Duration::from_secs(60));
        assert_eq!(valid_ttl(Some(Duration::from_secs(900)), cap, i64::MAX, 0), cap);
        assert_eq!(valid_ttl(None, cap, i64::MAX, 0), cap);
        assert_eq!(valid_ttl(Some(Duration::from_secs(60)), cap, 10_500, 500), Duration::from_secs(10));
        assert_eq!(valid_ttl(Some(Duration::from_secs(60)), cap, 0, 500), Duration::ZERO);
    }

    #[test]
    fn stores_ok_and_not_err() {
        let c = VerdictCache::new(100);
        assert!(c.get(&key(1)).is_none());
        let r: Result<_, Arc<&str>> = c.get_or_fetch(key(1), || Err("down"));
        assert!(r.is_err());
        assert!(c.get(&key(1)).is_none(), "failures must not be cached");
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let v = c
                .get_or_fetch::<(), _>(key(1), || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(allow(Duration::from_secs(60)))
                })
                .unwrap();
            assert!(matches!(v.outcome, Outcome::Allow(_)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(c.get(&key(1)).is_some());
    }

    #[test]
    fn entry_expires_after_its_ttl() {
        let c = VerdictCache::new(100);
        c.get_or_fetch::<(), _>(key(2), || Ok(allow(Duration::from_millis(100)))).unwrap();
        let denial = Arc::new(Denial::new(Reason::Invalid, "x"));
        c.get_or_fetch::<(), _>(key(3), || {
            Ok(Verdict { expires_ms: i64::MAX, outcome: Outcome::Deny(denial), ttl: Duration::from_secs(60) })
        })
        .unwrap();
        assert!(c.get(&key(2)).is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get(&key(2)).is_some() {
            assert!(Instant::now() < deadline, "entry outlived its ttl");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(c.get(&key(3)).is_some(), "a longer-lived entry is still there");
    }

    #[test]
    fn single_flight() {
        let c = VerdictCache::new(100);
        let calls = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(16);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    barrier.wait();
                    c.get_or_fetch::<(), _>(key(4), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        Ok(allow(Duration::from_secs(60)))
                    })
                    .unwrap();
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bounded_size() {
        let c = VerdictCache::new(50);
        for i in 0..2000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.get_or_fetch::<(), _>(TokenKey(k), || Ok(allow(Duration::from_secs(60)))).unwrap();
        }
        assert!(c.entry_count() <= 50, "{}", c.entry_count());
    }
}
