//! Token extraction from every value of the (repeatable) `authorization` and `x-kbase-token`
//! metadata headers.
//!
//! Input: up to 8 values separated by 0xFF bytes (never part of UTF-8); in each, the first byte's
//! low bit says which header (0: `authorization`, 1: `x-kbase-token`) and the rest is the value.
//! Seeds by hand: `printf '\x00Bearer ABC\xff\x01ABC'`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    let mut values: [Vec<String>; 2] = Default::default();
    for entry in data.split(|b| *b == 0xFF).take(8) {
        if let Some((which, value)) = entry.split_first() {
            values[usize::from(which & 1)].push(String::from_utf8_lossy(value).into_owned());
        }
    }
    let auth: Vec<&str> = values[0].iter().map(String::as_str).collect();
    let kbase: Vec<&str> = values[1].iter().map(String::as_str).collect();
    if let Err(broken) = fuzz_invariants::token_extract(&auth, &kbase) {
        panic!("invariant broken: {broken}");
    }
});
