//! One database's ticker: a dedicated connection holding the ticker lock, and the steps
//! (ticker pass, maintenance, retry) the daemon repeats.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgq_core::{quote_ident, Dsn, Flavor};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::error::{DbContext as _, Result, TickerError};

/// The session advisory lock a ticker holds on its database, so that two tickers never tick
/// one database at once (ASCII `pgq_tick`).
pub const TICKER_LOCK_KEY: i64 = 0x7067_715f_7469_636b;

/// The channel ticks are announced on; the payload is the queue name.
pub const TICK_CHANNEL: &str = "pgq_tick";

/// How often one maintenance function is called in a row while it asks to be called again.
const MAX_REPEATS: u32 = 100;

// language=SQL
const PROBE: &str = "\
SELECT pg_catalog.to_regprocedure('pgq.ticker()') IS NOT NULL,
       pg_catalog.to_regprocedure('pgq.catchup_ticker()') IS NOT NULL,
       pg_catalog.pg_backend_pid()";

// language=SQL
const TRY_LOCK: &str = "SELECT pg_catalog.pg_try_advisory_lock($1)";

// language=SQL
const NAME_SESSION: &str = "\
SELECT pg_catalog.set_config('application_name', 'pgq-ticker', false)
 WHERE pg_catalog.current_setting('application_name') = ''";

// The pass on the pgq-rs schema: catch-up cuts first, then PGQ's tick rule, in one transaction
// (a simple query of two statements is one transaction). Its insert trigger on pgq.tick
// announces the ticks.
// language=SQL
const PASS_WITH_CATCHUP: &str = "SELECT pgq.catchup_ticker(); SELECT pgq.ticker()";

// The pass elsewhere: PGQ's tick rule queue by queue, as pgq.ticker() does, so the ticked
// queues are known and can be announced after the commit. CASE keeps paused and externally
// ticked queues away from pgq.ticker(text), which would raise.
// language=SQL
const PASS_PER_QUEUE: &str = "\
SELECT queue_name,
       CASE WHEN NOT queue_external_ticker AND NOT queue_ticker_paused
            THEN pgq.ticker(queue_name) END
  FROM pgq.queue
 ORDER BY queue_name";

// The queues a pass ticks, for a pass queue by queue.
// language=SQL
const TICKED_QUEUES: &str = "\
SELECT queue_name FROM pgq.queue
 WHERE NOT queue_external_ticker AND NOT queue_ticker_paused
 ORDER BY queue_name";

// One queue's catch-up cuts, before its tick rule in the same transaction.
// language=SQL
const CATCHUP_QUEUE: &str = "SELECT pgq.catchup_ticker($1)::int8";

// One queue's tick rule: the new tick's id, or NULL when no tick was due.
// language=SQL
const TICK_QUEUE: &str = "SELECT pgq.ticker($1)";

// language=SQL
const NOTIFY: &str = "SELECT pg_catalog.pg_notify($1, q) FROM pg_catalog.unnest($2::text[]) AS q";

// language=SQL
const MAINT_OPERATIONS: &str = "SELECT func_name, func_arg FROM pgq.maint_operations()";

// language=SQL
const RETRY_EVENTS: &str = "SELECT pgq.maint_retry_events()::int8";

/// How [`RETRY_EVENTS`] is named in the log.
const RETRY_OP: &str = "pgq.maint_retry_events";

// language=SQL
const CANCEL_BACKEND: &str = "SELECT pg_catalog.pg_cancel_backend($1)";

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

/// What one ticker pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TickReport {
    /// Tick rows written, catch-up cuts included.
    pub ticks: u64,
    /// Queues that got a tick by PGQ's rule (`ticker_max_count`, `ticker_max_lag`,
    /// `ticker_idle_period`).
    pub queues: u64,
    /// Of [`ticks`](Self::ticks), the cuts written by `pgq.catchup_ticker()` so that a
    /// backlog is split into batches of about `ticker_max_count` events.
    pub catchup_ticks: u64,
    /// Queues whose tick failed (logged once per distinct error; retried next pass). The
    /// other queues of the database were ticked all the same.
    pub failed: u64,
}

