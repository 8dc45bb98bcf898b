//! The verdict cache: token hash → what Auth2 and the policy said, for a bounded time.
//!
//! * Keyed by a keyed hash of the token ([`TokenKey`]), never the token.
//! * An entry is *fresh* until `fresh_until` on the monotonic clock; the caller re-checks the
//!   token's own expiry (wall clock) on every use. An entry that has ended is kept a while
//!   longer (`retain`) but never answers by itself: it only tells the caller that this token was
//!   valid (re-validation without the new-token budget, see [`Entry::known_valid`];
//!   stale-if-error). A valid entry is kept until its token expires (see [`valid_retention`]).
//! * A lookup is synchronous in the calling thread: first a tiny per-thread front table (no
//!   shared writes, so hits scale with threads), then the shared `moka` cache. No runtime hop, no
//!   lock held across I/O, nothing allocated or reference-counted on a front-table hit.
//! * An entry that leaves the shared cache for any reason (replaced, removed, evicted for size,
//!   expired) is marked superseded by moka's eviction listener, so that every thread's front
//!   table drops its copy at its next use: a copy never answers longer than the entry itself,
//!   and a revocation found by a background refresh bites at once everywhere.
//! * Lifetimes: valid tokens `min(cachefor, cap, expires − now)`; rejected tokens the short
//!   invalid TTL; transport failures are never stored.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::clock::Now;
use crate::decision::Denial;
use crate::token::TokenKey;
use crate::users::UserId;

/// What a token is worth, as cached.
#[derive(Debug)]
pub struct Entry {
    pub outcome: Outcome,
    /// Token expiry (wall-clock epoch ms); checked on every use. `i64::MAX` for rejected tokens.
    pub expires_ms: i64,
    /// End of the entry's life (monotonic ms).
    pub fresh_until: u64,
    /// From this monotonic ms on, a use may start a background re-validation (`u64::MAX`:
    /// never). Whoever starts one pushes it `retry_ms` further, so that a failed attempt is
    /// retried a little later rather than on every call.
    next_refresh: AtomicU64,
    retry_ms: u64,
    /// How long moka keeps it in memory after insertion: its life plus the retention.
    keep: Duration,
    /// The end of that, on the monotonic clock.
    kept_until: u64,
    flags: AtomicU8,
}

/// A newer entry (or a removal) replaced this one.
const SUPERSEDED: u8 = 1;
/// A re-validation after the entry's end failed: the entry now answers stale (if allowed).
const STALE: u8 = 2;
/// The stale-allow warning for this entry has been logged.
const STALE_WARNED: u8 = 4;

/// Background attempts for one entry are at least this far apart, and at most [`MAX_RETRY_MS`].
const MIN_RETRY_MS: u64 = 100;
const MAX_RETRY_MS: u64 = 2_000;

#[derive(Clone, Debug)]
pub enum Outcome {
    Allow(UserId),
    /// Auth2 rejected the token, or the policy denied its user.
    Deny(Arc<Denial>),
}

impl Entry {
    /// `life`: how long it is fresh from `now_mono`; `refresh_window`: the last part of that life
    /// in which a use starts a background refresh (`None`: never); `retain`: how long it is kept
    /// after its end.
    pub fn new(
        outcome: Outcome,
        expires_ms: i64,
        now_mono: u64,
        life: Duration,
        refresh_window: Option<Duration>,
        retain: Duration,
    ) -> Entry {
        let life_ms = life.as_millis().min(u64::MAX as u128 / 4) as u64;
        let fresh_until = now_mono.saturating_add(life_ms);
        let window_ms = refresh_window.map(|w| w.as_millis().min(u128::from(life_ms)) as u64);
        Entry {
            outcome,
            expires_ms,
            fresh_until,
            next_refresh: AtomicU64::new(window_ms.map_or(u64::MAX, |w| fresh_until - w)),
            retry_ms: (window_ms.unwrap_or(0) / 4).clamp(MIN_RETRY_MS, MAX_RETRY_MS),
            keep: life + retain,
            kept_until: fresh_until.saturating_add(retain.as_millis().min(u128::from(u64::MAX / 4)) as u64),
            flags: AtomicU8::new(0),
        }
    }

