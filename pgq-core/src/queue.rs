//! Queue administration (`pgq.create_queue`, `pgq.drop_queue`, `pgq.set_queue_config`,
//! `pgq.get_queue_info`, `pgq.ticker`, `pgq.force_tick`, a queue's recent ticks) and consumer
//! registration (`pgq.register_consumer[_at]`, `pgq.unregister_consumer`).
//!
//! PGQ reports an unknown queue with a plain exception whose SQLSTATE says nothing. So that the
//! error can be told apart without reading messages, each statement here calls the PGQ function
//! only for a queue row that exists in `pgq.queue` (one round trip, also correct inside a
//! transaction): no row means [`Error::QueueNotFound`].

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{DbContext, Error, Result};
use crate::ident::{ConsumerName, QueueName};
use crate::ids::TickId;

// language=SQL
const CREATE_QUEUE: &str = "SELECT pgq.create_queue($1)";

// language=SQL
const DROP_QUEUE: &str =
    "SELECT pgq.drop_queue(q.queue_name, $2) FROM pgq.queue q WHERE q.queue_name = $1";

// language=SQL
const SET_QUEUE_CONFIG: &str =
    "SELECT pgq.set_queue_config(q.queue_name, $2, $3) FROM pgq.queue q WHERE q.queue_name = $1";

// language=SQL
const SET_DISABLE_INSERT: &str =
    "UPDATE pgq.queue SET queue_disable_insert = $2 WHERE queue_name = $1";

// language=SQL
const SET_PER_TX_LIMIT: &str = "UPDATE pgq.queue SET queue_per_tx_limit = $2 WHERE queue_name = $1";

// language=SQL
const QUEUE_INFO: &str = "\
SELECT i.queue_name, i.queue_ntables, i.queue_cur_table,
       (extract(epoch FROM i.queue_rotation_period) * 1000000)::int8,
       i.queue_switch_time, i.queue_external_ticker, i.queue_ticker_paused,
       i.queue_ticker_max_count,
       (extract(epoch FROM i.queue_ticker_max_lag) * 1000000)::int8,
       (extract(epoch FROM i.queue_ticker_idle_period) * 1000000)::int8,
       (extract(epoch FROM i.ticker_lag) * 1000000)::int8,
       i.ev_per_sec, i.ev_new, i.last_tick_id,
       -- NULL where there is no batch cap (the original extension)
       (pg_catalog.to_jsonb(q) ->> 'queue_ticker_max_batch')::int4
  FROM pgq.get_queue_info($1) i
  LEFT JOIN pgq.queue q ON q.queue_name = i.queue_name
 ORDER BY i.queue_name";

// language=SQL
const TICKER: &str = "SELECT pgq.ticker(q.queue_name) FROM pgq.queue q WHERE q.queue_name = $1";

// language=SQL
const TICKER_ALL: &str = "SELECT pgq.ticker()";

// language=SQL
const FORCE_TICK: &str =
    "SELECT pgq.force_tick(q.queue_name) FROM pgq.queue q WHERE q.queue_name = $1";

// This, REGISTER_CONSUMER_AT, IS_REGISTERED and QUEUE_EXISTS run in consumers' sessions, which
// keep the user's search_path: their operators are qualified like their functions.
// language=SQL
const REGISTER_CONSUMER: &str = "\
SELECT pgq.register_consumer(q.queue_name, $2) FROM pgq.queue q
 WHERE q.queue_name OPERATOR(pg_catalog.=) $1";

// language=SQL
const REGISTER_CONSUMER_AT: &str = "\
SELECT pgq.register_consumer_at(q.queue_name, $2, $3) FROM pgq.queue q
 WHERE q.queue_name OPERATOR(pg_catalog.=) $1";

// language=SQL
const UNREGISTER_CONSUMER: &str =
    "SELECT pgq.unregister_consumer(q.queue_name, $2) FROM pgq.queue q WHERE q.queue_name = $1";