/// What one maintenance round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintReport {
    /// Maintenance function calls made (rotation steps, the hooks of other PGQ tools),
    /// repeats included.
    pub calls: u64,
    /// Tables vacuumed.
    pub vacuumed: u64,
    /// Operations that failed, the retry step included (logged once per distinct error; the
    /// others still ran).
    pub failed: u64,
    /// Operations refused (logged the first time): a function or table name the database gave
    /// that does not look like `schema.name` in lower case, or a function outside the pgq,
    /// pgq_node and londiste schemas or not of the owner of schema pgq.
    pub refused: u64,
    /// Retry events put back into their queues.
    pub retried: u64,
}

/// The ticker of one database, on a dedicated connection that holds the database's ticker
/// lock (a session advisory lock, [`TICKER_LOCK_KEY`]) for as long as it lives. Dropping it
/// closes the connection and frees the lock.
///
/// On the pgq-rs schema a pass writes catch-up ticks (`pgq.catchup_ticker()`) before PGQ's tick
/// rule (`pgq.ticker()`), and the schema announces each tick on the `pgq_tick` channel. On the
/// original PGQ extension (or an older pgq-rs schema) a pass applies PGQ's tick rule only, and
/// the ticker sends the announcements itself after the commit.
#[derive(Debug)]
pub struct DatabaseTicker {
    client: Client,
    dsn: Dsn,
    db: String,
    flavor: Flavor,
    catchup: bool,
    pid: i32,
    /// Queues whose tick failed, with the error last logged for each: while any is here,
    /// passes go queue by queue.
    failing: BTreeMap<String, String>,
    /// Maintenance operations (function or `vacuum`, argument) that failed, with the error
    /// last logged for each.
    failing_ops: BTreeMap<(String, String), String>,
    /// Maintenance operations refused so far (each is logged once).
    refused_ops: BTreeSet<String>,
}

impl DatabaseTicker {
    /// Connects, checks that the database has PGQ and takes its ticker lock. The session's
    /// `search_path` is pinned to `pg_catalog, pg_temp` ([`Dsn::with_pinned_search_path`]):
    /// what the database's owner sets as the default path never reaches the ticker.
    ///
    /// # Errors
    ///
    /// [`TickerError::SchemaMissing`] when the database has no PGQ;
    /// [`TickerError::AlreadyTicked`] when another ticker holds the lock;
    /// [`TickerError::Core`] when the connection fails; [`TickerError::Db`] when a statement
    /// fails.
    pub async fn connect(dsn: &Dsn) -> Result<DatabaseTicker> {
        let dsn = dsn.with_pinned_search_path();
        let db = dsn.dbname().to_owned();
        let client = dsn.connect().await?;
        let row = client.query_typed_one(PROBE, &[]).await.op(&db, "probe")?;
        let has_pgq: bool = row.try_get(0).op(&db, "probe")?;
        if !has_pgq {
            return Err(TickerError::SchemaMissing { db });
        }
        let catchup: bool = row.try_get(1).op(&db, "probe")?;
        let pid: i32 = row.try_get(2).op(&db, "probe")?;
        let flavor = pgq_core::flavor(&client).await?;
        let locked: bool = client
            .query_typed_one(TRY_LOCK, &[(&TICKER_LOCK_KEY, Type::INT8)])
            .await
            .op(&db, "taking the ticker lock")?
            .try_get(0)
            .op(&db, "taking the ticker lock")?;
        if !locked {
            return Err(TickerError::AlreadyTicked { db });
        }
        client
            .execute_typed(NAME_SESSION, &[])
            .await
            .op(&db, "setting application_name")?;
        Ok(DatabaseTicker {
            client,
            dsn,
            db,
            flavor,
            catchup,
            pid,
            failing: BTreeMap::new(),
            failing_ops: BTreeMap::new(),
            refused_ops: BTreeSet::new(),
        })
    }

