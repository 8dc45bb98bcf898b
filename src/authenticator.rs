//! The façade: one [`Authenticator`] per interceptor configuration, deciding each call.
//!
//! One call: clocks → token present and well formed → cache. A fresh entry answers at once
//! (expiry checked on the wall clock, every call); used near its end it also starts one
//! background re-validation (refresh ahead). Otherwise one Auth2 exchange per token
//! ([`crate::flight`]) behind the admission gates ([`crate::admission`]); the caller waits for
//! it with a bound, then judges the answer with a fresh clock reading. An entry that ended may
//! still answer while Auth2 cannot (stale if error, opt-in). Every path ends in allow or a
//! [`Denial`]; nothing here can end in "allow" by default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::{Breaker, InFlightLimit, NewTokenBudget, Pass, Purpose, Refusal, ServiceOutcome, Slot};
use crate::auth2::{Auth2Client, Auth2Error, TokenInfo};
use crate::cache::{valid_life, valid_retention, Entry, Lookup, Outcome, VerdictCache};
use crate::clock::{Clock, Now};
use crate::decision::{format_epoch_ms, Denial, Reason};
use crate::denial_log::DenialLog;
use crate::flight::{Flight, Flights, Role};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::policy::Policy;
use crate::settings::{ConfigError, Settings, KEY_USER_CONTEXT};
use crate::token::{self, Token, TokenError, TokenKey};
use crate::users::{UserId, Users};
use crate::{runtime, startup};

pub const MSG_MISSING: &str = "missing KBase token: connect with sc://HOST:PORT/;token=<KBase token> \
     (sent as 'authorization: Bearer', which pyspark allows without TLS only for host 'localhost') \
     or sc://HOST:PORT/;x-kbase-token=<KBase token>";
pub const MSG_INVALID: &str = "invalid or revoked KBase token: log in to KBase again and use the new token";
pub const MSG_INTERNAL: &str = "internal error in the KBase auth plugin; see the Spark server log";
pub const MSG_UNAVAILABLE: &str = "KBase auth service unavailable; the token could not be checked, retry shortly";
pub const MSG_TOO_MANY_NEW_TOKENS: &str =
    "too many new KBase tokens right now; the token was not checked, retry shortly";

/// An allowed call: the user the token proved (`None` only for a token-less call from a
/// trusted address) and, rarely, one line to log at WARN (the first stale allow of an outage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub user: Option<UserId>,
    pub warning: Option<String>,
}

impl Allowed {
    fn user(id: UserId) -> Allowed {
        Allowed { user: Some(id), warning: None }
    }
}

pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    policy: Policy,
    cache: VerdictCache,
    flights: Flights<Fetched>,
    client: Auth2Client,
    budget: NewTokenBudget,
    in_flight: Arc<InFlightLimit>,
    breaker: Breaker,
    metrics: Metrics,
    denial_log: DenialLog,
    users: Users,
    clock: Clock,
}

/// What one Auth2 exchange (or the refusal to start one) came to, as every waiter sees it.
#[derive(Clone, Debug)]
enum Fetched {
    /// Auth2 answered; the entry is already in the cache.
    Entry(Arc<Entry>),
    /// Auth2 said invalid and `invalidTtl` is zero: nothing was cached.
    InvalidUncached,
    Unavailable(Arc<str>),
    Refused(Refusal),
}

impl Authenticator {
    pub fn new(settings: Settings) -> Result<Authenticator, ConfigError> {
        Authenticator::with_clock(settings, Clock::System)
    }

    /// As [`new`](Self::new), reading time from `clock` (tests inject a manual one).
    pub fn with_clock(settings: Settings, clock: Clock) -> Result<Authenticator, ConfigError> {
        let now = clock.now().map_or(0, |n| n.mono_ms);
        let inner = Inner {
            client: Auth2Client::new(&settings)?,
            policy: Policy::new(&settings),
            cache: VerdictCache::new(settings.cache_max_entries),
            flights: Flights::default(),
            budget: NewTokenBudget::new(settings.new_tokens_per_second, settings.new_tokens_burst, now),
            in_flight: Arc::new(InFlightLimit::new(settings.max_concurrent_requests)),
            breaker: Breaker::new(settings.fail_fast_threshold, settings.fail_fast_cooldown),
            metrics: Metrics::default(),
            denial_log: DenialLog::default(),
            users: Users::default(),
            clock,
            settings,
        };
        Ok(Authenticator { inner: Arc::new(inner) })
    }

