//! The traits users implement: [`Consumer`] and its typed variant [`TypedConsumer`].

use async_trait::async_trait;
use pgq_core::tokio_postgres::Transaction;
use pgq_core::Event;
use serde::de::DeserializeOwned;

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

    /// Processes one event in `tx` (the batch's work transaction).
    ///
    /// # Errors
    ///
    /// In batch mode an error fails the batch; in per-event mode it hands the event back for
    /// a retry.
    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError>;
}

/// A consumer of JSON events: `ev_data` is decoded into [`TypedConsumer::Payload`] with
/// serde_json. Run it wrapped in [`Typed`].
#[async_trait]
pub trait TypedConsumer: Send + Sync {
    /// The decoded `ev_data`.
    type Payload: DeserializeOwned + Send;

    /// Processes one decoded event in `tx`.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::process_event`].
    async fn process(
        &self,
        tx: &Transaction<'_>,
        event: &Event,
        payload: Self::Payload,
    ) -> Result<(), HandlerError>;
}

/// Runs a [`TypedConsumer`] as a [`Consumer`]. An event whose `ev_data` does not decode goes
/// to the failed events with the decode error (retried instead where the failed events table
/// is missing), and the rest of the batch proceeds.
#[derive(Debug, Clone, Default)]
pub struct Typed<C>(pub C);

/// Decodes an event's `ev_data`.
fn decode<T: DeserializeOwned>(event: &Event) -> Result<T, HandlerError> {
    let data = event
        .ev_data
        .as_deref()
        .ok_or_else(|| HandlerError::from("ev_data is NULL"))?;
    serde_json::from_str(data).map_err(|err| HandlerError::from(format!("decoding ev_data: {err}")))
}

#[async_trait]
impl<C: TypedConsumer> Consumer for Typed<C> {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            for event in &events {
                match decode::<C::Payload>(event) {
                    Ok(payload) => self.0.process(batch.tx(), event, payload).await?,
                    Err(err) => {
                        batch.fail_event(event, &err.to_string()).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        let payload = decode::<C::Payload>(event)?;
        self.0.process(tx, event, payload).await
    }
}