// language=SQL
const IS_REGISTERED: &str = "\
SELECT EXISTS (SELECT 1
                 FROM pgq.queue q
                 JOIN pgq.subscription s ON s.sub_queue OPERATOR(pg_catalog.=) q.queue_id
                 JOIN pgq.consumer c ON c.co_id OPERATOR(pg_catalog.=) s.sub_consumer
                WHERE q.queue_name OPERATOR(pg_catalog.=) $1 AND c.co_name OPERATOR(pg_catalog.=) $2)";

// language=SQL
const QUEUE_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM pgq.queue WHERE queue_name OPERATOR(pg_catalog.=) $1)";

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

/// Creates a queue (`pgq.create_queue`): its sequences, its rotated event tables and its first
/// tick.
///
/// # Errors
///
/// [`Error::QueueExists`] when the name is taken; [`Error::Db`] when the statement fails.
pub async fn create_queue(client: &impl GenericClient, queue: &QueueName) -> Result<()> {
    let row = client
        .query_typed_one(CREATE_QUEUE, &[(&queue.as_str(), Type::TEXT)])
        .await
        .op("create_queue")?;
    if row.try_get::<_, Option<i32>>(0).op("create_queue")? == Some(1) {
        Ok(())
    } else {
        Err(Error::QueueExists {
            queue: queue.to_string(),
        })
    }
}

/// Drops a queue with its event tables and ticks (`pgq.drop_queue`). With `force`, registered
/// consumers are unregistered first; without it, a queue that still has consumers is kept and
/// PGQ's exception comes back as [`Error::Db`].
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`] when the statement fails.
pub async fn drop_queue(client: &impl GenericClient, queue: &QueueName, force: bool) -> Result<()> {
    client
        .query_typed_opt(
            DROP_QUEUE,
            &[(&queue.as_str(), Type::TEXT), (&force, Type::BOOL)],
        )
        .await
        .op("drop_queue")?
        .map(drop)
        .ok_or_else(|| queue_not_found(queue))
}

/// One queue setting, with the value to give it.
///
/// All go through `pgq.set_queue_config` under PGQ's parameter names (`ticker_max_count`,
/// `ticker_max_lag`, ...), which needs the `pgq_admin` role. The original extension's function
/// refuses the last two, so there they update `pgq.queue` directly (`queue_disable_insert`,
/// `queue_per_tx_limit`), which its `pgq_admin` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueSetting {
    /// Tick after this many new events, even when `TickerMaxLag` has not passed.
    TickerMaxCount(i32),
    /// Tick at least this often while there are new events.
    TickerMaxLag(Duration),
    /// Tick at least this often when there are no new events.
    TickerIdlePeriod(Duration),
    /// Stop the ticker for this queue.
    TickerPaused(bool),
    /// How often the event tables are rotated.
    RotationPeriod(Duration),
    /// Ticks come from outside (`pgq.ticker` with 4 arguments), not from the ticker.
    ExternalTicker(bool),
    /// Refuse `insert_event` (except for sessions with `session_replication_role = replica`).
    DisableInsert(bool),
    /// At most this many events per transaction; `None` for no limit.
    PerTxLimit(Option<i32>),
    /// At most this many events per batch, plus the transactions straddling a cut, whatever
    /// the gap between ticks (`queue_ticker_max_batch`; the pgq-rs schema only).
    TickerMaxBatch(i32),
}

/// Changes one setting of a queue.
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`] when the statement fails.
pub async fn set_queue_config(
    client: &impl GenericClient,
    queue: &QueueName,
    setting: QueueSetting,
) -> Result<()> {
    let name = queue.as_str();
    let changed = match setting {
        QueueSetting::TickerMaxCount(n) => {
            set_config(client, name, "ticker_max_count", Some(n.to_string())).await?
        }
        QueueSetting::TickerMaxLag(d) => {
            set_config(client, name, "ticker_max_lag", Some(interval_text(d))).await?
        }
        QueueSetting::TickerIdlePeriod(d) => {
            set_config(client, name, "ticker_idle_period", Some(interval_text(d))).await?
        }
        QueueSetting::TickerPaused(b) => {
            set_config(client, name, "ticker_paused", Some(b.to_string())).await?
        }
        QueueSetting::RotationPeriod(d) => {
            set_config(client, name, "rotation_period", Some(interval_text(d))).await?
        }
        QueueSetting::ExternalTicker(b) => {
            set_config(client, name, "external_ticker", Some(b.to_string())).await?
        }
        QueueSetting::TickerMaxBatch(n) => {
            set_config(client, name, "ticker_max_batch", Some(n.to_string())).await?
        }
        // Ours takes these through set_queue_config (pgq_admin may not write pgq.queue); the
        // extension's set_queue_config refuses them, and its pgq_admin writes the row.
        QueueSetting::DisableInsert(disabled) if ours(client).await? => {
            set_config(client, name, "disable_insert", Some(disabled.to_string())).await?
        }
        QueueSetting::DisableInsert(disabled) => client
            .execute_typed(
                SET_DISABLE_INSERT,
                &[(&name, Type::TEXT), (&disabled, Type::BOOL)],
            )
            .await
            .op("set_queue_config")?,
        QueueSetting::PerTxLimit(limit) if ours(client).await? => {
            set_config(client, name, "per_tx_limit", limit.map(|n| n.to_string())).await?
        }
        QueueSetting::PerTxLimit(limit) => client
            .execute_typed(
                SET_PER_TX_LIMIT,
                &[(&name, Type::TEXT), (&limit, Type::INT4)],
            )
            .await
            .op("set_queue_config")?,
    };
    if changed == 0 {
        return Err(queue_not_found(queue));
    }
    Ok(())
}

