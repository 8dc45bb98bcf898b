//! Who may start an Auth2 exchange, and when: the three gates in front of the network.
//!
//! * [`NewTokenBudget`]: a token bucket for tokens the cache has never seen valid. A flood of
//!   made-up tokens costs Auth2 at most `perSecond` lookups a second (after a `burst`). Part of
//!   it is held back for tokens it refused before that come back: a real client retries its
//!   own token, a flood of made-up tokens sends each once.
//! * [`InFlightLimit`]: at most `maxConcurrentRequests` exchanges at once, part of them held
//!   back for tokens known valid, so that the owner's re-validation always finds a slot.
//! * [`Breaker`]: after `failFast.threshold` failures of the *service* (connect errors,
//!   timeouts, 5xx) within [`FAILURE_WINDOW`] every lookup fails fast for `failFast.cooldown`;
//!   then one trial exchange is let through for each [`Purpose`], and only a real answer from
//!   Auth2 closes it again. Tokens known valid have a trial of their own: a flood of new tokens,
//!   whose invalid answers leave the breaker half-open, cannot keep it from them.
//!
//! Joining an exchange already in flight for the same token costs nothing and passes no gate.
//! Times are monotonic milliseconds from the caller (see [`crate::clock`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::token::TokenKey;

/// Why an exchange was not started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The new-token budget is spent (no Auth2 contact).
    BudgetSpent,
    /// The breaker is open after repeated service failures.
    CoolingDown(Duration),
    /// The breaker's trial exchange (for this class of lookup) after the cool-down is already
    /// in flight.
    TrialInFlight,
    /// Every slot this class of lookup may use is taken.
    TooManyInFlight(u32),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BudgetSpent => f.write_str("the new-token budget is spent; Auth2 was not asked"),
            Refusal::CoolingDown(left) => {
                write!(f, "Auth2 failed repeatedly; not asking it again for another {} ms", left.as_millis())
            }
            Refusal::TrialInFlight => f.write_str("Auth2 failed repeatedly; a trial request is in flight"),
            Refusal::TooManyInFlight(n) => write!(f, "{n} Auth2 requests already in flight"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Token bucket: `per_second` refill, `burst` capacity, starting full.
///
/// Nothing tells an owner's new token (just logged in) from a made-up one before Auth2 has seen
/// it, but one thing tells their *callers* apart: a real client that is refused retries the same
/// token (pyspark retries `UNAVAILABLE` after 50 ms, 200 ms, 0.8 s, 3.2 s, …), while a flood of
/// made-up tokens mostly sends each once. So the last quarter of the burst is held back for
/// tokens this budget refused before: under such a flood a new token gets in on its first retry.
/// A flood that repeats each made-up token competes for that quarter too; the total Auth2 load
/// stays `burst + per_second × t` either way.
pub struct NewTokenBudget {
    per_second: u32,
    burst: u32,
    /// Whole lookups of the bucket that only returning tokens may take.
    reserve: u32,
    state: Mutex<Bucket>,
    refused: Refused,
}

struct Bucket {
    /// Tokens available, in thousandths (refill in whole milliseconds stays exact).
    milli_tokens: u64,
    last_ms: u64,
}

impl NewTokenBudget {
    pub fn new(per_second: u32, burst: u32, now_ms: u64) -> NewTokenBudget {
        NewTokenBudget {
            per_second,
            burst,
            reserve: burst / 4,
            state: Mutex::new(Bucket { milli_tokens: u64::from(burst) * 1000, last_ms: now_ms }),
            refused: Refused::new(),
        }
    }

    /// Lookups held back for returning tokens.
    pub fn reserve(&self) -> u32 {
        self.reserve
    }

    /// Takes one lookup from the budget for `key` if there is one; a refusal is remembered, so
    /// that the token's next try may use the held-back part.
    pub fn try_take(&self, now_ms: u64, key: TokenKey) -> bool {
        let returning = self.refused.contains(key);
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.last_ms = b.last_ms.max(now_ms);
        let cap = u64::from(self.burst) * 1000;
        b.milli_tokens = cap.min(b.milli_tokens.saturating_add(elapsed.saturating_mul(u64::from(self.per_second))));
        let floor = if returning { 0 } else { u64::from(self.reserve) * 1000 };
        if b.milli_tokens >= floor + 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            drop(b);
            self.refused.note(key);
            false
        }
    }
}

