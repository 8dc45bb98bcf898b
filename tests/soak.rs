//! Soak: 10⁶ decisions with rotating tokens keep resident memory flat once the cache is full,
//! and leave no extra threads behind.
//!
//! Slow (about a minute in release mode), so it is ignored by a plain `cargo test`; run it with
//! `cargo test --release --test soak -- --ignored --nocapture` (`scripts/test.sh --slow` does).

mod common;

use common::*;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
#[ignore = "slow soak; run with --ignored"]
fn million_decisions_with_rotating_tokens_stay_flat() {
    const TOTAL: u64 = 1_000_000;
    // After 500k decisions the cache is full and the in-process fake has stopped tracking new
    // tokens (it keeps per-token counts for the first 100k only), so growth after it is ours.
    const CHECKPOINT: u64 = 500_000;
    let owner = new_token("soakowner");
    let fake = fake(vec![TokenEntry::new(&owner, OWNER)]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.cache.maxEntries", "10000")]);
    let bearer_owner = bearer(&owner);
    let mut rss_at_checkpoint = 0;
    let mut threads_at_checkpoint = 0;
    for i in 0..TOTAL {
        // Three calls in four are the owner's (cache hits); one in four a never-seen token
        // (a miss, an Auth2 request, and a negative cache entry).
        if i % 4 == 0 {
            let t = format!("ROT{i:029}");
            assert_eq!(denied(auth.authorize(&[], &[&t], None)).reason, Reason::Invalid);
        } else {
            assert!(auth.authorize(&[&bearer_owner], &[], None).is_ok());
        }
        if i + 1 == CHECKPOINT {
            rss_at_checkpoint = rss_kib();
            threads_at_checkpoint = threads();
        }
    }
    let (rss_end, threads_end) = (rss_kib(), threads());
    let cached = auth.cached_entries();
    let m = auth.metrics();
    println!(
        "soak: {TOTAL} decisions; RSS {rss_at_checkpoint} KiB at {CHECKPOINT} -> {rss_end} KiB at {TOTAL} \
         ({:+} KiB); threads {threads_at_checkpoint} -> {threads_end}; cached entries {cached}; \
         auth2 requests {}; hits {}",
        rss_end as i64 - rss_at_checkpoint as i64,
        m.auth2_requests,
        m.cache_hits
    );
    assert!(cached <= 10_000, "cache exceeded its bound: {cached}");
    assert_eq!(m.allowed + m.denied_for(Reason::Invalid), TOTAL);
    // 500 000 more decisions (125 000 misses) after the checkpoint: a leak of 64 bytes per miss
    // would show as > 7.6 MiB.
    assert!(rss_end <= rss_at_checkpoint + 4 * 1024, "RSS grew from {rss_at_checkpoint} to {rss_end} KiB");
    assert_eq!(threads_end, threads_at_checkpoint, "thread count changed");
}
