//! `kbase-spark-gateway`: one Spark Connect address for every KBase user.
//!
//! Each gRPC call's KBase token is validated by the same core as the plugin
//! (`kbase_spark_auth`, linked without JNI), and the call is forwarded, as HTTP/2 frames and
//! never decoded, to the user's own Spark Connect pod. The modules follow a call's life:
//! [`settings`] (what to do), [`proxy`] (the call: validate, route, connect, forward),
//! [`route`] (which pod, and where it is), [`pool`] (connections to pods), [`relay`] (the bodies
//! on their way, and the end of the call), [`observe`] (metrics and the access line); around them
//! [`server`] (ports, TLS, drain), [`health`] and [`admin`].

pub mod admin;
pub mod grpc;
pub mod health;
pub mod observe;
pub mod pool;
pub mod proxy;
pub mod relay;
pub mod route;
pub mod server;
pub mod settings;
