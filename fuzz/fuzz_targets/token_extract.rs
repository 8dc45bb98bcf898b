//! Token extraction from the `authorization` and `x-kbase-token` metadata values.
//!
//! Input: one flags byte (bit 0: `authorization` present, bit 1: `x-kbase-token` present), then
//! the `authorization` value, a 0xFF byte (never part of UTF-8), the `x-kbase-token` value.
//! Easy to write seeds by hand: `printf '\x03Bearer ABC\xffABC'`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(2, |b| *b == 0xFF);
    let auth = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let kbase = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let auth = (flags & 1 != 0).then_some(&*auth);
    let kbase = (flags & 2 != 0).then_some(&*kbase);
    if let Err(broken) = fuzz_invariants::token_extract(auth, kbase) {
        panic!("invariant broken: {broken}");
    }
});
