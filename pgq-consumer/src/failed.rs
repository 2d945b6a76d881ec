//! The failed events an operator deals with: list, count, requeue, delete
//! (`pgq.failed_event_*`, the pgq line's version 3).

use chrono::{DateTime, Utc};
use pgq_core::tokio_postgres::types::Type;
use pgq_core::tokio_postgres::GenericClient;
use pgq_core::{ConsumerName, Event, EventId, QueueName};

use crate::error::{DbContext, Result};

// language=SQL
const LIST: &str = "\
SELECT ev_failed_reason, ev_failed_time, ev_id, ev_time, ev_txid, ev_retry, ev_type, ev_data,
       ev_extra1, ev_extra2, ev_extra3, ev_extra4
  FROM pgq.failed_event_list($1, $2)";

// language=SQL
const COUNT: &str = "SELECT pgq.failed_event_count($1, $2)";

// language=SQL
const DELETE: &str = "SELECT pgq.failed_event_delete($1, $2, $3)";

// language=SQL
const REQUEUE: &str = "SELECT pgq.failed_event_retry($1, $2, $3)";

/// An event a consumer gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedEvent {
    /// Why it failed (the handler's error text).
    pub reason: String,
    /// When it failed.
    pub failed_at: DateTime<Utc>,
    /// The event as it was last delivered.
    pub event: Event,
}

/// The consumer's failed events, oldest failure first.
///
/// # Errors
///
/// [`crate::ConsumerError::Db`] when the statement fails: SQLSTATE `PQF01` for an unknown queue
/// or consumer, `42883` (undefined function) where the failed events are not installed.
pub async fn failed_events(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<Vec<FailedEvent>> {
    const OP: &str = "failed_event_list";
    let rows = client
        .query_typed(
            LIST,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op(OP)?;
    rows.iter()
        .map(|row| {
            Ok(FailedEvent {
                reason: row.try_get(0).op(OP)?,
                failed_at: row.try_get(1).op(OP)?,
                event: Event {
                    id: EventId(row.try_get(2).op(OP)?),
                    time: row.try_get(3).op(OP)?,
                    txid: row.try_get::<_, Option<i64>>(4).op(OP)?.unwrap_or(0),
                    retry: row.try_get(5).op(OP)?,
                    ev_type: row.try_get(6).op(OP)?,
                    ev_data: row.try_get(7).op(OP)?,
                    extra1: row.try_get(8).op(OP)?,
                    extra2: row.try_get(9).op(OP)?,
                    extra3: row.try_get(10).op(OP)?,
                    extra4: row.try_get(11).op(OP)?,
                },
            })
        })
        .collect()
}

/// How many failed events the consumer has.
///
/// # Errors
///
/// As for [`failed_events`].
pub async fn failed_event_count(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<u64> {
    let row = client
        .query_typed_one(
            COUNT,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op("failed_event_count")?;
    let n: i32 = row.try_get(0).op("failed_event_count")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Requeues a failed event: it goes to the retry queue, due now, with a fresh retry count, and
/// the next maintenance run delivers it to the consumer again. `false` when there is no such
/// failed event.
///
/// # Errors
///
/// As for [`failed_events`].
pub async fn requeue_failed_event(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    event: EventId,
) -> Result<bool> {
    one(
        client,
        REQUEUE,
        queue,
        consumer,
        event,
        "failed_event_retry",
    )
    .await
}

/// Deletes a failed event. `false` when there is no such failed event.
///
/// # Errors
///
/// As for [`failed_events`].
pub async fn delete_failed_event(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    event: EventId,
) -> Result<bool> {
    one(
        client,
        DELETE,
        queue,
        consumer,
        event,
        "failed_event_delete",
    )
    .await
}

async fn one(
    client: &impl GenericClient,
    sql: &str,
    queue: &QueueName,
    consumer: &ConsumerName,
    event: EventId,
    op: &'static str,
) -> Result<bool> {
    let row = client
        .query_typed_one(
            sql,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&event.0, Type::INT8),
            ],
        )
        .await
        .op(op)?;
    Ok(row.try_get::<_, Option<i32>>(0).op(op)? == Some(1))
}
