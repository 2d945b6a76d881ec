//! JSON events both ways: [`TypedProducer`] serializes a serde value into `ev_data`, and a
//! [`TypedConsumer`] (run in [`Typed`]) gets it back decoded.

use std::marker::PhantomData;

use async_trait::async_trait;
use pgq_core::tokio_postgres::{GenericClient, Transaction};
use pgq_core::{Event, EventId, NewEvent, QueueName};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::BatchHandle;
use crate::consumer::Consumer;
use crate::error::{ConsumerError, HandlerError, Result};

/// Inserts events whose `ev_data` is a [`Serialize`] value in JSON (serde_json), for a
/// [`TypedConsumer`] with the same payload type to read. Pass the client or the transaction
/// the events belong to, as for [`pgq_core::insert_event`].
///
/// ```no_run
/// # async fn f(tx: &pgq_core::tokio_postgres::Transaction<'_>) -> Result<(), Box<dyn std::error::Error>> {
/// use pgq_consumer::TypedProducer;
///
/// #[derive(serde::Serialize)]
/// struct Order {
///     amount: i64,
/// }
///
/// let orders = TypedProducer::<Order>::new(pgq_core::QueueName::new("orders")?, "order.created");
/// orders.insert_event(tx, &Order { amount: 5 }).await?;
/// orders.insert_events(tx, &[Order { amount: 1 }, Order { amount: 2 }]).await?;
/// # Ok(())
/// # }
/// ```
pub struct TypedProducer<T> {
    queue: QueueName,
    ev_type: String,
    payload: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for TypedProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedProducer")
            .field("queue", &self.queue)
            .field("ev_type", &self.ev_type)
            .finish()
    }
}

impl<T: Serialize> TypedProducer<T> {
    /// A producer of events of type `ev_type` into `queue`.
    pub fn new(queue: QueueName, ev_type: impl Into<String>) -> Self {
        TypedProducer {
            queue,
            ev_type: ev_type.into(),
            payload: PhantomData,
        }
    }

    /// Inserts one event with `payload` as its `ev_data` (`pgq.insert_event`) and returns its
    /// id.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Encode`] when the payload does not serialize (nothing is inserted);
    /// [`ConsumerError::Core`] as for [`pgq_core::insert_event`].
    pub async fn insert_event(&self, client: &impl GenericClient, payload: &T) -> Result<EventId> {
        let event = self.event(0, payload)?;
        Ok(pgq_core::insert_event_ext(client, &self.queue, &event).await?)
    }

    /// Inserts one event per payload in one statement (`pgq.insert_event_bulk` where the schema
    /// has it) and returns their ids in the order given. Every payload is serialized first.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Encode`] naming the first payload that does not serialize (nothing is
    /// inserted); [`ConsumerError::Core`] as for [`pgq_core::insert_events`].
    pub async fn insert_events(
        &self,
        client: &impl GenericClient,
        payloads: &[T],
    ) -> Result<Vec<EventId>> {
        let events = payloads
            .iter()
            .enumerate()
            .map(|(index, payload)| self.event(index, payload))
            .collect::<Result<Vec<_>>>()?;
        Ok(pgq_core::insert_events(client, &self.queue, &events).await?)
    }

    fn event(&self, index: usize, payload: &T) -> Result<NewEvent> {
        let data = serde_json::to_string(payload).map_err(|source| ConsumerError::Encode {
            queue: self.queue.to_string(),
            ev_type: self.ev_type.clone(),
            index,
            source,
        })?;
        Ok(NewEvent::new(self.ev_type.as_str(), data))
    }
}

/// A consumer of JSON events: `ev_data` is decoded into [`TypedConsumer::Payload`] with
/// serde_json. Run it wrapped in [`Typed`]; [`TypedProducer`] writes such events.
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
