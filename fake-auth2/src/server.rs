//! The Auth2 side: routing, the token endpoints with their fault modes, and the listener
//! task that closes and rebinds the listening socket for the `refuse` fault.

use crate::model::{now_ms, Fault, MeReply, TokenReply};
use crate::respond::{json, with_type, Body};
use crate::state::{Applied, State, Stored};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub(crate) const VERSION: &str = "0.7.2-fake";

/// What nginx answers when its upstream is down.
pub(crate) const NGINX_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// A JSON body cut off mid-field.
pub(crate) const MALFORMED_BODY: &str = r#"{"user": "alice", "expi"#;

/// What nginx (or a WAF in front of Auth2) answers to a request it will not pass on.
pub(crate) const NGINX_400: &str = "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n\
<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// A 400 in a gateway's own JSON format: valid JSON, but not Auth2's `{"error": {...}}` object.
pub(crate) const GATEWAY_400_JSON: &str = r#"{"message":"Bad Request","code":"REQUEST_BLOCKED","status":400}"#;

/// Binds with SO_REUSEADDR so that leaving `refuse` can rebind the same port even while
/// connections we closed sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Rebinding can race with the kernel releasing the old socket; retry briefly.
async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..100 {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| io::Error::other("rebind failed")))
}

/// Serves one connection with `handler`; shared by the Auth2 and control servers.
pub(crate) fn spawn_connection<F, Fut, E>(conns: &mut JoinSet<()>, stream: TcpStream, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    spawn_maybe_tls(conns, stream, None, handler);
}

/// Like [`spawn_connection`], with a TLS handshake first when `tls` is set. A failed handshake
/// (a client that does not trust the certificate, say) just ends the connection.
pub(crate) fn spawn_maybe_tls<F, Fut, E>(
    conns: &mut JoinSet<()>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    // Small request/response exchanges: Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    conns.spawn(async move {
        match tls {
            None => serve(stream, handler).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                if let Ok(Ok(tls_stream)) = handshake.await {
                    serve(tls_stream, handler).await;
                }
            }
        }
    });
}

async fn serve<S, F, Fut, E>(stream: S, handler: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handler)).await;
}

/// Accept errors such as EMFILE are transient; pause instead of spinning.
pub(crate) async fn accept_error_pause() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Owns the Auth2 listening socket and every connection on it, so that `refuse` can close
/// the socket and drop all open connections, and leaving `refuse` can rebind.
pub(crate) async fn run(state: Arc<State>, addr: SocketAddr, initial: TcpListener, tls: Option<TlsAcceptor>) {
    let mut faults = state.fault_tx.subscribe();
    let mut listener = Some(initial);
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut acked: Option<u64> = None;
    loop {
        let (epoch, refuse) = {
            let s = faults.borrow_and_update();
            (s.epoch, s.fault == Fault::Refuse)
        };
        if acked != Some(epoch) {
            let mut error = None;
            if refuse {
                listener = None; // closed: connects now get ECONNREFUSED
                conns.abort_all();
                // Wait until every connection task is really gone (its socket closed)
                // before acknowledging, so callers can rely on it.
                while conns.join_next().await.is_some() {}
            } else if listener.is_none() {
                match rebind(addr).await {
                    Ok(l) => listener = Some(l),
                    Err(e) => error = Some(format!("rebinding {addr}: {e}")),
                }
            }
            acked = Some(epoch);
            state.applied_tx.send_replace(Applied { epoch, listening: listener.is_some(), error });
        }
        match &listener {
            Some(l) => tokio::select! {
                changed = faults.changed() => if changed.is_err() { return },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => {
                        let st = state.clone();
                        spawn_maybe_tls(&mut conns, stream, tls.clone(), move |req| handle(st.clone(), req, Origin::Auth2));
                    }
                    Err(_) => accept_error_pause().await,
                },
            },
            None => {
                if faults.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The redirect target: a second plain-HTTP listener that serves the same API with the same
/// tokens (never a fault), so that a client following the `redirect` fault would get a real
/// answer. Every request it receives is counted.
pub(crate) async fn run_redirect_target(state: Arc<State>, listener: TcpListener) {
    accept_forever(listener, move |req| handle(state.clone(), req, Origin::RedirectTarget)).await
}

/// Accepts on `listener` until the task is aborted, serving each connection with `handler`
/// (the control API and the redirect target; the Auth2 port has its own loop for `refuse`).
pub(crate) async fn accept_forever<F, Fut, E>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn_connection(&mut conns, stream, handler.clone()),
                Err(_) => accept_error_pause().await,
            },
        }
    }
}

