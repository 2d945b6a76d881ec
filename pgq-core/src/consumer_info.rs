//! What consumers are doing (`pgq.get_consumer_info`), and whether one is registered.

use chrono::TimeDelta;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::{BatchId, TickId};

// language=SQL
const CONSUMER_INFO: &str = "\
SELECT queue_name, consumer_name,
       (extract(epoch FROM lag) * 1000000)::int8,
       (extract(epoch FROM last_seen) * 1000000)::int8,
       last_tick, current_batch, next_tick, pending_events
  FROM pgq.get_consumer_info($1, $2)";

// It runs in consumers' sessions, which keep the user's search_path: operators are qualified.
// language=SQL
const IS_REGISTERED: &str = "\
SELECT EXISTS (SELECT 1
                 FROM pgq.queue q
                 JOIN pgq.subscription s ON s.sub_queue OPERATOR(pg_catalog.=) q.queue_id
                 JOIN pgq.consumer c ON c.co_id OPERATOR(pg_catalog.=) s.sub_consumer
                WHERE q.queue_name OPERATOR(pg_catalog.=) $1 AND c.co_name OPERATOR(pg_catalog.=) $2)";

/// A consumer's registration on a queue, as `pgq.get_consumer_info` describes it. Field docs
/// name the PGQ column.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// `queue_name`.
    pub queue_name: String,
    /// `consumer_name`.
    pub consumer_name: String,
    /// `lag`: age of the consumer's position (the last tick it finished); `None` when that
    /// tick is gone.
    pub lag: Option<TimeDelta>,
    /// `last_seen`: time since the consumer last took or finished a batch.
    pub last_seen: Option<TimeDelta>,
    /// `last_tick`: the consumer's position.
    pub last_tick: Option<TickId>,
    /// `current_batch`: the batch it holds, if any.
    pub current_batch: Option<BatchId>,
    /// `next_tick`: the end tick of the batch it holds.
    pub next_tick: Option<TickId>,
    /// `pending_events`: events between its position and the newest tick (an estimate from
    /// the event sequence).
    pub pending_events: Option<i64>,
}

/// Describes consumers, ordered by queue and consumer name (`pgq.get_consumer_info`): `None`
/// for the queue or the consumer means all of them. Unknown names give an empty list.
///
/// # Errors
///
/// [`Error::Db`](crate::Error::Db) when the statement fails.
pub async fn consumer_info(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
    consumer: Option<&ConsumerName>,
) -> Result<Vec<ConsumerInfo>> {
    const OP: &str = "get_consumer_info";
    let queue = queue.map(QueueName::as_str);
    let consumer = consumer.map(ConsumerName::as_str);
    let rows = client
        .query_typed(
            CONSUMER_INFO,
            &[(&queue, Type::TEXT), (&consumer, Type::TEXT)],
        )
        .await
        .op(OP)?;
    rows.iter()
        .map(|row| {
            Ok(ConsumerInfo {
                queue_name: row.try_get(0).op(OP)?,
                consumer_name: row.try_get(1).op(OP)?,
                lag: row
                    .try_get::<_, Option<i64>>(2)
                    .op(OP)?
                    .map(TimeDelta::microseconds),
                last_seen: row
                    .try_get::<_, Option<i64>>(3)
                    .op(OP)?
                    .map(TimeDelta::microseconds),
                last_tick: row.try_get::<_, Option<i64>>(4).op(OP)?.map(TickId),
                current_batch: row.try_get::<_, Option<i64>>(5).op(OP)?.map(BatchId),
                next_tick: row.try_get::<_, Option<i64>>(6).op(OP)?.map(TickId),
                pending_events: row.try_get(7).op(OP)?,
            })
        })
        .collect()
}

/// Whether the consumer is registered on the queue (an unknown queue has none).
///
/// # Errors
///
/// [`Error::Db`](crate::Error::Db) when the statement fails.
pub async fn consumer_registered(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<bool> {
    const OP: &str = "checking the registration";
    client
        .query_typed_one(
            IS_REGISTERED,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}
