//! Who may use this server: the pod owner, optional extra users, optional MFA and custom roles
//! (the plugin); or any user with a valid token, optional MFA (the gateway, which then routes
//! each user to their own pod).
//!
//! The policy depends only on the identity Auth2 returned, so its answer is computed once per
//! token and cached with it; the per-call work is the expiry check alone.

use std::collections::BTreeSet;

use crate::auth2::{Identity, Mfa};
use crate::decision::{Denial, Reason};
use crate::settings::Settings;

#[derive(Clone, Debug)]
pub struct Policy {
    any_valid_user: bool,
    owner: Option<String>,
    allowed_users: BTreeSet<String>,
    require_mfa: bool,
    mfa_exempt_users: BTreeSet<String>,
    required_roles: BTreeSet<String>,
}

impl Policy {
    pub fn new(s: &Settings) -> Policy {
        Policy {
            any_valid_user: s.any_valid_user,
            owner: s.owner.clone(),
            allowed_users: s.allowed_users.clone(),
            require_mfa: s.require_mfa,
            mfa_exempt_users: s.mfa_exempt_users.clone(),
            required_roles: s.required_roles.clone(),
        }
    }

    /// Whether Auth2's `/api/V2/me` must be asked for the user's custom roles.
    pub fn needs_roles(&self) -> bool {
        !self.required_roles.is_empty()
    }

    /// `Ok` if the identity may use the server, otherwise the denial to send.
    pub fn check(&self, id: &Identity) -> Result<(), Denial> {
        let user = id.user.as_ref();
        let listed = self.owner.as_deref() == Some(user) || self.allowed_users.contains(user);
        if !self.any_valid_user && !listed {
            let whose = match &self.owner {
                Some(owner) => format!("which belongs to '{owner}'"),
                None => format!("which is open only to: {}", join(&self.allowed_users)),
            };
            return Err(Denial::new(
                Reason::NotAllowed,
                format!("user '{user}' is not allowed on this Spark Connect server, {whose}"),
            ));
        }
        if self.require_mfa && id.mfa != Mfa::Used && !self.mfa_exempt_users.contains(user) {
            return Err(Denial::new(
                Reason::MfaRequired,
                format!(
                    "user '{user}' must log in to KBase with multi-factor authentication (MFA) to use this server \
                     (this token's MFA status: {}); log in again with MFA and use the new token",
                    id.mfa.as_str()
                ),
            ));
        }
        if self.needs_roles() {
            let missing: BTreeSet<String> = self
                .required_roles
                .iter()
                .filter(|r| !id.custom_roles.iter().any(|have| have.as_ref() == r.as_str()))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(Denial::new(
                    Reason::RoleMissing,
                    format!("user '{user}' lacks the required KBase custom role(s): {}", join(&missing)),
                ));
            }
        }
        Ok(())
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(pairs: &[(&str, &str)]) -> Policy {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Policy::new(&Settings::from_map(&map).unwrap())
    }

    fn id(user: &str, mfa: Mfa, roles: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            expires_ms: i64::MAX,
            mfa,
            custom_roles: roles.iter().map(|r| (*r).into()).collect(),
        }
    }

    #[test]
    fn owner_only() {
        let p = policy(&[("USER", "alice")]);
        assert!(p.check(&id("alice", Mfa::Unknown, &[])).is_ok());
        let d = p.check(&id("bob", Mfa::Used, &[])).unwrap_err();
        assert_eq!(d.reason, Reason::NotAllowed);
        assert!(d.message.contains("'bob'") && d.message.contains("'alice'"), "{}", d.message);
        // User names compare exactly.
        assert!(p.check(&id("Alice", Mfa::Used, &[])).is_err());
    }

    #[test]
    fn allowed_users_without_owner() {
        let p = policy(&[("spark.kbase.auth.allowedUsers", "bob,carol")]);
        assert!(p.check(&id("carol", Mfa::Unknown, &[])).is_ok());
        let d = p.check(&id("alice", Mfa::Unknown, &[])).unwrap_err();
        assert!(d.message.contains("bob, carol"), "{}", d.message);
    }

    #[test]
    fn mfa_with_exemption() {
        let p = policy(&[
            ("USER", "alice"),
            ("spark.kbase.auth.allowedUsers", "svc"),
            ("spark.kbase.auth.requireMfa", "true"),
            ("spark.kbase.auth.mfaExemptUsers", "svc"),
        ]);
        assert!(p.check(&id("alice", Mfa::Used, &[])).is_ok());
        for mfa in [Mfa::NotUsed, Mfa::Unknown, Mfa::Absent] {
            let d = p.check(&id("alice", mfa, &[])).unwrap_err();
            assert_eq!(d.reason, Reason::MfaRequired);
            assert!(d.message.contains("MFA"));
        }
        assert!(p.check(&id("svc", Mfa::NotUsed, &[])).is_ok());
    }

    #[test]
    fn any_valid_user_with_mfa() {
        let p = Policy::new(&Settings {
            require_mfa: true,
            mfa_exempt_users: ["svc".to_owned()].into(),
            ..Settings::any_valid_user()
        });
        assert!(p.check(&id("alice", Mfa::Used, &[])).is_ok());
        assert!(p.check(&id("zed", Mfa::Used, &[])).is_ok());
        assert_eq!(p.check(&id("zed", Mfa::NotUsed, &[])).unwrap_err().reason, Reason::MfaRequired);
        assert!(p.check(&id("svc", Mfa::Absent, &[])).is_ok());
        assert!(Policy::new(&Settings::any_valid_user()).check(&id("zed", Mfa::Absent, &[])).is_ok());
    }

    #[test]
    fn roles() {
        let p = policy(&[("USER", "alice"), ("spark.kbase.auth.requiredRoles", "A,B")]);
        assert!(p.needs_roles());
        assert!(p.check(&id("alice", Mfa::Unknown, &["B", "A", "C"])).is_ok());
        let d = p.check(&id("alice", Mfa::Unknown, &["A"])).unwrap_err();
        assert_eq!(d.reason, Reason::RoleMissing);
        assert!(d.message.ends_with(": B"), "{}", d.message);
        assert!(!policy(&[("USER", "alice")]).needs_roles());
    }
}
