//! The local runner (work and `finish_batch` in one transaction on the queue's database) and
//! the loop every runner shares: wake-ups, backoff, reconnects, two-stage shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgq_core::tokio_postgres::{GenericClient, Transaction};
use pgq_core::{Batch, BatchId, Dsn, TickId};
use tokio_util::sync::CancellationToken;
use tracing::{field, Instrument as _};

use crate::batch::{process_per_event, process_whole, BatchHandle, Counts, RetryPolicy};
use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{ConsumerError, DbContext, Result};
use crate::metrics::ConsumerMetrics;
use crate::session::Session;
use pgq_core::Backoff;

/// What one batch step did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// The batch.
    pub batch_id: BatchId,
    /// The tick the consumer is at now.
    pub cur_tick: TickId,
    /// Events handed to the handler.
    pub events: u64,
    /// Events handed back for a retry.
    pub retried: u64,
    /// Events moved to the failed events.
    pub failed: u64,
    /// The batch was processed event by event (after repeated failures).
    pub per_event: bool,
    /// A remote consumer found the batch done already and only finished it.
    pub already_done: bool,
    /// Time from taking the batch to the commit.
    pub elapsed: Duration,
    /// The age of the batch's end tick at the commit.
    pub lag: Duration,
}

impl BatchReport {
    pub(crate) fn new(batch: &Batch, counts: Counts, per_event: bool, start: Instant) -> Self {
        BatchReport {
            batch_id: batch.id,
            cur_tick: batch.cur_tick,
            events: counts.events,
            retried: counts.retried,
            failed: counts.failed,
            per_event,
            already_done: false,
            elapsed: start.elapsed(),
            lag: (chrono::Utc::now() - batch.cur_tick_time)
                .to_std()
                .unwrap_or_default(),
        }
    }
}

/// Counts failures of one batch, identified by its ticks (a rolled-back batch comes back
/// under a new id).
#[derive(Debug, Default)]
pub(crate) struct Failures {
    key: Option<(TickId, TickId)>,
    count: u32,
}

impl Failures {
    pub(crate) fn count(&self, batch: &Batch) -> u32 {
        if self.key == Some((batch.prev_tick, batch.cur_tick)) {
            self.count
        } else {
            0
        }
    }

