//! The daemon: one task per database, database discovery, the connection budget, reconnects and
//! the stop.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgq_core::Dsn;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::board::{Board, DbState};
use crate::config::{Databases, TickerConfig};
use crate::database::{Canceller, DatabaseTicker};
use crate::error::{Chain, DbContext as _, Result, TickerError};
use pgq_core::Backoff;

// language=SQL
const LIST_DATABASES: &str = "\
SELECT datname FROM pg_catalog.pg_database
 WHERE datallowconn AND NOT datistemplate
   AND pg_catalog.has_database_privilege(datname, 'CONNECT')
 ORDER BY datname";

/// The ticker daemon: serves every configured (or discovered) database with a task of its own
/// until cancelled. See [`DatabaseTicker`] for what each task does on its database.
#[derive(Debug, Clone)]
pub struct Ticker {
    config: Arc<TickerConfig>,
    board: Arc<Board>,
}

impl Ticker {
    /// A ticker with this configuration; nothing connects before [`run`](Self::run).
    pub fn new(config: TickerConfig) -> Ticker {
        Ticker {
            board: Arc::new(Board::new(config.observe_period())),
            config: Arc::new(config),
        }
    }

    /// Serves `/metrics`, `/health` and the status page on `monitor` from what this ticker
    /// observes, until `cancel` fires. Bind the monitor first ([`Monitor::bind`]): a bad or
    /// taken address is an error before anything starts.
    ///
    /// [`Monitor::bind`]: pgq_core::monitor::Monitor::bind
    pub fn serve_monitor(
        &self,
        monitor: pgq_core::monitor::Monitor,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        monitor.serve(Arc::clone(&self.board), cancel)
    }

    /// The configuration.
    pub fn config(&self) -> &TickerConfig {
        &self.config
    }

    /// Serves the databases until `cancel` is cancelled, then waits for every task to finish.
    ///
    /// Each database gets a task with a dedicated connection holding the database's ticker
    /// lock: a ticker pass every [`ticker_period`](TickerConfig::ticker_period), maintenance
    /// every [`maint_period`](TickerConfig::maint_period), due retry events every
    /// [`retry_period`](TickerConfig::retry_period). Nothing here is fatal: a database that
    /// cannot be reached is retried with capped exponential backoff and jitter, one without
    /// PGQ is skipped (one log line) and checked again every
    /// [`discovery_period`](TickerConfig::discovery_period), one ticked by another ticker is
    /// tried again every [`reconnect_max`](TickerConfig::reconnect_max).
    ///
    /// Cancellation is honoured between steps; a step still running
    /// [`stop_timeout`](TickerConfig::stop_timeout) after the cancellation is cancelled on
    /// the server and rolled back.
    pub async fn run(self, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        let budget = Arc::new(Semaphore::new(
            self.config.max_connections().min(Semaphore::MAX_PERMITS),
        ));
        let tasks = Tasks {
            config: Arc::clone(&self.config),
            budget,
            tracker: tracker.clone(),
            board: Arc::clone(&self.board),
        };
        match self.config.databases() {
            Databases::List(list) => {
                tracing::info!(databases = list.len(), "ticker started");
                let mut seen = HashSet::new();
                for dsn in list {
                    if seen.insert(dsn.to_string()) {
                        tasks.spawn(dsn.clone(), cancel.child_token());
                    }
                }
                cancel.cancelled().await;
            }
            Databases::Discover(base) => {
                tracing::info!("ticker started, discovering databases");
                tasks.discover(base, &cancel).await;
            }
        }
        tracker.close();
        tracker.wait().await;
        tracing::info!("ticker stopped");
    }
}

/// What the per-database tasks share.
#[derive(Clone)]
struct Tasks {
    config: Arc<TickerConfig>,
    budget: Arc<Semaphore>,
    tracker: TaskTracker,
    board: Arc<Board>,
}

/// A condition logged once when it starts, not at every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    SchemaMissing,
    AlreadyTicked,
    Unreachable,
}

/// The steps of a connected ticker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Tick,
    Maintain,
    Retry,
    Refresh,
    Observe,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Tick => "ticker pass",
            Step::Maintain => "maintenance",
            Step::Retry => "retry events",
            Step::Refresh => "schema check",
            Step::Observe => "observation",
        }
    }
}

impl Tasks {
    fn spawn(&self, dsn: Dsn, cancel: CancellationToken) {
        let span = tracing::info_span!("database", db = %dsn.dbname());
        let tasks = self.clone();
        self.tracker
            .spawn(async move { tasks.serve(dsn, cancel).await }.instrument(span));
    }

