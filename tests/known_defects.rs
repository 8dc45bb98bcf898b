//! Regression tests for defects found by reading the code (the "owner keeps working" issue and
//! its follow-up); each failed before its fix.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Expiry was judged with the clock read before the Auth2 wait: a token expiring while Auth2
/// answered was allowed.
#[test]
fn a_token_that_expires_while_auth2_answers_is_denied() {
    // Auth2 looks when the token has 1.5 s left, and its 200 arrives 3 s later.
    let t = new_token("racing");
    let fake = fake(vec![TokenEntry::new(&t, OWNER).expires_in(Duration::from_millis(1_500))]);
    fake.set_fault_blocking(Fault::LateAnswer(Duration::from_secs(3))).unwrap();
    let auth = authenticator(&fake, &[("spark.kbase.auth.requestTimeout", "6s")]);
    let d = denied(call(&auth, &t));
    assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Expired), "{d:?}");
    assert_eq!(fake.requests_for(&t), 1);
}

/// The per-thread front table's deadline was on the wall clock: with the clock stepped back,
/// a front entry (an allow for a since-revoked token) outlived the shared entry.
#[test]
fn a_wall_clock_step_back_does_not_stretch_a_cache_window() {
    let t = new_token("stepped");
    let fake = fake(vec![TokenEntry::new(&t, OWNER).cachefor(2_000)]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &[("spark.kbase.auth.cache.refreshAhead", "0ms")], &clock);
    assert_allowed(&call(&auth, &t)); // now in this thread's front table too
    assert!(fake.revoke(&t));
    clock.step_wall(-3_600_000);
    clock.advance(Duration::from_millis(2_100));
    let d = denied(call(&auth, &t));
    assert_eq!(d.reason, Reason::Invalid, "the window ended on the monotonic clock: {d:?}");
    assert_eq!(fake.requests_for(&t), 2);
}

/// Any HTTP 400 was cached as "invalid token"; a 400 from a proxy or firewall in front of Auth2,
/// or Auth2's own "no token" when a proxy dropped the header, says nothing about the token.
#[test]
fn a_400_from_a_proxy_is_unavailable_and_not_remembered() {
    for fault in [Fault::Status400Html, Fault::Status400Json, Fault::DropToken] {
        let t = new_token("proxied");
        let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
        let auth = authenticator(&fake, &[]);
        fake.set_fault_blocking(fault.clone()).unwrap();
        for attempt in 1..=3 {
            let d = denied(call(&auth, &t));
            assert_eq!((d.code(), d.reason), (Code::Unavailable, Reason::Unavailable), "{fault:?}: {d:?}");
            assert!(d.detail.contains("HTTP 400"), "{}", d.detail);
            assert_eq!(fake.requests_for(&t), attempt, "{fault:?}: the answer must not be cached");
        }
        fake.set_fault_blocking(Fault::None).unwrap();
        assert_allowed(&call(&auth, &t));
    }
}

/// The breaker counted one token's odd answer as a service failure, and an invalid answer reset it.
#[test]
fn odd_answers_do_not_open_the_breaker_and_invalid_answers_do_not_reset_it() {
    let fake = fake(vec![]);
    let breaker = [("spark.kbase.auth.failFast.threshold", "3"), ("spark.kbase.auth.failFast.cooldown", "1h")];
    let auth = authenticator(&fake, &breaker);
    fake.set_fault_blocking(Fault::Malformed).unwrap();
    for _ in 0..10 {
        let t = new_token("odd");
        fake.add_token(TokenEntry::new(&t, OWNER));
        assert_eq!(denied(call(&auth, &t)).reason, Reason::Unavailable);
    }
    assert_eq!(fake.total_requests(), 10, "every odd answer was a real exchange: the breaker stayed closed");

    // Two service failures, an invalid token's 401, a third failure: open.
    fake.reset_counts();
    for fault in [Fault::Status503, Fault::Status503, Fault::None, Fault::Status503] {
        fake.set_fault_blocking(fault).unwrap();
        let _ = call(&auth, &new_token("unknown"));
    }
    fake.set_fault_blocking(Fault::None).unwrap();
    let d = denied(call(&auth, &new_token("unknown")));
    assert!(d.detail.contains("not asking it again"), "{d:?}");
    assert_eq!(fake.total_requests(), 4);
}

