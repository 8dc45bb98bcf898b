//! The admin HTTP port: `/healthz` (the process answers), `/readyz` (200 only while serving:
//! 503 while starting and while draining) and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::health::{Lifecycle, Phase};
use crate::observe::Observe;

/// What Prometheus expects from `prometheus-client`'s OpenMetrics text.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin port until the task is dropped.
pub async fn serve(listener: TcpListener, observe: Arc<Observe>, lifecycle: Arc<Lifecycle>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, say: do not spin.
                tracing::warn!("admin port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (observe, lifecycle) = (Arc::clone(&observe), Arc::clone(&lifecycle));
        let service = service_fn(move |req| {
            let res = answer(&req, &observe, &lifecycle);
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = conn.await;
        });
    }
}

fn answer(req: &Request<Incoming>, observe: &Observe, lifecycle: &Lifecycle) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
        res
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match lifecycle.phase() {
            Phase::Ready => text(StatusCode::OK, "ready\n"),
            Phase::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            Phase::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        },
        "/metrics" => {
            let mut res = Response::new(Full::new(Bytes::from(observe.encode())));
            res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(METRICS_CONTENT_TYPE));
            res
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /metrics\n"),
    }
}
