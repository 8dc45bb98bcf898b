//! Property-based fuzzing of everything that parses outside input: token extraction, settings,
//! and Auth2 answers. Each target never panics and keeps its invariants on arbitrary input.
//!
//! Cases per target: `FUZZ_CASES` (default 2000, so `cargo test` stays quick);
//! `scripts/fuzz.sh` runs them long and prints the counts.

use std::collections::HashMap;

use kbase_spark_auth::auth2::{parse_me_answer, parse_token_answer, Auth2Error};
use kbase_spark_auth::token::{extract, TokenError, MAX_TOKEN_BYTES};
use kbase_spark_auth::{ConfigError, Settings};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let started = std::time::Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("fuzz target {name} failed: {e}");
    }
    println!("fuzz {name}: {cases} cases passed in {:.1}s", started.elapsed().as_secs_f64());
}

/// Header values as a client could send them: mostly token-ish, sometimes hostile.
fn header_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[A-Z2-7]{0,40}",
        "(?i)bearer[ \t]{0,3}[A-Za-z0-9._~+/=-]{0,40}[ \t]{0,2}",
        "\\PC{0,64}",
        ".{0,64}",
        prop::collection::vec(any::<char>(), 0..80).prop_map(|v| v.into_iter().collect()),
        (4090usize..4100).prop_map(|n| "x".repeat(n)),
    ])
}

#[test]
fn fuzz_token_extraction() {
    let values =
        || prop::collection::vec(header_value(), 0..4).prop_map(|v| v.into_iter().flatten().collect::<Vec<_>>());
    run("token_extract", (values(), values()), |(auth, kbase)| {
        let (a, k): (Vec<&str>, Vec<&str>) =
            (auth.iter().map(String::as_str).collect(), kbase.iter().map(String::as_str).collect());
        match extract(&a, &k) {
            Ok(t) => {
                let t = t.expose();
                prop_assert!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
                prop_assert!(!t.chars().any(|c| c.is_whitespace() || c.is_control()));
                // Every value names this very token.
                prop_assert!(a.iter().chain(&k).all(|h| h.contains(t)));
            }
            Err(TokenError::Missing) => prop_assert!(a.is_empty() && k.is_empty()),
            // (TokenError carries no data, so its text cannot quote the input.)
            Err(TokenError::TooLong) => {
                prop_assert!(a.iter().chain(&k).any(|h| h.trim().len() > MAX_TOKEN_BYTES))
            }
            Err(TokenError::Ambiguous) => prop_assert!(a.len() + k.len() >= 2),
            Err(_) => {}
        }
        Ok(())
    });
}

const KEYS: &[&str] = &[
    "spark.kbase.auth.url",
    "KBASE_AUTH_URL",
    "USER",
    "spark.kbase.auth.owner",
    "spark.kbase.auth.allowedUsers",
    "spark.kbase.auth.requireMfa",
    "spark.kbase.auth.mfaExemptUsers",
    "spark.kbase.auth.requiredRoles",
    "spark.kbase.auth.cache.maxEntries",
    "spark.kbase.auth.cache.maxTtl",
    "spark.kbase.auth.cache.invalidTtl",
    "spark.kbase.auth.connectTimeout",
    "spark.kbase.auth.requestTimeout",
    "spark.kbase.auth.caBundle",
    "spark.kbase.auth.trustedAddresses",
    "spark.kbase.auth.failFast.threshold",
    "spark.kbase.auth.failFast.cooldown",
    "spark.kbase.auth.maxConcurrentRequests",
    "spark.kbase.auth.typo",
];

fn setting_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,12}(ms|s|m|h|d|)",
        "-?[0-9]{1,4}",
        "(true|false|TRUE|yes|)",
        "https?://[a-z0-9.:\\[\\]/-]{0,30}",
        "[a-z, ]{0,20}",
        "\\PC{0,30}",
    ]
}

#[test]
fn fuzz_settings() {
    let pairs = prop::collection::vec((prop::sample::select(KEYS), setting_value()), 0..8);
    run("settings", pairs, |pairs| {
        let map: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        match Settings::from_map(&map) {
            Ok(s) => {
                prop_assert!(s.owner.is_some() || !s.allowed_users.is_empty(), "started without an owner");
                prop_assert!(s.auth_url.ends_with('/'));
                prop_assert!(!s.request_timeout.is_zero() && !s.connect_timeout.is_zero());
            }
            Err(ConfigError::Invalid { key, .. }) => prop_assert!(KEYS.contains(&key.as_str()), "{key}"),
            Err(ConfigError::NoOwner) => {}
            Err(ConfigError::UnknownKey { key, .. }) => prop_assert_eq!(key, "spark.kbase.auth.typo"),
        }
        Ok(())
    });
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::hash_map(
                prop::sample::select(vec!["user", "expires", "cachefor", "mfa", "customroles", "error", "x"]),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn auth2_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| {
            let s = v.to_string();
            let cut = s.len() / 2;
            s.into_bytes()[..cut].to_vec()
        }),
    ]
}

#[test]
fn fuzz_auth2_answers() {
    let status = prop_oneof![Just(200u16), Just(401), Just(400), Just(503), 100u16..600];
    run("auth2_answer", (status, auth2_body()), |(status, body)| {
        match parse_token_answer(status, &body) {
            Ok(info) => {
                prop_assert_eq!(status, 200);
                prop_assert!(!info.identity.user.is_empty());
            }
            Err(Auth2Error::Invalid) => prop_assert!(status == 400 || status == 401),
            Err(Auth2Error::ServiceFailure(_)) => prop_assert!((500..600).contains(&status)),
            Err(Auth2Error::BadAnswer(_)) => prop_assert!(!(500..600).contains(&status)),
        }
        if let Ok(roles) = parse_me_answer(status, &body, "alice") {
            prop_assert_eq!(status, 200);
            prop_assert!(roles.len() < 1000);
        }
        Ok(())
    });
}
