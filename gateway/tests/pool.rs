//! Connections to pods: shared, at most MAX_CHANNELS_PER_BACKEND per pod, idle ones closed
//! (least recently used pods first beyond the bound), never one carrying a live call, and a pod
//! that cannot be reached not dialled again by every call.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use kbase_spark_auth::{Authenticator, Settings};
use kbase_spark_gateway::observe::Observe;
use kbase_spark_gateway::pool::{Pool, PoolConfig, PoolStats};
use kbase_spark_gateway::route::{Override, Pod, Resolver};

fn config() -> PoolConfig {
    PoolConfig {
        max_per_pod: 5,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        max_pods: 100,
        retry_backoff: Duration::from_secs(60),
        streams_per_connection: 100,
    }
}

fn pod(name: &str) -> Pod {
    Pod { host: name.to_owned(), port: 15002, authority: format!("{name}:15002").parse().unwrap() }
}

/// A pool whose pod `name` is at `addr`, for each pair.
fn pool(cfg: PoolConfig, pods: &[(&str, std::net::SocketAddr)]) -> (Arc<Pool>, Arc<Observe>) {
    let overrides: Vec<Override> = pods.iter().map(|(n, a)| format!("{n}:15002={a}").parse().unwrap()).collect();
    let auth = Arc::new(Authenticator::new(Settings::any_valid_user()).unwrap());
    let observe = Arc::new(Observe::new(auth));
    (Pool::new(cfg, Resolver::new(&overrides), Arc::clone(&observe)), observe)
}