/// Which listener a request arrived on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Auth2,
    RedirectTarget,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Root,
    Token,
    Me,
    NotFound,
}

fn route(prefix: &str, path: &str) -> Route {
    match path.strip_prefix(prefix) {
        Some("") | Some("/") => Route::Root,
        Some("/api/V2/token") => Route::Token,
        Some("/api/V2/me") => Route::Me,
        _ => Route::NotFound,
    }
}

/// Auth2's error envelope.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    httpcode: u16,
    httpstatus: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    appcode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apperror: Option<&'a str>,
    message: String,
    callid: String,
    time: i64,
}

fn error(state: &State, status: StatusCode, app: Option<(u32, &str)>, message: String) -> Response<Body> {
    let body = ErrorBody {
        error: ErrorInner {
            httpcode: status.as_u16(),
            httpstatus: status.canonical_reason().unwrap_or(""),
            appcode: app.map(|a| a.0),
            apperror: app.map(|a| a.1),
            message,
            callid: state.new_callid(),
            time: now_ms(),
        },
    };
    json(status, &body)
}

fn app_error(state: &State, status: StatusCode, code: u32, name: &str) -> Response<Body> {
    error(state, status, Some((code, name)), format!("{code} {name}"))
}

#[derive(Serialize)]
struct RootReply {
    servicename: &'static str,
    version: &'static str,
    servertime: i64,
}

/// The error a handler returns to make hyper drop the connection without answering.
fn drop_connection() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "fault mode refuse")
}

async fn handle(state: Arc<State>, req: Request<Incoming>, origin: Origin) -> Result<Response<Body>, io::Error> {
    if origin == Origin::RedirectTarget {
        state.count_redirected();
    }
    let route = route(&state.prefix, req.uri().path());
    if route == Route::NotFound {
        return Ok(error(&state, StatusCode::NOT_FOUND, None, "HTTP 404 Not Found".into()));
    }
    if req.method() != Method::GET {
        let msg = "HTTP 405 Method Not Allowed".to_string();
        return Ok(error(&state, StatusCode::METHOD_NOT_ALLOWED, None, msg));
    }
    match route {
        Route::Root => Ok(json(
            StatusCode::OK,
            &RootReply { servicename: "Authentication Service", version: VERSION, servertime: now_ms() },
        )),
        _ => {
            let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
            token_endpoint(&state, route, req.headers(), origin, path_and_query).await
        }
    }
}

/// The raw `Authorization` value (Auth2 takes the token itself, no scheme), trimmed;
/// `None` when missing or blank.
fn header_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?;
    let t = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
    (!t.is_empty()).then_some(t)
}

async fn token_endpoint(
    state: &State,
    route: Route,
    headers: &HeaderMap,
    origin: Origin,
    path_and_query: &str,
) -> Result<Response<Body>, io::Error> {
    let token = header_token(headers);
    // The redirect target counts on its own (`redirected`) and never applies a fault.
    let fault = match origin {
        Origin::Auth2 => {
            state.count(token.as_deref());
            state.fault()
        }
        Origin::RedirectTarget => Fault::None,
    };
    match &fault {
        // Only reached in the moment before the listener task closes everything.
        Fault::Refuse => return Err(drop_connection()),
        Fault::Delay(d) => tokio::time::sleep(*d).await,
        Fault::Status503 => {
            let msg = "fake-auth2 fault mode status503".to_string();
            return Ok(error(state, StatusCode::SERVICE_UNAVAILABLE, None, msg));
        }
        Fault::Html502 => return Ok(with_type(StatusCode::BAD_GATEWAY, "text/html", NGINX_502)),
        Fault::Malformed => return Ok(with_type(StatusCode::OK, "application/json", MALFORMED_BODY)),
        Fault::Status400Html => return Ok(with_type(StatusCode::BAD_REQUEST, "text/html", NGINX_400)),
        Fault::Status400Json => return Ok(with_type(StatusCode::BAD_REQUEST, "application/json", GATEWAY_400_JSON)),
        Fault::DropToken => return Ok(answer_for(state, route, None, true)),
        Fault::Redirect => {
            let location = format!("http://{}{}", state.redirect_target, path_and_query);
            let mut r = with_type(StatusCode::FOUND, "text/html", "<html><body>Moved</body></html>");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(LOCATION, v);
            }
            return Ok(r);
        }
        Fault::NoUser => {
            // A broken server: answers without checking the token, and without `user`.
            let stored = token
                .as_deref()
                .and_then(|t| state.lookup(t))
                .unwrap_or_else(|| placeholder(state, token.as_deref().unwrap_or("")));
            return Ok(reply(state, route, &stored, false));
        }
        Fault::None | Fault::IgnoreExpiry | Fault::LateAnswer(_) => {}
    }
    let answer = answer_for(state, route, token.as_deref(), fault != Fault::IgnoreExpiry);
    if let Fault::LateAnswer(d) = fault {
        tokio::time::sleep(d).await;
    }
    Ok(answer)
}

