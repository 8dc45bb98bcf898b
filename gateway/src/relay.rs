//! The bodies of a forwarded call, passed through frame by frame as the reader asks for them (so
//! HTTP/2 flow control reaches from the caller to the pod and back; nothing is buffered beyond
//! the connections' windows): counted, the status noted from the trailers, and the call's
//! access line written when the response ends — or when the caller goes away.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use crate::grpc::{status_headers, Code, Framing};
use crate::observe::{Call, Observe};
use crate::pool::{Lease, UpBody};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A response body on its way to the caller.
pub type DownBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> DownBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Bytes a call sent to its pod; shared by the request body (which counts) and the call's record
/// (which reports).
#[derive(Default)]
pub struct Sent(AtomicU64);

/// The caller's request body on its way to the pod.
pub struct Upload {
    inner: Incoming,
    sent: Arc<Sent>,
    observe: Arc<Observe>,
}

impl Upload {
    pub fn boxed(inner: Incoming, sent: Arc<Sent>, observe: Arc<Observe>) -> UpBody {
        Upload { inner, sent, observe }.boxed_unsync()
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(Some(data))) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let n = data.len() as u64;
            self.sent.0.fetch_add(n, Ordering::Relaxed);
            self.observe.request_bytes.inc_by(n);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A call that reached its pod. Its end (counted, logged) comes when this is dropped: when the
/// response ended, or when the caller went away (status CANCELLED).
pub struct Forwarded {
    call: Option<Call>,
    /// The pod's status once known (trailers, or a trailers-only response's headers).
    status: Option<Code>,
    sent: Arc<Sent>,
    received: u64,
    observe: Arc<Observe>,
    /// Keeps the pod connection open while the call lives.
    _lease: Lease,
}

impl Forwarded {
    pub fn new(call: Call, status: Option<Code>, sent: Arc<Sent>, lease: Lease, observe: Arc<Observe>) -> Forwarded {
        observe.live_streams.inc();
        Forwarded { call: Some(call), status, sent, received: 0, observe, _lease: lease }
    }

    fn user(&self) -> &str {
        self.call.as_ref().and_then(|c| c.user.as_deref()).unwrap_or("-")
    }

    fn pod(&self) -> &str {
        self.call.as_ref().and_then(|c| c.pod.as_ref()).map_or("-", |p| p.authority.as_str())
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.observe.live_streams.dec();
        if let Some(call) = self.call.take() {
            call.forwarded(self.status.unwrap_or(Code::Cancelled), self.sent.0.load(Ordering::Relaxed), self.received);
        }
    }
}

/// The pod's response body on its way back to the caller.
pub struct Download {
    inner: Incoming,
    framing: Framing,
    call: Forwarded,
    /// The gateway ended the stream itself (with trailers of its own).
    ended: bool,
}

impl Download {
    pub fn new(inner: Incoming, call: Forwarded) -> Download {
        Download { inner, framing: Framing::default(), call, ended: false }
    }
}

impl Body for Download {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.call.received += data.len() as u64;
                    this.call.observe.response_bytes.inc_by(data.len() as u64);
                    this.framing.feed(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.call.status = Some(Code::in_headers(trailers).unwrap_or(Code::Unknown));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => match pod_reset(&e) {
                // The pod reset the stream: the caller sees the same reset.
                Some(reason) => {
                    this.call.status = Some(Code::from_reset(reason));
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                // The connection to the pod broke. Between two messages the caller can be told
                // so properly (UNAVAILABLE, which clients retry); inside one only a reset is left.
                None if this.framing.at_boundary() => {
                    this.ended = true;
                    this.call.status = Some(Code::Unavailable);
                    let message = lost(this.call.user(), this.call.pod(), &e);
                    Poll::Ready(Some(Ok(Frame::trailers(status_headers(Code::Unavailable, &message)))))
                }
                None => {
                    this.call.status = Some(Code::Internal);
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            },
            None => {
                // Trailers-only from the pod: its status came with the headers.
                if this.call.status.is_none() {
                    this.call.status = Some(Code::Unknown);
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The message for a call whose pod connection broke.
pub fn lost(user: &str, pod: impl std::fmt::Display, e: &hyper::Error) -> String {
    format!("the connection to the Spark Connect server of KBase user '{user}' at {pod} was lost ({e}); retry")
}

/// The reason of a stream reset sent by the pod, if that is what `e` is.
pub fn pod_reset(e: &hyper::Error) -> Option<h2::Reason> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return if h2.is_reset() && h2.is_remote() { h2.reason() } else { None };
        }
        source = s.source();
    }
    None
}
