//! The batch a handler gets, and the processing the runners share: batch mode with the
//! no-silent-skip check, per-event mode with savepoints once a batch failed repeatedly, and
//! which failures count towards that.

use std::time::Duration;

use pgq_core::tokio_postgres::Transaction;
use pgq_core::{Batch, BatchId, Event, EventCursor, TickId};

use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{handler_failed, ConsumerError, DbContext, Result};

// language=SQL
const SAVEPOINT: &str = "SAVEPOINT pgq_rs_event";

// language=SQL
const RELEASE: &str = "RELEASE SAVEPOINT pgq_rs_event";

// language=SQL
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT pgq_rs_event; RELEASE SAVEPOINT pgq_rs_event";

/// What the runner does with events handed back or failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Retries allowed before an event goes to the failed events.
    pub(crate) max_retries: u32,
    /// Delay of the runner's own retries.
    pub(crate) delay: Duration,
    /// Whether `pgq.event_failed` exists (the pgq line's version 3).
    pub(crate) failed_queue: bool,
    /// Events per cursor round trip.
    pub(crate) chunk_size: u32,
}

impl RetryPolicy {
    pub(crate) fn new(config: &ConsumerConfig, failed_queue: bool) -> Self {
        RetryPolicy {
            max_retries: config.max_event_retries,
            delay: config.event_retry_delay,
            failed_queue,
            chunk_size: config.chunk_size,
        }
    }
}

/// What became of an event handed back by [`BatchHandle::retry_event`] or
/// [`BatchHandle::fail_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventDisposal {
    /// It is in the retry queue and comes back to this consumer after the delay.
    Retried,
    /// It is in the failed events (`pgq.failed_queue`) for an operator.
    Failed,
    /// It had been handed back in this batch already; nothing changed.
    AlreadyHandedBack,
}

/// A batch in progress: its ticks, its events (read in chunks through a cursor), the work
/// transaction, and the retry/failure hand-back.
///
/// `'a` is the borrow of the transactions, `'c` their connections'.
pub struct BatchHandle<'a, 'c> {
    queue_tx: &'a Transaction<'c>,
    work_tx: &'a Transaction<'c>,
    batch: Batch,
    policy: RetryPolicy,
    cursor: Option<EventCursor>,
    pending: Option<Vec<Event>>,
    exhausted: bool,
    delivered: u64,
    retried: u64,
    failed: u64,
}

impl std::fmt::Debug for BatchHandle<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandle")
            .field("batch", &self.batch)
            .field("delivered", &self.delivered)
            .field("exhausted", &self.exhausted)
            .finish_non_exhaustive()
    }
}

impl<'a, 'c> BatchHandle<'a, 'c> {
    pub(crate) fn new(
        queue_tx: &'a Transaction<'c>,
        work_tx: &'a Transaction<'c>,
        batch: Batch,
        policy: RetryPolicy,
    ) -> Self {
        BatchHandle {
            queue_tx,
            work_tx,
            batch,
            policy,
            cursor: None,
            pending: None,
            exhausted: false,
            delivered: 0,
            retried: 0,
            failed: 0,
        }
    }

    /// The batch: id and ticks.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The batch id.
    pub fn id(&self) -> BatchId {
        self.batch.id
    }

    /// The transaction to do the work in: on the queue's database for a local or cooperative
    /// consumer, on the target database for a remote one. Do not commit or roll it back.
    pub fn tx(&self) -> &'a Transaction<'c> {
        self.work_tx
    }

    /// The transaction on the queue's database that takes and finishes the batch: for reading
    /// the queue's own tables (ticks, sequences) consistently with the batch. Do not commit or
    /// roll it back; for a local consumer it is the same as [`tx`](BatchHandle::tx).
    pub fn queue_tx(&self) -> &'a Transaction<'c> {
        self.queue_tx
    }

    /// Events handed to the handler so far.
    pub fn events_read(&self) -> u64 {
        self.delivered
    }

