//! Shared set-up for the integration tests: a fake Auth2 on loopback and an authenticator
//! configured against it.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use fake_auth2::{FakeAuth2, FakeConfig, Fault, TokenEntry};
pub use kbase_spark_auth::{Allowed, Authenticator, Code, Denial, Reason};

/// What [`Authenticator::authorize`] returns.
pub type Outcome = Result<Allowed, Denial>;

pub const OWNER: &str = "alice";

pub fn fake(tokens: Vec<TokenEntry>) -> FakeAuth2 {
    let mut cfg = FakeConfig::new();
    for t in tokens {
        cfg = cfg.token(t);
    }
    FakeAuth2::start_blocking(cfg).expect("fake Auth2 starts")
}

/// An authenticator for `fake` with owner `alice`, short timeouts, and `extra` settings.
pub fn authenticator(fake: &FakeAuth2, extra: &[(&str, &str)]) -> Authenticator {
    Authenticator::new(settings(fake, extra)).expect("valid settings")
}

/// The settings [`authenticator`] uses.
pub fn settings(fake: &FakeAuth2, extra: &[(&str, &str)]) -> kbase_spark_auth::Settings {
    let mut map: HashMap<String, String> = HashMap::from([
        ("spark.kbase.auth.url".into(), fake.url()),
        ("spark.kbase.auth.owner".into(), OWNER.into()),
        ("spark.kbase.auth.connectTimeout".into(), "500ms".into()),
        ("spark.kbase.auth.requestTimeout".into(), "1s".into()),
        // Most tests look at single failures; fail-fast has its own test.
        ("spark.kbase.auth.failFast.threshold".into(), "0".into()),
        // Most tests use many new tokens quickly; the new-token budget has its own tests.
        ("spark.kbase.auth.newTokens.perSecond".into(), "100000".into()),
        ("spark.kbase.auth.newTokens.burst".into(), "100000".into()),
    ]);
    for (k, v) in extra {
        map.insert((*k).into(), (*v).into());
    }
    kbase_spark_auth::Settings::from_map(&map).expect("valid settings")
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One call with `token` in `authorization: Bearer`.
pub fn call(auth: &Authenticator, token: &str) -> Outcome {
    auth.authorize(&[&bearer(token)], &[], None)
}

/// One call with `token` in `x-kbase-token`.
pub fn call_kbase(auth: &Authenticator, token: &str) -> Outcome {
    auth.authorize(&[], &[token], None)
}

/// The denial of `o`, or a test failure saying it was allowed.
pub fn denied(o: Outcome) -> Denial {
    match o {
        Err(d) => d,
        Ok(a) => panic!("expected a denial, got {a:?}"),
    }
}

pub fn assert_allowed(o: &Outcome) {
    assert!(o.is_ok(), "expected the call allowed, got {o:?}");
}

/// Calls `f` until it returns true, failing after `limit`. For states that arrive with time
/// (an expiry, the end of a cache window) without guessing a sleep.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A fresh token string per call, so tests never share cache entries by accident.
pub fn new_token(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}{:06}{}", tag.to_uppercase(), N.fetch_add(1, Ordering::Relaxed), "QZ7XKB2MNP4RT6VW")
}

pub use kbase_spark_auth::clock::{Clock, ManualClock};

/// As [`authenticator`] (with a 2 s request timeout), reading time from `clock`.
pub fn authenticator_at(
    fake: &FakeAuth2,
    extra: &[(&str, &str)],
    clock: &std::sync::Arc<ManualClock>,
) -> Authenticator {
    let extra: Vec<(&str, &str)> =
        [("spark.kbase.auth.requestTimeout", "2s")].into_iter().chain(extra.iter().copied()).collect();
    Authenticator::with_clock(settings(fake, &extra), Clock::Manual(clock.clone())).expect("valid settings")
}

/// Waits until no Auth2 exchange (background ones included) is in flight.
pub fn wait_idle(auth: &Authenticator) {
    eventually(Duration::from_secs(10), "Auth2 exchanges to finish", || auth.exchanges_in_flight() == 0);
}
