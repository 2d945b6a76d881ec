//! Backlog diagnostics of the pgq-rs schema (`pgq.get_queue_backlog`,
//! `pgq.get_consumer_backlog`): how much is waiting for the ticker, and for each consumer. Both
//! are counted from the event sequence positions that ticks record, so they stay cheap on large
//! queues. The original PGQ extension does not have these functions.

use chrono::{DateTime, TimeDelta, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::TickId;

// language=SQL
const QUEUE_BACKLOG: &str = "\
SELECT queue_name, newest_tick_id, newest_tick_time,
       (extract(epoch FROM tick_age) * 1000000)::int8, events_since_tick
  FROM pgq.get_queue_backlog($1)";

// language=SQL
const CONSUMER_BACKLOG: &str = "\
SELECT queue_name, consumer_name, last_tick_id, last_tick_time,
       (extract(epoch FROM lag) * 1000000)::int8, pending_ticks, pending_events
  FROM pgq.get_consumer_backlog($1, $2)";

/// What waits for the ticker on one queue (`pgq.get_queue_backlog`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueBacklog {
    /// `queue_name`.
    pub queue_name: String,
    /// `newest_tick_id`; `None` when the queue has no tick.
    pub newest_tick_id: Option<TickId>,
    /// `newest_tick_time`.
    pub newest_tick_time: Option<DateTime<Utc>>,
    /// `tick_age`: time since the newest tick (how long the ticker has been behind).
    pub tick_age: Option<TimeDelta>,
    /// `events_since_tick`: events inserted after the newest tick.
    pub events_since_tick: Option<i64>,
}

/// What waits for one consumer (`pgq.get_consumer_backlog`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerBacklog {
    /// `queue_name`.
    pub queue_name: String,
    /// `consumer_name`.
    pub consumer_name: String,
    /// `last_tick_id`: the consumer's position.
    pub last_tick_id: Option<TickId>,
    /// `last_tick_time`: when that tick was made.
    pub last_tick_time: Option<DateTime<Utc>>,
    /// `lag`: age of the consumer's position.
    pub lag: Option<TimeDelta>,
    /// `pending_ticks`: ticks after the consumer's position (batches it could take).
    pub pending_ticks: Option<i64>,
    /// `pending_events`: events between its position and the newest tick.
    pub pending_events: Option<i64>,
}

/// The ticker backlog of one queue, or of all queues with `None`.
///
/// # Errors
///
/// [`Error::Db`](crate::Error::Db), e.g. when the schema lacks `pgq.get_queue_backlog`.
pub async fn queue_backlog(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
) -> Result<Vec<QueueBacklog>> {
    const OP: &str = "get_queue_backlog";
    let queue = queue.map(QueueName::as_str);
    let rows = client
        .query_typed(QUEUE_BACKLOG, &[(&queue, Type::TEXT)])
        .await
        .op(OP)?;
    rows.iter()
        .map(|row| {
            Ok(QueueBacklog {
                queue_name: row.try_get(0).op(OP)?,
                newest_tick_id: row.try_get::<_, Option<i64>>(1).op(OP)?.map(TickId),
                newest_tick_time: row.try_get(2).op(OP)?,
                tick_age: row
                    .try_get::<_, Option<i64>>(3)
                    .op(OP)?
                    .map(TimeDelta::microseconds),
                events_since_tick: row.try_get(4).op(OP)?,
            })
        })
        .collect()
}

/// The backlog of consumers: `None` for the queue or the consumer means all of them.
///
/// # Errors
///
/// [`Error::Db`](crate::Error::Db), e.g. when the schema lacks `pgq.get_consumer_backlog`.
pub async fn consumer_backlog(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
    consumer: Option<&ConsumerName>,
) -> Result<Vec<ConsumerBacklog>> {
    const OP: &str = "get_consumer_backlog";
    let queue = queue.map(QueueName::as_str);
    let consumer = consumer.map(ConsumerName::as_str);
    let rows = client
        .query_typed(
            CONSUMER_BACKLOG,
            &[(&queue, Type::TEXT), (&consumer, Type::TEXT)],
        )
        .await
        .op(OP)?;
    rows.iter()
        .map(|row| {
            Ok(ConsumerBacklog {
                queue_name: row.try_get(0).op(OP)?,
                consumer_name: row.try_get(1).op(OP)?,
                last_tick_id: row.try_get::<_, Option<i64>>(2).op(OP)?.map(TickId),
                last_tick_time: row.try_get(3).op(OP)?,
                lag: row
                    .try_get::<_, Option<i64>>(4)
                    .op(OP)?
                    .map(TimeDelta::microseconds),
                pending_ticks: row.try_get(5).op(OP)?,
                pending_events: row.try_get(6).op(OP)?,
            })
        })
        .collect()
}
