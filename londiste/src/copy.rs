//! The initial copy of a table: one snapshot on the provider, recorded as the table's copy
//! snapshot, read by one or several connections (each importing the exported snapshot and
//! copying a range of primary keys), streamed with COPY into the subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;
use futures_util::{pin_mut, SinkExt as _, TryStreamExt as _};
use pgq_core::{quote_ident, quote_literal, Dsn};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

use crate::error::{DbContext as _, LondisteError, Result, PROVIDER, SUBSCRIBER};
use crate::meta::TableInfo;

// language=SQL
const SET_IN_COPY: &str = "\
UPDATE londiste_rs.subscriber_table
   SET state = 'in-copy', copy_snapshot = NULL, copy_rows = NULL, copy_started = now(),
       copy_finished = NULL, state_changed = now()
 WHERE queue_name = $1 AND table_name = $2";

// language=SQL
const SET_COPIED: &str = "\
UPDATE londiste_rs.subscriber_table
   SET state = 'catching-up', copy_snapshot = $3::text::txid_snapshot, copy_rows = $4,
       copy_finished = now(), state_changed = now()
 WHERE queue_name = $1 AND table_name = $2 AND state = 'in-copy'";

// language=SQL
const EXPORT: &str = "SELECT txid_current_snapshot()::text, pg_export_snapshot()";

/// How far the initial copy has come: counters the copy updates as it goes, which a caller
/// reads from another task (the `londiste` command draws them as a progress bar).
#[derive(Debug, Default)]
pub struct CopyProgress {
    table: Mutex<String>,
    estimated_rows: AtomicU64,
    rows: AtomicU64,
}

impl CopyProgress {
    /// The table being copied, or copied last (empty before the first copy starts).
    pub fn table(&self) -> String {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The planner's estimate of the table's rows (0 when it has none).
    pub fn estimated_rows(&self) -> u64 {
        self.estimated_rows.load(Ordering::Relaxed)
    }

    /// Rows of the table sent to the subscriber so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    fn start(&self, table: &str, estimated_rows: u64) {
        table.clone_into(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner));
        self.estimated_rows.store(estimated_rows, Ordering::Relaxed);
        self.rows.store(0, Ordering::Relaxed);
    }

    fn add_rows(&self, rows: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }
}

/// What to copy.
pub(crate) struct CopyJob<'a> {
    pub(crate) queue: &'a str,
    pub(crate) provider: &'a TableInfo,
    pub(crate) dest: &'a TableInfo,
    pub(crate) condition: Option<&'a str>,
    pub(crate) jobs: u32,
    pub(crate) progress: &'a CopyProgress,
}

/// Copies the table, leaving it `catching-up` with its copy snapshot. Returns the rows copied.
pub(crate) async fn copy_table(
    provider_dsn: &Dsn,
    subscriber_dsn: &Dsn,
    job: &CopyJob<'_>,
) -> Result<u64> {
    let mut subscriber = subscriber_dsn.connect().await?;
    let table = job.provider.event_name.as_str();
    subscriber
        .query_typed(
            SET_IN_COPY,
            &[(&job.queue, Type::TEXT), (&table, Type::TEXT)],
        )
        .await
        .on(SUBSCRIBER, "marking the table in-copy")?;
    let mut exporter = provider_dsn.connect().await?;
    let export = exporter.transaction().await.on(PROVIDER, "begin")?;
    export
        .batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .on(PROVIDER, "repeatable read")?;
    let row = export
        .query_one(EXPORT, &[])
        .await
        .on(PROVIDER, "exporting the copy snapshot")?;
    let snapshot: String = row.get(0);
    let snapshot_id: String = row.get(1);
    job.progress
        .start(&job.provider.event_name, estimate_rows(job, &export).await?);
    let rows = if job.jobs <= 1 {
        let tx = begin_replica(&mut subscriber).await?;
        tx.batch_execute(&format!("TRUNCATE {}", job.dest.quoted))
            .await
            .on(SUBSCRIBER, "emptying the table")?;
        let rows = stream(&export, &tx, job, None).await?;
        mark_copied(&tx, job, &snapshot, rows).await?;
        tx.commit().await.on(SUBSCRIBER, "commit")?;
        rows
    } else {
        let ranges = ranges(&export, job).await?;
        subscriber
            .batch_execute(&format!(
                "SET session_replication_role = replica; TRUNCATE {}",
                job.dest.quoted
            ))
            .await
            .map_err(replica_error)?;
        let copies = ranges.into_iter().map(|range| {
            let snapshot_id = snapshot_id.clone();
            async move {
                let mut source = provider_dsn.connect().await?;
                let src = source.transaction().await.on(PROVIDER, "begin")?;
                src.batch_execute(&format!(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                     SET TRANSACTION SNAPSHOT {}",
                    quote_literal(&snapshot_id)
                ))
                .await
                .on(PROVIDER, "importing the copy snapshot")?;
                let mut target = subscriber_dsn.connect().await?;
                let tx = begin_replica(&mut target).await?;
                let rows = stream(&src, &tx, job, Some(&range)).await?;
                tx.commit().await.on(SUBSCRIBER, "commit")?;
                src.commit().await.on(PROVIDER, "commit")?;
                Ok::<u64, LondisteError>(rows)
            }
        });
        let copied = futures_util::future::try_join_all(copies).await?;
        let rows = copied.iter().sum();
        let tx = subscriber.transaction().await.on(SUBSCRIBER, "begin")?;
        mark_copied(&tx, job, &snapshot, rows).await?;
        tx.commit().await.on(SUBSCRIBER, "commit")?;
        rows
    };
    export.commit().await.on(PROVIDER, "commit")?;
    Ok(rows)
}

