//! Settings, built from the flat key → value map the JVM hands over (SparkConf entries under
//! `spark.kbase.auth.*` plus the environment variables `KBASE_AUTH_URL` and `USER`).
//!
//! Spark conf wins over the environment. Every error names the key it comes from, so a bad
//! `spark-defaults.conf` line stops the server with a message that says which line to fix.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Prefix shared by every Spark conf key of the plugin.
pub const PREFIX: &str = "spark.kbase.auth.";

pub const KEY_URL: &str = "spark.kbase.auth.url";
pub const KEY_OWNER: &str = "spark.kbase.auth.owner";
pub const KEY_ALLOWED_USERS: &str = "spark.kbase.auth.allowedUsers";
pub const KEY_REQUIRE_MFA: &str = "spark.kbase.auth.requireMfa";
pub const KEY_MFA_EXEMPT: &str = "spark.kbase.auth.mfaExemptUsers";
pub const KEY_REQUIRED_ROLES: &str = "spark.kbase.auth.requiredRoles";
pub const KEY_CACHE_MAX_ENTRIES: &str = "spark.kbase.auth.cache.maxEntries";
pub const KEY_CACHE_MAX_TTL: &str = "spark.kbase.auth.cache.maxTtl";
pub const KEY_CACHE_INVALID_TTL: &str = "spark.kbase.auth.cache.invalidTtl";
pub const KEY_CONNECT_TIMEOUT: &str = "spark.kbase.auth.connectTimeout";
pub const KEY_REQUEST_TIMEOUT: &str = "spark.kbase.auth.requestTimeout";
pub const KEY_CA_BUNDLE: &str = "spark.kbase.auth.caBundle";
pub const KEY_TRUSTED_ADDRESSES: &str = "spark.kbase.auth.trustedAddresses";
pub const KEY_FAIL_FAST_THRESHOLD: &str = "spark.kbase.auth.failFast.threshold";
pub const KEY_FAIL_FAST_COOLDOWN: &str = "spark.kbase.auth.failFast.cooldown";
pub const KEY_MAX_CONCURRENT: &str = "spark.kbase.auth.maxConcurrentRequests";
pub const KEY_REFRESH_AHEAD: &str = "spark.kbase.auth.cache.refreshAhead";
pub const KEY_STALE_IF_ERROR: &str = "spark.kbase.auth.cache.staleIfError";
pub const KEY_NEW_TOKENS_PER_SECOND: &str = "spark.kbase.auth.newTokens.perSecond";
pub const KEY_NEW_TOKENS_BURST: &str = "spark.kbase.auth.newTokens.burst";
pub const KEY_USER_CONTEXT: &str = "spark.kbase.auth.userContext";

pub const ENV_URL: &str = "KBASE_AUTH_URL";
pub const ENV_USER: &str = "USER";

/// Not ours, read only for a start-up warning: Spark's list of interceptors.
pub const KEY_INTERCEPTORS: &str = "spark.connect.grpc.interceptor.classes";
/// Not ours, read only for a start-up warning: the JVM's account (`user.name`).
pub const KEY_JVM_USER: &str = "user.name";

/// Every key the plugin understands; anything else under [`PREFIX`] is a typo and stops start-up.
const KNOWN_KEYS: &[&str] = &[
    KEY_URL,
    KEY_OWNER,
    KEY_ALLOWED_USERS,
    KEY_REQUIRE_MFA,
    KEY_MFA_EXEMPT,
    KEY_REQUIRED_ROLES,
    KEY_CACHE_MAX_ENTRIES,
    KEY_CACHE_MAX_TTL,
    KEY_CACHE_INVALID_TTL,
    KEY_CONNECT_TIMEOUT,
    KEY_REQUEST_TIMEOUT,
    KEY_CA_BUNDLE,
    KEY_TRUSTED_ADDRESSES,
    KEY_FAIL_FAST_THRESHOLD,
    KEY_FAIL_FAST_COOLDOWN,
    KEY_MAX_CONCURRENT,
    KEY_REFRESH_AHEAD,
    KEY_STALE_IF_ERROR,
    KEY_NEW_TOKENS_PER_SECOND,
    KEY_NEW_TOKENS_BURST,
    KEY_USER_CONTEXT,
];

