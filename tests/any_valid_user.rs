//! The core as the gateway uses it: any valid user admitted (MFA optional), the verified user
//! handed back, and the async way in, against the fake Auth2 on loopback.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kbase_spark_auth::Settings;

fn gateway_auth(fake: &FakeAuth2, mfa: bool, exempt: &[&str]) -> Authenticator {
    Authenticator::new(Settings {
        auth_url: fake.url(),
        require_mfa: mfa,
        mfa_exempt_users: exempt.iter().map(|u| (*u).to_owned()).collect(),
        request_timeout: Duration::from_secs(2),
        ..Settings::any_valid_user()
    })
    .expect("valid settings")
}

fn user_of(auth: &Authenticator, o: &Outcome) -> String {
    match o {
        Ok(a) => auth.user_name(a.user.expect("a verified user")).expect("a known user id").to_string(),
        Err(d) => panic!("expected the call allowed, got {d:?}"),
    }
}

#[test]
fn any_valid_user_is_admitted_and_named() {
    let (a, z) = (new_token("a"), new_token("z"));
    let fake = fake(vec![TokenEntry::new(&a, "alice"), TokenEntry::new(&z, "zed_the_2nd")]);
    let auth = gateway_auth(&fake, false, &[]);
    assert_eq!(user_of(&auth, &call(&auth, &a)), "alice");
    assert_eq!(user_of(&auth, &call_kbase(&auth, &z)), "zed_the_2nd");
    // From the cache: the same user, the same number.
    let (first, again) = (call(&auth, &a), call(&auth, &a));
    assert_eq!(first.as_ref().unwrap().user, again.as_ref().unwrap().user);
    assert_eq!(denied(call(&auth, &new_token("unknown"))).reason, Reason::Invalid);
}

#[test]
fn mfa_required_unless_exempt() {
    let (used, not_used, svc) = (new_token("u"), new_token("n"), new_token("s"));
    let fake = fake(vec![
        TokenEntry::new(&used, "alice").mfa("Used"),
        TokenEntry::new(&not_used, "bob").mfa("NotUsed"),
        TokenEntry::new(&svc, "svc").mfa("NotUsed"),
    ]);
    let auth = gateway_auth(&fake, true, &["svc"]);
    assert_eq!(user_of(&auth, &call(&auth, &used)), "alice");
    let d = denied(call(&auth, &not_used));
    assert_eq!((d.code(), d.reason), (Code::PermissionDenied, Reason::MfaRequired));
    assert_eq!(user_of(&auth, &call(&auth, &svc)), "svc");
}

#[test]
fn async_calls_share_one_lookup_and_hits_stay_on_the_task() {
    let t = new_token("a");
    let fake = fake(vec![TokenEntry::new(&t, "alice")]);
    let auth = Arc::new(gateway_auth(&fake, false, &[]));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bearer = bearer(&t);
    let users = rt.block_on(async {
        let calls = (0..64).map(|_| {
            let (auth, bearer) = (Arc::clone(&auth), bearer.clone());
            tokio::spawn(async move { auth.authorize_async(&[&bearer], &[]).await.map(|a| a.user) })
        });
        let mut users = Vec::new();
        for c in calls {
            users.push(c.await.unwrap().expect("allowed"));
        }
        users
    });
    assert!(users.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fake.requests_for(&t), 1, "64 concurrent first calls, one Auth2 lookup");
}

#[test]
fn an_async_miss_does_not_block_the_thread_it_runs_on() {
    // One thread serves both: a call whose token waits 1.5 s for Auth2, and another user's calls
    // answered from the cache meanwhile.
    let (slow, fast) = (new_token("slow"), new_token("fast"));
    let fake = fake(vec![TokenEntry::new(&slow, "alice"), TokenEntry::new(&fast, "bob")]);
    let auth = Arc::new(gateway_auth(&fake, false, &[]));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        assert!(auth.authorize_async(&[], &[&fast]).await.is_ok());
        fake.set_fault_wait(Fault::Delay(Duration::from_millis(1500))).await.unwrap();
        let waiting = {
            let (auth, slow) = (Arc::clone(&auth), slow.clone());
            tokio::spawn(async move { auth.authorize_async(&[], &[&slow]).await })
        };
        tokio::task::yield_now().await; // the slow call starts and parks
        let started = Instant::now();
        let mut hits = 0;
        while !waiting.is_finished() {
            assert!(auth.authorize_async(&[], &[&fast]).await.is_ok());
            hits += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(waiting.await.unwrap().is_ok());
        assert!(started.elapsed() >= Duration::from_millis(1000), "the slow lookup really waited");
        assert!(hits >= 50, "only {hits} cache hits answered on the same thread while the miss waited");
    });
}
