//! The ticker's side of PGQ's SQL API: who ticks a database (the ticker lock), a ticker pass
//! (`pgq.catchup_ticker`, `pgq.ticker`), the tick announcements on [`TICK_CHANNEL`], and the
//! maintenance (`pgq.maint_operations`, the functions and `VACUUM`s it lists,
//! `pgq.maint_retry_events`).
//!
//! These functions say what the database answered; the daemon (`pgq-ticker`) decides what to
//! call when, in which transaction, and what a failure means (one queue's, or the pass's). Queue
//! names here are the database's own (any text), not [`QueueName`](crate::QueueName)s checked
//! for printing.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, SimpleQueryMessage};

use crate::error::{DbContext, Error, Result};
use crate::ident::quote_ident;
use crate::ids::TickId;
use crate::queue::tick_named;

/// The channel ticks are announced on; the payload is the queue name. The pgq-rs schema
/// announces every tick itself (a trigger on `pgq.tick`); elsewhere the ticker does it
/// ([`announce_ticks`]).
pub const TICK_CHANNEL: &str = "pgq_tick";

/// The session advisory lock a ticker holds on its database, so that two tickers never tick
/// one database at once (ASCII `pgq_tick`).
pub const TICKER_LOCK_KEY: i64 = 0x7067_715f_7469_636b;

// language=SQL
const LISTEN_TICKS: &str = "LISTEN pgq_tick";

// language=SQL
const TICKER_SUPPORT: &str = "\
SELECT pg_catalog.current_database()::text,
       pg_catalog.to_regprocedure('pgq.ticker()') IS NOT NULL,
       pg_catalog.to_regprocedure('pgq.catchup_ticker()') IS NOT NULL";

// language=SQL
const TRY_TICKER_LOCK: &str = "SELECT pg_catalog.pg_try_advisory_lock($1)";

// A bigint advisory key shows in pg_locks as classid (high half), objid (low half), objsubid 1.
// language=SQL
const TICKER_HOLDER: &str = "\
SELECT l.pid, coalesce(a.application_name, ''), pg_catalog.host(a.client_addr), a.backend_start
  FROM pg_catalog.pg_locks l
  LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_catalog.pg_database
                      WHERE datname = pg_catalog.current_database())
   AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid";

// Catch-up cuts first, then PGQ's tick rule, in one transaction (a simple query of two
// statements is one transaction) and one round trip.
// language=SQL
const PASS_WITH_CATCHUP: &str = "SELECT pgq.catchup_ticker(); SELECT pgq.ticker()";

// PGQ's tick rule queue by queue, as pgq.ticker() does, so the ticked queues are known. CASE
// keeps paused and externally ticked queues away from pgq.ticker(text), which would raise.
// language=SQL
const PASS_PER_QUEUE: &str = "\
SELECT queue_name,
       CASE WHEN NOT queue_external_ticker AND NOT queue_ticker_paused
            THEN pgq.ticker(queue_name) END
  FROM pgq.queue
 ORDER BY queue_name";

// language=SQL
const TICKED_QUEUES: &str = "\
SELECT queue_name FROM pgq.queue
 WHERE NOT queue_external_ticker AND NOT queue_ticker_paused
 ORDER BY queue_name";

// language=SQL
const CATCHUP_QUEUE: &str = "SELECT pgq.catchup_ticker($1)::int8";

// language=SQL
const NOTIFY: &str = "SELECT pg_catalog.pg_notify($1, q) FROM pg_catalog.unnest($2::text[]) AS q";

// language=SQL
const MAINT_OPERATIONS: &str = "SELECT func_name, func_arg FROM pgq.maint_operations()";

// Whether the maintenance function $1.$2 may be called: it lives in the pgq, pgq_node or
// londiste schema, and that schema and every function of that name in it belong to the owner
// of schema pgq. Whoever owns a database may create a schema named londiste in it, and the
// daemon (often a superuser) would run their code; the original extension's
// pgq.maint_operations lists queue_extra_maint and such hooks unchecked.
// language=SQL
const MAINT_TRUSTED: &str = "\
SELECT coalesce(bool_and(p.proowner = own.nspowner AND n.nspowner = own.nspowner), false)
  FROM pg_catalog.pg_namespace own, pg_catalog.pg_namespace n
  JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid
 WHERE own.nspname = 'pgq' AND n.nspname IN ('pgq', 'pgq_node', 'londiste')
   AND n.nspname = $1 AND p.proname = $2";

