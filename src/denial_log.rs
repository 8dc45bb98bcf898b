//! Keeps the denial log bounded: at most [`LINES_PER_SECOND`] lines per denial reason per
//! second; the rest are counted and reported in one line with the next logged denial of that
//! reason. A flood of made-up tokens then writes tens of lines a second, not one per call. The
//! metrics counters still count every denial.

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
        if now_ms >= w.start_ms.saturating_add(WINDOW_MS) || now_ms < w.start_ms {
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

    #[test]
    fn summary_text() {
        assert_eq!(suppressed_line(Reason::Invalid, 0, 5), None);
        let line = suppressed_line(Reason::Invalid, 2935, 1_500).unwrap();
        assert!(line.contains("2935 more denials with reason=invalid_token") && line.contains("1.5 s"), "{line}");
    }
}