/// Whether the database has the pgq-rs schema (not the original extension).
async fn ours(client: &impl GenericClient) -> Result<bool> {
    Ok(crate::schema::flavor(client).await? == crate::schema::Flavor::Ours)
}

/// `pgq.set_queue_config` with PGQ's parameter name; returns 0 when the queue does not exist.
async fn set_config(
    client: &impl GenericClient,
    queue: &str,
    param: &str,
    value: Option<String>,
) -> Result<u64> {
    client
        .execute_typed(
            SET_QUEUE_CONFIG,
            &[
                (&queue, Type::TEXT),
                (&param, Type::TEXT),
                (&value, Type::TEXT),
            ],
        )
        .await
        .op("set_queue_config")
}

/// An interval literal with microsecond precision, e.g. `1.500000 seconds`.
fn interval_text(d: Duration) -> String {
    format!("{}.{:06} seconds", d.as_secs(), d.subsec_micros())
}

/// A queue as `pgq.get_queue_info` describes it. Field docs name the PGQ column.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// `queue_name`.
    pub name: String,
    /// `queue_ntables`: how many event tables are rotated.
    pub ntables: i32,
    /// `queue_cur_table`: the event table inserts go to now.
    pub cur_table: i32,
    /// `queue_rotation_period`.
    pub rotation_period: Duration,
    /// `queue_switch_time`: when the tables were last rotated.
    pub switch_time: DateTime<Utc>,
    /// `queue_external_ticker`.
    pub external_ticker: bool,
    /// `queue_ticker_paused`.
    pub ticker_paused: bool,
    /// `queue_ticker_max_count`.
    pub ticker_max_count: i32,
    /// `queue_ticker_max_lag`.
    pub ticker_max_lag: Duration,
    /// `queue_ticker_idle_period`.
    pub ticker_idle_period: Duration,
    /// `ticker_lag`: age of the newest tick (negative when it was made after this transaction
    /// started); `None` without ticks.
    pub ticker_lag: Option<TimeDelta>,
    /// `ev_per_sec`: event rate over the last ticks; `None` when it cannot be computed.
    pub ev_per_sec: Option<f64>,
    /// `ev_new`: events inserted since the newest tick (an estimate from the event sequence).
    pub ev_new: Option<i64>,
    /// `last_tick_id`: the newest tick.
    pub last_tick_id: Option<TickId>,
    /// `queue_ticker_max_batch` (not in `pgq.get_queue_info`): the batch cap; `None` on the
    /// original extension, which has none.
    pub ticker_max_batch: Option<i32>,
}