async fn mark_copied(
    tx: &Transaction<'_>,
    job: &CopyJob<'_>,
    snapshot: &str,
    rows: u64,
) -> Result<()> {
    let table = job.provider.event_name.as_str();
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    let marked = tx
        .query_typed(
            &format!("{SET_COPIED} RETURNING 1"),
            &[
                (&job.queue, Type::TEXT),
                (&table, Type::TEXT),
                (&snapshot, Type::TEXT),
                (&rows, Type::INT8),
            ],
        )
        .await
        .on(SUBSCRIBER, "recording the copy snapshot")?;
    if marked.is_empty() {
        return Err(LondisteError::TableState {
            table: table.to_owned(),
            problem: "was removed or copied by someone else during the copy".to_owned(),
        });
    }
    Ok(())
}

async fn begin_replica(client: &mut Client) -> Result<Transaction<'_>> {
    let tx = client.transaction().await.on(SUBSCRIBER, "begin")?;
    tx.batch_execute("SET LOCAL session_replication_role = replica")
        .await
        .map_err(replica_error)?;
    Ok(tx)
}

/// The error for a failed `SET session_replication_role`.
pub(crate) fn replica_error(err: tokio_postgres::Error) -> LondisteError {
    if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        LondisteError::ReplicaRole(err)
    } else {
        LondisteError::Db {
            side: SUBSCRIBER,
            op: "setting session_replication_role".to_owned(),
            source: err,
        }
    }
}

