//! A fake KBase Auth2 server (SPEC §3) with runtime-switchable fault modes, for tests.
//!
//! In-process: [`FakeAuth2::start`] on the caller's tokio runtime, or
//! [`FakeAuth2::start_blocking`] with a runtime of its own — use the latter whenever the
//! code under test blocks a thread while talking to the fake (a sync client inside
//! `#[tokio::test]` would otherwise starve the fake on a current-thread runtime).
//! As a process: the `fake-auth2` binary, driven through its control port.
//!
//! With [`FakeConfig::tls`] the Auth2 port speaks HTTPS (certificates from [`pki`], or PEM
//! files); the control port and the redirect target stay plain HTTP on loopback.

mod control;
pub mod model;
pub mod pki;
mod respond;
mod server;
mod state;

pub use model::{Fault, TokenEntry, TokenFile, DEFAULT_CACHEFOR_MS, DEFAULT_EXPIRES_IN_MS};

use state::State;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// How to start a [`FakeAuth2`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Address to bind; loopback unless `allow_non_loopback`.
    pub bind: IpAddr,
    /// Auth2 port; 0 picks an ephemeral one.
    pub port: u16,
    /// Path prefix of the Auth2 root, e.g. "/services/auth"; empty serves at "/".
    pub prefix: String,
    /// Server-wide `cachefor` for tokens that do not set their own.
    pub cachefor_ms: u64,
    /// Tokens known from the start.
    pub tokens: Vec<TokenEntry>,
    /// Port of the control API (0 = ephemeral); `None` runs no control server.
    pub control_port: Option<u16>,
    pub allow_non_loopback: bool,
    /// Serve the Auth2 port over HTTPS with this certificate chain and key.
    pub tls: Option<TlsIdentity>,
}

/// A server certificate chain and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl TlsIdentity {
    /// Reads PEM files (as the binary's `--tls-cert`/`--tls-key` name them).
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> io::Result<TlsIdentity> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(TlsIdentity { cert_chain_pem: read(cert)?, key_pem: read(key)? })
    }

    fn acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad =
            |what: &str, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("TLS certificate chain", &e))?;
        if certs.is_empty() {
            return Err(bad("TLS certificate chain", &"no PEM certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| bad("TLS private key", &e))?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("TLS certificate/key", &e))?;
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            prefix: String::new(),
            cachefor_ms: DEFAULT_CACHEFOR_MS,
            tokens: Vec::new(),
            control_port: None,
            allow_non_loopback: false,
            tls: None,
        }
    }
}

impl FakeConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    pub fn cachefor(mut self, ms: u64) -> Self {
        self.cachefor_ms = ms;
        self
    }

    pub fn token(mut self, t: TokenEntry) -> Self {
        self.tokens.push(t);
        self
    }

    pub fn control_port(mut self, port: u16) -> Self {
        self.control_port = Some(port);
        self
    }

    /// Serves the Auth2 port over HTTPS with `identity`.
    pub fn tls(mut self, identity: TlsIdentity) -> Self {
        self.tls = Some(identity);
        self
    }
}

/// A running fake. Dropping it stops the server: tasks aborted, sockets closed.
pub struct FakeAuth2 {
    state: Arc<State>,
    addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    tls: bool,
    tasks: Vec<AbortHandle>,
    /// Present when started with [`FakeAuth2::start_blocking`].
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeAuth2 {
    /// Starts on the current tokio runtime.
    pub async fn start(cfg: FakeConfig) -> io::Result<FakeAuth2> {
        if !cfg.bind.is_loopback() && !cfg.allow_non_loopback {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to bind non-loopback address {} (allow_non_loopback is off)", cfg.bind),
            ));
        }
        let acceptor = cfg.tls.as_ref().map(TlsIdentity::acceptor).transpose()?;
        // The redirect target always runs (on an ephemeral port of the same address): the
        // `redirect` fault can be switched on at any time.
        let redirect_listener = server::bind(SocketAddr::new(cfg.bind, 0))?;
        let redirect_addr = redirect_listener.local_addr()?;
        let state = Arc::new(State::new(model::normalize_prefix(&cfg.prefix), cfg.cachefor_ms, redirect_addr));
        for t in cfg.tokens {
            state.add_token(t);
        }
        let listener = server::bind(SocketAddr::new(cfg.bind, cfg.port))?;
        let addr = listener.local_addr()?;
        let control = match cfg.control_port {
            Some(p) => Some(server::bind(SocketAddr::new(cfg.bind, p))?),
            None => None,
        };
        let control_addr = control.as_ref().map(|l| l.local_addr()).transpose()?;

