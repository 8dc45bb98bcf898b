//! The library's one tokio runtime, used only for Auth2 I/O.
//!
//! Started lazily on the first cache miss with two workers; cache hits never touch it. Callers
//! (gRPC threads) hand it a future and wait on a plain channel with a deadline, so the wait is
//! bounded even if the runtime misbehaves, and the call works from any thread (even one that
//! is itself inside another runtime).

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use once_cell::sync::Lazy;
use tokio::runtime::Runtime;

static RUNTIME: Lazy<Result<Runtime, String>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4) // DNS lookups
        .thread_name("kbase-auth2-io")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the Auth2 I/O runtime: {e}"))
});

/// Runs `fut` on the runtime and waits at most `deadline` for its output.
pub fn run<F>(fut: F, deadline: Duration) -> Result<F::Output, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = RUNTIME.as_ref().map_err(Clone::clone)?;
    let (tx, rx) = mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(deadline).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => format!("no answer from the Auth2 I/O runtime within {deadline:?}"),
        mpsc::RecvTimeoutError::Disconnected => "the Auth2 I/O task ended without an answer".to_owned(),
    })
}