    /// Builds from SparkConf keys and environment variables (see [`Settings::from_map`]).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Authenticator, ConfigError> {
        Authenticator::new(Settings::from_map(map)?)
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The start-up line: version and every effective setting.
    pub fn describe(&self) -> String {
        startup::describe(&self.inner.settings)
    }

    /// Start-up warnings about risky but working configurations.
    pub fn warnings(&self) -> Vec<String> {
        startup::warnings(&self.inner.settings)
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Whether [`authorize`](Self::authorize) needs the peer address (token-less bypass set up).
    pub fn wants_peer_address(&self) -> bool {
        !self.inner.settings.trusted_addresses.is_empty()
    }

    /// Entries currently cached (after pending maintenance); for tests and soak checks.
    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Auth2 exchanges in flight right now; for tests.
    pub fn exchanges_in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// The name behind a verified user's number (see [`crate::users`]).
    pub fn user_name(&self, id: UserId) -> Option<Arc<str>> {
        self.inner.users.name(id)
    }

    /// The refusal of a request message whose `user_context.user_id` is `claimed` although the
    /// call's token proved `user` (`userContext=require`), counted and rate-limit logged like
    /// every denial. The call itself was admitted (and counted as allowed) before its messages
    /// arrived; this counts the refused message.
    pub fn refuse_user_context(&self, user: UserId, claimed: &str) -> Denial {
        let inner = &self.inner;
        let mut denial = match inner.users.name(user) {
            Some(name) => Denial::new(Reason::UserContextMismatch, user_context_mismatch(&name, claimed)),
            None => internal_error(format!("user number {} was never handed out", user.0)),
        };
        inner.metrics.decided(Some(denial.reason), false);
        denial.log = inner.denial_log.admit(denial.reason, inner.clock.now().map_or(0, |n| n.mono_ms));
        denial
    }

    /// Decides one call from every value of its `authorization` and `x-kbase-token` metadata
    /// and, if [`wants_peer_address`](Self::wants_peer_address), the caller's IP address. The
    /// plugin's decision function: the JNI export calls exactly this. A call that must wait for
    /// Auth2 blocks this thread (with a bound).
    pub fn authorize(
        &self,
        authorization: &[&str],
        kbase_token: &[&str],
        peer: Option<&str>,
    ) -> Result<Allowed, Denial> {
        match self.inner.begin(authorization, kbase_token, peer) {
            Step::Decided(decided) => self.inner.conclude(decided),
            Step::Wait(w) => {
                let fetched = w.flight.wait(self.inner.wait_bound());
                self.inner.conclude(self.inner.after_wait(w, fetched))
            }
        }
    }

    /// The same decision for async callers (the gateway): a cache hit answers without leaving
    /// the task; a call that must wait for Auth2 awaits it (with the same bound) and never
    /// blocks the thread.
    pub async fn authorize_async(&self, authorization: &[&str], kbase_token: &[&str]) -> Result<Allowed, Denial> {
        match self.inner.begin(authorization, kbase_token, None) {
            Step::Decided(decided) => self.inner.conclude(decided),
            Step::Wait(w) => {
                let fetched = w.flight.wait_async(self.inner.wait_bound()).await;
                self.inner.conclude(self.inner.after_wait(w, fetched))
            }
        }
    }
}

/// Where a call stands after the synchronous part of its decision.
enum Step<'a> {
    Decided(Decided<'a>),
    /// An Auth2 exchange must answer first.
    Wait(Waiting<'a>),
}

/// A decision, not yet counted and logged.
struct Decided<'a> {
    result: Result<Allowed, Denial>,
    /// Whether the verdict came from the cache.
    hit: bool,
    /// Names the token in a denial's log line.
    token: Option<Token<'a>>,
    /// The monotonic time of the decision, for the denial log.
    now_mono: u64,
}

/// A call waiting for the exchange of its token.
struct Waiting<'a> {
    token: Token<'a>,
    /// The token's ended entry, if the cache still had one.
    old: Option<Arc<Entry>>,
    flight: Arc<Flight<Fetched>>,
}

