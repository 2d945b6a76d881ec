//! `compare`: both sides read at one consistency point while the provider is being written to.
//!
//! The worker is held after its current batch; on the provider the tables are locked in SHARE
//! mode for a moment (writers wait; none is in flight), a repeatable-read snapshot is taken
//! and a tick is made, both seeing exactly the same committed changes; the lock is released.
//! The provider's rows are read under that snapshot, the worker is let run up to that tick
//! and held there, and the subscriber's rows are read. Rows are compared by count and by an
//! order-independent sum of md5 hashes of each row's text.
//!
//! [`compare_rows`] goes on where the sums differ: both sides sum their rows again per bucket
//! of a hash of the primary key (4096 buckets), and only the rows of the buckets that differ
//! are read, as keys and row hashes. That costs two reads of each table when little differs.
//! [`repair`] then writes the provider's rows into the subscriber, in one transaction per
//! table, still at that tick: missing rows inserted, differing ones updated, extra ones
//! deleted.

use std::time::{Duration, Instant};

use pgq_core::{quote_ident, ConsumerName};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::admin::worker_running;
use crate::apply::TableBatch;
use crate::config::Config;
use crate::decode::Op;
use crate::error::{DbContext as _, LondisteError, Result, PROVIDER, SUBSCRIBER};
use crate::meta::{key_difference, require_table, TableInfo};
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

/// The rows of one table that differ, by primary key (each key as the row text of its
/// columns, e.g. `(42)`), and what a repair changed.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RowDiff {
    /// The provider table.
    pub table: String,
    /// The tick both sides were read at.
    pub tick: i64,
    /// Keys the subscriber lacks.
    pub missing: Vec<String>,
    /// Keys only the subscriber has.
    pub extra: Vec<String>,
    /// Keys whose rows differ.
    pub different: Vec<String>,
    /// Whether the subscriber was repaired (rows inserted, deleted and updated as listed).
    pub repaired: bool,
}

impl RowDiff {
    /// Whether no row differs.
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// How far [`compare`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    Sums,
    Rows,
    Repair,
}

/// The outcome of one table at one tick.
struct Outcome {
    sums: Comparison,
    rows: Option<RowDiff>,
}

/// Compares `table` (every `ok` table when `None`) at one tick. When no worker runs, this
/// process applies the batches up to that tick itself.
///
/// # Errors
///
/// [`LondisteError::TableState`] for a table not replicated or not yet `ok`; a worker that does
/// not reach the tick within two minutes; connection failures.
pub async fn compare(config: &Config, table: Option<&str>) -> Result<Vec<Comparison>> {
    Ok(at_one_tick(config, table, Depth::Sums)
        .await?
        .into_iter()
        .map(|o| o.sums)
        .collect())
}

/// Like [`compare`], and for each table whose sums differ, finds the differing rows.
///
/// # Errors
///
/// As [`compare`].
pub async fn compare_rows(config: &Config, table: Option<&str>) -> Result<Vec<RowDiff>> {
    rows(config, table, Depth::Rows).await
}

/// Like [`compare_rows`], then makes the subscriber's rows of each table the provider's at that
/// tick, in one transaction per table (with `session_replication_role = replica`, as the
/// worker writes). Returns what was changed.
///
/// # Errors
///
/// As [`compare`].
pub async fn repair(config: &Config, table: Option<&str>) -> Result<Vec<RowDiff>> {
    rows(config, table, Depth::Repair).await
}

async fn rows(config: &Config, table: Option<&str>, depth: Depth) -> Result<Vec<RowDiff>> {
    Ok(at_one_tick(config, table, depth)
        .await?
        .into_iter()
        .map(|o| {
            o.rows.unwrap_or_else(|| RowDiff {
                table: o.sums.table.clone(),
                tick: o.sums.tick,
                ..RowDiff::default()
            })
        })
        .collect())
}

