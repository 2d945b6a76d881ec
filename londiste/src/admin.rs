//! Setting up replication: `init`, `add-table`, `remove-table`, `add-seq`, `resync`, and the
//! read-only `tables` and `status`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgq_core::{quote_ident, quote_literal, ConsumerName, Flavor, Line, QueueName};
use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::config::Config;
use crate::copy::{copy_table, CopyJob, CopyProgress};
use crate::error::{DbContext as _, LondisteError, Result, PROVIDER, SUBSCRIBER};
use crate::meta::{check_compatible, create_table_sql, require_table, TableInfo};
use crate::state::TableState;

// language=SQL
const NOT_NULL: &str = "\
SELECT attname::text FROM pg_catalog.pg_attribute
 WHERE attrelid = $1 AND attnum > 0 AND attnotnull AND NOT attisdropped";

// language=SQL
const ADD_SUBSCRIBER_TABLE: &str = "\
INSERT INTO londiste_rs.subscriber_table (queue_name, table_name, dest_table, state, copy_condition)
VALUES ($1, $2, $3, $4, $5)";

// language=SQL
const SUBSCRIBER_TABLE: &str = "\
SELECT dest_table, state, copy_condition FROM londiste_rs.subscriber_table
 WHERE queue_name = $1 AND table_name = $2";

// language=SQL
const JOIN_CAPTURE: &str = "\
UPDATE londiste_rs.provider_table
   SET consumers = CASE WHEN $3 = ANY (consumers) THEN consumers ELSE consumers || $3 END
 WHERE queue_name = $1 AND table_name = $2 RETURNING 1";

// language=SQL
const LEAVE_CAPTURE: &str = "\
UPDATE londiste_rs.provider_table SET consumers = pg_catalog.array_remove(consumers, $3)
 WHERE queue_name = $1 AND table_name = $2
RETURNING pg_catalog.cardinality(consumers)";

// language=SQL
const TABLES: &str = "\
SELECT table_name, dest_table, state, copy_rows,
       extract(epoch FROM copy_finished - copy_started)::float8, state_changed::text
  FROM londiste_rs.subscriber_table WHERE queue_name = $1 ORDER BY table_name";

// language=SQL
const WORKER: &str = "\
SELECT last_tick, last_batch_at::text, pause_requested FROM londiste_rs.worker_position
 WHERE queue_name = $1 AND consumer_name = $2";

// Read from pg_locks, never by trying the lock: a worker reconnecting at the moment of a
// probe that held it would find its consumer busy. A bigint advisory key shows as its high
// and low halves in classid and objid, with objsubid 1.
// language=SQL
const WORKER_RUNNING: &str = "\
SELECT EXISTS (
  SELECT FROM pg_catalog.pg_locks l,
       (SELECT pg_catalog.hashtextextended(pg_catalog.format('pgq-rs consumer %s:%s/%s',
               pg_catalog.length($1), $1, $2), 0) AS k) AS lock
   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
     AND l.database = (SELECT oid FROM pg_catalog.pg_database
                        WHERE datname = pg_catalog.current_database())
     AND l.classid = ((lock.k >> 32) & 4294967295)::oid
     AND l.objid = (lock.k & 4294967295)::oid)";

/// Options of `add-table`.
#[derive(Debug, Clone, Default)]
pub struct AddTableOptions {
    /// Create the subscriber table (same columns, types, NOT NULLs and primary key).
    pub create: bool,
    /// Do not copy: the subscriber already has the rows; the table is `ok` at once.
    pub skip_copy: bool,
    /// Replicate only the rows matching this SQL condition: the copy takes them on the
    /// provider, and the worker evaluates it on each changed row on the subscriber (so it may
    /// name the table's columns and functions both sides have). A row that comes to match is
    /// inserted, one that stops matching is deleted, changes to rows outside it are ignored.
    pub copy_condition: Option<String>,
    /// The subscriber table's name, when it differs from the provider's.
    pub dest_table: Option<String>,
    /// Connections that copy key ranges of the table in parallel (at least 1).
    pub parallel_copy: u32,
    /// Record primary-key changes in the events (the capture trigger's `keychange`
    /// argument, pgq-rs schema only) so the worker follows them; without it a key change
    /// replicates as PGQ's original triggers have it.
    pub follow_key_changes: bool,
    /// How long to wait for the table to become `ok` when a worker runs.
    pub wait: Duration,
    /// Counters the copy keeps up to date, for a caller that shows them.
    pub progress: Arc<CopyProgress>,
}

