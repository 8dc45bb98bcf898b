//! Authenticators cross the boundary as a `long` handle (a leaked `Box`, freed by `destroy`),
//! and a call's details wait in a per-thread slot until the shim asks for them, so that the
//! allow path returns a plain `int` and creates no Java object.

use std::cell::RefCell;

use crate::authenticator::Allowed;
use crate::decision::Denial;
use crate::Authenticator;

use super::errors::BridgeError;

/// What `authorize` returns for an allowed call whose warning is waiting in [`last_outcome`].
pub const ALLOW_WITH_WARNING: i32 = -1;

/// The last non-quiet outcome on this thread: a denial, or an allow with a warning.
pub enum Recorded {
    Denied(Denial),
    Warned(String),
}

thread_local! {
    static LAST: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

/// Records `outcome` for the shim and returns its status: 0 allow, -1 allow with a warning,
/// else the gRPC status code of the denial.
pub fn record(outcome: Result<Allowed, Denial>) -> i32 {
    match outcome {
        Ok(Allowed { warning: None, .. }) => 0,
        Ok(Allowed { warning: Some(line), .. }) => {
            LAST.with(|c| *c.borrow_mut() = Some(Recorded::Warned(line)));
            ALLOW_WITH_WARNING
        }
        Err(denial) => {
            let code = denial.code() as i32;
            LAST.with(|c| *c.borrow_mut() = Some(Recorded::Denied(denial)));
            code
        }
    }
}

/// Reads this thread's last recorded outcome through `f`.
pub fn with_last<T>(f: impl FnOnce(Option<&Recorded>) -> T) -> T {
    LAST.with(|c| f(c.borrow().as_ref()))
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
