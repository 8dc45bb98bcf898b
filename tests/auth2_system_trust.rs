//! The system trust store, through its standard override `SSL_CERT_FILE`: a CA listed there is
//! trusted without `caBundle`. Its own test binary (one test), because it sets a process-wide
//! environment variable before any client exists.

use std::collections::HashMap;

use fake_auth2::pki::TestCa;
use fake_auth2::{FakeAuth2, FakeConfig, TokenEntry};
use kbase_spark_auth::auth2::{Auth2Client, Auth2Error};
use kbase_spark_auth::Settings;

const TOKEN: &str = "SYSTEMTRUSTTESTTOKEN7QZXKB2MNP4R";

fn lookup(url: &str) -> Result<String, Auth2Error> {
    let map =
        HashMap::from([("USER".to_string(), "alice".to_string()), ("spark.kbase.auth.url".to_string(), url.into())]);
    let client = Auth2Client::new(&Settings::from_map(&map).unwrap()).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(client.lookup(TOKEN, false)).map(|i| i.identity.user.to_string())
}

#[test]
fn https_trusted_through_ssl_cert_file() {
    let ca = TestCa::new("kbase test CA (system store)");
    let fake = FakeAuth2::start_blocking(
        FakeConfig::new().tls(ca.issue(&["localhost"])).token(TokenEntry::new(TOKEN, "alice")),
    )
    .unwrap();
    let url = fake.url_with_host("localhost");

    // Before: the CA is in no store, so the certificate is refused.
    match lookup(&url) {
        Err(Auth2Error::ServiceFailure(d)) => assert!(d.to_lowercase().contains("certificate"), "{d}"),
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }

    let file = std::env::temp_dir().join(format!("kbase-system-trust-{}.pem", std::process::id()));
    ca.write_cert(&file).unwrap();
    // The only test in this binary, and no other thread reads the environment yet.
    std::env::set_var("SSL_CERT_FILE", &file);
    std::env::remove_var("SSL_CERT_DIR");
    let user = lookup(&url);
    std::env::remove_var("SSL_CERT_FILE");
    let _ = std::fs::remove_file(&file);
    assert_eq!(user.expect("trusted through SSL_CERT_FILE"), "alice");
    assert_eq!(fake.requests_for(TOKEN), 1);
}
