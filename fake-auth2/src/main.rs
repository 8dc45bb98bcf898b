//! `fake-auth2` as a process, for end-to-end tests: the Auth2 port plus a control port.

use fake_auth2::{FakeAuth2, FakeConfig, TlsIdentity, TokenFile};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: fake-auth2 [--port P] [--bind ADDR] [--allow-non-loopback] [--control-port P]
                  [--tokens FILE] [--prefix /PATH] [--cachefor MS] [--max-lifetime-secs N]
                  [--ready-file PATH] [--tls-cert PEM --tls-key PEM]
  --port P               Auth2 port, 0 = ephemeral (default 0)
  --bind ADDR            address to bind (default 127.0.0.1; loopback only unless --allow-non-loopback)
  --control-port P       control API port, 0 = ephemeral (default 0)
  --tokens FILE          JSON {\"cachefor\":MS,\"tokens\":[entry,...]}
  --prefix /PATH         serve the Auth2 root at /PATH/ instead of /
  --cachefor MS          default cachefor for tokens (default 300000; the tokens file wins)
  --max-lifetime-secs N  exit by itself after N seconds (default 3600)
  --ready-file PATH      once listening, write {url,control_url,port,control_port,redirect_port,pid} there
  --tls-cert PEM         serve the Auth2 port over HTTPS with this certificate chain (needs --tls-key)
  --tls-key PEM          the certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM)