/// The tokens the budget refused lately: a direct-mapped table of 64-bit tags, written without
/// a lock. A refusal overwrites its token's slot, so under a flood a tag survives `SLOTS`
/// refusals on average: ~6 s at the 2 800 refused calls a second one 2-core server takes, far
/// longer than a client's first retries. 128 KiB.
struct Refused {
    slots: Box<[AtomicU64]>,
}

impl Refused {
    const SLOTS: usize = 16 * 1024;

    fn new() -> Refused {
        Refused { slots: (0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }

    /// The key's slot (its low bits) and tag (its high 64 bits, never 0: 0 is an empty slot);
    /// the key is already a uniform keyed hash.
    fn slot(&self, key: TokenKey) -> (&AtomicU64, u64) {
        (&self.slots[key.0 as usize % Self::SLOTS], (key.0 >> 64) as u64 | 1)
    }

    fn note(&self, key: TokenKey) {
        let (slot, tag) = self.slot(key);
        slot.store(tag, Relaxed);
    }

    fn contains(&self, key: TokenKey) -> bool {
        let (slot, tag) = self.slot(key);
        slot.load(Relaxed) == tag
    }
}

// ---------------------------------------------------------------------------------------------

/// What a lookup is for; decides which gates apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A token with no recent valid answer: pays from the budget, uses the unreserved slots.
    NewToken,
    /// Re-validation of a token Auth2 recently called valid (refresh ahead, or the first call
    /// after its entry ended): no budget, may use every slot.
    KnownValid,
}

/// Caps concurrent exchanges; `reserved` of the `max` slots are for [`Purpose::KnownValid`].
pub struct InFlightLimit {
    in_flight: AtomicU32,
    max: u32,
    reserved: u32,
}

/// Holds one slot; released on drop, so every exit path gives it back (it travels with the
/// exchange into the I/O runtime, hence the `Arc`).
pub struct Slot(Arc<InFlightLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl InFlightLimit {
    /// Reserves a quarter of the slots (at least one, as long as one is left for new tokens;
    /// the settings refuse fewer than two slots).
    pub fn new(max: u32) -> InFlightLimit {
        let reserved = if max >= 2 { (max / 4).max(1) } else { 0 };
        InFlightLimit { in_flight: AtomicU32::new(0), max, reserved }
    }

    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    pub fn try_acquire(self: &Arc<Self>, purpose: Purpose) -> Result<Slot, Refusal> {
        let limit = match purpose {
            Purpose::NewToken => self.max - self.reserved,
            Purpose::KnownValid => self.max,
        };
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .map(|_| Slot(Arc::clone(self)))
            .map_err(|_| Refusal::TooManyInFlight(limit))
    }
}

// ---------------------------------------------------------------------------------------------

/// How an exchange ended, as far as the breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceOutcome {
    /// Auth2 answered a lookup with a valid token's identity: the service works.
    Healthy,
    /// Auth2 could not be reached, timed out or failed (5xx).
    Failed,
    /// Anything else (an invalid token, one token's odd answer): says nothing about the
    /// service's health either way. A flood of made-up tokens cannot hold the breaker closed.
    Neutral,
}

/// Permission for one exchange; report how it went with [`Breaker::record`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    Closed,
    /// The one exchange of its [`Purpose`] let through after a cool-down.
    Trial(Purpose),
}

