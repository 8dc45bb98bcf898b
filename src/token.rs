//! Finding the caller's token in the call's metadata, and naming it without revealing it.
//!
//! A token is a secret: [`Token`] has no `Debug`/`Display` that prints it. The cache keys on
//! [`TokenKey`], a 128-bit SipHash-1-3 of the token under a random per-process key. What the key
//! must resist is a caller who makes up tokens to land on the owner's key; the keys never leave
//! the process, so that caller sees at most "hit or miss" and must guess blindly, 2^-128 per try.
//! SipHash-1-3 is the keyed hash Rust's `HashMap` trusts with the same job (collisions an
//! attacker cannot compute without the key), and it costs 100 fewer instructions per call than
//! SipHash-2-4 (a tenth of the cache-hit decision). Log lines name a token by [`Fingerprint`],
//! the start of its SHA-256, which is stable across processes so that log lines can be
//! correlated.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

use once_cell::sync::Lazy;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};
use thiserror::Error;

/// Longest token accepted; anything longer is refused without asking Auth2.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A borrowed token that cannot be printed by accident.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token<'a>(&'a str);

impl<'a> Token<'a> {
    /// The raw secret, for the one place that must send it (the Auth2 request header).
    pub fn expose(&self) -> &'a str {
        self.0
    }

    pub fn key(&self) -> TokenKey {
        let (k0, k1) = *SIP_KEYS;
        let mut h = SipHasher13::new_with_keys(k0, k1);
        h.write(self.0.as_bytes());
        TokenKey(h.finish128().as_u128())
    }

    /// First 8 hex characters of the token's SHA-256: enough to correlate log lines, useless
    /// to an attacker. Computed on denials only.
    pub fn fingerprint(&self) -> Fingerprint {
        let d = Sha256::digest(self.0.as_bytes());
        Fingerprint(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    }
}

/// Random SipHash keys for this process, drawn from std's OS-seeded `RandomState`.
static SIP_KEYS: Lazy<(u64, u64)> = Lazy::new(|| {
    let random = std::collections::hash_map::RandomState::new();
    (random.hash_one(0x6b62_6173_655f_6b30_u64), random.hash_one(0x6b62_6173_655f_6b31_u64))
});

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.fingerprint())
    }
}

/// The cache key of a token: its keyed 128-bit SipHash-1-3 (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey(pub u128);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fingerprint(u32);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{:08x}", self.0)
    }
}

/// Why no usable token was found. The text says what is wrong, never what the token is.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("the authorization header is not 'Bearer <token>'")]
    NotBearer,
    #[error("the token is empty")]
    Empty,
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token contains spaces or control characters")]
    BadCharacters,
    #[error("the call carries different tokens ('authorization' and 'x-kbase-token', or one of them repeated); send only one")]
    Ambiguous,
}

/// Picks the token from every value of the `authorization` (`Bearer <t>`, scheme
/// case-insensitive) and `x-kbase-token` metadata keys (gRPC metadata may repeat a key). Any
/// malformed value poisons the call; values naming different tokens are ambiguous and refused,
/// whatever their order; identical repeats are fine.
#[inline]
pub fn extract<'a>(authorization: &[&'a str], kbase_token: &[&'a str]) -> Result<Token<'a>, TokenError> {
    // The usual call: one value of one key.
    match (authorization, kbase_token) {
        ([a], []) => return parse_bearer(a),
        ([], [k]) => return validate(k),
        _ => {}
    }
    extract_all(authorization, kbase_token)
}

#[inline(never)]
fn extract_all<'a>(authorization: &[&'a str], kbase_token: &[&'a str]) -> Result<Token<'a>, TokenError> {
    let mut found: Option<Token<'a>> = None;
    let bearers = authorization.iter().map(|v| parse_bearer(v));
    for t in bearers.chain(kbase_token.iter().map(|v| validate(v))) {
        let t = t?;
        match found {
            Some(f) if f != t => return Err(TokenError::Ambiguous),
            _ => found = Some(t),
        }
    }
    found.ok_or(TokenError::Missing)
}

#[inline]
fn parse_bearer(value: &str) -> Result<Token<'_>, TokenError> {
    // Metadata values are ASCII: an ASCII trim (a few compares) instead of a Unicode one; any
    // other white space is left in the token, which then refuses it.
    let value = value.trim_ascii();
    let scheme = value.get(..6).filter(|s| s.eq_ignore_ascii_case("bearer"));
    match (scheme, value.as_bytes().get(6)) {
        (Some(_), Some(b' ' | b'\t')) => validate(&value[7..]),
        (Some(_), None) => Err(TokenError::Empty),
        _ => Err(TokenError::NotBearer),
    }
}