fn stats(p: &Pool) -> (usize, usize, usize) {
    let PoolStats { pods, connections, live } = p.stats();
    (pods, connections, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_share_a_connection_and_another_opens_only_when_full_up_to_the_cap() {
    let b = Backend::start("a").await;
    let (p, observe) = pool(PoolConfig { max_per_pod: 2, streams_per_connection: 2, ..config() }, &[("pod-a", b.addr)]);
    let a = pod("pod-a");
    let l1 = p.lease(&a).await.unwrap();
    let l2 = p.lease(&a).await.unwrap();
    assert_eq!(stats(&p), (1, 1, 2), "two calls fit on one connection");
    let l3 = p.lease(&a).await.unwrap();
    assert_eq!(stats(&p), (1, 2, 3), "the first is full: a second connection");
    let more: Vec<_> = futures_util::future::join_all((0..5).map(|_| p.lease(&a))).await;
    assert!(more.iter().all(|l| l.is_ok()));
    assert_eq!(stats(&p), (1, 2, 8), "at the cap: calls share the open connections");
    assert_eq!(observe.pod_dials.get(), 2);
    // The pod counts a connection when its accept loop runs, which may come after the dial returns.
    eventually(Duration::from_secs(5), "the pod sees two connections", || {
        b.log.connections.load(Ordering::SeqCst) == 2
    })
    .await;
    drop((l1, l2, l3, more));
    assert_eq!(stats(&p), (1, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_to_a_pod_dial_once() {
    let b = Backend::start("a").await;
    let (p, observe) = pool(config(), &[("pod-a", b.addr)]);
    let a = pod("pod-a");
    let leases = futures_util::future::join_all((0..64).map(|_| p.lease(&a))).await;
    assert!(leases.iter().all(|l| l.is_ok()));
    assert_eq!(observe.pod_dials.get(), 1);
    assert_eq!(stats(&p), (1, 1, 64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_live_ones_never() {
    let (a_pod, b_pod) = (Backend::start("a").await, Backend::start("b").await);
    let (p, _) = pool(config(), &[("pod-a", a_pod.addr), ("pod-b", b_pod.addr)]);
    let la = p.lease(&pod("pod-a")).await.unwrap();
    let lb = p.lease(&pod("pod-b")).await.unwrap();
    drop(la);
    p.sweep(Instant::now());
    assert_eq!(stats(&p), (2, 2, 1), "not idle long enough yet");
    // An hour later: a's connection has been idle for an hour, b's carries a call.
    p.sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(stats(&p), (1, 1, 1));
    eventually(Duration::from_secs(5), "pod a sees its connection closed", || {
        a_pod.log.open_connections.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually(Duration::from_secs(5), "b open", || b_pod.log.open_connections.load(Ordering::SeqCst) == 1).await;
    // The live call's connection still works.
    let request = http::Request::post("http://pod-b:15002/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    let res = lb.sender().send_request(request).await.unwrap();
    assert_eq!(res.headers().get("x-backend").unwrap(), "b");
    drop((res, lb));
    p.sweep(Instant::now() + Duration::from_secs(3600));
    assert_eq!(stats(&p), (0, 0, 0));
    eventually(Duration::from_secs(5), "pod b sees its connection closed", || {
        b_pod.log.open_connections.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_pod_bound_the_least_recently_used_idle_pod_goes_first() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let (p, _) =
        pool(PoolConfig { max_pods: 1, ..config() }, &[("pod-a", a.addr), ("pod-b", b.addr), ("pod-c", c.addr)]);
    let la = p.lease(&pod("pod-a")).await.unwrap();
    drop(p.lease(&pod("pod-b")).await.unwrap());
    assert_eq!(stats(&p).0, 2, "a carries a call: it stays, over the bound");
    p.sweep(Instant::now());
    assert_eq!(stats(&p), (1, 1, 1), "b was idle: b went, although a is older");
    eventually(Duration::from_secs(5), "b closed", || b.log.open_connections.load(Ordering::SeqCst) == 0).await;
    drop(la);
    let lc = p.lease(&pod("pod-c")).await.unwrap();
    assert_eq!(stats(&p), (1, 1, 1), "a, idle and least recently used, made room for c");
    eventually(Duration::from_secs(5), "a closed", || a.log.open_connections.load(Ordering::SeqCst) == 0).await;
    eventually(Duration::from_secs(5), "c open", || c.log.open_connections.load(Ordering::SeqCst) == 1).await;
    drop(lc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_is_down_is_not_dialled_by_every_call() {
    let addr = closed_port().await;
    let (p, observe) = pool(PoolConfig { retry_backoff: Duration::from_millis(700), ..config() }, &[("pod-a", addr)]);
    let a = pod("pod-a");
    let started = Instant::now();
    for _ in 0..20 {
        let e = p.lease(&a).await.err().expect("the pod is down");
        assert!(e.0.contains("connection refused"), "{}", e.0);
    }
    assert_eq!(observe.pod_dials.get(), 1, "one dial, then the remembered failure");
    assert!(started.elapsed() < Duration::from_millis(700), "this test needs the calls inside the backoff");
    // The pod comes back where it was: after the backoff one call dials again and gets in;
    // the calls before that still fail at once.
    let _back = Backend::start_at("a", addr).await;
    loop {
        match p.lease(&a).await {
            Ok(_) => break,
            Err(_) => assert!(started.elapsed() < Duration::from_secs(5), "the pod is dialled again after the backoff"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(observe.pod_dials.get(), 2, "one more dial after the backoff, not one per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_is_bounded_by_the_connect_timeout() {
    let hole = blackhole().await;
    let (p, observe) =
        pool(PoolConfig { connect_timeout: Duration::from_millis(300), ..config() }, &[("pod-a", hole.addr)]);
    let started = Instant::now();
    let e = p.lease(&pod("pod-a")).await.err().expect("nothing answers");
    assert!(
        started.elapsed() >= Duration::from_millis(300) && started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(e.0.contains("no answer within 300ms"), "{}", e.0);
    assert!(
        observe.encode().contains(r#"kbase_gateway_pod_dial_failures_total{cause="timeout"} 1"#),
        "{}",
        observe.encode()
    );
}
