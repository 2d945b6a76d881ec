//! What a database's queues look like to an operator: newest tick age, event rate, each
//! consumer's lag, and which session holds the ticker lock.

use std::time::Duration;

use chrono::TimeDelta;
use pgq_core::maintenance::{self, TickerHolder};
use pgq_core::{BatchId, Flavor, TickId};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{Result, TickerError};

/// One database as `pgq-ticker status` shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DatabaseStatus {
    /// The database name.
    pub db: String,
    /// `ours` (the pgq-rs schema), `extension` (the original PGQ) or `unknown` (PGQ installed
    /// some other way).
    pub flavor: &'static str,
    /// The session holding the ticker lock (a pgq-ticker at work), if any.
    pub ticker: Option<TickerHolder>,
    /// The queues, by name.
    pub queues: Vec<QueueStatus>,
}

/// One queue.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The queue name.
    pub queue: String,
    /// The newest tick.
    pub newest_tick: Option<TickId>,
    /// Seconds since the newest tick.
    pub tick_age_secs: Option<f64>,
    /// Events per second over the last ticks.
    pub events_per_sec: Option<f64>,
    /// Events inserted after the newest tick (from the event sequence).
    pub events_since_tick: Option<i64>,
    /// The queue's `ticker_max_count`.
    pub ticker_max_count: i32,
    /// The ticker is paused for this queue.
    pub ticker_paused: bool,
    /// Ticks come from elsewhere (`queue_external_ticker`).
    pub external_ticker: bool,
    /// Its consumers, by name.
    pub consumers: Vec<ConsumerStatus>,
}

/// One consumer of a queue.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// The consumer name.
    pub consumer: String,
    /// Seconds since the tick it last finished.
    pub lag_secs: Option<f64>,
    /// Seconds since it last took or finished a batch.
    pub last_seen_secs: Option<f64>,
    /// The tick it last finished.
    pub last_tick: Option<TickId>,
    /// The batch it holds.
    pub current_batch: Option<BatchId>,
    /// Events between its position and the newest tick (from the event sequence).
    pub pending_events: Option<i64>,
}

impl DatabaseStatus {
    /// What a monitoring check should complain about: queues ticked here (neither paused nor
    /// ticked externally) without a tick, or whose newest tick is older than `max_tick_age`.
    pub fn problems(&self, max_tick_age: Option<Duration>) -> Vec<String> {
        let mut problems = Vec::new();
        for q in &self.queues {
            if q.ticker_paused || q.external_ticker {
                continue;
            }
            match (q.tick_age_secs, max_tick_age) {
                (None, _) => problems.push(format!("queue {:?} has no tick", q.queue)),
                (Some(age), Some(max)) if age > max.as_secs_f64() => problems.push(format!(
                    "queue {:?}: newest tick is {age:.1} s old (limit {:.1} s)",
                    q.queue,
                    max.as_secs_f64()
                )),
                _ => {}
            }
        }
        problems
    }
}

/// Reads the status of the database `client` is connected to.
///
/// # Errors
///
/// [`TickerError::SchemaMissing`] when the database has no PGQ; [`TickerError::Core`] when a
/// statement fails.
pub async fn database_status(client: &impl GenericClient) -> Result<DatabaseStatus> {
    let support = maintenance::ticker_support(client).await?;
    if !support.pgq {
        return Err(TickerError::SchemaMissing {
            db: support.database,
        });
    }
    let db = support.database;
    let flavor = flavor_name(pgq_core::flavor(client).await?);
    let ticker = maintenance::ticker_holder(client).await?;
    let mut consumers = pgq_core::consumer_info(client, None, None).await?;
    let queues = pgq_core::queue_info(client, None)
        .await?
        .into_iter()
        .map(|info| {
            let mine: Vec<ConsumerStatus> = consumers
                .iter()
                .filter(|c| c.queue_name == info.name)
                .map(|c| ConsumerStatus {
                    consumer: c.consumer_name.clone(),
                    lag_secs: c.lag.map(seconds),
                    last_seen_secs: c.last_seen.map(seconds),
                    last_tick: c.last_tick,
                    current_batch: c.current_batch,
                    pending_events: c.pending_events,
                })
                .collect();
            consumers.retain(|c| c.queue_name != info.name);
            QueueStatus {
                queue: info.name,
                newest_tick: info.last_tick_id,
                tick_age_secs: info.ticker_lag.map(seconds),
                events_per_sec: info.ev_per_sec,
                events_since_tick: info.ev_new,
                ticker_max_count: info.ticker_max_count,
                ticker_paused: info.ticker_paused,
                external_ticker: info.external_ticker,
                consumers: mine,
            }
        })
        .collect();
    Ok(DatabaseStatus {
        db,
        flavor,
        ticker,
        queues,
    })
}

pub(crate) fn flavor_name(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Ours => "ours",
        Flavor::Extension => "extension",
        Flavor::None => "unknown",
    }
}

/// A time difference in seconds.
pub(crate) fn seconds(delta: TimeDelta) -> f64 {
    delta.num_microseconds().map_or_else(
        || delta.num_milliseconds() as f64 / 1e3,
        |us| us as f64 / 1e6,
    )
}
