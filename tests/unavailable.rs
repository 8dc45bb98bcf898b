//! Auth2 trouble: every failure mode is UNAVAILABLE (never allow, never cached), every wait is
//! bounded, repeated failures fail fast, and everything recovers without a restart.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::*;

fn assert_unavailable(d: Outcome) -> kbase_spark_auth::Denial {
    let d = denied(d);
    assert_eq!((d.code(), d.reason), (Code::Unavailable, Reason::Unavailable), "{}", d.log_line());
    assert!(d.message.contains("KBase auth service unavailable"), "{}", d.message);
    d
}

#[test]
fn every_fault_is_unavailable_and_not_cached() {
    let faults = [
        (Fault::Refuse, "could not connect"),
        (Fault::Delay(Duration::from_secs(3)), "timed out"),
        (Fault::Status503, "HTTP 503"),
        (Fault::Html502, "HTTP 502"),
        (Fault::Malformed, "not the expected JSON"),
        (Fault::NoUser, "no 'user'"),
    ];
    for (fault, detail) in faults {
        let t = new_token("fault");
        let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
        let auth = authenticator(&fake, &[]);
        fake.set_fault_blocking(fault.clone()).unwrap();
        let started = Instant::now();
        let d = assert_unavailable(call(&auth, &t));
        // requestTimeout is 1s; the wait must end near it, not at the fake's 3s delay.
        assert!(started.elapsed() < Duration::from_millis(2500), "{fault:?} waited {:?}", started.elapsed());
        assert!(d.detail.contains(detail), "{fault:?}: {}", d.detail);
        assert!(!d.message.contains(&t) && !d.log_line().contains(&t));
        // Fault cleared: the very same token works at once, so nothing was cached.
        fake.set_fault_blocking(Fault::None).unwrap();
        assert_allowed(&call(&auth, &t));
        assert!(auth.metrics().auth2_failures >= 1);
    }
}

#[test]
fn cached_owner_keeps_working_while_auth2_is_down() {
    let (cached, fresh) = (new_token("cached"), new_token("fresh"));
    let fake = fake(vec![TokenEntry::new(&cached, OWNER), TokenEntry::new(&fresh, OWNER)]);
    let auth = authenticator(&fake, &[]);
    assert_allowed(&call(&auth, &cached));
    fake.set_fault_blocking(Fault::Refuse).unwrap();
    for _ in 0..100 {
        assert_allowed(&call(&auth, &cached));
    }
    assert_unavailable(call(&auth, &fresh));
    fake.set_fault_blocking(Fault::None).unwrap();
    assert_allowed(&call(&auth, &fresh));
}

#[test]
fn single_flight_for_64_concurrent_first_calls() {
    let t = new_token("herd");
    let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
    // Slow Auth2 so that all 64 callers are waiting at once.
    fake.set_fault_blocking(Fault::Delay(Duration::from_millis(300))).unwrap();
    let auth = authenticator(&fake, &[]);
    let barrier = Barrier::new(64);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                barrier.wait();
                assert_allowed(&call(&auth, &t));
            });
        }
    });
    assert_eq!(fake.requests_for(&t), 1);
    assert_eq!(auth.metrics().auth2_requests, 1);
}

#[test]
fn repeated_failures_fail_fast_then_recover() {
    let fake = fake(vec![]);
    let auth = authenticator(
        &fake,
        &[("spark.kbase.auth.failFast.threshold", "3"), ("spark.kbase.auth.failFast.cooldown", "500ms")],
    );
    fake.set_fault_blocking(Fault::Status503).unwrap();
    for _ in 0..3 {
        assert_unavailable(call(&auth, &new_token("x")));
    }
    assert_eq!(fake.total_requests(), 3);
    let d = assert_unavailable(call(&auth, &new_token("x")));
    assert!(d.detail.contains("not asking it again"), "{}", d.detail);
    assert_eq!(fake.total_requests(), 3, "cooling down: no request sent");
    assert_eq!(auth.metrics().auth2_fail_fast, 1);

    let t = new_token("back");
    fake.add_token(TokenEntry::new(&t, OWNER));
    fake.set_fault_blocking(Fault::None).unwrap();
    eventually(Duration::from_secs(5), "cool-down to end and Auth2 to be asked again", || call(&auth, &t).is_ok());
}

#[test]
fn waiting_threads_are_capped() {
    let fake = fake(vec![]);
    fake.set_fault_blocking(Fault::Delay(Duration::from_millis(500))).unwrap();
    let auth = authenticator(&fake, &[("spark.kbase.auth.maxConcurrentRequests", "2")]);
    let barrier = Barrier::new(6);
    let fast_fails = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                barrier.wait();
                let d = denied(call(&auth, &new_token("cap")));
                if d.reason == Reason::Unavailable && d.detail.contains("in flight") {
                    fast_fails.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    // Six distinct tokens at once, two slots: at least four are turned away without waiting.
    assert!(fast_fails.into_inner() >= 4);
    assert!(fake.total_requests() <= 2 + 2, "{}", fake.total_requests());
}
