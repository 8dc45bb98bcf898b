//! What the gateway tells its operators: Prometheus series (`/metrics`) and one access line per
//! call. The token-validation counters are the core's own, read at each scrape; the denial log
//! bound is the core's too, for the core's denials and the gateway's own refusals alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use kbase_spark_auth::decision::Reason;
use kbase_spark_auth::denial_log::{suppressed_line, DenialKind, DenialLog, LogVerdict};
use kbase_spark_auth::{Authenticator, Denial};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::grpc::Code;
use crate::route::Pod;

/// Prefix of every series.
pub const PREFIX: &str = "kbase_gateway";

/// Where access lines go (`RUST_LOG`-style filters can select it).
pub const ACCESS_TARGET: &str = "kbase_spark_gateway::access";

/// Calls the gateway refuses itself (the core's denials have their [`Reason`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The verified user name cannot form a pod's host name.
    UnroutableUser,
    /// The user's pod cannot be reached (or its connection was lost before it answered).
    PodUnavailable,
    /// The call's `grpc-timeout` passed while the gateway was validating or connecting.
    DeadlineExceeded,
    /// Not a gRPC request (no `application/grpc` POST).
    NotGrpc,
    /// Anything unexpected inside the gateway.
    Internal,
    /// Not a refusal: the caller went away before its pod answered. Only the log bound is shared.
    Cancelled,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::UnroutableUser,
        Refusal::PodUnavailable,
        Refusal::DeadlineExceeded,
        Refusal::NotGrpc,
        Refusal::Internal,
    ];
}

impl DenialKind for Refusal {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Refusal::UnroutableUser => "unroutable_user",
            Refusal::PodUnavailable => "pod_unavailable",
            Refusal::DeadlineExceeded => "deadline_exceeded",
            Refusal::NotGrpc => "not_grpc",
            Refusal::Internal => "internal_error",
            Refusal::Cancelled => "cancelled",
        }
    }
}

/// The `method` label: Spark Connect's and health's methods by name, anything else `other` (a
/// label per path a caller invents would let anyone grow the metrics without bound).
pub fn method_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/spark.connect.SparkConnectService/ExecutePlan",
        "/spark.connect.SparkConnectService/AnalyzePlan",
        "/spark.connect.SparkConnectService/Config",
        "/spark.connect.SparkConnectService/AddArtifacts",
        "/spark.connect.SparkConnectService/ArtifactStatus",
        "/spark.connect.SparkConnectService/Interrupt",
        "/spark.connect.SparkConnectService/ReattachExecute",
        "/spark.connect.SparkConnectService/ReleaseExecute",
        "/spark.connect.SparkConnectService/ReleaseSession",
        "/spark.connect.SparkConnectService/FetchErrorDetails",
        "/spark.connect.SparkConnectService/CloneSession",
        "/spark.connect.SparkConnectService/GetStatus",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ];
    KNOWN.iter().find(|k| **k == path).copied().unwrap_or("other")
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

pub struct Observe {
    registry: Registry,
    calls: Family<Labels2, Counter>,
    refusals: Family<Labels1, Counter>,
    pub pod_connections: Gauge,
    pub pod_dials: Counter,
    pub pod_dial_failures: Family<Labels1, Counter>,
    pub live_streams: Gauge,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    denial_log: DenialLog,
    started: Instant,
}

impl Observe {
    pub fn new(auth: Arc<Authenticator>) -> Observe {
        let (calls, refusals, pod_dial_failures) = (Family::default(), Family::default(), Family::default());
        let (pod_connections, live_streams) = (Gauge::default(), Gauge::default());
        let (pod_dials, request_bytes, response_bytes) = (Counter::default(), Counter::default(), Counter::default());
        let mut registry = Registry::with_prefix(PREFIX);
        let r = &mut registry;
        r.register("calls", "Calls ended, by gRPC method and status (the pod's, or the gateway's own)", calls.clone());
        r.register("refusals", "Calls the gateway refused itself, by reason", refusals.clone());
        r.register("pod_connections", "Open HTTP/2 connections to pods", pod_connections.clone());
        r.register("pod_dials", "Connections dialled to pods (successful or not)", pod_dials.clone());
        r.register("pod_dial_failures", "Failed dials to pods, by cause", pod_dial_failures.clone());
        r.register("live_streams", "Calls forwarded to a pod and not yet ended", live_streams.clone());
        r.register("request_bytes", "Request body bytes forwarded to pods", request_bytes.clone());
        r.register("response_bytes", "Response body bytes forwarded to callers", response_bytes.clone());
        r.register_collector(Box::new(CoreCounters(auth)));
        Observe {
            registry,
            calls,
            refusals,
            pod_connections,
            pod_dials,
            pod_dial_failures,
            live_streams,
            request_bytes,
            response_bytes,
            denial_log: DenialLog::default(),
            started: Instant::now(),
        }
    }

