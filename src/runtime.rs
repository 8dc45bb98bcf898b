//! The library's one tokio runtime, used only for Auth2 I/O.
//!
//! Started lazily on the first exchange with two workers; cache hits never touch it. Exchanges
//! are spawned onto it and hand their result to waiting gRPC threads through
//! [`crate::flight`], whose waits are bounded: a caller never blocks on the runtime itself,
//! and the call works from any thread (even one that is itself inside another runtime). No JNI
//! call is ever made on these threads.

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

/// The runtime, started on first use; the error says why it could not start.
pub fn get() -> Result<&'static Runtime, String> {
    RUNTIME.as_ref().map_err(Clone::clone)
}
