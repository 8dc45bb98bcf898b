//! Every `Java_us_kbase_spark_NativeAuth_*` export, and nothing else.
//!
//! Each body is one call to a wrapper that catches panics and resolves errors by an
//! [`errors`](super::errors) policy, so nothing unwinds into the JVM. The Java side of each is
//! documented on the `native` method of the same name in `NativeAuth.java`.

use jni::objects::{JClass, JLongArray, JObject, JObjectArray, JString};
use jni::sys::{jboolean, jbyteArray, jint, jlong, jobjectArray, jstring};
use jni::EnvUnowned;

use super::errors::{guarded_status, BridgeError, ThrowToJava};
use super::handle::{self, Recorded};
use super::strings;
use crate::authenticator::MSG_INTERNAL;
use crate::metrics::METRIC_NAMES;
use crate::settings::UserContextMode;
use crate::users::UserId;
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
        let map = strings::read_pairs(env, &pairs)?;
        Ok(handle::into_handle(Authenticator::from_map(&map)?))
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
        unsafe { handle::drop_handle(handle) };
        Ok(())
    })
    .resolve::<ThrowToJava>()
}

/// `int authorize(long handle, byte[] authorization, int authorizationLength,
/// byte[][] moreAuthorization, byte[] kbaseToken, int kbaseTokenLength, byte[][] moreKbaseTokens,
/// String peer)`: the header values as gRPC's transport received them, with their lengths. Returns `1..=16` for a denial (that gRPC status code; see
/// `denialMessage`, `lastLogLines`), or `<= 0` for an allow: `-(2 * (user + 1) + warning)`, where
/// `user + 1` is 0 for a token-less call from a trusted address and else the verified user's
/// number (`userName`) plus one, and `warning` is 1 when a WARN line waits in `lastLogLines`
/// (the encoding is [`handle::record`]'s). Never throws: errors and panics become INTERNAL (13).
/// The hot path, so it takes raw JNI types (see [`strings::with_metadata`]).
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_authorize(
    env: *mut jni::sys::JNIEnv,
    _class: jni::sys::jclass,
    handle: jlong,
    authorization: jbyteArray,
    authorization_len: jint,
    more_authorization: jobjectArray,
    kbase_token: jbyteArray,
    kbase_token_len: jint,
    more_kbase_tokens: jobjectArray,
    peer: jstring,
) -> jint {
    guarded_status(|| {
        // Safety: called by the JVM as a native method, with this thread's env and live
        // arguments; the shim passes a live handle.
        let auth = unsafe { handle::handle_ref(handle)? };
        let metadata =
            ((authorization, authorization_len, more_authorization), (kbase_token, kbase_token_len, more_kbase_tokens));
        Ok(unsafe { strings::with_metadata(env, metadata.0, metadata.1, peer, |a, k, p| auth.authorize(a, k, p)) })
    })
}

/// `int userContextMode(long handle)`: `spark.kbase.auth.userContext` as 0 off, 1 rewrite,
/// 2 require (the shim reads it once).
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_userContextMode<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> jint {
    env.with_env(|_| -> Result<jint, BridgeError> {
        Ok(match unsafe { handle::handle_ref(handle)? }.settings().user_context {
            UserContextMode::Off => 0,
            UserContextMode::Rewrite => 1,
            UserContextMode::Require => 2,
        })
    })
    .resolve::<ThrowToJava>()
}

/// `String userName(long handle, int user)`: the KBase user name behind a user number that
/// `authorize` returned. Throws `IllegalStateException` for a number it never returned.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_userName<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    user: jint,
) -> JString<'l> {
    env.with_env(|env| {
        let auth = unsafe { handle::handle_ref(handle)? };
        let name = u32::try_from(user)
            .ok()
            .and_then(|u| auth.user_name(UserId(u)))
            .ok_or(BridgeError::Usage("no such user number"))?;
        strings::new_string(env, &name)
    })
    .resolve::<ThrowToJava>()
}

