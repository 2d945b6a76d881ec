//! One database's ticker: a dedicated connection holding the ticker lock, and the steps
//! (ticker pass, maintenance, retry) the daemon repeats.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgq_core::maintenance::{self, MaintName};
use pgq_core::{Dsn, Flavor};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::error::{DbContext as _, InDb as _, Result, TickerError};

/// How often one maintenance function is called in a row while it asks to be called again.
const MAX_REPEATS: u32 = 100;

// The session's own plumbing (not PGQ's API): its backend for cancelling, its name in
// pg_stat_activity.
// language=SQL
const BACKEND_PID: &str = "SELECT pg_catalog.pg_backend_pid()";

// language=SQL
const NAME_SESSION: &str = "\
SELECT pg_catalog.set_config('application_name', 'pgq-ticker', false)
 WHERE pg_catalog.current_setting('application_name') = ''";

// language=SQL
const CANCEL_BACKEND: &str = "SELECT pg_catalog.pg_cancel_backend($1)";

/// How the retry step is named in the log.
const RETRY_OP: &str = "pgq.maint_retry_events";

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
    /// backlog is split into batches of at most the queue's `ticker_max_batch` events.
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
/// lock (a session advisory lock, [`maintenance::TICKER_LOCK_KEY`]) for as long as it lives. Dropping it
/// closes the connection and frees the lock.
///
/// On the pgq-rs schema a pass writes catch-up ticks (`pgq.catchup_ticker()`) before PGQ's tick
/// rule (`pgq.ticker()`), and the schema announces each tick on [`maintenance::TICK_CHANNEL`]. On the
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
        let support = maintenance::ticker_support(&client).await.in_db(&db)?;
        if !support.pgq {
            return Err(TickerError::SchemaMissing { db });
        }
        let pid: i32 = client
            .query_typed_one(BACKEND_PID, &[])
            .await
            .op(&db, "probe")?
            .try_get(0)
            .op(&db, "probe")?;
        let flavor = pgq_core::flavor(&client).await?;
        if !maintenance::try_ticker_lock(&client).await.in_db(&db)? {
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
            catchup: support.catchup,
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
        let started = std::time::Instant::now();
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
        let db = self.db.clone();
        metrics::histogram!("pgq_ticker_pass_seconds", "db" => db.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("pgq_ticker_ticks_total", "db" => db.clone()).increment(report.ticks);
        metrics::counter!("pgq_ticker_cut_ticks_total", "db" => db.clone())
            .increment(report.catchup_ticks);
        metrics::counter!("pgq_ticker_failed_queues_total", "db" => db).increment(report.failed);
        Ok(report)
    }

    /// Reads the queues and consumers as `pgq.get_queue_info()` and `pgq.get_consumer_info()`
    /// report them (tick positions and ages; no event table is scanned), for the metrics,
    /// `/health` and the status page.
    ///
    /// # Errors
    ///
    /// [`TickerError::Db`] when a statement fails.
    pub async fn observe(
        &mut self,
    ) -> Result<(Vec<pgq_core::QueueInfo>, Vec<pgq_core::ConsumerInfo>)> {
        let queues = pgq_core::queue_info(&self.client, None)
            .await
            .in_db(&self.db)?;
        let consumers = pgq_core::consumer_info(&self.client, None, None)
            .await
            .in_db(&self.db)?;
        Ok((queues, consumers))
    }

    /// Every queue in one transaction.
    async fn pass_whole(&mut self) -> Result<TickReport> {
        if self.catchup {
            let pass = maintenance::ticker_pass_with_catchup(&self.client)
                .await
                .in_db(&self.db)?;
            return Ok(TickReport {
                ticks: pass.catchup_ticks + pass.queues,
                queues: pass.queues,
                catchup_ticks: pass.catchup_ticks,
                failed: 0,
            });
        }
        let ticked = maintenance::ticker_pass_per_queue(&self.client)
            .await
            .in_db(&self.db)?;
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
        let queues = maintenance::tickable_queues(&self.client)
            .await
            .in_db(&self.db)?;
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
        let catchup_ticks = if self.catchup {
            maintenance::catchup_ticker(&tx, queue)
                .await
                .in_db(&self.db)?
        } else {
            0
        };
        let tick = maintenance::tick_queue(&tx, queue).await.in_db(&self.db)?;
        tx.commit().await.op(&self.db, OP)?;
        Ok((catchup_ticks, tick.is_some()))
    }

    /// Announces ticks where the schema does not (the original extension, an older pgq-rs).
    async fn announce(&self, ticked: &[String]) -> Result<()> {
        maintenance::announce_ticks(&self.client, ticked)
            .await
            .in_db(&self.db)
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
        let ops = maintenance::maint_operations(&self.client)
            .await
            .in_db(&self.db)?;
        let mut seen = Vec::with_capacity(ops.len() + 1);
        for op in ops {
            let outcome = if op.func == "vacuum" {
                self.vacuum(op.arg.as_deref(), &mut report).await
            } else {
                self.call(&op.func, op.arg.as_deref(), &mut report).await
            };
            let key = (op.func, op.arg.unwrap_or_default());
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
            match maintenance::maint_retry_events(&self.client)
                .await
                .in_db(&self.db)?
            {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Re-reads what the database offers (after a schema upgrade, `pgq.catchup_ticker()` may
    /// have appeared). An error means the schema is gone or the connection is lost.
    pub(crate) async fn refresh(&mut self) -> Result<()> {
        let support = maintenance::ticker_support(&self.client)
            .await
            .in_db(&self.db)?;
        if !support.pgq {
            return Err(TickerError::SchemaMissing {
                db: self.db.clone(),
            });
        }
        let catchup = support.catchup;
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
        let Some(name) = table.and_then(MaintName::parse) else {
            let operation = format!("vacuum {}", table.unwrap_or_default());
            self.refuse(&operation, "the table name is not schema.name", report);
            return Ok(());
        };
        maintenance::vacuum_table(&self.client, &name)
            .await
            .in_db(&self.db)?;
        report.vacuumed += 1;
        Ok(())
    }

    async fn call(
        &mut self,
        func: &str,
        arg: Option<&str>,
        report: &mut MaintReport,
    ) -> Result<()> {
        let Some(name) = MaintName::parse(func) else {
            self.refuse(func, "the function name is not schema.name", report);
            return Ok(());
        };
        if !maintenance::maint_function_trusted(&self.client, &name)
            .await
            .in_db(&self.db)?
        {
            self.refuse(
                func,
                "only functions of the pgq, pgq_node and londiste schemas that belong to the \
                 owner of schema pgq are called",
                report,
            );
            return Ok(());
        }
        for _ in 0..MAX_REPEATS {
            let again = maintenance::call_maint_function(&self.client, &name, arg)
                .await
                .in_db(&self.db)?;
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