pub const DEFAULT_URL: &str = "https://kbase.us/services/auth/";

/// A configuration problem; the message always names the key (or keys) to fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error(
        "no pod owner configured: set {KEY_OWNER} (or the environment variable {ENV_USER}), \
         or list users in {KEY_ALLOWED_USERS}; refusing to start rather than allow any KBase user"
    )]
    NoOwner,
    #[error("unknown setting {key}: not one of {known}")]
    UnknownKey { key: String, known: String },
}

/// The fewest Auth2 requests in flight a configuration may allow: one slot for new tokens and
/// one held back for tokens known valid (see [`crate::admission::InFlightLimit`]).
pub const MIN_CONCURRENT_REQUESTS: u32 = 2;

pub fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), problem: problem.into() }
}

/// The effective configuration of one authenticator.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// Auth2 root, always ending in `/`.
    pub auth_url: String,
    /// Where `auth_url` came from: [`KEY_URL`], [`ENV_URL`], or [`KEY_URL`] for the default.
    pub auth_url_source: &'static str,
    pub owner: Option<String>,
    /// Where `owner` came from: [`KEY_OWNER`] or [`ENV_USER`].
    pub owner_source: &'static str,
    pub allowed_users: BTreeSet<String>,
    /// Admit every user with a valid token (the gateway); `owner` and `allowed_users` unused.
    pub any_valid_user: bool,
    pub require_mfa: bool,
    pub mfa_exempt_users: BTreeSet<String>,
    pub required_roles: BTreeSet<String>,
    pub cache_max_entries: u64,
    pub cache_max_ttl: Duration,
    pub cache_invalid_ttl: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub ca_bundle: Option<PathBuf>,
    pub trusted_addresses: BTreeSet<std::net::IpAddr>,
    /// Consecutive Auth2 transport failures before failing fast; 0 disables.
    pub fail_fast_threshold: u32,
    pub fail_fast_cooldown: Duration,
    pub max_concurrent_requests: u32,
    /// How long before its end a used valid entry is re-validated in the background (capped at
    /// half its life); zero: never.
    pub refresh_ahead: Duration,
    /// How long past its end a valid verdict may still answer while Auth2 cannot; zero: never.
    pub stale_if_error: Duration,
    pub new_tokens_per_second: u32,
    pub new_tokens_burst: u32,
    /// What Spark is told about the caller: the `user_context` of each request message.
    pub user_context: UserContextMode,
    /// What else the JVM told us, for start-up warnings only.
    pub context: StartupContext,
}

/// Facts about the process the plugin runs in, handed over with the settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupContext {
    /// Spark's `spark.connect.grpc.interceptor.classes`, in order.
    pub interceptors: Vec<String>,
    /// The JVM's `user.name`.
    pub jvm_user: Option<String>,
}

/// What the plugin does with the `user_context` that every Spark Connect request carries: the
/// client writes its `user_id` itself (pyspark: `SPARK_USER`/`USER` of the client's machine, or
/// `;user_id=` in the URL), and Spark keys sessions by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserContextMode {
    /// `user_id` and `user_name` become the verified KBase user before Spark reads them.
    Rewrite,
    /// A `user_id` that is not exactly the verified user is refused (PERMISSION_DENIED).
    Require,
    /// Passed on as the client wrote it.
    Off,
}

impl UserContextMode {
    pub const ALL: [UserContextMode; 3] = [UserContextMode::Rewrite, UserContextMode::Require, UserContextMode::Off];

