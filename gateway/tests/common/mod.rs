//! Real parts for the gateway's tests: an HTTP/2 gRPC backend on loopback (a stand-in for a
//! Spark Connect pod that answers every call shape, with trailers), a gRPC client that speaks
//! HTTP/2 frames, the repository's fake Auth2, and the gateway itself, in process.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

pub use fake_auth2::{FakeAuth2, FakeConfig, Fault, TokenEntry};
use kbase_spark_gateway::server::{self, Running};
use kbase_spark_gateway::settings::{self, Command};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// One length-prefixed gRPC message.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// The messages in a run of gRPC frames.
pub fn unframe(mut data: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        data.advance(1);
        let len = data.get_u32() as usize;
        out.push(data.split_to(len));
    }
    assert!(data.is_empty(), "trailing bytes after the last message");
    out
}

fn boxed<B>(b: B) -> TestBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

pub fn empty() -> TestBody {
    boxed(Empty::<Bytes>::new())
}

fn ok_trailers(extra: &[(&'static str, String)]) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    for (k, v) in extra {
        t.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    t
}

/// What a backend saw; tests read it.
#[derive(Default)]
pub struct BackendLog {
    pub calls: AtomicUsize,
    /// Streams that ended because the caller went away (the response body dropped unfinished).
    pub cancelled: AtomicUsize,
    /// Response bytes handed to HTTP/2 (which takes them only as flow control allows).
    pub bytes_sent: AtomicU64,
    /// TCP connections accepted, and those still open.
    pub connections: AtomicUsize,
    pub open_connections: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    connection_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl BackendLog {
    /// Drops every open connection at once, as a pod that dies does.
    pub fn kill_connections(&self) {
        for t in self.connection_tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A gRPC server on loopback, named so a test can tell which one answered. Methods (any service):
/// - `Unary` (and any unknown method): echoes the request's messages, trailers OK;
/// - `Headers`: one message listing the request's headers (`name: value` lines);
/// - `ServerStream`: request `"N,SIZE"`, answers N messages of SIZE bytes;
/// - `ClientStream`: counts the request's messages and bytes, answers `"count,bytes"`;
/// - `Bidi`: echoes each request frame as it arrives;
/// - `Fail`: trailers-only FAILED_PRECONDITION;
/// - `Reset`: one message, then RST_STREAM(CANCEL);
/// - `Forever`: a message every 10 ms until the caller goes away;
/// - `Slow`: request `"N,MS"`: N messages, MS apart, then OK.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub log: Arc<BackendLog>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_with(name, |_| {}).await
    }

    /// On a given address (a pod that comes back where it was).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Backend {
        Backend::serve(name, TcpListener::bind(addr).await.unwrap(), |_| {})
    }

    /// With the server's HTTP/2 settings adjusted by `tune`.
    pub async fn start_with(
        name: &str,
        tune: impl FnOnce(&mut hyper::server::conn::http2::Builder<TokioExecutor>),
    ) -> Backend {
        Backend::serve(name, TcpListener::bind("127.0.0.1:0").await.unwrap(), tune)
    }

    fn serve(
        name: &str,
        listener: TcpListener,
        tune: impl FnOnce(&mut hyper::server::conn::http2::Builder<TokioExecutor>),
    ) -> Backend {
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(BackendLog::default());
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new());
        tune(&mut http);
        let (name2, log2) = (name.to_owned(), Arc::clone(&log));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                // As grpc-java (the pods) does: no Nagle delay on small frames.
                let _ = tcp.set_nodelay(true);
                log2.connections.fetch_add(1, Ordering::SeqCst);
                log2.open_connections.fetch_add(1, Ordering::SeqCst);
                let (name, log, http) = (name2.clone(), Arc::clone(&log2), http.clone());
                let task = tokio::spawn(async move {
                    let svc = {
                        let (name, log) = (name.clone(), Arc::clone(&log));
                        service_fn(move |req| {
                            let (name, log) = (name.clone(), Arc::clone(&log));
                            async move { Ok::<_, Infallible>(answer(&name, &log, req).await) }
                        })
                    };
                    struct Open(Arc<BackendLog>);
                    impl Drop for Open {
                        fn drop(&mut self) {
                            self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _open = Open(Arc::clone(&log));
                    let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                });
                log2.connection_tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Backend { name: name.to_owned(), addr, log, task }
    }
}

/// Increments a counter when dropped before `done` is set: the caller went away mid-stream.
struct CancelGuard {
    log: Arc<BackendLog>,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.log.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn answer(name: &str, log: &Arc<BackendLog>, req: Request<Incoming>) -> Response<TestBody> {
    log.calls.fetch_add(1, Ordering::SeqCst);
    *log.last_headers.lock().unwrap() = Some(req.headers().clone());
    let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let head = |body: TestBody| {
        let mut res = Response::new(body);
        res.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        res.headers_mut().insert("x-backend", HeaderValue::from_str(name).unwrap());
        res
    };
    let trailers = ok_trailers(&[("x-backend-trailer", name.to_owned())]);
    match method.as_str() {
        "Headers" => {
            let mut listing = String::new();
            for (k, v) in req.headers() {
                listing.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<bytes>")));
            }
            listing.push_str(&format!(":authority: {}\n", req.uri().authority().map(|a| a.as_str()).unwrap_or("")));
            let frames = [Ok::<_, BoxError>(Frame::data(frame(listing.as_bytes()))), Ok(Frame::trailers(trailers))];
            head(boxed(StreamBody::new(stream::iter(frames))))
        }
        "ServerStream" | "Slow" | "Forever" => {
            let request = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let text = unframe(request).first().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
            let mut nums = text.split(',').map(|n| n.trim().parse::<u64>().unwrap_or(0));
            let (a, b) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
            let (count, size, gap) = match method.as_str() {
                "ServerStream" => (a, b as usize, Duration::ZERO),
                "Slow" => (a, 8, Duration::from_millis(b)),
                _ => (u64::MAX, 8, Duration::from_millis(10)),
            };
            let guard = CancelGuard { log: Arc::clone(log), done: false };
            let log = Arc::clone(log);
            let frames = stream::unfold((0u64, guard, Some(trailers)), move |(i, mut guard, trailers)| {
                let log = Arc::clone(&log);
                async move {
                    if i < count {
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                        let f = frame(&vec![(i % 251) as u8; size]);
                        log.bytes_sent.fetch_add(f.len() as u64, Ordering::SeqCst);
                        Some((Ok::<_, BoxError>(Frame::data(f)), (i + 1, guard, trailers)))
                    } else {
                        guard.done = true;
                        trailers.map(|t| (Ok(Frame::trailers(t)), (i, guard, None)))
                    }
                }
            });
            head(boxed(StreamBody::new(frames)))
        }
        "ClientStream" => {
            let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let messages = unframe(body);
            let bytes: usize = messages.iter().map(|m| m.len()).sum();
            let reply = frame(format!("{},{}", messages.len(), bytes).as_bytes());
            let frames = [Ok::<_, BoxError>(Frame::data(reply)), Ok(Frame::trailers(trailers))];
            head(boxed(StreamBody::new(stream::iter(frames))))
        }
        "Bidi" => {
            let incoming = req.into_body();
            let frames = stream::unfold((incoming, Some(trailers)), |(mut incoming, trailers)| async move {
                let trailers = trailers?;
                loop {
                    match incoming.frame().await {
                        Some(Ok(f)) => match f.into_data() {
                            Ok(d) => return Some((Ok::<_, BoxError>(Frame::data(d)), (incoming, Some(trailers)))),
                            Err(_) => continue,
                        },
                        Some(Err(e)) => return Some((Err(e.into()), (incoming, None))),
                        None => return Some((Ok(Frame::trailers(trailers)), (incoming, None))),
                    }
                }
            });
            head(boxed(StreamBody::new(frames)))
        }
        "Fail" => {
            let mut res = head(empty());
            res.headers_mut().insert("grpc-status", HeaderValue::from_static("9"));
            res.headers_mut().insert("grpc-message", HeaderValue::from_static("backend%20says%20no"));
            res
        }
        "Reset" => {
            // A reset discards what the peer has not read yet: give the message time to arrive.
            let frames = stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok::<_, BoxError>(Frame::data(frame(b"before the reset"))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Err(Box::new(h2::Error::from(h2::Reason::CANCEL)) as BoxError), 2))
                    }
                    _ => None,
                }
            });
            head(boxed(StreamBody::new(frames)))
        }
        _ => {
            let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let frames = [Ok::<_, BoxError>(Frame::data(body)), Ok(Frame::trailers(trailers))];
            head(boxed(StreamBody::new(stream::iter(frames))))
        }
    }
}

