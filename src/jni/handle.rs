//! Authenticators cross the boundary as a `long` handle (a leaked `Box`, freed by `destroy`),
//! and a call's details wait in a per-thread slot until the shim asks for them, so that the
//! allow path returns a plain `int` and creates no Java object.
//!
//! The `int` of `authorize` (and of the other decisions the shim asks for):
//!
//! * `1..=16`: denied with that gRPC status code (`denialMessage`, `lastLogLines` say more);
//! * `<= 0`: allowed, as `-(2 * (user + 1) + warning)`: `user + 1` is the verified user's number
//!   plus one (0: no verified user, a token-less call from a trusted address) and `warning` is 1
//!   when a WARN line waits in `lastLogLines`. So `0` is the token-less allow, `-2` user 0,
//!   `-3` user 0 with a warning, `-4` user 1, and so on; `userName` gives a number's name.

use std::cell::RefCell;

use crate::authenticator::{internal_error, Allowed};
use crate::decision::Denial;
use crate::users::UserId;
use crate::Authenticator;

use super::errors::BridgeError;

/// The last non-quiet outcome on this thread: a denial, or an allow with a warning.
pub enum Recorded {
    Denied(Denial),
    Warned(String),
}

thread_local! {
    static LAST: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

/// Records `outcome` for the shim and returns its status (see the module's documentation).
pub fn record(outcome: Result<Allowed, Denial>) -> i32 {
    match outcome {
        Ok(Allowed { user, warning }) => match allowed_status(user, warning.is_some()) {
            Some(status) => {
                if let Some(line) = warning {
                    LAST.with(|c| *c.borrow_mut() = Some(Recorded::Warned(line)));
                }
                status
            }
            None => record(Err(internal_error(format!("user number {user:?} does not fit the status")))),
        },
        Err(denial) => {
            let code = denial.code() as i32;
            LAST.with(|c| *c.borrow_mut() = Some(Recorded::Denied(denial)));
            code
        }
    }
}

/// `-(2 * (user + 1) + warning)`, if it fits an `i32`.
fn allowed_status(user: Option<UserId>, warning: bool) -> Option<i32> {
    let n = match user {
        None => 0,
        Some(UserId(u)) => i32::try_from(u).ok()?.checked_add(1)?,
    };
    Some(-(n.checked_mul(2)? + i32::from(warning)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_statuses_are_never_denials_and_carry_the_user_and_the_warning() {
        assert_eq!(allowed_status(None, false), Some(0));
        assert_eq!(allowed_status(None, true), Some(-1));
        assert_eq!(allowed_status(Some(UserId(0)), false), Some(-2));
        assert_eq!(allowed_status(Some(UserId(0)), true), Some(-3));
        assert_eq!(allowed_status(Some(UserId(7)), false), Some(-16));
        let last = (i32::MAX / 2 - 1) as u32;
        assert_eq!(allowed_status(Some(UserId(last)), true), Some(-i32::MAX));
        assert_eq!(allowed_status(Some(UserId(last + 1)), false), None);
        assert_eq!(allowed_status(Some(UserId(u32::MAX)), false), None);
        assert_eq!(record(Ok(Allowed { user: Some(UserId(u32::MAX)), warning: None })), 13, "INTERNAL");
    }
}
