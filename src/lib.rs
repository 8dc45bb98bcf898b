//! KBase Auth2 token validation for a Spark Connect server.
//!
//! The JVM interceptor `us.kbase.spark.KBaseAuthServerInterceptor` hands each gRPC call's
//! token metadata to [`Authenticator::authorize`] through JNI ([`jni_exports`]) and turns the
//! [`Decision`] into a gRPC status. Everything else here is plain Rust with no JNI in it, so
//! `tests/` and `benches/` use it directly.

pub mod auth2;
pub mod authenticator;
pub mod breaker;
pub mod cache;
pub mod decision;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod settings;
pub mod token;

mod boundary;
mod jni_exports;

pub use authenticator::Authenticator;
pub use decision::{Code, Decision, Denial, Reason};
pub use settings::{ConfigError, Settings};
