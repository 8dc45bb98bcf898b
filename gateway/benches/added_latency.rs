//! What the gateway adds to a unary gRPC call, in process (docs/PERFORMANCE.md, "Gateway"):
//!
//! ```text
//! cargo bench -p kbase-spark-gateway --bench added_latency [-- --scenario latency,miss --rounds 12 …]
//! ```
//!
//! The parts are the real ones the gateway's tests use (`tests/common`): an HTTP/2 gRPC backend
//! on loopback that echoes each call, the repository's fake Auth2, the gateway built from its
//! settings as the binary builds it, and an HTTP/2 client. Each runs on a runtime of its own
//! (the gateway's: multi-threaded, 2 workers, as the binary's on this 2-core machine;
//! `--gateway-workers N` changes it, 0 for a current-thread runtime on a thread of its own), and the
//! gateway writes its access line for every call (INFO, to /dev/null), as in production.
//!
//! Calls are sent open-loop at a fixed rate (`--rate`, default 1,000/s: each call starts on its
//! schedule whether the ones before it have answered or not), with the users' tokens rotating
//! (`--users`, each routed to its own pod name; all pods are the one backend). Latency: from
//! sending a call to its trailers.
//!
//! - `latency`: blocks of `--block` calls on three paths, `G` through the gateway, `D` straight
//!   to the backend, and `D2` straight to the backend on another connection (the noise floor: two
//!   identical paths measured the same way). Rounds take the three in every order (balanced).
//!   Reported: each path's distribution, and the added latency `G - D` at p50 and p99 (median over
//!   rounds of the per-round differences, and of all calls pooled), beside `D2 - D`.
//!   With `--nginx PATH` the third path is `N` instead: the same calls through nginx's gRPC proxy
//!   (`grpc_pass`, one worker, kept-alive HTTP/2 to the backend, its access log to /dev/null) in
//!   front of the same backend: what a mature C proxy adds on this machine, with no token to check
//!   and no route to choose, beside what the gateway adds.
//! - `miss`: blocks through the gateway only: `M` with one user's first calls waiting on a slow
//!   Auth2 all the while (`--miss-delay-ms`, a new token each time), `N` and `N2` without. The
//!   other users' p99 with and without the miss (GATEWAY.md §5: ≤ 1.25×), beside `N2/N`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bearer, mfa_token, Backend, Client, FakeAuth2, FakeConfig, Fault, OK};
use kbase_spark_gateway::server::Running;

const PATH: &str = "/spark.connect.SparkConnectService/Config";
/// About the size of pyspark's `ConfigRequest`.
const MESSAGE: &[u8] = &[7u8; 96];

struct Args {
    scenarios: Vec<String>,
    rate: u32,
    block: usize,
    rounds: usize,
    warmup: usize,
    users: usize,
    miss_delay_ms: u64,
    gateway_workers: usize,
    access_log: bool,
    nginx: Option<String>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            scenarios: vec!["latency".into(), "miss".into()],
            rate: 1000,
            block: 2000,
            rounds: 12,
            warmup: 3000,
            users: 8,
            miss_delay_ms: 300,
            gateway_workers: 2,
            access_log: true,
            nginx: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--scenario" => a.scenarios = value().split(',').map(str::to_owned).collect(),
                "--rate" => a.rate = value().parse().expect("--rate N"),
                "--block" => a.block = value().parse().expect("--block N"),
                "--rounds" => a.rounds = value().parse().expect("--rounds N"),
                "--warmup" => a.warmup = value().parse().expect("--warmup N"),
                "--users" => a.users = value().parse().expect("--users N"),
                "--miss-delay-ms" => a.miss_delay_ms = value().parse().expect("--miss-delay-ms N"),
                "--gateway-workers" => a.gateway_workers = value().parse().expect("--gateway-workers N"),
                "--no-access-log" => a.access_log = false,
                "--nginx" => a.nginx = Some(value()),
                "--bench" => {} // cargo bench passes it
                other => panic!("unknown argument {other}"),
            }
        }
        assert!(a.users >= 1 && a.rate >= 1 && a.block >= 100 && a.rounds >= 1);
        a
    }
}