    /// The Prometheus text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn dial_failed(&self, cause: &'static str) {
        self.pod_dial_failures.get_or_create(&[("cause", cause)]).inc();
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn count(&self, method: &str, status: Code) {
        self.calls.get_or_create(&[("method", method_label(method)), ("status", status.name())]).inc();
    }

    /// Whether a refused call's line is written (the core's bound, per kind); writes the summary
    /// of the suppressed ones first.
    fn admit(&self, kind: impl DenialKind, verdict: LogVerdict) -> bool {
        match verdict {
            LogVerdict::Suppress => false,
            LogVerdict::Write { suppressed_before, over_ms } => {
                if let Some(summary) = suppressed_line(kind, suppressed_before, over_ms) {
                    tracing::info!(target: ACCESS_TARGET, "{summary}");
                }
                true
            }
        }
    }
}

/// One call, from its headers to its one access line (and its count in `calls_total`). Whatever
/// ends it writes the line: the gateway's own answer ([`Call::refused`], [`Call::denied`]), the
/// end of the pod's response ([`Call::forwarded`]), or — when the caller goes away first — the
/// drop, with status CANCELLED.
pub struct Call {
    pub method: PathAndQuery,
    pub started: Instant,
    /// From `grpc-timeout`: bounds the gateway's own waits (validation, connecting).
    pub deadline: Option<tokio::time::Instant>,
    pub user: Option<Arc<str>>,
    pub pod: Option<Pod>,
    observe: Arc<Observe>,
    ended: bool,
}

impl Call {
    pub fn new(method: PathAndQuery, deadline: Option<tokio::time::Instant>, observe: &Arc<Observe>) -> Call {
        Call {
            method,
            started: Instant::now(),
            deadline,
            user: None,
            pod: None,
            observe: Arc::clone(observe),
            ended: false,
        }
    }

    /// This record, to be ended elsewhere (by the response body that carries it on).
    pub fn hand_over(&mut self) -> Call {
        self.ended = true;
        Call {
            method: self.method.clone(),
            started: self.started,
            deadline: self.deadline,
            user: self.user.take(),
            pod: self.pod.take(),
            observe: Arc::clone(&self.observe),
            ended: false,
        }
    }

    /// A call the gateway refused: counted, its line rate-limited per reason.
    pub fn refused(mut self, refusal: Refusal, code: Code, message: &str) {
        self.ended = true;
        let o = &self.observe;
        o.refusals.get_or_create(&[("reason", refusal.name())]).inc();
        o.count(self.method.path(), code);
        if o.admit(refusal, o.denial_log.admit(refusal, o.now_ms())) {
            self.line(code, 0, 0).log(Some((refusal.name(), None, message, "")));
        }
    }

    /// A call the core denied: counted, its line rate-limited by the core's bound.
    pub fn denied(mut self, denial: &Denial) {
        self.ended = true;
        let code = Code::from_core(denial.code());
        self.observe.count(self.method.path(), code);
        if self.observe.admit(denial.reason, denial.log) {
            let fingerprint = denial.fingerprint.map(|f| f.to_string());
            let reason =
                Some((denial.reason.name(), fingerprint.as_deref(), denial.message.as_str(), denial.detail.as_str()));
            self.line(code, 0, 0).log(reason);
        }
    }

    /// A call that reached its pod, ended with `status`: counted and logged, every one.
    pub fn forwarded(mut self, status: Code, bytes_in: u64, bytes_out: u64) {
        self.ended = true;
        self.observe.count(self.method.path(), status);
        self.line(status, bytes_in, bytes_out).log(None);
    }

    /// A health call: counted; logged at DEBUG only (probes come every few seconds).
    pub fn health(mut self, status: Code) {
        self.ended = true;
        self.observe.count(self.method.path(), status);
        tracing::debug!(target: ACCESS_TARGET, method = %self.method.path(), status = %status.name(), "health");
    }

