//! The in-process fake against a raw HTTP client: every endpoint and fault mode.

mod common;

use common::{get, request, Conn};
use fake_auth2::{FakeAuth2, FakeConfig, Fault, TokenEntry};
use serde_json::Value;
use std::time::{Duration, Instant};

const TOKEN: &str = "/api/V2/token";
const ME: &str = "/api/V2/me";

async fn fake() -> FakeAuth2 {
    FakeAuth2::start(
        FakeConfig::new()
            .token(TokenEntry::new("good", "alice").mfa("Used").roles(&["spark"]).display("Alice").email("a@x.org"))
            .token(TokenEntry::new("old", "bob").cachefor(1234))
            .token(TokenEntry::new("expired", "carol").expired_ago(Duration::from_secs(60)).mfa("NotUsed")),
    )
    .await
    .expect("start")
}

fn now_ms() -> i64 {
    fake_auth2::model::now_ms()
}

/// Auth2's error JSON exactly (SPEC §3): one `error` object with these seven fields.
fn assert_app_error(r: &common::Resp, status: u16, appcode: u64, apperror: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["error"], "{v}");
    let e = &v["error"];
    let mut keys: Vec<_> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["appcode", "apperror", "callid", "httpcode", "httpstatus", "message", "time"], "{v}");
    let reason = if status == 401 { "Unauthorized" } else { "Bad Request" };
    assert_eq!(e["httpstatus"], reason);
    assert_eq!(e["httpcode"], status);
    assert_eq!(e["appcode"], appcode);
    assert_eq!(e["apperror"], apperror);
    assert_eq!(e["message"], format!("{appcode} {apperror}"));
    assert!(e["callid"].is_string());
    assert!(e["time"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn root_info() {
    let f = fake().await;
    assert_eq!(f.url(), format!("http://{}/", f.addr()));
    assert!(f.addr().ip().is_loopback());
    let r = request(f.addr(), "GET", "/", &[("Accept", "application/json")], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["servicename"], "Authentication Service");
    assert_eq!(v["version"], "0.7.2-fake");
    assert!((v["servertime"].as_i64().unwrap() - now_ms()).abs() < 60_000);
}

#[tokio::test]
async fn valid_token_full_shape() {
    let f = fake().await;
    let before = now_ms();
    let r = get(f.addr(), TOKEN, Some("good")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["type"], "Login");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["mfa"], "Used");
    assert_eq!(v["cachefor"], 300_000);
    assert_eq!(v["name"], Value::Null);
    assert_eq!(v["custom"], serde_json::json!({}));
    assert_eq!(v["id"].as_str().unwrap().len(), 36);
    let (created, expires) = (v["created"].as_i64().unwrap(), v["expires"].as_i64().unwrap());
    assert!(created <= before && before - created < 60_000);
    assert_eq!(expires - created, 3_600_000);
    // The id is stable across requests, like a stored token's.
    let again = get(f.addr(), TOKEN, Some("good")).await.unwrap().json();
    assert_eq!(again["id"], v["id"]);
}

#[tokio::test]
async fn older_server_shape_without_mfa_and_custom_cachefor() {
    let f = fake().await;
    let v = get(f.addr(), TOKEN, Some("old")).await.unwrap().json();
    assert_eq!(v["user"], "bob");
    assert!(v.get("mfa").is_none(), "{v}");
    assert_eq!(v["cachefor"], 1234);
}

#[tokio::test]
async fn me_endpoint() {
    let f = fake().await;
    let r = get(f.addr(), ME, Some("good")).await.unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["display"], "Alice");
    assert_eq!(v["email"], "a@x.org");
    assert_eq!(v["customroles"], serde_json::json!(["spark"]));
    assert_eq!(v["roles"], serde_json::json!([]));
    assert_eq!(v["local"], false);
    let v = get(f.addr(), ME, Some("old")).await.unwrap().json();
    assert_eq!((v["display"].as_str(), v["email"].as_str()), (Some("bob"), Some("bob@example.org")));
    assert_app_error(&get(f.addr(), ME, Some("nope")).await.unwrap(), 401, 10020, "Invalid token");
    assert_app_error(&get(f.addr(), ME, Some("expired")).await.unwrap(), 401, 10020, "Invalid token");
    assert_app_error(&get(f.addr(), ME, None).await.unwrap(), 400, 10010, "No authentication token");
}

