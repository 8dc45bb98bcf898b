//! Which pod serves a user: `SERVICE_TEMPLATE` with `{username}` (the user name as a DNS label)
//! and `{namespace}`, on `BACKEND_PORT`; and where that pod's host is now (the system resolver,
//! unless a `--resolve` override names the address).
//!
//! KBase user names may hold `_`, which a DNS label may not, so the name is escaped the way
//! JupyterHub's KubeSpawner names its pods' services (safe characters `a-z0-9`; every other byte
//! becomes `-` and two lower-case hex digits: `jane_doe` → `jane-5fdoe`). A name that still
//! cannot form a host is refused, never routed somewhere else.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;

use http::uri::Authority;

use crate::settings::{BACKEND_NAMESPACE, SERVICE_TEMPLATE};

/// How a user name becomes `{username}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escaping {
    /// KubeSpawner's escaping (the default).
    KubeSpawner,
    /// The name as it is, as BERDL's Python proxy did; names a DNS label cannot hold are refused.
    Raw,
}

impl Escaping {
    pub fn parse(s: &str) -> Option<Escaping> {
        match s.to_ascii_lowercase().as_str() {
            "kubespawner" => Some(Escaping::KubeSpawner),
            "raw" => Some(Escaping::Raw),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Escaping::KubeSpawner => "kubespawner",
            Escaping::Raw => "raw",
        }
    }
}

/// `jane_doe` → `jane-5fdoe`: bytes `a-z0-9` kept, every other byte `-` + two lower-case hex digits.
pub fn escape_kubespawner(name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            out.push(b as char);
        } else {
            out.push('-');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// A `--resolve host:port=addr:port` override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// Lower case.
    pub host: String,
    pub port: u16,
    pub to: SocketAddr,
}

impl FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> Result<Override, String> {
        let bad = || {
            format!(
                "'{s}' is not HOST:PORT=ADDR:PORT (e.g. jupyter-alice.jupyterhub-prod.svc.cluster.local:15002=127.0.0.1:15010; \
                 ADDR is an IP address)"
            )
        };
        let (from, to) = s.split_once('=').ok_or_else(bad)?;
        let (host, port) = from.trim().rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains(['[', ']', ':', ' ']) {
            return Err(bad());
        }
        let to: SocketAddr = to.trim().parse().map_err(|_| bad())?;
        Ok(Override { host: host.to_ascii_lowercase(), port, to })
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.host, self.port, self.to)
    }
}

/// The routing settings, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    pub template: String,
    pub namespace: String,
    pub port: u16,
    pub escaping: Escaping,
    pub overrides: Vec<Override>,
}

impl RouteConfig {
    /// Refuses a template or namespace that cannot form a host for any user; the error names the
    /// setting to fix.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let template = Template::parse(&self.template).map_err(|e| (SERVICE_TEMPLATE, e))?;
        if self.namespace.contains('.') || check_host(&self.namespace).is_err() {
            return Err((
                BACKEND_NAMESPACE,
                format!("'{}' is not a Kubernetes namespace (one DNS label)", self.namespace),
            ));
        }
        let sample = template.render("a", &self.namespace);
        check_host(&sample).map_err(|why| {
            (SERVICE_TEMPLATE, format!("'{}' does not make a host name (for user 'a': {why})", self.template))
        })
    }
}

/// A parsed `SERVICE_TEMPLATE`: literal text, `{username}`, `{namespace}`; `{{` and `}}` are
/// literal braces, as in the Python proxy's `str.format`.
#[derive(Clone, Debug)]
struct Template(Vec<Part>);

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    User,
    Namespace,
}

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            text.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                text.push(tail.as_bytes()[0] as char);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(format!("'{s}' has a '}}' without '{{' (write '}}}}' for a literal brace)"));
            }
            let end = tail.find('}').ok_or_else(|| format!("'{s}' has a '{{' without '}}'"))?;
            let part = match &tail[1..end] {
                "username" => Part::User,
                "namespace" => Part::Namespace,
                other => return Err(format!("'{s}' names {{{other}}}; only {{username}} and {{namespace}} exist")),
            };
            parts.push(Part::Text(std::mem::take(&mut text)));
            parts.push(part);
            rest = &tail[end + 1..];
        }
        text.push_str(rest);
        parts.push(Part::Text(text));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Template(parts))
    }

    fn has_user(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::User))
    }

    fn render(&self, user: &str, namespace: &str) -> String {
        let mut out = String::with_capacity(64);
        for p in &self.0 {
            out.push_str(match p {
                Part::Text(t) => t,
                Part::User => user,
                Part::Namespace => namespace,
            });
        }
        out
    }
}

