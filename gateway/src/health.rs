//! The gateway's own state (starting, ready, draining) and `grpc.health.v1.Health` on the gRPC
//! port, as the Python proxy serves it: `Check` and `Watch` for `""` and
//! `spark.connect.SparkConnectService`, SERVING until the gateway drains. No token needed.
//!
//! The two messages involved are one optional field each, so they are read and written here by
//! hand rather than with a protobuf code generator.

use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::grpc::{frame, status_headers, trailers_only, Code};
use crate::relay::{empty, BoxError, DownBody};

pub const PREFIX: &str = "/grpc.health.v1.Health/";
pub const CHECK: &str = "/grpc.health.v1.Health/Check";
pub const WATCH: &str = "/grpc.health.v1.Health/Watch";

/// The services whose health is reported.
pub const SERVICES: [&str; 2] = ["", "spark.connect.SparkConnectService"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    Draining,
}

/// Where the gateway is in its life; `/readyz` and the health service read it.
pub struct Lifecycle {
    tx: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { tx: watch::channel(Phase::Starting).0 }
    }
}

impl Lifecycle {
    pub fn set(&self, phase: Phase) {
        self.tx.send_replace(phase);
    }

    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    fn serving(phase: Phase) -> Status {
        if phase == Phase::Draining {
            Status::NotServing
        } else {
            Status::Serving
        }
    }

    /// Answers a call to `grpc.health.v1.Health`.
    pub async fn serve(&self, req: Request<Incoming>) -> Response<DownBody> {
        let path = req.uri().path().to_owned();
        if path != CHECK && path != WATCH {
            return trailers_only(
                Code::Unimplemented,
                &format!("{path} is not a method of grpc.health.v1.Health"),
                empty(),
            );
        }
        let service = match read_service(req.into_body()).await {
            Ok(s) => s,
            Err(why) => {
                return trailers_only(Code::InvalidArgument, &format!("bad HealthCheckRequest: {why}"), empty())
            }
        };
        let known = SERVICES.contains(&service.as_str());
        if path == CHECK {
            if !known {
                return trailers_only(Code::NotFound, &format!("unknown service '{service}'"), empty());
            }
            let frames = [Ok(Frame::data(status_message(Lifecycle::serving(self.phase())))), Ok(ok_trailers())];
            return grpc_response(StreamBody::new(stream::iter(frames)).boxed_unsync());
        }
        grpc_response(watch_body(self.tx.subscribe(), known))
    }
}

/// Watch: the status now, then each change; once the gateway drains, NOT_SERVING and the end of
/// the stream (so that the drain does not wait for watchers).
fn watch_body(rx: watch::Receiver<Phase>, known: bool) -> DownBody {
    enum State {
        First,
        Waiting,
        Closing,
        Done,
    }
    let frames = stream::unfold((rx, State::First), move |(mut rx, state)| async move {
        let status = |p| if known { Lifecycle::serving(p) } else { Status::ServiceUnknown };
        match state {
            State::First => {
                let phase = *rx.borrow_and_update();
                let next = if phase == Phase::Draining { State::Closing } else { State::Waiting };
                Some((Ok::<_, BoxError>(Frame::data(status_message(status(phase)))), (rx, next)))
            }
            State::Waiting => {
                let phase = match rx.changed().await {
                    Ok(()) => *rx.borrow_and_update(),
                    Err(_) => Phase::Draining,
                };
                let next = if phase == Phase::Draining { State::Closing } else { State::Waiting };
                Some((Ok(Frame::data(status_message(status(phase)))), (rx, next)))
            }
            State::Closing => {
                let t = status_headers(Code::Unavailable, "the gateway is shutting down; watch another replica");
                Some((Ok(Frame::trailers(t)), (rx, State::Done)))
            }
            State::Done => None,
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

fn grpc_response(body: DownBody) -> Response<DownBody> {
    let mut res = Response::new(body);
    res.headers_mut().insert(http::header::CONTENT_TYPE, crate::grpc::CONTENT_TYPE_GRPC);
    res
}

fn ok_trailers() -> Frame<Bytes> {
    Frame::trailers(status_headers(Code::Ok, ""))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

/// `HealthCheckResponse { status = 1 }`, framed.
fn status_message(s: Status) -> Bytes {
    frame(&[0x08, s as u8])
}

/// The `service` of a framed `HealthCheckRequest` (one message, uncompressed, small).
async fn read_service(body: Incoming) -> Result<String, String> {
    let collected = tokio::time::timeout(Duration::from_secs(10), Limited::new(body, 1024).collect())
        .await
        .map_err(|_| "the request did not arrive within 10s".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut buf = collected.to_bytes();
    if buf.len() < 5 {
        return Err("no message".into());
    }
    if buf.get_u8() != 0 {
        return Err("compressed messages are not supported".into());
    }
    let len = buf.get_u32() as usize;
    if buf.len() != len {
        return Err("one message expected".into());
    }
    parse_service(&buf).ok_or_else(|| "not a HealthCheckRequest".into())
}

/// Field 1 (`string service`) of a `HealthCheckRequest`; other fields are skipped.
fn parse_service(mut msg: &[u8]) -> Option<String> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut service = String::new();
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut msg)?;
                0
            }
            1 => 8,
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                if key >> 3 == 1 {
                    service = String::from_utf8(msg.get(..len)?.to_vec()).ok()?;
                }
                len
            }
            5 => 4,
            _ => return None,
        };
        msg = msg.get(skip..)?;
    }
    Some(service)
}

/// Whether a call with this path is for the health service.
pub fn is_health(path: &str) -> bool {
    path.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_field() {
        assert_eq!(parse_service(&[]).as_deref(), Some(""));
        let name = b"spark.connect.SparkConnectService";
        let mut m = vec![0x0a, name.len() as u8];
        m.extend_from_slice(name);
        assert_eq!(parse_service(&m).as_deref(), Some("spark.connect.SparkConnectService"));
        // Unknown fields are skipped.
        assert_eq!(parse_service(&[0x10, 0x96, 0x01, 0x0a, 1, b'x']).as_deref(), Some("x"));
        assert_eq!(parse_service(&[0x0a, 5, b'x']), None, "truncated");
        assert_eq!(parse_service(&[0x0b]), None, "bad wire type");
    }
}