    #[inline]
    pub fn is_fresh(&self, now_mono: u64) -> bool {
        now_mono < self.fresh_until && self.flags.load(Ordering::Acquire) & SUPERSEDED == 0
    }

    pub fn is_allow(&self) -> bool {
        matches!(self.outcome, Outcome::Allow(_))
    }

    /// The verified user of an allow.
    pub fn user(&self) -> Option<UserId> {
        match self.outcome {
            Outcome::Allow(user) => Some(user),
            Outcome::Deny(_) => None,
        }
    }

    /// True for the one caller that gets to start a background re-validation now.
    #[inline]
    pub fn claim_refresh(&self, now_mono: u64) -> bool {
        let next = self.next_refresh.load(Ordering::Relaxed);
        now_mono >= next
            && self
                .next_refresh
                .compare_exchange(next, now_mono.saturating_add(self.retry_ms), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// When the next background re-validation may start (`u64::MAX`: never); for tests.
    pub fn next_refresh(&self) -> u64 {
        self.next_refresh.load(Ordering::Relaxed)
    }

    pub fn is_stale(&self) -> bool {
        self.flags.load(Ordering::Acquire) & STALE != 0
    }

    /// From now on the ended entry answers stale, and may be re-validated in the background.
    pub fn mark_stale(&self, now_mono: u64) {
        if self.set_flag(STALE) {
            self.next_refresh.store(now_mono.saturating_add(self.retry_ms), Ordering::Relaxed);
        }
    }

    /// Whether Auth2's last word on this token was "valid" (and the policy's "allow"), and
    /// nothing since says otherwise: kept, not superseded, before the token's expiry. Such a
    /// token is re-validated without the new-token budget, however long ago its entry ended.
    pub fn known_valid(&self, now: Now) -> bool {
        self.is_allow()
            && self.flags.load(Ordering::Acquire) & SUPERSEDED == 0
            && now.mono_ms < self.kept_until
            && !now.has_passed(self.expires_ms)
    }

    /// Whether this entry may still answer, for up to `grace_ms` past its end, while Auth2
    /// cannot (stale if error): a valid verdict, before the token's own expiry, and only while
    /// it is the token's latest entry (one that was superseded may have been replaced by a
    /// rejection while the caller held it).
    pub fn usable_stale(&self, grace_ms: u64, now: Now) -> bool {
        grace_ms > 0
            && self.is_allow()
            && self.flags.load(Ordering::Acquire) & SUPERSEDED == 0
            && now.mono_ms < self.fresh_until.saturating_add(grace_ms)
            && !now.has_passed(self.expires_ms)
    }

    /// True once per entry: whether to log its first stale allow.
    pub fn claim_stale_warning(&self) -> bool {
        self.set_flag(STALE_WARNED)
    }

    fn supersede(&self) {
        self.set_flag(SUPERSEDED);
    }

    /// Sets `flag`; true if this call set it.
    fn set_flag(&self, flag: u8) -> bool {
        self.flags.fetch_or(flag, Ordering::AcqRel) & flag == 0
    }
}

/// What the cache holds for a token right now.
pub enum Lookup<R> {
    /// A fresh entry: `R` is what the caller's function made of it.
    Fresh(R),
    /// An entry that has ended (or been superseded) but is still retained.
    Ended(Arc<Entry>),
    Absent,
}

struct KeepFor;

impl Expiry<TokenKey, Arc<Entry>> for KeepFor {
    fn expire_after_create(&self, _key: &TokenKey, value: &Arc<Entry>, _now: Instant) -> Option<Duration> {
        Some(value.keep)
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
    inner: Cache<TokenKey, Arc<Entry>, KeyHashBuilder>,
    /// Tells this cache's entries apart in the per-thread front tables (never reused).
    id: u64,
}

/// Slots of the per-thread front table: a pod sees one or a few live tokens.
const FRONT_SLOTS: usize = 4;

struct FrontEntry {
    cache_id: u64,
    key: TokenKey,
    entry: Arc<Entry>,
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
        let inner = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(KeepFor)
            // Called for every removal (replaced, removed, evicted for size, expired) by the
            // thread that removes it.
            .eviction_listener(|_key, entry: Arc<Entry>, _cause| entry.supersede())
            .build_with_hasher(KeyHashBuilder);
        VerdictCache { inner, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// The hot path: this thread's front table, then the shared cache. `f` sees a fresh entry
    /// by reference, so a front-table hit clones nothing shared.
    #[inline]
    pub fn lookup<R>(&self, key: &TokenKey, now_mono: u64, f: impl FnOnce(&Entry) -> R) -> Lookup<R> {
        FRONT.with(|front| {
            let mut front = front.borrow_mut();
            if let Some(slot) = front.slot_of(self.id, key) {
                match slot {
                    Some(e) if e.entry.is_fresh(now_mono) => return Lookup::Fresh(f(&e.entry)),
                    _ => *slot = None,
                }
            }
            match self.inner.get(key) {
                Some(entry) if entry.is_fresh(now_mono) => {
                    let result = f(&entry);
                    front.remember(self.id, *key, entry);
                    Lookup::Fresh(result)
                }
                Some(entry) => Lookup::Ended(entry),
                None => Lookup::Absent,
            }
        })
    }

    /// A fresh entry from the shared cache (not the front table), for a lookup about to start
    /// that may find someone else's exchange has just finished.
    pub fn get_fresh(&self, key: &TokenKey, now_mono: u64) -> Option<Arc<Entry>> {
        self.inner.get(key).filter(|e| e.is_fresh(now_mono))
    }

    /// Stores a new entry for `key`; the one it replaces stops answering in every thread.
    pub fn insert(&self, key: TokenKey, entry: Arc<Entry>) {
        self.inner.insert(key, entry);
    }

    /// Forgets `key` (in every thread's front table too).
    pub fn remove(&self, key: &TokenKey) {
        self.inner.remove(key);
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

impl Front {
    fn slot_of(&mut self, cache_id: u64, key: &TokenKey) -> Option<&mut Option<FrontEntry>> {
        self.slots.iter_mut().find(|e| e.as_ref().is_some_and(|e| e.cache_id == cache_id && e.key == *key))
    }

    fn remember(&mut self, cache_id: u64, key: TokenKey, entry: Arc<Entry>) {
        let slot = self.next % FRONT_SLOTS;
        self.next = self.next.wrapping_add(1);
        self.slots[slot] = Some(FrontEntry { cache_id, key, entry });
    }
}

/// The longest a valid entry is kept past its end.
pub const MAX_RETAIN_VALID: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a valid entry of `life` is kept after its end: until its token expires, so that its
/// owner stays known valid after a pause of any length (at most [`MAX_RETAIN_VALID`]), and at
/// least `floor` (stale-if-error's grace).
pub fn valid_retention(floor: Duration, life: Duration, expires_ms: i64, now_wall: i64) -> Duration {
    let until_expiry = Duration::from_millis(expires_ms.saturating_sub(now_wall).max(0) as u64);
    until_expiry.saturating_sub(life).min(MAX_RETAIN_VALID).max(floor)
}

/// Lifetime of a valid token's entry: `min(cachefor, cap, expires − now)`, never negative; and
/// whether the token's expiry is what ends it.
pub fn valid_life(cache_for: Option<Duration>, cap: Duration, expires_ms: i64, now_wall: i64) -> (Duration, bool) {
    let until_expiry = Duration::from_millis(expires_ms.saturating_sub(now_wall).max(0) as u64);
    let life = cache_for.unwrap_or(cap).min(cap);
    if until_expiry <= life {
        (until_expiry, true)
    } else {
        (life, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Reason;

    fn key(n: u8) -> TokenKey {
        TokenKey(u128::from(n) * 0x0101_0101_0101_0101_0101_0101_0101_0101)
    }

    fn allow(now: u64, life_ms: u64) -> Arc<Entry> {
        Arc::new(Entry::new(
            Outcome::Allow(UserId(0)),
            i64::MAX,
            now,
            Duration::from_millis(life_ms),
            None,
            Duration::from_secs(60),
        ))
    }

    fn state(c: &VerdictCache, k: &TokenKey, now: u64) -> &'static str {
        match c.lookup(k, now, |_| ()) {
            Lookup::Fresh(()) => "fresh",
            Lookup::Ended(_) => "ended",
            Lookup::Absent => "absent",
        }
    }

    #[test]
    fn valid_entries_are_kept_until_their_token_expires() {
        let (s, h) = (Duration::from_secs, |n: u64| Duration::from_secs(n * 3600));
        let floor = s(300);
        let now = 1_000_000;
        assert_eq!(valid_retention(floor, s(300), now + 14 * 24 * 3_600_000, now), h(14 * 24) - s(300));
        assert_eq!(valid_retention(floor, s(300), now + 600_000, now), floor, "at least the floor");
        assert_eq!(valid_retention(floor, s(300), i64::MAX, now), MAX_RETAIN_VALID);
        assert_eq!(valid_retention(floor, s(10), now - 5, now), floor, "expired: the floor");
    }

    #[test]
    fn life_is_the_minimum() {
        let cap = Duration::from_secs(300);
        let s = Duration::from_secs;
        assert_eq!(valid_life(Some(s(60)), cap, 1_000_000, 0), (s(60), false));
        assert_eq!(valid_life(Some(s(900)), cap, i64::MAX, 0), (cap, false));
        assert_eq!(valid_life(None, cap, i64::MAX, 0), (cap, false));
        assert_eq!(valid_life(Some(s(60)), cap, 10_500, 500), (s(10), true));
        assert_eq!(valid_life(Some(s(60)), cap, 0, 500), (Duration::ZERO, true));
    }

    #[test]
    fn fresh_then_ended_on_the_monotonic_clock() {
        let c = VerdictCache::new(100);
        assert_eq!(state(&c, &key(1), 1000), "absent");
        c.insert(key(1), allow(1000, 500));
        assert_eq!(state(&c, &key(1), 1000), "fresh");
        assert_eq!(state(&c, &key(1), 1499), "fresh", "front table");
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(state(&c, &key(1), 1499), "fresh", "shared cache"));
        });
        assert_eq!(state(&c, &key(1), 1500), "ended", "front table");
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(state(&c, &key(1), 1500), "ended", "shared cache"));
        });
    }

    #[test]
    fn replacing_an_entry_drops_it_from_every_front_table() {
        let c = VerdictCache::new(100);
        c.insert(key(2), allow(0, 60_000));
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(state(&c, &key(2), 10), "fresh"); // now in this thread's front table
                barrier.wait();
                barrier.wait();
                let now = c.lookup(&key(2), 20, |e| e.is_allow());
                assert!(matches!(now, Lookup::Fresh(false)), "the replacement (a denial) must answer");
            });
            barrier.wait();
            let denial = Arc::new(Denial::new(Reason::Invalid, "revoked"));
            c.insert(
                key(2),
                Arc::new(Entry::new(Outcome::Deny(denial), i64::MAX, 15, Duration::from_secs(5), None, Duration::ZERO)),
            );
            barrier.wait();
        });
        c.remove(&key(2));
        assert_eq!(state(&c, &key(2), 20), "absent");
    }

    /// A copy in a thread's front table used to outlive an entry moka evicted for size: it
    /// kept answering (and claiming refreshes) until its own end.
    #[test]
    fn eviction_for_size_drops_every_front_table_copy() {
        let c = VerdictCache::new(2);
        let held = [key(1), key(2)];
        for k in held {
            c.insert(k, allow(0, 60_000));
        }
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in &held {
                    assert_eq!(state(&c, k, 10), "fresh"); // now in this thread's front table
                }
                barrier.wait();
                barrier.wait();
                for k in &held {
                    let shared = if c.get_fresh(k, 20).is_some() { "fresh" } else { "absent" };
                    assert_eq!(state(&c, k, 20), shared, "this thread's copy answers as the shared cache does");
                }
            });
            barrier.wait();
            // Newcomers asked for often (misses count in moka's frequency sketch) push them out.
            for n in 10..40 {
                for _ in 0..5 {
                    assert!(c.get_fresh(&key(n), 15).is_none());
                }
                c.insert(key(n), allow(15, 60_000));
            }
            assert!(c.entry_count() <= 2, "{}", c.entry_count()); // runs moka's maintenance: evictions
            assert!(held.iter().any(|k| c.get_fresh(k, 20).is_none()), "an entry the other thread holds was evicted");
            barrier.wait();
        });
    }

    /// A caller that held an ended entry while another exchange replaced it (with a rejection,
    /// say) could still answer from it stale: the superseded flag was not looked at.
    #[test]
    fn a_superseded_entry_never_answers_stale() {
        let c = VerdictCache::new(10);
        let held = allow(0, 1_000);
        c.insert(key(7), Arc::clone(&held));
        let now = Now::exact(1_500, 0);
        assert!(held.usable_stale(60_000, now), "ended, within the grace");
        assert!(!held.usable_stale(0, now), "no grace configured");
        assert!(!held.usable_stale(60_000, Now::exact(61_000, 0)), "past the grace");
        let denial = Arc::new(Denial::new(Reason::Invalid, "revoked"));
        c.insert(
            key(7),
            Arc::new(Entry::new(Outcome::Deny(denial), i64::MAX, 1_500, Duration::from_secs(5), None, Duration::ZERO)),
        );
        assert!(!held.usable_stale(60_000, now), "replaced by a rejection");
    }

    #[test]
    fn front_table_is_per_cache() {
        let (a, b) = (VerdictCache::new(10), VerdictCache::new(10));
        a.insert(key(5), allow(0, 1000));
        assert_eq!(state(&a, &key(5), 1), "fresh");
        assert_eq!(state(&b, &key(5), 1), "absent", "another cache's front entry must not answer");
    }

    #[test]
    fn flags_are_claimed_once() {
        let e = allow(0, 1000);
        assert!(!e.claim_refresh(999), "no refresh window");
        assert!(!e.is_stale());
        e.mark_stale(2000);
        assert!(e.is_stale());
        assert!(!e.claim_refresh(2000), "the first stale retry waits a little");
        assert!(e.claim_refresh(2100));
        assert!(!e.claim_refresh(2100));
        assert!(e.claim_stale_warning());
        assert!(!e.claim_stale_warning());
        assert!(e.is_fresh(999));
    }

    #[test]
    fn refresh_window_is_the_end_of_the_life_and_retries_are_spaced() {
        let e = Entry::new(
            Outcome::Allow(UserId(0)),
            i64::MAX,
            1000,
            Duration::from_secs(10),
            Some(Duration::from_secs(3)),
            Duration::ZERO,
        );
        assert_eq!((e.fresh_until, e.next_refresh()), (11_000, 8_000));
        assert!(!e.claim_refresh(7_999));
        assert!(e.claim_refresh(8_000), "the first use in the window");
        assert!(!e.claim_refresh(8_000), "one at a time");
        assert!(!e.claim_refresh(8_749), "a retry waits a quarter of the window");
        assert!(e.claim_refresh(8_750));
    }

    #[test]
    fn bounded_size() {
        let c = VerdictCache::new(50);
        for i in 0..2000u32 {
            c.insert(TokenKey(u128::from(i) << 64 | u128::from(i)), allow(0, 60_000));
        }
        assert!(c.entry_count() <= 50, "{}", c.entry_count());
    }
}
