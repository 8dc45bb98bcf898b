//! The gateway's settings: the Python proxy's variables with its defaults and meanings, the
//! gateway's own `GATEWAY_*` ones, flags over variables, and refusals that name what to fix.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use kbase_spark_gateway::route::Escaping;
use kbase_spark_gateway::settings::{self, Command, Config, SettingsError, SPECS};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(args: &[&str], pairs: &[(&str, &str)]) -> Result<Config, SettingsError> {
    match settings::parse(args.iter().map(|a| a.to_string()), &env(pairs))? {
        Command::Run(c) => Ok(*c),
        other => panic!("expected a configuration, got {other:?}"),
    }
}

fn refused(args: &[&str], pairs: &[(&str, &str)]) -> String {
    match parse(args, pairs) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected {args:?} {pairs:?} to be refused"),
    }
}

/// The Python proxy's defaults (BERDataLakehouse/spark_connect_proxy, config.py and auth.py).
#[test]
fn defaults_are_the_python_proxys() {
    let c = parse(&[], &[]).unwrap();
    assert_eq!(c.core.auth_url, "https://kbase.us/services/auth/");
    assert_eq!(c.listen_port, 15002);
    assert_eq!(c.route.port, 15002);
    assert_eq!(c.route.namespace, "jupyterhub-prod");
    assert_eq!(c.route.template, "jupyter-{username}.{namespace}.svc.cluster.local");
    assert_eq!(c.core.cache_max_ttl, Duration::from_secs(300));
    assert_eq!(c.core.cache_max_entries, 1000);
    assert!(c.core.require_mfa);
    assert!(c.core.mfa_exempt_users.is_empty());
    assert_eq!(c.pool.max_per_pod, 5);
    assert_eq!(c.pool.connect_timeout, Duration::from_secs(5));
    // Like the Python proxy's "[::]:PORT".
    assert_eq!(c.bind.ip, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    // The gateway admits any valid user (each pod's plugin checks its owner).
    assert!(c.core.any_valid_user);
    assert_eq!(c.route.escaping, Escaping::KubeSpawner);
    assert!(c.forward_token);
    assert_eq!(c.admin_port, 15003);
    assert!(c.tls.is_none());
}

#[test]
fn python_proxy_variables_keep_their_meaning() {
    let c = parse(
        &[],
        &[
            ("KBASE_AUTH_URL", "https://ci.kbase.us/services/auth"),
            ("PROXY_LISTEN_PORT", "16000"),
            ("BACKEND_PORT", "15010"),
            ("BACKEND_NAMESPACE", "jupyterhub-dev"),
            ("SERVICE_TEMPLATE", "spark-{username}.{namespace}"),
            ("TOKEN_CACHE_TTL", "60"),
            ("TOKEN_CACHE_MAX_SIZE", "50"),
            ("REQUIRE_MFA", "False"),
            ("MFA_EXEMPT_USERS", "svc1, svc2"),
            ("MAX_CHANNELS_PER_BACKEND", "2"),
            ("BACKEND_CONNECT_TIMEOUT", "2.5"),
        ],
    )
    .unwrap();
    assert_eq!(c.core.auth_url, "https://ci.kbase.us/services/auth/", "the trailing slash is added, as the proxy does");
    assert_eq!((c.listen_port, c.route.port), (16000, 15010));
    assert_eq!(c.core.cache_max_ttl, Duration::from_secs(60), "seconds");
    assert_eq!(c.core.cache_max_entries, 50);
    assert!(!c.core.require_mfa);
    assert_eq!(c.core.mfa_exempt_users.iter().map(String::as_str).collect::<Vec<_>>(), ["svc1", "svc2"]);
    assert_eq!(c.pool.max_per_pod, 2);
    assert_eq!(c.pool.connect_timeout, Duration::from_millis(2500), "seconds, decimals allowed");
    let router = kbase_spark_gateway::route::Router::new(&c.route).unwrap();
    assert_eq!(router.pod_for("alice").unwrap().authority.as_str(), "spark-alice.jupyterhub-dev:15010");
}

/// pydantic's spellings of a boolean, which the Python proxy accepted for REQUIRE_MFA.
#[test]
fn booleans_as_the_python_proxy_reads_them() {
    for (raw, want) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("on", true),
        ("false", false),
        ("0", false),
        ("No", false),
        ("off", false),
    ] {
        assert_eq!(parse(&[], &[("REQUIRE_MFA", raw)]).unwrap().core.require_mfa, want, "{raw}");
    }
    let e = refused(&[], &[("REQUIRE_MFA", "maybe")]);
    assert!(e.contains("REQUIRE_MFA") && e.contains("'maybe'"), "{e}");
}

