//! A flood of made-up tokens can neither hammer Auth2 nor lock out an admitted user: new tokens
//! pay from a token bucket (default 10/s, burst 20) and are refused UNAVAILABLE without asking
//! Auth2 once it is spent; re-validations of tokens known valid skip the bucket and find an
//! in-flight slot held back for them. Denial log lines stay bounded meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

/// The defaults (10/s, burst 20), not the test suite's relaxed budget.
const DEFAULT_BUDGET: [(&str, &str); 2] =
    [("spark.kbase.auth.newTokens.perSecond", "10"), ("spark.kbase.auth.newTokens.burst", "20")];

#[test]
fn new_tokens_beyond_the_budget_are_refused_without_asking_auth2() {
    let fake = fake(vec![]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &DEFAULT_BUDGET, &clock);
    let outcomes: Vec<Reason> = (0..50).map(|_| denied(call(&auth, &new_token("flood"))).reason).collect();
    // The burst reaches Auth2, but for the quarter held back for tokens that come back.
    assert_eq!(outcomes.iter().filter(|r| **r == Reason::Invalid).count(), 15, "{outcomes:?}");
    assert_eq!(fake.total_requests(), 15);
    let refused = denied(call(&auth, &new_token("flood")));
    assert_eq!((refused.code(), refused.reason), (Code::Unavailable, Reason::TooManyNewTokens));
    assert!(refused.message.contains("too many new KBase tokens") && refused.message.contains("retry"));
    assert_eq!(fake.total_requests(), 15, "refused without contacting Auth2");
    assert_eq!(auth.metrics().denied_for(Reason::TooManyNewTokens), 36);
    assert_eq!(auth.metrics().auth2_fail_fast, 0, "budget refusals are their own counter");

    // Refills at 10 per second.
    clock.advance(Duration::from_millis(500));
    let reached: usize = (0..20).filter(|_| denied(call(&auth, &new_token("later"))).reason == Reason::Invalid).count();
    assert_eq!(reached, 5);
}

/// An owner who has just logged in again (a token never seen) waited behind a flood like anyone:
/// every refill of the budget went to whichever call came first, almost always the flood's. A
/// quarter of the budget is now held back for tokens refused before that come back, as a real
/// client's retries do and a flood's single-use tokens do not.
#[test]
fn a_new_owner_token_gets_in_on_its_first_retry_during_a_flood() {
    let fake = fake(vec![]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &DEFAULT_BUDGET, &clock);
    // A flood call every millisecond, each with a new token.
    let flood_for = |ms: u64| {
        for _ in 0..ms {
            clock.advance(Duration::from_millis(1));
            let _ = call(&auth, &new_token("flood"));
        }
    };
    flood_for(100);
    assert_eq!(denied(call(&auth, &new_token("flood"))).reason, Reason::TooManyNewTokens, "the budget is spent");
    let owner = new_token("relogin");
    fake.add_token(TokenEntry::new(&owner, OWNER));
    let d = denied(call(&auth, &owner));
    assert_eq!((d.code(), d.reason), (Code::Unavailable, Reason::TooManyNewTokens), "first sight: refused");
    flood_for(50); // pyspark's first retry comes 50 ms later
    assert_allowed(&call(&auth, &owner));
    assert_eq!(fake.requests_for(&owner), 1);
    // Made-up tokens still get no more than the budget.
    let lookups = fake.total_requests() - 1;
    assert!(lookups <= 20 + 2, "{lookups} lookups of flood tokens in 0.15 s");
}

#[test]
fn known_valid_tokens_skip_the_spent_budget() {
    let owner = new_token("owner");
    let fake = fake(vec![TokenEntry::new(&owner, OWNER).cachefor(2_000)]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &DEFAULT_BUDGET, &clock);
    assert_allowed(&call(&auth, &owner));
    for _ in 0..40 {
        let _ = call(&auth, &new_token("flood"));
    }
    assert_eq!(denied(call(&auth, &new_token("flood"))).reason, Reason::TooManyNewTokens);
    // The owner's entry ends (no refresh: nobody used the window) while the budget is spent:
    // the miss re-validates anyway.
    clock.advance(Duration::from_millis(2_100));
    assert_allowed(&call(&auth, &owner));
    assert_eq!(fake.requests_for(&owner), 2);
    // Its refresh too.
    clock.advance(Duration::from_millis(1_500));
    assert_allowed(&call(&auth, &owner));
    wait_idle(&auth);
    assert_eq!(fake.requests_for(&owner), 3);
}

