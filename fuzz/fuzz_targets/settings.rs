//! Settings parsing from the flat key/value map the JVM hands over. Input format:
//! `fuzz_invariants::settings_bytes`; seeds by hand: `printf '\x02alice\xff\x0b5s'`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_invariants/mod.rs"]
mod fuzz_invariants;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fuzz_invariants::settings_bytes(data) {
        panic!("invariant broken: {broken}");
    }
});
