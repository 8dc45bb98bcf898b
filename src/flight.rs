//! Single flight: at most one Auth2 exchange per token at a time, whoever asks for it.
//!
//! A caller whose token missed the cache, a background refresh and a re-validation after an
//! outage all go through [`Flights::join_or_lead`]: the first becomes the leader and starts the
//! exchange; everyone else who arrives before it ends waits for the same result. The result,
//! failures included, is handed to every waiter; it is never stored here (the cache stores what
//! deserves storing). A waiter may block its thread ([`Flight::wait`], the plugin's gRPC
//! threads) or await ([`Flight::wait_async`], the gateway's tasks, which must never block a
//! thread that serves other calls).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::token::TokenKey;

pub struct Flight<T> {
    result: Mutex<Option<T>>,
    done: Condvar,
    done_async: tokio::sync::Notify,
}

impl<T: Clone> Flight<T> {
    /// The result, waiting for it at most `deadline`; `None` if it did not come in time.
    pub fn wait(&self, deadline: Duration) -> Option<T> {
        let guard = self.result.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) =
            self.done.wait_timeout_while(guard, deadline, |r| r.is_none()).unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }

    /// As [`wait`](Self::wait), awaiting instead of blocking the thread.
    pub async fn wait_async(&self, deadline: Duration) -> Option<T> {
        let mut notified = std::pin::pin!(self.done_async.notified());
        // Registered before the check, so that a finish in between still wakes us.
        notified.as_mut().enable();
        if let Some(r) = self.peek() {
            return Some(r);
        }
        let _ = tokio::time::timeout(deadline, notified).await;
        self.peek()
    }

    fn peek(&self) -> Option<T> {
        self.result.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub enum Role<T> {
    /// Start the exchange, then call [`Flights::finish`] exactly once.
    Leader(Arc<Flight<T>>),
    /// Someone else's exchange is in flight: wait for it (or not).
    Follower(Arc<Flight<T>>),
}

pub struct Flights<T> {
    in_flight: Mutex<HashMap<TokenKey, Arc<Flight<T>>>>,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Flights { in_flight: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone> Flights<T> {
    pub fn join_or_lead(&self, key: TokenKey) -> Role<T> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&key) {
            return Role::Follower(Arc::clone(f));
        }
        let f = Arc::new(Flight { result: Mutex::new(None), done: Condvar::new(), done_async: Default::default() });
        map.insert(key, Arc::clone(&f));
        Role::Leader(f)
    }

    /// Ends the leader's flight: later arrivals start a new one; current waiters get `result`.
    /// Callers update the cache *before* this, so nobody finds neither the flight nor the entry.
    pub fn finish(&self, key: TokenKey, flight: &Arc<Flight<T>>, result: T) {
        {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                map.remove(&key);
            }
        }
        *flight.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        flight.done.notify_all();
        flight.done_async.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_many_followers_same_result() {
        let flights: Flights<u32> = Flights::default();
        let key = TokenKey(7);
        let Role::Leader(lead) = flights.join_or_lead(key) else { panic!("first is the leader") };
        let results: Vec<_> = std::thread::scope(|s| {
            let waiters: Vec<_> = (0..8)
                .map(|_| {
                    let Role::Follower(f) = flights.join_or_lead(key) else { panic!("followers") };
                    s.spawn(move || f.wait(Duration::from_secs(10)))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            flights.finish(key, &lead, 42);
            waiters.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(results, vec![Some(42); 8]);
        assert!(flights.is_empty());
        assert!(matches!(flights.join_or_lead(key), Role::Leader(_)), "a finished flight is not joined");
    }

    #[test]
    fn async_waiters_get_the_result_too() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let flights: Flights<u32> = Flights::default();
        let key = TokenKey(9);
        let Role::Leader(lead) = flights.join_or_lead(key) else { panic!("first is the leader") };
        let Role::Follower(f) = flights.join_or_lead(key) else { panic!("follower") };
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                flights.finish(key, &lead, 5);
            });
            assert_eq!(rt.block_on(f.wait_async(Duration::from_secs(10))), Some(5));
        });
        assert_eq!(rt.block_on(f.wait_async(Duration::ZERO)), Some(5), "a finished flight answers at once");
        let Role::Leader(other) = flights.join_or_lead(TokenKey(10)) else { panic!() };
        assert_eq!(rt.block_on(other.wait_async(Duration::from_millis(30))), None, "bounded");
    }

    #[test]
    fn waiting_is_bounded() {
        let flights: Flights<u32> = Flights::default();
        let Role::Leader(lead) = flights.join_or_lead(TokenKey(1)) else { panic!() };
        assert_eq!(lead.wait(Duration::from_millis(30)), None);
        flights.finish(TokenKey(1), &lead, 1);
        assert_eq!(lead.wait(Duration::ZERO), Some(1), "a finished flight answers at once");
    }
}
