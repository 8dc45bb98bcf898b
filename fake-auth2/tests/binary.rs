//! The `fake-auth2` binary: start-up line, ready file, tokens file, control API, and
//! stopping on SIGTERM or at its maximum lifetime.

mod common;

use common::{get, post_json, request};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fake-auth2");

/// Kills the child (by its own handle) if a test fails before stopping it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Proc {
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit in {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// The first stdout line, read on a helper thread so the wait is bounded.
    fn first_line(&mut self) -> String {
        let out = self.0.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("no stdout line in time")
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fake-auth2-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fake-auth2"),
    )
}

fn wait_ready(p: &mut Proc, ready: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        if let Ok(Some(s)) = p.0.try_wait() {
            panic!("fake-auth2 exited early: {s}");
        }
        assert!(Instant::now() < deadline, "no ready file in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    serde_json::from_str(&std::fs::read_to_string(ready).unwrap()).unwrap()
}

fn port_addr(v: &Value, key: &str) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], v[key].as_u64().unwrap() as u16))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_end_to_end_with_control_api() {
    let dir = tmpdir("e2e");
    let ready = dir.join("ready.json");
    let tokens = dir.join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"cachefor": 1000, "tokens": [
            {"token": "T1", "user": "alice", "mfa": "Used", "customroles": ["r1"]},
            {"token": "T2", "user": "bob", "expires_in_ms": -1000, "cachefor": 5}
        ]})
        .to_string(),
    )
    .unwrap();
    let mut p = spawn(&[
        "--port",
        "0",
        "--control-port",
        "0",
        "--prefix",
        "/services/auth",
        "--tokens",
        tokens.to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
        "--max-lifetime-secs",
        "120",
    ]);
    let info = wait_ready(&mut p, &ready);
    let line = p.first_line();
    let (port, cport) = (info["port"].as_u64().unwrap(), info["control_port"].as_u64().unwrap());
    assert_eq!(info["url"], format!("http://127.0.0.1:{port}/services/auth/"));
    assert_eq!(info["control_url"], format!("http://127.0.0.1:{cport}/"));
    assert_eq!(info["pid"].as_u64().unwrap(), p.0.id() as u64);
    assert_eq!(
        line,
        format!("fake-auth2 listening on http://127.0.0.1:{port}/services/auth/ control http://127.0.0.1:{cport}/\n")
    );
    let (auth, ctl) = (port_addr(&info, "port"), port_addr(&info, "control_port"));
    const TOKEN: &str = "/services/auth/api/V2/token";

    // Tokens from the file, with the file's cachefor as the default.
    let v = get(auth, TOKEN, Some("T1")).await.unwrap().json();
    assert_eq!(
        (v["user"].as_str(), v["mfa"].as_str(), v["cachefor"].as_u64()),
        (Some("alice"), Some("Used"), Some(1000))
    );
    assert_eq!(get(auth, TOKEN, Some("T2")).await.unwrap().status, 401);

    // Control API.
    let r = get(ctl, "/health", None).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = post_json(ctl, "/tokens", &json!({"token": "T3", "user": "carol", "mfa": null})).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = get(auth, TOKEN, Some("T3")).await.unwrap().json();
    assert_eq!(v["user"], "carol");
    assert!(v.get("mfa").is_none());
    let r =
        post_json(ctl, "/tokens", &json!([{"token": "T4", "user": "d"}, {"token": "T5", "user": "e"}])).await.unwrap();
    assert_eq!(r.json()["added"], 2);
    assert_eq!(get(auth, "/services/auth/api/V2/me", Some("T1")).await.unwrap().json()["customroles"], json!(["r1"]));

    assert_eq!(post_json(ctl, "/revoke", &json!({"token": "T3"})).await.unwrap().json()["revoked"], true);
    assert_eq!(get(auth, TOKEN, Some("T3")).await.unwrap().status, 401);

    let r = post_json(ctl, "/fault", &json!({"mode": "ignore_expiry"})).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(auth, TOKEN, Some("T2")).await.unwrap().status, 200);
    post_json(ctl, "/fault", &json!({"mode": "delay", "delay_ms": 200})).await.unwrap();
    assert_eq!(
        get(ctl, "/fault", None).await.unwrap().json(),
        json!({"mode": "delay", "delay_ms": 200, "listening": true})
    );
    let t = Instant::now();
    assert_eq!(get(auth, TOKEN, Some("T1")).await.unwrap().status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200), "the delay was not applied");

    // refuse: the Auth2 port is closed once the control call returns; control still works.
    assert_eq!(post_json(ctl, "/fault", &json!({"mode": "refuse"})).await.unwrap().status, 200);
    let err = tokio::net::TcpStream::connect(auth).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(get(ctl, "/fault", None).await.unwrap().json()["listening"], false);
    assert_eq!(post_json(ctl, "/fault", &json!({"mode": "none"})).await.unwrap().status, 200);
    assert_eq!(get(auth, TOKEN, Some("T1")).await.unwrap().status, 200);

    for (mode, status) in [
        ("status503", 503),
        ("html502", 502),
        ("malformed", 200),
        ("nouser", 200),
        ("status400html", 400),
        ("status400json", 400),
        ("redirect", 302),
    ] {
        let r = post_json(ctl, "/fault", &json!({"mode": mode})).await.unwrap();
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        assert_eq!(get(auth, TOKEN, Some("T1")).await.unwrap().status, status, "{mode}");
    }
    // The redirect points at the redirect target named in the ready file, which answers.
    let r = get(auth, TOKEN, Some("T1")).await.unwrap();
    let location = r.header("location").unwrap().to_string();
    let redirect_port = info["redirect_port"].as_u64().unwrap();
    assert_eq!(location, format!("http://127.0.0.1:{redirect_port}{TOKEN}"));
    assert_eq!(get(port_addr(&info, "redirect_port"), TOKEN, Some("T1")).await.unwrap().json()["user"], "alice");
    post_json(ctl, "/fault", &json!({"mode": "none"})).await.unwrap();

    let c = get(ctl, "/counts", None).await.unwrap().json();
    assert_eq!(c["by_token"]["T1"], 12, "{c}");
    assert_eq!(c["by_token"]["T2"], 2, "{c}");
    assert_eq!(c["by_token"]["T3"], 2, "{c}");
    assert_eq!(c["total"], 16, "{c}");
    assert_eq!(c["redirected"], 1, "{c}");
    assert_eq!(post_json(ctl, "/reset", &json!({})).await.unwrap().status, 200);
    assert_eq!(
        get(ctl, "/counts", None).await.unwrap().json(),
        json!({"total": 0, "by_token": {}, "untracked": 0, "redirected": 0})
    );

    // Control errors: 400 with a message.
    for (path, body) in [
        ("/fault", json!({"mode": "sideways"})),
        ("/fault", json!({"mode": "delay"})),
        ("/fault", json!({"moed": "none"})),
        ("/tokens", json!({"token": "x"})),
        ("/tokens", json!({"token": "x", "user": "u", "expire": 3})),
        ("/revoke", json!({})),
    ] {
        let r = post_json(ctl, path, &body).await.unwrap();
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = request(ctl, "POST", "/tokens", &[], b"{not json").await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(get(ctl, "/nothing", None).await.unwrap().status, 404);
    assert_eq!(get(ctl, "/tokens", None).await.unwrap().status, 405);

    // SIGTERM: clean exit, ready file removed.
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!ready.exists());
    assert!(tokio::net::TcpStream::connect(auth).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_exits_at_max_lifetime() {
    let dir = tmpdir("lifetime");
    let ready = dir.join("ready.json");
    let mut p = spawn(&["--max-lifetime-secs", "1", "--ready-file", ready.to_str().unwrap()]);
    let info = wait_ready(&mut p, &ready);
    assert!(info["port"].as_u64().unwrap() > 0);
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!ready.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_stops_on_sigint() {
    let dir = tmpdir("sigint");
    let ready = dir.join("ready.json");
    let mut p = spawn(&["--ready-file", ready.to_str().unwrap()]);
    wait_ready(&mut p, &ready);
    let ok = Command::new("kill").args(["-INT", &p.0.id().to_string()]).status().unwrap();
    assert!(ok.success());
    assert!(p.wait_exit(Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_refuses_non_loopback_and_bad_args() {
    let mut p = spawn(&["--bind", "0.0.0.0", "--max-lifetime-secs", "5"]);
    let s = p.wait_exit(Duration::from_secs(10));
    assert!(!s.success());
    let mut err = String::new();
    std::io::Read::read_to_string(p.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("non-loopback"), "{err}");

    let mut p = spawn(&["--port", "not-a-port"]);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(2));
    let mut p = spawn(&["--tokens", "/nonexistent/tokens.json"]);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(2));
}
