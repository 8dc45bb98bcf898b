//! The JNI boundary's rules, kept apart from the exports themselves:
//!
//! * handles: an `Authenticator` crosses as a `long` (a leaked `Box`), freed by `destroy`;
//! * error policies: what an error or a panic inside an export turns into — a Java exception
//!   for set-up calls, an INTERNAL denial (never "allow") for `authorize`;
//! * the per-thread denial that `denialMessage`/`denialLogLine` read after a non-zero verdict,
//!   so the allow path returns a plain `int` and creates no Java object.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::panic::AssertUnwindSafe;

use jni::errors::ErrorPolicy;
use jni::objects::{JObjectArray, JString};
use jni::strings::{JNIStr, JNIString};
use jni::sys::{self, jint, jstring};
use jni::{jni_str, Env};
use thiserror::Error;

use crate::authenticator::internal_error;
use crate::decision::Denial;
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
pub fn read_pairs(
    env: &mut Env<'_>,
    array: &JObjectArray<'_, JString<'_>>,
) -> Result<HashMap<String, String>, BridgeError> {
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

/// The hot path, on raw JNI: decides a call given the three metadata strings (any may be
/// null) and returns 0 (allow) or the gRPC status code, recording a denial for the shim.
///
/// Why raw: `EnvUnowned::with_env` plus `mutf8_chars` cost ~150 ns per call (attach-guard
/// bookkeeping, an `ExceptionCheck` before every JNI call, a malloc'd copy per string) — half
/// the whole cache-hit decision. Here a string costs two JNI calls and a copy into a stack
/// buffer, and the panic guard is a plain `catch_unwind`: a panic or error still denies with
/// INTERNAL and never unwinds into the JVM.
///
/// # Safety
/// `env` is the `JNIEnv` of the calling thread and the `jstring`s are live local references
/// or null, as the JVM guarantees for a native method; `handle` as for [`handle_ref`].
pub unsafe fn authorize_raw(
    env: *mut sys::JNIEnv,
    handle: i64,
    authorization: jstring,
    kbase_token: jstring,
    peer: jstring,
) -> jint {
    guarded_status(|| {
        let auth = unsafe { handle_ref(handle)? };
        let mut a_buf = MaybeUninit::<[u8; HEADER_BUF]>::uninit();
        let mut k_buf = MaybeUninit::<[u8; HEADER_BUF]>::uninit();
        let mut p_buf = MaybeUninit::<[u8; PEER_BUF]>::uninit();
        let a = unsafe { read_jstring(env, authorization, &mut a_buf) };
        let k = unsafe { read_jstring(env, kbase_token, &mut k_buf) };
        let p = unsafe { read_jstring(env, peer, &mut p_buf) };
        Ok(auth.authorize_status(a.as_deref(), k.as_deref(), p.as_deref()))
    })
}

/// The error policy of `authorize`: runs `decide`, and turns its denial, error or panic into
/// a status code with the denial recorded for the shim. Only `Ok(Ok(()))` is 0 — "allow".
pub fn guarded_status(decide: impl FnOnce() -> Result<Result<(), Denial>, BridgeError>) -> jint {
    let denial = match std::panic::catch_unwind(AssertUnwindSafe(decide)) {
        Ok(Ok(Ok(()))) => return 0,
        Ok(Ok(Err(denial))) => denial,
        Ok(Err(e)) => internal_error(format!("native authorize failed: {e}")),
        Err(payload) => {
            let text = panic_text(&*payload);
            std::mem::forget(payload); // dropping a payload can itself panic
            internal_error(format!("panic in native authorize: {text}"))
        }
    };
    let status = denial.code() as jint;
    record_denial(denial);
    status
}

/// Stack room for headers of up to 1365 characters (a real token is 32); longer ones go to the
/// heap.
const HEADER_BUF: usize = 4096;
const PEER_BUF: usize = 160;

/// A Java string as Rust text: copied into `buf` with `GetStringUTFRegion`, which needs no
/// release call and allocates nothing in the JVM; two JNI calls for an ASCII header. `buf` is
/// uninitialised stack: zeroing kilobytes per call would cost more than the whole cache hit.
unsafe fn read_jstring<'b, const N: usize>(
    env: *mut sys::JNIEnv,
    s: jstring,
    buf: &'b mut MaybeUninit<[u8; N]>,
) -> Option<Cow<'b, str>> {
    if s.is_null() {
        return None;
    }
    let interface = unsafe { &**env };
    let region = |dest: *mut u8, chars| unsafe { (interface.v1_2.GetStringUTFRegion)(env, s, 0, chars, dest.cast()) };
    let chars = unsafe { (interface.v1_1.GetStringLength)(env, s) }.max(0);
    // A char takes at most 3 bytes of modified UTF-8. If that fits, copy first and ask no
    // length: the text is ASCII exactly when its first `chars` bytes are (a non-ASCII char's
    // encoding would start inside them), and then it is exactly `chars` bytes long.
    if 3 * (chars as usize) < N {
        let ptr = buf.as_mut_ptr().cast::<u8>();
        region(ptr, chars);
        // Safety: the JVM wrote at least `chars` bytes at `ptr`, within the buffer.
        let head = unsafe { std::slice::from_raw_parts(ptr, chars as usize) };
        if head.is_ascii() {
            // Safety: ASCII is UTF-8 (and modified UTF-8 never holds a 0 byte).
            return Some(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(head) }));
        }
    }
    // Long or non-ASCII (rare): size it exactly, copy to the heap, convert.
    let bytes = unsafe { (interface.v1_1.GetStringUTFLength)(env, s) }.max(0) as usize;
    let mut heap = vec![0u8; bytes + 1]; // + the NUL HotSpot writes after the text
    region(heap.as_mut_ptr(), chars);
    Some(Cow::Owned(mutf8_to_string(&mut heap, bytes)))
}

/// Modified UTF-8 (surrogate pairs, `C0 80` for NUL) → UTF-8, for the rare non-ASCII header.
fn mutf8_to_string(dest: &mut [u8], len: usize) -> String {
    dest[len] = 0;
    // Safety: NUL-terminated just above, within `dest`.
    unsafe { JNIStr::from_ptr(dest.as_ptr().cast()) }.to_str().into_owned()
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
