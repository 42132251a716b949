//! What one database's threads count, for the periodic summary line and `/metrics`: jobs
//! finished per queue and outcome, their durations, claim sizes, notifications, reconnects,
//! schedules fired; and the pending/running gauges the listener reads from the database.
//!
//! The hot path (a worker's commit, a listener's claim) only does relaxed atomic adds: no
//! lock, no allocation per job. Only the gauges, written every few seconds, sit behind a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::ops::metrics::Histogram;

/// How a job's attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    /// Failed for good (no attempt left).
    Failed,
    /// Failed, and pending again for another attempt.
    Retried,
    Cancelled,
}

impl Ended {
    pub const ALL: [Ended; 4] = [
        Ended::Completed,
        Ended::Failed,
        Ended::Retried,
        Ended::Cancelled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::Failed => "failed",
            Ended::Retried => "retried",
            Ended::Cancelled => "cancelled",
        }
    }
}

/// Upper bounds of the job duration buckets, in microseconds (1 ms to 1 h).
pub(crate) static DURATION_BOUNDS_US: [u64; 17] = [
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// Upper bounds of the claim size buckets (jobs per claim; 0 is a claim that found none).
pub(crate) static CLAIM_BOUNDS: [u64; 10] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500];

/// Lines about single jobs logged above debug per minute at most (failures, jobs that could
/// not start): a submitter's thousand failing jobs make a count in the summary, not a thousand
/// lines.
const JOB_LINES_PER_MINUTE: u32 = 10;

/// Jobs pending and running, as the listener last read them from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gauges {
    /// Per queue 1..=queue_count (index queue - 1): (pending, running).
    pub queues: Vec<(i64, i64)>,
    /// The same for every queue above `queue_count` together (no worker serves them).
    pub unserved: (i64, i64),
    pub read_at: Instant,
}

/// The counters of one database.
pub(crate) struct Stats {
    /// Per queue (index queue - 1), per [`Ended`] (in the order of `Ended::ALL`).
    finished: Box<[[AtomicU64; 4]]>,
    /// How long finished attempts ran, in microseconds.
    pub job_duration: Histogram,
    /// Jobs per claim statement.
    pub claim_size: Histogram,
    pub notifications: AtomicU64,
    /// Connections the listener made after its first one.
    pub reconnects: AtomicU64,
    pub schedules_fired: AtomicU64,
    gauges: Mutex<Option<Gauges>>,
    /// Job lines left in this minute, and the lines that found none left (logged at debug).
    warnings: Mutex<(Option<Instant>, u32)>,
    pub unlogged_job_lines: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stats {
    pub fn new(queue_count: u32) -> Stats {
        Stats {
            finished: (0..queue_count).map(|_| Default::default()).collect(),
            job_duration: Histogram::new(&DURATION_BOUNDS_US),
            claim_size: Histogram::new(&CLAIM_BOUNDS),
            notifications: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            schedules_fired: AtomicU64::new(0),
            gauges: Mutex::new(None),
            warnings: Mutex::new((None, 0)),
            unlogged_job_lines: AtomicU64::new(0),
        }
    }

    /// Counts an attempt of a job of `queue` that ended as `how` after running `took`.
    #[inline]
    pub fn finished(&self, queue: i32, how: Ended, took: Duration) {
        let slot = usize::try_from(queue)
            .ok()
            .and_then(|q| q.checked_sub(1))
            .and_then(|i| self.finished.get(i));
        if let Some(counts) = slot {
            counts[how as usize].fetch_add(1, Relaxed);
        }
        self.job_duration
            .observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// Jobs of `queue` (1-based) finished as `how` so far.
    pub fn count(&self, queue: usize, how: Ended) -> u64 {
        queue
            .checked_sub(1)
            .and_then(|i| self.finished.get(i))
            .map_or(0, |c| c[how as usize].load(Relaxed))
    }

    /// Jobs of every queue finished as `how` so far.
    pub fn total(&self, how: Ended) -> u64 {
        self.finished
            .iter()
            .map(|c| c[how as usize].load(Relaxed))
            .sum()
    }

    pub fn queue_count(&self) -> usize {
        self.finished.len()
    }

    pub fn set_gauges(&self, gauges: Option<Gauges>) {
        *lock(&self.gauges) = gauges;
    }

    pub fn gauges(&self) -> Option<Gauges> {
        lock(&self.gauges).clone()
    }

    /// The level for one more line about a single job: `wanted`, or debug once this minute's
    /// budget of such lines is spent (a submitter must not be able to flood the log).
    pub fn job_line_level(&self, wanted: log::Level) -> log::Level {
        if self.may_log_job_line() {
            wanted
        } else {
            log::Level::Debug
        }
    }

    /// True when one more line about a single job may be logged above debug level.
    fn may_log_job_line(&self) -> bool {
        let mut w = lock(&self.warnings);
        if w.0
            .is_none_or(|since| since.elapsed() >= Duration::from_secs(60))
        {
            *w = (Some(Instant::now()), JOB_LINES_PER_MINUTE);
        }
        if w.1 == 0 {
            self.unlogged_job_lines.fetch_add(1, Relaxed);
            return false;
        }
        w.1 -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_queue_and_outcome() {
        let s = Stats::new(2);
        s.finished(1, Ended::Completed, Duration::from_millis(3));
        s.finished(2, Ended::Completed, Duration::from_secs(2));
        s.finished(2, Ended::Retried, Duration::from_millis(1));
        // A queue no worker has cannot happen; it is timed but not counted per queue.
        s.finished(9, Ended::Failed, Duration::ZERO);
        assert_eq!(s.count(1, Ended::Completed), 1);
        assert_eq!(s.count(2, Ended::Completed), 1);
        assert_eq!(s.count(2, Ended::Retried), 1);
        assert_eq!(s.count(3, Ended::Failed), 0);
        assert_eq!(s.total(Ended::Completed), 2);
        assert_eq!(s.total(Ended::Failed), 0);
        let d = s.job_duration.snapshot();
        assert_eq!(d.count(), 4);
        assert_eq!(d.sum, 2_004_000);
    }
}