#[test]
fn a_flag_wins_over_its_variable() {
    let c = parse(
        &[
            "--listen-port",
            "17000",
            "--require-mfa=false",
            "--resolve",
            "a.b:1=127.0.0.1:2",
            "--resolve",
            "c.d:3=127.0.0.1:4",
        ],
        &[("PROXY_LISTEN_PORT", "16000"), ("REQUIRE_MFA", "true"), ("GATEWAY_RESOLVE", "e.f:5=127.0.0.1:6")],
    )
    .unwrap();
    assert_eq!(c.listen_port, 17000);
    assert!(!c.core.require_mfa);
    let resolve: Vec<String> = c.route.overrides.iter().map(|o| o.to_string()).collect();
    assert_eq!(resolve, ["a.b:1=127.0.0.1:2", "c.d:3=127.0.0.1:4"], "the flags replace the variable");
    let c = parse(&[], &[("GATEWAY_RESOLVE", "e.f:5=127.0.0.1:6, G.H:7=[::1]:8")]).unwrap();
    let resolve: Vec<String> = c.route.overrides.iter().map(|o| o.to_string()).collect();
    assert_eq!(resolve, ["e.f:5=127.0.0.1:6", "g.h:7=[::1]:8"]);
}

#[test]
fn every_setting_has_a_flag_and_a_variable() {
    for s in SPECS {
        assert!(s.env.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{}", s.env);
        assert!(!s.flag.is_empty() && s.flag.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{}", s.flag);
        assert_eq!(SPECS.iter().filter(|o| o.env == s.env || o.flag == s.flag).count(), 1, "{} is unique", s.env);
    }
    // The gateway's own and the core's settings all carry the prefix.
    let python = [
        "KBASE_AUTH_URL",
        "PROXY_LISTEN_PORT",
        "BACKEND_PORT",
        "BACKEND_NAMESPACE",
        "SERVICE_TEMPLATE",
        "TOKEN_CACHE_TTL",
        "TOKEN_CACHE_MAX_SIZE",
        "REQUIRE_MFA",
        "MFA_EXEMPT_USERS",
        "MAX_CHANNELS_PER_BACKEND",
        "BACKEND_CONNECT_TIMEOUT",
    ];
    for s in SPECS.iter().filter(|s| !python.contains(&s.env)) {
        assert!(s.env.starts_with("GATEWAY_"), "{}", s.env);
    }
    for p in python {
        assert!(SPECS.iter().any(|s| s.env == p), "{p} is read");
    }
}

/// `--help` shows each setting's default; given back as values, those defaults change nothing.
#[test]
fn help_lists_every_setting_with_its_true_default() {
    let help = match settings::parse(["--help".to_owned()], &HashMap::new()).unwrap() {
        Command::Help(h) => h,
        other => panic!("{other:?}"),
    };
    let defaults = parse(&[], &[]).unwrap();
    let mut given = Vec::new();
    for s in SPECS {
        assert!(help.contains(&format!("--{} {}  [{}", s.flag, s.value, s.env)), "{} in --help", s.env);
        let shown = (s.show)(&defaults);
        assert!(help.contains(&format!("(default: {shown})")), "{}'s default {shown} in --help", s.env);
        if shown != "-" {
            given.push((s.env, shown));
        }
    }
    let pairs: Vec<(&str, &str)> = given.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(parse(&[], &pairs).unwrap().describe(), defaults.describe());
    assert!(
        matches!(settings::parse(["-V".to_owned()], &HashMap::new()).unwrap(), Command::Version(v) if v.starts_with("kbase-spark-gateway "))
    );
}

#[test]
fn an_unknown_gateway_variable_stops_start_up() {
    let e = refused(&[], &[("GATEWAY_DRAIN_SECOND", "5")]);
    assert!(e.contains("GATEWAY_DRAIN_SECOND") && e.contains("did you mean GATEWAY_DRAIN_SECONDS?"), "{e}");
    // Other programs' variables are not ours to judge; Kubernetes' service links are not typos.
    parse(
        &[],
        &[
            ("PATH", "/bin"),
            ("GATEWAY_SERVICE_HOST", "10.0.0.1"),
            ("GATEWAY_PORT", "tcp://10.0.0.1:15002"),
            ("GATEWAY_PORT_15002_TCP_ADDR", "10.0.0.1"),
        ],
    )
    .unwrap();
    let e = refused(&["--drain-second", "5"], &[]);
    assert!(e.contains("--drain-second") && e.contains("did you mean --drain-seconds?"), "{e}");
    assert!(refused(&["--listen-port"], &[]).contains("needs a value"));
    assert!(refused(&["--listen-port", "1", "--listen-port", "2"], &[]).contains("twice"));
    assert!(refused(&["stray"], &[]).contains("'stray'"));
}

#[test]
fn bad_values_name_the_variable_and_the_flag() {
    let cases: &[(&str, &str, &str)] = &[
        ("KBASE_AUTH_URL", "ftp://x/", "--auth-url"),
        ("PROXY_LISTEN_PORT", "70000", "--listen-port"),
        ("BACKEND_PORT", "0", "--backend-port"),
        ("BACKEND_NAMESPACE", "bad_namespace", "--backend-namespace"),
        ("SERVICE_TEMPLATE", "jupyter-{user}", "--service-template"),
        ("SERVICE_TEMPLATE", "jupyter {username}", "--service-template"),
        ("TOKEN_CACHE_TTL", "5m", "--token-cache-ttl"),
        ("TOKEN_CACHE_MAX_SIZE", "0", "--token-cache-max-size"),
        ("MFA_EXEMPT_USERS", "two words", "--mfa-exempt-users"),
        ("MAX_CHANNELS_PER_BACKEND", "0", "--max-channels-per-backend"),
        ("BACKEND_CONNECT_TIMEOUT", "0", "--backend-connect-timeout"),
        ("BACKEND_CONNECT_TIMEOUT", "soon", "--backend-connect-timeout"),
        ("GATEWAY_BIND", "localhost", "--bind"),
        ("GATEWAY_ADMIN_PORT", "-1", "--admin-port"),
        ("GATEWAY_DRAIN_SECONDS", "1.5", "--drain-seconds"),
        ("GATEWAY_USERNAME_ESCAPING", "safe", "--username-escaping"),
        ("GATEWAY_FORWARD_TOKEN", "perhaps", "--forward-token"),
        ("GATEWAY_RESOLVE", "jupyter-a:15002=localhost:1", "--resolve"),
        ("GATEWAY_RESOLVE", "no-port=127.0.0.1:1", "--resolve"),
        ("GATEWAY_POD_IDLE_TIMEOUT", "0s", "--pod-idle-timeout"),
        ("GATEWAY_POD_IDLE_TIMEOUT", "5", "--pod-idle-timeout"),
        ("GATEWAY_POD_RETRY_BACKOFF", "0ms", "--pod-retry-backoff"),
        ("GATEWAY_LOG_LEVEL", "loud", "--log-level"),
        ("GATEWAY_TLS_CERT", "/nonexistent/cert.pem", "--tls-cert"),
        ("GATEWAY_AUTH_REQUEST_TIMEOUT", "0s", "--auth-request-timeout"),
        ("GATEWAY_AUTH_CA_BUNDLE", "/nonexistent/ca.pem", "--auth-ca-bundle"),
        ("GATEWAY_NEW_TOKENS_PER_SECOND", "0", "--new-tokens-per-second"),
        ("GATEWAY_CACHE_REFRESH_AHEAD", "soon", "--cache-refresh-ahead"),
        // No slot would be left to hold back for tokens known valid (as the plugin refuses it).
        ("GATEWAY_AUTH_MAX_CONCURRENT", "1", "--auth-max-concurrent"),
    ];
    for (var, value, flag) in cases {
        let mut pairs = vec![(*var, *value)];
        if *var == "GATEWAY_TLS_CERT" {
            pairs.push(("GATEWAY_TLS_KEY", "/nonexistent/key.pem"));
        }
        let e = refused(&[], &pairs);
        assert!(e.starts_with(&format!("invalid setting {var} ({flag}): ")), "{var}={value}: {e}");
        assert!(e.contains("--help"), "says where to look: {e}");
        let e = refused(&[&format!("{flag}={value}")], &pairs[1..]);
        assert!(e.contains(var), "{flag}={value}: {e}");
    }
    let e = refused(&[], &[("GATEWAY_TLS_CERT", "/etc/hostname")]);
    assert!(e.contains("GATEWAY_TLS_KEY"), "a certificate needs its key: {e}");
}

#[test]
fn core_settings_come_from_the_gateway_variables() {
    let c = parse(
        &[],
        &[
            ("GATEWAY_AUTH_CONNECT_TIMEOUT", "750ms"),
            ("GATEWAY_AUTH_REQUEST_TIMEOUT", "3s"),
            ("GATEWAY_AUTH_MAX_CONCURRENT", "8"),
            ("GATEWAY_REQUIRED_ROLES", "BERDL_USER"),
            ("GATEWAY_CACHE_INVALID_TTL", "1s"),
            ("GATEWAY_CACHE_REFRESH_AHEAD", "0s"),
            ("GATEWAY_CACHE_STALE_IF_ERROR", "2m"),
            ("GATEWAY_NEW_TOKENS_PER_SECOND", "3"),
            ("GATEWAY_NEW_TOKENS_BURST", "4"),
            ("GATEWAY_FAIL_FAST_THRESHOLD", "0"),
            ("GATEWAY_FAIL_FAST_COOLDOWN", "5s"),
        ],
    )
    .unwrap();
    let s = &c.core;
    assert_eq!((s.connect_timeout, s.request_timeout), (Duration::from_millis(750), Duration::from_secs(3)));
    assert_eq!(s.max_concurrent_requests, 8);
    assert!(s.required_roles.contains("BERDL_USER"));
    assert_eq!(
        (s.cache_invalid_ttl, s.refresh_ahead, s.stale_if_error),
        (Duration::from_secs(1), Duration::ZERO, Duration::from_secs(120))
    );
    assert_eq!((s.new_tokens_per_second, s.new_tokens_burst), (3, 4));
    assert_eq!((s.fail_fast_threshold, s.fail_fast_cooldown), (0, Duration::from_secs(5)));
    // Unset, they are the core's own defaults (one source).
    let d = kbase_spark_auth::Settings::any_valid_user();
    let c = parse(&[], &[]).unwrap();
    assert_eq!(
        (c.core.request_timeout, c.core.new_tokens_burst, c.core.refresh_ahead),
        (d.request_timeout, d.new_tokens_burst, d.refresh_ahead)
    );
}

#[test]
fn the_start_up_line_shows_every_setting() {
    let c = parse(&[], &[("GATEWAY_RESOLVE", "a.b:1=127.0.0.1:2")]).unwrap();
    let line = c.describe();
    for s in SPECS {
        assert!(line.contains(&format!("{}=", s.env)), "{} in {line}", s.env);
    }
    assert!(line.contains("GATEWAY_RESOLVE=a.b:1=127.0.0.1:2"), "{line}");
}
