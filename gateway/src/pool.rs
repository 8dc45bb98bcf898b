//! Connections to pods: HTTP/2, plaintext (as the pods serve), shared by every call and user that
//! goes to the same pod.
//!
//! Rules: at most `max_per_pod` connections per pod, another opened only when the open ones
//! carry `streams_per_connection` calls each; one dial per pod at a time, whoever asks; a pod that
//! could not be reached is not dialled again for `retry_backoff` (calls fail at once with the
//! reason), then one call dials again. A connection with no live call for `idle_timeout` is
//! closed, and beyond `max_pods` the least recently used pods' idle connections close first. A
//! connection that carries a live call is never closed here.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::observe::Observe;
use crate::route::{Pod, Resolver};

/// A request body on its way to a pod.
pub type UpBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Calls on one connection before another may be opened to the same pod. Pods (grpc-java)
/// advertise no stream limit, and one connection carries a pod's traffic well; but all its calls
/// share one TCP stream and one connection window. (Beyond a peer's own limit, HTTP/2 queues.)
pub const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub max_per_pod: usize,
    /// Resolving, connecting and the HTTP/2 handshake together.
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_pods: usize,
    pub retry_backoff: Duration,
    pub streams_per_connection: usize,
}

/// Why a pod cannot be reached, as the caller is told (after "… at host:port (").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDown(pub Arc<str>);

pub struct Pool {
    cfg: PoolConfig,
    resolver: Resolver,
    observe: Arc<Observe>,
    client: Builder<TokioExecutor>,
    pods: Mutex<HashMap<String, PodState>>,
    epoch: Instant,
}

struct PodState {
    conns: Vec<Arc<Conn>>,
    last_used: Instant,
    /// The dial in progress, and then how it ended.
    dialing: Option<watch::Receiver<Option<Dialled>>>,
    down: Option<Down>,
}

/// How a dial ended: connected, or why not.
type Dialled = Result<(), Arc<str>>;

impl PodState {
    fn new(now: Instant) -> PodState {
        PodState { conns: Vec::new(), last_used: now, dialing: None, down: None }
    }
}

struct Down {
    until: Instant,
    why: Arc<str>,
}

