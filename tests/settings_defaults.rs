//! The defaults, as the README's settings table states them: settings built from nothing but the
//! owner, every default checked against a value written here (not the code's own constants), and
//! the README's table checked to list exactly these keys with exactly these defaults.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kbase_spark_auth::Settings;

/// (key, the README's "default" cell, what the effective setting must be).
type Expected = (&'static str, &'static str, Box<dyn Fn(&Settings) -> bool>);

fn expected() -> Vec<Expected> {
    vec![
        (
            "spark.kbase.auth.url",
            "env `KBASE_AUTH_URL`, else `https://kbase.us/services/auth/`",
            Box::new(|s| s.auth_url == "https://kbase.us/services/auth/"),
        ),
        ("spark.kbase.auth.owner", "env `USER`", Box::new(|s| s.owner.as_deref() == Some("alice"))),
        ("spark.kbase.auth.allowedUsers", "–", Box::new(|s| s.allowed_users.is_empty())),
        ("spark.kbase.auth.requireMfa", "`false`", Box::new(|s| !s.require_mfa)),
        ("spark.kbase.auth.mfaExemptUsers", "–", Box::new(|s| s.mfa_exempt_users.is_empty())),
        ("spark.kbase.auth.requiredRoles", "–", Box::new(|s| s.required_roles.is_empty())),
        ("spark.kbase.auth.cache.maxEntries", "`10000`", Box::new(|s| s.cache_max_entries == 10_000)),
        ("spark.kbase.auth.cache.maxTtl", "`5m`", Box::new(|s| s.cache_max_ttl == Duration::from_secs(300))),
        ("spark.kbase.auth.cache.invalidTtl", "`5s`", Box::new(|s| s.cache_invalid_ttl == Duration::from_secs(5))),
        ("spark.kbase.auth.cache.refreshAhead", "`30s`", Box::new(|s| s.refresh_ahead == Duration::from_secs(30))),
        ("spark.kbase.auth.cache.staleIfError", "`0ms` (off)", Box::new(|s| s.stale_if_error.is_zero())),
        ("spark.kbase.auth.newTokens.perSecond", "`10`", Box::new(|s| s.new_tokens_per_second == 10)),
        ("spark.kbase.auth.newTokens.burst", "`20`", Box::new(|s| s.new_tokens_burst == 20)),
        ("spark.kbase.auth.connectTimeout", "`2s`", Box::new(|s| s.connect_timeout == Duration::from_secs(2))),
        ("spark.kbase.auth.requestTimeout", "`5s`", Box::new(|s| s.request_timeout == Duration::from_secs(5))),
        ("spark.kbase.auth.caBundle", "–", Box::new(|s| s.ca_bundle.is_none())),
        ("spark.kbase.auth.failFast.threshold", "`5`", Box::new(|s| s.fail_fast_threshold == 5)),
        ("spark.kbase.auth.failFast.cooldown", "`2s`", Box::new(|s| s.fail_fast_cooldown == Duration::from_secs(2))),
        ("spark.kbase.auth.maxConcurrentRequests", "`32`", Box::new(|s| s.max_concurrent_requests == 32)),
        ("spark.kbase.auth.trustedAddresses", "– (off)", Box::new(|s| s.trusted_addresses.is_empty())),
        ("spark.kbase.auth.userContext", "`rewrite`", Box::new(|s| format!("{s:?}").ends_with(" userContext=rewrite"))),
    ]
}

#[test]
fn defaults_from_nothing_but_the_owner() {
    let s = Settings::from_map(&HashMap::from([("USER".to_string(), "alice".to_string())])).unwrap();
    let wrong: Vec<_> =
        expected().into_iter().filter(|(_, _, ok)| !ok(&s)).map(|(k, d, _)| format!("{k} (README: {d})")).collect();
    assert!(wrong.is_empty(), "defaults differ from the README: {wrong:?}\n{s:?}");
    // The start-up line states them in the same words a user writes them in.
    let line = format!("{s:?}");
    for part in [
        "url=https://kbase.us/services/auth/",
        "owner=alice",
        "cache.maxEntries=10000",
        "connectTimeout=2s",
        "requestTimeout=5s",
        "failFast.threshold=5",
        "failFast.cooldown=2s",
        "maxConcurrentRequests=32",
        "userContext=rewrite",
        "trustedAddresses=-",
    ] {
        assert!(line.contains(part), "start-up line lacks {part:?}: {line}");
    }
}

#[test]
fn env_url_is_the_default_when_the_key_is_absent() {
    let map = HashMap::from([
        ("USER".to_string(), "alice".to_string()),
        ("KBASE_AUTH_URL".to_string(), "https://ci.kbase.us/services/auth".to_string()),
    ]);
    assert_eq!(Settings::from_map(&map).unwrap().auth_url, "https://ci.kbase.us/services/auth/");
}

/// The README's settings table: key → default cell.
fn readme_table() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut rows = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `spark.kbase.auth.x` | default | meaning |
        if cells.len() >= 4 && cells[1].starts_with("`spark.kbase.auth.") {
            rows.insert(cells[1].trim_matches('`').to_string(), cells[2].to_string());
        }
    }
    rows
}

#[test]
fn readme_table_lists_exactly_these_defaults() {
    let readme = readme_table();
    let tested: BTreeMap<String, String> =
        expected().into_iter().map(|(k, d, _)| (k.to_string(), d.to_string())).collect();
    assert_eq!(readme, tested, "README settings table and this test disagree");
}
