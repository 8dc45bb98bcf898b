//! Every row of the SPEC decision table, through `Authenticator::authorize` against a fake
//! Auth2 server on loopback.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn owner_allowed_with_either_header() {
    let t = new_token("own");
    let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
    let auth = authenticator(&fake, &[]);
    assert_allowed(&call(&auth, &t));
    assert_allowed(&call_kbase(&auth, &t));
    assert_allowed(&auth.authorize(&[&bearer(&t)], &[&t], None));
    assert_eq!(fake.requests_for(&t), 1, "one Auth2 request, then cache hits");
    let m = auth.metrics();
    assert_eq!((m.allowed, m.cache_misses, m.cache_hits, m.auth2_requests), (3, 1, 2, 1));
}

#[test]
fn no_token_says_how_to_send_one() {
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[]);
    let d = denied(auth.authorize(&[], &[], None));
    assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Missing));
    assert!(d.message.contains(";token=") && d.message.contains(";x-kbase-token="), "{}", d.message);
    assert_eq!(fake.total_requests(), 0);
}

#[test]
fn malformed_and_ambiguous_are_refused_without_asking_auth2() {
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[]);
    let long = "x".repeat(5000);
    let long: &[&str] = &[&long];
    let cases: Vec<(&[&str], &[&str], Reason)> = vec![
        (&["Basic dXNlcjpwdw=="], &[], Reason::Malformed),
        (&["Bearer "], &[], Reason::Malformed),
        (&[], &[""], Reason::Malformed),
        (&[], &["two words"], Reason::Malformed),
        (&[], &["ctl\u{7}char"], Reason::Malformed),
        (&[], long, Reason::Malformed),
        (&["Bearer AAAA"], &["BBBB"], Reason::Ambiguous),
        (&["Bearer AAAA", "Bearer BBBB"], &[], Reason::Ambiguous),
        (&[], &["BBBB", "AAAA"], Reason::Ambiguous),
    ];
    for (a, k, reason) in cases {
        let d = denied(auth.authorize(a, k, None));
        assert_eq!((d.code(), d.reason), (Code::Unauthenticated, reason), "{a:?} {k:?}");
        for secret in a.iter().chain(k) {
            let secret = secret.trim_start_matches("Bearer ").trim_start_matches("Basic ").trim();
            if secret.len() < 4 {
                continue;
            }
            assert!(!d.message.contains(secret) && !d.log_line().contains(secret), "{}", d.log_line());
        }
    }
    assert_eq!(fake.total_requests(), 0);
}

#[test]
fn invalid_token_is_unauthenticated_and_briefly_cached() {
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.cache.invalidTtl", "400ms")]);
    let t = new_token("bad");
    let d = denied(call(&auth, &t));
    assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Invalid));
    assert!(d.message.contains("invalid or revoked KBase token"));
    for _ in 0..20 {
        assert_eq!(denied(call(&auth, &t)).reason, Reason::Invalid);
    }
    assert_eq!(fake.requests_for(&t), 1, "a flood of one bad token asks Auth2 once per window");
    eventually(Duration::from_secs(5), "negative entry to end", || {
        let _ = call(&auth, &t);
        fake.requests_for(&t) == 2
    });
}

#[test]
fn invalid_ttl_zero_caches_nothing() {
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.cache.invalidTtl", "0ms")]);
    let t = new_token("bad");
    for _ in 0..3 {
        assert_eq!(denied(call(&auth, &t)).reason, Reason::Invalid);
    }
    assert_eq!(fake.requests_for(&t), 3);
}

#[test]
fn other_user_is_permission_denied_by_name() {
    let t = new_token("bob");
    let fake = fake(vec![TokenEntry::new(&t, "bob")]);
    let auth = authenticator(&fake, &[]);
    let d = denied(call(&auth, &t));
    assert_eq!((d.code(), d.reason), (Code::PermissionDenied, Reason::NotAllowed));
    assert!(d.message.contains("'bob'") && d.message.contains("'alice'"), "{}", d.message);
    // The policy verdict is cached with the token: no second request.
    denied(call(&auth, &t));
    assert_eq!(fake.requests_for(&t), 1);
}