    /// The next chunk of events in `ev_id` order (at most the configured chunk size); `None`
    /// once every event was returned.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Core`] when reading fails.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<Event>>> {
        let chunk = match self.pending.take() {
            Some(chunk) => Some(chunk),
            None => self.fetch().await?,
        };
        if let Some(events) = &chunk {
            self.delivered += u64::try_from(events.len()).unwrap_or(u64::MAX);
        }
        Ok(chunk)
    }

    /// Hands one event back, to come again after the configured delay; once it has been
    /// retried the configured number of times it goes to the failed events with `reason`.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Core`] or [`ConsumerError::Db`] when the statement fails.
    pub async fn retry_event(&mut self, event: &Event, reason: &str) -> Result<EventDisposal> {
        self.retry_event_after(event, self.policy.delay, reason)
            .await
    }

    /// Like [`retry_event`](Self::retry_event), with this delay.
    ///
    /// # Errors
    ///
    /// As for [`retry_event`](Self::retry_event).
    pub async fn retry_event_after(
        &mut self,
        event: &Event,
        delay: Duration,
        reason: &str,
    ) -> Result<EventDisposal> {
        let retries = u32::try_from(event.retry.unwrap_or(0)).unwrap_or(0);
        if retries >= self.policy.max_retries && self.policy.failed_queue {
            return self.fail_event(event, reason).await;
        }
        let queued = pgq_core::event_retry(self.queue_tx, self.batch.id, event.id, delay).await?;
        tracing::warn!(event_id = %event.id, retries, reason, "event handed back for a retry");
        if queued {
            self.retried += 1;
            Ok(EventDisposal::Retried)
        } else {
            Ok(EventDisposal::AlreadyHandedBack)
        }
    }

    /// Moves one event to the failed events with `reason`, for an operator to list, requeue
    /// or delete. Where the failed events table is missing (the original `pgq` extension
    /// without the pgq-rs line), the event is retried after the configured delay instead.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Core`] or [`ConsumerError::Db`] when the statement fails.
    pub async fn fail_event(&mut self, event: &Event, reason: &str) -> Result<EventDisposal> {
        if !self.policy.failed_queue {
            let queued =
                pgq_core::event_retry(self.queue_tx, self.batch.id, event.id, self.policy.delay)
                    .await?;
            self.retried += u64::from(queued);
            return Ok(if queued {
                EventDisposal::Retried
            } else {
                EventDisposal::AlreadyHandedBack
            });
        }
        let inserted =
            pgq_core::failed::event_failed(self.queue_tx, self.batch.id, event.id, reason).await?;
        tracing::warn!(event_id = %event.id, reason, "event moved to the failed events");
        if inserted {
            self.failed += 1;
            Ok(EventDisposal::Failed)
        } else {
            Ok(EventDisposal::AlreadyHandedBack)
        }
    }

    /// Reads the next chunk from the cursor, opening it first.
    async fn fetch(&mut self) -> Result<Option<Vec<Event>>> {
        if self.exhausted {
            return Ok(None);
        }
        let cursor = match &mut self.cursor {
            Some(cursor) => cursor,
            None => self.cursor.insert(
                EventCursor::open(self.queue_tx, self.batch.id, self.policy.chunk_size).await?,
            ),
        };
        let chunk = cursor.next_chunk(self.queue_tx).await?;
        if chunk.is_none() {
            self.exhausted = true;
        }
        Ok(chunk)
    }

    /// Whether events remain that the handler has not been given (reads ahead one chunk).
    async fn has_unread(&mut self) -> Result<bool> {
        if self.pending.is_some() {
            return Ok(true);
        }
        self.pending = self.fetch().await?;
        Ok(self.pending.is_some())
    }

    fn counts(&self) -> Counts {
        Counts {
            events: self.delivered,
            retried: self.retried,
            failed: self.failed,
        }
    }
}

/// What processing a batch did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) events: u64,
    pub(crate) retried: u64,
    pub(crate) failed: u64,
}

/// Counts failures of one batch, identified by its ticks (a rolled-back batch comes back
/// under a new id).
#[derive(Debug, Default)]
pub(crate) struct Failures {
    key: Option<(TickId, TickId)>,
    count: u32,
}

