//! The gateway's configuration: every setting is an environment variable and a command-line flag
//! (the flag wins), listed once in [`SPECS`] — the one source of names, flags, help text and the
//! start-up line.
//!
//! The Python proxy's variables keep their names, defaults and meanings, so the gateway starts
//! with a Deployment's environment unchanged. The gateway's own settings use the prefix
//! `GATEWAY_`; an unknown `GATEWAY_*` variable stops start-up, since a typo must not silently fall
//! back to a default. Every error names the variable (and its flag) and says what would be valid.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use kbase_spark_auth::settings::{
    parse_ca_bundle, parse_duration, parse_int, parse_list, parse_root_url, parse_users, positive, ConfigError,
};
use kbase_spark_auth::Settings;

use crate::pool::PoolConfig;
use crate::route::{Escaping, Override, RouteConfig};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const PROGRAM: &str = "kbase-spark-gateway";

/// Variables with this prefix are the gateway's own; an unknown one is refused.
pub const GATEWAY_PREFIX: &str = "GATEWAY_";

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Token validation (the core's settings, any valid user admitted).
    pub core: Settings,
    pub bind: Bind,
    pub listen_port: u16,
    pub admin_bind: Bind,
    pub admin_port: u16,
    pub route: RouteConfig,
    pub pool: PoolConfig,
    /// How long live calls may go on after SIGTERM.
    pub drain: Duration,
    pub tls: Option<TlsFiles>,
    /// Forward the caller's token headers to the pod (whose plugin checks them again).
    pub forward_token: bool,
    pub log_level: tracing::Level,
}

/// A listening address. The default, `::`, falls back to `0.0.0.0` on hosts without IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bind {
    pub ip: IpAddr,
    pub is_default: bool,
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ip.fmt(f)
    }
}

impl Bind {
    pub fn addr(self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help(String),
    Version(String),
}

/// A configuration the gateway refuses to start with; the message names the setting and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Read by BERDL's Python proxy too, with the same meaning.
    Python,
    Gateway,
    /// The validation core's settings (the plugin's `spark.kbase.auth.*` counterparts).
    Auth,
}

/// One setting: its variable, its flag, and how to show its effective value.
pub struct Spec {
    pub env: &'static str,
    /// Without the leading `--`.
    pub flag: &'static str,
    pub value: &'static str,
    pub help: &'static str,
    pub group: Group,
    /// May be given more than once (values add up).
    pub repeatable: bool,
    pub show: fn(&Config) -> String,
}

const fn spec(
    env: &'static str,
    flag: &'static str,
    value: &'static str,
    group: Group,
    help: &'static str,
    show: fn(&Config) -> String,
) -> Spec {
    Spec { env, flag, value, help, group, repeatable: false, show }
}

pub const KBASE_AUTH_URL: &str = "KBASE_AUTH_URL";
pub const PROXY_LISTEN_PORT: &str = "PROXY_LISTEN_PORT";
pub const BACKEND_PORT: &str = "BACKEND_PORT";
pub const BACKEND_NAMESPACE: &str = "BACKEND_NAMESPACE";
pub const SERVICE_TEMPLATE: &str = "SERVICE_TEMPLATE";
pub const TOKEN_CACHE_TTL: &str = "TOKEN_CACHE_TTL";
pub const TOKEN_CACHE_MAX_SIZE: &str = "TOKEN_CACHE_MAX_SIZE";
pub const REQUIRE_MFA: &str = "REQUIRE_MFA";
pub const MFA_EXEMPT_USERS: &str = "MFA_EXEMPT_USERS";
pub const MAX_CHANNELS_PER_BACKEND: &str = "MAX_CHANNELS_PER_BACKEND";
pub const BACKEND_CONNECT_TIMEOUT: &str = "BACKEND_CONNECT_TIMEOUT";