/// The breaker promised one trial exchange after the cool-down but let every miss through.
#[test]
fn after_the_cooldown_exactly_one_trial_goes_through() {
    let fake = fake(vec![]);
    let clock = ManualClock::new();
    let auth = authenticator_at(
        &fake,
        &[("spark.kbase.auth.failFast.threshold", "1"), ("spark.kbase.auth.failFast.cooldown", "1s")],
        &clock,
    );
    fake.set_fault_blocking(Fault::Status503).unwrap();
    let _ = call(&auth, &new_token("fail"));
    clock.advance(Duration::from_millis(1_100));
    fake.set_fault_blocking(Fault::Delay(Duration::from_millis(500))).unwrap();
    fake.reset_counts();
    let tokens: Vec<String> = (0..8).map(|_| new_token("trial")).collect();
    for t in &tokens {
        fake.add_token(TokenEntry::new(t, OWNER));
    }
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens.iter().map(|t| s.spawn(|| call(&auth, t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(fake.total_requests(), 1, "one trial exchange");
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    // The trial succeeded: closed again.
    let t = new_token("after");
    fake.add_token(TokenEntry::new(&t, OWNER));
    assert_allowed(&call(&auth, &t));
}

/// A clock error made `epoch_ms()` return 0, so every token looked unexpired.
#[test]
fn an_unreadable_clock_denies() {
    let t = new_token("clock");
    let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &[], &clock);
    assert_allowed(&call(&auth, &t));
    clock.break_clock();
    let d = denied(call(&auth, &t));
    assert_eq!((d.code(), d.reason), (Code::Internal, Reason::Internal), "{d:?}");
    assert!(d.detail.contains("clock"), "{}", d.detail);
}

/// After an outage the breaker is half-open: it let one trial through at a time, and a flood of
/// new tokens took that trial over and over (their invalid answers leave it half-open), so the
/// owner's re-validation found "a trial request is in flight" for as long as the flood ran.
/// Known-valid tokens now have a trial of their own.
#[test]
fn after_an_outage_the_owner_gets_back_in_while_a_flood_runs() {
    const COOLDOWN: Duration = Duration::from_secs(1);
    const RTT: Duration = Duration::from_millis(300);
    let owner = new_token("owner");
    // The owner's entry runs out half-way through the cool-down.
    let fake = fake(vec![TokenEntry::new(&owner, OWNER).cachefor(500)]);
    let auth = authenticator(
        &fake,
        &[
            ("spark.kbase.auth.failFast.threshold", "1"),
            ("spark.kbase.auth.failFast.cooldown", "1s"),
            ("spark.kbase.auth.newTokens.perSecond", "10"),
            ("spark.kbase.auth.newTokens.burst", "20"),
            ("spark.kbase.auth.cache.refreshAhead", "0ms"),
            ("spark.kbase.auth.requestTimeout", "2s"),
        ],
    );
    assert_allowed(&call(&auth, &owner));
    // The outage: one 503 opens the breaker. Then Auth2 recovers, answering in 300 ms.
    fake.set_fault_blocking(Fault::Status503).unwrap();
    assert_eq!(denied(call(&auth, &new_token("outage"))).reason, Reason::Unavailable);
    let opened = Instant::now();
    fake.set_fault_blocking(Fault::Delay(RTT)).unwrap();

    let stop = AtomicBool::new(false);
    let (mut owner_denials, mut back_in) = (Vec::new(), None);
    std::thread::scope(|s| {
        // 8 threads of new tokens, each calling every 0.5 ms: far more often than one trial per Auth2 round trip (the budget has
        // room for every trial they take).
        for _ in 0..8 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let _ = call(&auth, &new_token("flood"));
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
        }
        let deadline = opened + Duration::from_secs(8);
        while Instant::now() < deadline {
            match call(&auth, &owner) {
                Ok(_) if !owner_denials.is_empty() => {
                    back_in = Some(opened.elapsed());
                    break;
                }
                Ok(_) => {}
                Err(d) => owner_denials.push(d),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
    });
    wait_idle(&auth);
    assert!(!owner_denials.is_empty(), "the owner's entry ran out during the cool-down");
    assert!(owner_denials.iter().all(|d| d.reason == Reason::Unavailable), "{owner_denials:?}");
    let back_in = back_in
        .unwrap_or_else(|| panic!("the owner was not let back in within 8 s; last denial: {:?}", owner_denials.last()));
    let bound = COOLDOWN + RTT + Duration::from_millis(500);
    println!("owner back in {back_in:?} after the breaker opened (bound {bound:?})");
    assert!(back_in <= bound, "the owner got back in only {back_in:?} after the breaker opened (bound {bound:?})");
}

/// A thread's front-table copy of the owner's entry kept answering after moka evicted the entry
/// for size, so a revocation that a later lookup found (and cached) never reached that thread.
#[test]
fn a_revocation_reaches_threads_that_held_an_evicted_entry() {
    let owner = new_token("owner");
    let others: Vec<String> = (0..8).map(|_| new_token("other")).collect();
    let fake = fake(std::iter::once(&owner).chain(&others).map(|t| TokenEntry::new(t, OWNER)).collect());
    let auth = authenticator(&fake, &[("spark.kbase.auth.cache.maxEntries", "2")]);
    assert_allowed(&call(&auth, &owner));
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let (to_main, from_worker) = std::sync::mpsc::channel::<Outcome>();
    let (auth_ref, owner_ref) = (&auth, &owner);
    std::thread::scope(|s| {
        s.spawn(move || {
            to_main.send(call(auth_ref, owner_ref)).unwrap(); // now in this thread's front table
            from_main.recv().unwrap();
            to_main.send(call(auth_ref, owner_ref)).unwrap();
        });
        assert_allowed(&from_worker.recv().unwrap());
        // Other users' tokens, asked for again and again (more than the front table holds, so
        // each call asks the shared cache), push the owner's entry out.
        for _ in 0..10 {
            for t in &others {
                assert_allowed(&call(&auth, t));
            }
        }
        assert!(auth.cached_entries() <= 2); // runs the cache's maintenance, where it evicts
        assert!(fake.revoke(&owner));
        assert_eq!(denied(call(&auth, &owner)).reason, Reason::Invalid);
        assert_eq!(fake.requests_for(&owner), 2, "the owner's entry had been evicted and was looked up again");
        to_worker.send(()).unwrap();
        let d = denied(from_worker.recv().unwrap());
        assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Invalid), "{d:?}");
    });
}

/// Expiry was judged on the coarse wall clock, which lags the true time by a tick or more
/// (up to 5 ms measured here): a token was allowed for a few milliseconds past its expiry.
/// Against the real system clock: a cached token, called 1 ms after it expired, many times.
#[test]
fn a_token_is_denied_one_millisecond_after_its_expiry() {
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[]);
    for round in 0..100 {
        let t = new_token("expiring");
        let expires = now_ms() + 40;
        fake.add_token(TokenEntry::new(&t, OWNER).expires_at_ms(expires));
        assert_allowed(&call(&auth, &t));
        // Spin to the first millisecond after the expiry (a sleep would overshoot it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while now_ms() <= expires {
            assert!(Instant::now() < deadline, "the clock stands still");
            std::hint::spin_loop();
        }
        let d = denied(call(&auth, &t));
        assert_eq!(d.reason, Reason::Expired, "round {round}: {d:?}");
    }
}