/// An owner whose entry had ended more than `cache.maxTtl` ago (back from a pause) was a new
/// token again and waited behind a flood. A valid entry is now kept until its token expires:
/// the owner is known valid and skips the spent budget.
#[test]
fn an_owner_back_after_an_hour_skips_the_spent_budget() {
    let owner = new_token("owner");
    let fake = fake(vec![TokenEntry::new(&owner, OWNER).cachefor(2_000).expires_in(Duration::from_secs(14 * 86_400))]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &DEFAULT_BUDGET, &clock);
    assert_allowed(&call(&auth, &owner));
    clock.advance(Duration::from_secs(3_600));
    for _ in 0..40 {
        let _ = call(&auth, &new_token("flood"));
    }
    assert_eq!(denied(call(&auth, &new_token("flood"))).reason, Reason::TooManyNewTokens);
    assert_allowed(&call(&auth, &owner));
    assert_eq!(fake.requests_for(&owner), 2);
}

#[test]
fn a_slow_flood_cannot_take_the_slots_the_owner_needs() {
    let owner = new_token("owner");
    let fake = fake(vec![TokenEntry::new(&owner, OWNER).cachefor(2_000)]);
    let clock = ManualClock::new();
    // A generous budget, so that only the in-flight limit stands between the flood and Auth2.
    let auth = authenticator_at(
        &fake,
        &[
            ("spark.kbase.auth.maxConcurrentRequests", "4"),
            ("spark.kbase.auth.newTokens.perSecond", "100000"),
            ("spark.kbase.auth.newTokens.burst", "100000"),
        ],
        &clock,
    );
    assert_allowed(&call(&auth, &owner));
    fake.set_fault_blocking(Fault::Delay(Duration::from_millis(800))).unwrap();
    let stop = AtomicBool::new(false);
    let too_many = AtomicU64::new(0);
    std::thread::scope(|s| {
        // 8 flooding threads against 4 slots, 1 of them reserved: new tokens hold at most 3.
        for _ in 0..8 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let d = denied(call(&auth, &new_token("flood")));
                    if d.detail.contains("in flight") {
                        too_many.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        eventually(Duration::from_secs(10), "the flood to fill its slots", || too_many.load(Ordering::SeqCst) > 0);
        // The owner's entry ends mid-flood: its re-validation gets the reserved slot.
        clock.advance(Duration::from_millis(2_100));
        let o = call(&auth, &owner);
        stop.store(true, Ordering::SeqCst);
        assert_allowed(&o);
    });
}

#[test]
fn a_sustained_flood_keeps_auth2_load_and_the_log_bounded_while_the_owner_works() {
    // Real time: 3 s of flood from 4 threads, Auth2 answering in 100 ms, the owner calling
    // steadily with a 1 s cache window (refreshed ahead).
    let owner = new_token("owner");
    let fake = fake(vec![TokenEntry::new(&owner, OWNER).cachefor(1_000)]);
    fake.set_fault_blocking(Fault::Delay(Duration::from_millis(100))).unwrap();
    let auth = {
        let mut extra = DEFAULT_BUDGET.to_vec();
        extra.push(("spark.kbase.auth.requestTimeout", "2s"));
        authenticator(&fake, &extra)
    };
    assert_allowed(&call(&auth, &owner));
    let stop = AtomicBool::new(false);
    let (flood_calls, log_lines, owner_denials) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let reasons = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let d = denied(call(&auth, &new_token("flood")));
                    flood_calls.fetch_add(1, Ordering::SeqCst);
                    log_lines.fetch_add(d.log_lines().len() as u64, Ordering::SeqCst);
                    reasons.lock().unwrap().insert(d.reason.name());
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                if call(&auth, &owner).is_err() {
                    owner_denials.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::SeqCst);
    });
    let secs = started.elapsed().as_secs_f64();
    wait_idle(&auth);
    let flood = flood_calls.into_inner();
    let lookups = fake.total_requests() - fake.requests_for(&owner);
    println!(
        "flood: {flood} calls in {secs:.1} s; Auth2 lookups of flood tokens {lookups}; owner lookups {}; \
         log lines {}",
        fake.requests_for(&owner),
        log_lines.load(Ordering::SeqCst)
    );
    assert_eq!(owner_denials.into_inner(), 0, "the owner was never denied");
    assert!(flood > 200, "the flood was a flood: {flood}");
    assert!(lookups as f64 <= 20.0 + 10.0 * secs + 1.0, "{lookups} lookups in {secs:.1} s");
    assert!(fake.requests_for(&owner) >= 3, "the owner's token was re-validated every window");
    // Per reason seen (invalid, too many, …): at most 10 lines in each one-second window the run
    // touched (a window opens at that reason's first denial after the last one ended), plus one
    // summary line per window.
    let reasons = reasons.into_inner().unwrap();
    let windows = secs.ceil() + 1.0;
    let lines = log_lines.into_inner() as f64;
    let bound = reasons.len() as f64 * 11.0 * windows;
    assert!(lines <= bound, "{lines} log lines for {flood} denials ({reasons:?}; bound {bound})");
}