impl Failures {
    pub(crate) fn count(&self, batch: &Batch) -> u32 {
        if self.key == Some((batch.prev_tick, batch.cur_tick)) {
            self.count
        } else {
            0
        }
    }

    fn record(&mut self, batch: &Batch) {
        let key = Some((batch.prev_tick, batch.cur_tick));
        if self.key == key {
            self.count += 1;
        } else {
            self.key = key;
            self.count = 1;
        }
    }

    /// Settles a batch whose processing failed with `err`, once its transactions were rolled
    /// back (`rolled_back`: every rollback reached the server). A rollback that could not reach the
    /// server means the handler failed because (or while) a connection was lost: the batch is not
    /// counted as failed and the error says so ([`ConsumerError::ConnectionLost`]), so the runner
    /// reconnects instead of pushing the batch towards per-event mode. Other handler failures count
    /// (the batch comes again; after N, event by event).
    pub(crate) fn settle(
        &mut self,
        err: ConsumerError,
        rolled_back: bool,
        batch: &Batch,
    ) -> ConsumerError {
        if err.is_connection_lost() {
            return err;
        }
        if !rolled_back {
            let source = match err {
                ConsumerError::Handler { source, .. } => source,
                other => Box::new(other),
            };
            return ConsumerError::ConnectionLost {
                batch_id: batch.id,
                source,
            };
        }
        if matches!(
            err,
            ConsumerError::Handler { .. } | ConsumerError::UnreadEvents { .. }
        ) {
            self.record(batch);
        }
        err
    }
}

/// Runs the handler over the batch in batch or per-event mode.
pub(crate) async fn process(
    consumer: &dyn Consumer,
    mut handle: BatchHandle<'_, '_>,
    per_event: bool,
) -> Result<Counts> {
    if per_event {
        let batch_id = handle.id();
        tracing::warn!(%batch_id, "batch failed repeatedly: processing it event by event");
        process_per_event(consumer, &mut handle).await
    } else {
        process_whole(consumer, &mut handle).await
    }
}

/// Runs the handler on the batch until every event was handed to it; refuses (rolls back,
/// through the caller) when a call leaves events unread without reading any.
async fn process_whole(
    consumer: &dyn Consumer,
    handle: &mut BatchHandle<'_, '_>,
) -> Result<Counts> {
    let batch_id = handle.id();
    loop {
        let before = handle.delivered;
        consumer
            .process_batch(handle)
            .await
            .map_err(|source| handler_failed(batch_id, source))?;
        if !handle.has_unread().await? {
            return Ok(handle.counts());
        }
        if handle.delivered == before {
            return Err(ConsumerError::UnreadEvents { batch_id });
        }
        tracing::debug!(%batch_id, read = handle.delivered, "handler returned early; handing it the rest");
    }
}

/// Processes the batch event by event, each in a savepoint of the work transaction: a failed
/// event is rolled back alone and handed back for a retry (or failed).
async fn process_per_event(
    consumer: &dyn Consumer,
    handle: &mut BatchHandle<'_, '_>,
) -> Result<Counts> {
    let work = handle.tx();
    while let Some(events) = handle.next_chunk().await? {
        for event in &events {
            work.batch_execute(SAVEPOINT).await.op("savepoint")?;
            match consumer.process_event(work, event).await {
                Ok(()) => work.batch_execute(RELEASE).await.op("release savepoint")?,
                Err(err) => {
                    work.batch_execute(ROLLBACK_TO)
                        .await
                        .op("rollback to savepoint")?;
                    let reason = error_text(&*err);
                    handle.retry_event(event, &reason).await?;
                }
            }
        }
    }
    Ok(handle.counts())
}

/// An error and its sources, joined by `: `.
pub(crate) fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;

    #[derive(Debug, thiserror::Error)]
    #[error("applying event")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_text_joins_sources() {
        let err: HandlerError = Box::new(Outer(std::io::Error::other("disk full")));
        assert_eq!(error_text(&*err), "applying event: disk full");
    }
}