/// Service failures count towards opening the breaker only this long after the first of them:
/// failures sparser than `threshold` per window (with no valid answer in between) never add
/// up to an outage.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    /// Failures counted, and when the first of them happened (monotonic ms).
    failures: Mutex<(u32, u64)>,
    /// Monotonic ms until which lookups fail fast; 0 while closed. Past it: half-open.
    open_until_ms: AtomicU64,
    /// A trial in flight, per [`Purpose`] (indexed by [`Breaker::trial_index`]).
    trial_in_flight: [AtomicBool; 2],
}

impl Breaker {
    /// `threshold` 0 never opens.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold,
            cooldown_ms: cooldown.as_millis() as u64,
            failures: Mutex::new((0, 0)),
            open_until_ms: AtomicU64::new(0),
            trial_in_flight: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    fn trial_index(purpose: Purpose) -> usize {
        match purpose {
            Purpose::NewToken => 0,
            Purpose::KnownValid => 1,
        }
    }

    pub fn admit(&self, now_ms: u64, purpose: Purpose) -> Result<Pass, Refusal> {
        let until = self.open_until_ms.load(Relaxed);
        if until == 0 {
            return Ok(Pass::Closed);
        }
        if now_ms < until {
            return Err(Refusal::CoolingDown(Duration::from_millis(until - now_ms)));
        }
        match self.trial_in_flight[Self::trial_index(purpose)].compare_exchange(false, true, Relaxed, Relaxed) {
            Ok(_) => Ok(Pass::Trial(purpose)),
            Err(_) => Err(Refusal::TrialInFlight),
        }
    }

    pub fn record(&self, pass: Pass, outcome: ServiceOutcome, now_ms: u64) {
        match outcome {
            ServiceOutcome::Healthy => {
                *self.failures.lock().unwrap_or_else(|e| e.into_inner()) = (0, 0);
                self.open_until_ms.store(0, Relaxed);
            }
            ServiceOutcome::Failed if matches!(pass, Pass::Trial(_)) => self.open(now_ms),
            ServiceOutcome::Failed => {
                let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                let window_ms = FAILURE_WINDOW.as_millis() as u64;
                if f.0 == 0 || now_ms >= f.1.saturating_add(window_ms) {
                    *f = (0, now_ms);
                }
                f.0 += 1;
                if self.threshold > 0 && f.0 >= self.threshold {
                    *f = (0, 0);
                    drop(f);
                    self.open(now_ms);
                }
            }
            ServiceOutcome::Neutral => {}
        }
        if let Pass::Trial(purpose) = pass {
            self.trial_in_flight[Self::trial_index(purpose)].store(false, Relaxed);
        }
    }

