//! Stale if error (opt-in): while Auth2 cannot answer, a token whose last answer was valid keeps
//! that verdict for up to `cache.staleIfError` past its entry's end — never after an invalid
//! answer, never past the token's expiry, never for a token not seen valid. Off by default.

mod common;

use std::time::Duration;

use common::*;

const STALE: &str = "spark.kbase.auth.cache.staleIfError";

/// An owner token with a 2 s life, validated once; then Auth2 goes down.
fn cached_then_outage(
    extra: &[(&str, &str)],
    expires_in: Duration,
) -> (String, FakeAuth2, std::sync::Arc<ManualClock>, Authenticator) {
    let t = new_token("stale");
    let fake = fake(vec![TokenEntry::new(&t, OWNER).cachefor(2_000).expires_in(expires_in)]);
    let clock = ManualClock::new();
    let auth = authenticator_at(&fake, extra, &clock);
    assert_allowed(&call(&auth, &t));
    fake.set_fault_blocking(Fault::Refuse).unwrap();
    (t, fake, clock, auth)
}

fn unavailable(o: Outcome) {
    let d = denied(o);
    assert_eq!((d.code(), d.reason), (Code::Unavailable, Reason::Unavailable), "{d:?}");
}

#[test]
fn off_by_default_the_owner_is_unavailable_once_the_entry_ends() {
    let (t, _fake, clock, auth) = cached_then_outage(&[], Duration::from_secs(3600));
    clock.advance(Duration::from_millis(1_900));
    assert_allowed(&call(&auth, &t));
    clock.advance(Duration::from_millis(200));
    unavailable(call(&auth, &t));
    assert_eq!(auth.metrics().stale_allows, 0);
}

#[test]
fn on_the_owner_keeps_working_through_an_outage_longer_than_the_window() {
    let (t, fake, clock, auth) = cached_then_outage(&[(STALE, "30s")], Duration::from_secs(3600));
    clock.advance(Duration::from_millis(2_100));
    // The first stale allow carries the one warning of this outage; later ones are quiet.
    match call(&auth, &t) {
        Ok(Allowed { warning: Some(line), .. }) => {
            assert!(line.contains("token=sha256:") && line.contains("staleIfError"), "{line}");
            assert!(!line.contains(&t), "{line}");
        }
        other => panic!("expected a stale allow with its warning, got {other:?}"),
    }
    for step in 0..25 {
        clock.advance(Duration::from_secs(1));
        assert!(matches!(call(&auth, &t), Ok(Allowed { warning: None, .. })), "{step} s into the outage");
        wait_idle(&auth);
    }
    assert_eq!(auth.metrics().stale_allows, 26);
    // 32 s past the entry's end: the grace is over.
    clock.advance(Duration::from_secs(5));
    unavailable(call(&auth, &t));

    // Auth2 back: validated again; a later outage warns again.
    fake.set_fault_blocking(Fault::None).unwrap();
    assert_allowed(&call(&auth, &t));
    fake.set_fault_blocking(Fault::Refuse).unwrap();
    clock.advance(Duration::from_millis(2_100));
    assert!(matches!(call(&auth, &t), Ok(Allowed { warning: Some(_), .. })));
}

#[test]
fn stale_verdicts_never_outlive_the_token() {
    let (t, _fake, clock, auth) = cached_then_outage(&[(STALE, "1h")], Duration::from_secs(10));
    clock.advance(Duration::from_millis(2_100));
    assert_allowed(&call(&auth, &t));
    clock.advance(Duration::from_secs(8));
    let d = denied(call(&auth, &t));
    assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Expired), "{d:?}");
}

#[test]
fn a_token_never_seen_valid_gets_no_grace() {
    let (_t, fake, _clock, auth) = cached_then_outage(&[(STALE, "1h")], Duration::from_secs(3600));
    let unseen = new_token("unseen");
    fake.add_token(TokenEntry::new(&unseen, OWNER));
    unavailable(call(&auth, &unseen));
    assert_eq!(auth.metrics().stale_allows, 0);
}

#[test]
fn an_invalid_answer_ends_the_grace() {
    let (t, fake, clock, auth) = cached_then_outage(&[(STALE, "1h")], Duration::from_secs(3600));
    clock.advance(Duration::from_millis(2_100));
    assert_allowed(&call(&auth, &t));
    // Auth2 answers again, and says the token was revoked meanwhile.
    assert!(fake.revoke(&t));
    fake.set_fault_blocking(Fault::None).unwrap();
    clock.advance(Duration::from_secs(2)); // the next background retry is due
    let _ = call(&auth, &t);
    wait_idle(&auth);
    assert_eq!(denied(call(&auth, &t)).reason, Reason::Invalid);
    // And once that short negative entry ends while Auth2 is down again: still no grace.
    fake.set_fault_blocking(Fault::Refuse).unwrap();
    clock.advance(Duration::from_secs(6));
    unavailable(call(&auth, &t));
}

#[test]
fn slow_failures_cost_the_owner_one_wait_per_outage_not_one_per_call() {
    // Auth2 hangs instead of refusing: the first call past the entry's end waits for the
    // request timeout; from then on the stale verdict answers at once while retries hang in
    // the background.
    let extra = [(STALE, "1m"), ("spark.kbase.auth.requestTimeout", "1s")];
    let (t, fake, clock, auth) = cached_then_outage(&extra, Duration::from_secs(3600));
    fake.set_fault_blocking(Fault::Delay(Duration::from_secs(5))).unwrap();
    clock.advance(Duration::from_millis(2_100));
    assert!(matches!(call(&auth, &t), Ok(Allowed { warning: Some(_), .. })));
    for _ in 0..3 {
        clock.advance(Duration::from_millis(300)); // a background retry is due
        assert!(matches!(call(&auth, &t), Ok(Allowed { warning: None, .. })));
        assert_eq!(auth.exchanges_in_flight(), 1, "answered while the retry still hangs");
        wait_idle(&auth);
    }
    assert_eq!(auth.metrics().stale_allows, 4);
}

#[test]
fn an_expired_token_is_denied_without_asking_auth2() {
    let (t, fake, clock, auth) = cached_then_outage(&[], Duration::from_secs(5));
    fake.set_fault_blocking(Fault::None).unwrap();
    fake.set_fault_blocking(Fault::IgnoreExpiry).unwrap();
    clock.advance(Duration::from_secs(6));
    let d = denied(call(&auth, &t));
    assert_eq!(d.reason, Reason::Expired, "{d:?}");
    assert_eq!(fake.requests_for(&t), 1, "an expiry known from the last answer needs no new one");
}