/// One HTTP/2 connection to a pod.
pub struct Conn {
    send: SendRequest<UpBody>,
    live: AtomicUsize,
    /// When its last call ended (milliseconds since the pool's epoch).
    idle_since_ms: AtomicU64,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

/// A call's hold on a connection: the connection is not closed while the lease lives.
pub struct Lease {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Lease {
    /// A handle to send this call's request on.
    pub fn sender(&self) -> SendRequest<UpBody> {
        self.conn.send.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.idle_since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.conn.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Pool::stats`] counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub pods: usize,
    pub connections: usize,
    pub live: usize,
}

impl Pool {
    pub fn new(cfg: PoolConfig, resolver: Resolver, observe: Arc<Observe>) -> Arc<Pool> {
        let mut client = Builder::new(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            // A pod that vanished without closing its connections is found out by pings.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_header_list_size(64 * 1024)
            // Results stream from the pod: frames of up to 1 MiB instead of HTTP/2's default 16 KiB
            // cost the gateway ~40 % less CPU per byte relayed (a ~100 MB collect: 143–162 ms ->
            // 80–107 ms, docs/PERFORMANCE.md), for a read buffer of at most that per connection.
            .max_frame_size(1 << 20);
        Arc::new(Pool { cfg, resolver, observe, client, pods: Mutex::new(HashMap::new()), epoch: Instant::now() })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Closes idle connections now and then, while the pool lives.
    pub fn start_sweeper(self: &Arc<Self>) {
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = (self.cfg.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(Instant::now()),
                    None => return,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodState>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `pod` for one call: an open one with room, else a new one (one dial at a
    /// time per pod; callers wait for it and share its failure), unless the pod is known to be
    /// down.
    pub async fn lease(self: &Arc<Self>, pod: &Pod) -> Result<Lease, PodDown> {
        loop {
            let mut dial = {
                let mut pods = self.lock();
                let now = Instant::now();
                let key = pod.authority.as_str();
                if !pods.contains_key(key) {
                    pods.insert(key.to_owned(), PodState::new(now));
                }
                let st = pods.get_mut(key).expect("inserted above");
                st.last_used = now;
                st.conns.retain(|c| !c.is_closed());
                if let Some(conn) = self.pick(st) {
                    conn.live.fetch_add(1, Ordering::AcqRel);
                    return Ok(Lease { conn, epoch: self.epoch });
                }
                if let Some(down) = st.down.as_ref().filter(|d| now < d.until) {
                    return Err(PodDown(Arc::clone(&down.why)));
                }
                match &st.dialing {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        st.dialing = Some(rx.clone());
                        // Its own task: the dial completes for the next caller even if this one
                        // gives up.
                        tokio::spawn(Arc::clone(self).dial(pod.clone(), tx));
                        rx
                    }
                }
            };
            // The dial this call waited for decides it: its failure is this call's.
            let outcome = dial.wait_for(Option::is_some).await.ok().and_then(|o| o.clone());
            match outcome {
                Some(Ok(())) => continue,
                Some(Err(why)) => return Err(PodDown(why)),
                None => return Err(PodDown("the dial was abandoned".into())),
            }
        }
    }

    /// The least loaded open connection with room; a full one only when no other may be opened.
    fn pick(&self, st: &PodState) -> Option<Arc<Conn>> {
        let least = st.conns.iter().min_by_key(|c| c.live())?;
        let has_room = least.live() < self.cfg.streams_per_connection;
        (has_room || st.conns.len() >= self.cfg.max_per_pod).then(|| Arc::clone(least))
    }

    async fn dial(self: Arc<Self>, pod: Pod, done: watch::Sender<Option<Dialled>>) {
        self.observe.pod_dials.inc();
        let result = match tokio::time::timeout(self.cfg.connect_timeout, self.connect(&pod)).await {
            Ok(r) => r,
            Err(_) => Err(("timeout", format!("no answer within {:?}", self.cfg.connect_timeout))),
        };
        let mut pods = self.lock();
        let now = Instant::now();
        let st = pods.entry(pod.authority.as_str().to_owned()).or_insert_with(|| PodState::new(now));
        st.dialing = None;
        let dialled = match result {
            Ok(send) => {
                st.down = None;
                let idle_since_ms = AtomicU64::new(self.epoch.elapsed().as_millis() as u64);
                st.conns.push(Arc::new(Conn { send, live: AtomicUsize::new(0), idle_since_ms }));
                // Not this pod's new connection: its callers are about to use it.
                self.keep_within_bound(&mut pods, Some(pod.authority.as_str()));
                Ok(())
            }
            Err((cause, why)) => {
                self.observe.dial_failed(cause);
                tracing::warn!(pod = %pod, cause, "cannot reach pod: {why}");
                let why: Arc<str> = why.into();
                st.down = Some(Down { until: now + self.cfg.retry_backoff, why: Arc::clone(&why) });
                Err(why)
            }
        };
        drop(pods);
        done.send_replace(Some(dialled));
    }

    /// Resolve (at each dial, so a pod that moved is found), connect, HTTP/2 handshake.
    async fn connect(&self, pod: &Pod) -> Result<SendRequest<UpBody>, (&'static str, String)> {
        let addrs = self
            .resolver
            .resolve(&pod.host, pod.port)
            .await
            .map_err(|e| ("resolve", format!("its host name does not resolve: {}", io_reason(&e))))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let (send, conn) = self
                        .client
                        .handshake(TokioIo::new(tcp))
                        .await
                        .map_err(|e| ("handshake", format!("HTTP/2 handshake with {addr} failed: {e}")))?;
                    let observe = Arc::clone(&self.observe);
                    observe.pod_connections.inc();
                    tokio::spawn(async move {
                        let _ = conn.await;
                        observe.pod_connections.dec();
                    });
                    return Ok(send);
                }
                Err(e) => last = Some((addr, e)),
            }
        }
        let (addr, e) = last.expect("resolve returns at least one address");
        let cause = if e.kind() == io::ErrorKind::ConnectionRefused { "refused" } else { "connect" };
        Err((cause, format!("{} at {addr}", io_reason(&e))))
    }

    /// Closes what should close: connections that ended, idle ones past `idle_timeout`, then
    /// idle pods beyond `max_pods`, least recently used first. Never a connection with a live call.
    pub fn sweep(&self, now: Instant) {
        let mut pods = self.lock();
        let idle_ms = self.cfg.idle_timeout.as_millis() as u64;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        for st in pods.values_mut() {
            st.conns.retain(|c| {
                !c.is_closed()
                    && (c.live() > 0 || now_ms < c.idle_since_ms.load(Ordering::Acquire).saturating_add(idle_ms))
            });
        }
        pods.retain(|_, st| {
            !st.conns.is_empty() || st.dialing.is_some() || st.down.as_ref().is_some_and(|d| now < d.until)
        });
        self.keep_within_bound(&mut pods, None);
    }

    /// Closes the idle connections of the least recently used pods (but `spare`) while more than
    /// `max_pods` pods are connected.
    fn keep_within_bound(&self, pods: &mut HashMap<String, PodState>, spare: Option<&str>) {
        let connected = pods.values().filter(|s| !s.conns.is_empty()).count();
        let mut over = connected.saturating_sub(self.cfg.max_pods);
        if over == 0 {
            return;
        }
        let mut by_age: Vec<(Instant, String)> = pods
            .iter()
            .filter(|(k, s)| !s.conns.is_empty() && Some(k.as_str()) != spare)
            .map(|(k, s)| (s.last_used, k.clone()))
            .collect();
        by_age.sort();
        for (_, key) in by_age {
            if over == 0 {
                break;
            }
            let Some(st) = pods.get_mut(&key) else { continue };
            st.conns.retain(|c| c.live() > 0);
            if st.conns.is_empty() {
                over -= 1;
                if st.dialing.is_none() {
                    pods.remove(&key);
                }
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let pods = self.lock();
        let mut s = PoolStats::default();
        for st in pods.values().filter(|st| !st.conns.is_empty()) {
            s.pods += 1;
            s.connections += st.conns.len();
            s.live += st.conns.iter().map(|c| c.live()).sum::<usize>();
        }
        s
    }
}

/// The error's own words, without Rust's "(os error N)".
fn io_reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}
