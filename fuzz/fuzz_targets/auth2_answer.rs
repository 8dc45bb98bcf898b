//! Auth2 answers: an HTTP status and a body for `/api/V2/token` and `/api/V2/me`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the status: mostly the interesting ones, sometimes any 100..599.
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
    if let Err(broken) = fuzz_invariants::auth2_answer(status, body) {
        panic!("invariant broken: {broken}");
    }
});
