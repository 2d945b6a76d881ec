//! Moving a consumer that fell far behind forward (`pgq.register_consumer_at`), with a report
//! of what it skips.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Error, Result};
use crate::ident::{quote_ident, ConsumerName, QueueName};
use crate::ids::{BatchId, TickId};
use crate::queue::{queue_exists, register_consumer_at};

// language=SQL
const POSITION: &str = "\
SELECT s.sub_id, s.sub_last_tick, s.sub_batch, q.queue_id, q.queue_data_pfx,
       cur.tick_time, cur.tick_event_seq
  FROM pgq.subscription s
  JOIN pgq.queue q ON q.queue_id = s.sub_queue
  JOIN pgq.consumer co ON co.co_id = s.sub_consumer
  LEFT JOIN pgq.tick cur ON cur.tick_queue = s.sub_queue AND cur.tick_id = s.sub_last_tick
 WHERE q.queue_name = $1 AND co.co_name = $2
   FOR UPDATE OF s";

// language=SQL
const HEAD_TICK: &str = "\
SELECT tick_id, tick_time, tick_event_seq FROM pgq.tick
 WHERE tick_queue = $1
 ORDER BY tick_queue DESC, tick_id DESC LIMIT 1";

// language=SQL
const TICK: &str = "\
SELECT tick_id, tick_time, tick_event_seq FROM pgq.tick WHERE tick_queue = $1 AND tick_id = $2";

// language=SQL
const TICKS_BETWEEN: &str = "\
SELECT count(*) FROM pgq.tick WHERE tick_queue = $1 AND tick_id > $2 AND tick_id <= $3";

/// Where to move the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipTarget {
    /// To the queue's newest tick.
    Head,
    /// To this tick.
    Tick(TickId),
}

/// What a skip did, or would do with `dry_run`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SkipReport {
    /// The queue name.
    pub queue: String,
    /// The consumer name.
    pub consumer: String,
    /// Its position before.
    pub from_tick: TickId,
    /// When that tick was made.
    pub from_time: Option<DateTime<Utc>>,
    /// Its position after.
    pub to_tick: TickId,
    /// When that tick was made.
    pub to_time: DateTime<Utc>,
    /// Ticks skipped over: the batches it will never see.
    pub ticks_skipped: i64,
    /// Events skipped, by event sequence position (an upper bound: rolled-back inserts count).
    pub events_skipped: Option<i64>,
    /// Events skipped, counted row by row in the event tables (with `exact`).
    pub events_exact: Option<i64>,
    /// The batch it held, which the move drops.
    pub dropped_batch: Option<BatchId>,
    /// Whether the consumer was moved (`false` for a dry run).
    pub applied: bool,
}

