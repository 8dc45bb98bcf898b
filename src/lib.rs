//! KBase Auth2 token validation for a Spark Connect server.
//!
//! The JVM interceptor `us.kbase.spark.KBaseAuthServerInterceptor` hands each gRPC call's
//! token metadata to [`Authenticator::authorize`] through JNI ([`jni`](crate::jni), the only
//! module that knows about Java) and turns its answer into a gRPC status. Everything else here
//! is plain Rust, so `tests/` and `benches/` call the very same function.

pub mod admission;
pub mod auth2;
pub mod authenticator;
pub mod cache;
pub mod clock;
pub mod decision;
pub mod denial_log;
pub mod flight;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod settings;
pub mod startup;
pub mod token;
pub mod users;

#[cfg(feature = "jni")]
mod jni;

pub use authenticator::{Allowed, Authenticator};
pub use decision::{Code, Denial, Reason};
pub use settings::{ConfigError, Settings};
pub use users::UserId;