    /// The database name.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// Which PGQ the database has.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Whether passes write catch-up ticks (the database has `pgq.catchup_ticker()`).
    pub fn catches_up(&self) -> bool {
        self.catchup
    }

    /// Whether the connection is gone; the ticker must then be replaced.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// One ticker pass over every queue of the database: in one transaction, or, when that
    /// fails or a queue failed before, queue by queue, each in a transaction of its own, so
    /// that one broken queue never keeps the others from their ticks. A failing queue is
    /// logged when its error first appears or changes, and tried again at the next pass.
    ///
    /// # Errors
    ///
    /// [`TickerError::Db`] when the connection is lost, the pass is cancelled or the queues
    /// cannot be listed; a failing queue is counted in [`TickReport::failed`] instead.
    pub async fn tick_once(&mut self) -> Result<TickReport> {
        let report = if self.failing.is_empty() {
            match self.pass_whole().await {
                Ok(report) => report,
                Err(err) if ends_the_pass(&err) => return Err(err),
                Err(err) => {
                    tracing::debug!(db = %self.db, error = %crate::error::Chain(&err), "ticker pass failed; ticking queue by queue");
                    self.pass_by_queue().await?
                }
            }
        } else {
            self.pass_by_queue().await?
        };
        if report.catchup_ticks > 0 {
            tracing::info!(
                db = %self.db,
                catchup_ticks = report.catchup_ticks,
                "backlog cut into catch-up ticks"
            );
        }
        tracing::debug!(db = %self.db, ticks = report.ticks, queues = report.queues, failed = report.failed, "ticker pass");
        Ok(report)
    }