        let tls = acceptor.is_some();
        let mut tasks = vec![
            tokio::spawn(server::run(state.clone(), addr, listener, acceptor)).abort_handle(),
            tokio::spawn(server::run_redirect_target(state.clone(), redirect_listener)).abort_handle(),
        ];
        if let Some(l) = control {
            tasks.push(tokio::spawn(control::run(state.clone(), l)).abort_handle());
        }
        Ok(FakeAuth2 { state, addr, control_addr, tls, tasks, runtime: None })
    }

    /// Starts on a runtime of its own (one worker thread), callable from any context.
    pub fn start_blocking(cfg: FakeConfig) -> io::Result<FakeAuth2> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-auth2")
            .enable_all()
            .build()?;
        // Spawn rather than block_on: block_on panics when the caller is itself async.
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(FakeAuth2::start(cfg).await);
        });
        let mut fake = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "fake-auth2 did not start"))??;
        fake.runtime = Some(rt);
        Ok(fake)
    }

    /// Auth2 root URL with trailing slash, e.g. "http://127.0.0.1:PORT/services/auth/"
    /// ("https://" when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}/", self.addr, self.state.prefix)
    }

    /// The same root with `host` instead of the IP address (e.g. "localhost", to match a
    /// certificate's DNS name).
    pub fn url_with_host(&self, host: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{}/", self.addr.port(), self.state.prefix)
    }

    /// Where the `redirect` fault points: a plain-HTTP listener serving the same API.
    pub fn redirect_target(&self) -> SocketAddr {
        self.state.redirect_target
    }

    /// Requests the redirect target has received (any path) since start or the last reset.
    pub fn redirected_requests(&self) -> u64 {
        self.state.redirected()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Control API URL, if a control port was configured.
    pub fn control_url(&self) -> Option<String> {
        self.control_addr.map(|a| format!("http://{a}/"))
    }

    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Adds or replaces a token (replacing also clears a revocation).
    pub fn add_token(&self, t: TokenEntry) {
        self.state.add_token(t);
    }

    /// Revokes a token: it answers 401 from now on. False if the token is unknown.
    pub fn revoke(&self, token: &str) -> bool {
        self.state.revoke(token)
    }

    /// Switches the fault mode. Request handling follows at once; for `Refuse` the
    /// closing (and later rebinding) of the listening socket happens on the server task a
    /// moment later — use [`set_fault_wait`](Self::set_fault_wait) or
    /// [`set_fault_blocking`](Self::set_fault_blocking) when a test needs it done.
    pub fn set_fault(&self, f: Fault) {
        self.state.set_fault(f);
    }

    /// Switches the fault mode and waits (at most 5 s) until the listener has applied it.
    pub async fn set_fault_wait(&self, f: Fault) -> io::Result<()> {
        let epoch = self.state.set_fault(f);
        control::wait_applied(&self.state, epoch).await.map_err(io::Error::other)
    }

    /// Like [`set_fault_wait`](Self::set_fault_wait) for sync code. Polls, so it must not
    /// run on the (current-thread) runtime the fake itself is served by.
    pub fn set_fault_blocking(&self, f: Fault) -> io::Result<()> {
        let epoch = self.state.set_fault(f);
        let deadline = Instant::now() + control::APPLY_TIMEOUT;
        loop {
            {
                let a = self.state.applied_tx.borrow();
                if a.epoch >= epoch {
                    return a.error.clone().map_or(Ok(()), |e| Err(io::Error::other(e)));
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "fault not applied in time"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn fault(&self) -> Fault {
        self.state.fault()
    }

    /// Whether the Auth2 socket is open, as last applied by the server task.
    pub fn is_listening(&self) -> bool {
        self.state.applied_tx.borrow().listening
    }

    /// Requests to /api/V2/token and /api/V2/me carrying `token`, fault answers included.
    pub fn requests_for(&self, token: &str) -> u64 {
        self.state.requests_for(token)
    }

    /// All requests to /api/V2/token and /api/V2/me, missing-token ones included.
    pub fn total_requests(&self) -> u64 {
        self.state.total_requests()
    }

    /// Per-token request counts.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.state.counts().1
    }

    pub fn reset_counts(&self) {
        self.state.reset_counts();
    }
}

impl Drop for FakeAuth2 {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(rt) = self.runtime.take() {
            // Blocking shutdown panics inside an async context; there, let it finish alone.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}