    pub(crate) fn record(&mut self, batch: &Batch) {
        let key = Some((batch.prev_tick, batch.cur_tick));
        if self.key == key {
            self.count += 1;
        } else {
            self.key = key;
            self.count = 1;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.key = None;
        self.count = 0;
    }
}

/// Settles a batch whose processing failed with `err`, once its transactions were rolled back
/// (`rolled_back`: every rollback reached the server). A rollback that could not reach the
/// server means the handler failed because (or while) a connection was lost: the batch is not
/// counted as failed and the error says so ([`ConsumerError::ConnectionLost`]), so the runner
/// reconnects instead of pushing the batch towards per-event mode. Other handler failures count
/// (the batch comes again; after N, event by event).
pub(crate) fn settle_failure(
    err: ConsumerError,
    rolled_back: bool,
    failures: &mut Failures,
    batch: &Batch,
) -> ConsumerError {
    if err.is_connection_lost() {
        return err;
    }
    if !rolled_back {
        let source = match err {
            ConsumerError::Handler { source, .. } => source,
            other => Box::new(other),
        };
        return ConsumerError::ConnectionLost {
            batch_id: batch.id,
            source,
        };
    }
    if matches!(
        err,
        ConsumerError::Handler { .. } | ConsumerError::UnreadEvents { .. }
    ) {
        failures.record(batch);
    }
    err
}

/// The span of one batch, with the fixed field names.
pub(crate) fn batch_span(queue: &str, consumer: &str, batch_id: BatchId) -> tracing::Span {
    tracing::info_span!(
        "batch",
        queue,
        consumer,
        %batch_id,
        events = field::Empty,
        elapsed_ms = field::Empty
    )
}

/// Records the completion fields on the current span and counts the batch.
pub(crate) fn record_done(report: &BatchReport, metrics: &ConsumerMetrics) {
    metrics.record(report);
    let span = tracing::Span::current();
    span.record("events", report.events);
    span.record(
        "elapsed_ms",
        u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
    );
    tracing::debug!(
        retried = report.retried,
        failed = report.failed,
        per_event = report.per_event,
        "batch finished"
    );
}

/// Runs the handler over the batch in batch or per-event mode.
pub(crate) async fn process(
    consumer: &dyn Consumer,
    queue_tx: &Transaction<'_>,
    work_tx: &Transaction<'_>,
    batch: &Batch,
    policy: RetryPolicy,
    per_event: bool,
) -> Result<Counts> {
    let mut handle = BatchHandle::new(queue_tx, work_tx, batch.clone(), policy);
    if per_event {
        tracing::warn!(batch_id = %batch.id, "batch failed repeatedly: processing it event by event");
        process_per_event(consumer, &mut handle).await
    } else {
        process_whole(consumer, &mut handle).await
    }
}

/// Registers the consumer as the settings say (at `register_at` only when new).
pub(crate) async fn register(client: &impl GenericClient, config: &ConsumerConfig) -> Result<()> {
    if !config.register {
        return Ok(());
    }
    match config.register_at {
        Some(tick) => {
            if !pgq_core::is_registered(client, &config.queue, &config.consumer).await? {
                pgq_core::register_consumer_at(client, &config.queue, &config.consumer, tick)
                    .await?;
            }
        }
        None => {
            pgq_core::register_consumer(client, &config.queue, &config.consumer).await?;
        }
    }
    Ok(())
}

pub(crate) fn policy(config: &ConsumerConfig, session: &Session) -> RetryPolicy {
    RetryPolicy {
        max_retries: config.max_event_retries,
        delay: config.event_retry_delay,
        failed_queue: session.failed_queue,
        chunk_size: config.chunk_size,
    }
}

/// What the shared loop needs of a runner.
pub(crate) trait Step {
    fn config(&self) -> &ConsumerConfig;
    fn connected(&self) -> bool;
    fn disconnect(&mut self);
    /// Gives up the batch in hand at a hard stop.
    fn abandon(&mut self);
    fn reconnect(&mut self) -> impl Future<Output = Result<()>> + Send;
    fn step(&mut self) -> impl Future<Output = Result<Option<BatchReport>>> + Send;
    fn wait(
        &mut self,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;
    fn stopping(&mut self) -> impl Future<Output = ()> + Send;
}

/// Sleeps for `wait` unless `cancel` fires first.
async fn pause(wait: Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = cancel.cancelled() => {}
    }
}

/// The loop: step, wait for a tick when idle, back off after failures, reconnect after a lost
/// connection; stop softly between batches when `cancel` fires, and roll back the batch in
/// hand when it runs `shutdown_timeout` past that.
pub(crate) async fn run_loop<S: Step + Send>(
    runner: &mut S,
    cancel: CancellationToken,
) -> Result<()> {
    let config = runner.config().clone();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let hard = {
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            tokio::time::sleep(config.shutdown_timeout).await;
        }
    };
    tokio::pin!(hard);
    tracing::info!("consumer started");
    loop {
        if cancel.is_cancelled() {
            runner.stopping().await;
            tracing::info!("consumer stopped");
            return Ok(());
        }
        if !runner.connected() {
            match runner.reconnect().await {
                Ok(()) => {
                    backoff.reset();
                    tracing::info!("reconnected");
                }
                Err(err) if is_fatal(&err) => return Err(err),
                Err(err) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %crate::batch::error_text(&err), ?wait, "reconnecting");
                    pause(wait, &cancel).await;
                }
            }
            continue;
        }
        let result = tokio::select! {
            result = runner.step() => Some(result),
            () = &mut hard => None,
        };
        let Some(result) = result else {
            runner.abandon();
            tracing::warn!("shutdown timeout expired: batch in hand rolled back");
            return Err(ConsumerError::HardStopped);
        };
        match result {
            Ok(Some(_)) => backoff.reset(),
            Ok(None) => {
                backoff.reset();
                runner.wait(config.poll_interval, &cancel).await;
            }
            Err(err) if err.is_connection_lost() => {
                runner.disconnect();
                let wait = backoff.next_wait();
                tracing::warn!(error = %crate::batch::error_text(&err), ?wait, "connection lost");
                pause(wait, &cancel).await;
            }
            Err(err) if is_fatal(&err) => return Err(err),
            Err(ConsumerError::Postponed { reason, wait, .. }) => {
                tracing::debug!(reason, ?wait, "batch postponed");
                pause(wait, &cancel).await;
            }
            Err(err) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %crate::batch::error_text(&err), ?wait, "batch failed; retrying");
                pause(wait, &cancel).await;
            }
        }
    }
}