    fn line(&self, status: Code, bytes_in: u64, bytes_out: u64) -> CallLine<'_> {
        CallLine {
            method: self.method.path(),
            user: self.user.as_deref(),
            pod: self.pod.as_ref().map(|p| p.authority.as_str()),
            status,
            duration: self.started.elapsed(),
            bytes_in,
            bytes_out,
        }
    }
}

impl Drop for Call {
    /// The caller went away before the call reached its pod (or before the pod answered). Such
    /// lines are rate-limited like refusals: callers that connect and leave must not flood the log.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let o = &self.observe;
        o.count(self.method.path(), Code::Cancelled);
        if o.admit(Refusal::Cancelled, o.denial_log.admit(Refusal::Cancelled, o.now_ms())) {
            self.line(Code::Cancelled, 0, 0).log(None);
        }
    }
}

/// One call, as its access line shows it.
struct CallLine<'a> {
    method: &'a str,
    user: Option<&'a str>,
    pod: Option<&'a str>,
    status: Code,
    duration: Duration,
    bytes_in: u64,
    bytes_out: u64,
}

impl CallLine<'_> {
    /// `call method=… user=… pod=… status=… duration_ms=… bytes_in=… bytes_out=…`, and for a
    /// refusal `reason=… token=sha256:… grpc_message="…" detail="…"` (`message` is tracing's own
    /// field). Never a token.
    fn log(&self, refusal: Option<(&str, Option<&str>, &str, &str)>) {
        let ms = self.duration.as_secs_f64() * 1000.0;
        let (user, pod) = (self.user.unwrap_or("-"), self.pod.unwrap_or("-"));
        match refusal {
            None => tracing::info!(
                target: ACCESS_TARGET,
                method = %self.method, user = %user, pod = %pod, status = %self.status.name(),
                duration_ms = %format_args!("{ms:.3}"), bytes_in = self.bytes_in, bytes_out = self.bytes_out,
                "call"
            ),
            Some((reason, token, message, detail)) => tracing::info!(
                target: ACCESS_TARGET,
                method = %self.method, user = %user, pod = %pod, status = %self.status.name(),
                duration_ms = %format_args!("{ms:.3}"), bytes_in = self.bytes_in, bytes_out = self.bytes_out,
                reason = %reason, token = %token.unwrap_or("-"), grpc_message = ?message, detail = ?detail,
                "call"
            ),
        }
    }
}

/// The core's counters, read at each scrape.
struct CoreCounters(Arc<Authenticator>);

impl std::fmt::Debug for CoreCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreCounters")
    }
}

impl Collector for CoreCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.metrics();
        let counter = ConstCounter::new(0u64).metric_type();
        {
            let mut decisions = encoder.encode_descriptor(
                "auth_decisions",
                "Token decisions of the validation core: allowed, or the denial's reason",
                None,
                counter,
            )?;
            ConstCounter::new(m.allowed).encode(decisions.encode_family(&[("decision", "allowed")])?)?;
            for reason in Reason::ALL {
                ConstCounter::new(m.denied_for(reason))
                    .encode(decisions.encode_family(&[("decision", reason.name())])?)?;
            }
        }
        for (name, help, value) in [
            ("auth2_requests", "Requests sent to Auth2", m.auth2_requests),
            ("auth2_failures", "Auth2 requests that got no usable answer", m.auth2_failures),
            (
                "auth2_fail_fast",
                "Lookups refused without asking Auth2 (breaker open, too many in flight)",
                m.auth2_fail_fast,
            ),
            ("token_cache_hits", "Decisions answered from the token cache", m.cache_hits),
            ("token_cache_misses", "Decisions that needed an Auth2 answer (shared ones included)", m.cache_misses),
            ("token_refreshes", "Background re-validations (refresh ahead)", m.refreshes),
            ("stale_allows", "Calls allowed on a stale verdict while Auth2 failed", m.stale_allows),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, counter)?)?;
        }
        Ok(())
    }
}

const _: () = assert!(Refusal::ALL.len() <= kbase_spark_auth::denial_log::MAX_KINDS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_kinds_are_distinct() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(
            method_label("/spark.connect.SparkConnectService/ExecutePlan"),
            "/spark.connect.SparkConnectService/ExecutePlan"
        );
        assert_eq!(method_label("/made.up/Path"), "other");
    }
}