#[tokio::test]
async fn invalid_missing_expired_revoked() {
    let f = fake().await;
    assert_app_error(&get(f.addr(), TOKEN, Some("nope")).await.unwrap(), 401, 10020, "Invalid token");
    assert_app_error(&get(f.addr(), TOKEN, Some("expired")).await.unwrap(), 401, 10020, "Invalid token");
    assert_app_error(&get(f.addr(), TOKEN, None).await.unwrap(), 400, 10010, "No authentication token");
    let r = request(f.addr(), "GET", TOKEN, &[("Authorization", "")], b"").await.unwrap();
    assert_app_error(&r, 400, 10010, "No authentication token");
    // The header carries the raw token: a Bearer scheme is not stripped.
    assert_app_error(&get(f.addr(), TOKEN, Some("Bearer good")).await.unwrap(), 401, 10020, "Invalid token");

    assert!(f.revoke("good"));
    assert!(!f.revoke("never-seen"));
    assert_app_error(&get(f.addr(), TOKEN, Some("good")).await.unwrap(), 401, 10020, "Invalid token");
    assert_app_error(&get(f.addr(), ME, Some("good")).await.unwrap(), 401, 10020, "Invalid token");

    // A token added at runtime works; a short-lived one stops working once it expires.
    f.add_token(TokenEntry::new("brief", "dave").expires_in(Duration::from_millis(300)));
    assert_eq!(get(f.addr(), TOKEN, Some("brief")).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(f.addr(), TOKEN, Some("brief")).await.unwrap().status, 401);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let f = fake().await;
    assert_eq!(get(f.addr(), "/api/V2/nothing", Some("good")).await.unwrap().status, 404);
    // Double slashes are the client's to normalize.
    assert_eq!(get(f.addr(), "//api/V2/token", Some("good")).await.unwrap().status, 404);
    let r = request(f.addr(), "POST", TOKEN, &[("Authorization", "good")], b"{}").await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["httpcode"], 405);
}

#[tokio::test]
async fn prefix_serves_under_root_path() {
    let f = FakeAuth2::start(FakeConfig::new().prefix("/services/auth/").token(TokenEntry::new("t", "alice")))
        .await
        .unwrap();
    assert_eq!(f.url(), format!("http://{}/services/auth/", f.addr()));
    for root in ["/services/auth", "/services/auth/"] {
        let r = get(f.addr(), root, None).await.unwrap();
        assert_eq!(r.json()["servicename"], "Authentication Service");
    }
    assert_eq!(get(f.addr(), "/services/auth/api/V2/token", Some("t")).await.unwrap().json()["user"], "alice");
    assert_eq!(get(f.addr(), "/services/auth/api/V2/me", Some("t")).await.unwrap().status, 200);
    assert_eq!(get(f.addr(), TOKEN, Some("t")).await.unwrap().status, 404);
    assert_eq!(get(f.addr(), "/", None).await.unwrap().status, 404);
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests() {
    let f = fake().await;
    let mut c = Conn::connect(f.addr()).await.unwrap();
    for _ in 0..5 {
        let r = c.send("GET", TOKEN, &[("Authorization", "good")], b"").await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(f.requests_for("good"), 5);
}

#[tokio::test]
async fn fault_delay() {
    let f = fake().await;
    f.set_fault(Fault::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    let r = get(f.addr(), TOKEN, Some("good")).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "the delay was not applied");
    assert_eq!(r.json()["user"], "alice");
    // Far longer than the client's bound (common::TIMEOUT, 10 s): the root still answers (it is
    // not affected by faults), and once the fault is cleared the token endpoint answers again.
    // No speed is asserted: an answer at all proves the delay is not in the way.
    f.set_fault(Fault::Delay(Duration::from_secs(600)));
    assert_eq!(get(f.addr(), "/", None).await.unwrap().status, 200);
    f.set_fault(Fault::None);
    assert_eq!(get(f.addr(), TOKEN, Some("good")).await.unwrap().status, 200);
}

#[tokio::test]
async fn fault_status503() {
    let f = fake().await;
    f.set_fault(Fault::Status503);
    for path in [TOKEN, ME] {
        let r = get(f.addr(), path, Some("good")).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["error"]["httpcode"], 503);
    }
    assert_eq!(f.fault(), Fault::Status503);
}

#[tokio::test]
async fn fault_html502() {
    let f = fake().await;
    f.set_fault(Fault::Html502);
    let r = get(f.addr(), TOKEN, Some("good")).await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert!(r.text().contains("<title>502 Bad Gateway</title>"));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
}

#[tokio::test]
async fn fault_malformed() {
    let f = fake().await;
    f.set_fault(Fault::Malformed);
    let r = get(f.addr(), TOKEN, Some("good")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.text().starts_with("{\"user\""));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
}

#[tokio::test]
async fn fault_nouser() {
    let f = fake().await;
    f.set_fault(Fault::NoUser);
    for tok in ["good", "unknown"] {
        let v = get(f.addr(), TOKEN, Some(tok)).await.unwrap().json();
        assert_eq!(v["type"], "Login");
        assert!(v["expires"].is_i64());
        assert!(v.get("user").is_none(), "{v}");
    }
    let r = get(f.addr(), ME, Some("good")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json().get("user").is_none());
}

#[tokio::test]
async fn fault_status400html() {
    let f = fake().await;
    f.set_fault(Fault::Status400Html);
    for path in [TOKEN, ME] {
        let r = get(f.addr(), path, Some("good")).await.unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.header("content-type"), Some("text/html"));
        assert!(r.text().contains("<title>400 Bad Request</title>"), "{}", r.text());
        assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    }
}