    /// Every queue in one transaction.
    async fn pass_whole(&mut self) -> Result<TickReport> {
        const OP: &str = "ticker pass";
        if self.catchup {
            let messages = self
                .client
                .simple_query(PASS_WITH_CATCHUP)
                .await
                .op(&self.db, OP)?;
            let mut values = messages.iter().filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
                }
                _ => None,
            });
            let catchup_ticks = values.next().unwrap_or(0);
            let queues = values.next().unwrap_or(0);
            return Ok(TickReport {
                ticks: catchup_ticks + queues,
                queues,
                catchup_ticks,
                failed: 0,
            });
        }
        let rows = self
            .client
            .query_typed(PASS_PER_QUEUE, &[])
            .await
            .op(&self.db, OP)?;
        let mut ticked = Vec::new();
        for row in &rows {
            if row.try_get::<_, Option<i64>>(1).op(&self.db, OP)?.is_some() {
                ticked.push(row.try_get::<_, String>(0).op(&self.db, OP)?);
            }
        }
        self.announce(&ticked).await?;
        let n = u64::try_from(ticked.len()).unwrap_or(u64::MAX);
        Ok(TickReport {
            ticks: n,
            queues: n,
            catchup_ticks: 0,
            failed: 0,
        })
    }

    /// Each queue in a transaction of its own; a failing one is logged and counted.
    async fn pass_by_queue(&mut self) -> Result<TickReport> {
        let queues: Vec<String> = self
            .client
            .query_typed(TICKED_QUEUES, &[])
            .await
            .op(&self.db, "listing the queues")?
            .iter()
            .map(|row| row.try_get(0).op(&self.db, "listing the queues"))
            .collect::<Result<_>>()?;
        self.failing.retain(|queue, _| queues.contains(queue));
        let mut report = TickReport::default();
        let mut ticked = Vec::new();
        for queue in queues {
            match self.tick_queue(&queue).await {
                Ok((catchup_ticks, tick)) => {
                    report.catchup_ticks += catchup_ticks;
                    report.ticks += catchup_ticks + u64::from(tick);
                    if tick {
                        report.queues += 1;
                        ticked.push(queue.clone());
                    }
                    if self.failing.remove(&queue).is_some() {
                        tracing::info!(db = %self.db, queue, "queue ticks again");
                    }
                }
                Err(err) if ends_the_pass(&err) => return Err(err),
                Err(err) => {
                    report.failed += 1;
                    let text = crate::error::Chain(&err).to_string();
                    if self.failing.get(&queue) != Some(&text) {
                        tracing::error!(db = %self.db, queue, error = %text, "cannot tick the queue; the others are ticked, it is tried again every pass");
                        self.failing.insert(queue, text);
                    }
                }
            }
        }
        if !self.catchup {
            self.announce(&ticked).await?;
        }
        Ok(report)
    }

    /// One queue's pass: its catch-up cuts (where the schema has them) and its tick rule, in
    /// one transaction. Returns the cuts written and whether the rule ticked.
    async fn tick_queue(&mut self, queue: &str) -> Result<(u64, bool)> {
        const OP: &str = "ticking a queue";
        let tx = self.client.transaction().await.op(&self.db, OP)?;
        let mut catchup_ticks = 0;
        if self.catchup {
            let cuts: Option<i64> = tx
                .query_typed_one(CATCHUP_QUEUE, &[(&queue, Type::TEXT)])
                .await
                .op(&self.db, OP)?
                .try_get(0)
                .op(&self.db, OP)?;
            catchup_ticks = cuts.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        }
        let tick: Option<i64> = tx
            .query_typed_one(TICK_QUEUE, &[(&queue, Type::TEXT)])
            .await
            .op(&self.db, OP)?
            .try_get(0)
            .op(&self.db, OP)?;
        tx.commit().await.op(&self.db, OP)?;
        Ok((catchup_ticks, tick.is_some()))
    }

    /// Announces ticks where the schema does not (the original extension, an older pgq-rs).
    async fn announce(&self, ticked: &[String]) -> Result<()> {
        if ticked.is_empty() {
            return Ok(());
        }
        self.client
            .execute_typed(
                NOTIFY,
                &[(&TICK_CHANNEL, Type::TEXT), (&ticked, Type::TEXT_ARRAY)],
            )
            .await
            .op(&self.db, "announcing ticks")?;
        Ok(())
    }

    /// One maintenance round as pgqd does it: every operation `pgq.maint_operations()` lists,
    /// each in its own transaction (`vacuum` rows run `VACUUM` on the table, the others call
    /// the function with the queue name, again while it returns a positive number), then
    /// [`retry_once`](Self::retry_once). Function and table names come from the database and
    /// must look like `schema.name` in lower case, or the row is refused.
    ///
    /// # Errors
    ///
    /// [`TickerError::Db`] when the operations cannot be listed or the connection is lost; a
    /// failing operation (the retry step included) is counted in [`MaintReport::failed`] and
    /// logged when its error first appears or changes.
    pub async fn maintain_once(&mut self) -> Result<MaintReport> {
        let mut report = MaintReport::default();
        let ops = self
            .client
            .query_typed(MAINT_OPERATIONS, &[])
            .await
            .op(&self.db, "listing maintenance operations")?;
        let ops = ops
            .iter()
            .map(|row| {
                Ok::<_, TickerError>((
                    row.try_get::<_, Option<String>>(0)
                        .op(&self.db, "listing maintenance operations")?,
                    row.try_get::<_, Option<String>>(1)
                        .op(&self.db, "listing maintenance operations")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut seen = Vec::with_capacity(ops.len() + 1);
        for (func, arg) in ops {
            let func = func.unwrap_or_default();
            let outcome = if func == "vacuum" {
                self.vacuum(arg.as_deref(), &mut report).await
            } else {
                self.call(&func, arg.as_deref(), &mut report).await
            };
            let key = (func, arg.unwrap_or_default());
            self.settle_op(&key, outcome, &mut report)?;
            seen.push(key);
        }
        let key = (RETRY_OP.to_owned(), String::new());
        let retried = self.retry_once().await;
        if let Ok(n) = &retried {
            report.retried = *n;
        }
        self.settle_op(&key, retried.map(drop), &mut report)?;
        seen.push(key);
        self.failing_ops.retain(|key, _| seen.contains(key));
        tracing::debug!(
            db = %self.db,
            calls = report.calls,
            vacuumed = report.vacuumed,
            retried = report.retried,
            "maintenance"
        );
        Ok(report)
    }

    /// Logs a failed maintenance operation when its error first appears or changes (not at
    /// every round), and when it works again; a lost connection ends the round.
    fn settle_op(
        &mut self,
        key: &(String, String),
        outcome: Result<()>,
        report: &mut MaintReport,
    ) -> Result<()> {
        let (operation, arg) = key;
        match outcome {
            Ok(()) => {
                if self.failing_ops.remove(key).is_some() {
                    tracing::info!(db = %self.db, operation, arg, "maintenance operation works again");
                }
            }
            Err(err) if err.is_connection_lost() => return Err(err),
            Err(err) => {
                report.failed += 1;
                let text = crate::error::Chain(&err).to_string();
                if self.failing_ops.get(key) != Some(&text) {
                    tracing::warn!(db = %self.db, operation, arg, error = %text, "maintenance operation failed; the others ran, it is tried again every round");
                    self.failing_ops.insert(key.clone(), text);
                }
            }
        }
        Ok(())
    }

    /// Puts due retry events back into their queues: `pgq.maint_retry_events()` until it
    /// returns 0 (each call is a transaction of its own). Returns how many were put back.
    ///
    /// # Errors
    ///
    /// [`TickerError::Db`] when a call fails.
    pub async fn retry_once(&mut self) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let moved: i64 = self
                .client
                .query_typed_one(RETRY_EVENTS, &[])
                .await
                .op(&self.db, "maint_retry_events")?
                .try_get::<_, Option<i64>>(0)
                .op(&self.db, "maint_retry_events")?
                .unwrap_or(0);
            match u64::try_from(moved) {
                Ok(n) if n > 0 => total += n,
                _ => return Ok(total),
            }
        }
    }

    /// Re-reads what the database offers (after a schema upgrade, `pgq.catchup_ticker()` may
    /// have appeared). An error means the schema is gone or the connection is lost.
    pub(crate) async fn refresh(&mut self) -> Result<()> {
        let row = self
            .client
            .query_typed_one(PROBE, &[])
            .await
            .op(&self.db, "probe")?;
        if !row.try_get::<_, bool>(0).op(&self.db, "probe")? {
            return Err(TickerError::SchemaMissing {
                db: self.db.clone(),
            });
        }
        let catchup = row.try_get(1).op(&self.db, "probe")?;
        if catchup != self.catchup {
            tracing::info!(db = %self.db, catchup, "the schema changed");
            self.catchup = catchup;
        }
        Ok(())
    }

    /// What cancels this connection's running statement from elsewhere.
    pub(crate) fn canceller(&self) -> Canceller {
        Canceller {
            dsn: self.dsn.clone(),
            pid: self.pid,
        }
    }

    /// Counts a refused operation, and logs it the first time.
    fn refuse(&mut self, operation: &str, why: &str, report: &mut MaintReport) {
        report.refused += 1;
        if self.refused_ops.insert(operation.to_owned()) {
            tracing::warn!(db = %self.db, operation, why, "refusing a maintenance operation");
        }
    }

    async fn vacuum(&mut self, table: Option<&str>, report: &mut MaintReport) -> Result<()> {
        let Some(quoted) = table.and_then(quote_qualified) else {
            let operation = format!("vacuum {}", table.unwrap_or_default());
            self.refuse(&operation, "the table name is not schema.name", report);
            return Ok(());
        };
        self.client
            .batch_execute(&format!("VACUUM {quoted}"))
            .await
            .op(&self.db, "vacuum")?;
        report.vacuumed += 1;
        Ok(())
    }

    async fn call(
        &mut self,
        func: &str,
        arg: Option<&str>,
        report: &mut MaintReport,
    ) -> Result<()> {
        let Some(quoted) = quote_qualified(func) else {
            self.refuse(func, "the function name is not schema.name", report);
            return Ok(());
        };
        let (schema, name) = func.split_once('.').unwrap_or_default();
        let trusted: bool = self
            .client
            .query_typed_one(MAINT_TRUSTED, &[(&schema, Type::TEXT), (&name, Type::TEXT)])
            .await
            .op(&self.db, "checking a maintenance function")?
            .try_get(0)
            .op(&self.db, "checking a maintenance function")?;
        if !trusted {
            self.refuse(
                func,
                "only functions of the pgq, pgq_node and londiste schemas that belong to the \
                 owner of schema pgq are called",
                report,
            );
            return Ok(());
        }
        let (sql, params): (
            String,
            Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)>,
        ) = match &arg {
            Some(arg) => (
                format!("SELECT {quoted}($1)::text"),
                vec![(arg, Type::TEXT)],
            ),
            None => (format!("SELECT {quoted}()::text"), Vec::new()),
        };
        for _ in 0..MAX_REPEATS {
            let again = self
                .client
                .query_typed_one(&sql, &params)
                .await
                .op(&self.db, "maintenance operation")?
                .try_get::<_, Option<String>>(0)
                .op(&self.db, "maintenance operation")?
                .and_then(|v| v.trim().parse::<i64>().ok())
                .is_some_and(|n| n > 0);
            report.calls += 1;
            if !again {
                return Ok(());
            }
        }
        tracing::warn!(db = %self.db, operation = func, repeats = MAX_REPEATS, "maintenance function still asks to be called again; leaving it for the next round");
        Ok(())
    }
}

