//! Failed events (the pgq-rs `pgq` line's version 3): an event a consumer gave up on, moved out
//! of its batch with the reason (`pgq.event_failed`), for an operator to list, count, requeue
//! or delete (`pgq.failed_event_list`, `_count`, `_retry`, `_delete`).
//!
//! The original `pgq` extension has none of these: [`is_installed`] tells. Where they are
//! missing, the statements fail with SQLSTATE `42883` (undefined function) as [`Error::Db`].

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

use crate::batch::Event;
use crate::error::{DbContext, Error, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::{BatchId, EventId};

// language=SQL
const IS_INSTALLED: &str =
    "SELECT pg_catalog.to_regprocedure('pgq.event_failed(bigint,bigint,pg_catalog.text)') \
     IS NOT NULL";

// language=SQL
const EVENT_FAILED: &str = "SELECT pgq.event_failed($1, $2, $3)";

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

/// SQLSTATE of `pgq.event_failed` for a batch no consumer holds.
const NO_BATCH: &str = "PQB01";

/// SQLSTATE of the `failed_event_*` functions for an unknown queue or consumer.
const NOT_REGISTERED: &str = "PQF01";

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

/// Whether the failed events are installed (the `pgq` line's version 3 of the pgq-rs schema).
///
/// # Errors
///
/// [`Error::Db`].
pub async fn is_installed(client: &impl GenericClient) -> Result<bool> {
    const OP: &str = "probing pgq.event_failed";
    client
        .query_typed_one(IS_INSTALLED, &[])
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}

/// Moves one event of the batch to the failed events with `reason` (`pgq.event_failed`), for
/// the consumer holding the batch. Returns `false` when it is there already.
///
/// # Errors
///
/// [`Error::BatchNotFound`] when no consumer holds the batch; [`Error::Db`] (SQLSTATE `PQE01`
/// when the event is not in the batch).
pub async fn event_failed(
    client: &impl GenericClient,
    batch: BatchId,
    event: EventId,
    reason: &str,
) -> Result<bool> {
    const OP: &str = "pgq.event_failed";
    let row = client
        .query_typed_one(
            EVENT_FAILED,
            &[
                (&batch.0, Type::INT8),
                (&event.0, Type::INT8),
                (&reason, Type::TEXT),
            ],
        )
        .await
        .map_err(|source| match source.code() {
            Some(code) if code.code() == NO_BATCH => Error::BatchNotFound { batch_id: batch },
            _ => Error::Db { op: OP, source },
        })?;
    Ok(row.try_get::<_, Option<i32>>(0).op(OP)? == Some(1))
}

/// The consumer's failed events, oldest failure first (`pgq.failed_event_list`).
///
/// # Errors
///
/// [`Error::ConsumerNotRegistered`] for an unknown queue or consumer; [`Error::Db`].
pub async fn failed_events(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<Vec<FailedEvent>> {
    const OP: &str = "pgq.failed_event_list";
    let rows = call(client, LIST, queue, consumer, None, OP).await?;
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

/// How many failed events the consumer has (`pgq.failed_event_count`).
///
/// # Errors
///
/// As for [`failed_events`].
pub async fn failed_event_count(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<u64> {
    const OP: &str = "pgq.failed_event_count";
    let rows = call(client, COUNT, queue, consumer, None, OP).await?;
    Ok(u64::try_from(answer(&rows, OP)?.unwrap_or(0)).unwrap_or(0))
}

/// Requeues a failed event (`pgq.failed_event_retry`): it goes to the retry queue, due now,
/// with a fresh retry count, and the next maintenance run delivers it to the consumer again.
/// `false` when there is no such failed event.
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
    const OP: &str = "pgq.failed_event_retry";
    let rows = call(client, REQUEUE, queue, consumer, Some(event), OP).await?;
    Ok(answer(&rows, OP)? == Some(1))
}

/// Deletes a failed event (`pgq.failed_event_delete`). `false` when there is no such failed
/// event.
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
    const OP: &str = "pgq.failed_event_delete";
    let rows = call(client, DELETE, queue, consumer, Some(event), OP).await?;
    Ok(answer(&rows, OP)? == Some(1))
}

/// Runs a `failed_event_*` statement with (queue, consumer[, event]) as its parameters; an
/// unknown queue or consumer (SQLSTATE `PQF01`) becomes [`Error::ConsumerNotRegistered`].
async fn call(
    client: &impl GenericClient,
    sql: &str,
    queue: &QueueName,
    consumer: &ConsumerName,
    event: Option<EventId>,
    op: &'static str,
) -> Result<Vec<Row>> {
    let (queue_name, consumer_name, event) =
        (queue.as_str(), consumer.as_str(), event.map(|e| e.0));
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
        vec![(&queue_name, Type::TEXT), (&consumer_name, Type::TEXT)];
    if let Some(event) = &event {
        params.push((event, Type::INT8));
    }
    client
        .query_typed(sql, &params)
        .await
        .map_err(|source| match source.code() {
            Some(code) if code.code() == NOT_REGISTERED => Error::ConsumerNotRegistered {
                queue: queue.to_string(),
                consumer: consumer.to_string(),
            },
            _ => Error::Db { op, source },
        })
}

/// The integer a function call answered.
fn answer(rows: &[Row], op: &'static str) -> Result<Option<i32>> {
    rows.first()
        .map(|row| row.try_get::<_, Option<i32>>(0))
        .transpose()
        .op(op)
        .map(Option::flatten)
}
