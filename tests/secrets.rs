//! A token never shows up in anything printable: messages, log lines, `Debug` of decisions,
//! denials, errors, settings or metrics — on every deny path, Auth2 failures included.

mod common;

use std::time::Duration;

use common::*;

fn assert_clean(token: &str, texts: &[String]) {
    for text in texts {
        assert!(!text.contains(token), "token leaked into: {text}");
    }
}

#[test]
fn no_token_in_any_printable_output() {
    let (owner, bob, expired) = (new_token("own"), new_token("bob"), new_token("exp"));
    let fake = fake(vec![
        TokenEntry::new(&owner, OWNER),
        TokenEntry::new(&bob, "bob"),
        TokenEntry::new(&expired, OWNER).expired_ago(Duration::from_secs(5)),
    ]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.requiredRoles", "R")]);
    let unknown = new_token("unknown");
    let mut outputs = Vec::new();
    let mut record = |token: &str, o: Outcome| {
        let mut texts = vec![format!("{o:?}")];
        if let Err(denial) = &o {
            texts.extend([denial.message.clone(), denial.detail.clone(), format!("{denial:?}")]);
            texts.extend(denial.log_lines());
        }
        outputs.push((token.to_owned(), texts));
    };
    for t in [&owner, &bob, &expired, &unknown] {
        record(t, call(&auth, t));
        record(t, call_kbase(&auth, t));
        record(t, auth.authorize(&[&bearer(t)], &["different"], None));
        record(t, auth.authorize(&[&bearer(t), &bearer("other")], &[], None));
        record(t, auth.authorize(&[&format!("Token {t}")], &[], None));
    }
    for fault in [Fault::Status503, Fault::Html502, Fault::Malformed, Fault::NoUser, Fault::Refuse] {
        fake.set_fault_blocking(fault).unwrap();
        let t = new_token("fault");
        record(&t, call(&auth, &t));
    }
    fake.set_fault_blocking(Fault::None).unwrap();
    let metrics = format!("{:?}", auth.metrics());
    let settings = format!("{:?} {} {:?}", auth.settings(), auth.describe(), auth.warnings());
    for (token, texts) in &outputs {
        assert_clean(token, texts);
        assert_clean(token, &[metrics.clone(), settings.clone()]);
    }
    // Denials carry a fingerprint instead.
    let d = denied(call(&auth, &bob));
    assert!(d.log_line().contains("token=sha256:"), "{}", d.log_line());
}

#[test]
fn config_errors_do_not_echo_unrelated_values() {
    // A URL with credentials in it is refused without printing them.
    let map = std::collections::HashMap::from([
        ("USER".to_owned(), "a".to_owned()),
        ("spark.kbase.auth.url".to_owned(), "https://user:s3cretpw@auth.example/".to_owned()),
    ]);
    let msg = Authenticator::from_map(&map).err().unwrap().to_string();
    assert!(msg.starts_with("spark.kbase.auth.url"), "{msg}");
    assert!(!msg.contains("s3cretpw"), "{msg}");
}