impl Inner {
    fn is_trusted(&self, peer: Option<&str>) -> bool {
        peer.and_then(|p| p.parse::<IpAddr>().ok()).is_some_and(|ip| self.settings.trusted_addresses.contains(&ip))
    }

    /// Everything up to a wait for Auth2: clocks, token, cache, gates.
    fn begin<'a>(self: &Arc<Self>, authorization: &[&'a str], kbase_token: &[&'a str], peer: Option<&str>) -> Step<'a> {
        let Some(now) = self.clock.now() else {
            // Unknown "now" makes every expiry meaningless: fail closed.
            let result = Err(internal_error("the system clock cannot be read"));
            return Step::Decided(Decided { result, hit: false, token: None, now_mono: 0 });
        };
        let decided = |result, hit, token| Step::Decided(Decided { result, hit, token, now_mono: now.mono_ms });
        let token = match token::extract(authorization, kbase_token) {
            Ok(token) => token,
            Err(TokenError::Missing) if self.is_trusted(peer) => {
                return decided(Ok(Allowed { user: None, warning: None }), false, None)
            }
            Err(e) => return decided(Err(token_denial(e)), false, None),
        };
        let key = token.key();
        let lookup = self.cache.lookup(&key, now.mono_ms, |e| {
            let verdict = judge(e, now);
            let refresh = verdict.is_ok() && e.claim_refresh(now.mono_ms);
            (verdict, refresh)
        });
        let old = match lookup {
            Lookup::Fresh((verdict, refresh)) => {
                if refresh {
                    self.metrics.refreshes.inc();
                    self.in_background(token, key, now);
                }
                return decided(verdict.map(Allowed::user), true, Some(token));
            }
            Lookup::Ended(old) => Some(old),
            Lookup::Absent => None,
        };
        match self.revalidate(token, key, old, now) {
            Ok(waiting) => Step::Wait(waiting),
            Err(result) => decided(result, false, Some(token)),
        }
    }

    /// Counts and logs a decision, and names the token in its denial.
    fn conclude(&self, d: Decided<'_>) -> Result<Allowed, Denial> {
        let result = d.result.map_err(|mut denial| {
            denial.fingerprint = d.token.map(|t| t.fingerprint());
            denial
        });
        self.metrics.decided(result.as_ref().err().map(|d| d.reason), d.hit);
        result.map_err(|mut denial| {
            denial.log = self.denial_log.admit(denial.reason, d.now_mono);
            denial
        })
    }

    /// A call whose token has no fresh entry: joins or starts the one exchange for its token,
    /// unless the ended entry settles the call at once.
    fn revalidate<'a>(
        self: &Arc<Self>,
        token: Token<'a>,
        key: TokenKey,
        old: Option<Arc<Entry>>,
        now: Now,
    ) -> Result<Waiting<'a>, Result<Allowed, Denial>> {
        self.metrics.miss();
        // A token known to have expired will not become valid again: no need to ask.
        if let Some(e) = old.as_ref().filter(|e| e.is_allow() && now.has_passed(e.expires_ms)) {
            return Err(judge(e, now).map(Allowed::user));
        }
        // An outage already met by this entry: answer from it at once, retry in the background.
        if let Some(e) = old.as_ref().filter(|e| e.is_stale() && self.stale_usable(e, now)) {
            if e.claim_refresh(now.mono_ms) {
                self.in_background(token, key, now);
            }
            return Err(Ok(self.stale_allow(e, token, "Auth2 still failing")));
        }
        let known_valid = old.as_ref().is_some_and(|e| e.known_valid(now));
        let purpose = if known_valid { Purpose::KnownValid } else { Purpose::NewToken };
        let flight = match self.flights.join_or_lead(key) {
            Role::Follower(f) => f,
            Role::Leader(f) => {
                // Someone else's exchange may have finished between our lookup and now.
                match self.cache.get_fresh(&key, now.mono_ms) {
                    Some(fresh) => self.flights.finish(key, &f, Fetched::Entry(fresh)),
                    None => self.lead(token, key, purpose, &f, now),
                }
                f
            }
        };
        Ok(Waiting { token, old, flight })
    }

    /// Judges what the exchange came to (or its absence), with the time *after* the wait: a
    /// token may expire while Auth2 answers.
    fn after_wait<'a>(self: &Arc<Self>, w: Waiting<'a>, fetched: Option<Fetched>) -> Decided<'a> {
        let token = Some(w.token);
        let Some(now) = self.clock.now() else {
            let result = Err(internal_error("the system clock cannot be read"));
            return Decided { result, hit: false, token, now_mono: 0 };
        };
        let decided = |result| Decided { result, hit: false, token, now_mono: now.mono_ms };
        let fetched = fetched.unwrap_or_else(|| {
            Fetched::Unavailable(format!("no answer from Auth2 within {:?}", self.wait_bound()).into())
        });
        let denial = match fetched {
            Fetched::Entry(e) => return decided(judge(&e, now).map(Allowed::user)),
            Fetched::InvalidUncached => return decided(Err(Denial::new(Reason::Invalid, MSG_INVALID))),
            Fetched::Refused(Refusal::BudgetSpent) => {
                return decided(Err(Denial::new(Reason::TooManyNewTokens, MSG_TOO_MANY_NEW_TOKENS)
                    .with_detail(Refusal::BudgetSpent.to_string())))
            }
            Fetched::Refused(r) => unavailable(&r.to_string()),
            Fetched::Unavailable(detail) => unavailable(&detail),
        };
        match w.old.filter(|e| self.stale_usable(e, now)) {
            Some(e) => {
                e.mark_stale(now.mono_ms);
                decided(Ok(self.stale_allow(&e, w.token, &denial.detail)))
            }
            None => decided(Err(denial)),
        }
    }

    /// Whether an ended valid entry may still answer (see [`Entry::usable_stale`]).
    fn stale_usable(&self, e: &Entry, now: Now) -> bool {
        e.usable_stale(self.settings.stale_if_error.as_millis() as u64, now)
    }

    fn stale_allow(&self, e: &Entry, token: Token<'_>, why: &str) -> Allowed {
        self.metrics.stale_allows.inc();
        let warning = e.claim_stale_warning().then(|| {
            format!(
                "KBase auth: allowing token={} on its last valid answer although Auth2 cannot confirm it \
                 (cache.staleIfError={:?}; {why})",
                token.fingerprint(),
                self.settings.stale_if_error
            )
        });
        Allowed { user: e.user(), warning }
    }

    /// Starts a re-validation nobody waits for (refresh ahead, stale retries), unless one is
    /// already in flight for this token.
    fn in_background(self: &Arc<Self>, token: Token<'_>, key: TokenKey, now: Now) {
        if let Role::Leader(f) = self.flights.join_or_lead(key) {
            self.lead(token, key, Purpose::KnownValid, &f, now);
        }
    }

    /// Passes the gates and spawns the exchange, or ends the flight with the refusal.
    fn lead(
        self: &Arc<Self>,
        token: Token<'_>,
        key: TokenKey,
        purpose: Purpose,
        flight: &Arc<Flight<Fetched>>,
        now: Now,
    ) {
        let mut exchange =
            Exchange { inner: Arc::clone(self), key, flight: Arc::clone(flight), pass: None, slot: None, done: false };
        if let Err(refusal) = exchange.admit(purpose, now) {
            if refusal != Refusal::BudgetSpent {
                self.metrics.fail_fast.inc();
            }
            exchange.finish(Fetched::Refused(refusal));
            return;
        }
        let rt = match runtime::get() {
            Ok(rt) => rt,
            Err(e) => return exchange.finish(Fetched::Unavailable(e.into())),
        };
        self.metrics.auth2_requests.inc();
        let raw = token.expose().to_owned();
        rt.spawn(async move {
            let inner = Arc::clone(&exchange.inner);
            let started = Instant::now();
            let answer = inner.client.lookup(&raw, inner.policy.needs_roles()).await;
            inner.metrics.auth2_latency(started.elapsed());
            let fetched = exchange.settle(answer);
            exchange.finish(fetched);
        });
    }

    /// How long a caller waits for an exchange: the runtime's own timeouts end it first; this
    /// is the backstop.
    fn wait_bound(&self) -> Duration {
        let exchanges = if self.policy.needs_roles() { 2 } else { 1 };
        self.settings.request_timeout * exchanges + Duration::from_secs(1)
    }

    fn entry_for(&self, info: TokenInfo, now: Now) -> Entry {
        let id = info.identity;
        let outcome = match self.policy.check(&id) {
            Ok(()) => Outcome::Allow(self.users.intern(&id.user)),
            Err(denial) => Outcome::Deny(Arc::new(denial)),
        };
        let allowed = matches!(outcome, Outcome::Allow(_));
        let s = &self.settings;
        let (mut life, ends_at_expiry) = valid_life(info.cache_for, s.cache_max_ttl, id.expires_ms, now.wall_ms);
        if now.has_passed(id.expires_ms) {
            // Auth2 said 200 for an expired token; it will not become valid again.
            life = s.cache_invalid_ttl;
        }
        // Refreshing an entry that ends with its token gains nothing; nor does refreshing a denial.
        let refresh = (allowed && !ends_at_expiry && !s.refresh_ahead.is_zero()).then(|| s.refresh_ahead.min(life / 2));
        let retain =
            if allowed { valid_retention(s.retain_valid(), life, id.expires_ms, now.wall_ms) } else { Duration::ZERO };
        Entry::new(outcome, id.expires_ms, now.mono_ms, life, refresh, retain)
    }
}