pub const GATEWAY_BIND: &str = "GATEWAY_BIND";
pub const GATEWAY_ADMIN_PORT: &str = "GATEWAY_ADMIN_PORT";
pub const GATEWAY_ADMIN_BIND: &str = "GATEWAY_ADMIN_BIND";
pub const GATEWAY_DRAIN_SECONDS: &str = "GATEWAY_DRAIN_SECONDS";
pub const GATEWAY_TLS_CERT: &str = "GATEWAY_TLS_CERT";
pub const GATEWAY_TLS_KEY: &str = "GATEWAY_TLS_KEY";
pub const GATEWAY_USERNAME_ESCAPING: &str = "GATEWAY_USERNAME_ESCAPING";
pub const GATEWAY_FORWARD_TOKEN: &str = "GATEWAY_FORWARD_TOKEN";
pub const GATEWAY_RESOLVE: &str = "GATEWAY_RESOLVE";
pub const GATEWAY_POD_IDLE_TIMEOUT: &str = "GATEWAY_POD_IDLE_TIMEOUT";
pub const GATEWAY_MAX_PODS: &str = "GATEWAY_MAX_PODS";
pub const GATEWAY_POD_RETRY_BACKOFF: &str = "GATEWAY_POD_RETRY_BACKOFF";
pub const GATEWAY_LOG_LEVEL: &str = "GATEWAY_LOG_LEVEL";

pub const GATEWAY_AUTH_CONNECT_TIMEOUT: &str = "GATEWAY_AUTH_CONNECT_TIMEOUT";
pub const GATEWAY_AUTH_REQUEST_TIMEOUT: &str = "GATEWAY_AUTH_REQUEST_TIMEOUT";
pub const GATEWAY_AUTH_CA_BUNDLE: &str = "GATEWAY_AUTH_CA_BUNDLE";
pub const GATEWAY_AUTH_MAX_CONCURRENT: &str = "GATEWAY_AUTH_MAX_CONCURRENT";
pub const GATEWAY_REQUIRED_ROLES: &str = "GATEWAY_REQUIRED_ROLES";
pub const GATEWAY_CACHE_INVALID_TTL: &str = "GATEWAY_CACHE_INVALID_TTL";
pub const GATEWAY_CACHE_REFRESH_AHEAD: &str = "GATEWAY_CACHE_REFRESH_AHEAD";
pub const GATEWAY_CACHE_STALE_IF_ERROR: &str = "GATEWAY_CACHE_STALE_IF_ERROR";
pub const GATEWAY_NEW_TOKENS_PER_SECOND: &str = "GATEWAY_NEW_TOKENS_PER_SECOND";
pub const GATEWAY_NEW_TOKENS_BURST: &str = "GATEWAY_NEW_TOKENS_BURST";
pub const GATEWAY_FAIL_FAST_THRESHOLD: &str = "GATEWAY_FAIL_FAST_THRESHOLD";
pub const GATEWAY_FAIL_FAST_COOLDOWN: &str = "GATEWAY_FAIL_FAST_COOLDOWN";

