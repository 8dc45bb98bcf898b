//! The Auth2 client where production lives: HTTPS with an extra CA bundle (and what happens when
//! nothing trusts the certificate, or it names another host), a connect that cannot complete,
//! and a redirect it must not follow. Driven through `Auth2Client::lookup` and the fake.
//!
//! The system trust store (`SSL_CERT_FILE`) has its own test binary, `auth2_system_trust.rs`,
//! because it sets a process-wide environment variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_auth2::pki::TestCa;
use fake_auth2::{FakeAuth2, FakeConfig, Fault, TokenEntry};
use kbase_spark_auth::auth2::{Auth2Client, Auth2Error, TokenInfo};
use kbase_spark_auth::Settings;

const TOKEN: &str = "AUTH2CLIENTTESTTOKEN7QZXKB2MNP4R";

fn settings(url: &str, extra: &[(&str, &str)]) -> Settings {
    let mut map: HashMap<String, String> = HashMap::from([
        ("USER".into(), "alice".into()),
        ("spark.kbase.auth.url".into(), url.into()),
        ("spark.kbase.auth.connectTimeout".into(), "2s".into()),
        ("spark.kbase.auth.requestTimeout".into(), "5s".into()),
    ]);
    for (k, v) in extra {
        map.insert((*k).into(), (*v).into());
    }
    Settings::from_map(&map).expect("valid settings")
}

fn lookup(s: &Settings, token: &str) -> Result<TokenInfo, Auth2Error> {
    let client = Auth2Client::new(s).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(client.lookup(token, false))
}

fn unavailable(r: Result<TokenInfo, Auth2Error>) -> String {
    match r {
        // Either kind of "could not be checked" (a service failure, or an answer that is no answer).
        Err(Auth2Error::ServiceFailure(detail) | Auth2Error::BadAnswer(detail)) => detail,
        other => panic!("expected the token to be unchecked (ServiceFailure/BadAnswer), got {other:?}"),
    }
}

/// A private scratch file path for this test process.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kbase-auth2-client-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn https_fake(ca: &TestCa, names: &[&str]) -> FakeAuth2 {
    FakeAuth2::start_blocking(FakeConfig::new().tls(ca.issue(names)).token(TokenEntry::new(TOKEN, "alice")))
        .expect("fake starts")
}

#[test]
fn https_trusted_through_ca_bundle() {
    let ca = TestCa::new("kbase test CA (bundle)");
    let fake = https_fake(&ca, &["localhost", "127.0.0.1"]);
    let bundle = scratch("bundle-ok.pem");
    ca.write_cert(&bundle).unwrap();
    for url in [fake.url_with_host("localhost"), fake.url()] {
        assert!(url.starts_with("https://"), "{url}");
        let s = settings(&url, &[("spark.kbase.auth.caBundle", bundle.to_str().unwrap())]);
        let info = lookup(&s, TOKEN).unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert_eq!(&*info.identity.user, "alice");
    }
    assert_eq!(fake.requests_for(TOKEN), 2);
}

#[test]
fn https_trusted_by_nothing_is_unavailable_naming_the_certificate_problem() {
    let ca = TestCa::new("kbase test CA (untrusted)");
    let fake = https_fake(&ca, &["localhost", "127.0.0.1"]);
    // No caBundle, and the system store does not know this CA; also a bundle of another CA.
    let other = TestCa::new("some other CA");
    let other_bundle = scratch("bundle-other.pem");
    other.write_cert(&other_bundle).unwrap();
    for extra in [vec![], vec![("spark.kbase.auth.caBundle", other_bundle.to_str().unwrap())]] {
        let detail = unavailable(lookup(&settings(&fake.url_with_host("localhost"), &extra), TOKEN));
        let low = detail.to_lowercase();
        assert!(low.contains("certificate") && low.contains("unknownissuer"), "{detail}");
        assert!(!detail.contains(TOKEN), "{detail}");
    }
    assert_eq!(fake.requests_for(TOKEN), 0, "no request may reach an untrusted server");
}