/// Whether a failed pass (or a queue's part of it) is no matter of one queue: the connection
/// is gone, or the statement was cancelled (the daemon's stop, `statement_timeout`), and the
/// pass ends here rather than going on queue by queue.
fn ends_the_pass(err: &TickerError) -> bool {
    err.is_connection_lost() || err.sql_state() == Some(&SqlState::QUERY_CANCELED)
}

/// Cancels a ticker connection's running statement through a connection of its own.
#[derive(Debug, Clone)]
pub(crate) struct Canceller {
    dsn: Dsn,
    pid: i32,
}

impl Canceller {
    /// Asks the server to cancel the statement (best effort, at most `patience` long).
    pub(crate) async fn cancel(&self, patience: Duration) {
        let attempt = async {
            let client = self.dsn.connect().await?;
            client
                .query_typed_one(CANCEL_BACKEND, &[(&self.pid, Type::INT4)])
                .await
                .op(self.dsn.dbname(), "cancelling the running pass")?;
            Ok::<_, TickerError>(())
        };
        match tokio::time::timeout(patience, attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(db = %self.dsn.dbname(), error = %crate::error::Chain(&err), "could not cancel the running pass");
            }
            Err(_) => {
                tracing::warn!(db = %self.dsn.dbname(), "could not cancel the running pass in time");
            }
        }
    }
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

/// `schema.name` quoted, when the name is plain.
fn quote_qualified(name: &str) -> Option<String> {
    let (schema, object) = name.split_once('.')?;
    is_plain_qualified(name).then(|| format!("{}.{}", quote_ident(schema), quote_ident(object)))
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
        }
        assert_eq!(
            quote_qualified("pgq.tick").as_deref(),
            Some("\"pgq\".\"tick\"")
        );
        assert_eq!(quote_qualified("pgq.x;y"), None);
    }
}