/// Every setting, in the order `--help` and the start-up line list them.
pub static SPECS: &[Spec] = &[
    spec(KBASE_AUTH_URL, "auth-url", "URL", Group::Python, "KBase Auth2 root", |c| c.core.auth_url.clone()),
    spec(PROXY_LISTEN_PORT, "listen-port", "PORT", Group::Python, "gRPC port (0: any free port)", |c| {
        c.listen_port.to_string()
    }),
    spec(BACKEND_PORT, "backend-port", "PORT", Group::Python, "the pods' Spark Connect port", |c| c.route.port.to_string()),
    spec(BACKEND_NAMESPACE, "backend-namespace", "NAME", Group::Python, "{namespace} in SERVICE_TEMPLATE", |c| {
        c.route.namespace.clone()
    }),
    spec(
        SERVICE_TEMPLATE,
        "service-template",
        "TEMPLATE",
        Group::Python,
        "a user's pod host; {username} is the user name as a DNS label (GATEWAY_USERNAME_ESCAPING)",
        |c| c.route.template.clone(),
    ),
    spec(
        TOKEN_CACHE_TTL,
        "token-cache-ttl",
        "SECONDS",
        Group::Python,
        "longest time a validation is trusted (Auth2's cachefor and the token's expiry still apply)",
        |c| c.core.cache_max_ttl.as_secs().to_string(),
    ),
    spec(TOKEN_CACHE_MAX_SIZE, "token-cache-max-size", "N", Group::Python, "tokens cached", |c| {
        c.core.cache_max_entries.to_string()
    }),
    spec(REQUIRE_MFA, "require-mfa", "BOOL", Group::Python, "admit only tokens created with MFA (mfa == Used)", |c| {
        c.core.require_mfa.to_string()
    }),
    spec(MFA_EXEMPT_USERS, "mfa-exempt-users", "USERS", Group::Python, "comma-separated users exempt from REQUIRE_MFA", |c| {
        list(&c.core.mfa_exempt_users)
    }),
    spec(
        MAX_CHANNELS_PER_BACKEND,
        "max-channels-per-backend",
        "N",
        Group::Python,
        "HTTP/2 connections per pod (another opens only when the others are full)",
        |c| c.pool.max_per_pod.to_string(),
    ),
    spec(
        BACKEND_CONNECT_TIMEOUT,
        "backend-connect-timeout",
        "SECONDS",
        Group::Python,
        "bound on resolving and connecting to a pod (decimals allowed)",
        |c| format!("{:?}", c.pool.connect_timeout.as_secs_f64()),
    ),
    spec(GATEWAY_BIND, "bind", "IP", Group::Gateway, "address of the gRPC port (:: falls back to 0.0.0.0 without IPv6)", |c| {
        c.bind.to_string()
    }),
    spec(GATEWAY_ADMIN_PORT, "admin-port", "PORT", Group::Gateway, "HTTP port of /healthz, /readyz, /metrics (0: any)", |c| {
        c.admin_port.to_string()
    }),
    spec(GATEWAY_ADMIN_BIND, "admin-bind", "IP", Group::Gateway, "address of the admin port (unset: the same as GATEWAY_BIND)", |c| {
        c.admin_bind.to_string()
    }),
    spec(
        GATEWAY_DRAIN_SECONDS,
        "drain-seconds",
        "SECONDS",
        Group::Gateway,
        "after SIGTERM, how long live calls may finish before the gateway exits",
        |c| c.drain.as_secs().to_string(),
    ),
    spec(GATEWAY_TLS_CERT, "tls-cert", "FILE", Group::Gateway, "PEM certificate chain: serve TLS (h2) on the gRPC port", |c| {
        c.tls.as_ref().map_or("-".into(), |t| t.cert.display().to_string())
    }),
    spec(GATEWAY_TLS_KEY, "tls-key", "FILE", Group::Gateway, "PEM private key of GATEWAY_TLS_CERT", |c| {
        c.tls.as_ref().map_or("-".into(), |t| t.key.display().to_string())
    }),
    spec(
        GATEWAY_USERNAME_ESCAPING,
        "username-escaping",
        "kubespawner|raw",
        Group::Gateway,
        "user name to DNS label: kubespawner (a-z0-9 kept, other bytes -XX: jane_doe -> jane-5fdoe) or raw",
        |c| c.route.escaping.name().to_owned(),
    ),
    spec(
        GATEWAY_FORWARD_TOKEN,
        "forward-token",
        "BOOL",
        Group::Gateway,
        "forward the token headers to the pod, whose plugin checks them again",
        |c| c.forward_token.to_string(),
    ),
    Spec {
        repeatable: true,
        ..spec(
            GATEWAY_RESOLVE,
            "resolve",
            "HOST:PORT=ADDR:PORT",
            Group::Gateway,
            "send a pod's host:port to addr:port instead of resolving it (curl-style; flag repeatable, variable comma-separated)",
            |c| if c.route.overrides.is_empty() { "-".into() } else { list(&c.route.overrides) },
        )
    },
    spec(
        GATEWAY_POD_IDLE_TIMEOUT,
        "pod-idle-timeout",
        "DURATION",
        Group::Gateway,
        "a pod connection without a live call for this long is closed",
        |c| show_duration(c.pool.idle_timeout),
    ),
    spec(
        GATEWAY_MAX_PODS,
        "max-pods",
        "N",
        Group::Gateway,
        "pods kept connected; beyond it the least recently used idle pod's connections close",
        |c| c.pool.max_pods.to_string(),
    ),
    spec(
        GATEWAY_POD_RETRY_BACKOFF,
        "pod-retry-backoff",
        "DURATION",
        Group::Gateway,
        "after a failed dial, calls to that pod fail at once for this long, then one call dials again",
        |c| show_duration(c.pool.retry_backoff),
    ),
    spec(GATEWAY_LOG_LEVEL, "log-level", "LEVEL", Group::Gateway, "error, warn, info (one line per call), debug or trace", |c| {
        c.log_level.as_str().to_ascii_lowercase()
    }),
    spec(GATEWAY_AUTH_CONNECT_TIMEOUT, "auth-connect-timeout", "DURATION", Group::Auth, "Auth2 connect timeout", |c| {
        show_duration(c.core.connect_timeout)
    }),
    spec(GATEWAY_AUTH_REQUEST_TIMEOUT, "auth-request-timeout", "DURATION", Group::Auth, "Auth2 request timeout", |c| {
        show_duration(c.core.request_timeout)
    }),
    spec(GATEWAY_AUTH_CA_BUNDLE, "auth-ca-bundle", "FILE", Group::Auth, "extra PEM CA certificates for Auth2", |c| {
        c.core.ca_bundle.as_ref().map_or("-".into(), |p| p.display().to_string())
    }),
    spec(GATEWAY_AUTH_MAX_CONCURRENT, "auth-max-concurrent", "N", Group::Auth, "Auth2 requests in flight at most", |c| {
        c.core.max_concurrent_requests.to_string()
    }),
    spec(
        GATEWAY_REQUIRED_ROLES,
        "required-roles",
        "ROLES",
        Group::Auth,
        "comma-separated KBase custom roles a user must have",
        |c| list(&c.core.required_roles),
    ),
    spec(
        GATEWAY_CACHE_INVALID_TTL,
        "cache-invalid-ttl",
        "DURATION",
        Group::Auth,
        "how long an invalid-token answer is cached",
        |c| show_duration(c.core.cache_invalid_ttl),
    ),
    spec(
        GATEWAY_CACHE_REFRESH_AHEAD,
        "cache-refresh-ahead",
        "DURATION",
        Group::Auth,
        "re-validate a used entry in the background this long before its end (0s: off)",
        |c| show_duration(c.core.refresh_ahead),
    ),
    spec(
        GATEWAY_CACHE_STALE_IF_ERROR,
        "cache-stale-if-error",
        "DURATION",
        Group::Auth,
        "while Auth2 fails, a valid verdict may answer this long past its end (0s: off)",
        |c| show_duration(c.core.stale_if_error),
    ),
    spec(
        GATEWAY_NEW_TOKENS_PER_SECOND,
        "new-tokens-per-second",
        "N",
        Group::Auth,
        "lookups of uncached tokens per second (more: UNAVAILABLE, Auth2 not asked)",
        |c| c.core.new_tokens_per_second.to_string(),
    ),
    spec(GATEWAY_NEW_TOKENS_BURST, "new-tokens-burst", "N", Group::Auth, "burst of the new-token budget", |c| {
        c.core.new_tokens_burst.to_string()
    }),
    spec(
        GATEWAY_FAIL_FAST_THRESHOLD,
        "fail-fast-threshold",
        "N",
        Group::Auth,
        "consecutive Auth2 failures before failing fast (0: never)",
        |c| c.core.fail_fast_threshold.to_string(),
    ),
    spec(
        GATEWAY_FAIL_FAST_COOLDOWN,
        "fail-fast-cooldown",
        "DURATION",
        Group::Auth,
        "how long to fail fast before trying Auth2 again",
        |c| show_duration(c.core.fail_fast_cooldown),
    ),
];

