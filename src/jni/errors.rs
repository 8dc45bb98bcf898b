//! The error policies of the exports: what an error or a panic inside one turns into. Set-up
//! and read-out calls throw a Java exception; `authorize` denies with INTERNAL, never "allow".

use std::any::Any;
use std::panic::AssertUnwindSafe;

use jni::errors::ErrorPolicy;
use jni::strings::JNIString;
use jni::{jni_str, Env};
use thiserror::Error;

use crate::authenticator::{internal_error, Allowed};
use crate::decision::Denial;
use crate::settings::ConfigError;

use super::handle;

#[derive(Debug, Error)]
pub enum BridgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("JNI call failed: {0}")]
    Jni(#[from] jni::errors::Error),
    #[error("{0}")]
    Usage(&'static str),
}

/// The error policy of `authorize`: runs `decide`, records its outcome for the shim, and
/// returns its status (see [`handle::record`]). An error or a panic is an INTERNAL denial.
pub fn guarded_status(decide: impl FnOnce() -> Result<Result<Allowed, Denial>, BridgeError>) -> i32 {
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(decide)) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Err(internal_error(format!("native authorize failed: {e}"))),
        Err(payload) => {
            let text = panic_text(&*payload);
            std::mem::forget(payload); // dropping a payload can itself panic
            Err(internal_error(format!("panic in native authorize: {text}")))
        }
    };
    handle::record(outcome)
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
