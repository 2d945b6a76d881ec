//! Cooperative consumers (`pgq_coop`): sub-consumers of one group, each taking the group's next
//! batch for itself (`pgq_coop.register_subconsumer`, `next_batch_custom_info`, `finish_batch`,
//! `unregister_subconsumer`).
//!
//! A sub-consumer is named `group.subconsumer` in `pgq.consumer`. Taking a batch locks the
//! group's row and moves the group's position, so it commits on its own; the work and
//! [`finish_batch`] then go in one transaction, which first takes [`lock_batch`]: a sibling's
//! takeover of a silent sub-consumer's batch skips locked rows, so a batch in work is never
//! taken over. Like the rest of the crate, these statements call `pgq_coop` only for a queue
//! (and group) that exists, so the unknown ones come back as their own error variants, and
//! every function, type and operator in them is schema-qualified (consumer sessions keep the
//! user's `search_path`).

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use crate::batch::{next_batch_sql, take_batch, Batch};
use crate::error::{DbContext, Error, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::BatchId;
use crate::queue::queue_not_found;

// language=SQL
const REGISTER: &str = "\
SELECT pgq_coop.register_subconsumer(q.queue_name, $2, $3) FROM pgq.queue q
 WHERE q.queue_name OPERATOR(pg_catalog.=) $1";

// language=SQL
const UNREGISTER: &str = "SELECT pgq_coop.unregister_subconsumer($1, $2, $3, $4)";

// No row: an unknown queue or group.
// language=SQL
const NEXT_BATCH: &str = next_batch_sql!(
    "pgq_coop.next_batch_custom_info(sub.queue_name, sub.co_name, $3, NULL, NULL, NULL, \
     pg_catalog.make_interval(secs => $4))"
);

// language=SQL
const LOCK_BATCH: &str = "\
SELECT 1
  FROM pgq.subscription s
  JOIN pgq.consumer c ON c.co_id OPERATOR(pg_catalog.=) s.sub_consumer
  JOIN pgq.queue q ON q.queue_id OPERATOR(pg_catalog.=) s.sub_queue
 WHERE q.queue_name OPERATOR(pg_catalog.=) $1 AND c.co_name OPERATOR(pg_catalog.=) $2
   AND s.sub_batch OPERATOR(pg_catalog.=) $3
   FOR UPDATE OF s";

// language=SQL
const FINISH_BATCH: &str = "SELECT pgq_coop.finish_batch($1)";

/// SQLSTATE of `pgq_coop.finish_batch` for a batch a sibling took over.
const TAKEN_OVER: &str = "PQS06";

/// SQLSTATE of `pgq_coop.unregister_subconsumer` for a sub-consumer that holds a batch.
const HAS_BATCH: &str = "PQS05";

/// What [`unregister_subconsumer`] does with the sub-consumer's open batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenBatch {
    /// Refuse: [`Error::SubconsumerHasBatch`], and the sub-consumer stays (PGQ's `0`).
    Refuse,
    /// Hand its events back to the group through the retry queue, due now (PGQ's `1`).
    Retry,
}

/// The `pgq.consumer` name of a sub-consumer.
fn full_name(consumer: &ConsumerName, subconsumer: &ConsumerName) -> String {
    format!("{consumer}.{subconsumer}")
}