/// Reads the command line (without the program name) and the environment.
pub fn parse(args: impl IntoIterator<Item = String>, env: &HashMap<String, String>) -> Result<Command, SettingsError> {
    let mut flags: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help(help())),
            "-V" | "--version" => return Ok(Command::Version(format!("{PROGRAM} {VERSION}"))),
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(SettingsError(format!("unexpected argument '{arg}': settings are --FLAG VALUE; see --help")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(s) = SPECS.iter().find(|s| s.flag == name) else {
            let hint = suggestion(name, SPECS.iter().map(|s| s.flag)).map(|f| format!(" (did you mean --{f}?)"));
            return Err(SettingsError(format!("unknown option --{name}{}; see --help", hint.unwrap_or_default())));
        };
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(SettingsError(format!("--{name} needs a value ({})", s.value))),
        };
        let values = flags.entry(s.env).or_default();
        if !values.is_empty() && !s.repeatable {
            return Err(SettingsError(format!("--{name} given twice; give it once")));
        }
        values.push(value);
    }
    refuse_unknown_variables(env)?;
    let src = Sources { flags, env };
    Ok(Command::Run(Box::new(src.config()?)))
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT=tcp://…` and the like for every
/// Service of the namespace, so a Service named `gateway…` puts `GATEWAY_*` variables into our
/// environment that are not settings; those are not typos.
fn is_service_link(name: &str, value: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return true;
    }
    if name.ends_with("_PORT") && ["tcp://", "udp://", "sctp://"].iter().any(|s| value.starts_with(s)) {
        return true;
    }
    // <SERVICE>_PORT_<port>_<PROTO>, optionally followed by _PROTO, _PORT or _ADDR.
    let words: Vec<&str> = name.split('_').collect();
    words.windows(3).enumerate().any(|(i, w)| {
        w[0] == "PORT"
            && w[1].parse::<u16>().is_ok()
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
            && match &words[i + 3..] {
                [] => true,
                [last] => matches!(*last, "PROTO" | "PORT" | "ADDR"),
                _ => false,
            }
    })
}

