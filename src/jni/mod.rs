//! The JNI boundary, and the only place that knows about Java.
//!
//! * [`exports`]: every `Java_us_kbase_spark_NativeAuth_*` function, and nothing else;
//! * [`handle`]: an `Authenticator` crossing as a `long`, and the per-thread outcome of the
//!   last call that the shim reads after a denial or a warned allow;
//! * [`errors`]: what an error or a panic inside an export turns into;
//! * [`strings`]: Java strings and arrays in and out.
//!
//! Only primitives, strings and arrays of them cross; no export calls back into Java, and no
//! JNI call is made on the Auth2 I/O threads.

mod errors;
mod exports;
mod handle;
mod strings;