/// Registers `subconsumer` in the group `consumer` on the queue, registering the group first
/// when needed (`pgq_coop.register_subconsumer`). Returns `true` for a new registration.
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`].
pub async fn register_subconsumer(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    subconsumer: &ConsumerName,
) -> Result<bool> {
    const OP: &str = "pgq_coop.register_subconsumer";
    let row = client
        .query_typed_opt(
            REGISTER,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&subconsumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op(OP)?
        .ok_or_else(|| queue_not_found(queue))?;
    Ok(row.try_get::<_, i32>(0).op(OP)? == 1)
}

/// Unregisters a sub-consumer (`pgq_coop.unregister_subconsumer`); `open` says what becomes of
/// a batch it holds. Returns `false` when it was not registered.
///
/// # Errors
///
/// [`Error::SubconsumerHasBatch`] with [`OpenBatch::Refuse`] when it holds a batch;
/// [`Error::Db`].
pub async fn unregister_subconsumer(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    subconsumer: &ConsumerName,
    open: OpenBatch,
) -> Result<bool> {
    const OP: &str = "pgq_coop.unregister_subconsumer";
    let handling = i32::from(open == OpenBatch::Retry);
    let row = client
        .query_typed_one(
            UNREGISTER,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&subconsumer.as_str(), Type::TEXT),
                (&handling, Type::INT4),
            ],
        )
        .await
        .map_err(|source| match source.code() {
            Some(code) if code.code() == HAS_BATCH => Error::SubconsumerHasBatch {
                queue: queue.to_string(),
                subconsumer: full_name(consumer, subconsumer),
            },
            _ => Error::Db { op: OP, source },
        })?;
    Ok(row.try_get::<_, i32>(0).op(OP)? == 1)
}

/// Takes the group's next batch for `subconsumer` (`pgq_coop.next_batch_custom_info`),
/// registering the sub-consumer when needed: the batch it holds already, else with
/// `dead_interval` the open batch of a sibling silent for that long (under a new id), else the
/// group's next batch. `None` when there is nothing to do. It commits on its own: call it
/// outside the transaction that works the batch.
///
/// # Errors
///
/// [`Error::QueueNotFound`], [`Error::ConsumerNotRegistered`] for an unknown group, or
/// [`Error::Db`].
pub async fn next_batch(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    subconsumer: &ConsumerName,
    dead_interval: Option<Duration>,
) -> Result<Option<Batch>> {
    let dead = dead_interval.map(|d| d.as_secs_f64());
    let sub = subconsumer.as_str();
    let more: [(&(dyn ToSql + Sync), Type); 2] = [(&sub, Type::TEXT), (&dead, Type::FLOAT8)];
    take_batch(
        client,
        NEXT_BATCH,
        queue,
        consumer,
        &more,
        "pgq_coop.next_batch",
    )
    .await
}

/// Locks the sub-consumer's subscription row for the rest of the transaction, if it still holds
/// `batch`: take it before working the batch, so that no sibling takes the batch over.
///
/// # Errors
///
/// [`Error::BatchTakenOver`] when the sub-consumer no longer holds the batch; [`Error::Db`].
pub async fn lock_batch(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    subconsumer: &ConsumerName,
    batch: BatchId,
) -> Result<()> {
    let name = full_name(consumer, subconsumer);
    client
        .query_typed_opt(
            LOCK_BATCH,
            &[
                (&queue.as_str(), Type::TEXT),
                (&name, Type::TEXT),
                (&batch.0, Type::INT8),
            ],
        )
        .await
        .op("locking the subconsumer")?
        .map(|_| ())
        .ok_or(Error::BatchTakenOver { batch_id: batch })
}

/// Finishes a sub-consumer's batch (`pgq_coop.finish_batch`): the sub-consumer goes idle (the
/// group's position moved when the batch was taken). Commit it with the batch's work.
///
/// # Errors
///
/// [`Error::BatchTakenOver`] when a sibling took the batch over; [`Error::BatchNotFound`] when
/// no sub-consumer holds it; [`Error::Db`].
pub async fn finish_batch(client: &impl GenericClient, batch: BatchId) -> Result<()> {
    const OP: &str = "pgq_coop.finish_batch";
    let row = client
        .query_typed_one(FINISH_BATCH, &[(&batch.0, Type::INT8)])
        .await
        .map_err(|source| match source.code() {
            Some(code) if code.code() == TAKEN_OVER => Error::BatchTakenOver { batch_id: batch },
            _ => Error::Db { op: OP, source },
        })?;
    if row.try_get::<_, Option<i32>>(0).op(OP)? == Some(1) {
        Ok(())
    } else {
        Err(Error::BatchNotFound { batch_id: batch })
    }
}
