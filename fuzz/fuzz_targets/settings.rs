//! Settings parsing from the flat key/value map the JVM hands over.
//!
//! Input: entries separated by 0xFF bytes (never part of UTF-8); in each, the first byte picks
//! the key (modulo the key list: the plugin's keys, `KBASE_AUTH_URL`, `USER`, one typo) and the
//! rest is the value. At most 8 entries. Seeds by hand: `printf '\x02alice\xff\x0a5s'`.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    let keys = fuzz_invariants::SETTINGS_KEYS;
    let map: HashMap<String, String> = data
        .split(|b| *b == 0xFF)
        .take(8)
        .filter_map(|entry| entry.split_first())
        .map(|(k, v)| (keys[*k as usize % keys.len()].to_string(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    if let Err(broken) = fuzz_invariants::settings(&map) {
        panic!("invariant broken: {broken}");
    }
});
