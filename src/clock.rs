//! The two clocks a decision needs, read once each per call.
//!
//! * **Monotonic** milliseconds for everything the plugin decides about time itself: cache
//!   lifetimes, refresh windows, cool-downs, log windows. A wall-clock step (NTP, an operator)
//!   cannot stretch or shorten them.
//! * **Wall** epoch milliseconds only for the token's own expiry, which Auth2 states on the wall
//!   clock.
//!
//! Both are the kernel's coarse clocks (~5 ns each through the vDSO instead of ~20 ns; the tick
//! is 1–4 ms, far below any window or lifetime here). A coarse clock reads the time of its
//! last update, which lags the true time by up to two ticks (measured here: up to 5.3 ms with a
//! 4 ms tick), and more when the tick itself is late (a descheduled VM). Windows do not care;
//! an expiry does: [`Now::has_passed`] asks the precise clock whenever the coarse reading is
//! within [`COARSE_SLACK_MS`] of the instant in question, so an expiry is never enforced late,
//! and the hit path still reads only the coarse clocks (a token is that close to its expiry
//! for one second of its life). Tests inject a [`ManualClock`].

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds since an arbitrary origin.
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch; from the system, up to
    /// [`COARSE_SLACK_MS`] behind the true time.
    pub wall_ms: i64,
    /// Whether `wall_ms` is exact (a [`ManualClock`]) rather than the coarse system clock.
    wall_exact: bool,
}

/// How far behind the true time the coarse wall reading is taken to be, at most.
pub const COARSE_SLACK_MS: i64 = 1_000;

impl Now {
    /// A reading of exact clocks (tests, and the manual clock).
    pub fn exact(mono_ms: u64, wall_ms: i64) -> Now {
        Now { mono_ms, wall_ms, wall_exact: true }
    }

    /// Whether the wall-clock instant `at_ms` (a token's expiry) has passed. Never late: near
    /// `at_ms` the precise clock decides; if it cannot be read, the instant counts as passed.
    #[inline]
    pub fn has_passed(&self, at_ms: i64) -> bool {
        // No overflow: a clock reading is far below i64::MAX ms (year 292 million).
        if at_ms > self.wall_ms + COARSE_SLACK_MS {
            return false;
        }
        if self.wall_exact || at_ms <= self.wall_ms {
            return at_ms <= self.wall_ms;
        }
        precise_wall_ms().is_none_or(|now| at_ms <= now)
    }
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
            Clock::System => {
                Some(Now { mono_ms: read_ms(libc::CLOCK_MONOTONIC_COARSE)?, wall_ms: wall_ms()?, wall_exact: false })
            }
            Clock::Manual(m) => m.now(),
        }
    }
}

#[inline]
fn read_ms(clock: libc::clockid_t) -> Option<u64> {
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
    read_ms(libc::CLOCK_REALTIME_COARSE).and_then(|ms| i64::try_from(ms).ok())
}

#[cold]
fn precise_wall_ms() -> Option<i64> {
    read_ms(libc::CLOCK_REALTIME).and_then(|ms| i64::try_from(ms).ok())
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
        Some(Now::exact(self.mono_ms.load(Relaxed), self.wall_ms.load(Relaxed)))
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

    /// The coarse wall clock lags the true time by a tick or more (up to 5.3 ms measured here),
    /// so a token that had expired a millisecond ago was still allowed. Against the precise
    /// clock, read just before.
    #[test]
    fn an_instant_a_millisecond_ago_has_passed() {
        for _ in 0..200_000 {
            let true_ms = precise_wall_ms().unwrap();
            let now = Clock::System.now().unwrap();
            assert!(
                now.has_passed(true_ms - 1),
                "expired 1 ms ago, coarse reading {} ms behind",
                true_ms - now.wall_ms
            );
            assert!(now.has_passed(true_ms - 2_000));
            assert!(!now.has_passed(true_ms + 2_000));
        }
    }

    #[test]
    fn exact_readings_decide_alone() {
        let now = Now::exact(0, 10_000);
        assert!(now.has_passed(10_000) && now.has_passed(9_999));
        assert!(!now.has_passed(10_001) && !now.has_passed(i64::MAX));
        assert!(now.has_passed(i64::MIN));
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