    /// Lists the server's databases every discovery period and keeps one task per database.
    async fn discover(&self, base: &Dsn, cancel: &CancellationToken) {
        let mut running: HashMap<String, CancellationToken> = HashMap::new();
        let mut backoff = Backoff::new(self.config.reconnect_min(), self.config.reconnect_max());
        let mut failing = false;
        loop {
            let wait = match self.list_databases(base, cancel).await {
                None => return,
                Some(Ok(names)) => {
                    if failing {
                        tracing::info!("listing databases works again");
                        failing = false;
                    }
                    backoff.reset();
                    let names: HashSet<String> = names.into_iter().collect();
                    running.retain(|name, token| {
                        let keep = names.contains(name);
                        if !keep {
                            tracing::info!(db = %name, "database gone");
                            token.cancel();
                            self.board.forget(name);
                        }
                        keep
                    });
                    for name in names {
                        if let Entry::Vacant(slot) = running.entry(name) {
                            tracing::debug!(db = %slot.key(), "database found");
                            let token = cancel.child_token();
                            self.spawn(base.with_dbname(slot.key()), token.clone());
                            slot.insert(token);
                        }
                    }
                    self.config.discovery_period()
                }
                Some(Err(err)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        error = %Chain(&err),
                        retry_in_ms = millis(wait),
                        "cannot list the databases; retrying"
                    );
                    failing = true;
                    wait
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = sleep(wait) => {}
            }
        }
    }

    /// The connectable databases, or `None` when cancelled.
    async fn list_databases(
        &self,
        base: &Dsn,
        cancel: &CancellationToken,
    ) -> Option<Result<Vec<String>>> {
        let _permit = self.permit(cancel).await?;
        let listing = async {
            let client = base.with_pinned_search_path().connect().await?;
            let rows = client
                .query_typed(LIST_DATABASES, &[])
                .await
                .op(base.dbname(), "listing databases")?;
            rows.iter()
                .map(|row| row.try_get(0).op(base.dbname(), "listing databases"))
                .collect::<Result<Vec<String>>>()
        };
        tokio::select! {
            () = cancel.cancelled() => None,
            listed = listing => Some(listed),
        }
    }

