//! Shared server state: known tokens, the current fault, request counters.
//!
//! Plain `std::sync::Mutex`es: every critical section is a short map operation with no
//! `.await` inside, and lock poisoning is ignored (a test tool should keep serving).

use crate::model::{now_ms, Fault, TokenEntry, DEFAULT_EXPIRES_IN_MS};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// Distinct tokens tracked per-token; beyond this, requests count only in the total (and
/// in `untracked`), so a flood of random tokens cannot grow the fake without bound.
pub(crate) const MAX_TRACKED_TOKENS: usize = 100_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token entry resolved at load time (relative expiry turned absolute, id assigned).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub entry: TokenEntry,
    pub id: String,
    pub created: i64,
    pub expires: i64,
    pub revoked: bool,
}

/// The desired fault plus a sequence number, so whoever changes it can wait for the
/// listener task to acknowledge that exact change.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultState {
    pub epoch: u64,
    pub fault: Fault,
}

/// What the listener task has applied: the last fault epoch it saw and whether the
/// listening socket is open. `error` is set when a rebind after `refuse` failed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Applied {
    pub epoch: u64,
    pub listening: bool,
    pub error: Option<String>,
}

#[derive(Default)]
pub(crate) struct Counts {
    pub by_token: HashMap<String, u64>,
    pub untracked: u64,
}

pub(crate) struct State {
    pub prefix: String,
    pub default_cachefor: u64,
    /// Address of the redirect target listener (where the `redirect` fault points).
    pub redirect_target: SocketAddr,
    /// Requests the redirect target received.
    redirected: AtomicU64,
    tokens: Mutex<HashMap<String, Stored>>,
    counts: Mutex<Counts>,
    total: AtomicU64,
    seq: AtomicU64,
    hasher: RandomState,
    pub fault_tx: watch::Sender<FaultState>,
    pub applied_tx: watch::Sender<Applied>,
}

impl State {
    pub fn new(prefix: String, default_cachefor: u64, redirect_target: SocketAddr) -> State {
        State {
            prefix,
            default_cachefor,
            redirect_target,
            redirected: AtomicU64::new(0),
            tokens: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            total: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            hasher: RandomState::new(),
            fault_tx: watch::Sender::new(FaultState::default()),
            applied_tx: watch::Sender::new(Applied::default()),
        }
    }

    /// A fresh pseudo-random 64-bit value (no `rand` dependency needed for a fake).
    fn random_u64(&self) -> u64 {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.hasher.hash_one((n, now_ms()))
    }

    /// A UUID-shaped id, like Auth2's token ids.
    pub fn new_uuid(&self) -> String {
        let (a, b) = (self.random_u64(), self.random_u64());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    /// Auth2 error bodies carry a call id; digits like the real service's.
    pub fn new_callid(&self) -> String {
        format!("{:016}", self.random_u64() % 10_000_000_000_000_000)
    }

    /// Adds or replaces a token (replacing also clears a revocation).
    pub fn add_token(&self, entry: TokenEntry) {
        let now = now_ms();
        let expires =
            entry.expires.unwrap_or_else(|| now.saturating_add(entry.expires_in_ms.unwrap_or(DEFAULT_EXPIRES_IN_MS)));
        let stored =
            Stored { id: self.new_uuid(), created: entry.created.unwrap_or(now), expires, revoked: false, entry };
        lock(&self.tokens).insert(stored.entry.token.clone(), stored);
    }

    /// Marks a token revoked; false if the fake does not know it.
    pub fn revoke(&self, token: &str) -> bool {
        match lock(&self.tokens).get_mut(token) {
            Some(s) => {
                s.revoked = true;
                true
            }
            None => false,
        }
    }

    pub fn lookup(&self, token: &str) -> Option<Stored> {
        lock(&self.tokens).get(token).cloned()
    }

    pub fn fault(&self) -> Fault {
        self.fault_tx.borrow().fault.clone()
    }

    /// Sets the fault; returns the epoch to wait for in `applied_tx`.
    pub fn set_fault(&self, fault: Fault) -> u64 {
        let mut epoch = 0;
        self.fault_tx.send_modify(|s| {
            s.epoch += 1;
            s.fault = fault;
            epoch = s.epoch;
        });
        epoch
    }

    /// Counts one request to a token endpoint; `token` is `None` when the header is missing.
    pub fn count(&self, token: Option<&str>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let Some(token) = token else { return };
        let mut c = lock(&self.counts);
        if let Some(n) = c.by_token.get_mut(token) {
            *n += 1;
        } else if c.by_token.len() < MAX_TRACKED_TOKENS {
            c.by_token.insert(token.to_string(), 1);
        } else {
            c.untracked += 1;
        }
    }

    pub fn requests_for(&self, token: &str) -> u64 {
        lock(&self.counts).by_token.get(token).copied().unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one request (any path) received by the redirect target.
    pub fn count_redirected(&self) {
        self.redirected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn redirected(&self) -> u64 {
        self.redirected.load(Ordering::Relaxed)
    }

    /// Snapshot of (total, per-token, untracked).
    pub fn counts(&self) -> (u64, HashMap<String, u64>, u64) {
        let c = lock(&self.counts);
        (self.total_requests(), c.by_token.clone(), c.untracked)
    }

    pub fn reset_counts(&self) {
        let mut c = lock(&self.counts);
        c.by_token.clear();
        c.untracked = 0;
        self.total.store(0, Ordering::Relaxed);
        self.redirected.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape_and_uniqueness() {
        let s = State::new(String::new(), 1, "127.0.0.1:9".parse().unwrap());
        let a = s.new_uuid();
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12], "{a}");
        assert_ne!(a, s.new_uuid());
        assert_eq!(s.new_callid().len(), 16);
    }

    #[test]
    fn expiry_resolution_and_revocation() {
        let s = State::new(String::new(), 1, "127.0.0.1:9".parse().unwrap());
        let before = now_ms();
        s.add_token(TokenEntry::new("a", "u"));
        s.add_token(TokenEntry::new("b", "u").expires_at_ms(5));
        s.add_token(TokenEntry::new("c", "u").expired_ago(std::time::Duration::from_secs(1)));
        let a = s.lookup("a").unwrap();
        assert!(a.expires >= before + DEFAULT_EXPIRES_IN_MS);
        assert_eq!(s.lookup("b").unwrap().expires, 5);
        assert!(s.lookup("c").unwrap().expires < now_ms());
        assert!(s.revoke("a"));
        assert!(s.lookup("a").unwrap().revoked);
        assert!(!s.revoke("zzz"));
        // Re-adding clears the revocation.
        s.add_token(TokenEntry::new("a", "u"));
        assert!(!s.lookup("a").unwrap().revoked);
    }

    #[test]
    fn counting() {
        let s = State::new(String::new(), 1, "127.0.0.1:9".parse().unwrap());
        s.count(Some("a"));
        s.count(Some("a"));
        s.count(None);
        assert_eq!(s.requests_for("a"), 2);
        assert_eq!(s.total_requests(), 3);
        s.count_redirected();
        assert_eq!(s.redirected(), 1);
        assert_eq!(s.total_requests(), 3, "the redirect target counts on its own");
        s.reset_counts();
        assert_eq!((s.requests_for("a"), s.total_requests(), s.redirected()), (0, 0, 0));
    }
}
