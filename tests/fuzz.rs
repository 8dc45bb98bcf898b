//! Property-based fuzzing of everything that parses outside input: token extraction, settings,
//! and Auth2 answers. Each target never panics and keeps its invariants on arbitrary input.
//!
//! Cases per target: `FUZZ_CASES` (default 2000, so `cargo test` stays quick). The invariants
//! live in `fuzz_invariants/`, shared with the coverage-guided cargo-fuzz targets in `fuzz/`
//! (`scripts/fuzz.sh` runs those); inputs cargo-fuzz found are regression cases at the end.

mod fuzz_invariants;

use std::collections::HashMap;

use fuzz_invariants::SETTINGS_KEYS as KEYS;
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

/// An invariant of `fuzz_invariants` as a proptest assertion.
fn holds(r: Result<(), String>) -> Result<(), TestCaseError> {
    r.map_err(TestCaseError::fail)
}

#[test]
fn fuzz_token_extraction() {
    // Each header repeated 0 to 3 times, as gRPC metadata can carry it.
    let values =
        || prop::collection::vec(header_value(), 0..4).prop_map(|v| v.into_iter().flatten().collect::<Vec<_>>());
    run("token_extract", (values(), values()), |(auth, kbase)| {
        let (a, k): (Vec<&str>, Vec<&str>) =
            (auth.iter().map(String::as_str).collect(), kbase.iter().map(String::as_str).collect());
        holds(fuzz_invariants::token_extract(&a, &k))
    });
}

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
        holds(fuzz_invariants::settings(&map))
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
    run("auth2_answer", (status, auth2_body()), |(status, body)| holds(fuzz_invariants::auth2_answer(status, &body)));
}

/// Every committed cargo-fuzz seed (`fuzz/seeds/TARGET/`) and every input cargo-fuzz found
/// (`fuzz/regressions/TARGET/`, one file each, named for what it showed) replayed through the
/// same invariants, in every `cargo test`.
#[test]
fn cargo_fuzz_seeds_and_findings_keep_their_invariants() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    type Check = fn(&[u8]) -> Result<(), String>;
    let targets: [(&str, Check); 3] = [
        ("token_extract", fuzz_invariants::token_extract_bytes),
        ("settings", fuzz_invariants::settings_bytes),
        ("auth2_answer", fuzz_invariants::auth2_answer_bytes),
    ];
    let mut replayed = 0;
    for (target, check) in targets {
        for dir in ["seeds", "regressions"] {
            let Ok(files) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
            for f in files {
                let path = f.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if let Err(broken) = check(&data) {
                    panic!("{}: {broken}", path.display());
                }
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 30, "only {replayed} seed/regression files found under {}", root.display());
}