    fn open(&self, now_ms: u64) {
        // max(1): 0 means closed.
        self.open_until_ms.store((now_ms + self.cooldown_ms).max(1), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new key per call, as a flood of made-up tokens sends.
    fn fresh() -> TokenKey {
        static N: AtomicU64 = AtomicU64::new(1);
        let n = u128::from(N.fetch_add(1, Relaxed));
        TokenKey(n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) ^ n << 64)
    }

    #[test]
    fn budget_bursts_then_refills_at_its_rate() {
        let b = NewTokenBudget::new(10, 20, 1_000);
        assert_eq!(b.reserve(), 5);
        assert_eq!((0..30).filter(|_| b.try_take(1_000, fresh())).count(), 15, "the burst, less the reserve");
        let returning: Vec<TokenKey> = (0..10).map(|_| fresh()).collect();
        for k in &returning {
            assert!(!b.try_take(1_000, *k), "first sight: refused");
        }
        assert_eq!(returning.iter().filter(|k| b.try_take(1_000, **k)).count(), 5, "the reserve, for returning tokens");
        assert!(!b.try_take(1_099, returning[9]), "99 ms refill less than one token");
        assert!(b.try_take(1_100, returning[9]), "100 ms at 10/s is one token");
        assert!(!b.try_take(1_100, returning[8]));
        // A long pause refills to the burst, not beyond.
        assert_eq!((0..30).filter(|_| b.try_take(100_000, fresh())).count(), 15);
        // Over a simulated minute, at most burst + rate × time, whoever asks.
        let mut taken = 0;
        let again = fresh();
        for ms in (100_000..160_000).step_by(7) {
            taken += usize::from(b.try_take(ms, if ms % 2 == 0 { again } else { fresh() }));
        }
        assert!((599..=606).contains(&taken), "{taken}");
        // A clock that goes backwards (another thread read it earlier) neither panics nor refills.
        assert!(!b.try_take(50, again));
    }

    /// A never-seen token waited behind a flood like any other: each refill went to whichever
    /// call came first, almost always the flood's. Refused once, it now gets in when it comes back.
    #[test]
    fn a_returning_token_gets_in_while_a_flood_of_single_use_tokens_runs() {
        let b = NewTokenBudget::new(10, 20, 0);
        let owner = fresh();
        let mut owner_in = None;
        // 1 000 flood calls a second for 10 s; the owner's client tries at 1 s, then retries
        // after 50 ms, 200 ms, 800 ms.
        let tries = [1_000, 1_050, 1_250, 2_050];
        for us in (0..10_000_000u64).step_by(1_000) {
            let ms = us / 1_000;
            let _ = b.try_take(ms, fresh());
            if owner_in.is_none() && tries.contains(&ms) && b.try_take(ms, owner) {
                owner_in = Some(ms);
            }
        }
        assert_eq!(owner_in, Some(1_050), "in on the first retry");
    }

    #[test]
    fn tiny_bursts_hold_nothing_back() {
        let b = NewTokenBudget::new(1, 3, 0);
        assert_eq!(b.reserve(), 0);
        assert_eq!((0..5).filter(|_| b.try_take(0, fresh())).count(), 3);
    }

    #[test]
    fn in_flight_keeps_a_reserve_for_known_valid_tokens() {
        let l = Arc::new(InFlightLimit::new(8));
        assert_eq!(l.reserved(), 2);
        let new: Vec<_> = (0..6).map(|_| l.try_acquire(Purpose::NewToken).unwrap()).collect();
        assert_eq!(l.try_acquire(Purpose::NewToken).err(), Some(Refusal::TooManyInFlight(6)));
        let k1 = l.try_acquire(Purpose::KnownValid).unwrap();
        let _k2 = l.try_acquire(Purpose::KnownValid).unwrap();
        assert_eq!(l.try_acquire(Purpose::KnownValid).err(), Some(Refusal::TooManyInFlight(8)));
        drop(k1);
        assert!(l.try_acquire(Purpose::NewToken).is_err(), "a freed reserved slot is still not for new tokens");
        drop(new);
        assert!(l.try_acquire(Purpose::NewToken).is_ok());
        // Tiny limits: new tokens always keep at least one slot.
        assert_eq!(InFlightLimit::new(1).reserved(), 0);
        assert_eq!(InFlightLimit::new(2).reserved(), 1);
        assert_eq!(InFlightLimit::new(32).reserved(), 8);
    }

    const NEW: Purpose = Purpose::NewToken;
    const KNOWN: Purpose = Purpose::KnownValid;

    #[test]
    fn breaker_opens_on_service_failures_only() {
        let b = Breaker::new(3, Duration::from_millis(1000));
        for _ in 0..10 {
            b.record(b.admit(0, NEW).unwrap(), ServiceOutcome::Neutral, 0);
        }
        b.record(b.admit(0, NEW).unwrap(), ServiceOutcome::Failed, 0);
        b.record(b.admit(0, NEW).unwrap(), ServiceOutcome::Failed, 0);
        // An invalid-token answer between failures does not reset the count.
        b.record(b.admit(0, NEW).unwrap(), ServiceOutcome::Neutral, 0);
        assert_eq!(b.admit(0, NEW), Ok(Pass::Closed));
        b.record(Pass::Closed, ServiceOutcome::Failed, 5);
        assert_eq!(b.admit(500, NEW), Err(Refusal::CoolingDown(Duration::from_millis(505))));
    }

    #[test]
    fn healthy_answer_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(60));
        b.record(Pass::Closed, ServiceOutcome::Failed, 0);
        b.record(Pass::Closed, ServiceOutcome::Healthy, 0);
        b.record(Pass::Closed, ServiceOutcome::Failed, 0);
        assert_eq!(b.admit(0, NEW), Ok(Pass::Closed));
    }

    /// The count used to grow forever without a valid answer: two failures a day apart opened
    /// a breaker with threshold 2.
    #[test]
    fn failures_count_only_within_the_window() {
        let window = FAILURE_WINDOW.as_millis() as u64;
        let b = Breaker::new(3, Duration::from_secs(2));
        let mut now = 1_000_000;
        for _ in 0..10 {
            b.record(Pass::Closed, ServiceOutcome::Failed, now);
            b.record(Pass::Closed, ServiceOutcome::Failed, now + 1);
            now += window; // the third comes a window after the first
            assert_eq!(b.admit(now, NEW), Ok(Pass::Closed), "sparse failures never open it");
        }
        b.record(Pass::Closed, ServiceOutcome::Failed, now);
        b.record(Pass::Closed, ServiceOutcome::Failed, now + window - 1);
        assert_eq!(b.admit(now + window - 1, NEW), Ok(Pass::Closed));
        b.record(Pass::Closed, ServiceOutcome::Failed, now + window - 1);
        assert!(matches!(b.admit(now + window, NEW), Err(Refusal::CoolingDown(_))), "three within a window");
    }

    #[test]
    fn one_trial_after_the_cooldown_and_only_health_closes() {
        let b = Breaker::new(1, Duration::from_millis(100));
        b.record(Pass::Closed, ServiceOutcome::Failed, 0);
        assert!(matches!(b.admit(99, NEW), Err(Refusal::CoolingDown(_))));
        let trial = b.admit(100, NEW).unwrap();
        assert_eq!(trial, Pass::Trial(NEW));
        assert_eq!(b.admit(100, NEW), Err(Refusal::TrialInFlight), "exactly one trial at a time");
        b.record(trial, ServiceOutcome::Neutral, 150);
        // Neutral: still half-open; the next lookup is the next trial.
        let trial = b.admit(150, NEW).unwrap();
        assert_eq!(trial, Pass::Trial(NEW));
        b.record(trial, ServiceOutcome::Failed, 200);
        assert!(matches!(b.admit(250, NEW), Err(Refusal::CoolingDown(_))), "a failed trial re-opens");
        let trial = b.admit(300, NEW).unwrap();
        b.record(trial, ServiceOutcome::Healthy, 310);
        assert_eq!(b.admit(310, NEW), Ok(Pass::Closed));
        assert_eq!(b.admit(310, NEW), Ok(Pass::Closed), "closed: no trial limit");
    }

    /// A flood of new tokens took the one trial over and over (their invalid answers are
    /// neutral), so a known-valid token's re-validation almost never got it.
    #[test]
    fn known_valid_tokens_have_a_trial_of_their_own() {
        let b = Breaker::new(1, Duration::from_millis(100));
        b.record(Pass::Closed, ServiceOutcome::Failed, 0);
        let flood = b.admit(100, NEW).unwrap();
        assert_eq!(b.admit(100, NEW), Err(Refusal::TrialInFlight));
        let owner = b.admit(100, KNOWN).unwrap();
        assert_eq!(owner, Pass::Trial(KNOWN), "the new tokens' trial does not block it");
        assert_eq!(b.admit(100, KNOWN), Err(Refusal::TrialInFlight), "one of each at a time");
        b.record(flood, ServiceOutcome::Neutral, 150);
        b.record(owner, ServiceOutcome::Healthy, 150);
        assert_eq!(b.admit(150, NEW), Ok(Pass::Closed));
    }

    #[test]
    fn zero_threshold_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            b.record(Pass::Closed, ServiceOutcome::Failed, 0);
        }
        assert_eq!(b.admit(0, NEW), Ok(Pass::Closed));
    }
}
