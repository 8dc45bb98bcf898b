//! `spark.kbase.auth.cache.maxEntries` in the default suite: more valid tokens than the cache
//! holds, and Auth2 is asked again for the ones it dropped; with room for all, for none.

mod common;

use common::*;

const TOKENS: usize = 200;

/// Calls every token twice (two passes, in order); returns how many tokens Auth2 was asked about
/// a second time, and the number of cached entries after the first pass.
fn two_passes(max_entries: &str) -> (usize, u64) {
    let tokens: Vec<String> = (0..TOKENS).map(|_| new_token("bound")).collect();
    let fake = fake(tokens.iter().map(|t| TokenEntry::new(t, OWNER)).collect());
    // Long windows (Auth2's default cachefor of 5 min, the default cap): nothing ends by time,
    // so a second request for a token can only mean the cache let go of it.
    let auth = authenticator(&fake, &[("spark.kbase.auth.cache.maxEntries", max_entries)]);
    for t in &tokens {
        assert_allowed(&call(&auth, t));
    }
    let cached = auth.cached_entries();
    for t in &tokens {
        assert_allowed(&call(&auth, t));
    }
    for t in &tokens {
        assert!((1..=2).contains(&fake.requests_for(t)), "{} requests for one token", fake.requests_for(t));
    }
    (tokens.iter().filter(|t| fake.requests_for(t) == 2).count(), cached)
}

#[test]
fn a_small_bound_drops_tokens_and_auth2_is_asked_again() {
    let (asked_again, cached) = two_passes("10");
    assert!(cached <= 10, "the cache holds {cached} entries, over its bound of 10");
    // At most 10 entries (plus this thread's few front-table slots) can have survived.
    assert!(asked_again >= TOKENS - 10 - 8, "only {asked_again} of {TOKENS} tokens were looked up again");
}

#[test]
fn with_room_for_every_token_none_is_asked_again() {
    let (asked_again, cached) = two_passes("1000");
    assert_eq!(cached, TOKENS as u64);
    assert_eq!(asked_again, 0, "tokens were looked up again although the cache had room");
}
