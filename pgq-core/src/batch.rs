//! Batches: taking the next one (`pgq.next_batch_info`, `pgq.next_batch_custom`), reading its
//! events (`pgq.get_batch_cursor`, `pgq.get_batch_events`), handing events back for a retry
//! (`pgq.event_retry`, `pgq.batch_retry`) and finishing it (`pgq.finish_batch`).
//!
//! A consumer that finishes a batch in the same transaction as its work processes each batch
//! exactly once. As with the rest of the crate, PGQ functions are called only for rows that
//! exist (a registered consumer, an active batch), so an unknown queue, consumer or batch comes
//! back as its own error variant, inside a transaction too.
//!
//! These statements run in consumers' sessions, which keep the user's `search_path` (handlers
//! run their own SQL there): every function, type and operator in them is schema-qualified, so
//! nothing resolves to an object of a schema someone put first in that path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row, Transaction};

use crate::error::{DbContext, Error, Result};
use crate::ident::{quote_ident, ConsumerName, QueueName};
use crate::ids::{BatchId, EventId, TickId};
use crate::queue::{queue_exists, queue_not_found};

/// A statement that takes a batch with `$call`, a function of `sub.queue_name` and
/// `sub.co_name` with `pgq.next_batch_info`'s columns, for the subscription of ($1, $2) only:
/// no row means no such subscription.
macro_rules! next_batch_sql {
    ($call:literal) => {
        concat!(
            "\
WITH sub AS MATERIALIZED (
    SELECT q.queue_name, c.co_name
      FROM pgq.queue q
      JOIN pgq.subscription s ON s.sub_queue OPERATOR(pg_catalog.=) q.queue_id
      JOIN pgq.consumer c ON c.co_id OPERATOR(pg_catalog.=) s.sub_consumer
     WHERE q.queue_name OPERATOR(pg_catalog.=) $1 AND c.co_name OPERATOR(pg_catalog.=) $2)
SELECT f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time, f.prev_tick_time,
       f.cur_tick_event_seq, f.prev_tick_event_seq
  FROM sub CROSS JOIN LATERAL ",
            $call,
            " f"
        )
    };
}
pub(crate) use next_batch_sql;

// language=SQL
const NEXT_BATCH: &str = next_batch_sql!("pgq.next_batch_info(sub.queue_name, sub.co_name)");

// language=SQL
const NEXT_BATCH_CUSTOM: &str = next_batch_sql!(
    "pgq.next_batch_custom(sub.queue_name, sub.co_name, pg_catalog.make_interval(secs => $3), \
     $4, pg_catalog.make_interval(secs => $5))"
);

// language=SQL
const BATCH_INFO: &str = "\
SELECT queue_name, consumer_name, batch_start, batch_end, prev_tick_id, tick_id,
       (extract(epoch FROM lag) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8 AS lag,
       seq_start, seq_end
  FROM pgq.get_batch_info($1)";

// language=SQL
const OPEN_CURSOR: &str = "\
SELECT s.sub_batch, e.ev_id, e.ev_time, e.ev_txid, e.ev_retry, e.ev_type, e.ev_data,
       e.ev_extra1, e.ev_extra2, e.ev_extra3, e.ev_extra4
  FROM (SELECT $1::pg_catalog.int8) AS x(batch_id)
  LEFT JOIN pgq.subscription s ON s.sub_batch OPERATOR(pg_catalog.=) x.batch_id
  LEFT JOIN LATERAL (SELECT * FROM pgq.get_batch_cursor(s.sub_batch, $2, $3, NULL)
                      WHERE s.sub_batch IS NOT NULL) e ON true";

// language=SQL
const BATCH_EVENTS: &str = "\
SELECT s.sub_batch, e.ev_id, e.ev_time, e.ev_txid, e.ev_retry, e.ev_type, e.ev_data,
       e.ev_extra1, e.ev_extra2, e.ev_extra3, e.ev_extra4
  FROM (SELECT $1::pg_catalog.int8) AS x(batch_id)
  LEFT JOIN pgq.subscription s ON s.sub_batch OPERATOR(pg_catalog.=) x.batch_id
  LEFT JOIN LATERAL (SELECT * FROM pgq.get_batch_events(s.sub_batch)
                      WHERE s.sub_batch IS NOT NULL) e ON true
 ORDER BY e.ev_id";

// language=SQL
const EVENT_RETRY_AFTER: &str = "\
SELECT pgq.event_retry(s.sub_batch, $2,
                       current_timestamp OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3))
  FROM pgq.subscription s
 WHERE s.sub_batch OPERATOR(pg_catalog.=) $1";