/// `int refuseUserContext(long handle, int user, String claimedUserId)`: records the refusal of
/// a request message whose `user_context.user_id` is not the verified user `user`
/// (`userContext=require`) like a denial of `authorize`, and returns its status (7); then
/// `denialMessage` and `lastLogLines` describe it. Never throws: errors become INTERNAL (13).
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_refuseUserContext<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    user: jint,
    claimed: JString<'l>,
) -> jint {
    env.with_env(|env| -> Result<jint, BridgeError> {
        Ok(guarded_status(|| {
            let auth = unsafe { handle::handle_ref(handle)? };
            let user = u32::try_from(user).map_err(|_| BridgeError::Usage("negative user number"))?;
            let claimed = if claimed.is_null() { String::new() } else { claimed.try_to_string(env)? };
            Ok(Err(auth.refuse_user_context(UserId(user), &claimed)))
        }))
    })
    .resolve::<ThrowToJava>()
}

/// `String denialMessage()`: the status description of this thread's last denial.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_denialMessage<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> JString<'l> {
    env.with_env(|env| {
        let text = handle::with_last(|r| match r {
            Some(Recorded::Denied(d)) => d.message.clone(),
            _ => MSG_INTERNAL.to_owned(),
        });
        strings::new_string(env, &text)
    })
    .resolve::<ThrowToJava>()
}

/// `String[] lastLogLines()`: the server log lines of this thread's last denial or warned allow,
/// or null when the denial log's rate limit suppressed them.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_lastLogLines<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> JObject<'l> {
    env.with_env(|env| -> Result<JObject<'l>, BridgeError> {
        let lines = handle::with_last(|r| match r {
            Some(Recorded::Denied(d)) => d.log_lines(),
            Some(Recorded::Warned(line)) => vec![line.clone()],
            None => vec!["KBase auth: no outcome recorded on this thread".to_owned()],
        });
        if lines.is_empty() {
            return Ok(JObject::null());
        }
        Ok(strings::new_string_array(env, &lines)?.into())
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
        Ok(unsafe { handle::handle_ref(handle)? }.wants_peer_address())
    })
    .resolve::<ThrowToJava>()
}

/// `String describe(long handle)`: the start-up line (version and effective settings).
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_describe<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> JString<'l> {
    env.with_env(|env| {
        let text = unsafe { handle::handle_ref(handle)? }.describe();
        strings::new_string(env, &text)
    })
    .resolve::<ThrowToJava>()
}

/// `String[] warnings(long handle)`: the start-up warnings, one line each (maybe none).
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_warnings<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> JObjectArray<'l, JString<'l>> {
    env.with_env(|env| {
        let lines = unsafe { handle::handle_ref(handle)? }.warnings();
        strings::new_string_array(env, &lines)
    })
    .resolve::<ThrowToJava>()
}

/// `String[] metricNames()`: the counter names, in the order of `metricValues`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_metricNames<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> JObjectArray<'l, JString<'l>> {
    env.with_env(|env| strings::new_string_array(env, &METRIC_NAMES)).resolve::<ThrowToJava>()
}

/// `long[] metricValues(long handle)`: one snapshot of every counter.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_metricValues<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) -> JLongArray<'l> {
    env.with_env(|env| {
        let values = unsafe { handle::handle_ref(handle)? }.metrics().values();
        strings::new_long_array(env, &values)
    })
    .resolve::<ThrowToJava>()
}

/// `int panicProbe()`: panics inside the guard `authorize` runs in; returns what the wrapper
/// made of it (13, INTERNAL). Proves in tests that a panic cannot cross into the JVM or allow a
/// call.
#[unsafe(no_mangle)]
pub extern "system" fn Java_us_kbase_spark_NativeAuth_panicProbe<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) -> jint {
    env.with_env(|_| -> Result<jint, BridgeError> { Ok(guarded_status(|| panic!("panic probe"))) })
        .resolve::<ThrowToJava>()
}
