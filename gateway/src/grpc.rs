//! The little of gRPC's HTTP/2 mapping the gateway needs: status codes, `grpc-timeout`,
//! trailers-only responses for the calls it answers itself, and the 5-byte message framing (to
//! know where messages end, never what they say).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const CONTENT_TYPE_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// gRPC status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code of a `grpc-status` value; an unparsable one is UNKNOWN, as clients read it.
    pub fn from_header(v: &HeaderValue) -> Code {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .and_then(|n| Code::ALL.get(n).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The status a gRPC client reads from `headers` (trailers, or the headers of a
    /// trailers-only response), if they carry one.
    pub fn in_headers(headers: &HeaderMap) -> Option<Code> {
        headers.get(GRPC_STATUS).map(Code::from_header)
    }

    pub fn from_core(c: kbase_spark_auth::Code) -> Code {
        match c {
            kbase_spark_auth::Code::PermissionDenied => Code::PermissionDenied,
            kbase_spark_auth::Code::Internal => Code::Internal,
            kbase_spark_auth::Code::Unavailable => Code::Unavailable,
            kbase_spark_auth::Code::Unauthenticated => Code::Unauthenticated,
        }
    }

    /// What a gRPC client makes of an HTTP/2 stream reset with `reason` (gRPC's HTTP/2 spec).
    pub fn from_reset(reason: h2::Reason) -> Code {
        match reason {
            h2::Reason::CANCEL => Code::Cancelled,
            h2::Reason::REFUSED_STREAM => Code::Unavailable,
            h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        }
    }
}

/// The call's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if it has a valid one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: the finest unit whose count fits gRPC's 8 digits, rounded down
/// (a pod's deadline may come a unit early, never late). `None` when nothing is left.
pub fn timeout_value(d: Duration) -> Option<HeaderValue> {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (n, unit) = [(1, 'n'), (1_000, 'u'), (1_000_000, 'm'), (1_000_000_000, 'S'), (60_000_000_000, 'M')]
        .into_iter()
        .map(|(per, unit)| (nanos / per, unit))
        .find(|(n, _)| *n <= MAX)
        .unwrap_or(((nanos / 3_600_000_000_000).min(MAX), 'H'));
    (n > 0).then(|| HeaderValue::from_str(&format!("{n}{unit}")).expect("digits and a letter"))
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `grpc-status` (and `grpc-message`) of a status, as headers or trailers.
pub fn status_headers(code: Code, message: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if !message.is_empty() {
        // Always valid: percent_encode leaves printable ASCII only.
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert(GRPC_MESSAGE, v);
        }
    }
    h
}

/// A trailers-only response: HTTP 200, `application/grpc`, the status in the headers and the
/// stream ended with them.
pub fn trailers_only<B>(code: Code, message: &str, body: B) -> Response<B> {
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, CONTENT_TYPE_GRPC);
    headers.extend(status_headers(code, message));
    res
}

/// One length-prefixed message, uncompressed.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// Follows the length-prefixed framing of a stream of bytes, to tell whether the bytes seen so
/// far end exactly at a message boundary.
#[derive(Clone, Debug, Default)]
pub struct Framing {
    /// Bytes of the current message's 5-byte prefix seen so far (0 = at a boundary).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message's body still to come.
    body_left: u64,
}

impl Framing {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left.min(data.len() as u64)) as usize;
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.body_left =
                    u64::from(u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]));
                self.prefix_len = 0;
            }
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.prefix_len == 0 && self.body_left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_values_are_the_finest_unit_that_fits_and_read_back() {
        let v = |d: Duration| timeout_value(d).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(v(Duration::ZERO), None);
        assert_eq!(v(Duration::from_nanos(1)).as_deref(), Some("1n"));
        assert_eq!(v(Duration::from_nanos(99_999_999)).as_deref(), Some("99999999n"));
        assert_eq!(v(Duration::from_millis(100)).as_deref(), Some("100000u"));
        assert_eq!(v(Duration::from_nanos(29_999_123_456)).as_deref(), Some("29999123u"));
        assert_eq!(v(Duration::from_secs(100)).as_deref(), Some("100000m"));
        assert_eq!(v(Duration::from_secs(100_000_000)).as_deref(), Some("1666666M"));
        assert_eq!(v(Duration::MAX).as_deref(), Some("99999999H"));
        for d in [
            Duration::from_nanos(7),
            Duration::from_micros(123_456),
            Duration::from_secs(30),
            Duration::from_secs(86_400),
        ] {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, timeout_value(d).unwrap());
            let back = timeout(&h).unwrap();
            assert!(back <= d && d - back < Duration::from_micros(1).max(d / 1_000_000), "{d:?} -> {back:?}");
        }
    }

    #[test]
    fn timeouts() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
            timeout(&h)
        };
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn codes_round_trip() {
        for c in Code::ALL {
            assert_eq!(Code::from_header(&HeaderValue::from(c as u16)), c);
        }
        assert_eq!(Code::from_header(&HeaderValue::from_static("17")), Code::Unknown);
        assert_eq!(Code::from_header(&HeaderValue::from_static("x")), Code::Unknown);
    }

    #[test]
    fn framing_finds_boundaries_across_chunks() {
        let mut all = Vec::new();
        for len in [0usize, 3, 70_000, 1] {
            all.extend_from_slice(&frame(&vec![7u8; len]));
        }
        for chunk in [1usize, 2, 5, 6, 4096, all.len()] {
            let mut f = Framing::default();
            for c in all.chunks(chunk) {
                f.feed(c);
            }
            assert!(f.at_boundary(), "chunk {chunk}");
            f.feed(&all[..7]);
            assert!(!f.at_boundary());
        }
        let mut f = Framing::default();
        f.feed(&[0, 0, 0]);
        assert!(!f.at_boundary(), "inside a prefix");
    }
}
