//! The life of a call: read the request → validate the token (the core) → route to the user's
//! pod → get a connection to it → forward the request → stream the response back → log. The
//! gateway never decodes Spark's messages; it moves HTTP/2 frames. Calls it answers itself end
//! with a gRPC trailers-only response; every such answer is made in [`Gateway::stop`].

use std::future::Future;
use std::sync::Arc;

use http::header::{
    HeaderName, AUTHORIZATION, CONNECTION, CONTENT_TYPE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{self, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kbase_spark_auth::{Allowed, Authenticator, Denial};

use crate::grpc::{self, trailers_only, Code};
use crate::health::{self, Lifecycle};
use crate::observe::{Call, Observe, Refusal};
use crate::pool::{Lease, PodDown, Pool, UpBody};
use crate::relay::{self, empty, BoxError, DownBody, Download, Forwarded, Sent, Upload};
use crate::route::{Pod, Router};

pub const X_KBASE_TOKEN: HeaderName = HeaderName::from_static("x-kbase-token");

/// Everything a call needs; one per process, shared by every connection.
pub struct Gateway {
    pub auth: Arc<Authenticator>,
    pub router: Router,
    pub pool: Arc<Pool>,
    pub observe: Arc<Observe>,
    pub lifecycle: Arc<Lifecycle>,
    /// Forward the token headers to the pod.
    pub forward_token: bool,
}

/// Why a call goes no further than the gateway.
enum Stop {
    /// The core's decision.
    Denied(Denial),
    /// The gateway's own.
    Refused { refusal: Refusal, code: Code, message: String },
    /// The pod reset the stream before answering: the caller gets the same reset.
    Reset { error: hyper::Error, reason: h2::Reason },
}

impl Stop {
    fn refused(refusal: Refusal, code: Code, message: impl Into<String>) -> Stop {
        Stop::Refused { refusal, code, message: message.into() }
    }

    fn pod_unavailable(message: String) -> Stop {
        Stop::refused(Refusal::PodUnavailable, Code::Unavailable, message)
    }
}

impl Gateway {
    /// One call, from its request to its response (whose body streams on after this returns).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<DownBody>, BoxError> {
        let method = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let deadline = grpc::timeout(req.headers()).map(|t| tokio::time::Instant::now() + t);
        let mut call = Call::new(method, deadline, &self.observe);
        if health::is_health(call.method.path()) {
            let res = self.lifecycle.serve(req).await;
            call.health(Code::in_headers(res.headers()).unwrap_or(Code::Ok));
            return Ok(res);
        }
        match self.forward(req, &mut call).await {
            Ok(res) => Ok(res),
            Err(stop) => self.stop(call, stop),
        }
    }

    /// Read the request, validate, route, connect, forward; the response streams back through a
    /// [`Download`], which ends the call when it ends.
    async fn forward(&self, req: Request<Incoming>, call: &mut Call) -> Result<Response<DownBody>, Stop> {
        // 1. Read the request: a gRPC call, and its token headers.
        if req.method() != Method::POST
            || !req.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        {
            let message = "not a gRPC call (POST, content-type application/grpc)";
            return Err(Stop::refused(Refusal::NotGrpc, Code::Unimplemented, message));
        }
        // 2. Validate the token: the core's cache, single flight, budget and breaker.
        let allowed = within(call.deadline, "checking the KBase token", self.validate(req.headers())).await?;
        let allowed = allowed.map_err(Stop::Denied)?;
        if let Some(warning) = &allowed.warning {
            tracing::warn!("{warning}");
        }
        let user = allowed.user.and_then(|id| self.auth.user_name(id)).ok_or_else(|| {
            Stop::refused(
                Refusal::Internal,
                Code::Internal,
                "internal error in the gateway: an allowed call without a user",
            )
        })?;
        call.user = Some(Arc::clone(&user));
        // 3. Route: the user's pod.
        let pod = self
            .router
            .pod_for(&user)
            .map_err(|message| Stop::refused(Refusal::UnroutableUser, Code::PermissionDenied, message))?;
        call.pod = Some(pod.clone());
        // 4. A connection to the pod.
        let lease = self.lease(call.deadline, &user, &pod).await?;
        // 5. Forward the request, unchanged but for its address, hop-by-hop headers and the time
        //    its deadline has left.
        let sent = Arc::new(Sent::default());
        let mut request = self.upstream(req, &pod, &sent);
        if let Some(at) = call.deadline {
            let left = grpc::timeout_value(at.saturating_duration_since(tokio::time::Instant::now()));
            let left = left.ok_or_else(|| deadline_passed("connecting to the Spark Connect server"))?;
            request.headers_mut().insert(grpc::GRPC_TIMEOUT, left);
        }
        let (response, lease) = self.send(call.deadline, lease, request, &user, &pod).await?;
        // 6. Stream the response back; the body ends the call.
        let status = Code::in_headers(response.headers());
        let record = Forwarded::new(call.hand_over(), status, sent, lease, Arc::clone(&self.observe));
        Ok(response.map(|body| Download::new(body, record).boxed_unsync()))
    }

    async fn validate(&self, headers: &HeaderMap) -> Result<Allowed, Denial> {
        let authorization = header_values(headers, &AUTHORIZATION);
        let kbase_token = header_values(headers, &X_KBASE_TOKEN);
        self.auth.authorize_async(&authorization, &kbase_token).await
    }

    async fn lease(&self, deadline: Option<tokio::time::Instant>, user: &str, pod: &Pod) -> Result<Lease, Stop> {
        let lease = within(deadline, "connecting to the Spark Connect server", self.pool.lease(pod)).await?;
        lease.map_err(|PodDown(why)| {
            Stop::pod_unavailable(format!(
                "no Spark Connect server answers for KBase user '{user}' at {pod} ({why}); \
                     start your notebook server (JupyterHub) and retry"
            ))
        })
    }

    /// The request as the pod gets it: its address, without hop-by-hop headers (and without the
    /// token unless it is forwarded), its body counted on the way.
    fn upstream(&self, req: Request<Incoming>, pod: &Pod, sent: &Arc<Sent>) -> Request<UpBody> {
        let (mut parts, body) = req.into_parts();
        let mut uri = uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(pod.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| parts.uri.clone());
        parts.version = Version::HTTP_2;
        strip_hop_by_hop(&mut parts.headers);
        if !self.forward_token {
            parts.headers.remove(AUTHORIZATION);
            parts.headers.remove(X_KBASE_TOKEN);
        }
        Request::from_parts(parts, Upload::boxed(body, Arc::clone(sent), Arc::clone(&self.observe)))
    }

    /// Sends the request; if the connection turns out to have closed before taking it, once more
    /// on another.
    async fn send(
        &self,
        deadline: Option<tokio::time::Instant>,
        mut lease: Lease,
        mut request: Request<UpBody>,
        user: &str,
        pod: &Pod,
    ) -> Result<(Response<Incoming>, Lease), Stop> {
        let mut retried = false;
        loop {
            let mut sender = lease.sender();
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, lease)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        request = unsent;
                        lease = self.lease(deadline, user, pod).await?;
                    }
                    _ => {
                        let error = e.into_error();
                        return Err(match relay::pod_reset(&error) {
                            Some(reason) => Stop::Reset { error, reason },
                            None => Stop::pod_unavailable(relay::lost(user, pod, &error)),
                        });
                    }
                },
            }
        }
    }

    /// The gateway's own answer to a call it does not forward; the call's end is counted and logged.
    fn stop(&self, call: Call, stop: Stop) -> Result<Response<DownBody>, BoxError> {
        match stop {
            Stop::Denied(denial) => {
                let code = Code::from_core(denial.code());
                call.denied(&denial);
                Ok(trailers_only(code, &denial.message, empty()))
            }
            Stop::Refused { refusal, code, message } => {
                call.refused(refusal, code, &message);
                let mut res = trailers_only(code, &message, empty());
                if refusal == Refusal::NotGrpc {
                    *res.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
                }
                Ok(res)
            }
            Stop::Reset { error, reason } => {
                call.forwarded(Code::from_reset(reason), 0, 0);
                Err(Box::new(error))
            }
        }
    }
}