    /// A connection from the budget, or `None` when cancelled first.
    async fn permit(&self, cancel: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.budget).try_acquire_owned() {
            return Some(permit);
        }
        tracing::warn!(
            max_connections = self.config.max_connections(),
            "connection budget used up; waiting for a connection"
        );
        tokio::select! {
            () = cancel.cancelled() => None,
            permit = Arc::clone(&self.budget).acquire_owned() => permit.ok(),
        }
    }

    /// Serves one database until cancelled: connect, tick, reconnect.
    async fn serve(&self, dsn: Dsn, cancel: CancellationToken) {
        let config = &self.config;
        let db = dsn.dbname().to_owned();
        self.board.set_state(&db, DbState::Starting);
        let mut backoff = Backoff::new(config.reconnect_min(), config.reconnect_max());
        let mut condition: Option<Condition> = None;
        let mut attempt = 0u32;
        loop {
            let Some(permit) = self.permit(&cancel).await else {
                return;
            };
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = DatabaseTicker::connect(&dsn) => connected,
            };
            let wait = match connected {
                Ok(ticker) => {
                    tracing::info!(
                        flavor = crate::status::flavor_name(ticker.flavor()),
                        catchup = ticker.catches_up(),
                        "ticking"
                    );
                    condition = None;
                    attempt = 0;
                    backoff.reset();
                    self.board.set_state(&db, DbState::Ticking);
                    match self.serve_connected(ticker, &cancel).await {
                        Ok(()) => return,
                        Err(err) => {
                            self.board
                                .set_state(&db, DbState::Unreachable(Chain(&err).to_string()));
                            let wait = backoff.next_wait();
                            tracing::warn!(
                                error = %Chain(&err),
                                retry_in_ms = millis(wait),
                                "lost the database; reconnecting"
                            );
                            wait
                        }
                    }
                }
                Err(TickerError::SchemaMissing { .. }) => {
                    self.board.set_state(&db, DbState::NoSchema);
                    if condition != Some(Condition::SchemaMissing) {
                        tracing::info!(
                            check_every_ms = millis(config.discovery_period()),
                            "no pgq schema in this database; skipped"
                        );
                        condition = Some(Condition::SchemaMissing);
                    }
                    config.discovery_period()
                }
                Err(TickerError::AlreadyTicked { .. }) => {
                    self.board.set_state(&db, DbState::StandingBy);
                    if condition != Some(Condition::AlreadyTicked) {
                        tracing::warn!(
                            retry_every_ms = millis(config.reconnect_max()),
                            "another ticker holds this database's ticker lock; standing by"
                        );
                        condition = Some(Condition::AlreadyTicked);
                    }
                    config.reconnect_max()
                }
                Err(err) => {
                    attempt += 1;
                    condition = Some(Condition::Unreachable);
                    self.board
                        .set_state(&db, DbState::Unreachable(Chain(&err).to_string()));
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        error = %Chain(&err),
                        attempt,
                        retry_in_ms = millis(wait),
                        "cannot connect; retrying"
                    );
                    wait
                }
            };
            drop(permit);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = sleep(wait) => {}
            }
        }
    }

    /// Runs the steps on a connected ticker until cancelled (`Ok`) or until the connection or
    /// the schema is gone (`Err`: reconnect).
    async fn serve_connected(
        &self,
        mut ticker: DatabaseTicker,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let config = &self.config;
        let canceller = ticker.canceller();
        let patience = config.stop_timeout();
        let start = Instant::now();
        let mut next_tick = start;
        let mut next_maint = start;
        let mut next_retry = start + config.retry_period();
        let mut next_refresh = start + config.discovery_period();
        let mut next_observe = start;
        let mut last_error: Option<String> = None;
        loop {
            let due = next_tick
                .min(next_maint)
                .min(next_retry)
                .min(next_refresh)
                .min(next_observe);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                () = sleep_until(due) => {}
            }
            let now = Instant::now();
            let step = if now >= next_tick {
                next_tick = now + config.ticker_period();
                Step::Tick
            } else if now >= next_maint {
                next_maint = now + config.maint_period();
                // maintenance includes the retry step
                next_retry = now + config.retry_period();
                Step::Maintain
            } else if now >= next_retry {
                next_retry = now + config.retry_period();
                Step::Retry
            } else if now >= next_observe {
                next_observe = now + config.observe_period();
                Step::Observe
            } else {
                next_refresh = now + config.discovery_period();
                Step::Refresh
            };
            let outcome = match step {
                Step::Tick => guarded(ticker.tick_once(), &canceller, cancel, patience)
                    .await
                    .map(|r| r.map(drop)),
                Step::Maintain => guarded(ticker.maintain_once(), &canceller, cancel, patience)
                    .await
                    .map(|r| r.map(drop)),
                Step::Retry => guarded(ticker.retry_once(), &canceller, cancel, patience)
                    .await
                    .map(|r| r.map(drop)),
                Step::Refresh => guarded(ticker.refresh(), &canceller, cancel, patience).await,
                Step::Observe => guarded(ticker.observe(), &canceller, cancel, patience)
                    .await
                    .map(|r| {
                        r.map(|(queues, consumers)| {
                            self.board.observed(ticker.db(), queues, consumers);
                        })
                    }),
            };
            match outcome {
                None => {
                    tracing::warn!(step = step.name(), "stopped without waiting for the step");
                    return Ok(());
                }
                Some(Ok(())) => {
                    if last_error.take().is_some() {
                        tracing::info!(step = step.name(), "works again");
                    }
                }
                Some(Err(err)) => {
                    if cancel.is_cancelled() {
                        tracing::info!(step = step.name(), "step cancelled by the stop");
                        return Ok(());
                    }
                    if err.is_connection_lost() || ticker.is_closed() || schema_gone(&err) {
                        return Err(err);
                    }
                    let text = Chain(&err).to_string();
                    if last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(step = step.name(), error = %text, "failed again");
                    } else {
                        tracing::warn!(step = step.name(), error = %text, "step failed; continuing");
                    }
                    last_error = Some(text);
                }
            }
        }
    }
}

/// Awaits a step; once `cancel` fires, gives it `patience`, then cancels its statement on the
/// server and gives it `patience` again. `None` when it still did not finish.
async fn guarded<T>(
    step: impl Future<Output = Result<T>>,
    canceller: &Canceller,
    cancel: &CancellationToken,
    patience: Duration,
) -> Option<Result<T>> {
    tokio::pin!(step);
    tokio::select! {
        biased;
        done = &mut step => return Some(done),
        () = cancel.cancelled() => {}
    }
    if let Ok(done) = timeout(patience, &mut step).await {
        return Some(done);
    }
    tracing::info!("stopping: cancelling the running step on the server");
    canceller.cancel(patience).await;
    timeout(patience, &mut step).await.ok()
}

/// Whether an error says the PGQ schema is gone: reconnecting re-checks it. A missing table
/// is not enough: a queue whose event table or sequence was dropped is broken alone, and
/// reconnecting would only hold up the others.
fn schema_gone(err: &TickerError) -> bool {
    matches!(err, TickerError::SchemaMissing { .. })
        || err.sql_state().is_some_and(|state| {
            [SqlState::UNDEFINED_FUNCTION, SqlState::INVALID_SCHEMA_NAME].contains(state)
        })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