/// Moves a consumer forward to `target`, skipping the events in between, and reports the tick
/// range and the number of events skipped. With `dry_run` only the report is made; with
/// `exact` the skipped events still present in the event tables are counted row by row (the
/// sequence count is always made).
///
/// Run it in a transaction: the consumer's subscription row is locked while the move is
/// planned, so the report matches what was done.
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::ConsumerNotRegistered`]; [`Error::TickNotFound`] for an
/// unknown target tick; [`Error::SkipNotForward`] when the target is not after the consumer's
/// position; [`Error::Db`] when a statement fails.
pub async fn skip_consumer(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    target: SkipTarget,
    dry_run: bool,
    exact: bool,
) -> Result<SkipReport> {
    const OP: &str = "skip";
    let position = client
        .query_typed_opt(
            POSITION,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op(OP)?;
    let Some(position) = position else {
        return Err(not_registered(client, queue, consumer).await?);
    };
    let sub_id: i32 = position.try_get(0).op(OP)?;
    let Some(from_tick) = position.try_get::<_, Option<i64>>(1).op(OP)? else {
        return Err(Error::ConsumerNotRegistered {
            queue: queue.to_string(),
            consumer: consumer.to_string(),
        });
    };
    let dropped_batch = position.try_get::<_, Option<i64>>(2).op(OP)?.map(BatchId);
    let queue_id: i32 = position.try_get(3).op(OP)?;
    let data_pfx: String = position.try_get(4).op(OP)?;
    let from_time: Option<DateTime<Utc>> = position.try_get(5).op(OP)?;
    let from_seq: Option<i64> = position.try_get(6).op(OP)?;

    let target_row = match target {
        SkipTarget::Head => client
            .query_typed_opt(HEAD_TICK, &[(&queue_id, Type::INT4)])
            .await
            .op(OP)?,
        SkipTarget::Tick(tick) => client
            .query_typed_opt(TICK, &[(&queue_id, Type::INT4), (&tick.0, Type::INT8)])
            .await
            .op(OP)?,
    };
    let Some(target_row) = target_row else {
        return Err(Error::TickNotFound {
            queue: queue.to_string(),
            tick: match target {
                SkipTarget::Tick(tick) => tick,
                SkipTarget::Head => TickId(from_tick),
            },
        });
    };
    let to_tick: i64 = target_row.try_get(0).op(OP)?;
    let to_time: DateTime<Utc> = target_row.try_get(1).op(OP)?;
    let to_seq: i64 = target_row.try_get(2).op(OP)?;
    if to_tick <= from_tick {
        return Err(Error::SkipNotForward {
            queue: queue.to_string(),
            consumer: consumer.to_string(),
            position: TickId(from_tick),
            target: TickId(to_tick),
        });
    }
    let ticks_skipped: i64 = client
        .query_typed_one(
            TICKS_BETWEEN,
            &[
                (&queue_id, Type::INT4),
                (&from_tick, Type::INT8),
                (&to_tick, Type::INT8),
            ],
        )
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)?;
    let events_exact = if exact {
        Some(count_events(client, &data_pfx, queue_id, from_tick, to_tick, sub_id).await?)
    } else {
        None
    };
    if !dry_run {
        register_consumer_at(client, queue, consumer, TickId(to_tick)).await?;
    }
    Ok(SkipReport {
        queue: queue.to_string(),
        consumer: consumer.to_string(),
        from_tick: TickId(from_tick),
        from_time,
        to_tick: TickId(to_tick),
        to_time,
        ticks_skipped,
        events_skipped: from_seq.map(|seq| to_seq - seq),
        events_exact,
        dropped_batch,
        applied: !dry_run,
    })
}

/// Counts the events a batch from `from_tick` to `to_tick` would hold for the subscription:
/// those whose transaction is visible in the newer snapshot and not in the older one (the
/// consumer's own retry events included).
async fn count_events(
    client: &impl GenericClient,
    data_pfx: &str,
    queue_id: i32,
    from_tick: i64,
    to_tick: i64,
    sub_id: i32,
) -> Result<i64> {
    let table = match data_pfx.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote_ident(schema), quote_ident(name)),
        None => quote_ident(data_pfx),
    };
    // language=SQL
    let sql = format!(
        "SELECT count(*) FROM {table} ev, pgq.tick a, pgq.tick b
          WHERE a.tick_queue = $1 AND a.tick_id = $2 AND b.tick_queue = $1 AND b.tick_id = $3
            AND ev.ev_txid >= pg_catalog.txid_snapshot_xmin(a.tick_snapshot)
            AND ev.ev_txid < pg_catalog.txid_snapshot_xmax(b.tick_snapshot)
            AND pg_catalog.txid_visible_in_snapshot(ev.ev_txid, b.tick_snapshot)
            AND NOT pg_catalog.txid_visible_in_snapshot(ev.ev_txid, a.tick_snapshot)
            AND (ev.ev_owner IS NULL OR ev.ev_owner = $4)"
    );
    client
        .query_typed_one(
            &sql,
            &[
                (&queue_id, Type::INT4),
                (&from_tick, Type::INT8),
                (&to_tick, Type::INT8),
                (&sub_id, Type::INT4),
            ],
        )
        .await
        .op("counting skipped events")?
        .try_get(0)
        .op("counting skipped events")
}

/// The error for a queue/consumer pair without a subscription.
async fn not_registered(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<Error> {
    Ok(if queue_exists(client, queue).await? {
        Error::ConsumerNotRegistered {
            queue: queue.to_string(),
            consumer: consumer.to_string(),
        }
    } else {
        Error::QueueNotFound {
            queue: queue.to_string(),
        }
    })
}