#[test]
fn https_certificate_for_another_host_is_unavailable() {
    let ca = TestCa::new("kbase test CA (wrong host)");
    // Trusted CA, but the certificate names another host than the URL's.
    let fake = https_fake(&ca, &["auth.example.org"]);
    let bundle = scratch("bundle-wrong-host.pem");
    ca.write_cert(&bundle).unwrap();
    let s = settings(&fake.url_with_host("localhost"), &[("spark.kbase.auth.caBundle", bundle.to_str().unwrap())]);
    let detail = unavailable(lookup(&s, TOKEN));
    let low = detail.to_lowercase();
    assert!(low.contains("certificate not valid for name"), "{detail}");
    assert_eq!(fake.requests_for(TOKEN), 0);
}

/// A loopback listener whose accept queue is full: the kernel drops further SYNs, so a connect
/// to it neither completes nor is refused (the client's SYN is retransmitted until it gives up).
struct FullBacklog {
    addr: SocketAddr,
    _listener: std::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

fn full_backlog() -> FullBacklog {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Listening again sets the backlog: 0 leaves room for one queued connection.
    // Safety: a valid listening socket descriptor owned by `listener`.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("unexpected connect error while filling the backlog: {e}"),
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    FullBacklog { addr, _listener: listener, _queued: queued }
}

#[test]
fn connect_timeout_bounds_a_connect_that_cannot_complete() {
    let hole = full_backlog();
    // The request timeout is far away: only the connect timeout can end this in time.
    let s = settings(
        &format!("http://{}/", hole.addr),
        &[("spark.kbase.auth.connectTimeout", "700ms"), ("spark.kbase.auth.requestTimeout", "20s")],
    );
    let started = Instant::now();
    let detail = unavailable(lookup(&s, TOKEN));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700), "ended before the connect timeout ({waited:?}): {detail}");
    assert!(waited < Duration::from_millis(700 + 1500), "not ended by the 700ms connect timeout: {waited:?}");
    assert!(detail.contains("timed out"), "{detail}");
}

#[test]
fn redirect_is_not_followed_and_the_token_goes_nowhere_else() {
    let fake = FakeAuth2::start_blocking(FakeConfig::new().token(TokenEntry::new(TOKEN, "alice"))).unwrap();
    fake.set_fault_blocking(Fault::Redirect).unwrap();
    let s = settings(&fake.url(), &[]);
    let detail = unavailable(lookup(&s, TOKEN));
    assert!(detail.contains("302"), "{detail}");
    assert_eq!(fake.requests_for(TOKEN), 1, "one request to Auth2 itself");
    assert_eq!(fake.redirected_requests(), 0, "the redirect target must never see a request (or the token)");
    // The target is live and would have answered: following it would have allowed the call.
    fake.set_fault_blocking(Fault::None).unwrap();
    assert_eq!(&*lookup(&s, TOKEN).unwrap().identity.user, "alice");
}

#[test]
fn a_400_from_a_proxy_is_not_an_invalid_token_but_auth2s_own_401_is() {
    let fake = FakeAuth2::start_blocking(FakeConfig::new().token(TokenEntry::new(TOKEN, "alice"))).unwrap();
    let s = settings(&fake.url(), &[]);
    for fault in [Fault::Status400Html, Fault::Status400Json] {
        fake.set_fault_blocking(fault.clone()).unwrap();
        match lookup(&s, TOKEN) {
            Err(Auth2Error::BadAnswer(detail)) => assert!(detail.contains("HTTP 400"), "{fault:?}: {detail}"),
            other => panic!("{fault:?}: expected a bad answer (token unchecked), got {other:?}"),
        }
    }
    fake.set_fault_blocking(Fault::None).unwrap();
    assert_eq!(lookup(&s, "NOSUCHTOKEN").unwrap_err(), Auth2Error::Invalid, "the fake's 401 is Auth2's own");
}