/// Options of `resync`.
#[derive(Debug, Clone, Default)]
pub struct ResyncOptions {
    /// Connections that copy key ranges of the table in parallel (at least 1).
    pub parallel_copy: u32,
    /// How long to wait for the table to become `ok` when a worker runs.
    pub wait: Duration,
    /// Counters the copy keeps up to date, for a caller that shows them.
    pub progress: Arc<CopyProgress>,
}

/// What `add-table` did for one table.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AddedTable {
    /// The provider table, `schema.table`.
    pub table: String,
    /// Rows copied (0 with `--skip-copy`).
    pub rows: u64,
    /// Seconds the copy took.
    pub copy_seconds: f64,
    /// The state when `add-table` returned.
    pub state: TableState,
}

/// One subscribed table, as `londiste tables` lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TableStatus {
    /// The provider table.
    pub table: String,
    /// The subscriber table.
    pub dest_table: String,
    /// Where the table is.
    pub state: TableState,
    /// Rows of the initial copy.
    pub copy_rows: Option<i64>,
    /// Seconds the initial copy took.
    pub copy_seconds: Option<f64>,
    /// When the state last changed.
    pub state_changed: String,
}

/// The replication's health, as `londiste status` shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The queue.
    pub queue: String,
    /// The worker's consumer name.
    pub consumer: String,
    /// Whether a worker holds the consumer's lock now.
    pub worker_running: bool,
    /// Seconds since the last applied batch's end tick was made (PGQ's lag).
    pub lag_seconds: Option<f64>,
    /// Events waiting for the worker (from the queue's event sequence; an upper bound).
    pub pending_events: Option<i64>,
    /// The tick the last applied batch ended at.
    pub last_tick: Option<i64>,
    /// When the last batch was applied.
    pub last_batch_at: Option<String>,
    /// Tables per state.
    pub tables: Vec<TableStatus>,
}