fn refuse_unknown_variables(env: &HashMap<String, String>) -> Result<(), SettingsError> {
    let mut unknown: Vec<&String> = env
        .iter()
        .filter(|(k, v)| k.starts_with(GATEWAY_PREFIX) && !SPECS.iter().any(|s| s.env == *k) && !is_service_link(k, v))
        .map(|(k, _)| k)
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(name) => {
            let gateway = SPECS.iter().filter(|s| s.env.starts_with(GATEWAY_PREFIX)).map(|s| s.env);
            let hint = suggestion(name, gateway).map(|s| format!(" (did you mean {s}?)")).unwrap_or_default();
            Err(SettingsError(format!(
                "unknown setting {name} in the environment{hint}: no gateway setting has that name, and a typo \
                 must not fall back to a default; rename or remove it ({PROGRAM} --help lists every setting)"
            )))
        }
    }
}

/// The known name closest to `name`, if it is close enough to be a typo of it.
fn suggestion<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known.map(|k| (edit_distance(name, k), k)).filter(|(d, _)| *d <= 3).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Where each value comes from: a flag wins over its variable; blank counts as unset.
struct Sources<'a> {
    flags: HashMap<&'static str, Vec<String>>,
    env: &'a HashMap<String, String>,
}

impl Sources<'_> {
    fn get(&self, env: &str) -> Option<&str> {
        let raw = match self.flags.get(env) {
            Some(v) => v.last().map(String::as_str),
            None => self.env.get(env).map(String::as_str),
        };
        raw.map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every value of a list setting: each flag's, or the variable's, comma-separated.
    fn list(&self, env: &str) -> Vec<String> {
        let raws: Vec<&str> = match self.flags.get(env) {
            Some(v) => v.iter().map(String::as_str).collect(),
            None => self.env.get(env).map(String::as_str).into_iter().collect(),
        };
        raws.iter().flat_map(|r| r.split(',')).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect()
    }

    fn config(&self) -> Result<Config, SettingsError> {
        let d = Settings::any_valid_user();
        let int = |env, default: u64, min| parse_int(env, self.get(env), default, min).map_err(core_error);
        let duration = |env, default| parse_duration(env, self.get(env), default).map_err(core_error);
        let positive_duration = |env, default| positive(env, duration(env, default)?).map_err(core_error);

        let core = Settings {
            auth_url: parse_root_url(KBASE_AUTH_URL, self.get(KBASE_AUTH_URL).unwrap_or(&d.auth_url))
                .map_err(core_error)?,
            auth_url_source: KBASE_AUTH_URL,
            cache_max_ttl: Duration::from_secs(int(TOKEN_CACHE_TTL, 300, 0)?),
            cache_max_entries: int(TOKEN_CACHE_MAX_SIZE, 1000, 1)?,
            require_mfa: parse_bool(REQUIRE_MFA, self.get(REQUIRE_MFA), true)?,
            mfa_exempt_users: parse_users(MFA_EXEMPT_USERS, self.get(MFA_EXEMPT_USERS)).map_err(core_error)?,
            connect_timeout: positive_duration(GATEWAY_AUTH_CONNECT_TIMEOUT, d.connect_timeout)?,
            request_timeout: positive_duration(GATEWAY_AUTH_REQUEST_TIMEOUT, d.request_timeout)?,
            ca_bundle: parse_ca_bundle(GATEWAY_AUTH_CA_BUNDLE, self.get(GATEWAY_AUTH_CA_BUNDLE)).map_err(core_error)?,
            max_concurrent_requests: int(GATEWAY_AUTH_MAX_CONCURRENT, d.max_concurrent_requests.into(), 1)? as u32,
            required_roles: parse_list(self.get(GATEWAY_REQUIRED_ROLES)),
            cache_invalid_ttl: duration(GATEWAY_CACHE_INVALID_TTL, d.cache_invalid_ttl)?,
            refresh_ahead: duration(GATEWAY_CACHE_REFRESH_AHEAD, d.refresh_ahead)?,
            stale_if_error: duration(GATEWAY_CACHE_STALE_IF_ERROR, d.stale_if_error)?,
            new_tokens_per_second: int(GATEWAY_NEW_TOKENS_PER_SECOND, d.new_tokens_per_second.into(), 1)? as u32,
            new_tokens_burst: int(GATEWAY_NEW_TOKENS_BURST, d.new_tokens_burst.into(), 1)? as u32,
            fail_fast_threshold: int(GATEWAY_FAIL_FAST_THRESHOLD, d.fail_fast_threshold.into(), 0)? as u32,
            fail_fast_cooldown: duration(GATEWAY_FAIL_FAST_COOLDOWN, d.fail_fast_cooldown)?,
            ..d
        };

        let bind = self.bind(GATEWAY_BIND, Bind { ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED), is_default: true })?;
        let route = RouteConfig {
            template: self
                .get(SERVICE_TEMPLATE)
                .unwrap_or("jupyter-{username}.{namespace}.svc.cluster.local")
                .to_owned(),
            namespace: self.get(BACKEND_NAMESPACE).unwrap_or("jupyterhub-prod").to_owned(),
            port: self.port(BACKEND_PORT, 15002, 1)?,
            escaping: match self.get(GATEWAY_USERNAME_ESCAPING) {
                None => Escaping::KubeSpawner,
                Some(v) => Escaping::parse(v)
                    .ok_or_else(|| fail(GATEWAY_USERNAME_ESCAPING, format!("'{v}' is neither kubespawner nor raw")))?,
            },
            overrides: self
                .list(GATEWAY_RESOLVE)
                .iter()
                .map(|o| o.parse::<Override>().map_err(|e| fail(GATEWAY_RESOLVE, e)))
                .collect::<Result<_, _>>()?,
        };
        route.check().map_err(|(env, problem)| fail(env, problem))?;

        let pool = PoolConfig {
            max_per_pod: int(MAX_CHANNELS_PER_BACKEND, 5, 1)? as usize,
            connect_timeout: self.seconds(BACKEND_CONNECT_TIMEOUT, 5.0)?,
            idle_timeout: positive_duration(GATEWAY_POD_IDLE_TIMEOUT, Duration::from_secs(300))?,
            max_pods: int(GATEWAY_MAX_PODS, 1000, 1)? as usize,
            retry_backoff: positive_duration(GATEWAY_POD_RETRY_BACKOFF, Duration::from_secs(2))?,
            streams_per_connection: crate::pool::STREAMS_PER_CONNECTION,
        };

        let tls = match (self.get(GATEWAY_TLS_CERT), self.get(GATEWAY_TLS_KEY)) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: readable(GATEWAY_TLS_CERT, cert)?, key: readable(GATEWAY_TLS_KEY, key)? })
            }
            (Some(_), None) => return Err(fail(GATEWAY_TLS_KEY, "GATEWAY_TLS_CERT is set: set the key file too")),
            (None, Some(_)) => {
                return Err(fail(GATEWAY_TLS_CERT, "GATEWAY_TLS_KEY is set: set the certificate file too"))
            }
        };

        Ok(Config {
            core,
            bind,
            listen_port: self.port(PROXY_LISTEN_PORT, 15002, 0)?,
            admin_bind: self.bind(GATEWAY_ADMIN_BIND, bind)?,
            admin_port: self.port(GATEWAY_ADMIN_PORT, 15003, 0)?,
            route,
            pool,
            drain: Duration::from_secs(int(GATEWAY_DRAIN_SECONDS, 25, 0)?),
            tls,
            forward_token: parse_bool(GATEWAY_FORWARD_TOKEN, self.get(GATEWAY_FORWARD_TOKEN), true)?,
            log_level: match self.get(GATEWAY_LOG_LEVEL) {
                None => tracing::Level::INFO,
                Some(v) => v.parse().map_err(|_| {
                    fail(GATEWAY_LOG_LEVEL, format!("'{v}' is not one of error, warn, info, debug, trace"))
                })?,
            },
        })
    }

    fn port(&self, env: &str, default: u16, min: u16) -> Result<u16, SettingsError> {
        match self.get(env) {
            None => Ok(default),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|p| *p >= min)
                .ok_or_else(|| fail(env, format!("'{v}' is not a port number ({min}-65535)"))),
        }
    }

    fn bind(&self, env: &str, default: Bind) -> Result<Bind, SettingsError> {
        match self.get(env) {
            None => Ok(default),
            Some(v) => v
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map(|ip| Bind { ip, is_default: false })
                .map_err(|_| fail(env, format!("'{v}' is not an IP address (e.g. 0.0.0.0, ::, 127.0.0.1)"))),
        }
    }

    /// Seconds as the Python proxy reads them: a number, decimals allowed.
    fn seconds(&self, env: &str, default: f64) -> Result<Duration, SettingsError> {
        let Some(v) = self.get(env) else { return Ok(Duration::from_secs_f64(default)) };
        match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(fail(env, format!("'{v}' is not a number of seconds greater than 0 and at most 3600 (e.g. 5.0)"))),
        }
    }
}

