//! The KBase Auth2 client: `GET {root}api/V2/token` (and `api/V2/me` when custom roles are
//! required), classified into *the token is bad* versus *the service could not answer*.
//!
//! The distinction matters: an invalid token is the caller's problem (UNAUTHENTICATED, cached
//! briefly), an unavailable service is ours (UNAVAILABLE, never cached, never allow).

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::Certificate;
use serde::Deserialize;
use thiserror::Error;

use crate::settings::{ConfigError, Settings, KEY_CA_BUNDLE};

/// Largest Auth2 response body read; a real one is well under 2 KiB.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What Auth2 says about a token's MFA (`mfa` field; absent on older servers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mfa {
    Used,
    NotUsed,
    Unknown,
    Absent,
}

impl Mfa {
    fn parse(raw: Option<&str>) -> Mfa {
        match raw {
            Some("Used") => Mfa::Used,
            Some("NotUsed") => Mfa::NotUsed,
            Some(_) => Mfa::Unknown,
            None => Mfa::Absent,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mfa::Used => "Used",
            Mfa::NotUsed => "NotUsed",
            Mfa::Unknown => "Unknown",
            Mfa::Absent => "not reported",
        }
    }
}

/// The identity behind a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Box<str>,
    /// Token expiry, epoch milliseconds.
    pub expires_ms: i64,
    pub mfa: Mfa,
    /// Only filled when roles are required (from `/api/V2/me`).
    pub custom_roles: Vec<Box<str>>,
}

/// A successful token lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub identity: Identity,
    /// Auth2's suggested cache time (`cachefor`), if it sent one.
    pub cache_for: Option<Duration>,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Auth2Error {
    /// Auth2 itself rejected the token: a 401 with its error JSON.
    #[error("Auth2 rejected the token")]
    Invalid,
    /// The service failed: no connection, a timeout, a 5xx. What the fail-fast breaker counts.
    #[error("{0}")]
    ServiceFailure(String),
    /// Something answered, but not with an answer we can trust (not JSON, no `user`, a 400
    /// from a proxy, Auth2's own 400 "no token" although we sent one, a redirect, an oversized
    /// body). Says nothing about the token, and nothing about the service's health either.
    #[error("{0}")]
    BadAnswer(String),
}

impl Auth2Error {
    /// Whether this answer condemns the token (as opposed to "could not be checked").
    pub fn is_invalid(&self) -> bool {
        matches!(self, Auth2Error::Invalid)
    }
}

/// Auth2's error object (`{"error":{"httpcode":401,"appcode":10020,…}}`): the only proof that
/// a 401 comes from Auth2 and not from a proxy or firewall in front of it.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    httpcode: u16,
    appcode: u32,
}

/// Auth2's appcode for a request without a token (HTTP 400). Every request we send carries one,
/// so this answer means that something between us and Auth2 removed the header.
const APPCODE_NO_TOKEN: u32 = 10010;

#[derive(Deserialize)]
struct TokenBody {
    user: Option<String>,
    expires: Option<i64>,
    cachefor: Option<i64>,
    mfa: Option<String>,
}

#[derive(Deserialize)]
struct MeBody {
    user: Option<String>,
    #[serde(default)]
    customroles: Vec<String>,
}

pub struct Auth2Client {
    http: reqwest::Client,
    token_url: String,
    me_url: String,
    request_timeout: Duration,
}

