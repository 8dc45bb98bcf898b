//! The verdict cache: token hash → what Auth2 and the policy said, for a bounded time.
//!
//! * Keyed by a keyed hash of the token ([`TokenKey`]), never the token.
//! * A hit is synchronous in the calling thread: first a tiny per-thread front table (no shared
//!   writes, so hits scale with threads), then the shared `moka` cache. No runtime hop, no lock
//!   held across I/O. The token's expiry is re-checked by the caller on every hit.
//! * Misses for one key share a single Auth2 exchange (`try_get_with` is single-flight).
//! * Lifetimes: valid tokens `min(cachefor, cap, expires − now)`; rejected tokens the short
//!   invalid TTL; transport failures are never stored.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The same deadline as epoch ms, for the per-thread front table.
    pub cache_until_ms: i64,
}

impl Verdict {
    pub fn new(expires_ms: i64, outcome: Outcome, ttl: Duration, now_ms: i64) -> Verdict {
        let cache_until_ms = now_ms.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64);
        Verdict { expires_ms, outcome, ttl, cache_until_ms }
    }
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

/// The key is already a uniform keyed hash, so its low 64 bits are the hash value: no second
/// hashing round per lookup.
#[derive(Clone, Default)]
pub struct KeyHashBuilder;

#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached by a non-`u128` key; mix it in anyway so that nothing collides by design.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
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
    /// Tells this cache's entries apart in the per-thread front tables (never reused).
    id: u64,
}

/// Slots of the per-thread front table: a pod sees one or a few live tokens.
const FRONT_SLOTS: usize = 4;

struct FrontEntry {
    cache_id: u64,
    key: TokenKey,
    verdict: Verdict,
}

#[derive(Default)]
struct Front {
    slots: [Option<FrontEntry>; FRONT_SLOTS],
    next: usize,
}

thread_local! {
    static FRONT: RefCell<Front> = RefCell::new(Front::default());
}

impl VerdictCache {
    pub fn new(max_entries: u64) -> VerdictCache {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let inner =
            Cache::builder().max_capacity(max_entries).expire_after(VerdictTtl).build_with_hasher(KeyHashBuilder);
        VerdictCache { inner, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// The hot path: this thread's front table, then the shared cache. `f` sees the verdict
    /// by reference, so a hit clones nothing shared (no reference-count traffic between threads).
    #[inline]
    pub fn with_hit<R>(&self, key: &TokenKey, now_ms: i64, f: impl FnOnce(&Verdict) -> R) -> Option<R> {
        FRONT.with(|front| {
            let mut front = front.borrow_mut();
            let slot =
                front.slots.iter_mut().find(|e| e.as_ref().is_some_and(|e| e.cache_id == self.id && e.key == *key));
            if let Some(slot) = slot {
                match slot {
                    Some(entry) if entry.verdict.cache_until_ms > now_ms => return Some(f(&entry.verdict)),
                    _ => *slot = None,
                }
            }
            let verdict = self.inner.get(key)?;
            let result = f(&verdict);
            front.remember(self.id, *key, verdict);
            Some(result)
        })
    }

    /// Puts a freshly fetched verdict in this thread's front table too.
    pub fn remember(&self, key: TokenKey, verdict: Verdict) {
        FRONT.with(|front| front.borrow_mut().remember(self.id, key, verdict));
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

impl Front {
    fn remember(&mut self, cache_id: u64, key: TokenKey, verdict: Verdict) {
        let slot = self.next % FRONT_SLOTS;
        self.next = self.next.wrapping_add(1);
        self.slots[slot] = Some(FrontEntry { cache_id, key, verdict });
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
        TokenKey(u128::from(n) * 0x0101_0101_0101_0101_0101_0101_0101_0101)
    }

    fn allow(ttl: Duration) -> Verdict {
        Verdict::new(i64::MAX, Outcome::Allow("alice".into()), ttl, now())
    }

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    }

    fn hit(c: &VerdictCache, k: &TokenKey) -> bool {
        c.with_hit(k, now(), |_| ()).is_some()
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
        assert!(!hit(&c, &key(1)));
        let r: Result<_, Arc<&str>> = c.get_or_fetch(key(1), || Err("down"));
        assert!(r.is_err());
        assert!(!hit(&c, &key(1)), "failures must not be cached");
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
        assert!(hit(&c, &key(1)));
    }

    #[test]
    fn entry_expires_after_its_ttl() {
        let c = VerdictCache::new(100);
        c.get_or_fetch::<(), _>(key(2), || Ok(allow(Duration::from_millis(100)))).unwrap();
        let denial = Arc::new(Denial::new(Reason::Invalid, "x"));
        c.get_or_fetch::<(), _>(key(3), || {
            Ok(Verdict::new(i64::MAX, Outcome::Deny(denial), Duration::from_secs(60), now()))
        })
        .unwrap();
        assert!(hit(&c, &key(2)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while hit(&c, &key(2)) {
            assert!(Instant::now() < deadline, "entry outlived its ttl");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(hit(&c, &key(3)), "a longer-lived entry is still there");
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
    fn front_table_is_per_cache_and_honours_the_deadline() {
        let (a, b) = (VerdictCache::new(10), VerdictCache::new(10));
        a.get_or_fetch::<(), _>(key(5), || Ok(allow(Duration::from_millis(150)))).unwrap();
        assert!(hit(&a, &key(5)));
        assert!(!hit(&b, &key(5)), "another cache's front entry must not answer");
        // Another thread has an empty front table and falls back to the shared cache.
        std::thread::scope(|s| s.spawn(|| assert!(hit(&a, &key(5)))).join().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while hit(&a, &key(5)) {
            assert!(Instant::now() < deadline, "front entry outlived its deadline");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn bounded_size() {
        let c = VerdictCache::new(50);
        for i in 0..2000u32 {
            c.get_or_fetch::<(), _>(TokenKey(u128::from(i) << 64 | u128::from(i)), || {
                Ok(allow(Duration::from_secs(60)))
            })
            .unwrap();
        }
        assert!(c.entry_count() <= 50, "{}", c.entry_count());
    }
}