/// One exchange in flight: holds its gates' passes, and ends its flight exactly once — also if
/// it is dropped unfinished (a panic, a runtime that could not take it), so no waiter and no
/// later caller is left behind a flight that never ends.
struct Exchange {
    inner: Arc<Inner>,
    key: TokenKey,
    flight: Arc<Flight<Fetched>>,
    pass: Option<Pass>,
    slot: Option<Slot>,
    done: bool,
}

impl Exchange {
    /// In-flight slot, then the breaker, then (for new tokens) the budget: a token is taken
    /// from the budget only for an exchange that really happens.
    fn admit(&mut self, purpose: Purpose, now: Now) -> Result<(), Refusal> {
        let inner = &self.inner;
        self.slot = Some(inner.in_flight.try_acquire(purpose)?);
        self.pass = Some(inner.breaker.admit(now.mono_ms, purpose)?);
        if purpose == Purpose::NewToken && !inner.budget.try_take(now.mono_ms, self.key) {
            return Err(Refusal::BudgetSpent);
        }
        Ok(())
    }

    /// Turns Auth2's answer into what waiters get, updating the cache and the breaker.
    fn settle(&mut self, answer: Result<TokenInfo, Auth2Error>) -> Fetched {
        let inner = &self.inner;
        let Some(now) = inner.clock.now() else {
            self.record(ServiceOutcome::Neutral, 0);
            return Fetched::Unavailable("the system clock cannot be read".into());
        };
        let (outcome, fetched) = match answer {
            Ok(info) => {
                let entry = Arc::new(inner.entry_for(info, now));
                inner.cache.insert(self.key, Arc::clone(&entry));
                (ServiceOutcome::Healthy, Fetched::Entry(entry))
            }
            Err(Auth2Error::Invalid) if inner.settings.cache_invalid_ttl.is_zero() => {
                inner.cache.remove(&self.key);
                (ServiceOutcome::Neutral, Fetched::InvalidUncached)
            }
            Err(Auth2Error::Invalid) => {
                let denial = Outcome::Deny(Arc::new(Denial::new(Reason::Invalid, MSG_INVALID)));
                let life = inner.settings.cache_invalid_ttl;
                let entry = Arc::new(Entry::new(denial, i64::MAX, now.mono_ms, life, None, Duration::ZERO));
                inner.cache.insert(self.key, Arc::clone(&entry));
                (ServiceOutcome::Neutral, Fetched::Entry(entry))
            }
            Err(Auth2Error::ServiceFailure(detail)) => {
                inner.metrics.auth2_failures.inc();
                (ServiceOutcome::Failed, Fetched::Unavailable(detail.into()))
            }
            Err(Auth2Error::BadAnswer(detail)) => {
                inner.metrics.auth2_failures.inc();
                (ServiceOutcome::Neutral, Fetched::Unavailable(detail.into()))
            }
        };
        self.record(outcome, now.mono_ms);
        fetched
    }

