//! `compare`: both sides read at one consistency point while the provider is being written to.
//!
//! The worker is held after its current batch; on the provider the tables are locked in SHARE
//! mode for a moment (writers wait; none is in flight), a repeatable-read snapshot is taken
//! and a tick is made, both seeing exactly the same committed changes; the lock is released.
//! The provider's rows are read under that snapshot, the worker is let run up to that tick
//! and held there, and the subscriber's rows are read. Rows are compared by count and by an
//! order-independent sum of md5 hashes of each row's text.

use std::time::{Duration, Instant};

use pgq_core::{quote_ident, ConsumerName};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::admin::worker_running;
use crate::config::Config;
use crate::error::{DbContext as _, LondisteError, Result, PROVIDER, SUBSCRIBER};
use crate::meta::{require_table, TableInfo};
use crate::state::TableState;
use crate::worker::Worker;

// language=SQL
const HOLD: &str = "\
INSERT INTO londiste_rs.worker_position (queue_name, consumer_name, pause_requested, pause_at_tick)
VALUES ($1, $2, true, $3)
ON CONFLICT (queue_name, consumer_name)
DO UPDATE SET pause_requested = true, pause_at_tick = excluded.pause_at_tick";

// language=SQL
const RELEASE: &str = "\
UPDATE londiste_rs.worker_position SET pause_requested = false, pause_at_tick = NULL
 WHERE queue_name = $1 AND consumer_name = $2";

// language=SQL
const POSITION: &str = "\
SELECT last_tick FROM londiste_rs.worker_position WHERE queue_name = $1 AND consumer_name = $2";

// language=SQL
const REGISTERED: &str = "\
SELECT table_name, dest_table, state FROM londiste_rs.subscriber_table
 WHERE queue_name = $1 ORDER BY table_name";

/// How long `compare` waits for the worker to reach the comparison tick.
const REACH_TIMEOUT: Duration = Duration::from_secs(120);

/// One table compared.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Comparison {
    /// The provider table.
    pub table: String,
    /// The tick both sides were read at.
    pub tick: i64,
    /// Rows on the provider.
    pub provider_rows: i64,
    /// Rows on the subscriber.
    pub subscriber_rows: i64,
    /// Order-independent hash of the provider's rows.
    pub provider_hash: String,
    /// The same for the subscriber's rows.
    pub subscriber_hash: String,
}

impl Comparison {
    /// Whether both sides hold the same rows.
    pub fn equal(&self) -> bool {
        self.provider_rows == self.subscriber_rows && self.provider_hash == self.subscriber_hash
    }
}

/// Compares `table` (every `ok` table when `None`) at one tick. When no worker runs, this
/// process applies the batches up to that tick itself.
///
/// # Errors
///
/// [`LondisteError::TableState`] for a table not replicated or not yet `ok`; a worker that does
/// not reach the tick within two minutes; connection failures.
pub async fn compare(config: &Config, table: Option<&str>) -> Result<Vec<Comparison>> {
    let queue = config.queue.as_str();
    let subscriber = config.subscriber.connect().await?;
    let consumer_name = config.consumer_name(&subscriber).await?;
    let consumer = consumer_name.as_str();
    let mut provider = config.provider.connect().await?;
    let pairs = pairs(config, &provider, &subscriber, table).await?;
    let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&queue, Type::TEXT), (&consumer, Type::TEXT)];
    let no_tick: Option<i64> = None;
    subscriber
        .query_typed(
            HOLD,
            &[
                (&queue, Type::TEXT),
                (&consumer, Type::TEXT),
                (&no_tick, Type::INT8),
            ],
        )
        .await
        .on(SUBSCRIBER, "holding the worker")?;
    let result = async {
        let mut locker = config.provider.connect().await?;
        let lock = locker.transaction().await.on(PROVIDER, "begin")?;
        let list = pairs
            .iter()
            .map(|(p, _)| p.quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        lock.batch_execute(&format!("LOCK TABLE {list} IN SHARE MODE"))
            .await
            .on(PROVIDER, "locking the tables for a moment")?;
        let reader = provider.transaction().await.on(PROVIDER, "begin")?;
        reader
            .batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT 1")
            .await
            .on(PROVIDER, "taking the snapshot")?;
        pgq_core::force_tick(&lock, &config.queue).await?;
        let tick = pgq_core::ticker(&lock, &config.queue)
            .await?
            .ok_or_else(|| LondisteError::TableState {
                table: list.clone(),
                problem: format!("queue {queue} did not tick (paused or ticked externally?)"),
            })?;
        lock.commit().await.on(PROVIDER, "commit")?;
        let mut provider_sums = Vec::with_capacity(pairs.len());
        for (source, _) in &pairs {
            provider_sums.push(checksum(&reader, PROVIDER, source, source).await?);
        }
        reader.commit().await.on(PROVIDER, "commit")?;
        let tick = tick.0;
        subscriber
            .query_typed(
                HOLD,
                &[
                    (&queue, Type::TEXT),
                    (&consumer, Type::TEXT),
                    (&tick, Type::INT8),
                ],
            )
            .await
            .on(SUBSCRIBER, "moving the worker to the tick")?;
        reach(config, &consumer_name, &subscriber, tick).await?;
        let mut comparisons = Vec::with_capacity(pairs.len());
        for ((source, dest), (provider_rows, provider_hash)) in pairs.iter().zip(provider_sums) {
            let (subscriber_rows, subscriber_hash) =
                checksum(&subscriber, SUBSCRIBER, source, dest).await?;
            comparisons.push(Comparison {
                table: source.event_name.clone(),
                tick,
                provider_rows,
                subscriber_rows,
                provider_hash,
                subscriber_hash,
            });
        }
        Ok(comparisons)
    }
    .await;
    subscriber
        .query_typed(RELEASE, &names)
        .await
        .on(SUBSCRIBER, "releasing the worker")?;
    result
}