/// A call's outcome as a gRPC client sees it.
#[derive(Debug)]
pub struct Reply {
    pub http: StatusCode,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    pub trailers: HeaderMap,
}

impl Reply {
    /// The gRPC status: from the trailers, or from the headers of a trailers-only response.
    pub fn status(&self) -> u32 {
        let v = self.trailers.get("grpc-status").or_else(|| self.headers.get("grpc-status")).expect("a grpc-status");
        v.to_str().unwrap().parse().unwrap()
    }

    /// The decoded `grpc-message`.
    pub fn message(&self) -> String {
        let v = self.trailers.get("grpc-message").or_else(|| self.headers.get("grpc-message"));
        v.map(|v| percent_decode(v.to_str().unwrap())).unwrap_or_default()
    }

    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").map(|v| v.to_str().unwrap())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub const OK: u32 = 0;
pub const CANCELLED: u32 = 1;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const PERMISSION_DENIED: u32 = 7;
pub const FAILED_PRECONDITION: u32 = 9;
pub const UNIMPLEMENTED: u32 = 12;
pub const UNAVAILABLE: u32 = 14;
pub const UNAUTHENTICATED: u32 = 16;

/// An HTTP/2 (h2c) connection to the gateway, speaking gRPC frames.
#[derive(Clone)]
pub struct Client {
    send: hyper::client::conn::http2::SendRequest<TestBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, |_| {}).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        tune: impl FnOnce(&mut hyper::client::conn::http2::Builder<TokioExecutor>),
    ) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // As gRPC clients do: no Nagle delay on small frames.
        tcp.set_nodelay(true).unwrap();
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        tune(&mut b);
        let (send, conn) = b.handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        Client { send }
    }

    /// Over TLS, trusting `ca_pem`, offering ALPN h2.
    pub async fn connect_tls(addr: SocketAddr, ca_pem: &str, name: &str) -> Client {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        let (send, conn) = b.handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        Client { send }
    }

    /// Sends a request as it is.
    pub async fn raw(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        self.send.send_request(req).await.unwrap()
    }

    /// Starts a call; the response's body streams on.
    pub async fn start(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("http://gateway.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send.clone().send_request(req.body(body).unwrap()).await
    }

    /// A call with one request message, read to its end.
    pub async fn unary(&self, path: &str, headers: &[(&str, &str)], message: &[u8]) -> Reply {
        let res = self.start(path, headers, boxed(Full::new(frame(message)))).await.expect("response headers");
        read_reply(res).await.expect("a complete response")
    }
}