    /// The setting's value, as written in `spark-defaults.conf`.
    pub fn name(self) -> &'static str {
        match self {
            UserContextMode::Rewrite => "rewrite",
            UserContextMode::Require => "require",
            UserContextMode::Off => "off",
        }
    }

    fn parse(raw: Option<&str>, default: UserContextMode) -> Result<UserContextMode, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        UserContextMode::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(raw)).ok_or_else(|| {
            invalid(KEY_USER_CONTEXT, format!("'{raw}' is not one of rewrite (the default), require or off"))
        })
    }
}

impl Settings {
    /// Builds settings from SparkConf-style keys and the two environment variables.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        for key in map.keys().filter(|k| k.starts_with(PREFIX)) {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey { key: key.clone(), known: KNOWN_KEYS.join(", ") });
            }
        }
        let get = |key: &str| map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());

        let (auth_url_source, url) = match (get(KEY_URL), get(ENV_URL)) {
            (Some(v), _) => (KEY_URL, v),
            (None, Some(v)) => (ENV_URL, v),
            (None, None) => (KEY_URL, DEFAULT_URL),
        };
        let auth_url = parse_root_url(auth_url_source, url)?;

        let (owner_source, owner) = match (get(KEY_OWNER), get(ENV_USER)) {
            (Some(v), _) => (KEY_OWNER, Some(parse_user(KEY_OWNER, v)?)),
            (None, Some(v)) => (ENV_USER, Some(parse_user(ENV_USER, v)?)),
            (None, None) => (KEY_OWNER, None),
        };
        let allowed_users = parse_users(KEY_ALLOWED_USERS, get(KEY_ALLOWED_USERS))?;
        if owner.is_none() && allowed_users.is_empty() {
            return Err(ConfigError::NoOwner);
        }

        let d = Settings::any_valid_user();
        let settings = Settings {
            auth_url,
            auth_url_source,
            owner,
            owner_source,
            allowed_users,
            any_valid_user: false,
            require_mfa: parse_bool(KEY_REQUIRE_MFA, get(KEY_REQUIRE_MFA), false)?,
            mfa_exempt_users: parse_users(KEY_MFA_EXEMPT, get(KEY_MFA_EXEMPT))?,
            required_roles: parse_list(get(KEY_REQUIRED_ROLES)),
            cache_max_entries: parse_int(KEY_CACHE_MAX_ENTRIES, get(KEY_CACHE_MAX_ENTRIES), d.cache_max_entries, 1)?,
            cache_max_ttl: parse_duration(KEY_CACHE_MAX_TTL, get(KEY_CACHE_MAX_TTL), d.cache_max_ttl)?,
            cache_invalid_ttl: parse_duration(KEY_CACHE_INVALID_TTL, get(KEY_CACHE_INVALID_TTL), d.cache_invalid_ttl)?,
            connect_timeout: positive(
                KEY_CONNECT_TIMEOUT,
                parse_duration(KEY_CONNECT_TIMEOUT, get(KEY_CONNECT_TIMEOUT), d.connect_timeout)?,
            )?,
            request_timeout: positive(
                KEY_REQUEST_TIMEOUT,
                parse_duration(KEY_REQUEST_TIMEOUT, get(KEY_REQUEST_TIMEOUT), d.request_timeout)?,
            )?,
            ca_bundle: parse_ca_bundle(KEY_CA_BUNDLE, get(KEY_CA_BUNDLE))?,
            trusted_addresses: parse_addresses(get(KEY_TRUSTED_ADDRESSES))?,
            fail_fast_threshold: parse_int(
                KEY_FAIL_FAST_THRESHOLD,
                get(KEY_FAIL_FAST_THRESHOLD),
                d.fail_fast_threshold.into(),
                0,
            )? as u32,
            fail_fast_cooldown: parse_duration(
                KEY_FAIL_FAST_COOLDOWN,
                get(KEY_FAIL_FAST_COOLDOWN),
                d.fail_fast_cooldown,
            )?,
            max_concurrent_requests: parse_max_concurrent(
                KEY_MAX_CONCURRENT,
                get(KEY_MAX_CONCURRENT),
                d.max_concurrent_requests,
            )?,
            refresh_ahead: parse_duration(KEY_REFRESH_AHEAD, get(KEY_REFRESH_AHEAD), d.refresh_ahead)?,
            stale_if_error: parse_duration(KEY_STALE_IF_ERROR, get(KEY_STALE_IF_ERROR), d.stale_if_error)?,
            new_tokens_per_second: parse_int(
                KEY_NEW_TOKENS_PER_SECOND,
                get(KEY_NEW_TOKENS_PER_SECOND),
                d.new_tokens_per_second.into(),
                1,
            )? as u32,
            new_tokens_burst: parse_int(KEY_NEW_TOKENS_BURST, get(KEY_NEW_TOKENS_BURST), d.new_tokens_burst.into(), 1)?
                as u32,
            user_context: UserContextMode::parse(get(KEY_USER_CONTEXT), d.user_context)?,
            context: StartupContext {
                interceptors: split_list(get(KEY_INTERCEPTORS)),
                jvm_user: get(KEY_JVM_USER).map(str::to_owned),
            },
        };
        Ok(settings)
    }

    /// The defaults of every setting, admitting any user with a valid token: the gateway's
    /// policy (it routes each user to their own pod, whose plugin checks the owner). The
    /// plugin's [`from_map`](Self::from_map) takes its defaults from here and always names an
    /// owner or allowed users instead.
    pub fn any_valid_user() -> Settings {
        Settings {
            auth_url: DEFAULT_URL.to_owned(),
            auth_url_source: KEY_URL,
            owner: None,
            owner_source: KEY_OWNER,
            allowed_users: BTreeSet::new(),
            any_valid_user: true,
            require_mfa: false,
            mfa_exempt_users: BTreeSet::new(),
            required_roles: BTreeSet::new(),
            cache_max_entries: 10_000,
            cache_max_ttl: Duration::from_secs(300),
            cache_invalid_ttl: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            ca_bundle: None,
            trusted_addresses: BTreeSet::new(),
            fail_fast_threshold: 5,
            fail_fast_cooldown: Duration::from_secs(2),
            max_concurrent_requests: 32,
            refresh_ahead: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
            new_tokens_per_second: 10,
            new_tokens_burst: 20,
            user_context: UserContextMode::Rewrite,
            context: StartupContext::default(),
        }
    }

    /// The least time an ended valid entry is remembered (it is kept until its token expires,
    /// see [`crate::cache::valid_retention`]): long enough for stale-if-error, and at least a
    /// cache window.
    pub fn retain_valid(&self) -> Duration {
        self.stale_if_error.max(self.cache_max_ttl)
    }
}