/// Why a host name is not one: labels of 1 to 63 of `a-z A-Z 0-9 -`, not starting or ending
/// with `-`, 253 characters at most (a trailing dot allowed).
pub fn check_host(host: &str) -> Result<(), String> {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.is_empty() {
        return Err("the host name is empty".into());
    }
    if h.len() > 253 {
        return Err(format!("the host name is {} characters; DNS allows 253", h.len()));
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err(format!("'{h}' has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("the DNS label '{label}' is {} characters; DNS allows 63", label.len()));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(format!("the DNS label '{label}' holds '{c}'; a label holds only a-z, 0-9 and -"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the DNS label '{label}' starts or ends with '-'"));
        }
    }
    Ok(())
}

/// A user's pod: where calls go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub host: String,
    pub port: u16,
    /// `host:port`: the request's `:authority`, and the pool's key.
    pub authority: Authority,
}

impl fmt::Display for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.authority.as_str())
    }
}

/// Turns verified user names into pods.
#[derive(Clone, Debug)]
pub struct Router {
    template: Template,
    namespace: String,
    port: u16,
    escaping: Escaping,
}

impl Router {
    pub fn new(cfg: &RouteConfig) -> Result<Router, String> {
        cfg.check().map_err(|(env, e)| format!("{env}: {e}"))?;
        let template = Template::parse(&cfg.template)?;
        Ok(Router { template, namespace: cfg.namespace.clone(), port: cfg.port, escaping: cfg.escaping })
    }

    /// Whether every user gets a pod of their own (the template names `{username}`).
    pub fn is_per_user(&self) -> bool {
        self.template.has_user()
    }

    /// The pod of `user`, or why there is none; the message is for the caller.
    pub fn pod_for(&self, user: &str) -> Result<Pod, String> {
        let label = match self.escaping {
            Escaping::KubeSpawner => escape_kubespawner(user),
            Escaping::Raw => {
                if let Some(c) = user.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
                    return Err(unroutable(user, &format!("the name holds '{c}', which a DNS label may not hold")));
                }
                user.to_owned()
            }
        };
        let host = self.template.render(&label, &self.namespace);
        check_host(&host).map_err(|why| unroutable(user, &why))?;
        let authority =
            Authority::try_from(format!("{host}:{}", self.port)).map_err(|e| unroutable(user, &e.to_string()))?;
        Ok(Pod { host, port: self.port, authority })
    }
}

fn unroutable(user: &str, why: &str) -> String {
    format!("no Spark Connect server can be named for KBase user '{user}': {why}; ask a KBase administrator")
}

/// Finds a pod's addresses at each dial, so a pod that moved is found again.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    overrides: HashMap<(String, u16), SocketAddr>,
}

impl Resolver {
    pub fn new(overrides: &[Override]) -> Resolver {
        Resolver { overrides: overrides.iter().map(|o| ((o.host.clone(), o.port), o.to)).collect() }
    }

    /// The override for `host:port`, or the system resolver's answer (`/etc/hosts`, DNS with
    /// `resolv.conf`'s search domains, as for any program in the pod).
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if !self.overrides.is_empty() {
            if let Some(to) = self.overrides.get(&(host.to_ascii_lowercase(), port)) {
                return Ok(vec![*to]);
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the name has no address"));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parts() {
        let t = Template::parse("a{{b}}-{username}.{namespace}").unwrap();
        assert_eq!(t.render("u", "ns"), "a{b}-u.ns");
        for bad in ["{user}", "{username", "x}", "{}", "{0}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert!(!Template::parse("fixed.host").unwrap().has_user());
    }
}
