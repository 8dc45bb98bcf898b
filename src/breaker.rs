//! Fail fast while Auth2 is down, and cap how many gRPC threads wait on it at once.
//!
//! After `threshold` consecutive failed exchanges, misses are answered UNAVAILABLE without a
//! network attempt for `cooldown`; then one exchange is let through again. A success closes it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: u32,
}

/// Why a miss was refused without asking Auth2.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    CoolingDown(Duration),
    TooManyInFlight(u32),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::CoolingDown(left) => write!(f, "Auth2 failed repeatedly; not retrying for another {left:?}"),
            Rejected::TooManyInFlight(n) => write!(f, "{n} Auth2 requests already in flight"),
        }
    }
}

/// Holds one in-flight slot; releasing it on drop keeps the count right on every exit path.
pub struct Permit<'a>(&'a Breaker);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration, max_in_flight: u32) -> Breaker {
        Breaker {
            threshold,
            cooldown,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            max_in_flight,
        }
    }

    pub fn admit(&self) -> Result<Permit<'_>, Rejected> {
        let until = self.open_until_ms.load(Relaxed);
        let now = now_ms();
        if until > now {
            return Err(Rejected::CoolingDown(Duration::from_millis(until - now)));
        }
        if self.in_flight.fetch_add(1, Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            return Err(Rejected::TooManyInFlight(self.max_in_flight));
        }
        Ok(Permit(self))
    }

    pub fn success(&self) {
        self.failures.store(0, Relaxed);
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if self.threshold > 0 && n >= self.threshold {
            self.open_until_ms.store(now_ms() + self.cooldown.as_millis() as u64, Relaxed);
            // Half-open after the cool-down: the next failure re-opens at once.
            self.failures.store(self.threshold - 1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(200), 10);
        for _ in 0..2 {
            drop(b.admit().unwrap());
            b.failure();
        }
        assert!(b.admit().is_ok(), "two failures are below the threshold");
        b.failure();
        assert!(matches!(b.admit(), Err(Rejected::CoolingDown(_))));
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.admit().is_err() {
            assert!(Instant::now() < deadline, "cool-down never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
        b.failure(); // half-open: one more failure re-opens
        assert!(b.admit().is_err());
    }

    #[test]
    fn success_resets() {
        let b = Breaker::new(2, Duration::from_secs(60), 10);
        b.failure();
        b.success();
        b.failure();
        assert!(b.admit().is_ok());
    }

    #[test]
    fn zero_threshold_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(60), 10);
        for _ in 0..100 {
            b.failure();
        }
        assert!(b.admit().is_ok());
    }

    #[test]
    fn in_flight_is_capped_and_released() {
        let b = Breaker::new(0, Duration::ZERO, 2);
        let p1 = b.admit().unwrap();
        let _p2 = b.admit().unwrap();
        assert_eq!(b.admit().err(), Some(Rejected::TooManyInFlight(2)));
        drop(p1);
        assert!(b.admit().is_ok());
    }
}
