//! Java strings and arrays in and out.
//!
//! The hot path (`authorize`) reads its metadata on raw JNI into stack buffers: the `jni`
//! crate's `with_env` plus `mutf8_chars` cost ~150 ns per call (attach-guard bookkeeping, an
//! `ExceptionCheck` before every JNI call, a malloc'd copy per string) — half the whole cache-hit
//! decision. The header values arrive as the bytes gRPC's transport received (no Java `String`
//! is made for them): two JNI calls and a copy each. Everything else (set-up, read-outs,
//! denials) uses the `jni` crate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::mem::MaybeUninit;

use jni::objects::{JLongArray, JObjectArray, JString};
use jni::strings::JNIStr;
use jni::sys::{self, jbyteArray, jint, jobjectArray, jstring};
use jni::Env;

use super::errors::BridgeError;

/// Stack room for header values of up to 4 KiB (a real token is 32 bytes); longer ones go to
/// the heap.
const HEADER_BUF: usize = 4096;
const PEER_BUF: usize = 160;

/// Reads one call's metadata — the first value and any repeats of `authorization` and
/// `x-kbase-token` as bytes, and the peer address (each may be null) — and hands it to `f` as
/// text. The usual single-valued call allocates nothing.
///
/// # Safety
/// `env` is the `JNIEnv` of the calling thread; the references are live local references or
/// null, as the JVM guarantees for a native method's arguments.
pub unsafe fn with_metadata<R>(
    env: *mut sys::JNIEnv,
    (authorization, authorization_len, more_authorization): (jbyteArray, jint, jobjectArray),
    (kbase_token, kbase_token_len, more_kbase_tokens): (jbyteArray, jint, jobjectArray),
    peer: jstring,
    f: impl FnOnce(&[&str], &[&str], Option<&str>) -> R,
) -> R {
    let mut a_buf = MaybeUninit::<[u8; HEADER_BUF]>::uninit();
    let mut k_buf = MaybeUninit::<[u8; HEADER_BUF]>::uninit();
    let mut p_buf = MaybeUninit::<[u8; PEER_BUF]>::uninit();
    let a = unsafe { read_jbytes(env, authorization, authorization_len, &mut a_buf) };
    let k = unsafe { read_jbytes(env, kbase_token, kbase_token_len, &mut k_buf) };
    let p = unsafe { read_jstring(env, peer, &mut p_buf) };
    let a_more = unsafe { read_bytes_array(env, more_authorization) };
    let k_more = unsafe { read_bytes_array(env, more_kbase_tokens) };
    let a_values = Values::new(a.as_deref(), &a_more);
    let k_values = Values::new(k.as_deref(), &k_more);
    f(a_values.as_slice(), k_values.as_slice(), p.as_deref())
}

/// Every value of one metadata key, without a heap allocation for the single value.
enum Values<'a> {
    One([&'a str; 1]),
    Many(Vec<&'a str>),
}

impl<'a> Values<'a> {
    fn new(first: Option<&'a str>, more: &'a [String]) -> Values<'a> {
        match (first, more.is_empty()) {
            (Some(v), true) => Values::One([v]),
            _ => Values::Many(first.into_iter().chain(more.iter().map(String::as_str)).collect()),
        }
    }

    fn as_slice(&self) -> &[&'a str] {
        match self {
            Values::One(v) => v,
            Values::Many(v) => v,
        }
    }
}

/// The first `len` bytes of a Java `byte[]` (a header value as received; the shim passes its
/// length, which saves asking the JVM) as text: copied into `buf` with `GetByteArrayRegion`,
/// which needs no release call and allocates nothing in the JVM. Bytes that are not UTF-8
/// become NUL, so that the token checks refuse the value (a control character) instead of
/// asking Auth2 about a guess. `buf` is uninitialised stack (zeroing kilobytes per call would
/// cost more than the whole cache hit); only the `len` bytes read are zeroed first, so that a
/// `len` past the array's end (the copy then fails with an exception pending, which Java throws
/// on return) reads zeros, not garbage.
unsafe fn read_jbytes<'b, const N: usize>(
    env: *mut sys::JNIEnv,
    bytes: jbyteArray,
    len: jint,
    buf: &'b mut MaybeUninit<[u8; N]>,
) -> Option<Cow<'b, str>> {
    if bytes.is_null() {
        return None;
    }
    let interface = unsafe { &**env };
    let len = len.max(0);
    let region = |dest: *mut u8| unsafe { (interface.v1_1.GetByteArrayRegion)(env, bytes, 0, len, dest.cast()) };
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(char::REPLACEMENT_CHARACTER, "\0");
    if (len as usize) <= N {
        let ptr = buf.as_mut_ptr().cast::<u8>();
        // Safety: `len` <= N bytes within the buffer.
        unsafe { ptr.write_bytes(0, len as usize) };
        region(ptr);
        // Safety: initialised just above (and by the JVM), within the buffer.
        let head = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
        return Some(match std::str::from_utf8(head) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(text(head)),
        });
    }
    let mut heap = vec![0u8; len as usize];
    region(heap.as_mut_ptr());
    Some(Cow::Owned(String::from_utf8(heap).unwrap_or_else(|e| text(e.as_bytes()))))
}