/// Errors no retry can fix: unknown queue or consumer (`pgq_coop`'s `PQS02` too), bad names,
/// schema problems.
fn is_fatal(err: &ConsumerError) -> bool {
    match err {
        ConsumerError::Core(core) => {
            !matches!(core, pgq_core::Error::Db { .. }) && !core.is_connection_lost()
        }
        ConsumerError::Db { source, .. } => source.code().is_some_and(|c| c.code() == "PQS02"),
        _ => false,
    }
}

/// A consumer that does its work on the queue's database: each batch's work and its
/// `finish_batch` commit in one transaction, so each batch is processed exactly once.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use pgq_consumer::{async_trait, Consumer, ConsumerConfig, HandlerError, Runner};
/// use pgq_core::tokio_postgres::Transaction;
/// use pgq_core::{ConsumerName, Dsn, Event, QueueName};
/// use tokio_util::sync::CancellationToken;
///
/// struct Count;
///
/// #[async_trait]
/// impl Consumer for Count {
///     async fn process_event(&self, tx: &Transaction<'_>, _: &Event) -> Result<(), HandlerError> {
///         tx.execute("UPDATE counter SET n = n + 1", &[]).await?;
///         Ok(())
///     }
/// }
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let dsn = Dsn::parse("host=localhost dbname=app")?;
/// let config = ConsumerConfig::builder(QueueName::new("orders")?, ConsumerName::new("count")?)
///     .build();
/// let runner = Runner::connect(&dsn, config, Arc::new(Count)).await?;
/// runner.run(CancellationToken::new()).await?;
/// # Ok(())
/// # }
/// ```
pub struct Runner {
    dsn: Dsn,
    config: ConsumerConfig,
    consumer: Arc<dyn Consumer>,
    session: Option<Session>,
    failures: Failures,
    metrics: Arc<ConsumerMetrics>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("queue", &self.config.queue)
            .field("consumer", &self.config.consumer)
            .field("connected", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Opens the runner's dedicated connection, takes the consumer's lock, LISTENs for ticks
    /// and registers the consumer (unless [`ConsumerConfig::register`] is off).
    ///
    /// # Errors
    ///
    /// [`ConsumerError::ConsumerBusy`] at once when another runner holds the lock;
    /// [`ConsumerError::Core`] for an unknown queue or a failed connection.
    pub async fn connect(
        dsn: &Dsn,
        config: ConsumerConfig,
        consumer: Arc<dyn Consumer>,
    ) -> Result<Runner> {
        let mut runner = Runner {
            dsn: dsn.clone(),
            config,
            consumer,
            session: None,
            failures: Failures::default(),
            metrics: Arc::default(),
        };
        runner.open().await?;
        Ok(runner)
    }

    async fn open(&mut self) -> Result<()> {
        let session =
            Session::open(&self.dsn, &self.config.queue, self.config.consumer.as_str()).await?;
        register(&session.client, &self.config).await?;
        self.session = Some(session);
        Ok(())
    }

    /// The runner's counters; they stay readable while `run` consumes the runner.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// One step: takes the next batch, hands it to the consumer and finishes it in the same
    /// transaction. `Ok(None)` when there is no batch (wait for the ticker). After a handler
    /// failure the batch is rolled back and comes again on the next call; after
    /// [`ConsumerConfig::batch_failures_before_per_event`] failures it is processed event by
    /// event.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Handler`] or [`ConsumerError::UnreadEvents`] (rolled back);
    /// [`ConsumerError::ConnectionLost`] when the connection was lost while the handler ran
    /// (not counted as a failure of the batch; reconnect and take it again);
    /// [`ConsumerError::FinishFailed`] when another session finished the batch first (rolled
    /// back); [`ConsumerError::Core`] for an unknown queue or consumer and database errors.
    pub async fn process_next_batch(&mut self) -> Result<Option<BatchReport>> {
        if self.session.is_none() {
            self.open().await?;
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let policy = policy(&self.config, session);
        let start = Instant::now();
        let tx = session.client.transaction().await.op("begin")?;
        let Some(batch) =
            pgq_core::next_batch(&tx, &self.config.queue, &self.config.consumer).await?
        else {
            tx.commit().await.op("commit")?;
            return Ok(None);
        };
        let span = batch_span(
            self.config.queue.as_str(),
            self.config.consumer.as_str(),
            batch.id,
        );
        let per_event = self.failures.count(&batch) >= self.config.batch_failures_before_per_event;
        let consumer = &*self.consumer;
        let failures = &mut self.failures;
        let metrics = &*self.metrics;
        async move {
            let result = process(consumer, &tx, &tx, &batch, policy, per_event).await;
            let counts = match result {
                Ok(counts) => counts,
                Err(err) => {
                    let rolled_back = tx.rollback().await.is_ok();
                    return Err(settle_failure(err, rolled_back, failures, &batch));
                }
            };
            match pgq_core::finish_batch(&tx, batch.id).await {
                Ok(()) => {}
                Err(pgq_core::Error::BatchNotFound { batch_id }) => {
                    let _ = tx.rollback().await;
                    return Err(ConsumerError::FinishFailed { batch_id });
                }
                Err(err) => return Err(err.into()),
            }
            tx.commit().await.op("commit")?;
            failures.clear();
            let report = BatchReport::new(&batch, counts, per_event, start);
            record_done(&report, metrics);
            Ok(Some(report))
        }
        .instrument(span)
        .await
    }

    /// Runs until `cancel` fires: batches one after another, waiting for the ticker's
    /// notification (or `poll_interval`) when there is none; backs off after a failed batch and
    /// reconnects after a lost connection. When `cancel` fires, no new batch is taken and the
    /// one in hand commits whole; if it is still running `shutdown_timeout` later, it is rolled
    /// back.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::HardStopped`] when the batch in hand was rolled back at shutdown;
    /// [`ConsumerError::Core`] for errors no retry can fix (unknown queue or consumer).
    pub async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let span = tracing::info_span!(
            "consumer",
            queue = %self.config.queue,
            consumer = %self.config.consumer
        );
        run_loop(&mut self, cancel).instrument(span).await
    }
}

impl Step for Runner {
    fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    fn connected(&self) -> bool {
        self.session.is_some()
    }

    fn disconnect(&mut self) {
        self.session = None;
    }

    fn abandon(&mut self) {
        if let Some(session) = self.session.take() {
            session.abandon(&self.dsn);
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.open().await
    }

    async fn step(&mut self) -> Result<Option<BatchReport>> {
        self.process_next_batch().await
    }

    async fn wait(&mut self, timeout: Duration, cancel: &CancellationToken) {
        if let Some(session) = self.session.as_mut() {
            session
                .wait_for_tick(&self.config.queue, timeout, cancel)
                .await;
        }
    }

    async fn stopping(&mut self) {}
}