/// A runtime of its own on its own threads, so that the client, the gateway and the backend
/// do not wait for each other's turns.
fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    let mut b = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().thread_name(name).build().unwrap()
}

/// The fake Auth2 (its own runtime), the backend (a current-thread runtime turning on a thread of
/// its own), the gateway (its multi-threaded runtime) and the client's runtime, which turns while
/// the bench's main thread waits on it (open-loop blocks).
struct World {
    fake: FakeAuth2,
    backend: Backend,
    running: Running,
    client_rt: tokio::runtime::Runtime,
    /// Each user's token; user `i` is `user{i}`.
    tokens: Vec<String>,
    // Dropped last: what runs on them goes with them.
    _gateway_rt: Option<tokio::runtime::Runtime>,
    gateway_thread: Option<(Arc<tokio::sync::Notify>, std::thread::JoinHandle<()>)>,
    backend_thread: Option<(Arc<tokio::sync::Notify>, std::thread::JoinHandle<()>)>,
}

impl World {
    fn start(args: &Args, miss_tokens: &[String]) -> World {
        let users = args.users;
        let tokens: Vec<String> = (0..users).map(|i| format!("BENCHTOKEN{i:022}")).collect();
        let mut cfg = FakeConfig::new();
        for (i, t) in tokens.iter().enumerate() {
            cfg = cfg.token(mfa_token(t, &format!("user{i}")));
        }
        for t in miss_tokens {
            cfg = cfg.token(mfa_token(t, "newcomer"));
        }
        let fake = FakeAuth2::start_blocking(cfg).expect("fake Auth2 starts");
        let backend_rt = runtime("backend", 0);
        let client_rt = runtime("client", 0);
        let gateway_rt = runtime("gateway", args.gateway_workers);
        let backend = backend_rt.block_on(Backend::start("pod"));
        let stop = Arc::new(tokio::sync::Notify::new());
        let backend_thread = {
            let stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new().name("backend".into());
            thread.spawn(move || backend_rt.block_on(stop.notified())).unwrap()
        };
        let labels: Vec<String> = (0..users).map(|i| format!("user{i}")).chain(["newcomer".to_owned()]).collect();
        let pods: Vec<(&str, &Backend)> = labels.iter().map(|l| (l.as_str(), &backend)).collect();
        let env: HashMap<String, String> = common::gateway_env(&fake, &pods, &[]);
        let running = gateway_rt.block_on(common::gateway(env));
        // A current-thread runtime (`--gateway-workers 0`) turns only while a thread blocks on it.
        let (gateway_rt, gateway_thread) = if args.gateway_workers == 0 {
            let stop = Arc::new(tokio::sync::Notify::new());
            let turn = Arc::clone(&stop);
            let thread = std::thread::Builder::new().name("gateway".into());
            let thread = thread.spawn(move || gateway_rt.block_on(turn.notified())).unwrap();
            (None, Some((stop, thread)))
        } else {
            (Some(gateway_rt), None)
        };
        World {
            fake,
            backend,
            running,
            client_rt,
            tokens,
            _gateway_rt: gateway_rt,
            gateway_thread,
            backend_thread: Some((stop, backend_thread)),
        }
    }

    fn connect(&self, to: std::net::SocketAddr) -> Client {
        self.client_rt.block_on(Client::connect(to))
    }

    fn gateway_addr(&self) -> std::net::SocketAddr {
        self.running.grpc_addr
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (stop, thread) in [self.gateway_thread.take(), self.backend_thread.take()].into_iter().flatten() {
            stop.notify_one();
            let _ = thread.join();
        }
    }
}

