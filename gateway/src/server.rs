//! Start-up, the listening ports and the drain: builds the gateway from its [`Config`], serves
//! HTTP/2 (h2c with prior knowledge, as an ingress hands it over, or TLS with ALPN `h2`) and the
//! admin port, and on shutdown stops accepting, lets live calls finish up to the drain time, and
//! returns.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use kbase_spark_auth::Authenticator;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::grpc::{trailers_only, Code};
use crate::health::{Lifecycle, Phase};
use crate::observe::Observe;
use crate::pool::Pool;
use crate::proxy::Gateway;
use crate::relay::{empty, BoxError, DownBody};
use crate::route::{Resolver, Router};
use crate::settings::{
    Bind, Config, TlsFiles, GATEWAY_ADMIN_PORT, GATEWAY_TLS_CERT, GATEWAY_TLS_KEY, PROGRAM, PROXY_LISTEN_PORT, VERSION,
};

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway that serves until [`Running::shutdown`].
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<()>,
    admin: JoinHandle<()>,
}

/// Builds everything and starts serving; the error names the setting at fault.
pub async fn start(cfg: Config) -> Result<Running, String> {
    tracing::info!("{PROGRAM} {VERSION} starting: {}", cfg.describe());
    let auth = Arc::new(Authenticator::new(cfg.core.clone()).map_err(|e| e.to_string())?);
    tracing::info!("{}", auth.describe());
    for warning in auth.warnings() {
        tracing::warn!("{warning}");
    }
    let router = Router::new(&cfg.route)?;
    if !router.is_per_user() {
        tracing::warn!(
            "SERVICE_TEMPLATE '{}' has no {{username}}: every user's calls go to the same server",
            cfg.route.template
        );
    }
    let observe = Arc::new(Observe::new(Arc::clone(&auth)));
    let pool = Pool::new(cfg.pool.clone(), Resolver::new(&cfg.route.overrides), Arc::clone(&observe));
    pool.start_sweeper();
    let lifecycle = Arc::new(Lifecycle::default());
    let tls = cfg.tls.as_ref().map(acceptor).transpose()?;

    let admin_listener = bind(cfg.admin_bind, cfg.admin_port, GATEWAY_ADMIN_PORT).await?;
    let grpc_listener = bind(cfg.bind, cfg.listen_port, PROXY_LISTEN_PORT).await?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let admin = tokio::spawn(admin::serve(admin_listener, Arc::clone(&observe), Arc::clone(&lifecycle)));

    let gateway = Arc::new(Gateway {
        auth,
        router,
        pool,
        observe,
        lifecycle: Arc::clone(&lifecycle),
        forward_token: cfg.forward_token,
    });
    let (stop, stopped) = oneshot::channel();
    let served = tokio::spawn(serve(grpc_listener, tls, Arc::clone(&gateway), stopped, cfg.drain));
    lifecycle.set(Phase::Ready);
    tracing::info!(
        "listening grpc={grpc_addr} admin={admin_addr} tls={}",
        if cfg.tls.is_some() { "on" } else { "off" }
    );
    Ok(Running { grpc_addr, admin_addr, gateway, stop: Some(stop), served, admin })
}

impl Running {
    /// Starts the drain: `/readyz` 503, health NOT_SERVING, no new connections, and every open
    /// connection told (GOAWAY) that no new calls will be taken.
    pub fn shutdown(&mut self) {
        self.gateway.lifecycle.set(Phase::Draining);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the drain ends: every call finished, or the drain time passed.
    pub async fn stopped(mut self) {
        self.shutdown();
        let _ = (&mut self.served).await;
        self.admin.abort();
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    mut stop: oneshot::Receiver<()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        // A caller that vanished without closing its connection is found out by pings.
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(64 * 1024)
        // The pod's response headers pass as they are.
        .auto_date_header(false);
    loop {
        let tcp = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("gRPC port: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (watcher, http, tls, gateway) = (graceful.watcher(), http.clone(), tls.clone(), Arc::clone(&gateway));
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&gateway), req));
            match tls {
                None => {
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(tcp), service)).await;
                }
                Some(acceptor) => {
                    if let Some(tls) = handshake(&acceptor, tcp).await {
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(tls), service)).await;
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("draining: no new connections; live calls may finish within {drain:?}");
    let open = graceful.count();
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained: every call finished ({open} connections were open)"),
        Err(_) => tracing::warn!("drain time ({drain:?}) over with calls still live; stopping anyway"),
    }
}

/// One call; a panic in it (a bug) is answered INTERNAL, never with anything else.
async fn answer(gateway: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<DownBody>, BoxError> {
    match AssertUnwindSafe(gateway.handle(req)).catch_unwind().await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::error!("a call panicked in the gateway (a bug): answered INTERNAL");
            Ok(trailers_only(Code::Internal, "internal error in the gateway; see its log", empty()))
        }
    }
}

async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Listens on `bind:port`; the default `::` falls back to `0.0.0.0` where there is no IPv6.
async fn bind(bind: Bind, port: u16, env: &str) -> Result<TcpListener, String> {
    let addr = bind.addr(port);
    let fail = |addr: SocketAddr, e: io::Error| format!("cannot listen on {addr} ({env}): {e}");
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if bind.is_default => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            match TcpListener::bind(v4).await {
                Ok(l) => {
                    tracing::info!("no IPv6 here ({e}): listening on {v4} instead of {addr}");
                    Ok(l)
                }
                Err(e4) => Err(format!("{}; {}", fail(addr, e), fail(v4, e4))),
            }
        }
        Err(e) => Err(fail(addr, e)),
    }
}

/// TLS with the certificate and key files, offering HTTP/2 only.
fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&files.cert).and_then(|i| i.collect()).map_err(|e| {
            format!("{GATEWAY_TLS_CERT}: cannot read a PEM certificate chain from {}: {e}", files.cert.display())
        })?;
    if certs.is_empty() {
        return Err(format!("{GATEWAY_TLS_CERT}: no certificate in {}", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{GATEWAY_TLS_KEY}: cannot read a PEM private key from {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("{GATEWAY_TLS_CERT}/{GATEWAY_TLS_KEY}: the certificate and key do not make a TLS identity: {e}")
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
