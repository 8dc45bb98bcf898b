//! The invariants of the fuzz targets, shared by the proptest targets (`tests/fuzz.rs`) and the
//! coverage-guided cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, which include this file), so
//! both kinds of fuzzing check exactly the same properties. Each function takes one input,
//! runs the code under test and returns a description of the first broken invariant.
#![allow(dead_code)]

use std::collections::HashMap;

use kbase_spark_auth::auth2::{parse_me_answer, parse_token_answer, Auth2Error};
use kbase_spark_auth::token::{extract, TokenError, MAX_TOKEN_BYTES};
use kbase_spark_auth::{ConfigError, Settings};

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Token extraction from the `authorization` and `x-kbase-token` values: never panics; an
/// accepted token is non-empty, at most 4096 bytes, without white space or control characters,
/// and comes from a header; `Missing` only without headers; `TooLong` only for a long value;
/// `Ambiguous` only with both headers.
pub fn token_extract(auth: Option<&str>, kbase: Option<&str>) -> Result<(), String> {
    match extract(auth, kbase) {
        Ok(t) => {
            let t = t.expose();
            ensure!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES, "accepted a token of {} bytes", t.len());
            ensure!(!t.chars().any(|c| c.is_whitespace() || c.is_control()), "accepted a token with spaces/controls");
            let inside = |h: Option<&str>| h.is_some_and(|h| h.contains(t));
            ensure!(inside(auth) || inside(kbase), "accepted a token that is in no header");
        }
        Err(TokenError::Missing) => ensure!(auth.is_none() && kbase.is_none(), "Missing with a header present"),
        // (TokenError carries no data, so its text cannot quote the input.)
        Err(TokenError::TooLong) => ensure!(
            [auth, kbase].into_iter().flatten().any(|h| h.trim().len() > MAX_TOKEN_BYTES),
            "TooLong without a long header"
        ),
        Err(TokenError::Ambiguous) => ensure!(auth.is_some() && kbase.is_some(), "Ambiguous with one header"),
        Err(_) => {}
    }
    Ok(())
}

/// Every key the settings target draws from (the plugin's keys, the two environment variables,
/// and one typo).
pub const SETTINGS_KEYS: &[&str] = &[
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

/// Settings from a key/value map: never panics; never starts without an owner; the URL ends in
/// `/`; timeouts are never zero; every error names a known key (or is the typo key, or no owner).
pub fn settings(map: &HashMap<String, String>) -> Result<(), String> {
    match Settings::from_map(map) {
        Ok(s) => {
            ensure!(s.owner.is_some() || !s.allowed_users.is_empty(), "started without an owner");
            ensure!(s.auth_url.ends_with('/'), "auth URL without trailing slash: {}", s.auth_url);
            ensure!(!s.request_timeout.is_zero() && !s.connect_timeout.is_zero(), "a zero timeout");
        }
        Err(ConfigError::Invalid { key, .. }) => ensure!(SETTINGS_KEYS.contains(&key.as_str()), "error names {key}"),
        Err(ConfigError::NoOwner) => {}
        Err(ConfigError::UnknownKey { key, .. }) => ensure!(key == "spark.kbase.auth.typo", "unknown key {key}"),
    }
    Ok(())
}

/// Auth2 answers (status and body) for `/api/V2/token` and `/api/V2/me`: never panics; only a
/// 200 can allow (with a non-empty user); only 400/401 can mean "invalid"; everything else is
/// "unavailable".
pub fn auth2_answer(status: u16, body: &[u8]) -> Result<(), String> {
    match parse_token_answer(status, body) {
        Ok(info) => {
            ensure!(status == 200, "a {status} answer was taken as valid");
            ensure!(!info.identity.user.is_empty(), "valid with an empty user");
        }
        Err(Auth2Error::Invalid) => ensure!(status == 400 || status == 401, "{status} taken as 'invalid token'"),
        Err(Auth2Error::Unavailable(_)) => ensure!(status != 401, "401 taken as 'unavailable'"),
    }
    if let Ok(roles) = parse_me_answer(status, body, "alice") {
        ensure!(status == 200, "a {status} 'me' answer was taken as valid");
        ensure!(roles.len() < 1000, "{} roles", roles.len());
    }
    Ok(())
}