/// Auth2's own 400 "no authentication token" was cached as an invalid token, and so ended a
/// stale-if-error grace. We always send a token: that answer means something between us and
/// Auth2 removed the header, a failure to check, not a verdict on the token.
#[test]
fn auth2s_no_token_answer_is_a_failure_to_check_not_a_verdict() {
    let owner = new_token("dropped");
    let fake = fake(vec![TokenEntry::new(&owner, OWNER).cachefor(2_000)]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, &[("spark.kbase.auth.cache.staleIfError", "1m")], &clock);
    assert_allowed(&call(&auth, &owner));
    fake.set_fault_blocking(Fault::DropToken).unwrap();
    clock.advance(Duration::from_millis(2_100));
    // The owner's entry has ended: it keeps working on its last valid answer.
    match call(&auth, &owner) {
        Ok(Allowed { warning: Some(line), .. }) => assert!(line.contains("no authentication token"), "{line}"),
        other => panic!("expected a stale allow, got {other:?}"),
    }
    // (A token never seen is UNAVAILABLE and not remembered: `a_400_from_a_proxy_…` above.)
    fake.set_fault_blocking(Fault::None).unwrap();
    clock.advance(Duration::from_secs(1)); // the owner's background retry is due
    assert_allowed(&call(&auth, &owner));
    wait_idle(&auth);
    let stale = auth.metrics().stale_allows;
    assert_allowed(&call(&auth, &owner));
    assert_eq!(auth.metrics().stale_allows, stale, "validated again: a fresh entry answers");
}