/// Installs the schema on both sides (provider: pgq, the capture triggers and the
/// replicator's tables; subscriber: pgq_ext and the replicator's tables), creates the queue
/// and registers the worker's consumer, whose name it returns ([`Config::consumer_name`]).
/// Safe to run again.
///
/// # Errors
///
/// [`LondisteError::ConsumerTaken`] when another subscriber registered the consumer name on the
/// queue; connection, install and registration failures.
pub async fn init(config: &Config) -> Result<ConsumerName> {
    let mut provider = config.provider.connect().await?;
    let lines: &[Line] = match pgq_core::flavor(&provider).await? {
        Flavor::Extension => &[Line::Londiste],
        Flavor::Ours | Flavor::None => &[Line::Pgq, Line::PgqTriggers, Line::Londiste],
    };
    pgq_core::install(&mut provider, lines).await?;
    let mut subscriber = config.subscriber.connect().await?;
    pgq_core::install(&mut subscriber, &[Line::PgqExt, Line::Londiste]).await?;
    let consumer = config.consumer_name(&subscriber).await?;
    match pgq_core::create_queue(&provider, &config.queue).await {
        Ok(()) | Err(pgq_core::Error::QueueExists { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    // The subscriber records its worker first: a registration it finds already made is its
    // own when the record was there before (init run again), another subscriber's when not.
    let params: [(&(dyn ToSql + Sync), Type); 2] = [
        (&config.queue.as_str(), Type::TEXT),
        (&consumer.as_str(), Type::TEXT),
    ];
    let first_init = subscriber
        .query_typed_opt(
            "INSERT INTO londiste_rs.worker_position (queue_name, consumer_name) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING true",
            &params,
        )
        .await
        .on(SUBSCRIBER, "recording the worker")?
        .is_some();
    let registered = pgq_core::register_consumer(&provider, &config.queue, &consumer).await;
    if first_init && !matches!(registered, Ok(true)) {
        subscriber
            .query_typed(
                "DELETE FROM londiste_rs.worker_position WHERE queue_name = $1 AND consumer_name = $2",
                &params,
            )
            .await
            .on(SUBSCRIBER, "forgetting the worker")?;
        registered?;
        return Err(LondisteError::ConsumerTaken {
            queue: config.queue.to_string(),
            consumer: consumer.to_string(),
        });
    }
    registered?;
    Ok(consumer)
}

/// Adds tables to the replication: checks them, registers them on both sides, puts the
/// capture trigger on the provider table, copies the rows (unless `skip_copy`) and, when a
/// worker runs, waits until it has caught up (`ok`).
///
/// # Errors
///
/// [`LondisteError::NotFound`], [`LondisteError::NoPrimaryKey`],
/// [`LondisteError::TableMismatch`] naming the column, [`LondisteError::TableState`] for a
/// table added already; copy and connection failures.
pub async fn add_tables(
    config: &Config,
    tables: &[String],
    options: &AddTableOptions,
) -> Result<Vec<AddedTable>> {
    let mut added = Vec::with_capacity(tables.len());
    for table in tables {
        added.push(add_table(config, table, options).await?);
    }
    Ok(added)
}

async fn add_table(config: &Config, table: &str, options: &AddTableOptions) -> Result<AddedTable> {
    let provider = config.provider.connect().await?;
    let subscriber = config.subscriber.connect().await?;
    let source = require_table(&provider, PROVIDER, table).await?;
    source.require_pkey()?;
    let dest_name = options
        .dest_table
        .clone()
        .unwrap_or_else(|| source.quoted.clone());
    let dest = match crate::meta::table_info(&subscriber, SUBSCRIBER, &dest_name).await? {
        Some(dest) => dest,
        None if options.create => {
            let not_null: Vec<String> = provider
                .query_typed(NOT_NULL, &[(&source.oid, Type::OID)])
                .await
                .on(PROVIDER, "reading NOT NULL columns")?
                .iter()
                .map(|r| r.get(0))
                .collect();
            subscriber
                .batch_execute(&create_table_sql(&source, &not_null, &dest_name))
                .await
                .on(SUBSCRIBER, format!("creating {dest_name}"))?;
            require_table(&subscriber, SUBSCRIBER, &dest_name).await?
        }
        None => {
            return Err(LondisteError::NotFound {
                side: SUBSCRIBER,
                kind: "table",
                name: dest_name,
            })
        }
    };
    check_compatible(&source, &dest)?;
    let queue = config.queue.as_str();
    let event_name = source.event_name.as_str();
    let registered = subscriber
        .query_typed_opt(
            SUBSCRIBER_TABLE,
            &[(&queue, Type::TEXT), (&event_name, Type::TEXT)],
        )
        .await
        .on(SUBSCRIBER, "reading the table's registration")?;
    if registered.is_some() {
        return Err(LondisteError::TableState {
            table: event_name.to_owned(),
            problem: format!(
                "is already replicated by queue {queue}; use `londiste resync` to copy it again"
            ),
        });
    }
    let first_state = if options.skip_copy {
        TableState::Ok
    } else {
        TableState::InCopy
    };
    subscriber
        .query_typed(
            ADD_SUBSCRIBER_TABLE,
            &[
                (&queue, Type::TEXT),
                (&event_name, Type::TEXT),
                (&dest.quoted, Type::TEXT),
                (&first_state.as_str(), Type::TEXT),
                (&options.copy_condition, Type::TEXT),
            ],
        )
        .await
        .on(SUBSCRIBER, "registering the table")?;
    let consumer = config.consumer_name(&subscriber).await?;
    if let Err(err) = capture(
        &provider,
        config,
        &source,
        options.follow_key_changes,
        consumer.as_str(),
    )
    .await
    {
        subscriber
            .query_typed(
                "DELETE FROM londiste_rs.subscriber_table WHERE queue_name = $1 AND table_name = $2",
                &[(&queue, Type::TEXT), (&event_name, Type::TEXT)],
            )
            .await
            .on(SUBSCRIBER, "unregistering the table")?;
        return Err(err);
    }
    let mut report = AddedTable {
        table: event_name.to_owned(),
        rows: 0,
        copy_seconds: 0.0,
        state: first_state,
    };
    if !options.skip_copy {
        let job = CopyJob {
            queue,
            provider: &source,
            dest: &dest,
            condition: options.copy_condition.as_deref(),
            jobs: options.parallel_copy.max(1),
            progress: &options.progress,
        };
        let started = Instant::now();
        report.rows = copy_table(&config.provider, &config.subscriber, &job).await?;
        report.copy_seconds = started.elapsed().as_secs_f64();
        report.state =
            wait_for_ok(config, &provider, &subscriber, event_name, options.wait).await?;
    }
    Ok(report)
}

/// Records that `consumer` (a subscriber's worker) takes a provider table's changes; the first
/// one puts the capture triggers on it and registers it on the queue, in one transaction.
/// Returns whether the triggers were made now.
pub(crate) async fn capture(
    provider: &Client,
    config: &Config,
    source: &TableInfo,
    follow_key_changes: bool,
    consumer: &str,
) -> Result<bool> {
    let queue = config.queue.as_str();
    let mut args = quote_literal(queue);
    let ours = pgq_core::flavor(provider).await? == Flavor::Ours;
    if follow_key_changes {
        if !ours {
            return Err(LondisteError::TableState {
                table: source.event_name.clone(),
                problem: "following key changes needs the pgq-rs capture triggers; the provider \
                          runs the original pgq extension"
                    .to_owned(),
            });
        }
        args.push_str(", 'keychange'");
    }
    // Two subscribers adding one table at once: the second waits here, then joins.
    provider
        .batch_execute("BEGIN; LOCK TABLE londiste_rs.provider_table IN SHARE ROW EXCLUSIVE MODE")
        .await
        .on(PROVIDER, "locking the queue's table registry")?;
    let joined = provider
        .query_typed(
            JOIN_CAPTURE,
            &[
                (&queue, Type::TEXT),
                (&source.event_name, Type::TEXT),
                (&consumer, Type::TEXT),
            ],
        )
        .await;
    match joined {
        Ok(rows) if !rows.is_empty() => {
            provider
                .batch_execute("COMMIT")
                .await
                .on(PROVIDER, "registering the subscriber with the table")?;
            return Ok(false);
        }
        Ok(_) => {}
        Err(err) => {
            let _ = provider.batch_execute("ROLLBACK").await;
            return Err(LondisteError::Db {
                side: PROVIDER,
                op: "registering the subscriber with the table".to_owned(),
                source: err,
            });
        }
    }
    let row_trigger = quote_ident(&format!("_londiste_rs_{queue}"));
    let truncate_trigger = quote_ident(&format!("_londiste_rs_{queue}_truncate"));
    // On our schema the capture triggers are the registered ones: whoever writes the table
    // needs no pgq_writer (which would let them insert into any queue). The original
    // extension has only PGQ's, which run with the writer's rights.
    let (register, capture) = if ours {
        (
            format!(
                "SELECT pgq.register_capture({oid}::pg_catalog.oid::pg_catalog.regclass, {q});",
                oid = source.oid,
                q = quote_literal(queue),
            ),
            "pgq.registered_logutriga",
        )
    } else {
        (String::new(), "pgq.logutriga")
    };
    let sql = format!(
        "{register}
         CREATE TRIGGER {row_trigger} AFTER INSERT OR UPDATE OR DELETE ON {t}
             FOR EACH ROW EXECUTE FUNCTION {capture}({args});
         CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {t}
             FOR EACH STATEMENT EXECUTE FUNCTION {capture}({q});
         INSERT INTO londiste_rs.provider_table (queue_name, table_name, table_oid, consumers)
             VALUES ({q}, {name}, {oid}, ARRAY[{c}]);
         COMMIT;",
        t = source.quoted,
        q = quote_literal(queue),
        name = quote_literal(&source.event_name),
        oid = source.oid,
        c = quote_literal(consumer),
    );
    if let Err(err) = provider.batch_execute(&sql).await {
        let _ = provider.batch_execute("ROLLBACK").await;
        return Err(LondisteError::Db {
            side: PROVIDER,
            op: format!("adding the capture trigger to {}", source.event_name),
            source: err,
        });
    }
    Ok(true)
}

/// Records that `consumer` no longer takes a provider table's changes; the last one drops
/// the capture triggers and the registration (so does any one of a table recorded before
/// subscribers were, with no consumers listed).
pub(crate) async fn release_capture(
    provider: &Client,
    config: &Config,
    source: &TableInfo,
    consumer: &str,
) -> Result<()> {
    let left = provider
        .query_typed_opt(
            LEAVE_CAPTURE,
            &[
                (&config.queue.as_str(), Type::TEXT),
                (&source.event_name, Type::TEXT),
                (&consumer, Type::TEXT),
            ],
        )
        .await
        .on(PROVIDER, "unregistering the subscriber from the table")?
        .map_or(0, |r| r.get::<_, i32>(0));
    if left == 0 {
        remove_capture(provider, config, source).await?;
    }
    Ok(())
}

/// Waits for `ok` while a worker runs, ticking the queue so the worker gets a batch that ends
/// after the copy at once; returns the state seen last.
async fn wait_for_ok(
    config: &Config,
    provider: &Client,
    subscriber: &Client,
    table: &str,
    wait: Duration,
) -> Result<TableState> {
    let deadline = Instant::now() + wait;
    let mut last_tick = Instant::now() - Duration::from_secs(1);
    let consumer = config.consumer_name(subscriber).await?;
    loop {
        let state = table_state(subscriber, config, table).await?;
        if state == TableState::Ok
            || Instant::now() >= deadline
            || !worker_running(provider, &config.queue, &consumer).await?
        {
            return Ok(state);
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            pgq_core::force_tick(provider, &config.queue).await?;
            pgq_core::ticker(provider, &config.queue).await?;
            last_tick = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn table_state(subscriber: &Client, config: &Config, table: &str) -> Result<TableState> {
    let row = subscriber
        .query_typed_opt(
            SUBSCRIBER_TABLE,
            &[(&config.queue.as_str(), Type::TEXT), (&table, Type::TEXT)],
        )
        .await
        .on(SUBSCRIBER, "reading the table state")?
        .ok_or_else(|| LondisteError::TableState {
            table: table.to_owned(),
            problem: format!("is not replicated by queue {}", config.queue),
        })?;
    row.try_get(1).on(SUBSCRIBER, "reading the table state")
}

/// Whether a worker holds the consumer's lock.
pub(crate) async fn worker_running(
    provider: &Client,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> Result<bool> {
    let held: bool = provider
        .query_typed_one(
            WORKER_RUNNING,
            &[
                (&queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .on(PROVIDER, "probing the worker's lock")?
        .get(0);
    Ok(held)
}

/// Copies a table again: it goes back to `in-copy`, the subscriber table is emptied and
/// copied under a new snapshot, then catches up.
///
/// # Errors
///
/// [`LondisteError::TableState`] for a table not replicated; copy failures.
pub async fn resync(config: &Config, table: &str, options: &ResyncOptions) -> Result<AddedTable> {
    let provider = config.provider.connect().await?;
    let subscriber = config.subscriber.connect().await?;
    let source = require_table(&provider, PROVIDER, table).await?;
    let event_name = source.event_name.clone();
    let row = subscriber
        .query_typed_opt(
            SUBSCRIBER_TABLE,
            &[
                (&config.queue.as_str(), Type::TEXT),
                (&event_name, Type::TEXT),
            ],
        )
        .await
        .on(SUBSCRIBER, "reading the table's registration")?
        .ok_or_else(|| LondisteError::TableState {
            table: event_name.clone(),
            problem: format!("is not replicated by queue {}", config.queue),
        })?;
    let dest_name: String = row.get(0);
    let condition: Option<String> = row.get(2);
    let dest = require_table(&subscriber, SUBSCRIBER, &dest_name).await?;
    let job = CopyJob {
        queue: config.queue.as_str(),
        provider: &source,
        dest: &dest,
        condition: condition.as_deref(),
        jobs: options.parallel_copy.max(1),
        progress: &options.progress,
    };
    let started = Instant::now();
    let rows = copy_table(&config.provider, &config.subscriber, &job).await?;
    let copy_seconds = started.elapsed().as_secs_f64();
    let state = wait_for_ok(config, &provider, &subscriber, &event_name, options.wait).await?;
    Ok(AddedTable {
        table: event_name,
        rows,
        copy_seconds,
        state,
    })
}

/// Removes a table from this subscriber's replication: its registration here, and on the
/// provider this subscriber's claim on the table; the capture triggers go with the last
/// subscriber of the table on the queue. The subscriber table and its rows stay.
///
/// # Errors
///
/// [`LondisteError::TableState`] for a table not replicated.
pub async fn remove_table(config: &Config, table: &str) -> Result<()> {
    let provider = config.provider.connect().await?;
    let subscriber = config.subscriber.connect().await?;
    let source = require_table(&provider, PROVIDER, table).await?;
    let queue = config.queue.as_str();
    let event_name = source.event_name.as_str();
    let removed = subscriber
        .query_typed(
            "DELETE FROM londiste_rs.subscriber_table WHERE queue_name = $1 AND table_name = $2 RETURNING 1",
            &[(&queue, Type::TEXT), (&event_name, Type::TEXT)],
        )
        .await
        .on(SUBSCRIBER, "unregistering the table")?;
    let consumer = config.consumer_name(&subscriber).await?;
    release_capture(&provider, config, &source, consumer.as_str()).await?;
    if removed.is_empty() {
        return Err(LondisteError::TableState {
            table: event_name.to_owned(),
            problem: format!("is not replicated by queue {queue}"),
        });
    }
    Ok(())
}

/// Drops a provider table's capture triggers and its registration on the queue, in one
/// transaction.
pub(crate) async fn remove_capture(
    provider: &Client,
    config: &Config,
    source: &TableInfo,
) -> Result<()> {
    let ours = pgq_core::flavor(provider).await? == Flavor::Ours;
    let sql = format!(
        "BEGIN; {} COMMIT;",
        remove_capture_sql(
            config.queue.as_str(),
            &source.quoted,
            &source.event_name,
            source.oid,
            ours
        )
    );
    if let Err(err) = provider.batch_execute(&sql).await {
        let _ = provider.batch_execute("ROLLBACK").await;
        return Err(LondisteError::Db {
            side: PROVIDER,
            op: format!("removing the capture trigger of {}", source.event_name),
            source: err,
        });
    }
    Ok(())
}

/// The statements that drop a table's capture triggers (`quoted`, named `event_name` in the
/// queue's registry) and unregister it from `queue`: `pgq.unregister_capture` too on our
/// schema (`ours`).
pub(crate) fn remove_capture_sql(
    queue: &str,
    quoted: &str,
    event_name: &str,
    oid: u32,
    ours: bool,
) -> String {
    let unregister = if ours {
        format!(
            "SELECT pgq.unregister_capture({oid}::pg_catalog.oid::pg_catalog.regclass, {});",
            quote_literal(queue)
        )
    } else {
        String::new()
    };
    format!(
        "DROP TRIGGER IF EXISTS {} ON {quoted};
         DROP TRIGGER IF EXISTS {} ON {quoted};
         {unregister}
         DELETE FROM londiste_rs.provider_table WHERE queue_name = {} AND table_name = {};",
        quote_ident(&format!("_londiste_rs_{queue}")),
        quote_ident(&format!("_londiste_rs_{queue}_truncate")),
        quote_literal(queue),
        quote_literal(event_name),
    )
}

/// Adds sequences: the worker copies each one's value forward with every batch.
///
/// # Errors
///
/// [`LondisteError::NotFound`] when a sequence is missing on either side.
pub async fn add_sequences(config: &Config, sequences: &[String]) -> Result<()> {
    let provider = config.provider.connect().await?;
    let subscriber = config.subscriber.connect().await?;
    let queue = config.queue.as_str();
    let resolve = "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.oid = pg_catalog.to_regclass($1) AND c.relkind = 'S'";
    for seq in sequences {
        let missing = |side| LondisteError::NotFound {
            side,
            kind: "sequence",
            name: seq.clone(),
        };
        let on_provider = provider
            .query_typed_opt(resolve, &[(&seq, Type::TEXT)])
            .await
            .on(PROVIDER, "looking up a sequence")?
            .ok_or_else(|| missing(PROVIDER))?;
        let on_subscriber = subscriber
            .query_typed_opt(resolve, &[(&seq, Type::TEXT)])
            .await
            .on(SUBSCRIBER, "looking up a sequence")?
            .ok_or_else(|| missing(SUBSCRIBER))?;
        let name: String = on_provider.get(1);
        let oid: u32 = on_provider.get(0);
        let dest: String = on_subscriber.get(1);
        provider
            .query_typed(
                "INSERT INTO londiste_rs.provider_seq (queue_name, seq_name, seq_oid) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[(&queue, Type::TEXT), (&name, Type::TEXT), (&oid, Type::OID)],
            )
            .await
            .on(PROVIDER, "registering a sequence")?;
        subscriber
            .query_typed(
                "INSERT INTO londiste_rs.subscriber_seq (queue_name, seq_name, dest_seq) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[(&queue, Type::TEXT), (&name, Type::TEXT), (&dest, Type::TEXT)],
            )
            .await
            .on(SUBSCRIBER, "registering a sequence")?;
    }
    Ok(())
}

/// The subscribed tables and their states.
///
/// # Errors
///
/// Connection failures; a subscriber without the replicator's schema.
pub async fn tables(config: &Config) -> Result<Vec<TableStatus>> {
    let subscriber = config.subscriber.connect().await?;
    list_tables(&subscriber, config).await
}

pub(crate) async fn list_tables(subscriber: &Client, config: &Config) -> Result<Vec<TableStatus>> {
    subscriber
        .query_typed(TABLES, &[(&config.queue.as_str(), Type::TEXT)])
        .await
        .on(SUBSCRIBER, "listing tables")?
        .iter()
        .map(|r| {
            Ok(TableStatus {
                table: r.get(0),
                dest_table: r.get(1),
                state: r.try_get(2).on(SUBSCRIBER, "reading table states")?,
                copy_rows: r.get(3),
                copy_seconds: r.get(4),
                state_changed: r.get(5),
            })
        })
        .collect()
}

/// Lag, pending events, the last batch and the tables.
///
/// # Errors
///
/// Connection failures; an unknown queue or consumer.
pub async fn status(config: &Config) -> Result<Status> {
    let provider = config.provider.connect().await?;
    let subscriber = config.subscriber.connect().await?;
    let consumer = config.consumer_name(&subscriber).await?;
    let info = pgq_core::consumer_info(&provider, Some(&config.queue), Some(&consumer))
        .await?
        .into_iter()
        .next();
    let worker = subscriber
        .query_typed_opt(
            WORKER,
            &[
                (&config.queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .on(SUBSCRIBER, "reading the worker position")?;
    Ok(Status {
        queue: config.queue.to_string(),
        consumer: consumer.to_string(),
        worker_running: worker_running(&provider, &config.queue, &consumer).await?,
        lag_seconds: info
            .as_ref()
            .and_then(|i| i.lag)
            .map(|l| l.as_seconds_f64()),
        pending_events: info.as_ref().and_then(|i| i.pending_events),
        last_tick: worker.as_ref().and_then(|w| w.get(0)),
        last_batch_at: worker.as_ref().and_then(|w| w.get(1)),
        tables: list_tables(&subscriber, config).await?,
    })
}