// language=SQL
const RETRY_EVENTS: &str = "SELECT pgq.maint_retry_events()::int8";

/// What a database offers a ticker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TickerSupport {
    /// The database name.
    pub database: String,
    /// It has PGQ (`pgq.ticker()`): the pgq-rs schema or the original extension.
    pub pgq: bool,
    /// It cuts a backlog into catch-up ticks (`pgq.catchup_ticker()`, the pgq-rs schema).
    pub catchup: bool,
}

/// Tells whether the database has PGQ and catch-up ticks.
///
/// # Errors
///
/// [`Error::Db`] with op `probe`.
pub async fn ticker_support(client: &impl GenericClient) -> Result<TickerSupport> {
    const OP: &str = "probe";
    let row = client.query_typed_one(TICKER_SUPPORT, &[]).await.op(OP)?;
    Ok(TickerSupport {
        database: row.try_get(0).op(OP)?,
        pgq: row.try_get(1).op(OP)?,
        catchup: row.try_get(2).op(OP)?,
    })
}

/// Takes the database's ticker lock ([`TICKER_LOCK_KEY`]) for the session, if it is free.
/// Returns whether it was taken; it is held until the session ends.
///
/// # Errors
///
/// [`Error::Db`] with op `taking the ticker lock`.
pub async fn try_ticker_lock(client: &impl GenericClient) -> Result<bool> {
    const OP: &str = "taking the ticker lock";
    client
        .query_typed_one(TRY_TICKER_LOCK, &[(&TICKER_LOCK_KEY, Type::INT8)])
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}

/// The session that holds a database's ticker lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TickerHolder {
    /// Its backend's process id.
    pub pid: i32,
    /// Its `application_name` (`pgq-ticker` unless its connection string set another).
    pub application_name: String,
    /// Its client address; `None` over a Unix socket or when not visible to this role.
    pub client_addr: Option<String>,
    /// When it connected.
    pub backend_start: Option<DateTime<Utc>>,
}

/// The session holding the ticker lock of the database `client` is connected to (a ticker at
/// work), if any.
///
/// # Errors
///
/// [`Error::Db`] when the statement fails.
pub async fn ticker_holder(client: &impl GenericClient) -> Result<Option<TickerHolder>> {
    const OP: &str = "finding the ticker";
    client
        .query_typed_opt(TICKER_HOLDER, &[(&TICKER_LOCK_KEY, Type::INT8)])
        .await
        .op(OP)?
        .map(|row| {
            Ok(TickerHolder {
                pid: row.try_get(0).op(OP)?,
                application_name: row.try_get(1).op(OP)?,
                client_addr: row.try_get(2).op(OP)?,
                backend_start: row.try_get(3).op(OP)?,
            })
        })
        .transpose()
}

/// LISTENs on [`TICK_CHANNEL`], so that the session hears of each tick (give it a dedicated
/// connection, [`Dsn::connect_with_notifications`](crate::Dsn::connect_with_notifications)).
///
/// # Errors
///
/// [`Error::Db`] with op `listen`.
pub async fn listen_ticks(client: &impl GenericClient) -> Result<()> {
    client.batch_execute(LISTEN_TICKS).await.op("listen")
}

/// Announces ticks on [`TICK_CHANNEL`], one notification per queue, sent when the transaction
/// commits; for databases whose schema does not (the original extension, an older pgq-rs).
///
/// # Errors
///
/// [`Error::Db`] with op `announcing ticks`.
pub async fn announce_ticks(client: &impl GenericClient, queues: &[String]) -> Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    client
        .execute_typed(
            NOTIFY,
            &[(&TICK_CHANNEL, Type::TEXT), (&queues, Type::TEXT_ARRAY)],
        )
        .await
        .op("announcing ticks")?;
    Ok(())
}

/// What [`ticker_pass_with_catchup`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TickerPass {
    /// Cuts written by `pgq.catchup_ticker()`.
    pub catchup_ticks: u64,
    /// Queues `pgq.ticker()` ticked by PGQ's rule.
    pub queues: u64,
}

