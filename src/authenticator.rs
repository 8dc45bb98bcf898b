//! The façade: one [`Authenticator`] per interceptor configuration, deciding each call.
//!
//! Order of checks for one call: token present and well formed → cache (hit: expiry, cached
//! verdict) → miss: fail-fast gate → one Auth2 exchange per token (single flight) → policy →
//! cache → expiry. Every path ends in a [`Decision`]; nothing here can end in "allow" by default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth2::{Auth2Client, Auth2Error, TokenInfo};
use crate::breaker::Breaker;
use crate::cache::{valid_ttl, Outcome, Verdict, VerdictCache};
use crate::decision::{format_epoch_ms, Decision, Denial, Reason};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::policy::Policy;
use crate::runtime;
use crate::settings::{ConfigError, Settings};
use crate::token::{self, Token, TokenError};

pub const MSG_MISSING: &str = "missing KBase token: connect with sc://HOST:PORT/;token=<KBase token> \
     (sent as 'authorization: Bearer', which pyspark allows without TLS only for host 'localhost') \
     or sc://HOST:PORT/;x-kbase-token=<KBase token>";
pub const MSG_INVALID: &str = "invalid or revoked KBase token: log in to KBase again and use the new token";
pub const MSG_INTERNAL: &str = "internal error in the KBase auth plugin; see the Spark server log";

pub struct Authenticator {
    settings: Settings,
    policy: Policy,
    cache: VerdictCache,
    client: Arc<Auth2Client>,
    breaker: Breaker,
    metrics: Metrics,
}

/// Why a miss produced no verdict to cache.
#[derive(Debug)]
enum MissError {
    /// Auth2 said invalid, and the invalid TTL is zero: deny, store nothing.
    InvalidUncached,
    Unavailable(String),
}

impl Authenticator {
    pub fn new(settings: Settings) -> Result<Authenticator, ConfigError> {
        let client = Arc::new(Auth2Client::new(&settings)?);
        Ok(Authenticator {
            policy: Policy::new(&settings),
            cache: VerdictCache::new(settings.cache_max_entries),
            breaker: Breaker::new(
                settings.fail_fast_threshold,
                settings.fail_fast_cooldown,
                settings.max_concurrent_requests,
            ),
            client,
            metrics: Metrics::default(),
            settings,
        })
    }

