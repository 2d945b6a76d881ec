//! Backlog diagnostics: the pgq-rs schema's own functions (`pgq.get_queue_backlog`,
//! `pgq.get_consumer_backlog`: how much is waiting for the ticker, and for each consumer), and
//! the operator's report per consumer after an outage ([`backlog_report`], which reads the
//! tick rows and works on the original extension too). All are counted from the event sequence
//! positions that ticks record, so they stay cheap on large queues. The original PGQ extension
//! does not have the two functions.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::TickId;
use crate::queue::{queue_exists, queue_not_found};

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

// language=SQL
const CONSUMER_BACKLOG_EXACT: &str = "\
SELECT queue_name, consumer_name, last_tick_id, ticked_events, unticked_events, retry_events,
       pending_events
  FROM pgq.get_consumer_backlog_exact($1, $2)";

// Works on the pgq-rs schema and on the original extension alike: positions come from the tick
// rows and the queue's event sequence.
// language=SQL
const BACKLOG_REPORT: &str = "\
SELECT q.queue_name, co.co_name, s.sub_last_tick, last.tick_time, top.tick_id, top.tick_time,
       (SELECT count(*) FROM pgq.tick t
         WHERE t.tick_queue = s.sub_queue AND t.tick_id > s.sub_last_tick),
       pgq.seq_getval(q.queue_event_seq) - last.tick_event_seq,
       pgq.seq_getval(q.queue_event_seq) - top.tick_event_seq,
       -- NULL where there is no batch cap (the original extension)
       (pg_catalog.to_jsonb(q) ->> 'queue_ticker_max_batch')::int4
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

/// The committed events one consumer will still receive, counted row by row
/// (`pgq.get_consumer_backlog_exact`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExactBacklog {
    /// `queue_name`.
    pub queue_name: String,
    /// `consumer_name`.
    pub consumer_name: String,
    /// `last_tick_id`: the consumer's position.
    pub last_tick_id: TickId,
    /// `ticked_events`: events up to the newest tick, in batches already cut.
    pub ticked_events: i64,
    /// `unticked_events`: committed events after the newest tick.
    pub unticked_events: i64,
    /// `retry_events`: the consumer's events waiting in the retry queue.
    pub retry_events: i64,
    /// `pending_events`: all three together.
    pub pending_events: i64,
}

/// The exact backlog of consumers, counted row by row through the event tables' indexes: the
/// committed events each will still receive, ticked or not, and its retry events (transactions
/// still running are not counted). `None` for the queue or the consumer means all of them. It
/// reads the whole backlog: for an operator, not for every metrics scrape ([`consumer_backlog`]
/// estimates from tick positions).
///
/// # Errors
///
/// [`Error::Db`](crate::Error::Db), e.g. when the schema lacks
/// `pgq.get_consumer_backlog_exact` (the original extension, or pgq-rs before version 6).
pub async fn consumer_backlog_exact(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
    consumer: Option<&ConsumerName>,
) -> Result<Vec<ExactBacklog>> {
    const OP: &str = "get_consumer_backlog_exact";
    let queue = queue.map(QueueName::as_str);
    let consumer = consumer.map(ConsumerName::as_str);
    let rows = client
        .query_typed(
            CONSUMER_BACKLOG_EXACT,
            &[(&queue, Type::TEXT), (&consumer, Type::TEXT)],
        )
        .await
        .op(OP)?;
    rows.iter()
        .map(|row| {
            Ok(ExactBacklog {
                queue_name: row.try_get(0).op(OP)?,
                consumer_name: row.try_get(1).op(OP)?,
                last_tick_id: TickId(row.try_get(2).op(OP)?),
                ticked_events: row.try_get(3).op(OP)?,
                unticked_events: row.try_get(4).op(OP)?,
                retry_events: row.try_get(5).op(OP)?,
                pending_events: row.try_get(6).op(OP)?,
            })
        })
        .collect()
}

/// What waits for one consumer. Event counts are event-sequence distances: they also count
/// ids taken by rolled-back inserts and by `pgq.force_tick`, so they are upper bounds.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BacklogReport {
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
    /// The queue's batch cap, `ticker_max_batch`; `None` where there is none (the original
    /// extension).
    pub ticker_max_batch: Option<i32>,
    /// About how many batches the consumer will take to catch up: the pending ticks, plus
    /// the events since the newest tick in batches of at most `ticker_max_batch` (in one batch
    /// without a cap).
    pub batches: i64,
}

/// The backlog of every consumer, or of one queue's consumers, for an operator after an
/// outage: how many events wait for each, how many of them the ticker has not cut yet, and how
/// many batches that makes. Works on the pgq-rs schema and on the original extension alike.
///
/// # Errors
///
/// [`Error::QueueNotFound`](crate::Error::QueueNotFound) for an unknown queue;
/// [`Error::Db`](crate::Error::Db) when the statement fails.
pub async fn backlog_report(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
) -> Result<Vec<BacklogReport>> {
    const OP: &str = "backlog";
    let name = queue.map(QueueName::as_str);
    let rows = client
        .query_typed(BACKLOG_REPORT, &[(&name, Type::TEXT)])
        .await
        .op(OP)?;
    if let (Some(queue), true) = (queue, rows.is_empty()) {
        if !queue_exists(client, queue).await? {
            return Err(queue_not_found(queue));
        }
    }
    rows.iter()
        .map(|row| {
            let unticked: Option<i64> = row.try_get(8).op(OP)?;
            let pending_ticks: i64 = row.try_get(6).op(OP)?;
            let cap: Option<i32> = row.try_get(9).op(OP)?;
            Ok(BacklogReport {
                queue: row.try_get(0).op(OP)?,
                consumer: row.try_get(1).op(OP)?,
                last_tick: TickId(row.try_get(2).op(OP)?),
                last_tick_time: row.try_get(3).op(OP)?,
                newest_tick: row.try_get::<_, Option<i64>>(4).op(OP)?.map(TickId),
                newest_tick_time: row.try_get(5).op(OP)?,
                pending_ticks,
                events_since_last_tick: row.try_get(7).op(OP)?,
                events_since_newest_tick: unticked,
                ticker_max_batch: cap,
                batches: pending_ticks + batches_for(unticked.unwrap_or(0), cap),
            })
        })
        .collect()
}

/// How many batches the ticker will cut `events` unticked events into: batches of at most
/// `cap`, or one without a cap.
fn batches_for(events: i64, cap: Option<i32>) -> i64 {
    match (events, cap) {
        (..=0, _) => 0,
        (_, Some(cap)) => {
            let cap = i64::from(cap.max(1));
            (events + cap - 1) / cap
        }
        (_, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_estimate() {
        assert_eq!(batches_for(0, Some(500)), 0);
        assert_eq!(batches_for(-3, Some(500)), 0);
        assert_eq!(batches_for(1, Some(500)), 1);
        assert_eq!(batches_for(500, Some(500)), 1);
        assert_eq!(batches_for(1001, Some(500)), 3);
        assert_eq!(batches_for(500_000, Some(10_000)), 50);
        assert_eq!(batches_for(500_000, None), 1);
        assert_eq!(batches_for(10, Some(0)), 10);
    }
}