/// The tables to compare, provider and subscriber side.
async fn pairs(
    config: &Config,
    provider: &impl GenericClient,
    subscriber: &impl GenericClient,
    table: Option<&str>,
) -> Result<Vec<(TableInfo, TableInfo)>> {
    let wanted = match table {
        Some(name) => Some(require_table(provider, PROVIDER, name).await?.event_name),
        None => None,
    };
    let rows = subscriber
        .query_typed(REGISTERED, &[(&config.queue.as_str(), Type::TEXT)])
        .await
        .on(SUBSCRIBER, "listing tables")?;
    let mut pairs = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        if wanted.as_ref().is_some_and(|w| *w != name) {
            continue;
        }
        let state: TableState = row.try_get(2).on(SUBSCRIBER, "reading table states")?;
        if state != TableState::Ok {
            if wanted.is_some() {
                return Err(LondisteError::TableState {
                    table: name,
                    problem: format!("is {state}, not ok: compare it once it has caught up"),
                });
            }
            continue;
        }
        let dest: String = row.get(1);
        let source = require_table(provider, PROVIDER, &name).await?;
        let dest = require_table(subscriber, SUBSCRIBER, &dest).await?;
        pairs.push((source, dest));
    }
    if pairs.is_empty() {
        return Err(LondisteError::TableState {
            table: wanted.unwrap_or_else(|| "(all)".to_owned()),
            problem: format!("no table of queue {} is ok to compare", config.queue),
        });
    }
    Ok(pairs)
}

/// Waits until the worker's position is `tick`, applying batches here when no worker runs.
async fn reach(
    config: &Config,
    consumer_name: &ConsumerName,
    subscriber: &impl GenericClient,
    tick: i64,
) -> Result<()> {
    let queue = config.queue.as_str();
    let consumer = consumer_name.as_str();
    let deadline = Instant::now() + REACH_TIMEOUT;
    let provider = config.provider.connect().await?;
    let mut own_worker: Option<Worker> = None;
    loop {
        let position: Option<i64> = subscriber
            .query_typed_opt(POSITION, &[(&queue, Type::TEXT), (&consumer, Type::TEXT)])
            .await
            .on(SUBSCRIBER, "reading the worker position")?
            .and_then(|r| r.get(0));
        if position == Some(tick) {
            return Ok(());
        }
        if position.is_some_and(|p| p > tick) || Instant::now() >= deadline {
            return Err(LondisteError::TableState {
                table: "(compare)".to_owned(),
                problem: format!(
                    "the worker did not stop at tick {tick} (its position: {position:?})"
                ),
            });
        }
        if own_worker.is_none() && !worker_running(&provider, &config.queue, consumer_name).await? {
            own_worker = Some(Worker::connect(config).await?);
        }
        match own_worker.as_mut() {
            Some(worker) => match worker.process_next_batch().await {
                Ok(Some(_)) => {}
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(LondisteError::Consumer(pgq_consumer::ConsumerError::Postponed { .. })) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => return Err(err),
            },
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Row count and an order-independent sum of the rows' md5 hashes, over the provider's
/// columns in the provider's order.
async fn checksum(
    client: &impl GenericClient,
    side: &'static str,
    source: &TableInfo,
    table: &TableInfo,
) -> Result<(i64, String)> {
    let columns = source
        .columns
        .iter()
        .map(|c| format!("t.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let only = if table.partitioned { "" } else { "ONLY " };
    let sql = format!(
        "SELECT count(*), coalesce(sum(('x' || substr(md5(ROW({columns})::text), 1, 16))::bit(64)::int8::numeric), 0)::text \
           FROM {only}{} AS t",
        table.quoted
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .on(side, format!("reading {}", table.event_name))?;
    Ok((row.get(0), row.get(1)))
}
