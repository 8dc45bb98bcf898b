//! Every call shape through the real gateway to an in-process HTTP/2 backend, with the fake Auth2.

mod common;

use std::time::Duration;

use common::*;

const UNARY: &str = "/spark.connect.SparkConnectService/Config";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_reaches_the_users_pod_with_either_header() {
    let alice = Backend::start("alice-pod").await;
    let bob = Backend::start("bob-pod").await;
    let fake = fake(vec![mfa_token("TOKENALICE1", "alice"), mfa_token("TOKENBOB1", "bob")]).await;
    let gw = gateway(gateway_env(&fake, &[("alice", &alice), ("bob", &bob)], &[])).await;
    let client = Client::connect(gw.grpc_addr).await;

    let r = client.unary(UNARY, &[("x-kbase-token", "TOKENALICE1")], b"hello").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("alice-pod")), "{r:?}");
    assert_eq!(r.messages, vec![bytes::Bytes::from_static(b"hello")]);
    assert_eq!(r.trailers.get("x-backend-trailer").unwrap(), "alice-pod", "the pod's trailers pass through");

    let r = client.unary(UNARY, &[("authorization", &bearer("TOKENBOB1"))], b"hi").await;
    assert_eq!((r.status(), r.backend()), (OK, Some("bob-pod")), "{r:?}");
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_passes_every_message_and_the_trailers() {
    let alice = Backend::start("alice-pod").await;
    let fake = fake(vec![mfa_token("TOKENALICE2", "alice")]).await;
    let gw = gateway(gateway_env(&fake, &[("alice", &alice)], &[])).await;
    let client = Client::connect(gw.grpc_addr).await;
    let r = client.unary("/test.Echo/ServerStream", &[("x-kbase-token", "TOKENALICE2")], b"100,1000").await;
    assert_eq!(r.status(), OK, "{r:?}");
    assert_eq!(r.messages.len(), 100);
    assert!(r.messages.iter().enumerate().all(|(i, m)| m.len() == 1000 && m.iter().all(|b| *b == (i % 251) as u8)));
}
