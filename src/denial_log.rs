//! Keeps the denial log bounded: at most [`LINES_PER_SECOND`] lines per denial reason per
//! second; the rest are counted and reported in one line with the next logged denial of that
//! reason. A flood of made-up tokens then writes tens of lines a second, not one per call. The
//! metrics counters still count every denial.
//!
//! Windows only move forward: a time before the current window's start (a denial that read the
//! clock before another thread's, or the 0 of a clock that could not be read) counts in the
//! current window, so no order of arrival can reopen the budget.

use std::sync::Mutex;

use crate::decision::Reason;

pub const LINES_PER_SECOND: u32 = 10;
const WINDOW_MS: u64 = 1000;

/// How many kinds of denial one [`DenialLog`] bounds separately.
pub const MAX_KINDS: usize = 16;

/// A kind of denial with its own bound: the core's [`Reason`]s, and the gateway's own denials
/// (a user name that names no pod, a pod that does not answer), which are logged the same way.
pub trait DenialKind: Copy {
    /// Below [`MAX_KINDS`], distinct per kind.
    fn index(self) -> usize;
    /// As the log lines name it.
    fn name(self) -> &'static str;
}

impl DenialKind for Reason {
    fn index(self) -> usize {
        Reason::index(self)
    }

    fn name(self) -> &'static str {
        Reason::name(self)
    }
}

const _: () = assert!(Reason::ALL.len() <= MAX_KINDS);

/// Whether one denial's log line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Write it; first report how many lines of this reason were suppressed since the last one.
    Write {
        suppressed_before: u64,
        over_ms: u64,
    },
    Suppress,
}

#[derive(Default)]
struct Window {
    start_ms: u64,
    written: u32,
    suppressed: u64,
    /// Start of the window in which the first unreported suppression happened.
    suppressed_since_ms: u64,
}

#[derive(Default)]
pub struct DenialLog {
    windows: [Mutex<Window>; MAX_KINDS],
}

impl DenialLog {
    pub fn admit(&self, reason: impl DenialKind, now_ms: u64) -> LogVerdict {
        let mut w = self.windows[reason.index()].lock().unwrap_or_else(|e| e.into_inner());
        if now_ms >= w.start_ms.saturating_add(WINDOW_MS) {
            w.start_ms = now_ms;
            w.written = 0;
        }
        if w.written >= LINES_PER_SECOND {
            if w.suppressed == 0 {
                w.suppressed_since_ms = w.start_ms;
            }
            w.suppressed += 1;
            return LogVerdict::Suppress;
        }
        w.written += 1;
        let verdict = LogVerdict::Write {
            suppressed_before: w.suppressed,
            over_ms: now_ms.saturating_sub(w.suppressed_since_ms),
        };
        w.suppressed = 0;
        verdict
    }
}

/// The line reporting suppressed lines, if any.
pub fn suppressed_line(reason: impl DenialKind, suppressed: u64, over_ms: u64) -> Option<String> {
    (suppressed > 0).then(|| {
        format!(
            "KBase auth: {suppressed} more denials with reason={} were not logged in the last {:.1} s \
             (at most {LINES_PER_SECOND} lines per second per reason; the metrics count every denial)",
            reason.name(),
            over_ms as f64 / 1000.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_per_second_per_reason_then_one_summary() {
        let log = DenialLog::default();
        let written =
            |from: u64, n: u64, reason| (0..n).filter(|i| log.admit(reason, from + i) != LogVerdict::Suppress).count();
        assert_eq!(written(0, 500, Reason::Invalid), 10);
        assert_eq!(written(0, 5, Reason::Missing), 5, "each reason has its own budget");
        // The next window: the first line carries the count of the 490 suppressed ones.
        assert_eq!(log.admit(Reason::Invalid, 1_200), LogVerdict::Write { suppressed_before: 490, over_ms: 1_200 });
        assert_eq!(log.admit(Reason::Invalid, 1_201), LogVerdict::Write { suppressed_before: 0, over_ms: 1_201 });
        // A sustained flood for a minute writes ~10 lines a second, not one per call.
        let total = (0..60_000u64)
            .step_by(2)
            .filter(|ms| log.admit(Reason::Invalid, 2_000 + ms) != LogVerdict::Suppress)
            .count();
        assert!((590..=610).contains(&total), "{total}");
    }

    /// Lines a sequence of denials writes: each written line, plus its summary line if any.
    fn lines(log: &DenialLog, times: impl IntoIterator<Item = u64>) -> u64 {
        times
            .into_iter()
            .map(|t| match log.admit(Reason::Invalid, t) {
                LogVerdict::Write { suppressed_before, .. } => 1 + u64::from(suppressed_before > 0),
                LogVerdict::Suppress => 0,
            })
            .sum()
    }

    /// A time earlier than the window's start used to open a new window: denials that waited
    /// for Auth2 (logged with a time read 300 ms before an immediate one's), alternating with
    /// immediate ones, and clock failures (time 0) logged nearly every call.
    #[test]
    fn late_and_zero_times_cannot_reopen_the_window() {
        let log = DenialLog::default();
        // 10 s of denials, one per millisecond each: immediate, waited, and every 100th from a
        // clock that could not be read.
        let times = (0..10_000u64).flat_map(|ms| {
            let now = 1_000_000 + ms;
            [now, now - 300].into_iter().chain((ms % 100 == 0).then_some(0))
        });
        let written = lines(&log, times);
        // 10 s touch at most 11 one-second windows: 10 lines and one summary each.
        assert!(written <= 11 * 11, "{written} lines");
        assert!(written >= 10 * 10, "the log still writes: {written}");
    }

    proptest::proptest! {
        #[test]
        fn any_order_of_times_keeps_the_bound(times in proptest::collection::vec(0u64..20_000, 0..3_000)) {
            // Times spread over 20 s, in any order, with repeats: at most 21 windows.
            let written = lines(&DenialLog::default(), times.iter().map(|t| 1_000_000 + t));
            proptest::prop_assert!(written <= 11 * 21, "{} lines", written);
        }
    }

    #[test]
    fn summary_text() {
        assert_eq!(suppressed_line(Reason::Invalid, 0, 5), None);
        let line = suppressed_line(Reason::Invalid, 2935, 1_500).unwrap();
        assert!(line.contains("2935 more denials with reason=invalid_token") && line.contains("1.5 s"), "{line}");
    }
}