#[inline]
fn validate(raw: &str) -> Result<Token<'_>, TokenError> {
    let t = raw.trim_ascii();
    if t.is_empty() {
        return Err(TokenError::Empty);
    }
    if t.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    // Every real token is printable ASCII: one branch-free pass (vectorised) settles it; only
    // unusual bytes take the per-character check.
    let unusual = t.bytes().fold(false, |acc, b| acc | !(0x21..0x7f).contains(&b));
    if unusual && t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenError::BadCharacters);
    }
    Ok(Token(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    #[test]
    fn bearer_any_case_and_trimmed() {
        for h in [format!("Bearer {T}"), format!("bearer {T}"), format!("BEARER   {T}  "), format!(" Bearer\t{T}")] {
            assert_eq!(extract(&[&h], &[]).unwrap().expose(), T, "{h:?}");
        }
    }

    #[test]
    fn kbase_header_trimmed() {
        assert_eq!(extract(&[], &[&format!("  {T}\t")]).unwrap().expose(), T);
    }

    #[test]
    fn only_ascii_white_space_is_trimmed() {
        // Metadata is ASCII; other white space at the edges is part of the value, so refused.
        assert_eq!(extract(&[], &[&format!("\u{a0}{T}")]), Err(TokenError::BadCharacters));
        assert_eq!(extract(&[&format!("Bearer {T}\u{2003}")], &[]), Err(TokenError::BadCharacters));
    }

    #[test]
    fn both_headers() {
        let bearer = format!("Bearer {T}");
        assert_eq!(extract(&[&bearer], &[T]).unwrap().expose(), T);
        assert_eq!(extract(&[&bearer], &["other"]), Err(TokenError::Ambiguous));
    }

    #[test]
    fn repeated_values_must_agree_in_any_order() {
        let (owner, bob) = (format!("Bearer {T}"), "Bearer BOBSTOKEN".to_owned());
        assert_eq!(extract(&[&owner, &bob], &[]), Err(TokenError::Ambiguous));
        assert_eq!(extract(&[&bob, &owner], &[]), Err(TokenError::Ambiguous));
        assert_eq!(extract(&[], &[T, "BOBSTOKEN"]), Err(TokenError::Ambiguous));
        assert_eq!(extract(&[], &["BOBSTOKEN", T]), Err(TokenError::Ambiguous));
        assert_eq!(extract(&[&owner, &owner], &[T, &format!(" {T} ")]).unwrap().expose(), T);
        assert_eq!(extract(&[&owner, "Basic x"], &[]), Err(TokenError::NotBearer));
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(extract(&[], &[]), Err(TokenError::Missing));
        assert_eq!(extract(&["Basic abc"], &[]), Err(TokenError::NotBearer));
        assert_eq!(extract(&[T], &[]), Err(TokenError::NotBearer));
        assert_eq!(extract(&["Bearer"], &[]), Err(TokenError::Empty));
        assert_eq!(extract(&["Bearer    "], &[]), Err(TokenError::Empty));
        assert_eq!(extract(&[], &["   "]), Err(TokenError::Empty));
        assert_eq!(extract(&[], &["a b"]), Err(TokenError::BadCharacters));
        assert_eq!(extract(&[], &["a\u{1}b"]), Err(TokenError::BadCharacters));
        assert_eq!(extract(&[], &["a\u{7f}b"]), Err(TokenError::BadCharacters));
        assert_eq!(extract(&[], &["a\u{a0}b"]), Err(TokenError::BadCharacters));
        // Found by tests/fuzz.rs: C1 control characters.
        assert_eq!(extract(&[], &["\u{80}"]), Err(TokenError::BadCharacters));
        assert_eq!(extract(&[], &["a\u{9f}b"]), Err(TokenError::BadCharacters));
        assert!(extract(&[], &["tökén"]).is_ok());
        assert_eq!(extract(&[], &[&"x".repeat(4097)]), Err(TokenError::TooLong));
        assert!(extract(&[], &[&"x".repeat(4096)]).is_ok());
        // A malformed header poisons the call even if the other one is fine.
        assert_eq!(extract(&["Basic x"], &[T]), Err(TokenError::NotBearer));
    }

    #[test]
    fn never_printed() {
        let t = extract(&[], &[T]).unwrap();
        for s in [format!("{t:?}"), format!("{:?}", t.key()), t.fingerprint().to_string()] {
            assert!(!s.contains(T) && !s.contains(&T[..8]), "{s}");
        }
        let fp = t.fingerprint().to_string();
        assert!(fp.starts_with("sha256:") && fp.len() == 15, "{fp}");
        // Known SHA-256 prefix, computed independently with `printf %s abc | sha256sum`.
        assert_eq!(extract(&[], &["abc"]).unwrap().fingerprint().to_string(), "sha256:ba7816bf");
    }

    #[test]
    fn keys_tell_tokens_apart() {
        let key = |s| extract(&[], &[s]).unwrap().key();
        assert_eq!(key("abc"), key("abc"));
        assert_ne!(key("abc"), key("abd"));
        assert_ne!(key("abc"), key("abc2"));
    }
}
