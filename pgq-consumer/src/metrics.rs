//! Counters a runner keeps: batches, events, retries, failures, and lag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::runner::BatchReport;

/// A runner's counters, shared with whoever exports them (take them with `metrics()` before
/// calling `run`). Updated after each committed batch.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    batches: AtomicU64,
    events: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    lag_ms: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Batches committed.
    pub batches: u64,
    /// Events handed to the handler in committed batches.
    pub events: u64,
    /// Events handed back for a retry.
    pub retried: u64,
    /// Events moved to the failed events.
    pub failed: u64,
    /// Lag at the last committed batch: the age of its end tick.
    pub lag: Duration,
}

impl ConsumerMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lag: Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn record(&self, report: &BatchReport) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(report.events, Ordering::Relaxed);
        self.retried.fetch_add(report.retried, Ordering::Relaxed);
        self.failed.fetch_add(report.failed, Ordering::Relaxed);
        self.lag_ms.store(
            u64::try_from(report.lag.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}
