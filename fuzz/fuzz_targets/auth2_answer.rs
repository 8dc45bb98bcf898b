//! Auth2 answers: an HTTP status and a body for `/api/V2/token` and `/api/V2/me`. Input format:
//! `fuzz_invariants::auth2_answer_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fuzz_invariants::auth2_answer_bytes(data) {
        panic!("invariant broken: {broken}");
    }
});