/// Every effective setting on one line (`url=… owner=… …`); nothing in them is secret.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
            let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        }
        let who = if self.any_valid_user {
            "users=any-valid".to_owned()
        } else {
            format!("owner={} allowedUsers={}", self.owner.as_deref().unwrap_or("-"), list(&self.allowed_users))
        };
        write!(
            f,
            "url={} {who} requireMfa={} mfaExemptUsers={} requiredRoles={} \
             cache.maxEntries={} cache.maxTtl={:?} cache.invalidTtl={:?} cache.refreshAhead={:?} \
             cache.staleIfError={:?} connectTimeout={:?} requestTimeout={:?} caBundle={} trustedAddresses={} \
             failFast.threshold={} failFast.cooldown={:?} maxConcurrentRequests={} newTokens.perSecond={} \
             newTokens.burst={} userContext={}",
            self.auth_url,
            self.require_mfa,
            list(&self.mfa_exempt_users),
            list(&self.required_roles),
            self.cache_max_entries,
            self.cache_max_ttl,
            self.cache_invalid_ttl,
            self.refresh_ahead,
            self.stale_if_error,
            self.connect_timeout,
            self.request_timeout,
            self.ca_bundle.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
            list(&self.trusted_addresses),
            self.fail_fast_threshold,
            self.fail_fast_cooldown,
            self.max_concurrent_requests,
            self.new_tokens_per_second,
            self.new_tokens_burst,
            self.user_context.name(),
        )
    }
}