/// Describes one queue, or all queues (ordered by name) with `None` (`pgq.get_queue_info`).
/// An unknown queue gives an empty list. Configured periods read back negative (set by hand in
/// SQL) come back as zero, which is how PGQ's ticker treats them.
///
/// # Errors
///
/// [`Error::Db`] when the statement fails.
pub async fn queue_info(
    client: &impl GenericClient,
    queue: Option<&QueueName>,
) -> Result<Vec<QueueInfo>> {
    const OP: &str = "get_queue_info";
    let name = queue.map(QueueName::as_str);
    let rows = client
        .query_typed(QUEUE_INFO, &[(&name, Type::TEXT)])
        .await
        .op(OP)?;
    rows.iter()
        .map(|row| {
            Ok(QueueInfo {
                name: row.try_get(0).op(OP)?,
                ntables: row.try_get(1).op(OP)?,
                cur_table: row.try_get(2).op(OP)?,
                rotation_period: duration(row.try_get(3).op(OP)?),
                switch_time: row.try_get(4).op(OP)?,
                external_ticker: row.try_get(5).op(OP)?,
                ticker_paused: row.try_get(6).op(OP)?,
                ticker_max_count: row.try_get(7).op(OP)?,
                ticker_max_lag: duration(row.try_get(8).op(OP)?),
                ticker_idle_period: duration(row.try_get(9).op(OP)?),
                ticker_lag: row
                    .try_get::<_, Option<i64>>(10)
                    .op(OP)?
                    .map(TimeDelta::microseconds),
                ev_per_sec: row.try_get(11).op(OP)?,
                ev_new: row.try_get(12).op(OP)?,
                last_tick_id: row.try_get::<_, Option<i64>>(13).op(OP)?.map(TickId),
                ticker_max_batch: row.try_get(14).op(OP)?,
            })
        })
        .collect()
}

/// Asks PGQ's own ticker logic for a tick on one queue (`pgq.ticker(queue)`): it ticks when
/// `ticker_max_count` events are waiting, when `ticker_max_lag` has passed with events waiting,
/// or when `ticker_idle_period` has passed without. Returns the new tick, `None` when no tick
/// was due. To make the next call tick, use [`force_tick`] first.
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`] when the statement fails, e.g. PGQ's exception for a
/// paused queue or one with an external ticker.
pub async fn ticker(client: &impl GenericClient, queue: &QueueName) -> Result<Option<TickId>> {
    tick_named(client, queue.as_str(), "ticker")
        .await?
        .ok_or_else(|| queue_not_found(queue))
}

/// [`ticker`] on the queue of that name as the database gave it (any text): `None` when there
/// is no such queue, else the new tick, if one was due.
pub(crate) async fn tick_named(
    client: &impl GenericClient,
    queue: &str,
    op: &'static str,
) -> Result<Option<Option<TickId>>> {
    client
        .query_typed_opt(TICKER, &[(&queue, Type::TEXT)])
        .await
        .op(op)?
        .map(|row| Ok(row.try_get::<_, Option<i64>>(0).op(op)?.map(TickId)))
        .transpose()
}

/// Runs PGQ's ticker logic (see [`ticker`]) on every queue that is neither paused nor ticked
/// externally (`pgq.ticker()`). Returns how many queues got a tick.
///
/// # Errors
///
/// [`Error::Db`] when the statement fails.
pub async fn ticker_all(client: &impl GenericClient) -> Result<u64> {
    let row = client.query_typed_one(TICKER_ALL, &[]).await.op("ticker")?;
    Ok(row
        .try_get::<_, Option<i64>>(0)
        .op("ticker")?
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0))
}

/// Makes the next [`ticker`] call on the queue tick (`pgq.force_tick`): it advances the event
/// sequence past `ticker_max_count`. Has no effect on a paused or externally ticked queue.
/// Returns the newest tick as it is now, `None` when the queue has none.
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`] when the statement fails.
pub async fn force_tick(client: &impl GenericClient, queue: &QueueName) -> Result<Option<TickId>> {
    let row = client
        .query_typed_opt(FORCE_TICK, &[(&queue.as_str(), Type::TEXT)])
        .await
        .op("force_tick")?
        .ok_or_else(|| queue_not_found(queue))?;
    Ok(row
        .try_get::<_, Option<i64>>(0)
        .op("force_tick")?
        .map(TickId))
}