#[test]
fn allowed_users_extend_the_owner() {
    let t = new_token("carol");
    let fake = fake(vec![TokenEntry::new(&t, "carol")]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.allowedUsers", "carol")]);
    assert_allowed(&call(&auth, &t));
}

#[test]
fn mfa_required() {
    let (with, without, old, svc) = (new_token("mfa"), new_token("nomfa"), new_token("old"), new_token("svc"));
    let fake = fake(vec![
        TokenEntry::new(&with, OWNER).mfa("Used"),
        TokenEntry::new(&without, OWNER).mfa("NotUsed"),
        TokenEntry::new(&old, OWNER), // older Auth2: no mfa field at all
        TokenEntry::new(&svc, "svc").mfa("NotUsed"),
    ]);
    let auth = authenticator(
        &fake,
        &[
            ("spark.kbase.auth.requireMfa", "true"),
            ("spark.kbase.auth.allowedUsers", "svc"),
            ("spark.kbase.auth.mfaExemptUsers", "svc"),
        ],
    );
    assert_allowed(&call(&auth, &with));
    assert_allowed(&call(&auth, &svc));
    for t in [&without, &old] {
        let d = denied(call(&auth, t));
        assert_eq!((d.code(), d.reason), (Code::PermissionDenied, Reason::MfaRequired));
        assert!(d.message.contains("MFA"));
    }
}

#[test]
fn custom_roles_required() {
    let (has, lacks) = (new_token("role"), new_token("norole"));
    let fake = fake(vec![
        TokenEntry::new(&has, OWNER).roles(&["BERDL_USER", "other"]),
        TokenEntry::new(&lacks, OWNER).roles(&["other"]),
    ]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.requiredRoles", "BERDL_USER")]);
    assert_allowed(&call(&auth, &has));
    let d = denied(call(&auth, &lacks));
    assert_eq!((d.code(), d.reason), (Code::PermissionDenied, Reason::RoleMissing));
    assert!(d.message.contains("BERDL_USER"), "{}", d.message);
    // token + me for each token, once.
    assert_eq!((fake.requests_for(&has), fake.requests_for(&lacks)), (2, 2));
    assert_allowed(&call(&auth, &has));
    assert_eq!(fake.requests_for(&has), 2);
}

#[test]
fn cached_token_is_denied_once_it_expires() {
    // An Auth2 that keeps saying 200 after expiry: only the local check can deny.
    let t = new_token("exp");
    let fake = fake(vec![TokenEntry::new(&t, OWNER).expires_in(Duration::from_millis(1200)).cachefor(600_000)]);
    fake.set_fault(Fault::IgnoreExpiry);
    let auth = authenticator(&fake, &[]);
    assert_allowed(&call(&auth, &t));
    let mut last = None;
    eventually(Duration::from_secs(10), "token to expire", || {
        last = Some(call(&auth, &t));
        last.as_ref().unwrap().is_err()
    });
    let d = denied(last.unwrap());
    assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Expired));
    assert!(d.message.contains("expired at 20"), "{}", d.message);
    // Later calls are cache hits, still denied by the local check.
    let asked = fake.requests_for(&t);
    for _ in 0..10 {
        assert_eq!(denied(call(&auth, &t)).reason, Reason::Expired);
    }
    assert_eq!(fake.requests_for(&t), asked);

    // With a well-behaved Auth2 the entry ends at the expiry and the answer is a 401.
    let t2 = new_token("exp2");
    fake.set_fault(Fault::None);
    fake.add_token(TokenEntry::new(&t2, OWNER).expires_in(Duration::from_millis(800)).cachefor(600_000));
    assert_allowed(&call(&auth, &t2));
    eventually(Duration::from_secs(10), "second token to expire", || call(&auth, &t2).is_err());
    assert_eq!(denied(call(&auth, &t2)).code(), Code::Unauthenticated);
}

#[test]
fn expired_token_that_auth2_still_accepts_is_denied() {
    let t = new_token("stale");
    let fake = fake(vec![TokenEntry::new(&t, OWNER).expired_ago(Duration::from_secs(60))]);
    fake.set_fault(Fault::IgnoreExpiry);
    let auth = authenticator(&fake, &[]);
    for _ in 0..3 {
        let d = denied(call(&auth, &t));
        assert_eq!((d.code(), d.reason), (Code::Unauthenticated, Reason::Expired));
    }
    assert_eq!(fake.requests_for(&t), 1, "the expired verdict is cached like an invalid one");
}

#[test]
fn cachefor_and_cap_bound_the_cache_window() {
    let (short, capped) = (new_token("short"), new_token("capped"));
    let fake =
        fake(vec![TokenEntry::new(&short, OWNER).cachefor(300), TokenEntry::new(&capped, OWNER).cachefor(600_000)]);
    let auth = authenticator(&fake, &[]);
    assert_allowed(&call(&auth, &short));
    eventually(Duration::from_secs(5), "cachefor=300ms entry to be re-fetched", || {
        let _ = call(&auth, &short);
        fake.requests_for(&short) == 2
    });

    let capped_auth = authenticator(&fake, &[("spark.kbase.auth.cache.maxTtl", "300ms")]);
    assert_allowed(&call(&capped_auth, &capped));
    eventually(Duration::from_secs(5), "maxTtl=300ms to cap a long cachefor", || {
        let _ = call(&capped_auth, &capped);
        fake.requests_for(&capped) == 2
    });
    // Within the default window the long cachefor is honoured.
    let long_auth = authenticator(&fake, &[]);
    fake.reset_counts();
    for _ in 0..5 {
        assert_allowed(&call(&long_auth, &capped));
    }
    assert_eq!(fake.requests_for(&capped), 1);
}

