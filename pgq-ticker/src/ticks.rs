//! A queue's recent ticks.

use chrono::{DateTime, Utc};
use pgq_core::{QueueName, TickId};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{QueryContext as _, Result};

// One tick more than asked for, so that the oldest shown has a predecessor to count from.
// language=SQL
const RECENT_TICKS: &str = "\
SELECT t.tick_id, t.tick_time, t.tick_event_seq,
       t.tick_event_seq - lag(t.tick_event_seq) OVER (ORDER BY t.tick_id),
       t.tick_snapshot::text
  FROM (SELECT tk.tick_id, tk.tick_time, tk.tick_event_seq, tk.tick_snapshot
          FROM pgq.tick tk JOIN pgq.queue q ON q.queue_id = tk.tick_queue
         WHERE q.queue_name = $1
         ORDER BY tk.tick_queue DESC, tk.tick_id DESC
         LIMIT $2 + 1) t
 ORDER BY t.tick_id DESC
 LIMIT $2";

// language=SQL
const QUEUE_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pgq.queue WHERE queue_name = $1)";

/// One tick.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TickInfo {
    /// The tick id.
    pub tick_id: TickId,
    /// When it was made (for a catch-up tick: the time of the newest event before the cut).
    pub tick_time: DateTime<Utc>,
    /// The event sequence position it records.
    pub event_seq: i64,
    /// Events since the previous tick, by sequence position (the batch it ends holds at
    /// most this many); `None` for the oldest tick kept.
    pub events: Option<i64>,
    /// Its snapshot, `xmin:xmax:xip,...`.
    pub snapshot: String,
}

/// The newest `limit` ticks of a queue, newest first.
///
/// # Errors
///
/// [`TickerError::Core`](crate::TickerError::Core) with
/// [`QueueNotFound`](pgq_core::Error::QueueNotFound) for an unknown queue, or a database error.
pub async fn recent_ticks(
    client: &impl GenericClient,
    queue: &QueueName,
    limit: u32,
) -> Result<Vec<TickInfo>> {
    const OP: &str = "listing ticks";
    let limit = i64::from(limit);
    let rows = client
        .query_typed(
            RECENT_TICKS,
            &[(&queue.as_str(), Type::TEXT), (&limit, Type::INT8)],
        )
        .await
        .query_op(OP)?;
    if rows.is_empty() {
        let exists: bool = client
            .query_typed_one(QUEUE_EXISTS, &[(&queue.as_str(), Type::TEXT)])
            .await
            .query_op(OP)?
            .try_get(0)
            .query_op(OP)?;
        if !exists {
            return Err(pgq_core::Error::QueueNotFound {
                queue: queue.to_string(),
            }
            .into());
        }
    }
    rows.iter()
        .map(|row| {
            Ok(TickInfo {
                tick_id: TickId(row.try_get(0).query_op(OP)?),
                tick_time: row.try_get(1).query_op(OP)?,
                event_seq: row.try_get(2).query_op(OP)?,
                events: row.try_get(3).query_op(OP)?,
                snapshot: row.try_get(4).query_op(OP)?,
            })
        })
        .collect()
}
