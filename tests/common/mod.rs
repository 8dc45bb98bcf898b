//! Shared set-up for the integration tests: a fake Auth2 on loopback and an authenticator
//! configured against it.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use fake_auth2::{FakeAuth2, FakeConfig, Fault, TokenEntry};
pub use kbase_spark_auth::{Authenticator, Code, Decision, Reason};

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
    let mut map: HashMap<String, String> = HashMap::from([
        ("spark.kbase.auth.url".into(), fake.url()),
        ("spark.kbase.auth.owner".into(), OWNER.into()),
        ("spark.kbase.auth.connectTimeout".into(), "500ms".into()),
        ("spark.kbase.auth.requestTimeout".into(), "1s".into()),
        // Most tests look at single failures; fail-fast has its own test.
        ("spark.kbase.auth.failFast.threshold".into(), "0".into()),
    ]);
    for (k, v) in extra {
        map.insert((*k).into(), (*v).into());
    }
    Authenticator::from_map(&map).expect("valid settings")
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn call(auth: &Authenticator, token: &str) -> Decision {
    auth.authorize(Some(&bearer(token)), None, None)
}

/// The denial of `d`, or a test failure naming what was allowed.
pub fn denied(d: Decision) -> kbase_spark_auth::Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

pub fn assert_allowed(d: &Decision, user: &str) {
    match d {
        Decision::Allow { user: Some(u) } => assert_eq!(&**u, user),
        other => panic!("expected {user} allowed, got {other:?}"),
    }
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