/// Registers a consumer on a queue at its newest tick (`pgq.register_consumer`): it will see
/// every event in batches after that tick. Returns `true` for a new registration, `false` when
/// it was registered already (its position is kept).
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`] when the statement fails.
pub async fn register_consumer(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<bool> {
    let row = client
        .query_typed_opt(
            REGISTER_CONSUMER,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op("register_consumer")?
        .ok_or_else(|| queue_not_found(queue))?;
    Ok(row.try_get::<_, Option<i32>>(0).op("register_consumer")? == Some(1))
}

/// Registers a consumer at a given tick, or moves an existing registration there, dropping its
/// batch in progress (`pgq.register_consumer_at`). Returns `true` for a new registration.
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::Db`] when the statement fails, e.g. PGQ's exception when
/// the tick does not exist.
pub async fn register_consumer_at(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
    tick: TickId,
) -> Result<bool> {
    let row = client
        .query_typed_opt(
            REGISTER_CONSUMER_AT,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&tick.0, Type::INT8),
            ],
        )
        .await
        .op("register_consumer_at")?
        .ok_or_else(|| queue_not_found(queue))?;
    Ok(row
        .try_get::<_, Option<i32>>(0)
        .op("register_consumer_at")?
        == Some(1))
}

/// Unregisters a consumer from a queue, deleting its pending retry events
/// (`pgq.unregister_consumer`).
///
/// # Errors
///
/// [`Error::QueueNotFound`]; [`Error::ConsumerNotRegistered`]; [`Error::Db`] when the
/// statement fails.
pub async fn unregister_consumer(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<()> {
    let row = client
        .query_typed_opt(
            UNREGISTER_CONSUMER,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op("unregister_consumer")?
        .ok_or_else(|| queue_not_found(queue))?;
    if row
        .try_get::<_, Option<i32>>(0)
        .op("unregister_consumer")?
        .unwrap_or(0)
        == 0
    {
        return Err(Error::ConsumerNotRegistered {
            queue: queue.to_string(),
            consumer: consumer.to_string(),
        });
    }
    Ok(())
}

/// One tick.
#[derive(Debug, Clone, serde::Serialize)]
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
/// [`Error::QueueNotFound`] for an unknown queue; [`Error::Db`] when the statement fails.
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
        .op(OP)?;
    if rows.is_empty() && !queue_exists(client, queue).await? {
        return Err(queue_not_found(queue));
    }
    rows.iter()
        .map(|row| {
            Ok(TickInfo {
                tick_id: TickId(row.try_get(0).op(OP)?),
                tick_time: row.try_get(1).op(OP)?,
                event_seq: row.try_get(2).op(OP)?,
                events: row.try_get(3).op(OP)?,
                snapshot: row.try_get(4).op(OP)?,
            })
        })
        .collect()
}

/// Whether the consumer is registered on the queue (`false` for an unknown queue too).
///
/// # Errors
///
/// [`Error::Db`] when the statement fails.
pub async fn is_registered(
    client: &impl GenericClient,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<bool> {
    const OP: &str = "checking the registration";
    client
        .query_typed_one(
            IS_REGISTERED,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}

/// Whether the queue exists (read-only; used to explain an empty guarded result).
pub(crate) async fn queue_exists(client: &impl GenericClient, queue: &QueueName) -> Result<bool> {
    const OP: &str = "checking that the queue exists";
    client
        .query_typed_one(QUEUE_EXISTS, &[(&queue.as_str(), Type::TEXT)])
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}

pub(crate) fn queue_not_found(queue: &QueueName) -> Error {
    Error::QueueNotFound {
        queue: queue.to_string(),
    }
}

/// A configured period read as microseconds; negative reads as zero.
pub(crate) fn duration(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_text_keeps_microseconds() {
        assert_eq!(
            interval_text(Duration::from_micros(1_500_001)),
            "1.500001 seconds"
        );
        assert_eq!(interval_text(Duration::ZERO), "0.000000 seconds");
        assert_eq!(
            interval_text(Duration::from_secs(7200)),
            "7200.000000 seconds"
        );
    }

    #[test]
    fn negative_period_reads_as_zero() {
        assert_eq!(duration(-5), Duration::ZERO);
        assert_eq!(duration(1_000_000), Duration::from_secs(1));
    }
}