/// `FROM` and `WHERE` for the copy, with an optional key range `[low, high)`.
fn source_query(job: &CopyJob<'_>, range: Option<&KeyRange>) -> String {
    let only = if job.provider.partitioned {
        ""
    } else {
        "ONLY "
    };
    let mut conditions = Vec::new();
    if let Some(condition) = job.condition {
        conditions.push(format!("({condition})"));
    }
    if let Some(range) = range {
        let key = key_tuple(job.provider);
        if let Some(low) = &range.low {
            conditions.push(format!("({key}) >= ({})", literal_tuple(job.provider, low)));
        }
        if let Some(high) = &range.high {
            conditions.push(format!("({key}) < ({})", literal_tuple(job.provider, high)));
        }
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!("FROM {only}{}{filter}", job.provider.quoted)
}

fn column_list(info: &TableInfo) -> String {
    info.columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_tuple(info: &TableInfo) -> String {
    info.pkey
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ")
}

fn literal_tuple(info: &TableInfo, values: &[String]) -> String {
    info.pkey
        .iter()
        .zip(values)
        .map(|(k, v)| {
            let sql_type = info.column(k).map_or("text", |c| c.sql_type.as_str());
            format!("{}::{sql_type}", quote_literal(v))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A range of primary keys, `[low, high)`; `None` is unbounded.
struct KeyRange {
    low: Option<Vec<String>>,
    high: Option<Vec<String>>,
}

/// Splits the table into `jobs` ranges of about equal row counts, read in the copy snapshot.
async fn ranges(export: &Transaction<'_>, job: &CopyJob<'_>) -> Result<Vec<KeyRange>> {
    let from = source_query(job, None);
    let count: i64 = export
        .query_one(&format!("SELECT count(*) {from}"), &[])
        .await
        .on(PROVIDER, "counting rows")?
        .get(0);
    let key = key_tuple(job.provider);
    let key_text = job
        .provider
        .pkey
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let jobs = i64::from(job.jobs);
    let mut bounds = Vec::new();
    for i in 1..jobs {
        let offset = count * i / jobs;
        let row = export
            .query_typed_opt(
                &format!("SELECT {key_text} {from} ORDER BY {key} OFFSET $1 LIMIT 1"),
                &[(&offset, Type::INT8)],
            )
            .await
            .on(PROVIDER, "splitting the table into key ranges")?;
        if let Some(row) = row {
            let values: Vec<String> = (0..job.provider.pkey.len()).map(|c| row.get(c)).collect();
            if bounds.last() != Some(&values) {
                bounds.push(values);
            }
        }
    }
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut low = None;
    for bound in bounds {
        ranges.push(KeyRange {
            low: low.take(),
            high: Some(bound.clone()),
        });
        low = Some(bound);
    }
    ranges.push(KeyRange { low, high: None });
    Ok(ranges)
}

/// Streams one COPY from the provider into the subscriber; returns the rows.
async fn stream(
    source: &Transaction<'_>,
    target: &Transaction<'_>,
    job: &CopyJob<'_>,
    range: Option<&KeyRange>,
) -> Result<u64> {
    let columns = column_list(job.provider);
    let out = source
        .copy_out(&format!(
            "COPY (SELECT {columns} {}) TO STDOUT",
            source_query(job, range)
        ))
        .await
        .on(PROVIDER, format!("COPY out of {}", job.provider.event_name))?;
    let sink = target
        .copy_in(&format!("COPY {} ({columns}) FROM STDIN", job.dest.quoted))
        .await
        .on(SUBSCRIBER, format!("COPY into {}", job.dest.event_name))?;
    pin_mut!(out, sink);
    // COPY OUT yields one message per row: gather them so each send carries many rows.
    let mut buffer = BytesMut::with_capacity(COPY_BUFFER);
    while let Some(chunk) = out
        .try_next()
        .await
        .on(PROVIDER, format!("COPY out of {}", job.provider.event_name))?
    {
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= COPY_BUFFER {
            send(&mut sink, &mut buffer, job).await?;
        }
    }
    if !buffer.is_empty() {
        send(&mut sink, &mut buffer, job).await?;
    }
    sink.finish()
        .await
        .on(SUBSCRIBER, format!("COPY into {}", job.dest.event_name))
}

/// Bytes of COPY data sent to the subscriber at once.
const COPY_BUFFER: usize = 256 * 1024;

async fn send(
    sink: &mut std::pin::Pin<&mut tokio_postgres::CopyInSink<bytes::Bytes>>,
    buffer: &mut BytesMut,
    job: &CopyJob<'_>,
) -> Result<()> {
    let data = buffer.split().freeze();
    let lines = data.iter().filter(|&&b| b == b'\n').count();
    job.progress.add_rows(u64::try_from(lines).unwrap_or(0));
    sink.send(data)
        .await
        .on(SUBSCRIBER, format!("COPY into {}", job.dest.event_name))
}

/// The planner's estimate of the table's rows, read in the copy snapshot.
async fn estimate_rows(job: &CopyJob<'_>, export: &Transaction<'_>) -> Result<u64> {
    let estimate: f32 = export
        .query_typed_one(
            "SELECT greatest(reltuples, 0)::real FROM pg_catalog.pg_class WHERE oid = $1",
            &[(&job.provider.oid, Type::OID)],
        )
        .await
        .on(PROVIDER, "estimating rows")?
        .get(0);
    Ok(format!("{estimate:.0}").parse().unwrap_or(0))
}