/// A ticker pass over every queue on the pgq-rs schema: `pgq.catchup_ticker()`, then
/// `pgq.ticker()`, in one transaction of its own and one round trip (run it outside a
/// transaction). The schema announces the ticks.
///
/// # Errors
///
/// [`Error::Db`] with op `ticker pass`; nothing was ticked then.
pub async fn ticker_pass_with_catchup(client: &impl GenericClient) -> Result<TickerPass> {
    let messages = client
        .simple_query(PASS_WITH_CATCHUP)
        .await
        .op("ticker pass")?;
    let mut values = messages.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(row) => {
            Some(row.get(0).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        }
        _ => None,
    });
    Ok(TickerPass {
        catchup_ticks: values.next().unwrap_or(0),
        queues: values.next().unwrap_or(0),
    })
}

/// A ticker pass by PGQ's rule alone, queue by queue in one statement (what `pgq.ticker()`
/// does), for schemas without catch-up ticks. Returns the queues that got a tick, by name, for
/// [`announce_ticks`].
///
/// # Errors
///
/// [`Error::Db`] with op `ticker pass`.
pub async fn ticker_pass_per_queue(client: &impl GenericClient) -> Result<Vec<String>> {
    const OP: &str = "ticker pass";
    let rows = client.query_typed(PASS_PER_QUEUE, &[]).await.op(OP)?;
    let mut ticked = Vec::new();
    for row in &rows {
        if row.try_get::<_, Option<i64>>(1).op(OP)?.is_some() {
            ticked.push(row.try_get::<_, String>(0).op(OP)?);
        }
    }
    Ok(ticked)
}

/// The queues a ticker ticks (neither paused nor ticked externally), by name.
///
/// # Errors
///
/// [`Error::Db`] with op `listing the queues`.
pub async fn tickable_queues(client: &impl GenericClient) -> Result<Vec<String>> {
    const OP: &str = "listing the queues";
    client
        .query_typed(TICKED_QUEUES, &[])
        .await
        .op(OP)?
        .iter()
        .map(|row| row.try_get(0).op(OP))
        .collect()
}

/// One queue's catch-up cuts (`pgq.catchup_ticker(queue)`, the pgq-rs schema): run it before
/// [`tick_queue`] in the same transaction. Returns the cuts written.
///
/// # Errors
///
/// [`Error::Db`] with op `ticking a queue`.
pub async fn catchup_ticker(client: &impl GenericClient, queue: &str) -> Result<u64> {
    const OP: &str = "ticking a queue";
    let cuts: Option<i64> = client
        .query_typed_one(CATCHUP_QUEUE, &[(&queue, Type::TEXT)])
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)?;
    Ok(cuts.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// One queue's tick by PGQ's rule (`pgq.ticker(queue)`, as [`ticker`](crate::ticker) for a
/// name from the database). Returns the new tick, `None` when none was due.
///
/// # Errors
///
/// [`Error::QueueNotFound`] when the queue is gone; [`Error::Db`] with op `ticking a queue`,
/// e.g. PGQ's exception for a paused queue.
pub async fn tick_queue(client: &impl GenericClient, queue: &str) -> Result<Option<TickId>> {
    tick_named(client, queue, "ticking a queue")
        .await?
        .ok_or_else(|| Error::QueueNotFound {
            queue: queue.to_owned(),
        })
}

/// One row of `pgq.maint_operations()`: a maintenance function to call with the argument, or
/// `vacuum` with the table to vacuum.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintOperation {
    /// `func_name`: `schema.name` of a function, or `vacuum`.
    pub func: String,
    /// `func_arg`: the function's argument (a queue name), or the table to vacuum.
    pub arg: Option<String>,
}

/// The maintenance operations the database lists (`pgq.maint_operations()`), as pgqd reads
/// them. Names come from the database: check them with [`MaintName::parse`] before use.
///
/// # Errors
///
/// [`Error::Db`] with op `listing maintenance operations`.
pub async fn maint_operations(client: &impl GenericClient) -> Result<Vec<MaintOperation>> {
    const OP: &str = "listing maintenance operations";
    client
        .query_typed(MAINT_OPERATIONS, &[])
        .await
        .op(OP)?
        .iter()
        .map(|row| {
            Ok(MaintOperation {
                func: row
                    .try_get::<_, Option<String>>(0)
                    .op(OP)?
                    .unwrap_or_default(),
                arg: row.try_get(1).op(OP)?,
            })
        })
        .collect()
}

/// A `schema.name` the database gave (a maintenance function, a table to vacuum), accepted
/// only in lower-case letters, digits and `_`: such a name means the same quoted or not, so
/// what runs is what the database named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintName {
    schema: String,
    name: String,
}

