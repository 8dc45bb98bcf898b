//! The control API, on its own port so it keeps answering while the Auth2 port refuses.
//!
//! `POST /tokens` (an entry or an array of entries), `POST /revoke {"token":T}`,
//! `POST /fault {"mode":…,"delay_ms":N}`, `GET /fault`, `GET /counts` (`total`, `by_token`,
//! `untracked`, and `redirected`: requests the redirect target received), `POST /reset`,
//! `GET /health`. Bad requests get 400 with `{"error": message}`.

use crate::model::{Fault, TokenEntry};
use crate::respond::{json, text, Body};
use crate::server::accept_forever;
use crate::state::State;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json as j, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const MAX_BODY: usize = 1 << 20;
/// Bound on waiting for the Auth2 listener to close or rebind after a fault change.
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(state: Arc<State>, listener: TcpListener) {
    accept_forever(listener, move |req| handle(state.clone(), req)).await
}

fn bad(msg: impl Into<String>) -> Response<Body> {
    json(StatusCode::BAD_REQUEST, &j!({ "error": msg.into() }))
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeReq {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultReq {
    mode: String,
    #[serde(default)]
    delay_ms: Option<u64>,
}

fn fault_json(f: &Fault) -> Value {
    match f {
        Fault::Delay(d) | Fault::LateAnswer(d) => j!({ "mode": f.mode_name(), "delay_ms": d.as_millis() as u64 }),
        _ => j!({ "mode": f.mode_name() }),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad(format!("reading body: {e}"))),
    };
    let ok = |v: Value| json(StatusCode::OK, &v);
    let resp = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/health") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/counts") => {
            let (total, by_token, untracked) = state.counts();
            let redirected = state.redirected();
            ok(j!({ "total": total, "by_token": by_token, "untracked": untracked, "redirected": redirected }))
        }
        (&Method::POST, "/reset") => {
            state.reset_counts();
            ok(j!({ "ok": true }))
        }
        (&Method::POST, "/tokens") => match add_tokens(&state, &body) {
            Ok(n) => ok(j!({ "ok": true, "added": n })),
            Err(msg) => bad(msg),
        },
        (&Method::POST, "/revoke") => match parse::<RevokeReq>(&body) {
            Ok(r) => ok(j!({ "revoked": state.revoke(&r.token) })),
            Err(msg) => bad(msg),
        },
        (&Method::GET, "/fault") => {
            let mut v = fault_json(&state.fault());
            v["listening"] = Value::Bool(state.applied_tx.borrow().listening);
            ok(v)
        }
        (&Method::POST, "/fault") => match parse::<FaultReq>(&body) {
            Ok(r) => match Fault::parse(&r.mode, r.delay_ms) {
                Ok(f) => set_fault(&state, f).await,
                Err(msg) => bad(msg),
            },
            Err(msg) => bad(msg),
        },
        (_, "/health" | "/counts" | "/reset" | "/tokens" | "/revoke" | "/fault") => {
            json(StatusCode::METHOD_NOT_ALLOWED, &j!({ "error": "method not allowed" }))
        }
        _ => json(StatusCode::NOT_FOUND, &j!({ "error": "no such control endpoint" })),
    };
    Ok(resp)
}

fn add_tokens(state: &State, body: &Bytes) -> Result<usize, String> {
    let v: Value = parse(body)?;
    let entries: Vec<TokenEntry> = if v.is_array() {
        serde_json::from_value(v).map_err(|e| format!("bad token entries: {e}"))?
    } else {
        vec![serde_json::from_value(v).map_err(|e| format!("bad token entry: {e}"))?]
    };
    let n = entries.len();
    entries.into_iter().for_each(|e| state.add_token(e));
    Ok(n)
}

/// Sets the fault and answers only once the listener has applied it, so a harness can
/// connect right after and see ECONNREFUSED (or a working port again).
async fn set_fault(state: &State, f: Fault) -> Response<Body> {
    let body = fault_json(&f);
    match wait_applied(state, state.set_fault(f)).await {
        Ok(()) => json(StatusCode::OK, &body),
        Err(e) => json(StatusCode::INTERNAL_SERVER_ERROR, &j!({ "error": e })),
    }
}

/// Waits until the listener task has acknowledged fault epoch `epoch`.
pub(crate) async fn wait_applied(state: &State, epoch: u64) -> Result<(), String> {
    let mut rx = state.applied_tx.subscribe();
    let waited =
        tokio::time::timeout(APPLY_TIMEOUT, async { rx.wait_for(|a| a.epoch >= epoch).await.map(|a| a.error.clone()) })
            .await;
    match waited {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(err))) => Err(err),
        Ok(Err(_)) => Err("server stopped".to_string()),
        Err(_) => Err("timed out waiting for the listener to apply the fault".to_string()),
    }
}
