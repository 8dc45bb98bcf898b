//! What the plugin says when it starts: one line with its version and every effective setting,
//! and a warning (each once, each naming what fixes it) for configurations that work but are
//! risky. None of them stops the server: the configuration is valid, only unwise.

use std::net::IpAddr;

use crate::settings::{Settings, ENV_USER, KEY_INTERCEPTORS, KEY_OWNER};

/// The class Spark instantiates; its position in [`KEY_INTERCEPTORS`] matters.
pub const INTERCEPTOR_CLASS: &str = "us.kbase.spark.KBaseAuthServerInterceptor";

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `KBase auth 0.1.0: url=… owner=… …`
pub fn describe(s: &Settings) -> String {
    format!("KBase auth {VERSION}: {s:?}")
}

pub fn warnings(s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    // gRPC calls the interceptor added last first, and Spark adds them in list order.
    let interceptors = &s.context.interceptors;
    if let Some(ours) = interceptors.iter().rposition(|c| c == INTERCEPTOR_CLASS) {
        let before_us: Vec<&str> =
            interceptors[ours + 1..].iter().map(String::as_str).filter(|c| *c != INTERCEPTOR_CLASS).collect();
        if !before_us.is_empty() {
            out.push(format!(
                "KBase auth: interceptor order: {} listed after {INTERCEPTOR_CLASS} in {KEY_INTERCEPTORS}, so gRPC \
                 runs {} every call before authentication; list {INTERCEPTOR_CLASS} last",
                before_us.join(", "),
                if before_us.len() == 1 { "it on" } else { "them on" },
            ));
        }
    }
    if let Some(host) = plain_http_remote_host(&s.auth_url) {
        out.push(format!(
            "KBase auth: {} is plain http:// to {host}, which is not this machine: tokens travel in clear and \
             anyone on the path could answer 'valid'; use an https:// URL in {}",
            s.auth_url, s.auth_url_source
        ));
    }
    if s.owner_source == ENV_USER {
        if let (Some(owner), Some(account)) = (&s.owner, &s.context.jvm_user) {
            if owner == account {
                out.push(format!(
                    "KBase auth: the pod owner '{owner}' comes from the environment variable {ENV_USER}, which names \
                     the account this JVM runs as: a KBase user called '{owner}' would own this server; set \
                     {KEY_OWNER} to the owner's KBase user name"
                ));
            }
        }
    }
    out
}

/// The host of an `http://` URL that does not point at this machine.
fn plain_http_remote_host(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_map(&map).unwrap()
    }

    const LOGGING: &str = "org.apache.spark.sql.connect.service.LoggingInterceptor";

    #[test]
    fn describe_names_the_version() {
        let line = describe(&settings(&[("USER", "alice")]));
        assert!(
            line.starts_with(&format!("KBase auth {VERSION}: url=https://kbase.us/services/auth/ owner=alice ")),
            "{line}"
        );
    }

    #[test]
    fn interceptor_listed_after_ours_is_named() {
        let w =
            warnings(&settings(&[("USER", "alice"), (KEY_INTERCEPTORS, &format!("{INTERCEPTOR_CLASS}, {LOGGING}"))]));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("interceptor order:") && w[0].contains(LOGGING), "{}", w[0]);
        assert!(w[0].ends_with(&format!("list {INTERCEPTOR_CLASS} last")), "{}", w[0]);
        for fine in
            [format!("{LOGGING},{INTERCEPTOR_CLASS}"), INTERCEPTOR_CLASS.to_owned(), LOGGING.to_owned(), String::new()]
        {
            assert!(warnings(&settings(&[("USER", "alice"), (KEY_INTERCEPTORS, &fine)])).is_empty(), "{fine}");
        }
    }

    #[test]
    fn plain_http_to_another_host() {
        let w = warnings(&settings(&[("USER", "alice"), ("KBASE_AUTH_URL", "http://auth.example.org/services/auth")]));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("auth.example.org") && w[0].contains("https://") && w[0].ends_with("KBASE_AUTH_URL"),
            "{}",
            w[0]
        );
        for fine in
            ["http://127.0.0.1:9999/", "http://localhost/a", "http://[::1]:8/", "https://kbase.us/services/auth/"]
        {
            assert!(warnings(&settings(&[("USER", "alice"), ("spark.kbase.auth.url", fine)])).is_empty(), "{fine}");
        }
    }

    #[test]
    fn owner_from_user_equal_to_the_jvm_account() {
        let w = warnings(&settings(&[("USER", "spark"), ("user.name", "spark")]));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("'spark'") && w[0].contains(KEY_OWNER), "{}", w[0]);
        assert!(warnings(&settings(&[("USER", "alice"), ("user.name", "spark")])).is_empty());
        // Set explicitly, the same name is the operator's choice.
        assert!(warnings(&settings(&[(KEY_OWNER, "spark"), ("user.name", "spark")])).is_empty());
    }
}