/// Reads a response to its end.
pub async fn read_reply(res: Response<Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = res.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Ok(Reply { http: parts.status, headers: parts.headers, messages: unframe(collected.to_bytes()), trailers })
}

/// A request body of one message.
pub fn boxed_frame(payload: &[u8]) -> TestBody {
    boxed(Full::new(frame(payload)))
}

/// A request body the test writes to, frame by frame, while the call runs.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let frames =
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx)) });
    (tx, boxed(StreamBody::new(frames)))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token of `user`, created with MFA (the gateway requires it by default).
pub fn mfa_token(token: &str, user: &str) -> TokenEntry {
    TokenEntry::new(token, user).mfa("Used")
}

pub async fn fake(tokens: Vec<TokenEntry>) -> FakeAuth2 {
    let mut cfg = FakeConfig::new();
    for t in tokens {
        cfg = cfg.token(t);
    }
    FakeAuth2::start(cfg).await.expect("fake Auth2 starts")
}

/// The pod host the default template names for `label` (an escaped user name).
pub fn pod_host(label: &str) -> String {
    format!("jupyter-{label}.jupyterhub-prod.svc.cluster.local")
}

/// The environment of a gateway on loopback ports chosen by the system, against `fake`, with
/// each `(label, backend)` reachable as that label's pod; `extra` adds or replaces variables.
pub fn gateway_env(fake: &FakeAuth2, pods: &[(&str, &Backend)], extra: &[(&str, &str)]) -> HashMap<String, String> {
    let resolve: Vec<String> = pods.iter().map(|(label, b)| format!("{}:15002={}", pod_host(label), b.addr)).collect();
    let mut env: HashMap<String, String> = [
        ("KBASE_AUTH_URL", fake.url()),
        ("PROXY_LISTEN_PORT", "0".into()),
        ("GATEWAY_ADMIN_PORT", "0".into()),
        ("GATEWAY_BIND", "127.0.0.1".into()),
        ("GATEWAY_RESOLVE", resolve.join(",")),
        ("GATEWAY_AUTH_REQUEST_TIMEOUT", "2s".into()),
        ("GATEWAY_NEW_TOKENS_PER_SECOND", "100000".into()),
        ("GATEWAY_NEW_TOKENS_BURST", "100000".into()),
        ("GATEWAY_FAIL_FAST_THRESHOLD", "0".into()),
        ("GATEWAY_DRAIN_SECONDS", "5".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

/// The gateway, in this process, on the test's runtime.
pub async fn gateway(env: HashMap<String, String>) -> Running {
    let cfg = match settings::parse(Vec::new(), &env).expect("valid settings") {
        Command::Run(cfg) => *cfg,
        other => panic!("{other:?}"),
    };
    server::start(cfg).await.expect("the gateway starts")
}

/// The admin port's answer to `GET path`: status and body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri(path).header("host", "admin").body(Empty::<Bytes>::new()).unwrap();
    let res = send.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of one series in Prometheus text (`name{labels}` exactly as written), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Waits until `f` holds, failing after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port that never completes a connection: its accept queue is full, so the kernel
/// drops new SYNs and a dial waits until its own timeout (a pod that does not answer).
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

pub async fn blackhole() -> Blackhole {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
        queued.push(s);
        assert!(queued.len() < 64, "the accept queue does not fill");
    }
    Blackhole { addr, _listener: listener, _queued: queued }
}

/// A loopback port nothing listens on (connections refused).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
