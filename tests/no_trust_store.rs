//! A system without any CA certificates (no `ca-certificates` package, an empty `SSL_CERT_FILE`):
//! the plugin cannot check Auth2's certificate, so it refuses to start — with a message that
//! says so and names both fixes, not a bare "builder error" blamed on an unset setting.
//!
//! Its own test binary: it changes the process environment.

use std::collections::HashMap;

use kbase_spark_auth::Authenticator;

#[test]
fn an_empty_trust_store_is_named_as_the_problem() {
    let dir = std::env::temp_dir().join(format!("kbase-no-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    // Safety: this test binary has one test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &empty);
        std::env::set_var("SSL_CERT_DIR", &dir);
    }
    let map = HashMap::from([("USER".to_owned(), "alice".to_owned())]);
    let err = Authenticator::from_map(&map).err().map(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    let err = err.expect("no trust store: refuse to start");
    println!("{err}");
    assert!(err.contains("CA certificates") && err.contains("spark.kbase.auth.caBundle"), "{err}");
}