control API (plain HTTP on the control port):
  POST /tokens {entry} or [entries]   GET /counts   POST /reset   GET /health
  POST /revoke {\"token\":T}           GET /fault    POST /fault {\"mode\":M[,\"delay_ms\":N]}
fault modes (affect /api/V2/token and /api/V2/me only):
  none           normal answers; 401/400 carry Auth2's error JSON (appcode 10020 / 10010)
  refuse         the Auth2 port is closed (connects get ECONNREFUSED)
  delay          answer normally after delay_ms
  late_answer    look the token up on arrival, answer after delay_ms (the token may expire meanwhile)
  status503      503 with an Auth2-style JSON error
  html502        502 with nginx's HTML error page
  malformed      200 application/json with a truncated body
  nouser         200 token JSON without 'user'
  ignore_expiry  200 for expired tokens, with their past 'expires'
  status400html  400 with an HTML body (a proxy or WAF in front of Auth2)
  status400json  400 with JSON that is not Auth2's error object
  drop_token     Auth2's own 400 'no authentication token' (appcode 10010) whatever the request
                 carried: a proxy in front of Auth2 that drops the Authorization header
  redirect       302 to the redirect target, a second listener that serves the same API;
                 GET /counts reports its requests as 'redirected'";

struct Args {
    cfg: FakeConfig,
    tokens: Option<PathBuf>,
    cachefor: Option<u64>,
    max_lifetime: Duration,
    ready_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        cfg: FakeConfig::new().control_port(0),
        tokens: None,
        cachefor: None,
        max_lifetime: Duration::from_secs(3600),
        ready_file: None,
        tls_cert: None,
        tls_key: None,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
        v.parse().map_err(|_| format!("{flag}: not a valid number: {v:?}"))
    }
    while let Some(flag) = it.next() {
        if flag == "--allow-non-loopback" {
            a.cfg.allow_non_loopback = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let v = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        match flag.as_str() {
            "--port" => a.cfg.port = num(&flag, v)?,
            "--bind" => a.cfg.bind = v.parse::<IpAddr>().map_err(|_| format!("--bind: not an IP address: {v:?}"))?,
            "--control-port" => a.cfg.control_port = Some(num(&flag, v)?),
            "--tokens" => a.tokens = Some(v.into()),
            "--prefix" => a.cfg.prefix = v,
            "--cachefor" => a.cachefor = Some(num(&flag, v)?),
            "--max-lifetime-secs" => match num::<u64>(&flag, v)? {
                0 => return Err("--max-lifetime-secs must be at least 1".into()),
                n => a.max_lifetime = Duration::from_secs(n),
            },
            "--ready-file" => a.ready_file = Some(v.into()),
            "--tls-cert" => a.tls_cert = Some(v.into()),
            "--tls-key" => a.tls_key = Some(v.into()),
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    Ok(a)
}

fn load_tokens(path: &Path, cfg: &mut FakeConfig) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--tokens {}: {e}", path.display()))?;
    let file: TokenFile = serde_json::from_str(&text).map_err(|e| format!("--tokens {}: {e}", path.display()))?;
    if let Some(c) = file.cachefor {
        cfg.cachefor_ms = c;
    }
    cfg.tokens.extend(file.tokens);
    Ok(())
}

/// Write to a temporary file and rename, so a reader never sees a partial file.
fn write_ready_file(path: &Path, fake: &FakeAuth2) -> std::io::Result<()> {
    let control = fake.control_addr().map(|a| a.port());
    let body = serde_json::json!({
        "url": fake.url(),
        "control_url": fake.control_url(),
        "port": fake.addr().port(),
        "control_port": control,
        "redirect_port": fake.redirect_target().port(),
        "pid": std::process::id(),
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, path)
}

async fn wait_for_stop(max_lifetime: Duration) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            // Without signal handlers the default action (exit) still applies.
            tokio::time::sleep(max_lifetime).await;
            return "max lifetime reached";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = tokio::time::sleep(max_lifetime) => "max lifetime reached",
    }
}

fn main() -> ExitCode {
    let mut args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("fake-auth2: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(c) = args.cachefor {
        args.cfg.cachefor_ms = c;
    }
    if let Some(path) = &args.tokens {
        if let Err(msg) = load_tokens(path, &mut args.cfg) {
            eprintln!("fake-auth2: {msg}");
            return ExitCode::from(2);
        }
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match TlsIdentity::from_files(cert, key) {
            Ok(id) => args.cfg.tls = Some(id),
            Err(e) => {
                eprintln!("fake-auth2: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-auth2: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let fake = match FakeAuth2::start(args.cfg).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("fake-auth2: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let control_url = fake.control_url().unwrap_or_default();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "fake-auth2 listening on {} control {}", fake.url(), control_url);
        let _ = out.flush();
        drop(out);
        if let Some(path) = &args.ready_file {
            if let Err(e) = write_ready_file(path, &fake) {
                eprintln!("fake-auth2: cannot write ready file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        let why = wait_for_stop(args.max_lifetime).await;
        eprintln!("fake-auth2: stopping ({why})");
        if let Some(path) = &args.ready_file {
            // The file announces a live server; it is no longer one.
            let _ = std::fs::remove_file(path);
        }
        drop(fake);
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.cfg.port, 0);
        assert_eq!(a.cfg.control_port, Some(0));
        assert!(a.cfg.bind.is_loopback());
        assert_eq!(a.max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--port",
            "8080",
            "--control-port",
            "9",
            "--prefix",
            "/x",
            "--bind",
            "::1",
            "--max-lifetime-secs",
            "5",
            "--ready-file",
            "/tmp/r",
            "--cachefor",
            "7",
        ])
        .unwrap();
        assert_eq!((a.cfg.port, a.cfg.control_port), (8080, Some(9)));
        assert_eq!(a.cfg.prefix, "/x");
        assert_eq!(a.cfg.bind, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(a.max_lifetime, Duration::from_secs(5));
        assert_eq!(a.cachefor, Some(7));
    }

    #[test]
    fn usage_names_every_fault_mode() {
        for mode in fake_auth2::Fault::MODES {
            assert!(USAGE.contains(&format!("\n  {mode} ")), "usage does not document mode {mode}");
        }
    }

    #[test]
    fn bad_flags() {
        assert!(parse(&["--port"]).is_err());
        assert!(parse(&["--port", "x"]).is_err());
        assert!(parse(&["--bind", "localhost"]).is_err());
        assert!(parse(&["--max-lifetime-secs", "0"]).is_err());
        assert!(parse(&["--what", "1"]).is_err());
        assert!(parse(&["--tls-cert", "/c.pem"]).is_err(), "a certificate without its key");
        assert!(parse(&["--tls-key", "/k.pem"]).is_err(), "a key without its certificate");
        let a = parse(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]).unwrap();
        assert_eq!((a.tls_cert.unwrap(), a.tls_key.unwrap()), (PathBuf::from("/c.pem"), PathBuf::from("/k.pem")));
    }
}
