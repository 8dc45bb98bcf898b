//! Every `Java_us_kbase_spark_NativeAuth_*` export, and nothing else.
//!
//! Each body is one call to a wrapper that catches panics (`with_env`) and resolves errors by
//! a [`boundary`] policy, so nothing unwinds into the JVM. Only primitives and strings cross;
//! no export calls back into Java on the hot path.

use jni::objects::{JClass, JObjectArray, JString};
use jni::sys::{jboolean, jint, jlong};
use jni::EnvUnowned;

use crate::boundary::{self, BridgeError, ThrowToJava};
use crate::Authenticator;

/// `long create(String[] keysAndValues)`: a new authenticator; its handle is freed by `destroy`.
/// Throws `IllegalArgumentException` naming the key on a bad configuration.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_create<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    pairs: JObjectArray<'l, JString<'l>>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, BridgeError> {
        let map = boundary::read_pairs(env, &pairs)?;
        Ok(boundary::into_handle(Authenticator::from_map(&map)?))
    })
    .resolve::<ThrowToJava>()
}

/// `void destroy(long handle)`: frees the authenticator. The shim calls it exactly once.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_destroy<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    // Safety: the shim's Cleaner passes a live handle from `create`, once.
    env.with_env(|_| -> Result<(), BridgeError> {
        unsafe { boundary::drop_handle(handle) };
        Ok(())
    })
    .resolve::<ThrowToJava>()
}

/// `int authorize(long handle, String authorization, String kbaseToken, String peer)`:
/// 0 = allow, else the gRPC status code; details via `denialMessage`/`denialLogLine`.
/// Never throws: errors and panics become INTERNAL (13). The hot path, so it takes raw JNI
/// types and its own panic guard (see [`boundary::authorize_raw`]).
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_authorize(
    env: *mut jni::sys::JNIEnv,
    _class: jni::sys::jclass,
    handle: jlong,
    authorization: jni::sys::jstring,
    kbase_token: jni::sys::jstring,
    peer: jni::sys::jstring,
) -> jint {
    // Safety: called by the JVM as a native method, with this thread's env and live arguments.
    unsafe { boundary::authorize_raw(env, handle, authorization, kbase_token, peer) }
}

/// `String denialMessage()`: the status description of this thread's last denial.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_denialMessage<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> JString<'l> {
    env.with_env(|env| {
        let text = boundary::with_last_denial(|d| d.message.clone())
            .unwrap_or_else(|| crate::authenticator::MSG_INTERNAL.into());
        boundary::new_string(env, &text)
    })
    .resolve::<ThrowToJava>()
}

/// `String denialLogLine()`: the server log line of this thread's last denial.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_denialLogLine<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> JString<'l> {
    env.with_env(|env| {
        let text = boundary::with_last_denial(|d| d.log_line())
            .unwrap_or_else(|| "KBase auth: no denial recorded on this thread".into());
        boundary::new_string(env, &text)
    })
    .resolve::<ThrowToJava>()
}

/// `boolean wantsPeerAddress(long handle)`: whether `authorize` needs the caller's IP.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_wantsPeerAddress<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> jboolean {
    env.with_env(|_| -> Result<jboolean, BridgeError> {
        Ok(unsafe { boundary::handle_ref(handle)? }.wants_peer_address())
    })
    .resolve::<ThrowToJava>()
}

/// `String describe(long handle)`: the effective settings, one line, no secrets.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_describe<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> JString<'l> {
    env.with_env(|env| {
        let text = unsafe { boundary::handle_ref(handle)? }.describe();
        boundary::new_string(env, &text)
    })
    .resolve::<ThrowToJava>()
}

/// `String metrics(long handle)`: the counters as JSON.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_metrics<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> JString<'l> {
    env.with_env(|env| {
        let text = unsafe { boundary::handle_ref(handle)? }.metrics().to_json();
        boundary::new_string(env, &text)
    })
    .resolve::<ThrowToJava>()
}

/// `int panicProbe()`: panics inside the guard `authorize` runs in; returns what the wrapper made of
/// it (13, INTERNAL). Proves in tests that a panic cannot cross into the JVM or allow a call.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_panicProbe<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> jint {
    env.with_env(|_| -> Result<jint, BridgeError> { Ok(boundary::guarded_status(|| panic!("panic probe"))) })
        .resolve::<ThrowToJava>()
}
