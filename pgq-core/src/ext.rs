//! Batch tracking in a target database (`pgq_ext`): a consumer whose work lands in another
//! database records there, in the work's transaction, the last batch it applied, so a batch is
//! applied once even when the process dies between that commit and `finish_batch` on the
//! queue's database (`pgq_ext.is_batch_done_for_update`, `pgq_ext.set_batch_done`).
//!
//! The tracking is keyed by the queue database's installation id
//! ([`installation_id`](crate::installation_id)), the queue and the consumer; never by the
//! server's `system_identifier`, which standbys and seeded copies share. Call both functions in
//! the target transaction that does the batch's work: the first one locks the key's row until
//! that transaction ends, so a second worker of the same consumer waits there.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Error, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::BatchId;
use crate::schema::InstallationId;

// language=SQL
const IS_BATCH_DONE_FOR_UPDATE: &str =
    "SELECT pgq_ext.is_batch_done_for_update($1::pg_catalog.uuid, $2, $3, $4)";

// language=SQL
const SET_BATCH_DONE: &str = "SELECT pgq_ext.set_batch_done($1::pg_catalog.uuid, $2, $3, $4)";

/// SQLSTATE of `pgq_ext.set_batch_done` for a batch at or below the last one recorded.
const DONE_ALREADY: &str = "PQX01";

/// Locks the tracking row of (`provider`, `queue`, `consumer`) until the end of the transaction,
/// making it when missing, and tells whether `batch` is done: at or below the last batch
/// recorded (`pgq_ext.is_batch_done_for_update`).
///
/// # Errors
///
/// [`Error::Db`] (SQLSTATE `PQX02` for a batch id below 1).
pub async fn is_batch_done_for_update(
    client: &impl GenericClient,
    provider: &InstallationId,
    queue: &QueueName,
    consumer: &ConsumerName,
    batch: BatchId,
) -> Result<bool> {
    const OP: &str = "pgq_ext.is_batch_done_for_update";
    client
        .query_typed_one(
            IS_BATCH_DONE_FOR_UPDATE,
            &[
                (&provider.as_str(), Type::TEXT),
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&batch.0, Type::INT8),
            ],
        )
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}

/// Records `batch` as the last one done for (`provider`, `queue`, `consumer`)
/// (`pgq_ext.set_batch_done`).
///
/// # Errors
///
/// [`Error::BatchAlreadyDone`] when that batch or a later one is recorded already (another
/// worker applied it: roll this work back); [`Error::Db`].
pub async fn set_batch_done(
    client: &impl GenericClient,
    provider: &InstallationId,
    queue: &QueueName,
    consumer: &ConsumerName,
    batch: BatchId,
) -> Result<()> {
    client
        .query_typed_one(
            SET_BATCH_DONE,
            &[
                (&provider.as_str(), Type::TEXT),
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&batch.0, Type::INT8),
            ],
        )
        .await
        .map_err(|source| match source.code() {
            Some(code) if code.code() == DONE_ALREADY => {
                Error::BatchAlreadyDone { batch_id: batch }
            }
            _ => Error::Db {
                op: "pgq_ext.set_batch_done",
                source,
            },
        })?;
    Ok(())
}