impl MaintName {
    /// Accepts `text` when it matches `^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$`.
    pub fn parse(text: &str) -> Option<MaintName> {
        let (schema, name) = text.split_once('.')?;
        is_plain_qualified(text).then(|| MaintName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The function's or table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for MaintName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Whether the maintenance function may be called: it lives in the pgq, pgq_node or londiste
/// schema, and that schema and every function of that name in it belong to the owner of
/// schema pgq.
///
/// # Errors
///
/// [`Error::Db`] with op `checking a maintenance function`.
pub async fn maint_function_trusted(client: &impl GenericClient, func: &MaintName) -> Result<bool> {
    const OP: &str = "checking a maintenance function";
    client
        .query_typed_one(
            MAINT_TRUSTED,
            &[(&func.schema(), Type::TEXT), (&func.name(), Type::TEXT)],
        )
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)
}

/// Calls a maintenance function once, with its argument when it has one. Returns whether it
/// asks to be called again (it returned a positive number, as pgqd reads it).
///
/// # Errors
///
/// [`Error::Db`] with op `maintenance operation`.
pub async fn call_maint_function(
    client: &impl GenericClient,
    func: &MaintName,
    arg: Option<&str>,
) -> Result<bool> {
    const OP: &str = "maintenance operation";
    let quoted = quote_qualified(func);
    let (sql, params): (String, Vec<(&(dyn ToSql + Sync), Type)>) = match &arg {
        Some(arg) => (
            format!("SELECT {quoted}($1)::text"),
            vec![(arg, Type::TEXT)],
        ),
        None => (format!("SELECT {quoted}()::text"), Vec::new()),
    };
    Ok(client
        .query_typed_one(&sql, &params)
        .await
        .op(OP)?
        .try_get::<_, Option<String>>(0)
        .op(OP)?
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|n| n > 0))
}

/// `VACUUM`s a table that `pgq.maint_operations()` listed.
///
/// # Errors
///
/// [`Error::Db`] with op `vacuum`.
pub async fn vacuum_table(client: &impl GenericClient, table: &MaintName) -> Result<()> {
    client
        .batch_execute(&format!("VACUUM {}", quote_qualified(table)))
        .await
        .op("vacuum")
}

/// Puts due retry events back into their queues, one call of `pgq.maint_retry_events()` (a
/// transaction of its own outside one). Returns how many it moved; call again while positive.
///
/// # Errors
///
/// [`Error::Db`] with op `maint_retry_events`.
pub async fn maint_retry_events(client: &impl GenericClient) -> Result<u64> {
    const OP: &str = "maint_retry_events";
    let moved: Option<i64> = client
        .query_typed_one(RETRY_EVENTS, &[])
        .await
        .op(OP)?
        .try_get(0)
        .op(OP)?;
    Ok(moved.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// Whether a name from the database is `schema.name` in lower-case letters, digits and `_`
/// (`^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$`).
fn is_plain_qualified(name: &str) -> bool {
    let plain = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    name.split_once('.')
        .is_some_and(|(schema, object)| plain(schema) && plain(object))
}

/// `schema.name` quoted.
fn quote_qualified(name: &MaintName) -> String {
    format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_qualified_names_pass() {
        assert!(is_plain_qualified("pgq.maint_rotate_tables_step1"));
        assert!(is_plain_qualified("_x.y9"));
        assert!(is_plain_qualified("pgq_ext.completed_tick"));
        for bad in [
            "maint",
            "pgq.",
            ".x",
            "pgq.Tick",
            "pgq.x; DROP TABLE t",
            "pgq.x()",
            "a.b.c",
            "9a.b",
            "pgq.\"x\"",
            "pgq .x",
        ] {
            assert!(!is_plain_qualified(bad), "{bad}");
            assert_eq!(MaintName::parse(bad), None, "{bad}");
        }
        let tick = MaintName::parse("pgq.tick").expect("plain");
        assert_eq!(quote_qualified(&tick), "\"pgq\".\"tick\"");
        assert_eq!(tick.to_string(), "pgq.tick");
        assert_eq!(MaintName::parse("pgq.x;y"), None);
    }

    #[test]
    fn listen_names_the_tick_channel() {
        assert_eq!(LISTEN_TICKS, format!("LISTEN {TICK_CHANNEL}"));
    }
}
