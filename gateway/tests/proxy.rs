//! The gateway in process, in front of in-process HTTP/2 gRPC backends (one per user, as pods),
//! with the repository's fake Auth2: every call shape, the decisions and their statuses, routing
//! by the verified user, cancellation both ways, flow control, deadlines, health, metrics, drain
//! and TLS.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use kbase_spark_gateway::server::Running;

const CONFIG: &str = "/spark.connect.SparkConnectService/Config";

/// A fake Auth2 with `tokens`, a backend per pod label, and the gateway in front.
struct World {
    fake: FakeAuth2,
    pods: HashMap<String, Backend>,
    gw: Running,
    client: Client,
}

impl World {
    async fn new(tokens: Vec<TokenEntry>, labels: &[&str], extra: &[(&str, &str)]) -> World {
        let fake = fake(tokens).await;
        let mut pods = HashMap::new();
        for label in labels {
            pods.insert(label.to_string(), Backend::start(&format!("{label}-pod")).await);
        }
        let pairs: Vec<(&str, &Backend)> = pods.iter().map(|(l, b)| (l.as_str(), b)).collect();
        let gw = gateway(gateway_env(&fake, &pairs, extra)).await;
        let client = Client::connect(gw.grpc_addr).await;
        World { fake, pods, gw, client }
    }

    fn pod(&self, label: &str) -> &Backend {
        &self.pods[label]
    }

    async fn metrics(&self) -> String {
        admin_get(self.gw.admin_addr, "/metrics").await.1
    }
}

