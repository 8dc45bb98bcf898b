//! Data the fake serves: token entries (as tests write them), fault modes, and the
//! JSON shapes of KBase Auth2 answers (SPEC §3).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lifetime of a token whose entry gives neither `expires` nor `expires_in_ms`.
pub const DEFAULT_EXPIRES_IN_MS: i64 = 3_600_000;
/// Auth2's usual suggested cache time.
pub const DEFAULT_CACHEFOR_MS: u64 = 300_000;

/// Milliseconds since the Unix epoch, as Auth2 reports times.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A token the fake knows, in the JSON form used by the `--tokens` file and `POST /tokens`.
///
/// Unknown fields are rejected so that a typo in a test fixture fails loudly instead of
/// silently producing a token with default settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub token: String,
    pub user: String,
    /// Absolute expiry, epoch ms. Wins over `expires_in_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Expiry relative to the time the entry is loaded; negative gives an expired token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<i64>,
    /// Creation time, epoch ms; defaults to load time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// Any string is passed through (tests may model values newer servers might add);
    /// `None` omits the field, as older Auth2 servers do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customroles: Vec<String>,
    /// Per-token `cachefor`; defaults to the server-wide setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cachefor: Option<u64>,
    /// The token's name (Auth2 `name`), usually null for login tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Auth2 `custom` map of the token.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub custom: Map<String, Value>,
}

impl TokenEntry {
    /// A login token for `user`, valid for an hour from when the server loads it, no `mfa`.
    pub fn new(token: impl Into<String>, user: impl Into<String>) -> Self {
        TokenEntry {
            token: token.into(),
            user: user.into(),
            expires: None,
            expires_in_ms: None,
            created: None,
            mfa: None,
            customroles: Vec::new(),
            cachefor: None,
            name: None,
            display: None,
            email: None,
            custom: Map::new(),
        }
    }

    /// Expires `d` after the server loads the entry.
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires = None;
        self.expires_in_ms = Some(d.as_millis().min(i64::MAX as u128) as i64);
        self
    }

    /// Expired `d` before the server loads the entry.
    pub fn expired_ago(mut self, d: Duration) -> Self {
        self.expires = None;
        self.expires_in_ms = Some(-(d.as_millis().min(i64::MAX as u128) as i64));
        self
    }

    /// Expires at an absolute time, epoch ms.
    pub fn expires_at_ms(mut self, epoch_ms: i64) -> Self {
        self.expires = Some(epoch_ms);
        self.expires_in_ms = None;
        self
    }

    pub fn mfa(mut self, mfa: &str) -> Self {
        self.mfa = Some(mfa.to_string());
        self
    }

    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.customroles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    pub fn cachefor(mut self, ms: u64) -> Self {
        self.cachefor = Some(ms);
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn display(mut self, display: &str) -> Self {
        self.display = Some(display.to_string());
        self
    }

    pub fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_string());
        self
    }
}

/// The `--tokens FILE` format.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cachefor: Option<u64>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// How the token endpoints (`/api/V2/token`, `/api/V2/me`) misbehave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Listening socket closed (connects get ECONNREFUSED), open connections dropped.
    Refuse,
    /// Answer normally after this delay.
    Delay(Duration),
    /// Look the token up on arrival, answer after this delay: a slow Auth2 whose answer is
    /// already stale when it arrives (a token may expire in between).
    LateAnswer(Duration),
    /// 503 with a JSON error body.
    Status503,
    /// 502 with nginx's HTML error page.
    Html502,
    /// 200 `application/json` with a truncated body.
    Malformed,
    /// 200 valid JSON of the token shape but without `user`.
    NoUser,
    /// 200 for expired tokens, reporting their past `expires` (a server that does not check).
    IgnoreExpiry,
    /// 400 with an HTML body, as a proxy or web application firewall in front of Auth2 sends.
    Status400Html,
    /// 400 with JSON that is not Auth2's error object (e.g. a gateway's own error format).
    Status400Json,
    /// Auth2's own answer to a request without a token (400, appcode 10010), whatever the
    /// request carried: a proxy in front of Auth2 that drops the `Authorization` header.
    DropToken,
    /// 302 with `Location` on the fake's redirect target: a second listener that answers like
    /// the fake (a client that followed would get a real answer) and counts every request it
    /// receives, so a test can prove the token never left for another place.
    Redirect,
}