impl Auth2Client {
    pub fn new(s: &Settings) -> Result<Auth2Client, ConfigError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(s.connect_timeout)
            .timeout(s.request_timeout)
            // Auth2 never redirects; following one would send the token somewhere unexpected.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .user_agent(concat!("kbase-spark-auth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &s.ca_bundle {
            let invalid = |problem: String| ConfigError::Invalid { key: KEY_CA_BUNDLE.into(), problem };
            let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read '{}': {e}", path.display())))?;
            let certs = Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("'{}' is not a PEM certificate bundle: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(invalid(format!("'{}' holds no PEM certificate", path.display())));
            }
            builder = builder.tls_certs_merge(certs);
        }
        // Fails e.g. when the system has no CA certificates at all: then nothing could be trusted.
        let http = builder.build().map_err(|e| ConfigError::Invalid {
            key: KEY_CA_BUNDLE.into(),
            problem: format!(
                "cannot set up the HTTPS client for Auth2 ({}); if this system has no CA certificates, install \
                 them (Debian/Ubuntu: ca-certificates) or name a PEM bundle in {KEY_CA_BUNDLE}",
                error_chain(&e)
            ),
        })?;
        Ok(Auth2Client {
            http,
            token_url: format!("{}api/V2/token", s.auth_url),
            me_url: format!("{}api/V2/me", s.auth_url),
            request_timeout: s.request_timeout,
        })
    }

    /// Looks the (raw, already validated) token up; with `with_roles`, also fetches the user's
    /// custom roles.
    pub async fn lookup(&self, token: &str, with_roles: bool) -> Result<TokenInfo, Auth2Error> {
        let (status, body) = self.get(&self.token_url, token).await?;
        let mut info = parse_token_answer(status, &body)?;
        if with_roles {
            let (status, body) = self.get(&self.me_url, token).await?;
            info.identity.custom_roles = parse_me_answer(status, &body, &info.identity.user)?;
        }
        Ok(info)
    }

    /// One GET with the token header: status and (size-capped) body, or why there is none.
    async fn get(&self, url: &str, token: &str) -> Result<(u16, Vec<u8>), Auth2Error> {
        let started = Instant::now();
        let request = self.http.get(url).header(ACCEPT, "application/json").header(AUTHORIZATION, token);
        // reqwest's own timeout covers the whole exchange; this one also bounds the body read.
        let exchange = async {
            let response = request.send().await.map_err(|e| unavailable_transport(&e))?;
            let status = response.status().as_u16();
            Ok::<_, Auth2Error>((status, read_capped(response).await?))
        };
        tokio::time::timeout(self.request_timeout, exchange).await.map_err(|_| {
            Auth2Error::ServiceFailure(format!("Auth2 timed out: no answer within {:?}", started.elapsed()))
        })?
    }
}

/// Classifies an `/api/V2/token` answer. Anything but a 200 with `user` and `expires`, or
/// Auth2's own rejection, is a failure to check: fail closed without blaming the token.
pub fn parse_token_answer(status: u16, body: &[u8]) -> Result<TokenInfo, Auth2Error> {
    let body: TokenBody = classify(status, body)?;
    let user = body
        .user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Auth2Error::BadAnswer("Auth2 token answer has no 'user'".into()))?;
    let expires_ms = body.expires.ok_or_else(|| Auth2Error::BadAnswer("Auth2 token answer has no 'expires'".into()))?;
    let cache_for = body.cachefor.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let identity =
        Identity { user: user.into(), expires_ms, mfa: Mfa::parse(body.mfa.as_deref()), custom_roles: Vec::new() };
    Ok(TokenInfo { identity, cache_for })
}

/// Classifies an `/api/V2/me` answer into the custom roles of `user`.
pub fn parse_me_answer(status: u16, body: &[u8], user: &str) -> Result<Vec<Box<str>>, Auth2Error> {
    let me: MeBody = classify(status, body)?;
    if me.user.as_deref() != Some(user) {
        return Err(Auth2Error::BadAnswer("Auth2 'me' answer names a different user".into()));
    }
    Ok(me.customroles.into_iter().map(Into::into).collect())
}

