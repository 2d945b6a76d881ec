//! What a batch step did, and the counters a runner keeps of them: batches, events, retries,
//! failures, and lag. The same figures go to the `metrics` facade (names `pgq_runner_*`, labels
//! `queue` and `consumer`), so a service that embeds a runner sees them in its own exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgq_core::tokio_postgres::GenericClient;
use pgq_core::{Batch, BatchId, ConsumerInfo, ConsumerName, QueueName, TickId};

use crate::batch::Counts;

/// What one batch step did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// The batch.
    pub batch_id: BatchId,
    /// The tick the consumer is at now.
    pub cur_tick: TickId,
    /// Events handed to the handler.
    pub events: u64,
    /// Events handed back for a retry.
    pub retried: u64,
    /// Events moved to the failed events.
    pub failed: u64,
    /// The batch was processed event by event (after repeated failures).
    pub per_event: bool,
    /// A remote consumer found the batch done already and only finished it.
    pub already_done: bool,
    /// Time from taking the batch to the commit.
    pub elapsed: Duration,
    /// The age of the batch's end tick at the commit.
    pub lag: Duration,
}

impl BatchReport {
    pub(crate) fn new(batch: &Batch, counts: Counts, per_event: bool, start: Instant) -> Self {
        BatchReport {
            batch_id: batch.id,
            cur_tick: batch.cur_tick,
            events: counts.events,
            retried: counts.retried,
            failed: counts.failed,
            per_event,
            already_done: false,
            elapsed: start.elapsed(),
            lag: (chrono::Utc::now() - batch.cur_tick_time)
                .to_std()
                .unwrap_or_default(),
        }
    }
}

/// A runner's counters, shared with whoever exports them (take them with `metrics()` before
/// calling `run`). Updated after each committed batch.
#[derive(Debug)]
pub struct ConsumerMetrics {
    /// The facade's labels: the queue, and the consumer (`group.subconsumer` for a
    /// cooperative one).
    labels: [(&'static str, String); 2],
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
    pub(crate) fn new(queue: &str, consumer: &str) -> ConsumerMetrics {
        ConsumerMetrics {
            labels: [
                ("queue", queue.to_owned()),
                ("consumer", consumer.to_owned()),
            ],
            batches: AtomicU64::default(),
            events: AtomicU64::default(),
            retried: AtomicU64::default(),
            failed: AtomicU64::default(),
            lag_ms: AtomicU64::default(),
        }
    }

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

    /// Counts a committed batch, and records its completion fields on the current span.
    pub(crate) fn record(&self, report: &BatchReport) {
        let span = tracing::Span::current();
        span.record("events", report.events);
        span.record(
            "elapsed_ms",
            u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        );
        tracing::debug!(
            retried = report.retried,
            failed = report.failed,
            per_event = report.per_event,
            "batch finished"
        );
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(report.events, Ordering::Relaxed);
        self.retried.fetch_add(report.retried, Ordering::Relaxed);
        self.failed.fetch_add(report.failed, Ordering::Relaxed);
        self.lag_ms.store(
            u64::try_from(report.lag.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let labels = &self.labels;
        ::metrics::counter!("pgq_runner_batches_total", labels).increment(1);
        ::metrics::counter!("pgq_runner_events_total", labels).increment(report.events);
        ::metrics::counter!("pgq_runner_retried_events_total", labels).increment(report.retried);
        ::metrics::counter!("pgq_runner_failed_events_total", labels).increment(report.failed);
        ::metrics::histogram!("pgq_runner_batch_seconds", labels)
            .record(report.elapsed.as_secs_f64());
        ::metrics::gauge!("pgq_runner_lag_seconds", labels).set(report.lag.as_secs_f64());
    }

    /// Sets the gauges of how far behind `consumer` is, from `pgq.get_consumer_info`: the
    /// pending events (PGQ's estimate from the event sequence), and the age of its position
    /// tick while events are pending (every unconsumed event is younger: an upper bound, within
    /// one tick of the oldest one's age), else 0. A failure only skips this observation: a lost
    /// connection shows at the next batch.
    pub(crate) async fn observe(
        &self,
        client: &impl GenericClient,
        queue: &QueueName,
        consumer: &ConsumerName,
    ) {
        match pgq_core::consumer_info(client, Some(queue), Some(consumer)).await {
            Ok(infos) => {
                if let Some(info) = infos.first() {
                    self.observed(info);
                }
            }
            Err(err) => tracing::debug!(error = %err, "could not observe the consumer's backlog"),
        }
    }

    fn observed(&self, info: &ConsumerInfo) {
        let pending = info.pending_events.unwrap_or(0).max(0);
        let oldest = match info.lag {
            Some(lag) if pending > 0 => lag.to_std().unwrap_or_default().as_secs_f64(),
            _ => 0.0,
        };
        let labels = &self.labels;
        #[allow(clippy::cast_precision_loss)] // a gauge; exact below 2^53 events
        ::metrics::gauge!("pgq_runner_pending_events", labels).set(pending as f64);
        ::metrics::gauge!("pgq_runner_oldest_event_age_seconds", labels).set(oldest);
    }
}