async fn at_one_tick(config: &Config, table: Option<&str>, depth: Depth) -> Result<Vec<Outcome>> {
    let queue = config.queue.as_str();
    let mut subscriber = config.subscriber.connect().await?;
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
        let mut outcomes = Vec::with_capacity(pairs.len());
        for ((source, dest), (provider_rows, provider_hash)) in pairs.iter().zip(provider_sums) {
            let (subscriber_rows, subscriber_hash) =
                checksum(&subscriber, SUBSCRIBER, source, dest).await?;
            let sums = Comparison {
                table: source.event_name.clone(),
                tick,
                provider_rows,
                subscriber_rows,
                provider_hash,
                subscriber_hash,
            };
            let rows = if depth == Depth::Sums || sums.equal() {
                None
            } else {
                let found = diff_rows(&reader, &subscriber, source, dest).await?;
                let mut diff = RowDiff {
                    table: source.event_name.clone(),
                    tick,
                    missing: found.missing.iter().map(|r| r.key.clone()).collect(),
                    extra: found.extra.iter().map(|r| r.key.clone()).collect(),
                    different: found.different.iter().map(|r| r.key.clone()).collect(),
                    repaired: false,
                };
                if depth == Depth::Repair {
                    repair_rows(&mut subscriber, source, dest, &found).await?;
                    diff.repaired = true;
                }
                Some(diff)
            };
            outcomes.push(Outcome { sums, rows });
        }
        reader.commit().await.on(PROVIDER, "commit")?;
        Ok(outcomes)
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
        // Rows are matched by key: without the same key on both sides there is nothing to
        // match them by, and a repair would rewrite rows it cannot tell apart.
        source.require_pkey()?;
        if let Some(difference) = key_difference(&source, &dest) {
            return Err(LondisteError::TableMismatch {
                table: source.event_name,
                dest: dest.event_name,
                problem: format!("{difference}: rows cannot be matched"),
            });
        }
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
    let columns = row_columns(source);
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

/// Hash buckets of the primary key that rows are summed over before any row is read.
const BUCKETS: i64 = 4096;

/// A row found different: its key's text, and its column values as text (key columns only for
/// a row only the subscriber has).
struct FoundRow {
    key: String,
    values: Vec<Option<String>>,
}

/// The rows that differ between the provider (`reader`) and the subscriber.
struct Found {
    missing: Vec<FoundRow>,
    extra: Vec<FoundRow>,
    different: Vec<FoundRow>,
}

/// The provider's columns of a row aliased `t`, in the provider's order: what both sides hash.
fn row_columns(source: &TableInfo) -> String {
    source
        .columns
        .iter()
        .map(|c| format!("t.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key's bucket, its text, and the row's hash, over the provider's columns.
fn row_parts(source: &TableInfo) -> (String, String, String) {
    let key = source
        .pkey
        .iter()
        .map(|k| format!("t.{}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let columns = row_columns(source);
    (
        format!(
            "(pg_catalog.hashtextextended(ROW({key})::text, 0) & {})",
            BUCKETS - 1
        ),
        format!("ROW({key})::text"),
        format!("md5(ROW({columns})::text)"),
    )
}

/// Sums per bucket on one side.
async fn bucket_sums(
    client: &impl GenericClient,
    side: &'static str,
    source: &TableInfo,
    table: &TableInfo,
) -> Result<std::collections::HashMap<i64, (i64, String)>> {
    let (bucket, _, hash) = row_parts(source);
    let only = if table.partitioned { "" } else { "ONLY " };
    let sql = format!(
        "SELECT {bucket}, count(*), sum(('x' || substr({hash}, 1, 16))::bit(64)::int8::numeric)::text \
           FROM {only}{} AS t GROUP BY 1",
        table.quoted
    );
    Ok(client
        .query(&sql, &[])
        .await
        .on(side, format!("summing {} per key bucket", table.event_name))?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Key, row hash and the values (as text) of the rows in `buckets`, on one side; `values`
/// names the columns whose values are read.
async fn bucket_rows(
    client: &impl GenericClient,
    side: &'static str,
    source: &TableInfo,
    table: &TableInfo,
    buckets: &[i64],
    values: &[String],
) -> Result<std::collections::HashMap<String, (String, Vec<Option<String>>)>> {
    let (bucket, key, hash) = row_parts(source);
    let only = if table.partitioned { "" } else { "ONLY " };
    let columns: String = values
        .iter()
        .map(|c| format!(", t.{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {key}, {hash}{columns} FROM {only}{} AS t WHERE {bucket} = ANY ($1)",
        table.quoted
    );
    Ok(client
        .query(&sql, &[&buckets])
        .await
        .on(side, format!("reading rows of {}", table.event_name))?
        .iter()
        .map(|r| {
            let values = (0..values.len()).map(|i| r.get(i + 2)).collect();
            (r.get(0), (r.get(1), values))
        })
        .collect())
}

async fn diff_rows(
    provider: &impl GenericClient,
    subscriber: &impl GenericClient,
    source: &TableInfo,
    dest: &TableInfo,
) -> Result<Found> {
    let ours = bucket_sums(provider, PROVIDER, source, source).await?;
    let theirs = bucket_sums(subscriber, SUBSCRIBER, source, dest).await?;
    let mut buckets: Vec<i64> = ours
        .iter()
        .filter(|(b, sums)| theirs.get(b) != Some(sums))
        .map(|(b, _)| *b)
        .chain(theirs.keys().filter(|b| !ours.contains_key(b)).copied())
        .collect();
    buckets.sort_unstable();
    let all: Vec<String> = source.columns.iter().map(|c| c.name.clone()).collect();
    let provider_rows = bucket_rows(provider, PROVIDER, source, source, &buckets, &all).await?;
    let subscriber_rows =
        bucket_rows(subscriber, SUBSCRIBER, source, dest, &buckets, &source.pkey).await?;
    let mut found = Found {
        missing: Vec::new(),
        extra: Vec::new(),
        different: Vec::new(),
    };
    for (key, (hash, values)) in &provider_rows {
        let row = FoundRow {
            key: key.clone(),
            values: values.clone(),
        };
        match subscriber_rows.get(key) {
            None => found.missing.push(row),
            Some((theirs, _)) if theirs != hash => found.different.push(row),
            Some(_) => {}
        }
    }
    for (key, (_, values)) in &subscriber_rows {
        if !provider_rows.contains_key(key) {
            found.extra.push(FoundRow {
                key: key.clone(),
                values: values.clone(),
            });
        }
    }
    for rows in [&mut found.missing, &mut found.extra, &mut found.different] {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
    }
    Ok(found)
}

/// Writes the provider's rows over the subscriber's in one transaction: the same statements
/// the worker uses for a table replicated whole under a condition that always holds.
async fn repair_rows(
    subscriber: &mut tokio_postgres::Client,
    source: &TableInfo,
    dest: &TableInfo,
    found: &Found,
) -> Result<()> {
    let columns: Vec<String> = source.columns.iter().map(|c| c.name.clone()).collect();
    let tx = subscriber
        .transaction()
        .await
        .on(SUBSCRIBER, "starting the repair")?;
    tx.batch_execute("SET LOCAL session_replication_role = replica")
        .await
        .map_err(crate::copy::replica_error)?;
    let mut merged = TableBatch::new(
        std::sync::Arc::new(dest.clone()),
        &columns,
        Some("true".to_owned()),
    )
    .map_err(|problem| LondisteError::TableMismatch {
        table: source.event_name.clone(),
        dest: dest.event_name.clone(),
        problem,
    })?;
    let bad = |problem: String| LondisteError::TableState {
        table: source.event_name.clone(),
        problem,
    };
    for row in found.missing.iter().chain(&found.different) {
        merged
            .merge(Op::Insert, row.values.clone(), None)
            .map_err(bad)?;
    }
    for row in &found.extra {
        let mut values = vec![None; columns.len()];
        for (key, value) in source.pkey.iter().zip(&row.values) {
            if let Some(at) = columns.iter().position(|c| c == key) {
                values[at] = value.clone();
            }
        }
        merged.merge(Op::Delete, values, None).map_err(bad)?;
    }
    merged.flush(&tx).await?;
    tx.commit().await.on(SUBSCRIBER, "committing the repair")
}
