//! Token extraction from every value of the (repeatable) `authorization` and `x-kbase-token`
//! metadata headers. Input format: `fuzz_invariants::token_extract_bytes`; seeds by hand:
//! `printf '\x00Bearer ABC\xff\x01ABC'`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fuzz_invariants::token_extract_bytes(data) {
        panic!("invariant broken: {broken}");
    }
});