#[test]
fn revocation_is_seen_after_the_cache_window() {
    let t = new_token("rev");
    let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.cache.maxTtl", "500ms")]);
    assert_allowed(&call(&auth, &t));
    assert!(fake.revoke(&t));
    let mut last = None;
    eventually(Duration::from_secs(5), "revocation to be noticed", || {
        last = Some(call(&auth, &t));
        last.as_ref().unwrap().is_err()
    });
    assert_eq!(denied(last.unwrap()).reason, Reason::Invalid);
}

#[test]
fn root_url_with_and_without_trailing_slash() {
    let t = new_token("slash");
    let fake = FakeAuth2::start_blocking(FakeConfig::new().prefix("/services/auth").token(TokenEntry::new(&t, OWNER)))
        .unwrap();
    let base = fake.url();
    assert!(base.ends_with("/services/auth/"), "{base}");
    for url in [base.clone(), base.trim_end_matches('/').to_owned()] {
        let auth = authenticator(&fake, &[("spark.kbase.auth.url", &url)]);
        assert_allowed(&call(&auth, &t));
    }
    // And the environment variable, with the Spark key absent.
    let map = std::collections::HashMap::from([
        ("KBASE_AUTH_URL".to_owned(), base.trim_end_matches('/').to_owned()),
        ("USER".to_owned(), OWNER.to_owned()),
    ]);
    assert_allowed(&call(&Authenticator::from_map(&map).unwrap(), &t));
    assert_eq!(fake.requests_for(&t), 3);
}

#[test]
fn trusted_addresses_let_tokenless_calls_through_only_when_configured() {
    let fake = fake(vec![]);
    let off = authenticator(&fake, &[]);
    assert!(!off.wants_peer_address());
    assert_eq!(denied(off.authorize(&[], &[], Some("127.0.0.1"))).reason, Reason::Missing);

    let on = authenticator(&fake, &[("spark.kbase.auth.trustedAddresses", "127.0.0.1,::1")]);
    assert!(on.wants_peer_address());
    assert!(on.authorize(&[], &[], Some("127.0.0.1")).is_ok());
    assert!(on.authorize(&[], &[], Some("::1")).is_ok());
    assert_eq!(denied(on.authorize(&[], &[], Some("10.1.2.3"))).reason, Reason::Missing);
    assert_eq!(denied(on.authorize(&[], &[], None)).reason, Reason::Missing);
    assert_eq!(denied(on.authorize(&[], &[], Some("not an ip"))).reason, Reason::Missing);
    // A token that is sent is still checked, trusted address or not.
    assert_eq!(denied(on.authorize(&[], &[&new_token("x")], Some("127.0.0.1"))).reason, Reason::Invalid);
}

#[test]
fn bad_settings_name_their_key() {
    use std::collections::HashMap;
    let err = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Authenticator::from_map(&map).err().expect("refused").to_string()
    };
    assert!(err(&[]).contains("spark.kbase.auth.owner"));
    assert!(err(&[("USER", "a"), ("spark.kbase.auth.url", "http://[bad")]).starts_with("spark.kbase.auth.url"));
    assert!(err(&[("USER", "a"), ("spark.kbase.auth.requestTimeout", "-1s")])
        .starts_with("spark.kbase.auth.requestTimeout"));
    let not_pem = std::env::temp_dir().join(format!("kbase-not-pem-{}.txt", std::process::id()));
    std::fs::write(&not_pem, "hello").unwrap();
    let e = err(&[("USER", "a"), ("spark.kbase.auth.caBundle", not_pem.to_str().unwrap())]);
    std::fs::remove_file(&not_pem).unwrap();
    assert!(e.starts_with("spark.kbase.auth.caBundle"), "{e}");
}

#[test]
fn malformed_flood_never_reaches_auth2() {
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[]);
    for _ in 0..10_000 {
        denied(auth.authorize(&[], &["bad token"], None));
    }
    assert_eq!(fake.total_requests(), 0);
    assert_eq!(auth.metrics().denied_for(Reason::Malformed), 10_000);
}
