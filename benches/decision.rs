//! Criterion benchmarks of the decision in Rust alone (no JNI):
//! * `hit/1_thread`: a cached owner token, one call at a time (`authorize`, the function the
//!   JNI export calls);
//! * `hit/N_threads`: N threads deciding the same cached token at once; the figure is wall
//!   time per call over all threads, so it falls as throughput scales;
//! * `miss/loopback_auth2`: every call a new Auth2 exchange with the fake on loopback;
//! * `deny/malformed`: the cheapest denial.
//!
//! Run: `cargo bench --bench decision`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fake_auth2::{FakeAuth2, FakeConfig, TokenEntry};
use kbase_spark_auth::Authenticator;

const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn authenticator(fake: &FakeAuth2, invalid_ttl: &str) -> Authenticator {
    let map = HashMap::from([
        ("spark.kbase.auth.url".to_owned(), fake.url()),
        ("spark.kbase.auth.owner".to_owned(), "alice".to_owned()),
        ("spark.kbase.auth.cache.invalidTtl".to_owned(), invalid_ttl.to_owned()),
        ("spark.kbase.auth.failFast.threshold".to_owned(), "0".to_owned()),
        // The miss benchmark asks Auth2 about thousands of new tokens a second.
        ("spark.kbase.auth.newTokens.perSecond".to_owned(), "1000000".to_owned()),
        ("spark.kbase.auth.newTokens.burst".to_owned(), "1000000".to_owned()),
    ]);
    Authenticator::from_map(&map).unwrap()
}

fn benches(c: &mut Criterion) {
    let fake = FakeAuth2::start_blocking(FakeConfig::new().token(TokenEntry::new(TOKEN, "alice"))).unwrap();
    let auth = authenticator(&fake, "5s");
    let header = format!("Bearer {TOKEN}");
    let headers: &[&str] = &[&header];
    assert!(auth.authorize(headers, &[], None).is_ok());

    let mut hit = c.benchmark_group("hit");
    hit.throughput(Throughput::Elements(1));
    hit.bench_function("1_thread", |b| b.iter(|| black_box(auth.authorize(black_box(headers), &[], None))));
    for threads in [2usize, 4] {
        hit.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                let barrier = std::sync::Barrier::new(threads);
                let started = std::sync::Mutex::new(None::<Instant>);
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            barrier.wait();
                            started.lock().unwrap().get_or_insert_with(Instant::now);
                            for _ in 0..per_thread {
                                let _ = black_box(auth.authorize(black_box(headers), &[], None));
                            }
                        });
                    }
                });
                let start = started.into_inner().unwrap().unwrap();
                start.elapsed()
            })
        });
    }
    hit.finish();

    let mut deny = c.benchmark_group("deny");
    deny.bench_function("malformed", |b| b.iter(|| black_box(auth.authorize(&[], &["bad token"], None))));
    deny.finish();

    let miss_auth = authenticator(&fake, "0ms");
    let mut miss = c.benchmark_group("miss");
    miss.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut n = 0u64;
    miss.bench_function("loopback_auth2", |b| {
        b.iter(|| {
            n += 1;
            let t = format!("MISS{n:028}");
            black_box(miss_auth.authorize(&[], &[&t], None))
        })
    });
    miss.finish();
}

criterion_group!(decision, benches);
criterion_main!(decision);
