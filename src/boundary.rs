//! The JNI boundary's rules, kept apart from the exports themselves:
//!
//! * handles: an `Authenticator` crosses as a `long` (a leaked `Box`), freed by `destroy`;
//! * error policies: what an error or a panic inside an export turns into — a Java exception
//!   for set-up calls, an INTERNAL denial (never "allow") for `authorize`;
//! * the per-thread denial that `denialMessage`/`denialLogLine` read after a non-zero verdict,
//!   so the allow path returns a plain `int` and creates no Java object.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;

use jni::errors::ErrorPolicy;
use jni::objects::{JObjectArray, JString};
use jni::strings::JNIString;
use jni::sys::jint;
use jni::{jni_str, Env};
use thiserror::Error;

use crate::authenticator::internal_error;
use crate::decision::{Code, Denial};
use crate::settings::ConfigError;
use crate::Authenticator;

#[derive(Debug, Error)]
pub enum BridgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("JNI call failed: {0}")]
    Jni(#[from] jni::errors::Error),
    #[error("{0}")]
    Usage(&'static str),
}

thread_local! {
    static LAST_DENIAL: RefCell<Option<Denial>> = const { RefCell::new(None) };
}

pub fn record_denial(d: Denial) {
    LAST_DENIAL.with(|c| *c.borrow_mut() = Some(d));
}

/// Reads the calling thread's last denial through `f`.
pub fn with_last_denial<T>(f: impl FnOnce(&Denial) -> T) -> Option<T> {
    LAST_DENIAL.with(|c| c.borrow().as_ref().map(f))
}

pub fn into_handle(auth: Authenticator) -> i64 {
    Box::into_raw(Box::new(auth)) as i64
}

/// # Safety
/// `handle` must come from [`into_handle`] and not have been passed to [`drop_handle`].
pub unsafe fn handle_ref<'a>(handle: i64) -> Result<&'a Authenticator, BridgeError> {
    if handle == 0 {
        return Err(BridgeError::Usage("null authenticator handle"));
    }
    Ok(unsafe { &*(handle as *const Authenticator) })
}

/// # Safety
/// As for [`handle_ref`]; the handle is dead afterwards.
pub unsafe fn drop_handle(handle: i64) {
    if handle != 0 {
        drop(unsafe { Box::from_raw(handle as *mut Authenticator) });
    }
}

/// The Java `String[]` of alternating keys and values as a map.
pub fn read_pairs(env: &mut Env<'_>, array: &JObjectArray<'_, JString<'_>>) -> Result<HashMap<String, String>, BridgeError> {
    if array.is_null() {
        return Err(BridgeError::Usage("settings array is null"));
    }
    let len = array.len(env)?;
    if len % 2 != 0 {
        return Err(BridgeError::Usage("settings array must hold key/value pairs"));
    }
    let mut map = HashMap::with_capacity(len / 2);
    for i in (0..len).step_by(2) {
        let key = array.get_element(env, i)?;
        let value = array.get_element(env, i + 1)?;
        if key.is_null() || value.is_null() {
            return Err(BridgeError::Usage("settings array holds a null"));
        }
        map.insert(key.try_to_string(env)?, value.try_to_string(env)?);
    }
    Ok(map)
}

/// Decides a call given the three metadata strings (any may be null).
pub fn authorize(
    env: &mut Env<'_>,
    handle: i64,
    authorization: &JString<'_>,
    kbase_token: &JString<'_>,
    peer: &JString<'_>,
) -> Result<jint, BridgeError> {
    // Safety: the Java shim passes the handle it got from `create` and keeps it alive.
    let auth = unsafe { handle_ref(handle)? };
    let a = if authorization.is_null() { None } else { Some(authorization.mutf8_chars(env)?) };
    let k = if kbase_token.is_null() { None } else { Some(kbase_token.mutf8_chars(env)?) };
    let p = if peer.is_null() { None } else { Some(peer.mutf8_chars(env)?) };
    let (a, k, p) = (a.as_ref().map(|c| c.to_str()), k.as_ref().map(|c| c.to_str()), p.as_ref().map(|c| c.to_str()));
    match auth.authorize_status(a.as_deref(), k.as_deref(), p.as_deref()) {
        Ok(()) => Ok(0),
        Err(d) => {
            let status = d.code() as jint;
            record_denial(d);
            Ok(status)
        }
    }
}

pub fn new_string<'l>(env: &mut Env<'l>, s: &str) -> Result<JString<'l>, BridgeError> {
    Ok(JString::from_str(env, s)?)
}

pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Error policy of `authorize`: every error or panic becomes an INTERNAL denial, recorded for
/// the shim to log. The defaults of `ErrorPolicy` return `0` — "allow" — so all four hooks
/// are overridden.
pub struct DenyInternal;

const INTERNAL: jint = Code::Internal as jint;

impl<E: std::fmt::Display> ErrorPolicy<jint, E> for DenyInternal {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'a: 'b, 'b>(env: &mut Env<'a>, _: &mut (), err: E) -> jni::errors::Result<jint> {
        if env.exception_check() {
            env.exception_clear(); // the shim gets the denial instead of an exception
        }
        record_denial(internal_error(format!("native authorize failed: {err}")));
        Ok(INTERNAL)
    }

    fn on_panic<'a: 'b, 'b>(env: &mut Env<'a>, _: &mut (), payload: Box<dyn Any + Send>) -> jni::errors::Result<jint> {
        if env.exception_check() {
            env.exception_clear();
        }
        record_denial(internal_error(format!("panic in native authorize: {}", panic_text(&*payload))));
        std::mem::forget(payload); // dropping a payload can itself panic
        Ok(INTERNAL)
    }

    fn on_internal_jni_error<'a: 'b, 'b>(_: &mut (), err: jni::errors::Error) -> jint {
        record_denial(internal_error(format!("JNI failure while denying: {err}")));
        INTERNAL
    }

    fn on_internal_panic<'a: 'b, 'b>(_: &mut (), _: Box<dyn Any + Send>) -> jint {
        INTERNAL
    }
}

/// Error policy of the set-up and read-out calls: a configuration error becomes an
/// `IllegalArgumentException` carrying its message (which names the key); anything else an
/// `IllegalStateException`. Java then sees the exception; the returned default is ignored.
pub struct ThrowToJava;

impl<T: Default> ErrorPolicy<T, BridgeError> for ThrowToJava {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'a: 'b, 'b>(env: &mut Env<'a>, _: &mut (), err: BridgeError) -> jni::errors::Result<T> {
        if env.exception_check() {
            return Ok(T::default());
        }
        let class = match err {
            BridgeError::Config(_) => jni_str!("java/lang/IllegalArgumentException"),
            _ => jni_str!("java/lang/IllegalStateException"),
        };
        let _ = env.throw_new(class, JNIString::new(err.to_string()));
        Ok(T::default())
    }

    fn on_panic<'a: 'b, 'b>(env: &mut Env<'a>, _: &mut (), payload: Box<dyn Any + Send>) -> jni::errors::Result<T> {
        let text = panic_text(&*payload);
        std::mem::forget(payload);
        if !env.exception_check() {
            let _ = env.throw_new(
                jni_str!("java/lang/IllegalStateException"),
                JNIString::new(format!("panic in KBase auth native code: {text}")),
            );
        }
        Ok(T::default())
    }
}