    /// Builds from SparkConf keys and environment variables (see [`Settings::from_map`]).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Authenticator, ConfigError> {
        Authenticator::new(Settings::from_map(map)?)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn describe(&self) -> String {
        self.settings.describe()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Whether [`authorize`](Self::authorize) needs the peer address (token-less bypass set up).
    pub fn wants_peer_address(&self) -> bool {
        !self.settings.trusted_addresses.is_empty()
    }

    /// Decides one call from its `authorization` and `x-kbase-token` metadata values and,
    /// if [`wants_peer_address`](Self::wants_peer_address), the caller's IP address.
    pub fn authorize(&self, authorization: Option<&str>, kbase_token: Option<&str>, peer: Option<&str>) -> Decision {
        match self.decide(authorization, kbase_token, peer, |user| Decision::Allow { user: user.cloned() }) {
            Ok(allowed) => allowed,
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// The JNI hot path: the same decision, but an allowed call clones nothing (the user name
    /// stays where it is cached), so hits cause no reference-count traffic between threads.
    pub fn authorize_status(
        &self,
        authorization: Option<&str>,
        kbase_token: Option<&str>,
        peer: Option<&str>,
    ) -> Result<(), Denial> {
        self.decide(authorization, kbase_token, peer, |_| ())
    }

    /// `allow` receives the cached user name (`None` for a trusted token-less caller).
    fn decide<R>(
        &self,
        authorization: Option<&str>,
        kbase_token: Option<&str>,
        peer: Option<&str>,
        allow: impl Fn(Option<&Arc<str>>) -> R,
    ) -> Result<R, Denial> {
        let (result, cache_hit) = match token::extract(authorization, kbase_token) {
            Ok(token) => self.decide_token(token, |user| allow(Some(user))),
            Err(TokenError::Missing) if self.is_trusted(peer) => (Ok(allow(None)), false),
            Err(e) => (Err(token_denial(e)), false),
        };
        self.metrics.decided(result.as_ref().err().map(|d| d.reason), cache_hit);
        result
    }

    fn is_trusted(&self, peer: Option<&str>) -> bool {
        peer.and_then(|p| p.parse::<IpAddr>().ok()).is_some_and(|ip| self.settings.trusted_addresses.contains(&ip))
    }

    /// Cache hit → expiry check → cached verdict; miss → one Auth2 exchange (single flight).
    /// Also says whether the verdict came from the cache.
    fn decide_token<R>(&self, token: Token<'_>, allow: impl Fn(&Arc<str>) -> R) -> (Result<R, Denial>, bool) {
        let key = token.key();
        let now_ms = epoch_ms();
        let judge = |v: &Verdict| judge(v, now_ms).map(&allow);
        let (result, hit) = match self.cache.with_hit(&key, now_ms, judge) {
            Some(result) => (result, true),
            None => {
                self.metrics.miss();
                let result = match self.cache.get_or_fetch(key, || self.fetch_verdict(token)) {
                    Ok(v) => {
                        let result = judge(&v);
                        self.cache.remember(key, v);
                        result
                    }
                    Err(e) => Err(match &*e {
                        MissError::InvalidUncached => Denial::new(Reason::Invalid, MSG_INVALID),
                        MissError::Unavailable(detail) => unavailable(detail),
                    }),
                };
                (result, false)
            }
        };
        let result = result.map_err(|mut d| {
            d.fingerprint = Some(token.fingerprint());
            d
        });
        (result, hit)
    }

    /// One Auth2 exchange (shared by all concurrent callers of the same token) turned into a
    /// cacheable verdict.
    fn fetch_verdict(&self, token: Token<'_>) -> Result<Verdict, MissError> {
        let permit = self.breaker.admit().map_err(|r| {
            self.metrics.fail_fast.inc();
            MissError::Unavailable(r.to_string())
        })?;
        self.metrics.auth2_requests.inc();
        let started = Instant::now();
        let client = Arc::clone(&self.client);
        let owned = token.expose().to_owned();
        let with_roles = self.policy.needs_roles();
        // The runtime's own timeouts end the exchange; this deadline is the backstop for our wait.
        let deadline = self.settings.request_timeout * if with_roles { 2 } else { 1 } + Duration::from_secs(1);
        let answer = runtime::run(async move { client.lookup(&owned, with_roles).await }, deadline)
            .unwrap_or_else(|e| Err(Auth2Error::Unavailable(e)));
        self.metrics.auth2_latency(started.elapsed());
        drop(permit);

        let now_ms = epoch_ms();
        match answer {
            Ok(info) => {
                self.breaker.success();
                Ok(self.verdict_for(info, now_ms))
            }
            Err(Auth2Error::Invalid) => {
                self.breaker.success();
                if self.settings.cache_invalid_ttl.is_zero() {
                    return Err(MissError::InvalidUncached);
                }
                Ok(Verdict::new(
                    i64::MAX,
                    Outcome::Deny(Arc::new(Denial::new(Reason::Invalid, MSG_INVALID))),
                    self.settings.cache_invalid_ttl,
                    now_ms,
                ))
            }
            Err(Auth2Error::Unavailable(detail)) => {
                self.metrics.auth2_failures.inc();
                self.breaker.failure();
                Err(MissError::Unavailable(detail))
            }
        }
    }

    fn verdict_for(&self, info: TokenInfo, now_ms: i64) -> Verdict {
        let id = info.identity;
        let outcome = match self.policy.check(&id) {
            Ok(()) => Outcome::Allow(Arc::from(id.user)),
            Err(denial) => Outcome::Deny(Arc::new(denial)),
        };
        let mut ttl = valid_ttl(info.cache_for, self.settings.cache_max_ttl, id.expires_ms, now_ms);
        if id.expires_ms <= now_ms {
            // Auth2 said 200 for an expired token; it will not become valid again.
            ttl = self.settings.cache_invalid_ttl;
        }
        Verdict::new(id.expires_ms, outcome, ttl, now_ms)
    }

    /// Entries currently cached (after pending maintenance); for tests and soak checks.
    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// The per-call check of a cached verdict: expiry first (every call, hits included), then what
/// Auth2 and the policy said.
fn judge(v: &Verdict, now_ms: i64) -> Result<&Arc<str>, Denial> {
    if v.expires_ms <= now_ms {
        let at = format_epoch_ms(v.expires_ms);
        return Err(Denial::new(
            Reason::Expired,
            format!("KBase token expired at {at}; log in to KBase again and use the new token"),
        ));
    }
    match &v.outcome {
        Outcome::Allow(user) => Ok(user),
        Outcome::Deny(d) => Err((**d).clone()),
    }
}

fn unavailable(detail: &str) -> Denial {
    Denial::new(Reason::Unavailable, "KBase auth service unavailable; the token could not be checked, retry shortly")
        .with_detail(detail)
}

fn token_denial(e: TokenError) -> Denial {
    match e {
        TokenError::Missing => Denial::new(Reason::Missing, MSG_MISSING),
        TokenError::Ambiguous => Denial::new(Reason::Ambiguous, format!("ambiguous KBase token: {e}")),
        _ => Denial::new(Reason::Malformed, format!("malformed KBase token: {e}")),
    }
}

/// Wall-clock now in epoch ms (Auth2 expiries are epoch ms): the single clock read of the hit
/// path. The coarse clock costs a quarter of the precise one; its tick (1–4 ms, the kernel's
/// jiffy) is far below any cache window or token lifetime, so an expiry is enforced at most a
/// few milliseconds late.
fn epoch_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: `ts` is a valid out-pointer; CLOCK_REALTIME_COARSE exists on every Linux we load on.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    } else {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }
}

/// The decision for a failure inside the plugin itself (a panic, a JNI error).
pub fn internal_error(detail: impl Into<String>) -> Denial {
    Denial::new(Reason::Internal, MSG_INTERNAL).with_detail(detail)
}
