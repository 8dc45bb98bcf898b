//! The built `kbase-spark-gateway` binary: start-up and its lines, refused configurations, the
//! access line, and SIGTERM's drain.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;

const BIN: &str = env!("CARGO_BIN_EXE_kbase-spark-gateway");

/// The binary, running; its stderr lines arrive on `lines`.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Reads stderr; ends at the first line after `lines` is dropped, closing the pipe.
    reader: Option<std::thread::JoinHandle<()>>,
    seen: Vec<String>,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    fn start(env: &std::collections::HashMap<String, String>) -> Gateway {
        let mut child = Command::new(BIN)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut g = Gateway {
            child,
            lines,
            reader: Some(reader),
            seen: Vec::new(),
            grpc: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let listening = g.wait_for("listening grpc=");
        let field = |name: &str| -> SocketAddr {
            let rest = &listening[listening.find(name).unwrap() + name.len()..];
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        g.grpc = field("grpc=");
        g.admin = field("admin=");
        g
    }

    /// The first line (seen or to come) containing `text`, waiting at most 10 s.
    fn wait_for(&mut self, text: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {text:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits (at most `limit`) for the process to exit.
    fn exit_status(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to its end: exit code and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN).env_clear().envs(env.iter().copied()).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_refused_naming_the_setting() {
    let (code, _, err) = run(&[], &[("GATEWAY_BIDN", "127.0.0.1")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown setting GATEWAY_BIDN") && err.contains("did you mean GATEWAY_BIND?"), "{err}");
    let (code, _, err) = run(&[], &[("PROXY_LISTEN_PORT", "abc")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid setting PROXY_LISTEN_PORT (--listen-port): 'abc' is not a port number"), "{err}");
    let (code, _, err) = run(&["--backend-connect-timeout", "never"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("BACKEND_CONNECT_TIMEOUT"), "{err}");
    // A port already taken: start-up fails (status 1), naming the variable.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) =
        run(&[], &[("GATEWAY_BIND", "127.0.0.1"), ("PROXY_LISTEN_PORT", &port), ("GATEWAY_ADMIN_PORT", "0")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot listen on 127.0.0.1:") && err.contains("(PROXY_LISTEN_PORT)"), "{err}");
}

#[test]
fn help_lists_every_setting() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for s in kbase_spark_gateway::settings::SPECS {
        assert!(out.contains(&format!("--{} ", s.flag)) && out.contains(&format!("[{}", s.env)), "{}", s.env);
    }
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!((code, out.trim()), (0, format!("kbase-spark-gateway {}", env!("CARGO_PKG_VERSION")).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_line_per_call_and_never_a_token() {
    let fake = fake(vec![mfa_token("TOKENALICEBIN1", "alice")]).await;
    let pod = Backend::start("alice-pod").await;
    let mut gw = Gateway::start(&gateway_env(&fake, &[("alice", &pod)], &[]));
    let start = gw.wait_for("starting: ");
    assert!(
        start.contains("KBASE_AUTH_URL=http://127.0.0.1:") && start.contains("MAX_CHANNELS_PER_BACKEND=5"),
        "{start}"
    );
    let client = Client::connect(gw.grpc).await;
    let r = client
        .unary("/spark.connect.SparkConnectService/Config", &[("x-kbase-token", "TOKENALICEBIN1")], b"12345")
        .await;
    assert_eq!(r.status(), OK);
    let r = client
        .unary("/spark.connect.SparkConnectService/Config", &[("authorization", "Bearer WRONGTOKENBIN")], b"")
        .await;
    assert_eq!(r.status(), UNAUTHENTICATED);
    let allowed = gw.wait_for("status=OK");
    assert!(allowed.contains(" INFO kbase_spark_gateway::access: call method=/spark.connect.SparkConnectService/Config user=alice pod=jupyter-alice.jupyterhub-prod.svc.cluster.local:15002 status=OK duration_ms="), "{allowed}");
    assert!(allowed.ends_with("bytes_in=10 bytes_out=10"), "{allowed}");
    let denied = gw.wait_for("status=UNAUTHENTICATED");
    assert!(
        denied.contains("user=- pod=- status=UNAUTHENTICATED") && denied.contains("reason=invalid_token token=sha256:"),
        "{denied}"
    );
    assert!(denied.contains(r#"grpc_message="invalid or revoked KBase token"#), "{denied}");
    gw.signal(libc::SIGTERM);
    assert!(gw.exit_status(Duration::from_secs(10)).success());
    while let Ok(l) = gw.lines.recv_timeout(Duration::from_secs(2)) {
        gw.seen.push(l);
    }
    let all = gw.seen.join("\n");
    assert!(!all.contains("TOKENALICEBIN1") && !all.contains("WRONGTOKENBIN"), "a token in the log:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_calls_then_exits_zero() {
    let fake = fake(vec![mfa_token("TOKENALICEBIN2", "alice")]).await;
    let pod = Backend::start("alice-pod").await;
    let mut gw = Gateway::start(&gateway_env(&fake, &[("alice", &pod)], &[("GATEWAY_DRAIN_SECONDS", "20")]));
    assert_eq!(admin_get(gw.admin, "/readyz").await.0, 200);
    let client = Client::connect(gw.grpc).await;
    let t = [("x-kbase-token", "TOKENALICEBIN2")];
    // 20 messages, 100 ms apart: the call outlives the signal.
    let res = client.start("/test.Echo/Slow", &t, boxed_frame(b"20,100")).await.unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_get(gw.admin, "/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "/readyz turns 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grpc = gw.grpc;
    eventually(Duration::from_secs(5), "new connections refused", || {
        std::net::TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_err()
    })
    .await;
    assert!(
        client.start("/spark.connect.SparkConnectService/Config", &t, boxed_frame(b"")).await.is_err(),
        "new calls refused"
    );
    assert!(gw.child.try_wait().unwrap().is_none(), "still serving the live call");
    let mut messages = 1;
    let mut status = None;
    while let Some(f) = body.frame().await {
        match f.expect("the live call is not cut").into_data() {
            Ok(_) => messages += 1,
            Err(f) => status = f.into_trailers().ok().and_then(|t| t.get("grpc-status").cloned()),
        }
    }
    assert_eq!((messages, status.unwrap()), (20, http::HeaderValue::from_static("0")));
    let code = gw.exit_status(Duration::from_secs(10));
    assert!(code.success(), "{code:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    gw.wait_for("SIGTERM: shutting down");
    gw.wait_for("drained");
}

/// `kbase-spark-gateway 2>&1 | head`, or a log collector that went away: once nobody reads
/// stderr, every log line fails to write (EPIPE). The gateway goes on serving and still drains
/// to exit 0 (tracing's fallback report of a failed write would panic on the same stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_does_not_stop_the_gateway() {
    let fake = fake(vec![mfa_token("TOKENALICEBIN3", "alice")]).await;
    let pod = Backend::start("alice-pod").await;
    let mut gw = Gateway::start(&gateway_env(&fake, &[("alice", &pod)], &[]));
    let client = Client::connect(gw.grpc).await;
    let t = [("x-kbase-token", "TOKENALICEBIN3")];
    const CONFIG: &str = "/spark.connect.SparkConnectService/Config";
    // The reader ends at the next line (this call's access line), closing the pipe.
    gw.lines = mpsc::channel().1;
    assert_eq!(client.unary(CONFIG, &t, b"1").await.status(), OK);
    let reader = gw.reader.take().unwrap();
    eventually(Duration::from_secs(10), "the reader closes the pipe", || reader.is_finished()).await;
    for _ in 0..3 {
        assert_eq!(client.unary(CONFIG, &t, b"2").await.status(), OK);
    }
    gw.signal(libc::SIGTERM);
    let code = gw.exit_status(Duration::from_secs(10));
    assert!(code.success(), "{code:?}");
}