fn classify<T: for<'de> Deserialize<'de>>(status: u16, body: &[u8]) -> Result<T, Auth2Error> {
    match status {
        // serde's message can quote the body; only its position goes into the log.
        200 => serde_json::from_slice(body).map_err(|e| {
            Auth2Error::BadAnswer(format!(
                "Auth2 answered 200 with a body that is not the expected JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        }),
        400 | 401 => {
            let own = serde_json::from_slice::<ErrorBody>(body).ok().filter(|b| b.error.httpcode == status);
            match own {
                Some(_) if status == 401 => Err(Auth2Error::Invalid),
                Some(b) if b.error.appcode == APPCODE_NO_TOKEN => Err(Auth2Error::BadAnswer(
                    "Auth2 answered HTTP 400 'no authentication token' although the request carried one (something \
                     between this server and Auth2 removed the Authorization header?)"
                        .into(),
                )),
                _ => Err(Auth2Error::BadAnswer(format!(
                    "Auth2 answered HTTP {status} without Auth2's own error JSON (from a proxy or firewall in front \
                     of it?)"
                ))),
            }
        }
        300..=399 => Err(Auth2Error::BadAnswer(format!("Auth2 answered HTTP {status}, a redirect (not followed)"))),
        500..=599 => Err(Auth2Error::ServiceFailure(format!("Auth2 answered HTTP {status}"))),
        other => Err(Auth2Error::BadAnswer(format!("Auth2 answered HTTP {other}"))),
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, Auth2Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unavailable_transport(&e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Auth2Error::BadAnswer(format!("Auth2 answer is larger than {MAX_BODY_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error in words, with its cause chain (the token travels in a header, never in the
/// URL, so reqwest's messages cannot contain it).
fn unavailable_transport(e: &reqwest::Error) -> Auth2Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    Auth2Error::ServiceFailure(format!("Auth2 {what}: {}", error_chain(e)))
}

/// An error with its causes, `outer: inner: innermost`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH2_401: &[u8] = br#"{"error":{"httpcode":401,"httpstatus":"Unauthorized","appcode":10020,"apperror":"Invalid token","message":"10020 Invalid token","callid":"1","time":1}}"#;
    const AUTH2_400: &[u8] = br#"{"error":{"httpcode":400,"httpstatus":"Bad Request","appcode":10010,"apperror":"No authentication token","message":"10010 No authentication token: No user token provided","callid":"1","time":1}}"#;

    #[test]
    fn token_answers() {
        let ok = br#"{"type":"Login","id":"x","expires":1700000000000,"created":1,"name":null,"user":"alice","custom":{},"cachefor":300000,"mfa":"Used"}"#;
        let info = parse_token_answer(200, ok).unwrap();
        assert_eq!(&*info.identity.user, "alice");
        assert_eq!(info.identity.expires_ms, 1_700_000_000_000);
        assert_eq!(info.identity.mfa, Mfa::Used);
        assert_eq!(info.cache_for, Some(Duration::from_secs(300)));
        let old = br#"{"expires":5,"user":"bob"}"#;
        let info = parse_token_answer(200, old).unwrap();
        assert_eq!((info.identity.mfa, info.cache_for), (Mfa::Absent, None));
    }

    #[test]
    fn only_auth2s_own_rejections_mean_invalid() {
        assert_eq!(parse_token_answer(401, AUTH2_401), Err(Auth2Error::Invalid));
        // Auth2's own "no token": we always send one, so the header was lost on the way.
        let Err(Auth2Error::BadAnswer(detail)) = parse_token_answer(400, AUTH2_400) else {
            panic!("Auth2's 400 'no token' must be a bad answer")
        };
        assert!(detail.contains("HTTP 400 'no authentication token'"), "{detail}");
        for (status, body) in [
            (400, &b"<html><body>400 Bad Request (WAF)</body></html>"[..]),
            (400, br#"{"message":"bad request"}"#),
            (400, b"{}"),
            (400, AUTH2_401), // httpcode disagrees with the status
            (400, br#"{"error":{"httpcode":400,"appcode":30001,"message":"30001 Illegal input"}}"#), // not "no token"
            (401, b"<html>401 Authorization Required</html>"), // a proxy asking for its own login
            (401, br#"{"error":"unauthorized"}"#),
        ] {
            assert!(
                matches!(parse_token_answer(status, body), Err(Auth2Error::BadAnswer(_))),
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn service_failures_and_bad_answers_are_told_apart() {
        for status in [500, 502, 503, 504] {
            assert!(matches!(parse_token_answer(status, b"<html/>"), Err(Auth2Error::ServiceFailure(_))), "{status}");
        }
        for (status, body) in [
            (200, &b"<html>502</html>"[..]),
            (200, br#"{"user":"alice","expi"#),
            (200, br#"{"expires":5}"#),
            (200, br#"{"user":"","expires":5}"#),
            (200, br#"{"user":"alice"}"#),
            (200, br#"{"user":"alice","expires":"soon"}"#),
            (404, b"{}"),
            (302, b""),
            (307, b""),
        ] {
            assert!(matches!(parse_token_answer(status, body), Err(Auth2Error::BadAnswer(_))), "{status} {body:?}");
        }
    }

    #[test]
    fn bad_json_detail_does_not_quote_the_body() {
        let Err(Auth2Error::BadAnswer(detail)) =
            parse_token_answer(200, br#"{"user":"alice","expires":"SECRETVALUE"}"#)
        else {
            panic!("expected a bad answer")
        };
        assert!(!detail.contains("SECRETVALUE"), "{detail}");
    }

    #[test]
    fn me_answers() {
        let me = br#"{"user":"alice","display":"A","customroles":["R1","R2"],"roles":[]}"#;
        assert_eq!(parse_me_answer(200, me, "alice").unwrap(), vec!["R1".into(), "R2".into()]);
        assert!(matches!(parse_me_answer(200, me, "bob"), Err(Auth2Error::BadAnswer(_))));
        assert_eq!(parse_me_answer(401, AUTH2_401, "alice"), Err(Auth2Error::Invalid));
        assert!(matches!(parse_me_answer(401, b"{}", "alice"), Err(Auth2Error::BadAnswer(_))));
    }
}