fn token(t: &str) -> [(&'static str, &str); 1] {
    [("x-kbase-token", t)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_reaches_their_own_pod_with_either_header() {
    let w = World::new(vec![mfa_token("TOKENALICE1", "alice"), mfa_token("TOKENBOB1", "bob")], &["alice", "bob"], &[])
        .await;
    let r = w.client.unary(CONFIG, &token("TOKENALICE1"), b"hello").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("alice-pod")), "{r:?}");
    assert_eq!(r.messages, [Bytes::from_static(b"hello")]);
    assert_eq!(r.trailers.get("x-backend-trailer").unwrap(), "alice-pod", "the pod's trailers pass through");
    let r = w.client.unary(CONFIG, &[("authorization", &bearer("TOKENBOB1"))], b"hi").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("bob-pod")), "{r:?}");
    let r = w.client.unary(CONFIG, &[("authorization", &bearer("TOKENALICE1"))], b"again").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("alice-pod")), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_shape_passes_through_unchanged() {
    let w = World::new(vec![mfa_token("TOKENALICE2", "alice")], &["alice"], &[]).await;
    let t = token("TOKENALICE2");

    // Server streaming.
    let r = w.client.unary("/test.Echo/ServerStream", &t, b"100,1000").await;
    assert_eq!(r.status(), OK, "{r:?}");
    assert_eq!(r.messages.len(), 100);
    assert!(r.messages.iter().enumerate().all(|(i, m)| m.len() == 1000 && m.iter().all(|b| *b == (i % 251) as u8)));

    // Client streaming: messages sent one by one while the call runs.
    let (tx, body) = channel_body();
    let call = tokio::spawn({
        let client = w.client.clone();
        async move { read_reply(client.start("/test.Echo/ClientStream", &t, body).await?).await }
    });
    for i in 0..50u8 {
        tx.send(frame(&vec![i; 1000 + i as usize])).await.unwrap();
    }
    drop(tx);
    let r = call.await.unwrap().unwrap();
    let bytes: usize = (0..50).map(|i| 1000 + i).sum();
    assert_eq!((r.status(), r.messages.len()), (OK, 1));
    assert_eq!(r.messages[0], Bytes::from(format!("50,{bytes}")));

    // Bidi: each message comes back before the next is sent (nothing waits for the whole stream).
    let (tx, body) = channel_body();
    let res = w.client.start("/test.Echo/Bidi", &t, body).await.unwrap();
    let mut incoming = res.into_body();
    for i in 0..20u8 {
        let m = frame(&[i; 10]);
        tx.send(m.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), incoming.frame()).await.expect("the echo arrives");
        assert_eq!(got.unwrap().unwrap().into_data().unwrap(), m);
    }
    drop(tx);
    let rest = incoming.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap().get("grpc-status").unwrap(), "0");

    // A method the gateway has never heard of (Spark 4.1's CloneSession, 4.3's GetStatus, …).
    for method in ["/spark.connect.SparkConnectService/CloneSession", "/some.future.Service/Method"] {
        let r = w.client.unary(method, &t, b"opaque bytes").await;
        assert_eq!((r.status(), r.messages[0].as_ref()), (OK, &b"opaque bytes"[..]), "{method}");
    }

    // The pod's own status passes untouched (trailers-only from the pod).
    let r = w.client.unary("/test.Echo/Fail", &t, b"").await;
    assert_eq!((r.status(), r.message().as_str()), (FAILED_PRECONDITION, "backend says no"), "{r:?}");
    assert_eq!(r.backend(), Some("alice-pod"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_name_with_an_underscore_reaches_the_pod_named_by_the_escaping_rule() {
    let w = World::new(vec![mfa_token("TOKENJANE1", "jane_doe")], &["jane-5fdoe"], &[]).await;
    let r = w.client.unary(CONFIG, &token("TOKENJANE1"), b"x").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("jane-5fdoe-pod")), "{r:?}");
    let h = w.client.unary("/test.Echo/Headers", &token("TOKENJANE1"), b"").await;
    let listing = String::from_utf8_lossy(&h.messages[0]).into_owned();
    assert!(listing.contains(":authority: jupyter-jane-5fdoe.jupyterhub-prod.svc.cluster.local:15002"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_cannot_form_a_host_is_refused_never_routed() {
    let w = World::new(
        vec![mfa_token("TOKENJANE2", "jane_doe")],
        &["jane_doe", "jane-5fdoe"],
        &[("GATEWAY_USERNAME_ESCAPING", "raw")],
    )
    .await;
    let r = w.client.unary(CONFIG, &token("TOKENJANE2"), b"x").await;
    assert_eq!(r.status(), PERMISSION_DENIED, "{r:?}");
    assert!(r.message().contains("'jane_doe'") && r.message().contains("'_'"), "{}", r.message());
    assert_eq!(w.pods.values().map(|b| b.log.calls.load(Ordering::SeqCst)).sum::<usize>(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_have_the_cores_statuses_and_never_reach_a_pod() {
    let w = World::new(vec![mfa_token("TOKENALICE3", "alice"), mfa_token("TOKENBOB3", "bob")], &["alice", "bob"], &[])
        .await;
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[], "missing KBase token"),
        (&[("x-kbase-token", "NOSUCHTOKEN")], "invalid or revoked"),
        (&[("x-kbase-token", "has space")], "malformed"),
        (&[("authorization", "Basic abc")], "malformed"),
        (&[("x-kbase-token", "TOKENALICE3"), ("authorization", "Bearer TOKENBOB3")], "ambiguous"),
        (&[("x-kbase-token", "TOKENALICE3"), ("x-kbase-token", "TOKENBOB3")], "ambiguous"),
    ];
    for (headers, says) in cases {
        let r = w.client.unary(CONFIG, headers, b"x").await;
        assert_eq!(r.status(), UNAUTHENTICATED, "{headers:?}: {r:?}");
        assert!(r.message().contains(says), "{headers:?}: {}", r.message());
        assert_eq!(r.http, http::StatusCode::OK, "trailers-only responses are HTTP 200");
        assert_eq!(r.headers.get("content-type").unwrap(), "application/grpc");
        assert!(r.messages.is_empty());
        assert!(!r.message().contains("TOKENALICE3") && !r.message().contains("NOSUCHTOKEN"), "never a token");
    }
    // Identical repeats are one token.
    let r = w
        .client
        .unary(CONFIG, &[("x-kbase-token", "TOKENALICE3"), ("authorization", "Bearer TOKENALICE3")], b"x")
        .await;
    assert_eq!((r.status(), r.backend()), (OK, Some("alice-pod")));
    assert_eq!(w.pod("bob").log.calls.load(Ordering::SeqCst), 0);
    assert_eq!(w.pod("alice").log.calls.load(Ordering::SeqCst), 1, "only the allowed call reached a pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_is_required_by_default_except_for_exempt_users() {
    let tokens = vec![
        mfa_token("TOKENALICE4", "alice"),
        TokenEntry::new("TOKENBOB4", "bob").mfa("NotUsed"),
        TokenEntry::new("TOKENSVC4", "svc"),
    ];
    let w = World::new(tokens.clone(), &["alice", "bob", "svc"], &[("MFA_EXEMPT_USERS", "svc")]).await;
    assert_eq!(w.client.unary(CONFIG, &token("TOKENALICE4"), b"").await.status(), OK);
    let r = w.client.unary(CONFIG, &token("TOKENBOB4"), b"").await;
    assert_eq!(r.status(), PERMISSION_DENIED, "{r:?}");
    assert!(r.message().contains("'bob'") && r.message().contains("MFA"), "{}", r.message());
    let r = w.client.unary(CONFIG, &token("TOKENSVC4"), b"").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("svc-pod")), "exempt: {r:?}");

    let w = World::new(tokens, &["bob"], &[("REQUIRE_MFA", "false")]).await;
    assert_eq!(w.client.unary(CONFIG, &token("TOKENBOB4"), b"").await.status(), OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth2_down_is_unavailable_not_unauthenticated() {
    let w = World::new(vec![mfa_token("TOKENALICE5", "alice")], &["alice"], &[]).await;
    w.fake.set_fault_wait(Fault::Refuse).await.unwrap();
    let r = w.client.unary(CONFIG, &token("TOKENALICE5"), b"").await;
    assert_eq!(r.status(), UNAVAILABLE, "{r:?}");
    assert!(r.message().contains("auth service unavailable"), "{}", r.message());
    w.fake.set_fault_wait(Fault::None).await.unwrap();
    assert_eq!(w.client.unary(CONFIG, &token("TOKENALICE5"), b"").await.status(), OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_first_calls_with_one_token_make_one_auth2_lookup() {
    // The core's default new-token budget (10/s, burst 20) and a slow Auth2, so that all 64
    // calls are waiting at once.
    let fake = fake(vec![mfa_token("TOKENALICE6", "alice")]).await;
    fake.set_fault_wait(Fault::Delay(Duration::from_millis(300))).await.unwrap();
    let pod = Backend::start("alice-pod").await;
    let mut env = gateway_env(&fake, &[("alice", &pod)], &[]);
    env.remove("GATEWAY_NEW_TOKENS_PER_SECOND");
    env.remove("GATEWAY_NEW_TOKENS_BURST");
    let gw = gateway(env).await;
    let client = Client::connect(gw.grpc_addr).await;
    let t = token("TOKENALICE6");
    let replies = futures_util::future::join_all((0..64).map(|_| client.unary(CONFIG, &t, b"x"))).await;
    assert!(replies.iter().all(|r| r.status() == OK), "{:?}", replies.iter().map(|r| r.status()).collect::<Vec<_>>());
    assert_eq!(fake.requests_for("TOKENALICE6"), 1);
    assert_eq!(pod.log.calls.load(Ordering::SeqCst), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_inside_the_cache_window_is_refused_by_the_gateway() {
    let t = mfa_token("TOKENALICE7", "alice").expires_in(Duration::from_millis(1500));
    let w = World::new(vec![t], &["alice"], &[]).await;
    assert_eq!(w.client.unary(CONFIG, &token("TOKENALICE7"), b"").await.status(), OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = w.client.unary(CONFIG, &token("TOKENALICE7"), b"").await;
    assert_eq!(r.status(), UNAUTHENTICATED, "{r:?}");
    assert!(r.message().contains("expired"), "{}", r.message());
    assert_eq!(w.fake.requests_for("TOKENALICE7"), 1, "the expiry was judged from the cache");
    assert_eq!(w.pod("alice").log.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_pod_gets_unavailable_fast_saying_what_to_do() {
    let fake = fake(vec![mfa_token("TOKENCAROL1", "carol")]).await;
    let nobody = closed_port().await;
    let mut env = gateway_env(&fake, &[], &[]);
    env.insert("GATEWAY_RESOLVE".into(), format!("{}:15002={nobody}", pod_host("carol")));
    let gw = gateway(env).await;
    let client = Client::connect(gw.grpc_addr).await;
    let started = Instant::now();
    let r = client.unary(CONFIG, &token("TOKENCAROL1"), b"").await;
    assert_eq!(r.status(), UNAVAILABLE, "{r:?}");
    let m = r.message();
    assert!(m.contains("'carol'") && m.contains(&pod_host("carol")) && m.contains("connection refused"), "{m}");
    assert!(m.contains("start your notebook server"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(2), "fast: {:?}", started.elapsed());
    for _ in 0..10 {
        assert_eq!(client.unary(CONFIG, &token("TOKENCAROL1"), b"").await.status(), UNAVAILABLE);
    }
    let metrics = admin_get(gw.admin_addr, "/metrics").await.1;
    assert_eq!(metric(&metrics, "kbase_gateway_pod_dials_total"), 1.0, "not redialled by every call");
    assert_eq!(metric(&metrics, r#"kbase_gateway_refusals_total{reason="pod_unavailable"}"#), 11.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_forwarded_by_default_and_hop_by_hop_headers_are_not() {
    let w = World::new(vec![mfa_token("TOKENALICE8", "alice")], &["alice"], &[]).await;
    let headers = [("x-kbase-token", "TOKENALICE8"), ("x-custom", "kept")];
    let r = w.client.unary("/test.Echo/Headers", &headers, b"").await;
    let seen = String::from_utf8_lossy(&r.messages[0]).into_owned();
    for line in ["x-kbase-token: TOKENALICE8", "x-custom: kept", "te: trailers", "content-type: application/grpc"] {
        assert!(seen.lines().any(|l| l == line), "{line} forwarded: {seen}");
    }
    assert!(seen.contains(&format!(":authority: {}:15002", pod_host("alice"))), "{seen}");

    let w =
        World::new(vec![mfa_token("TOKENALICE9", "alice")], &["alice"], &[("GATEWAY_FORWARD_TOKEN", "false")]).await;
    for h in [("x-kbase-token", "TOKENALICE9"), ("authorization", "Bearer TOKENALICE9")] {
        let r = w.client.unary("/test.Echo/Headers", &[h], b"").await;
        let seen = String::from_utf8_lossy(&r.messages[0]).into_owned();
        assert!(!seen.contains("TOKENALICE9") && !seen.contains("authorization"), "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_cancels_cancels_the_pods_stream() {
    let w = World::new(vec![mfa_token("TOKENALICE10", "alice")], &["alice"], &[]).await;
    let res = w.client.start("/test.Echo/Forever", &token("TOKENALICE10"), boxed_frame(b"")).await.unwrap();
    let mut body = res.into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    assert_eq!(metric(&w.metrics().await, "kbase_gateway_live_streams"), 1.0);
    drop(body); // RST_STREAM(CANCEL)
    let log = &w.pod("alice").log;
    eventually(Duration::from_secs(5), "the pod's stream is cancelled", || log.cancelled.load(Ordering::SeqCst) == 1)
        .await;
    let metrics = w.metrics().await;
    assert_eq!(metric(&metrics, "kbase_gateway_live_streams"), 0.0);
    assert_eq!(metric(&metrics, r#"kbase_gateway_calls_total{method="other",status="CANCELLED"}"#), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_while_its_token_is_checked_still_gets_its_access_line() {
    let w = World::new(vec![mfa_token("TOKENALICE19", "alice")], &["alice"], &[]).await;
    w.fake.set_fault_wait(Fault::Delay(Duration::from_secs(2))).await.unwrap();
    let t = token("TOKENALICE19");
    let call = w.client.start(CONFIG, &t, boxed_frame(b""));
    assert!(tokio::time::timeout(Duration::from_millis(300), call).await.is_err(), "still waiting for Auth2");
    let series = r#"kbase_gateway_calls_total{method="/spark.connect.SparkConnectService/Config",status="CANCELLED"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&w.metrics().await, series) != 1.0 {
        assert!(Instant::now() < deadline, "the cancelled call is counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.pod("alice").log.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_resets_its_stream_resets_the_callers() {
    let w = World::new(vec![mfa_token("TOKENALICE11", "alice")], &["alice"], &[]).await;
    let res = w.client.start("/test.Echo/Reset", &token("TOKENALICE11"), boxed_frame(b"")).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(unframe(first), [Bytes::from_static(b"before the reset")]);
    let e = body.frame().await.unwrap().expect_err("the reset reaches the caller");
    assert_eq!(h2_reason(&e), Some(h2::Reason::CANCEL), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_dies_mid_stream_gives_unavailable_between_messages() {
    let w = World::new(vec![mfa_token("TOKENALICE12", "alice")], &["alice"], &[]).await;
    let res = w.client.start("/test.Echo/Forever", &token("TOKENALICE12"), boxed_frame(b"")).await.unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    w.pod("alice").log.kill_connections();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        let f = f.expect("an orderly end, not a reset");
        if let Ok(t) = f.into_trailers() {
            trailers = Some(t);
        }
    }
    let t = trailers.expect("trailers");
    assert_eq!(t.get("grpc-status").unwrap(), "14", "{t:?}");
    assert!(t.get("grpc-message").unwrap().to_str().unwrap().contains("was lost"), "{t:?}");
}

/// A reader that stops reading slows the pod down: the gateway holds no more than HTTP/2's
/// windows, never the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_pod_the_gateway_does_not_buffer_the_stream() {
    let w = World::new(vec![mfa_token("TOKENALICE13", "alice")], &["alice"], &[]).await;
    let client = Client::connect_with(w.gw.grpc_addr, |b| {
        b.initial_stream_window_size(65_535).initial_connection_window_size(65_535);
    })
    .await;
    const COUNT: usize = 4000;
    const SIZE: usize = 16 * 1024;
    let total = (COUNT * (SIZE + 5)) as u64; // 65.6 MB
    let res = client
        .start("/test.Echo/ServerStream", &token("TOKENALICE13"), boxed_frame(format!("{COUNT},{SIZE}").as_bytes()))
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut read = 0u64;
    for _ in 0..8 {
        read += body.frame().await.unwrap().unwrap().into_data().unwrap().len() as u64;
    }
    // Stop reading until the pod can send no more.
    let log = &w.pod("alice").log;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = log.bytes_sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "the pod never stopped sending: {now} bytes");
        last = now;
    }
    let in_flight = last - read;
    assert!(in_flight < 8 << 20, "{in_flight} bytes between the pod and a reader that stopped (of {total})");
    // Reading again, everything arrives, in order.
    let mut rest = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        match f.unwrap().into_data() {
            Ok(d) => rest.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(read + rest.len() as u64, total);
    assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_bounds_the_gateways_own_waits() {
    let fake = fake(vec![mfa_token("TOKENALICE14", "alice"), mfa_token("TOKENBOB14", "bob")]).await;
    let alice = Backend::start("alice-pod").await;
    let hole = blackhole().await;
    let mut env = gateway_env(&fake, &[("alice", &alice)], &[]);
    let resolve = format!("{},{}:15002={}", env["GATEWAY_RESOLVE"], pod_host("bob"), hole.addr);
    env.insert("GATEWAY_RESOLVE".into(), resolve);
    let gw = gateway(env).await;
    let client = Client::connect(gw.grpc_addr).await;

    // A slow Auth2: the caller's deadline passes first.
    fake.set_fault_wait(Fault::Delay(Duration::from_secs(3))).await.unwrap();
    let started = Instant::now();
    let r = client.unary(CONFIG, &[("x-kbase-token", "TOKENALICE14"), ("grpc-timeout", "300m")], b"").await;
    assert_eq!(r.status(), DEADLINE_EXCEEDED, "{r:?}");
    assert!(r.message().contains("checking the KBase token"), "{}", r.message());
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());

    // A pod that does not answer (BACKEND_CONNECT_TIMEOUT is 5 s): the deadline passes first.
    fake.set_fault_wait(Fault::None).await.unwrap();
    let started = Instant::now();
    let r = client.unary(CONFIG, &[("x-kbase-token", "TOKENBOB14"), ("grpc-timeout", "400m")], b"").await;
    assert_eq!(r.status(), DEADLINE_EXCEEDED, "{r:?}");
    assert!(r.message().contains("connecting to the Spark Connect server"), "{}", r.message());
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_gets_the_time_the_deadline_has_left_not_the_callers_whole_timeout() {
    let w = World::new(vec![mfa_token("TOKENALICE16", "alice")], &["alice"], &[]).await;
    // The first call waits 400 ms on Auth2: the pod must be told 5 s minus that, at most.
    w.fake.set_fault_wait(Fault::Delay(Duration::from_millis(400))).await.unwrap();
    let r =
        w.client.unary("/test.Echo/Headers", &[("x-kbase-token", "TOKENALICE16"), ("grpc-timeout", "5S")], b"").await;
    assert_eq!(r.status(), OK, "{r:?}");
    let seen = String::from_utf8_lossy(&r.messages[0]).into_owned();
    let value = seen.lines().find_map(|l| l.strip_prefix("grpc-timeout: ")).expect("a deadline forwarded");
    let mut h = http::HeaderMap::new();
    h.insert("grpc-timeout", value.parse().unwrap());
    let left = kbase_spark_gateway::grpc::timeout(&h).expect("a valid grpc-timeout");
    assert!(left <= Duration::from_millis(4600) && left > Duration::from_secs(1), "{value}: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswering_pod_is_unavailable_after_the_connect_timeout() {
    let fake = fake(vec![mfa_token("TOKENBOB15", "bob")]).await;
    let hole = blackhole().await;
    let mut env = gateway_env(&fake, &[], &[("BACKEND_CONNECT_TIMEOUT", "0.3")]);
    env.insert("GATEWAY_RESOLVE".into(), format!("{}:15002={}", pod_host("bob"), hole.addr));
    let gw = gateway(env).await;
    let client = Client::connect(gw.grpc_addr).await;
    let r = client.unary(CONFIG, &token("TOKENBOB15"), b"").await;
    assert_eq!(r.status(), UNAVAILABLE, "{r:?}");
    assert!(
        r.message().contains("no answer within 300ms") && r.message().contains("start your notebook server"),
        "{}",
        r.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token_and_turns_not_serving_on_drain() {
    let mut w = World::new(vec![], &[], &[]).await;
    let check = |service: &'static str| {
        let client = w.client.clone();
        async move { client.unary("/grpc.health.v1.Health/Check", &[], &health_request(service)).await }
    };
    for service in ["", "spark.connect.SparkConnectService"] {
        let r = check(service).await;
        assert_eq!((r.status(), r.messages.clone()), (OK, vec![Bytes::from_static(&[0x08, 1])]), "{service}: SERVING");
    }
    assert_eq!(check("other.Service").await.status(), 5, "NOT_FOUND");
    assert_eq!(w.client.unary("/grpc.health.v1.Health/List", &[], b"").await.status(), UNIMPLEMENTED);

    let res = w.client.start("/grpc.health.v1.Health/Watch", &[], boxed_frame(&health_request(""))).await.unwrap();
    let mut watch = res.into_body();
    let first = watch.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(unframe(first), [Bytes::from_static(&[0x08, 1])], "SERVING");
    assert_eq!(admin_get(w.gw.admin_addr, "/readyz").await.0, 200);
    w.gw.shutdown();
    let next = watch.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(unframe(next), [Bytes::from_static(&[0x08, 2])], "NOT_SERVING");
    let end = watch.frame().await.unwrap().unwrap().into_trailers().unwrap();
    assert_eq!(end.get("grpc-status").unwrap(), "14");
    assert_eq!(admin_get(w.gw.admin_addr, "/readyz").await, (503, "draining\n".into()));
    assert_eq!(admin_get(w.gw.admin_addr, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_series_and_they_move() {
    let w = World::new(vec![mfa_token("TOKENALICE16", "alice")], &["alice"], &[]).await;
    let before = w.metrics().await;
    for series in [
        "kbase_gateway_auth_decisions_total{decision=\"allowed\"}",
        "kbase_gateway_auth_decisions_total{decision=\"invalid_token\"}",
        "kbase_gateway_auth2_requests_total",
        "kbase_gateway_auth2_failures_total",
        "kbase_gateway_token_cache_hits_total",
        "kbase_gateway_token_cache_misses_total",
        "kbase_gateway_pod_connections",
        "kbase_gateway_pod_dials_total",
        "kbase_gateway_live_streams",
        "kbase_gateway_request_bytes_total",
        "kbase_gateway_response_bytes_total",
    ] {
        assert!(before.lines().any(|l| l.starts_with(&format!("{series} "))), "{series} in:\n{before}");
    }
    for _ in 0..3 {
        assert_eq!(w.client.unary(CONFIG, &token("TOKENALICE16"), b"12345").await.status(), OK);
    }
    assert_eq!(w.client.unary(CONFIG, &token("UNKNOWNTOKEN"), b"").await.status(), UNAUTHENTICATED);
    let after = w.metrics().await;
    let moved = |s: &str| metric(&after, s) - metric(&before, s);
    assert_eq!(
        moved(r#"kbase_gateway_calls_total{method="/spark.connect.SparkConnectService/Config",status="OK"}"#),
        3.0
    );
    assert_eq!(
        moved(
            r#"kbase_gateway_calls_total{method="/spark.connect.SparkConnectService/Config",status="UNAUTHENTICATED"}"#
        ),
        1.0
    );
    assert_eq!(moved(r#"kbase_gateway_auth_decisions_total{decision="allowed"}"#), 3.0);
    assert_eq!(moved(r#"kbase_gateway_auth_decisions_total{decision="invalid_token"}"#), 1.0);
    assert_eq!(moved("kbase_gateway_auth2_requests_total"), 2.0);
    assert_eq!(moved("kbase_gateway_token_cache_hits_total"), 2.0);
    assert_eq!(moved("kbase_gateway_pod_dials_total"), 1.0);
    assert_eq!(metric(&after, "kbase_gateway_pod_connections"), 1.0);
    assert_eq!(moved("kbase_gateway_request_bytes_total"), 3.0 * 10.0);
    assert_eq!(moved("kbase_gateway_response_bytes_total"), 3.0 * 10.0);
    assert!(!after.contains("TOKENALICE16") && !after.contains("UNKNOWNTOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_live_calls_finish_and_takes_no_new_ones() {
    let mut w = World::new(vec![mfa_token("TOKENALICE17", "alice")], &["alice"], &[]).await;
    let t = token("TOKENALICE17");
    let res = w.client.start("/test.Echo/Slow", &t, boxed_frame(b"15,100")).await.unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    w.gw.shutdown();
    assert_eq!(admin_get(w.gw.admin_addr, "/readyz").await.0, 503);
    eventually(Duration::from_secs(5), "new connections refused", || {
        std::net::TcpStream::connect_timeout(&w.gw.grpc_addr, Duration::from_millis(200)).is_err()
    })
    .await;
    // A new call on the open connection is refused too, once the GOAWAY has reached the client
    // (a call that crosses it on the wire is still served, as HTTP/2's graceful shutdown allows).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.client.start(CONFIG, &t, boxed_frame(b"")).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "new calls on the open connection still taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The live call runs to its end.
    let mut messages = 1;
    let mut status = None;
    while let Some(f) = body.frame().await {
        match f.unwrap().into_data() {
            Ok(_) => messages += 1,
            Err(f) => status = f.into_trailers().ok().and_then(|t| t.get("grpc-status").cloned()),
        }
    }
    assert_eq!((messages, status.unwrap()), (15, http::HeaderValue::from_static("0")));
    tokio::time::timeout(Duration::from_secs(5), w.gw.stopped()).await.expect("stopped once the call ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_grpc_call_is_refused() {
    let w = World::new(vec![], &[], &[]).await;
    let req = http::Request::get("http://gateway.test/").body(empty()).unwrap();
    let mut send = w.client.clone();
    let res = send.raw(req).await;
    assert_eq!(res.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_certificate_files_and_alpn_h2() {
    let ca = fake_auth2::pki::TestCa::new("gateway test CA");
    let id = ca.issue(&["localhost"]);
    let dir = std::env::temp_dir().join(format!("kbase-gateway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &id.cert_chain_pem).unwrap();
    std::fs::write(&key, &id.key_pem).unwrap();
    let w = World::new(
        vec![mfa_token("TOKENALICE18", "alice")],
        &["alice"],
        &[("GATEWAY_TLS_CERT", cert.to_str().unwrap()), ("GATEWAY_TLS_KEY", key.to_str().unwrap())],
    )
    .await;
    let client = Client::connect_tls(w.gw.grpc_addr, &ca.cert_pem, "localhost").await;
    let r = client.unary(CONFIG, &token("TOKENALICE18"), b"over tls").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("alice-pod")), "{r:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `HealthCheckRequest { service }`, encoded.
fn health_request(service: &str) -> Vec<u8> {
    let mut m = Vec::new();
    if !service.is_empty() {
        m.push(0x0a);
        m.push(service.len() as u8);
        m.extend_from_slice(service.as_bytes());
    }
    m
}

fn h2_reason(e: &hyper::Error) -> Option<h2::Reason> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.reason();
        }
        source = s.source();
    }
    None
}