/// `fut`, bounded by the call's deadline: DEADLINE_EXCEEDED if it passes first.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    doing: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Stop> {
    match deadline {
        None => Ok(fut.await),
        Some(at) => tokio::time::timeout_at(at, fut).await.map_err(|_| deadline_passed(doing)),
    }
}

fn deadline_passed(doing: &str) -> Stop {
    Stop::refused(
        Refusal::DeadlineExceeded,
        Code::DeadlineExceeded,
        format!("the call's deadline (grpc-timeout) passed while the gateway was {doing}"),
    )
}

/// Every value of a header, as the core reads them. A value that is not UTF-8 stands in as a
/// control character, which the core refuses as a malformed token without asking Auth2.
fn header_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a str> {
    headers.get_all(name).iter().map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("\u{7f}")).collect()
}

/// Removes what concerns only the connection to the caller (RFC 9110 §7.6.1); `te: trailers`,
/// which gRPC requires, stays.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers.remove(CONNECTION) {
        for name in listed.to_str().unwrap_or("").split(',') {
            headers.remove(name.trim());
        }
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    for name in [TRANSFER_ENCODING, UPGRADE, PROXY_AUTHORIZATION] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_go_te_trailers_stays() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-kbase-token", "t"),
            ("grpc-timeout", "5S"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["grpc-timeout", "te", "x-kbase-token"]);
        h.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(TE).is_none());
    }

    #[test]
    fn non_utf8_header_values_count_as_bad_characters() {
        let mut h = HeaderMap::new();
        h.append(X_KBASE_TOKEN, HeaderValue::from_bytes(b"abc\xff").unwrap());
        h.append(X_KBASE_TOKEN, HeaderValue::from_static("plain"));
        assert_eq!(header_values(&h, &X_KBASE_TOKEN), ["\u{7f}", "plain"]);
    }
}
