//! The trait users implement: [`Consumer`] (its typed variant is beside the typed producer).

use async_trait::async_trait;
use pgq_core::tokio_postgres::{self, Transaction};
use pgq_core::Event;

use crate::batch::BatchHandle;
use crate::error::HandlerError;

/// What a consumer does with its batches. Implemented with [`macro@async_trait`] (re-exported by
/// this crate), so a runner can hold it as `Arc<dyn Consumer>`.
///
/// # Delivery contract
///
/// The runner opens a transaction on the queue's database, takes the next batch, hands it to
/// [`process_batch`](Consumer::process_batch) and then finishes the batch in the same
/// transaction, committing only when the batch was closed. Work done through
/// [`BatchHandle::tx`] therefore commits exactly once per batch, together with the consumer's
/// new position; when the handler fails, or the process dies, all of it rolls back and the
/// batch comes again. A remote consumer hands a transaction on the target database instead and
/// records the batch there (`pgq_ext`), with the same effect.
///
/// Events are never skipped silently: when `process_batch` returns before reading all
/// events, the runner calls it again with the rest, and refuses to finish (rolls back) when a
/// call reads nothing.
///
/// A connection lost while the handler runs (a server restart, a terminated backend, a dead
/// peer) is not a failure of the batch, whatever the handler returns then: the batch rolls
/// back, the runner reconnects and the batch comes again, counting towards nothing.
///
/// After [`ConsumerConfig::batch_failures_before_per_event`](crate::ConsumerConfig) failures
/// of one batch, the runner processes that batch event by event with
/// [`process_event`](Consumer::process_event), each in a savepoint: an event that fails is
/// handed back for a retry (or, after
/// [`ConsumerConfig::max_event_retries`](crate::ConsumerConfig), moved to the failed events)
/// and the rest of the batch proceeds.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Processes one batch. The default reads every event and calls
    /// [`process_event`](Consumer::process_event) for each; an error fails the whole batch.
    ///
    /// # Errors
    ///
    /// Any error rolls the batch back; it is retried with backoff.
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            for event in &events {
                self.process_event(batch.tx(), event).await?;
            }
        }
        Ok(())
    }

    /// With [`ConsumerConfig::catch_up_events`](crate::ConsumerConfig), asked in the work
    /// transaction (the target's, for a remote consumer) just before each batch is taken:
    /// whether this batch may span several ticks. A consumer whose batches must stop at a tick
    /// someone else picks can lock and read that choice here; the lock holds until the batch
    /// commits. The default allows it.
    ///
    /// # Errors
    ///
    /// A failed statement; the runner rolls back and tries again later.
    async fn may_span_ticks(&self, _work: &Transaction<'_>) -> Result<bool, tokio_postgres::Error> {
        Ok(true)
    }

    /// Processes one event in `tx` (the batch's work transaction).
    ///
    /// # Errors
    ///
    /// In batch mode an error fails the batch; in per-event mode it hands the event back for
    /// a retry.
    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError>;
}
