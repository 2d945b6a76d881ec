//! The backlog per consumer, for the operator after an outage: how many events wait for it, how
//! many of them the ticker has not cut yet, and how many batches that makes.

use chrono::{DateTime, Utc};
use pgq_core::{QueueName, TickId};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{QueryContext as _, Result};

// Works on the pgq-rs schema and on the original extension alike: positions come from the tick
// rows and the queue's event sequence.
// language=SQL
const BACKLOG: &str = "\
SELECT q.queue_name, co.co_name, s.sub_last_tick, last.tick_time, top.tick_id, top.tick_time,
       (SELECT count(*) FROM pgq.tick t
         WHERE t.tick_queue = s.sub_queue AND t.tick_id > s.sub_last_tick),
       pgq.seq_getval(q.queue_event_seq) - last.tick_event_seq,
       pgq.seq_getval(q.queue_event_seq) - top.tick_event_seq,
       q.queue_ticker_max_count,
       pg_catalog.to_regprocedure('pgq.catchup_ticker()') IS NOT NULL
  FROM pgq.subscription s
  JOIN pgq.queue q ON q.queue_id = s.sub_queue
  JOIN pgq.consumer co ON co.co_id = s.sub_consumer
  LEFT JOIN pgq.tick last ON last.tick_queue = s.sub_queue AND last.tick_id = s.sub_last_tick
  LEFT JOIN LATERAL (
        SELECT t.tick_id, t.tick_time, t.tick_event_seq FROM pgq.tick t
         WHERE t.tick_queue = q.queue_id
         ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
 WHERE ($1::text IS NULL OR q.queue_name = $1) AND s.sub_last_tick IS NOT NULL
 ORDER BY q.queue_name, co.co_name";

// language=SQL
const QUEUE_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pgq.queue WHERE queue_name = $1)";

/// What waits for one consumer. Event counts are event-sequence distances: they also count
/// ids taken by rolled-back inserts and by `pgq.force_tick`, so they are upper bounds.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Backlog {
    /// The queue name.
    pub queue: String,
    /// The consumer name.
    pub consumer: String,
    /// The tick it last finished (its position).
    pub last_tick: TickId,
    /// When that tick was made.
    pub last_tick_time: Option<DateTime<Utc>>,
    /// The queue's newest tick.
    pub newest_tick: Option<TickId>,
    /// When that tick was made.
    pub newest_tick_time: Option<DateTime<Utc>>,
    /// Ticks after its position: batches ready to be taken now.
    pub pending_ticks: i64,
    /// Events inserted since its last finished tick: everything that waits for it.
    pub events_since_last_tick: Option<i64>,
    /// Events inserted since the newest tick: the part the ticker has not cut into batches
    /// yet.
    pub events_since_newest_tick: Option<i64>,
    /// The queue's `ticker_max_count`.
    pub ticker_max_count: i32,
    /// Whether the database cuts a large backlog into catch-up ticks (`pgq.catchup_ticker()`).
    pub catchup: bool,
    /// About how many batches the consumer will take to catch up: the pending ticks, plus
    /// the events since the newest tick in batches of `ticker_max_count` when catch-up ticks
    /// will cut them (more than twice `ticker_max_count` waiting behind a newest tick older than
    /// `ticker_max_lag`: an outage), else in one batch.
    pub batches: i64,
}

/// The backlog of every consumer, or of one queue's consumers.
///
/// # Errors
///
/// [`TickerError::Core`](crate::TickerError::Core) with
/// [`QueueNotFound`](pgq_core::Error::QueueNotFound) for an unknown queue;
/// [`TickerError::Db`](crate::TickerError::Db) when the statement fails.
pub async fn backlog(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
) -> Result<Vec<Backlog>> {
    const OP: &str = "backlog";
    let name = queue.map(QueueName::as_str);
    let rows = client
        .query_typed(BACKLOG, &[(&name, Type::TEXT)])
        .await
        .query_op(OP)?;
    if let (Some(queue), true) = (queue, rows.is_empty()) {
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
            let unticked: Option<i64> = row.try_get(8).query_op(OP)?;
            let pending_ticks: i64 = row.try_get(6).query_op(OP)?;
            let max_count: i32 = row.try_get(9).query_op(OP)?;
            let catchup: bool = row.try_get(10).query_op(OP)?;
            Ok(Backlog {
                queue: row.try_get(0).query_op(OP)?,
                consumer: row.try_get(1).query_op(OP)?,
                last_tick: TickId(row.try_get(2).query_op(OP)?),
                last_tick_time: row.try_get(3).query_op(OP)?,
                newest_tick: row.try_get::<_, Option<i64>>(4).query_op(OP)?.map(TickId),
                newest_tick_time: row.try_get(5).query_op(OP)?,
                pending_ticks,
                events_since_last_tick: row.try_get(7).query_op(OP)?,
                events_since_newest_tick: unticked,
                ticker_max_count: max_count,
                catchup,
                batches: pending_ticks + batches_for(unticked.unwrap_or(0), max_count, catchup),
            })
        })
        .collect()
}

/// How many batches the ticker will cut `events` untick events into.
fn batches_for(events: i64, max_count: i32, catchup: bool) -> i64 {
    let max = i64::from(max_count.max(1));
    if events <= 0 {
        0
    } else if catchup && events > 2 * max {
        (events + max - 1) / max
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_estimate() {
        assert_eq!(batches_for(0, 500, true), 0);
        assert_eq!(batches_for(-3, 500, true), 0);
        assert_eq!(batches_for(1, 500, true), 1);
        assert_eq!(batches_for(1000, 500, true), 1);
        assert_eq!(batches_for(1001, 500, true), 3);
        assert_eq!(batches_for(500_000, 500, true), 1000);
        assert_eq!(batches_for(500_000, 500, false), 1);
        assert_eq!(batches_for(10, 0, true), 10);
    }
}