// language=SQL
const EVENT_RETRY_AT: &str = "\
SELECT pgq.event_retry(s.sub_batch, $2, $3::pg_catalog.timestamptz)
  FROM pgq.subscription s
 WHERE s.sub_batch OPERATOR(pg_catalog.=) $1";

// language=SQL
const BATCH_RETRY: &str = "\
SELECT pgq.batch_retry(s.sub_batch, $2) FROM pgq.subscription s
 WHERE s.sub_batch OPERATOR(pg_catalog.=) $1";

// language=SQL
const FINISH_BATCH: &str = "SELECT pgq.finish_batch($1)";

/// A batch a consumer holds: the events between two ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The batch id, for reading, retrying and finishing.
    pub id: BatchId,
    /// The tick the batch ends at (the consumer's position after finishing it).
    pub cur_tick: TickId,
    /// The tick the batch starts after (the consumer's position now).
    pub prev_tick: TickId,
    /// When the end tick was made.
    pub cur_tick_time: DateTime<Utc>,
    /// When the start tick was made.
    pub prev_tick_time: DateTime<Utc>,
    /// The event sequence at the end tick. With `prev_tick_event_seq`, a hint of the batch's
    /// size, never a count: it cannot tell that a batch is empty.
    pub cur_tick_event_seq: i64,
    /// The event sequence at the start tick.
    pub prev_tick_event_seq: i64,
}

/// One event of a batch, as `pgq.get_batch_cursor` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `ev_id`: unique within the queue; the order events are read in.
    pub id: EventId,
    /// `ev_time`: when it was inserted (the producer's transaction time).
    pub time: DateTime<Utc>,
    /// `ev_txid`: the producer's transaction id.
    pub txid: i64,
    /// `ev_retry`: how many times it was handed back for a retry; `None` the first time.
    pub retry: Option<i32>,
    /// `ev_type`.
    pub ev_type: Option<String>,
    /// `ev_data`.
    pub ev_data: Option<String>,
    /// `ev_extra1`.
    pub extra1: Option<String>,
    /// `ev_extra2`.
    pub extra2: Option<String>,
    /// `ev_extra3`.
    pub extra3: Option<String>,
    /// `ev_extra4`.
    pub extra4: Option<String>,
}

/// An active batch as `pgq.get_batch_info` describes it. Field docs name the PGQ column.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchInfo {
    /// `queue_name`.
    pub queue_name: String,
    /// `consumer_name`.
    pub consumer_name: String,
    /// `batch_start`: time of the start tick.
    pub batch_start: DateTime<Utc>,
    /// `batch_end`: time of the end tick.
    pub batch_end: DateTime<Utc>,
    /// `prev_tick_id`: the start tick.
    pub prev_tick_id: TickId,
    /// `tick_id`: the end tick.
    pub tick_id: TickId,
    /// `lag`: age of the end tick.
    pub lag: TimeDelta,
    /// `seq_start`: the event sequence at the start tick.
    pub seq_start: i64,
    /// `seq_end`: the event sequence at the end tick.
    pub seq_end: i64,
}