/// `n` calls on `client`, open-loop at `rate` per second, tokens rotating; each call's latency.
async fn open_loop(client: Client, tokens: Arc<Vec<String>>, n: usize, rate: u32) -> Vec<Duration> {
    let interval = Duration::from_secs(1) / rate;
    let start = tokio::time::Instant::now() + Duration::from_millis(2);
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (client, auth) = (client.clone(), bearer(&tokens[i % tokens.len()]));
        calls.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let reply = client.unary(PATH, &[("authorization", &auth)], MESSAGE).await;
            let took = t0.elapsed();
            assert_eq!(reply.status(), OK, "{}", reply.message());
            took
        }));
    }
    let mut out = Vec::with_capacity(n);
    for c in calls {
        out.push(c.await.expect("a call"));
    }
    out
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    let k = ((q / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Every order of the arms once per cycle (each arm equally often first, second, third).
fn orders(arms: &[&'static str], rounds: usize) -> Vec<Vec<&'static str>> {
    let perms: Vec<Vec<&'static str>> = match arms {
        [a, b, c] => vec![
            vec![*a, *b, *c],
            vec![*b, *c, *a],
            vec![*c, *a, *b],
            vec![*a, *c, *b],
            vec![*c, *b, *a],
            vec![*b, *a, *c],
        ],
        _ => unreachable!("three arms"),
    };
    perms.into_iter().cycle().take(rounds).collect()
}

/// Per arm: every call's latency, and each round's (p50, p99).
#[derive(Default)]
struct Arm {
    all: Vec<Duration>,
    rounds: Vec<(f64, f64)>,
}

impl Arm {
    fn add(&mut self, mut lat: Vec<Duration>) {
        lat.sort();
        self.rounds.push((us(pct(&lat, 50.0)), us(pct(&lat, 99.0))));
        self.all.extend(lat);
    }

    fn line(&mut self, name: &str) -> String {
        self.all.sort();
        let a = &self.all;
        format!(
            "   {name:<3} calls {:>7}  p50 {:>8.1} µs  p90 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>9.1}",
            a.len(),
            us(pct(a, 50.0)),
            us(pct(a, 90.0)),
            us(pct(a, 99.0)),
            us(pct(a, 99.9)),
            us(*a.last().unwrap())
        )
    }

    fn pooled(&self, q: f64) -> f64 {
        let mut v = self.all.clone();
        v.sort();
        us(pct(&v, q))
    }
}

/// CPU time used so far by the threads named `name` (the gateway's runtime: "gateway"), from the
/// scheduler's own accounting (/proc/self/task/*/schedstat, nanoseconds).
fn cpu_of(name: &str) -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// nginx as a reference gRPC proxy in front of the backend (`--nginx PATH`), on loopback, in a
/// directory of its own; stopped (by its PID) and removed when dropped.
struct Nginx {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(bin: &str, backend: std::net::SocketAddr) -> Nginx {
        let dir = std::env::temp_dir().join(format!("added-latency-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log /dev/null; keepalive_requests 1000000000; keepalive_timeout 3600s;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  \
             upstream pod {{ server {backend}; keepalive 8; keepalive_requests 1000000000; }}\n  \
             server {{ listen 127.0.0.1:{port} http2; location / {{ grpc_pass grpc://pod; }} }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("--nginx {bin}: {e}"));
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut nginx = Nginx { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            assert!(nginx.child.try_wait().unwrap().is_none(), "nginx exited:\n{log}");
            assert!(Instant::now() < deadline, "nginx does not listen on {addr}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// CPU time nginx (one process) has used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/schedstat", self.child.id())).unwrap_or_default();
        Duration::from_nanos(stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn latency(args: &Args) {
    let world = World::start(args, &[]);
    let tokens = Arc::new(world.tokens.clone());
    let nginx = args.nginx.as_deref().map(|bin| Nginx::start(bin, world.backend.addr));
    // The third path: the noise floor, or the reference proxy.
    let third = if nginx.is_some() { "N" } else { "D2" };
    let third_addr = nginx.as_ref().map_or(world.backend.addr, |n| n.addr);
    let clients: HashMap<&str, Client> = [
        ("G", world.connect(world.gateway_addr())),
        ("D", world.connect(world.backend.addr)),
        (third, world.connect(third_addr)),
    ]
    .into_iter()
    .collect();
    let run = |arm: &str, n: usize| {
        world.client_rt.block_on(open_loop(clients[arm].clone(), Arc::clone(&tokens), n, args.rate))
    };
    println!(
        "latency: {} rounds × {} calls per path at {}/s, {} users' tokens rotating; load average {}",
        args.rounds,
        args.block,
        args.rate,
        args.users,
        loadavg()
    );
    for arm in ["G", "D", third] {
        run(arm, args.warmup);
    }
    let mut arms: HashMap<&str, Arm> = HashMap::new();
    // CPU time per path of the gateway's and the backend's threads.
    let mut cpu: HashMap<(&str, &str), Duration> = HashMap::new();
    let nginx_cpu = || nginx.as_ref().map_or(Duration::ZERO, Nginx::cpu);
    for order in orders(&["G", "D", third], args.rounds) {
        for arm in order {
            run(arm, args.block / 10); // unmeasured: the path is warm when the block starts
            let before = [cpu_of("gateway"), cpu_of("backend"), nginx_cpu()];
            let lat = run(arm, args.block);
            *cpu.entry((arm, "gateway")).or_default() += cpu_of("gateway") - before[0];
            *cpu.entry((arm, "backend")).or_default() += cpu_of("backend") - before[1];
            *cpu.entry((arm, "nginx")).or_default() += nginx_cpu() - before[2];
            arms.entry(arm).or_default().add(lat);
        }
    }
    println!("   (load average after: {})", loadavg());
    for name in ["G", "D", third] {
        println!("{}", arms.get_mut(name).unwrap().line(name));
    }
    let diff = |a: &str, b: &str, p99: bool| {
        let (x, y) = (&arms[a].rounds, &arms[b].rounds);
        median(x.iter().zip(y).map(|(x, y)| if p99 { x.1 - y.1 } else { x.0 - y.0 }).collect())
    };
    let third_what = if nginx.is_some() { "added by nginx, N - D" } else { "noise floor, D2 - D" };
    for (what, a) in [("added by the gateway, G - D", "G"), (third_what, third)] {
        println!(
            "   {what:<28} p50 {:>7.1} µs (pooled {:>7.1})   p99 {:>7.1} µs (pooled {:>7.1})   [median over rounds]",
            diff(a, "D", false),
            arms[a].pooled(50.0) - arms["D"].pooled(50.0),
            diff(a, "D", true),
            arms[a].pooled(99.0) - arms["D"].pooled(99.0),
        );
    }
    let calls = arms["G"].all.len() as u32;
    println!(
        "   CPU time per call on G: gateway {:.1} µs, backend {:.1} µs; on D: gateway {:.1} µs, backend {:.1} µs",
        us(cpu[&("G", "gateway")] / calls),
        us(cpu[&("G", "backend")] / calls),
        us(cpu[&("D", "gateway")] / calls),
        us(cpu[&("D", "backend")] / calls),
    );
    if nginx.is_some() {
        println!(
            "   CPU time per call on N: nginx {:.1} µs, backend {:.1} µs",
            us(cpu[&("N", "nginx")] / calls),
            us(cpu[&("N", "backend")] / calls),
        );
    }
    println!("   Auth2 lookups: {} for {} users", world.fake.total_requests(), args.users);
}

fn miss(args: &Args) {
    // Enough never-seen tokens for every miss of the run (each waits `miss_delay_ms`).
    let blocks_s = (args.block as f64 / args.rate as f64) * args.rounds as f64;
    let needed = (blocks_s * 1000.0 / args.miss_delay_ms as f64) as usize + 100;
    let miss_tokens: Vec<String> = (0..needed).map(|i| format!("NEWCOMERTOKEN{i:019}")).collect();
    let world = World::start(args, &miss_tokens);
    let tokens = Arc::new(world.tokens.clone());
    let gw = world.connect(world.gateway_addr());
    let newcomer = world.connect(world.gateway_addr());
    let run = |n: usize| world.client_rt.block_on(open_loop(gw.clone(), Arc::clone(&tokens), n, args.rate));
    println!(
        "miss: {} rounds × {} calls through the gateway at {}/s, {} users' cached tokens rotating; \
         M: one user's first calls waiting on Auth2 ({} ms) all the while; load average {}",
        args.rounds,
        args.block,
        args.rate,
        args.users,
        args.miss_delay_ms,
        loadavg()
    );
    run(args.warmup); // every user's token is now cached
    world.fake.set_fault_blocking(Fault::Delay(Duration::from_millis(args.miss_delay_ms))).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let miss_times: Arc<std::sync::Mutex<Vec<Duration>>> = Default::default();
    let mut arms: HashMap<&str, Arm> = HashMap::new();
    for order in orders(&["M", "N", "N2"], args.rounds) {
        for arm in order {
            let missing = Arc::new(AtomicBool::new(arm == "M"));
            // The newcomer: one call at a time, each with a token the gateway has never seen.
            let newcomer_task = {
                let (client, missing, next, times) =
                    (newcomer.clone(), Arc::clone(&missing), Arc::clone(&next), Arc::clone(&miss_times));
                let miss_tokens = miss_tokens.clone();
                world.client_rt.spawn(async move {
                    while missing.load(Ordering::Acquire) {
                        let token = &miss_tokens[next.fetch_add(1, Ordering::Relaxed)];
                        let t0 = Instant::now();
                        let reply = client.unary(PATH, &[("authorization", &bearer(token))], MESSAGE).await;
                        assert_eq!(reply.status(), OK, "{}", reply.message());
                        times.lock().unwrap().push(t0.elapsed());
                    }
                })
            };
            if arm == "M" {
                // The first miss is under way before the block starts.
                std::thread::sleep(Duration::from_millis(20));
            }
            run(args.block / 10);
            let lat = run(args.block);
            missing.store(false, Ordering::Release);
            world.client_rt.block_on(newcomer_task).unwrap();
            arms.entry(arm).or_default().add(lat);
        }
    }
    println!("   (load average after: {})", loadavg());
    for name in ["M", "N", "N2"] {
        println!("{}", arms.get_mut(name).unwrap().line(name));
    }
    let ratio = |a: &str, p99: bool| {
        let (x, y) = (&arms[a].rounds, &arms["N"].rounds);
        median(x.iter().zip(y).map(|(x, y)| if p99 { x.1 / y.1 } else { x.0 / y.0 }).collect())
    };
    for (what, a) in [("with the miss, M/N", "M"), ("noise floor, N2/N", "N2")] {
        println!(
            "   {what:<20} p99 {:>5.3} (pooled {:>5.3})   p50 {:>5.3}   [median over rounds of per-round ratios]",
            ratio(a, true),
            arms[a].pooled(99.0) / arms["N"].pooled(99.0),
            ratio(a, false),
        );
    }
    let mut times = miss_times.lock().unwrap().clone();
    times.sort();
    if !times.is_empty() {
        println!(
            "   the newcomer's calls: {} (each a new token), p50 {:.1} ms, max {:.1} ms; Auth2 lookups in all: {}",
            times.len(),
            us(pct(&times, 50.0)) / 1e3,
            us(*times.last().unwrap()) / 1e3,
            world.fake.total_requests()
        );
    }
}

fn main() {
    let args = Args::parse();
    // The access line of every call is written, as in production; here to /dev/null.
    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null");
    tracing_subscriber::fmt()
        .with_max_level(if args.access_log { tracing::Level::INFO } else { tracing::Level::WARN })
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(devnull))
        .init();
    println!("gateway added-latency bench ({} cores)", std::thread::available_parallelism().map_or(0, |n| n.get()));
    for s in &args.scenarios {
        match s.as_str() {
            "latency" => latency(&args),
            "miss" => miss(&args),
            other => panic!("unknown scenario {other} (latency, miss)"),
        }
    }
}
