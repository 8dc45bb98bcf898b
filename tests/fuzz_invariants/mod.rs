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

/// Token extraction from all values of the (repeatable) `authorization` and `x-kbase-token`
/// headers: never panics; an accepted token is non-empty, at most 4096 bytes, without white
/// space or control characters, and every value names this very token; `Missing` only without
/// any value; `TooLong` only for a long value; `Ambiguous` only with at least two values.
pub fn token_extract(auth: &[&str], kbase: &[&str]) -> Result<(), String> {
    match extract(auth, kbase) {
        Ok(t) => {
            let t = t.expose();
            ensure!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES, "accepted a token of {} bytes", t.len());
            ensure!(!t.chars().any(|c| c.is_whitespace() || c.is_control()), "accepted a token with spaces/controls");
            ensure!(auth.iter().chain(kbase).all(|h| h.contains(t)), "accepted a token that some value does not carry");
        }
        Err(TokenError::Missing) => ensure!(auth.is_empty() && kbase.is_empty(), "Missing with a value present"),
        // (TokenError carries no data, so its text cannot quote the input.)
        Err(TokenError::TooLong) => {
            ensure!(auth.iter().chain(kbase).any(|h| h.trim().len() > MAX_TOKEN_BYTES), "TooLong without a long value")
        }
        Err(TokenError::Ambiguous) => ensure!(auth.len() + kbase.len() >= 2, "Ambiguous with one value"),
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
    "spark.kbase.auth.cache.refreshAhead",
    "spark.kbase.auth.cache.staleIfError",
    "spark.kbase.auth.newTokens.perSecond",
    "spark.kbase.auth.newTokens.burst",
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
/// 200 can allow (with a non-empty user); "invalid token" only for a 401 carrying Auth2's own
/// error JSON (an `error` object whose `httpcode` is the status), never for a 400 (a proxy's, or
/// Auth2's own "no token", which means the header was lost on the way) or anything else; only a
/// 5xx counts as a service failure (for the breaker); everything else that is not an answer is a
/// bad answer.
pub fn auth2_answer(status: u16, body: &[u8]) -> Result<(), String> {
    match parse_token_answer(status, body) {
        Ok(info) => {
            ensure!(status == 200, "a {status} answer was taken as valid");
            ensure!(!info.identity.user.is_empty(), "valid with an empty user");
        }
        Err(Auth2Error::Invalid) => {
            ensure!(status == 401, "{status} taken as 'invalid token'");
            ensure!(
                is_auth2_error_json(status, body),
                "a {status} without Auth2's error JSON taken as 'invalid token'"
            );
        }
        Err(Auth2Error::ServiceFailure(_)) => {
            ensure!((500..600).contains(&status), "{status} counted as a service failure")
        }
        Err(Auth2Error::BadAnswer(_)) => {
            ensure!(!(500..600).contains(&status), "{status} not counted as a service failure")
        }
    }
    if let Ok(roles) = parse_me_answer(status, body, "alice") {
        ensure!(status == 200, "a {status} 'me' answer was taken as valid");
        ensure!(roles.len() < 1000, "{} roles", roles.len());
    }
    Ok(())
}

/// Whether `body` is Auth2's error envelope for `status` (SPEC §3): an `error` object whose
/// `httpcode` is the status. Read field by field like any JSON client would: other fields are
/// not looked at.
fn is_auth2_error_json(status: u16, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Fields,
    }
    #[derive(serde::Deserialize)]
    struct Fields {
        httpcode: u16,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => e.error.httpcode == status,
        Err(_) => false,
    }
}

// ---- the byte formats of the cargo-fuzz targets (also used to replay seeds and findings) ----

/// `token_extract` input: up to 8 values separated by 0xFF bytes (never part of UTF-8); in each,
/// the first byte's low bit says which header (0: `authorization`, 1: `x-kbase-token`) and the
/// rest is the value (lossy UTF-8, as JNI hands over valid strings).
pub fn token_extract_bytes(data: &[u8]) -> Result<(), String> {
    let mut values: [Vec<String>; 2] = Default::default();
    for entry in data.split(|b| *b == 0xFF).take(8) {
        if let Some((which, value)) = entry.split_first() {
            values[usize::from(which & 1)].push(String::from_utf8_lossy(value).into_owned());
        }
    }
    let auth: Vec<&str> = values[0].iter().map(String::as_str).collect();
    let kbase: Vec<&str> = values[1].iter().map(String::as_str).collect();
    token_extract(&auth, &kbase)
}

/// `settings` input: entries separated by 0xFF bytes; in each, the first byte picks the key
/// (modulo [`SETTINGS_KEYS`]) and the rest is the value. At most 8 entries.
pub fn settings_bytes(data: &[u8]) -> Result<(), String> {
    let map: HashMap<String, String> = data
        .split(|b| *b == 0xFF)
        .take(8)
        .filter_map(|entry| entry.split_first())
        .map(|(k, v)| {
            (SETTINGS_KEYS[*k as usize % SETTINGS_KEYS.len()].to_string(), String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    settings(&map)
}

/// `auth2_answer` input: the first two bytes pick the status (mostly 200, 401, 400, 503,
/// sometimes any of 100..599), the rest is the body.
pub fn auth2_answer_bytes(data: &[u8]) -> Result<(), String> {
    let (status, body) = match data {
        [a, b, rest @ ..] => {
            let status = match a % 8 {
                0..=2 => 200,
                3 => 401,
                4 => 400,
                5 => 503,
                _ => 100 + (u16::from_le_bytes([*a, *b]) % 500),
            };
            (status, rest)
        }
        _ => (200, data),
    };
    auth2_answer(status, body)
}
