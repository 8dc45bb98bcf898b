//! Verified user names, interned per authenticator.
//!
//! A cached verdict names its user by a small number ([`UserId`]) rather than by the name
//! itself, so that the hot path can hand the caller who the token proved by copying a `u32`:
//! nothing shared is cloned or reference-counted per call. The name behind a number is looked up
//! when it is first needed (the JVM shim keeps its own copy per number; the gateway asks per
//! call, off the plugin's hot path).
//!
//! Names only come from Auth2's answers for valid tokens, so the table grows with the real users
//! who have used this process, not with what callers send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// A user name Auth2 vouched for, by number (stable for the life of its authenticator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub u32);

#[derive(Default)]
pub struct Users {
    names: RwLock<Vec<Arc<str>>>,
    ids: Mutex<HashMap<Arc<str>, UserId>>,
}

impl Users {
    /// The number of `name`, given one if it has none yet.
    pub fn intern(&self, name: &str) -> UserId {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = ids.get(name) {
            return *id;
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        let id = UserId(u32::try_from(names.len()).unwrap_or(u32::MAX));
        let name: Arc<str> = Arc::from(name);
        names.push(Arc::clone(&name));
        ids.insert(name, id);
        id
    }

    /// The name behind `id`, if this table gave it out.
    pub fn name(&self, id: UserId) -> Option<Arc<str>> {
        self.names.read().unwrap_or_else(|e| e.into_inner()).get(id.0 as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_number_per_name() {
        let u = Users::default();
        let (a, b) = (u.intern("alice"), u.intern("bob"));
        assert_ne!(a, b);
        assert_eq!(u.intern("alice"), a);
        assert_eq!(u.name(a).as_deref(), Some("alice"));
        assert_eq!(u.name(b).as_deref(), Some("bob"));
        assert_eq!(u.name(UserId(7)), None);
    }
}