/// Accepts `http(s)://host[:port][/path]` and returns it with exactly one trailing `/`, so
/// `{root}api/V2/token` works whether or not the user wrote the slash.
pub fn parse_root_url(key: &str, raw: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| invalid(key, format!("'{raw}' is not a valid URL ({e}); expected e.g. {DEFAULT_URL}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid(key, format!("'{raw}' must use http or https")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("'{raw}' has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, "must not contain credentials, a query or a fragment"));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

pub fn parse_user(key: &str, raw: &str) -> Result<String, ConfigError> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',') {
        return Err(invalid(key, format!("'{raw}' is not a KBase user name")));
    }
    Ok(raw.to_owned())
}

/// A comma-separated list, in order, blanks dropped.
pub fn split_list(raw: Option<&str>) -> Vec<String> {
    raw.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

pub fn parse_list(raw: Option<&str>) -> BTreeSet<String> {
    split_list(raw).into_iter().collect()
}

pub fn parse_users(key: &str, raw: Option<&str>) -> Result<BTreeSet<String>, ConfigError> {
    parse_list(raw).into_iter().map(|u| parse_user(key, &u)).collect()
}

pub fn parse_bool(key: &str, raw: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(invalid(key, format!("'{other}' is not true or false"))),
    }
}

pub fn parse_int(key: &str, raw: Option<&str>, default: u64, min: u64) -> Result<u64, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let n: u64 = raw.parse().map_err(|_| invalid(key, format!("'{raw}' is not a whole number ≥ {min}")))?;
    if n < min || n > u32::MAX as u64 {
        return Err(invalid(key, format!("{n} is out of range ({min}..={})", u32::MAX)));
    }
    Ok(n)
}

/// `maxConcurrentRequests`: at least [`MIN_CONCURRENT_REQUESTS`], because with one slot none is
/// left to hold back, and one new token's slow lookup would lock the owner's re-validation out.
pub fn parse_max_concurrent(key: &str, raw: Option<&str>, default: u32) -> Result<u32, ConfigError> {
    let n = parse_int(key, raw, default.into(), 1)? as u32;
    if n < MIN_CONCURRENT_REQUESTS {
        return Err(invalid(
            key,
            format!(
                "{n} is too few: at least {MIN_CONCURRENT_REQUESTS}, because a quarter of the slots (at least one) is \
                 held back for tokens known valid, so that the owner's re-validation always finds one"
            ),
        ));
    }
    Ok(n)
}

/// Durations need a unit (`ms`, `s`, `m`, `h`): a bare `5` is ambiguous between Spark's
/// seconds-based and milliseconds-based settings, so it is refused rather than guessed.
pub fn parse_duration(key: &str, raw: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad =
        || invalid(key, format!("'{raw}' is not a duration like 500ms, 5s, 2m or 1h (no sign, a unit is required)"));
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(bad()),
    };
    match ms {
        Some(ms) if ms <= 24 * 3_600_000 => Ok(Duration::from_millis(ms)),
        _ => Err(invalid(key, format!("'{raw}' is longer than 24h"))),
    }
}

pub fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero (an unbounded wait is not allowed)"));
    }
    Ok(d)
}

pub fn parse_ca_bundle(key: &str, raw: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let path = PathBuf::from(raw);
    if !path.is_file() {
        return Err(invalid(key, format!("'{raw}' is not a readable file")));
    }
    Ok(Some(path))
}

