//! A denied call: its gRPC status, a client-facing message and a server log line. Neither text
//! ever contains a token; the log line carries its fingerprint.

use std::fmt;

use crate::denial_log::{suppressed_line, LogVerdict};
use crate::token::Fingerprint;

/// gRPC status codes the plugin answers with (values as in `io.grpc.Status.Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    PermissionDenied = 7,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// Why a call was denied; one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Missing,
    Malformed,
    Ambiguous,
    Invalid,
    Expired,
    NotAllowed,
    MfaRequired,
    RoleMissing,
    Unavailable,
    /// A new token while the new-token budget is spent (Auth2 not asked).
    TooManyNewTokens,
    Internal,
    /// A request message naming another `user_id` than the verified user (`userContext=require`).
    UserContextMismatch,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Ambiguous,
        Reason::Invalid,
        Reason::Expired,
        Reason::NotAllowed,
        Reason::MfaRequired,
        Reason::RoleMissing,
        Reason::Unavailable,
        Reason::TooManyNewTokens,
        Reason::Internal,
        Reason::UserContextMismatch,
    ];

    pub fn code(self) -> Code {
        match self {
            Reason::Missing | Reason::Malformed | Reason::Ambiguous | Reason::Invalid | Reason::Expired => {
                Code::Unauthenticated
            }
            Reason::NotAllowed | Reason::MfaRequired | Reason::RoleMissing | Reason::UserContextMismatch => {
                Code::PermissionDenied
            }
            Reason::Unavailable | Reason::TooManyNewTokens => Code::Unavailable,
            Reason::Internal => Code::Internal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Missing => "missing_token",
            Reason::Malformed => "malformed_token",
            Reason::Ambiguous => "ambiguous_token",
            Reason::Invalid => "invalid_token",
            Reason::Expired => "expired_token",
            Reason::NotAllowed => "user_not_allowed",
            Reason::MfaRequired => "mfa_required",
            Reason::RoleMissing => "role_missing",
            Reason::Unavailable => "auth_unavailable",
            Reason::TooManyNewTokens => "too_many_new_tokens",
            Reason::Internal => "internal_error",
            Reason::UserContextMismatch => "user_context_mismatch",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A denial, ready to be sent (`message`) and logged (`log_lines`).
#[derive(Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub message: String,
    /// Server-side details (e.g. why Auth2 was unreachable); never sent to the client.
    pub detail: String,
    pub fingerprint: Option<Fingerprint>,
    /// Whether this call's log line is written (see [`crate::denial_log`]).
    pub log: LogVerdict,
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            message: message.into(),
            detail: String::new(),
            fingerprint: None,
            log: LogVerdict::Write { suppressed_before: 0, over_ms: 0 },
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Denial {
        self.detail = detail.into();
        self
    }

    pub fn code(&self) -> Code {
        self.reason.code()
    }

    /// The server log lines for this call: none if the rate limit suppressed it, else the
    /// count of lines suppressed before it (if any) and its own line.
    pub fn log_lines(&self) -> Vec<String> {
        match self.log {
            LogVerdict::Suppress => Vec::new(),
            LogVerdict::Write { suppressed_before, over_ms } => {
                suppressed_line(self.reason, suppressed_before, over_ms).into_iter().chain([self.log_line()]).collect()
            }
        }
    }

    /// The one server log line for this denial.
    pub fn log_line(&self) -> String {
        let mut line = format!("KBase auth denied call: status={} reason={}", self.code().name(), self.reason.name());
        if let Some(fp) = self.fingerprint {
            line.push_str(&format!(" token={fp}"));
        }
        line.push_str(&format!(" message=\"{}\"", self.message));
        if !self.detail.is_empty() {
            line.push_str(&format!(" detail=\"{}\"", self.detail));
        }
        line
    }
}

impl fmt::Debug for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.log_line())
    }
}

/// `2026-11-21T10:00:00Z` from epoch milliseconds, for "expired at" messages (no date crate needed).
pub fn format_epoch_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_epoch_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_epoch_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_epoch_ms(1_795_297_445_123), "2026-11-21T21:44:05Z");
        assert_eq!(format_epoch_ms(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn reason_codes_follow_the_spec_table() {
        assert_eq!(Reason::Missing.code(), Code::Unauthenticated);
        assert_eq!(Reason::Expired.code(), Code::Unauthenticated);
        assert_eq!(Reason::NotAllowed.code(), Code::PermissionDenied);
        assert_eq!(Reason::MfaRequired.code(), Code::PermissionDenied);
        assert_eq!(Reason::Unavailable.code(), Code::Unavailable);
        assert_eq!(Reason::TooManyNewTokens.code(), Code::Unavailable);
        assert_eq!(Reason::Internal.code(), Code::Internal);
        assert_eq!(Reason::UserContextMismatch.code(), Code::PermissionDenied);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
