//! The two clocks a decision needs, read once each per call.
//!
//! * **Monotonic** milliseconds for everything the plugin decides about time itself: cache
//!   lifetimes, refresh windows, cool-downs, log windows. A wall-clock step (NTP, an operator)
//!   cannot stretch or shorten them.
//! * **Wall** epoch milliseconds only for the token's own expiry, which Auth2 states on the wall
//!   clock.
//!
//! Both are the kernel's coarse clocks (~5 ns each through the vDSO instead of ~20 ns; the tick
//! is 1–4 ms, far below any window or lifetime here). Tests inject a [`ManualClock`].

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds since an arbitrary origin.
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub wall_ms: i64,
}

#[derive(Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// Both clocks, or `None` if the system cannot tell the time: the caller must then deny
    /// (an unknown "now" makes every expiry check meaningless).
    #[inline]
    pub fn now(&self) -> Option<Now> {
        match self {
            Clock::System => Some(Now { mono_ms: coarse_ms(libc::CLOCK_MONOTONIC_COARSE)?, wall_ms: wall_ms()? }),
            Clock::Manual(m) => m.now(),
        }
    }
}

#[inline]
fn coarse_ms(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: `ts` is a valid out-pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    u64::try_from(ts.tv_sec).ok().map(|s| s * 1000 + ts.tv_nsec as u64 / 1_000_000)
}

#[inline]
fn wall_ms() -> Option<i64> {
    // A wall clock before 1970 is as broken as an unreadable one.
    coarse_ms(libc::CLOCK_REALTIME_COARSE).and_then(|ms| i64::try_from(ms).ok())
}

/// A clock that moves only when told to, for tests: `advance` moves both clocks, `step_wall`
/// only the wall clock (an NTP step), `break_clock` makes it unreadable.
#[derive(Debug)]
pub struct ManualClock {
    mono_ms: AtomicU64,
    wall_ms: AtomicI64,
    broken: AtomicBool,
}

impl ManualClock {
    /// Starts at the real wall time, so that Auth2's real expiry times make sense against it.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            mono_ms: AtomicU64::new(1_000_000),
            wall_ms: AtomicI64::new(wall_ms().expect("the test machine's clock")),
            broken: AtomicBool::new(false),
        })
    }

    pub fn now(&self) -> Option<Now> {
        if self.broken.load(Relaxed) {
            return None;
        }
        Some(Now { mono_ms: self.mono_ms.load(Relaxed), wall_ms: self.wall_ms.load(Relaxed) })
    }

    pub fn advance(&self, d: Duration) {
        self.mono_ms.fetch_add(d.as_millis() as u64, Relaxed);
        self.wall_ms.fetch_add(d.as_millis() as i64, Relaxed);
    }

    pub fn step_wall(&self, delta_ms: i64) {
        self.wall_ms.fetch_add(delta_ms, Relaxed);
    }

    pub fn break_clock(&self) {
        self.broken.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clocks_agree_with_std() {
        let now = Clock::System.now().unwrap();
        let std_wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((now.wall_ms - std_wall).abs() < 100, "{} vs {std_wall}", now.wall_ms);
        std::thread::sleep(Duration::from_millis(30));
        let later = Clock::System.now().unwrap();
        assert!(later.mono_ms >= now.mono_ms + 20, "{now:?} → {later:?}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let m = ManualClock::new();
        let c = Clock::Manual(m.clone());
        let a = c.now().unwrap();
        m.advance(Duration::from_secs(2));
        m.step_wall(-60_000);
        let b = c.now().unwrap();
        assert_eq!(b.mono_ms, a.mono_ms + 2000);
        assert_eq!(b.wall_ms, a.wall_ms + 2000 - 60_000);
        m.break_clock();
        assert_eq!(c.now(), None);
    }
}