#[tokio::test]
async fn fault_status400json() {
    let f = fake().await;
    f.set_fault(Fault::Status400Json);
    for path in [TOKEN, ME] {
        let r = get(f.addr(), path, Some("good")).await.unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert!(v.get("error").is_none(), "must not be Auth2's error object: {v}");
        assert_eq!(v["status"], 400);
    }
}

#[tokio::test]
async fn fault_drop_token_answers_as_auth2_does_without_a_token() {
    let f = fake().await;
    f.set_fault(Fault::DropToken);
    for path in [TOKEN, ME] {
        assert_app_error(&get(f.addr(), path, Some("good")).await.unwrap(), 400, 10010, "No authentication token");
    }
    assert_eq!(f.requests_for("good"), 2, "counted under the token the request carried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redirect_points_at_a_counting_target() {
    let f = FakeAuth2::start(FakeConfig::new().prefix("/services/auth").token(TokenEntry::new("good", "alice")))
        .await
        .unwrap();
    let target = f.redirect_target();
    assert!(target.ip().is_loopback());
    assert_ne!(target, f.addr());
    f.set_fault(Fault::Redirect);
    for path in ["/services/auth/api/V2/token", "/services/auth/api/V2/me"] {
        let r = get(f.addr(), path, Some("good")).await.unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some(format!("http://{target}{path}").as_str()));
    }
    assert_eq!(f.requests_for("good"), 2);
    assert_eq!(f.redirected_requests(), 0, "nobody followed the redirect yet");
    // A client that did follow would get a real answer (so following is never harmless), and
    // the target counts it, apart from the Auth2 port's counters.
    let r = get(target, "/services/auth/api/V2/token", Some("good")).await.unwrap();
    assert_eq!(r.json()["user"], "alice");
    assert_eq!(f.redirected_requests(), 1);
    assert_eq!(f.requests_for("good"), 2);
    f.reset_counts();
    assert_eq!(f.redirected_requests(), 0);
}