impl Fault {
    /// Every mode name the control API accepts.
    pub const MODES: &'static [&'static str] = &[
        "none",
        "refuse",
        "delay",
        "late_answer",
        "status503",
        "html502",
        "malformed",
        "nouser",
        "ignore_expiry",
        "status400html",
        "status400json",
        "drop_token",
        "redirect",
    ];

    /// Parses the control API's `{"mode": …, "delay_ms": …}`.
    pub fn parse(mode: &str, delay_ms: Option<u64>) -> Result<Fault, String> {
        Ok(match mode {
            "none" => Fault::None,
            "refuse" => Fault::Refuse,
            "delay" => match delay_ms {
                Some(ms) => Fault::Delay(Duration::from_millis(ms)),
                None => return Err("mode \"delay\" needs \"delay_ms\"".to_string()),
            },
            "late_answer" => match delay_ms {
                Some(ms) => Fault::LateAnswer(Duration::from_millis(ms)),
                None => return Err("mode \"late_answer\" needs \"delay_ms\"".to_string()),
            },
            "status503" => Fault::Status503,
            "html502" => Fault::Html502,
            "malformed" => Fault::Malformed,
            "nouser" => Fault::NoUser,
            "ignore_expiry" => Fault::IgnoreExpiry,
            "status400html" => Fault::Status400Html,
            "status400json" => Fault::Status400Json,
            "drop_token" => Fault::DropToken,
            "redirect" => Fault::Redirect,
            other => return Err(format!("unknown mode {other:?}; expected {}", Fault::MODES.join("|"))),
        })
    }

    /// The control API's name for this mode.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Refuse => "refuse",
            Fault::Delay(_) => "delay",
            Fault::LateAnswer(_) => "late_answer",
            Fault::Status503 => "status503",
            Fault::Html502 => "html502",
            Fault::Malformed => "malformed",
            Fault::NoUser => "nouser",
            Fault::IgnoreExpiry => "ignore_expiry",
            Fault::Status400Html => "status400html",
            Fault::Status400Json => "status400json",
            Fault::DropToken => "drop_token",
            Fault::Redirect => "redirect",
        }
    }
}

/// Normalizes a path prefix to "" or "/a/b" (leading slash, no trailing slash), so
/// routing can compare paths exactly.
pub fn normalize_prefix(p: &str) -> String {
    let t = p.trim().trim_matches('/');
    if t.is_empty() {
        String::new()
    } else {
        format!("/{t}")
    }
}

/// Body of `GET /api/V2/token`; field order follows Auth2's.
#[derive(Serialize)]
pub(crate) struct TokenReply<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub id: &'a str,
    pub expires: i64,
    pub created: i64,
    pub name: Option<&'a str>,
    /// `None` only in the `nouser` fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    pub custom: &'a Map<String, Value>,
    pub cachefor: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa: Option<&'a str>,
}

/// Body of `GET /api/V2/me`.
#[derive(Serialize)]
pub(crate) struct MeReply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    pub display: &'a str,
    pub email: &'a str,
    pub customroles: &'a [String],
    pub roles: [(); 0],
    pub idents: [(); 0],
    pub policyids: [(); 0],
    pub created: i64,
    pub lastlogin: i64,
    pub local: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_normalization() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("services/auth"), "/services/auth");
        assert_eq!(normalize_prefix("/services/auth/"), "/services/auth");
    }

    #[test]
    fn fault_parse_roundtrip() {
        for &m in Fault::MODES.iter().filter(|m| !["delay", "late_answer"].contains(*m)) {
            assert_eq!(Fault::parse(m, None).unwrap().mode_name(), m);
        }
        assert_eq!(Fault::MODES.len(), 13);
        let late = Fault::parse("late_answer", Some(250)).unwrap();
        assert_eq!((late.mode_name(), &late), ("late_answer", &Fault::LateAnswer(Duration::from_millis(250))));
        assert!(Fault::parse("late_answer", None).is_err());
        assert_eq!(Fault::parse("delay", Some(250)).unwrap(), Fault::Delay(Duration::from_millis(250)));
        assert!(Fault::parse("delay", None).is_err());
        assert!(Fault::parse("slow", None).is_err());
    }

    #[test]
    fn entry_json_minimal_and_full() {
        let e: TokenEntry = serde_json::from_str(r#"{"token":"T","user":"alice"}"#).unwrap();
        assert_eq!(e, TokenEntry::new("T", "alice"));
        let e: TokenEntry = serde_json::from_str(
            r#"{"token":"T","user":"alice","expires_in_ms":-5,"mfa":null,"customroles":["r"],
                "cachefor":10,"name":null,"display":"Alice","email":"a@x"}"#,
        )
        .unwrap();
        assert_eq!(e.expires_in_ms, Some(-5));
        assert_eq!(e.mfa, None);
        assert_eq!(e.customroles, vec!["r"]);
        // Round-trips through its own serialization.
        let back: TokenEntry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn entry_json_rejects_typos() {
        assert!(serde_json::from_str::<TokenEntry>(r#"{"token":"T","user":"a","expire":1}"#).is_err());
        assert!(serde_json::from_str::<TokenEntry>(r#"{"token":"T"}"#).is_err());
    }

    #[test]
    fn builder() {
        let e =
            TokenEntry::new("T", "bob").expires_in(Duration::from_secs(2)).mfa("Used").roles(&["a", "b"]).cachefor(7);
        assert_eq!(e.expires_in_ms, Some(2000));
        assert_eq!(e.mfa.as_deref(), Some("Used"));
        assert_eq!(e.customroles, vec!["a", "b"]);
        assert_eq!(e.cachefor, Some(7));
        assert_eq!(TokenEntry::new("T", "b").expired_ago(Duration::from_secs(1)).expires_in_ms, Some(-1000));
        assert_eq!(TokenEntry::new("T", "b").expires_at_ms(42).expires, Some(42));
    }
}