fn parse_addresses(raw: Option<&str>) -> Result<BTreeSet<std::net::IpAddr>, ConfigError> {
    parse_list(raw)
        .into_iter()
        .map(|a| {
            a.parse().map_err(|_| {
                invalid(KEY_TRUSTED_ADDRESSES, format!("'{a}' is not an IP address (no host names or ranges)"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_with_env_owner() {
        let s = Settings::from_map(&map(&[("USER", "alice")])).unwrap();
        assert_eq!(s.auth_url, DEFAULT_URL);
        assert_eq!(s.owner.as_deref(), Some("alice"));
        assert_eq!(s.cache_max_ttl, Duration::from_secs(300));
        assert_eq!(s.cache_invalid_ttl, Duration::from_secs(5));
        assert!(s.trusted_addresses.is_empty(), "the token-less bypass must be off by default");
        assert!(!s.require_mfa);
    }

    #[test]
    fn spark_conf_wins_over_env() {
        let s = Settings::from_map(&map(&[
            ("USER", "spark"),
            (KEY_OWNER, "alice"),
            ("KBASE_AUTH_URL", "https://env.example/auth"),
            (KEY_URL, "https://conf.example/services/auth"),
        ]))
        .unwrap();
        assert_eq!(s.owner.as_deref(), Some("alice"));
        assert_eq!(s.auth_url, "https://conf.example/services/auth/");
    }

    #[test]
    fn env_url_used_and_trailing_slash_normalised() {
        for raw in ["http://127.0.0.1:9999/services/auth", "http://127.0.0.1:9999/services/auth/"] {
            let s = Settings::from_map(&map(&[("USER", "a"), ("KBASE_AUTH_URL", raw)])).unwrap();
            assert_eq!(s.auth_url, "http://127.0.0.1:9999/services/auth/");
        }
        let s = Settings::from_map(&map(&[("USER", "a"), (KEY_URL, "http://127.0.0.1:9")])).unwrap();
        assert_eq!(s.auth_url, "http://127.0.0.1:9/");
    }

    #[test]
    fn no_owner_refuses_to_start() {
        let err = Settings::from_map(&map(&[])).unwrap_err();
        assert_eq!(err, ConfigError::NoOwner);
        assert!(err.to_string().contains(KEY_OWNER) && err.to_string().contains("USER"));
        // Blank values count as unset.
        assert_eq!(Settings::from_map(&map(&[("USER", "  "), (KEY_OWNER, "")])).unwrap_err(), ConfigError::NoOwner);
        // An allowed-users list alone is enough.
        let s = Settings::from_map(&map(&[(KEY_ALLOWED_USERS, "bob, carol")])).unwrap();
        assert_eq!(s.allowed_users.len(), 2);
        assert_eq!(s.owner, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (KEY_URL, "http://[bad"),
            (KEY_URL, "ftp://example.org/"),
            (KEY_URL, "not a url"),
            (KEY_URL, "https://user:pw@example.org/"),
            (KEY_CACHE_MAX_TTL, "-5s"),
            (KEY_CACHE_MAX_TTL, "5"),
            (KEY_CACHE_MAX_TTL, "5 parsecs"),
            (KEY_CACHE_INVALID_TTL, "48h"),
            (KEY_REQUEST_TIMEOUT, "0s"),
            (KEY_CONNECT_TIMEOUT, "0ms"),
            (KEY_REQUIRE_MFA, "yes"),
            (KEY_CACHE_MAX_ENTRIES, "0"),
            (KEY_CACHE_MAX_ENTRIES, "-1"),
            (KEY_TRUSTED_ADDRESSES, "localhost"),
            (KEY_CA_BUNDLE, "/nonexistent/ca.pem"),
            (KEY_OWNER, "two words"),
            (KEY_USER_CONTEXT, "on"),
            (KEY_USER_CONTEXT, "rewrite,require"),
        ];
        for (key, value) in cases {
            let err = Settings::from_map(&map(&[("USER", "alice"), (key, value)])).unwrap_err();
            assert!(err.to_string().starts_with(key), "{key}={value}: {err}");
        }
        let err = Settings::from_map(&map(&[("KBASE_AUTH_URL", "::"), ("USER", "a")])).unwrap_err();
        assert!(err.to_string().starts_with("KBASE_AUTH_URL"), "{err}");
    }

    /// One slot left none to hold back for tokens known valid: a single slow lookup of a new
    /// token kept the owner's re-validation out. Refused at start-up, saying why.
    #[test]
    fn one_concurrent_request_is_refused() {
        let err = Settings::from_map(&map(&[("USER", "alice"), (KEY_MAX_CONCURRENT, "1")])).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(KEY_MAX_CONCURRENT) && text.contains("at least 2"), "{text}");
        let two = Settings::from_map(&map(&[("USER", "alice"), (KEY_MAX_CONCURRENT, "2")])).unwrap();
        assert_eq!(crate::admission::InFlightLimit::new(two.max_concurrent_requests).reserved(), 1);
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Settings::from_map(&map(&[("USER", "a"), ("spark.kbase.auth.ower", "alice")])).unwrap_err();
        assert!(err.to_string().contains("spark.kbase.auth.ower"));
        // Keys outside our prefix are not ours to judge.
        assert!(Settings::from_map(&map(&[("USER", "a"), ("spark.other", "x")])).is_ok());
    }

    #[test]
    fn user_context_mode() {
        let mode = |v: Option<&str>| {
            let mut pairs = vec![("USER", "alice")];
            pairs.extend(v.map(|v| (KEY_USER_CONTEXT, v)));
            Settings::from_map(&map(&pairs)).map(|s| s.user_context)
        };
        assert_eq!(mode(None), Ok(UserContextMode::Rewrite), "rewrite is the default");
        assert_eq!(mode(Some("  ")), Ok(UserContextMode::Rewrite), "blank counts as unset");
        assert_eq!(mode(Some("require")), Ok(UserContextMode::Require));
        assert_eq!(mode(Some("Off")), Ok(UserContextMode::Off));
        let err = mode(Some("yes")).unwrap_err().to_string();
        assert!(err.starts_with(KEY_USER_CONTEXT) && err.contains("rewrite") && err.contains("off"), "{err}");
        let line = format!("{:?}", Settings::from_map(&map(&[("USER", "a"), (KEY_USER_CONTEXT, "require")])).unwrap());
        assert!(line.ends_with("userContext=require"), "{line}");
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration("k", Some(s), Duration::ZERO);
        assert_eq!(d("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(d("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(d("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(d("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(d("0s").unwrap(), Duration::ZERO);
        for bad in ["", "s", "1.5s", "+1s", "1d", "99999999999999999999s"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_and_policy_settings() {
        let s = Settings::from_map(&map(&[
            (KEY_OWNER, "alice"),
            (KEY_ALLOWED_USERS, " bob ,,carol"),
            (KEY_REQUIRE_MFA, "TRUE"),
            (KEY_MFA_EXEMPT, "svc"),
            (KEY_REQUIRED_ROLES, "BERDL_USER, spark"),
            (KEY_TRUSTED_ADDRESSES, "127.0.0.1, ::1"),
        ]))
        .unwrap();
        assert_eq!(s.allowed_users.iter().map(String::as_str).collect::<Vec<_>>(), ["bob", "carol"]);
        assert!(s.require_mfa);
        assert!(s.mfa_exempt_users.contains("svc"));
        assert_eq!(s.required_roles.len(), 2);
        assert_eq!(s.trusted_addresses.len(), 2);
        let line = format!("{s:?}");
        assert!(
            line.contains("owner=alice") && line.contains("requireMfa=true") && line.contains("127.0.0.1"),
            "{line}"
        );
    }
}