    fn record(&mut self, outcome: ServiceOutcome, now_mono: u64) {
        if let Some(pass) = self.pass.take() {
            self.inner.breaker.record(pass, outcome, now_mono);
        }
    }

    fn finish(mut self, fetched: Fetched) {
        self.finish_with(fetched);
    }

    fn finish_with(&mut self, fetched: Fetched) {
        // A pass not yet reported (refused later, or abandoned) frees the breaker's trial.
        self.record(ServiceOutcome::Neutral, 0);
        self.slot = None;
        self.done = true;
        self.inner.flights.finish(self.key, &self.flight, fetched);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.done {
            self.finish_with(Fetched::Unavailable("the Auth2 exchange was abandoned".into()));
        }
    }
}

/// The per-call check of a cached verdict: expiry first (every call, hits included), then what
/// Auth2 and the policy said.
#[inline]
fn judge(e: &Entry, now: Now) -> Result<UserId, Denial> {
    match e.outcome {
        Outcome::Allow(user) if !now.has_passed(e.expires_ms) => Ok(user),
        _ => Err(denial_of(e, now)),
    }
}

/// The denial [`judge`] gives; apart, so that the allow path stays a compare and a branch.
#[cold]
#[inline(never)]
fn denial_of(e: &Entry, now: Now) -> Denial {
    if now.has_passed(e.expires_ms) {
        let at = format_epoch_ms(e.expires_ms);
        return Denial::new(
            Reason::Expired,
            format!("KBase token expired at {at}; log in to KBase again and use the new token"),
        );
    }
    match &e.outcome {
        Outcome::Deny(d) => (**d).clone(),
        Outcome::Allow(_) => internal_error("an unexpired allow judged as a denial"),
    }
}