/// A Java string as Rust text: copied into `buf` with `GetStringUTFRegion`; two JNI calls for
/// an ASCII string.
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

/// The values of a Java `byte[][]` as text (null: none; null elements are skipped). Only
/// repeated metadata keys arrive this way, so it may allocate.
unsafe fn read_bytes_array(env: *mut sys::JNIEnv, array: jobjectArray) -> Vec<String> {
    if array.is_null() {
        return Vec::new();
    }
    let interface = unsafe { &**env };
    let len = unsafe { (interface.v1_1.GetArrayLength)(env, array) }.max(0);
    let mut out = Vec::with_capacity(len as usize);
    let mut buf = MaybeUninit::<[u8; HEADER_BUF]>::uninit();
    for i in 0..len {
        let element = unsafe { (interface.v1_1.GetObjectArrayElement)(env, array, i) };
        let element_len = if element.is_null() { 0 } else { unsafe { (interface.v1_1.GetArrayLength)(env, element) } };
        if let Some(text) = unsafe { read_jbytes(env, element, element_len, &mut buf) } {
            out.push(text.into_owned());
        }
        if !element.is_null() {
            unsafe { (interface.v1_1.DeleteLocalRef)(env, element) };
        }
    }
    out
}

/// Modified UTF-8 (surrogate pairs, `C0 80` for NUL) → UTF-8, for the rare non-ASCII header.
fn mutf8_to_string(dest: &mut [u8], len: usize) -> String {
    dest[len] = 0;
    // Safety: NUL-terminated just above, within `dest`.
    unsafe { JNIStr::from_ptr(dest.as_ptr().cast()) }.to_str().into_owned()
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

pub fn new_string<'l>(env: &mut Env<'l>, s: &str) -> Result<JString<'l>, BridgeError> {
    Ok(JString::from_str(env, s)?)
}

/// A Java `String[]` holding `items`.
pub fn new_string_array<'l>(
    env: &mut Env<'l>,
    items: &[impl AsRef<str>],
) -> Result<JObjectArray<'l, JString<'l>>, BridgeError> {
    let fill = new_string(env, "")?;
    let array = JObjectArray::<JString>::new(env, items.len(), &fill)?;
    for (i, item) in items.iter().enumerate() {
        let s = new_string(env, item.as_ref())?;
        array.set_element(env, i, &s)?;
    }
    Ok(array)
}

/// A Java `long[]` holding `values` (saturating at `Long.MAX_VALUE`).
pub fn new_long_array<'l>(env: &mut Env<'l>, values: &[u64]) -> Result<JLongArray<'l>, BridgeError> {
    let longs: Vec<i64> = values.iter().map(|v| i64::try_from(*v).unwrap_or(i64::MAX)).collect();
    let array = JLongArray::new(env, longs.len())?;
    array.set_region(env, 0, &longs)?;
    Ok(array)
}