/// Booleans as the Python proxy's settings library reads them.
fn parse_bool(env: &str, raw: Option<&str>, default: bool) -> Result<bool, SettingsError> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on" | "t" | "y") => Ok(true),
        Some("false" | "0" | "no" | "off" | "f" | "n") => Ok(false),
        Some(other) => Err(fail(env, format!("'{other}' is not true or false"))),
    }
}

fn readable(env: &str, raw: &str) -> Result<PathBuf, SettingsError> {
    let path = PathBuf::from(raw);
    std::fs::File::open(&path).map_err(|e| fail(env, format!("cannot read '{raw}': {e}")))?;
    Ok(path)
}

/// The error for setting `env`: names the variable and its flag, then what is wrong.
pub fn fail(env: &str, problem: impl fmt::Display) -> SettingsError {
    let flag = SPECS.iter().find(|s| s.env == env).map(|s| format!(" (--{})", s.flag)).unwrap_or_default();
    SettingsError(format!(
        "invalid setting {env}{flag}: {problem}; fix or unset it ({PROGRAM} --help lists every setting)"
    ))
}

/// The core's parse helpers name the key they were given, which is our variable.
fn core_error(e: ConfigError) -> SettingsError {
    match e {
        ConfigError::Invalid { key, problem } => fail(&key, problem),
        other => SettingsError(other.to_string()),
    }
}

fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// As the duration settings are written: `500ms`, `2s`, `5m`, `1h`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

impl Config {
    /// The defaults: what an empty environment gives.
    pub fn defaults() -> Config {
        match parse(Vec::new(), &HashMap::new()) {
            Ok(Command::Run(c)) => *c,
            other => unreachable!("the defaults are valid: {other:?}"),
        }
    }

    /// Every effective setting as `VARIABLE=value`, for the start-up line (nothing here is secret).
    pub fn describe(&self) -> String {
        SPECS.iter().map(|s| format!("{}={}", s.env, (s.show)(self))).collect::<Vec<_>>().join(" ")
    }
}

/// The `--help` text: every setting with its variable and default.
pub fn help() -> String {
    let defaults = Config::defaults();
    let mut out = format!(
        "{PROGRAM} {VERSION}: one Spark Connect address for every KBase user. Validates each call's KBase token\n\
         and forwards the call, unchanged, to the user's own Spark Connect pod.\n\n\
         Usage: {PROGRAM} [--FLAG VALUE]...\n\n\
         Every setting is an environment variable and a flag; the flag wins. Durations take a unit\n\
         (500ms, 5s, 2m, 1h). An unknown {GATEWAY_PREFIX}* variable stops start-up.\n"
    );
    for (group, title) in [
        (Group::Python, "The Python proxy's variables (same names, defaults and meanings)"),
        (Group::Gateway, "The gateway's own"),
        (Group::Auth, "Token validation (the plugin's core)"),
    ] {
        out.push_str(&format!("\n{title}:\n"));
        for s in SPECS.iter().filter(|s| s.group == group) {
            let more = if s.repeatable { ", repeatable" } else { "" };
            out.push_str(&format!("  --{} {}  [{}{more}]\n", s.flag, s.value, s.env));
            out.push_str(&format!("      {} (default: {})\n", s.help, (s.show)(&defaults)));
        }
    }
    out.push_str(
        "\nOther options:\n  --help, -h     this text\n  --version, -V  the version\n\n\
         Admin port: GET /healthz (alive), /readyz (503 while starting or draining), /metrics (Prometheus).\n\
         SIGTERM or SIGINT: /readyz turns 503, no new connections, live calls finish within GATEWAY_DRAIN_SECONDS.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_links_are_not_settings() {
        for (k, v) in [
            ("GATEWAY_SERVICE_HOST", "10.0.0.1"),
            ("GATEWAY_SERVICE_PORT", "15002"),
            ("GATEWAY_SERVICE_PORT_GRPC", "15002"),
            ("GATEWAY_PORT", "tcp://10.0.0.1:15002"),
            ("GATEWAY_PORT_15002_TCP", "tcp://10.0.0.1:15002"),
            ("GATEWAY_PORT_15002_TCP_PROTO", "tcp"),
            ("GATEWAY_PORT_15002_TCP_PORT", "15002"),
            ("GATEWAY_PORT_15002_TCP_ADDR", "10.0.0.1"),
            ("GATEWAY_ADMIN_SERVICE_HOST", "10.0.0.2"),
        ] {
            assert!(is_service_link(k, v), "{k}");
        }
        for (k, v) in [("GATEWAY_BIDN", "::"), ("GATEWAY_ADMN_PORT", "9000"), ("GATEWAY_PORT", "15002")] {
            assert!(!is_service_link(k, v), "{k}");
        }
    }

    #[test]
    fn durations_show_as_written() {
        for (d, s) in [(0, "0s"), (500, "500ms"), (2000, "2s"), (300_000, "5m"), (3_600_000, "1h"), (1500, "1500ms")] {
            assert_eq!(show_duration(Duration::from_millis(d)), s);
            if d > 0 {
                assert_eq!(parse_duration("k", Some(s), Duration::ZERO).unwrap(), Duration::from_millis(d));
            }
        }
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(suggestion("GATEWAY_BIDN", SPECS.iter().map(|s| s.env)), Some("GATEWAY_BIND"));
        assert_eq!(suggestion("GATEWAY_SOMETHING_ELSE_ENTIRELY", SPECS.iter().map(|s| s.env)), None);
    }
}