/// What a client whose `user_id` is not its KBase user must change. The claimed value is only
/// repeated when it looks like a user name: it is the client's own text, and could be anything.
fn user_context_mismatch(user: &str, claimed: &str) -> String {
    let looks_like_a_name = claimed.len() <= 100
        && claimed.starts_with(|c: char| c.is_ascii_lowercase())
        && claimed.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let what = match claimed {
        "" => "an empty user_id".to_owned(),
        _ if looks_like_a_name => format!("user_id '{claimed}'"),
        _ => format!("a user_id of {} characters", claimed.chars().count()),
    };
    format!(
        "the request carries {what}, but its KBase token belongs to '{user}' ({KEY_USER_CONTEXT}=require): \
         connect as '{user}', e.g. sc://HOST:PORT/;user_id={user};... in the URL, or SPARK_USER={user} in the \
         pyspark client's environment"
    )
}

fn unavailable(detail: &str) -> Denial {
    Denial::new(Reason::Unavailable, MSG_UNAVAILABLE).with_detail(detail)
}

fn token_denial(e: TokenError) -> Denial {
    match e {
        TokenError::Missing => Denial::new(Reason::Missing, MSG_MISSING),
        TokenError::Ambiguous => Denial::new(Reason::Ambiguous, format!("ambiguous KBase token: {e}")),
        _ => Denial::new(Reason::Malformed, format!("malformed KBase token: {e}")),
    }
}

/// The decision for a failure inside the plugin itself (a panic, a JNI error, no clock).
pub fn internal_error(detail: impl Into<String>) -> Denial {
    Denial::new(Reason::Internal, MSG_INTERNAL).with_detail(detail)
}