/// HTTPS on the Auth2 port with a certificate from a test CA; a client trusting the CA gets
/// Auth2's answers, one trusting another CA fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_same_api() {
    use fake_auth2::pki::TestCa;
    let ca = TestCa::new("fake-auth2 test CA");
    let f = FakeAuth2::start(
        FakeConfig::new().tls(ca.issue(&["localhost", "127.0.0.1"])).token(TokenEntry::new("good", "alice")),
    )
    .await
    .unwrap();
    assert_eq!(f.url(), format!("https://{}/", f.addr()));
    assert_eq!(f.url_with_host("localhost"), format!("https://localhost:{}/", f.addr().port()));
    let answer = common::tls_get(f.addr(), "localhost", &ca.cert_pem, TOKEN, "good").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"user\":\"alice\""), "{answer}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(get(f.addr(), TOKEN, Some("good")).await.is_err());
    let other = TestCa::new("another CA");
    let err = common::tls_get(f.addr(), "localhost", &other.cert_pem, TOKEN, "good").await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn fault_ignore_expiry() {
    let f = fake().await;
    f.set_fault(Fault::IgnoreExpiry);
    let r = get(f.addr(), TOKEN, Some("expired")).await.unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["user"], "carol");
    assert!(v["expires"].as_i64().unwrap() < now_ms(), "{v}");
    // Unknown and revoked tokens stay invalid.
    assert_eq!(get(f.addr(), TOKEN, Some("nope")).await.unwrap().status, 401);
    f.revoke("good");
    assert_eq!(get(f.addr(), TOKEN, Some("good")).await.unwrap().status, 401);
    f.set_fault(Fault::None);
    assert_eq!(get(f.addr(), TOKEN, Some("expired")).await.unwrap().status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_refuse_closes_socket_and_rebinds_same_port() {
    let f = fake().await;
    let addr = f.addr();
    let mut open = Conn::connect(addr).await.unwrap();
    assert_eq!(open.send("GET", TOKEN, &[("Authorization", "good")], b"").await.unwrap().status, 200);

    f.set_fault_wait(Fault::Refuse).await.unwrap();
    assert!(!f.is_listening());
    let err = tokio::net::TcpStream::connect(addr).await.expect_err("connect should be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(open.closed_by_peer(Duration::from_secs(5)).await, "keep-alive connection should be dropped");

    f.set_fault_wait(Fault::None).await.unwrap();
    assert!(f.is_listening());
    assert_eq!(f.addr(), addr);
    assert_eq!(get(addr, TOKEN, Some("good")).await.unwrap().json()["user"], "alice");

    // And again, to show the cycle repeats (TIME_WAIT leftovers do not block rebinding).
    f.set_fault_wait(Fault::Refuse).await.unwrap();
    assert!(get(addr, TOKEN, Some("good")).await.is_err());
    f.set_fault_wait(Fault::Delay(Duration::from_millis(10))).await.unwrap();
    assert_eq!(get(addr, TOKEN, Some("good")).await.unwrap().status, 200);
}

#[tokio::test]
async fn counters() {
    let f = fake().await;
    get(f.addr(), TOKEN, Some("good")).await.unwrap();
    get(f.addr(), ME, Some("good")).await.unwrap();
    get(f.addr(), TOKEN, Some("nope")).await.unwrap();
    get(f.addr(), TOKEN, None).await.unwrap();
    get(f.addr(), "/", None).await.unwrap(); // not a token endpoint: not counted
    f.set_fault(Fault::Status503);
    get(f.addr(), TOKEN, Some("good")).await.unwrap(); // fault answers count too
    assert_eq!(f.requests_for("good"), 3);
    assert_eq!(f.requests_for("nope"), 1);
    assert_eq!(f.requests_for("old"), 0);
    assert_eq!(f.total_requests(), 5);
    assert_eq!(f.counts().len(), 2);
    f.reset_counts();
    assert_eq!((f.requests_for("good"), f.total_requests()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests() {
    let f = fake().await;
    let addr = f.addr();
    let tasks: Vec<_> = (0..32).map(|_| tokio::spawn(async move { get(addr, TOKEN, Some("good")).await })).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(f.requests_for("good"), 32);
}

#[tokio::test]
async fn refuses_non_loopback_bind() {
    let cfg = FakeConfig { bind: "0.0.0.0".parse().unwrap(), ..FakeConfig::new() };
    let err = FakeAuth2::start(cfg).await.err().expect("must refuse");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let f = fake().await;
    let addr = f.addr();
    assert_eq!(get(addr, TOKEN, Some("good")).await.unwrap().status, 200);
    drop(f);
    // Abort is asynchronous on the caller's runtime: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `start_blocking` from plain sync code, with a blocking std client.
#[test]
fn start_blocking_from_sync_code() {
    use std::io::{Read, Write};
    let f = FakeAuth2::start_blocking(FakeConfig::new().token(TokenEntry::new("s", "sync-user"))).unwrap();
    let fetch = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(f.addr())?;
        s.set_read_timeout(Some(common::TIMEOUT))?;
        s.write_all(b"GET /api/V2/token HTTP/1.1\r\nHost: x\r\nAuthorization: s\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let resp = fetch().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"user\":\"sync-user\""), "{resp}");
    f.set_fault_blocking(Fault::Refuse).unwrap();
    assert_eq!(fetch().unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    f.set_fault_blocking(Fault::None).unwrap();
    assert!(fetch().unwrap().starts_with("HTTP/1.1 200"));
    let addr = f.addr();
    drop(f);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// `start_blocking` called from inside an async test must not panic.
#[tokio::test]
async fn start_blocking_inside_async_context() {
    let f = FakeAuth2::start_blocking(FakeConfig::new().token(TokenEntry::new("a", "u"))).unwrap();
    assert_eq!(get(f.addr(), TOKEN, Some("a")).await.unwrap().status, 200);
    drop(f);
}