/// Auth2's answer for `token` as of now.
fn answer_for(state: &State, route: Route, token: Option<&str>, check_expiry: bool) -> Response<Body> {
    let Some(token) = token else {
        return app_error(state, StatusCode::BAD_REQUEST, 10010, "No authentication token");
    };
    let now = now_ms();
    match state.lookup(token) {
        Some(s) if !s.revoked && (!check_expiry || s.expires > now) => reply(state, route, &s, true),
        _ => app_error(state, StatusCode::UNAUTHORIZED, 10020, "Invalid token"),
    }
}

/// Token data for the `nouser` fault when the token is unknown.
fn placeholder(state: &State, token: &str) -> Stored {
    let now = now_ms();
    Stored {
        entry: crate::model::TokenEntry::new(token, ""),
        id: state.new_uuid(),
        created: now,
        expires: now + crate::model::DEFAULT_EXPIRES_IN_MS,
        revoked: false,
    }
}

fn reply(state: &State, route: Route, s: &Stored, with_user: bool) -> Response<Body> {
    let e = &s.entry;
    let user = with_user.then_some(e.user.as_str());
    if route == Route::Me {
        let email;
        let body = MeReply {
            user,
            display: e.display.as_deref().unwrap_or(&e.user),
            email: match &e.email {
                Some(m) => m,
                None => {
                    email = format!("{}@example.org", e.user);
                    &email
                }
            },
            customroles: &e.customroles,
            roles: [],
            idents: [],
            policyids: [],
            created: s.created,
            lastlogin: s.created,
            local: false,
        };
        return json(StatusCode::OK, &body);
    }
    let body = TokenReply {
        ty: "Login",
        id: &s.id,
        expires: s.expires,
        created: s.created,
        name: e.name.as_deref(),
        user,
        custom: &e.custom,
        cachefor: e.cachefor.unwrap_or(state.default_cachefor),
        mfa: e.mfa.as_deref(),
    };
    json(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing() {
        assert!(route("", "/") == Route::Root);
        assert!(route("", "/api/V2/token") == Route::Token);
        assert!(route("", "/api/V2/me") == Route::Me);
        assert!(route("", "//api/V2/token") == Route::NotFound);
        assert!(route("", "/api/V2/token/") == Route::NotFound);
        assert!(route("/services/auth", "/services/auth") == Route::Root);
        assert!(route("/services/auth", "/services/auth/") == Route::Root);
        assert!(route("/services/auth", "/services/auth/api/V2/token") == Route::Token);
        assert!(route("/services/auth", "/api/V2/token") == Route::NotFound);
        assert!(route("/services/auth", "/services/authx") == Route::NotFound);
    }

    #[test]
    fn header_token_trims_and_rejects_blank() {
        let mut h = HeaderMap::new();
        assert_eq!(header_token(&h), None);
        h.insert(AUTHORIZATION, "  ".parse().unwrap());
        assert_eq!(header_token(&h), None);
        h.insert(AUTHORIZATION, " T1 ".parse().unwrap());
        assert_eq!(header_token(&h).as_deref(), Some("T1"));
    }
}