/// Takes the consumer's next batch (`pgq.next_batch_info`): the batch it holds already, else
/// the events up to the next tick. `None` when there is no newer tick (wait for the ticker).
///
/// # Errors
///
/// [`Error::QueueNotFound`], [`Error::ConsumerNotRegistered`], or [`Error::Db`].
pub async fn next_batch(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<Option<Batch>> {
    take_batch(client, NEXT_BATCH, queue, consumer, &[], "next_batch_info").await
}

/// Like [`next_batch`], with PGQ's tuning (`pgq.next_batch_custom`): skip ticks until the
/// batch holds about `min_count` events or covers `min_interval`, and leave events younger than
/// `min_lag` for later. `None` turns a rule off.
///
/// # Errors
///
/// As for [`next_batch`].
pub async fn next_batch_custom(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    min_lag: Option<Duration>,
    min_count: Option<u32>,
    min_interval: Option<Duration>,
) -> Result<Option<Batch>> {
    let min_lag = min_lag.map(|d| d.as_secs_f64());
    let min_count = min_count.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let min_interval = min_interval.map(|d| d.as_secs_f64());
    let tuning: [(&(dyn ToSql + Sync), Type); 3] = [
        (&min_lag, Type::FLOAT8),
        (&min_count, Type::INT4),
        (&min_interval, Type::FLOAT8),
    ];
    take_batch(
        client,
        NEXT_BATCH_CUSTOM,
        queue,
        consumer,
        &tuning,
        "next_batch_custom",
    )
    .await
}

/// Runs `sql`, a `next_batch_info`-shaped query (of `pgq` or `pgq_coop`) guarded by the
/// subscription of (`queue`, `consumer`), its first parameters, then `more`. No row means no
/// subscription, and a read-only look-up tells which half is missing.
pub(crate) async fn take_batch(
    client: &impl GenericClient,
    sql: &str,
    queue: &QueueName,
    consumer: &ConsumerName,
    more: &[(&(dyn ToSql + Sync), Type)],
    op: &'static str,
) -> Result<Option<Batch>> {
    const OP: &str = "reading next_batch_info";
    let (queue_name, consumer_name) = (queue.as_str(), consumer.as_str());
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
        vec![(&queue_name, Type::TEXT), (&consumer_name, Type::TEXT)];
    params.extend_from_slice(more);
    let row = client.query_typed_opt(sql, &params).await.op(op)?;
    let Some(row) = row else {
        if queue_exists(client, queue).await? {
            return Err(Error::ConsumerNotRegistered {
                queue: queue.to_string(),
                consumer: consumer.to_string(),
            });
        }
        return Err(queue_not_found(queue));
    };
    let Some(id) = row.try_get::<_, Option<i64>>(0).op(OP)? else {
        return Ok(None);
    };
    Ok(Some(Batch {
        id: BatchId(id),
        cur_tick: TickId(row.try_get(1).op(OP)?),
        prev_tick: TickId(row.try_get(2).op(OP)?),
        cur_tick_time: row.try_get(3).op(OP)?,
        prev_tick_time: row.try_get(4).op(OP)?,
        cur_tick_event_seq: row.try_get(5).op(OP)?,
        prev_tick_event_seq: row.try_get(6).op(OP)?,
    }))
}

/// Describes an active batch (`pgq.get_batch_info`).
///
/// # Errors
///
/// [`Error::BatchNotFound`] when no consumer holds the batch; [`Error::Db`].
pub async fn batch_info(client: &impl GenericClient, batch_id: BatchId) -> Result<BatchInfo> {
    const OP: &str = "get_batch_info";
    let row = client
        .query_typed_one(BATCH_INFO, &[(&batch_id.0, Type::INT8)])
        .await
        .op(OP)?;
    let Some(queue_name) = row.try_get::<_, Option<String>>(0).op(OP)? else {
        return Err(Error::BatchNotFound { batch_id });
    };
    Ok(BatchInfo {
        queue_name,
        consumer_name: row.try_get(1).op(OP)?,
        batch_start: row.try_get(2).op(OP)?,
        batch_end: row.try_get(3).op(OP)?,
        prev_tick_id: TickId(row.try_get(4).op(OP)?),
        tick_id: TickId(row.try_get(5).op(OP)?),
        lag: TimeDelta::microseconds(row.try_get(6).op(OP)?),
        seq_start: row.try_get(7).op(OP)?,
        seq_end: row.try_get(8).op(OP)?,
    })
}

/// Reads a batch's events in `ev_id` order through a server-side cursor, `chunk_size` events
/// per round trip, so memory stays bounded whatever the batch size.
///
/// The cursor lives in the transaction it was opened in: pass the same transaction to every
/// [`next_chunk`](Self::next_chunk) call and finish reading before it ends. Each chunk is read
/// completely, so other statements may run on the transaction between chunks. Dropping the
/// cursor before the end is fine: the transaction's end closes it.
///
/// ```no_run
/// # async fn f(tx: &pgq_core::tokio_postgres::Transaction<'_>, batch: pgq_core::BatchId)
/// # -> pgq_core::Result<()> {
/// let mut cursor = pgq_core::EventCursor::open(tx, batch, 1000).await?;
/// while let Some(events) = cursor.next_chunk(tx).await? {
///     for event in events {
///         println!("{} {:?}", event.id, event.ev_data);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct EventCursor {
    batch_id: BatchId,
    chunk: usize,
    fetch: String,
    close: String,
    first: Option<Vec<Event>>,
    state: CursorState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CursorState {
    /// More rows may follow.
    Open,
    /// The server has no more rows; the cursor still needs a CLOSE.
    Drained,
    /// Closed.
    Closed,
}

/// Tells cursors of one process apart (two cursors may read one batch in one transaction).
static CURSOR_SEQ: AtomicU64 = AtomicU64::new(0);

impl EventCursor {
    /// Opens a cursor over the batch's events (`pgq.get_batch_cursor`), fetching the first
    /// chunk in the same round trip. A `chunk_size` of 0 counts as 1.
    ///
    /// # Errors
    ///
    /// [`Error::BatchNotFound`] when no consumer holds the batch; [`Error::Db`].
    pub async fn open(
        tx: &Transaction<'_>,
        batch_id: BatchId,
        chunk_size: u32,
    ) -> Result<EventCursor> {
        let chunk = i32::try_from(chunk_size.max(1)).unwrap_or(i32::MAX);
        let name = format!(
            "pgq_rs_batch_{}_{}",
            batch_id,
            CURSOR_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let rows = tx
            .query_typed(
                OPEN_CURSOR,
                &[
                    (&batch_id.0, Type::INT8),
                    (&name, Type::TEXT),
                    (&chunk, Type::INT4),
                ],
            )
            .await
            .op("get_batch_cursor")?;
        let first = guarded_events(&rows, batch_id, "reading get_batch_cursor")?;
        let quoted = quote_ident(&name);
        let wanted = usize::try_from(chunk).unwrap_or(usize::MAX);
        let state = if first.len() < wanted {
            CursorState::Drained
        } else {
            CursorState::Open
        };
        Ok(EventCursor {
            batch_id,
            chunk: wanted,
            fetch: format!("FETCH {chunk} FROM {quoted}"),
            close: format!("CLOSE {quoted}"),
            first: Some(first),
            state,
        })
    }

    /// The batch being read.
    pub fn batch_id(&self) -> BatchId {
        self.batch_id
    }

    /// The next chunk of events, in `ev_id` order; never empty. `None` once every event was
    /// returned; the cursor is closed then.
    ///
    /// # Errors
    ///
    /// [`Error::Db`], e.g. when `tx` is not the transaction the cursor was opened in.
    pub async fn next_chunk(&mut self, tx: &Transaction<'_>) -> Result<Option<Vec<Event>>> {
        if let Some(first) = self.first.take() {
            if !first.is_empty() {
                return Ok(Some(first));
            }
        }
        if self.state == CursorState::Open {
            let rows = tx
                .query_typed(&self.fetch, &[])
                .await
                .op("fetching batch events")?;
            let events = rows
                .iter()
                .map(|row| event_from(row, 0))
                .collect::<Result<Vec<_>>>()?;
            if events.len() < self.chunk {
                self.state = CursorState::Drained;
            }
            if !events.is_empty() {
                return Ok(Some(events));
            }
        }
        if self.state == CursorState::Drained {
            tx.batch_execute(&self.close)
                .await
                .op("closing the batch cursor")?;
            self.state = CursorState::Closed;
        }
        Ok(None)
    }
}

/// All events of a batch in `ev_id` order, in one `Vec` (`pgq.get_batch_events`). This loads
/// the whole batch into memory: meant for batches known to be small; use [`EventCursor`]
/// otherwise.
///
/// # Errors
///
/// [`Error::BatchNotFound`] when no consumer holds the batch; [`Error::Db`].
pub async fn batch_events(client: &impl GenericClient, batch_id: BatchId) -> Result<Vec<Event>> {
    let rows = client
        .query_typed(BATCH_EVENTS, &[(&batch_id.0, Type::INT8)])
        .await
        .op("get_batch_events")?;
    guarded_events(&rows, batch_id, "reading get_batch_events")
}

/// Hands one event of the batch back, to be delivered again to this consumer after `delay`
/// (`pgq.event_retry`). Returns `false` when the event was already handed back.
///
/// # Errors
///
/// [`Error::BatchNotFound`] when no consumer holds the batch; [`Error::Db`], e.g. PGQ's
/// exception when the event is not in the batch.
pub async fn event_retry(
    client: &impl GenericClient,
    batch_id: BatchId,
    event_id: EventId,
    delay: Duration,
) -> Result<bool> {
    let row = client
        .query_typed_opt(
            EVENT_RETRY_AFTER,
            &[
                (&batch_id.0, Type::INT8),
                (&event_id.0, Type::INT8),
                (&delay.as_secs_f64(), Type::FLOAT8),
            ],
        )
        .await
        .op("event_retry")?
        .ok_or(Error::BatchNotFound { batch_id })?;
    Ok(row.try_get::<_, Option<i32>>(0).op("event_retry")? == Some(1))
}

/// Like [`event_retry`], delivering the event again at `at`.
///
/// # Errors
///
/// As for [`event_retry`].
pub async fn event_retry_at(
    client: &impl GenericClient,
    batch_id: BatchId,
    event_id: EventId,
    at: DateTime<Utc>,
) -> Result<bool> {
    let row = client
        .query_typed_opt(
            EVENT_RETRY_AT,
            &[
                (&batch_id.0, Type::INT8),
                (&event_id.0, Type::INT8),
                (&at, Type::TIMESTAMPTZ),
            ],
        )
        .await
        .op("event_retry")?
        .ok_or(Error::BatchNotFound { batch_id })?;
    Ok(row.try_get::<_, Option<i32>>(0).op("event_retry")? == Some(1))
}

/// Hands every event of the batch back for delivery after `delay`, rounded up to whole seconds
/// (`pgq.batch_retry` takes seconds). Returns how many events were handed back (events handed
/// back before are skipped).
///
/// # Errors
///
/// [`Error::BatchNotFound`] when no consumer holds the batch; [`Error::Db`].
pub async fn batch_retry(
    client: &impl GenericClient,
    batch_id: BatchId,
    delay: Duration,
) -> Result<u64> {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
    let row = client
        .query_typed_opt(
            BATCH_RETRY,
            &[(&batch_id.0, Type::INT8), (&seconds, Type::INT4)],
        )
        .await
        .op("batch_retry")?
        .ok_or(Error::BatchNotFound { batch_id })?;
    let count: Option<i32> = row.try_get(0).op("batch_retry")?;
    Ok(count.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// Finishes the batch (`pgq.finish_batch`): the consumer's position moves to the batch's end
/// tick. Commit it in the transaction that did the batch's work.
///
/// # Errors
///
/// [`Error::BatchNotFound`] when the batch is unknown or finished already; [`Error::Db`].
pub async fn finish_batch(client: &impl GenericClient, batch_id: BatchId) -> Result<()> {
    let row = client
        .query_typed_one(FINISH_BATCH, &[(&batch_id.0, Type::INT8)])
        .await
        .op("finish_batch")?;
    if row.try_get::<_, Option<i32>>(0).op("finish_batch")? == Some(1) {
        Ok(())
    } else {
        Err(Error::BatchNotFound { batch_id })
    }
}

/// Events from rows of a guarded batch query: column 0 is the batch's `sub_batch` (NULL when no
/// consumer holds it), the event columns follow (NULL on the one row of an empty batch).
fn guarded_events(rows: &[Row], batch_id: BatchId, op: &'static str) -> Result<Vec<Event>> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if row.try_get::<_, Option<i64>>(0).op(op)?.is_none() {
            return Err(Error::BatchNotFound { batch_id });
        }
        if row.try_get::<_, Option<i64>>(1).op(op)?.is_some() {
            events.push(event_from(row, 1)?);
        }
    }
    Ok(events)
}

/// An event from the ten event columns starting at `at`.
fn event_from(row: &Row, at: usize) -> Result<Event> {
    const OP: &str = "reading batch events";
    Ok(Event {
        id: EventId(row.try_get(at).op(OP)?),
        time: row.try_get(at + 1).op(OP)?,
        txid: row.try_get(at + 2).op(OP)?,
        retry: row.try_get(at + 3).op(OP)?,
        ev_type: row.try_get(at + 4).op(OP)?,
        ev_data: row.try_get(at + 5).op(OP)?,
        extra1: row.try_get(at + 6).op(OP)?,
        extra2: row.try_get(at + 7).op(OP)?,
        extra3: row.try_get(at + 8).op(OP)?,
        extra4: row.try_get(at + 9).op(OP)?,
    })
}
