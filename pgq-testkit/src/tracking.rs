//! What remote consumers recorded in a target database.

use crate::dsn::pg_error;
use crate::TestkitError;

/// A row of `pgq_ext.batch_tracking`: provider id, queue, consumer, last batch done.
pub type Tracked = (String, String, String, Option<i64>);

/// Every row of `pgq_ext.batch_tracking` on `client`'s database, in key order.
///
/// # Errors
///
/// [`TestkitError::Postgres`] when the table cannot be read.
pub async fn batch_tracking(client: &tokio_postgres::Client) -> Result<Vec<Tracked>, TestkitError> {
    Ok(client
        .query(
            "SELECT provider_id::text, queue_name, consumer_name, last_batch_id
               FROM pgq_ext.batch_tracking ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading pgq_ext.batch_tracking", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}
