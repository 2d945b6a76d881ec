//! The one runner: its connections, the loop (wake-ups, backoff, reconnects, two-stage stop) and
//! the batch step, generic over the [`Mode`] that takes, works and finishes a batch.

use std::sync::Arc;
use std::time::Instant;

use pgq_core::tokio_postgres::{Client, GenericClient, Transaction};
use pgq_core::{Backoff, Batch, Dsn, Line};
use tokio_util::sync::CancellationToken;
use tracing::{field, Instrument as _};

use crate::batch::{error_text, process, BatchHandle, Counts, Failures, RetryPolicy};
use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{ConsumerError, DbContext, Result};
use crate::metrics::{BatchReport, ConsumerMetrics};
use crate::session::{cancel_in_background, pause, Session};
use sealed::{Held, Steps, Take, Taken};

/// How a [`ConsumerRunner`] takes, works and finishes a batch: [`Local`],
/// [`Coop`](crate::Coop) or [`Remote`](crate::Remote). Sealed.
pub trait Mode: Steps {}

impl<M: Steps> Mode for M {}

pub(crate) mod sealed {
    use std::future::Future;

    use pgq_core::tokio_postgres::{Client, Transaction};
    use pgq_core::{Batch, BatchId, Dsn, InstallationId};

    use crate::config::ConsumerConfig;
    use crate::consumer::Consumer;
    use crate::error::{ConsumerError, DbContext, Result};

    /// What differs between the modes. The defaults are the local mode's.
    pub trait Steps: std::fmt::Debug + Send + Sync + 'static {
        /// The mode's own field of the running runner's span, e.g. `("subconsumer", "s1")`.
        fn span_field(&self) -> Option<(&'static str, String)> {
            None
        }

        /// What a new session on the queue's database does first (registration, ids).
        fn opened(
            &mut self,
            client: &Client,
            config: &ConsumerConfig,
        ) -> impl Future<Output = Result<()>> + Send {
            crate::session::register(client, config)
        }

        /// The database the work is done in, when it is not the queue's (with `pgq_ext`).
        fn target(&self) -> Option<&Dsn> {
            None
        }

        /// Takes the next batch and the transactions to work it in (none: the target has it done
        /// already, and it was finished); `None` when there is no batch.
        fn take<'a>(
            &'a mut self,
            on: Take<'a>,
        ) -> impl Future<Output = Result<Taken<'a>>> + Send + 'a;

        /// Finishes the batch on the queue's database, in its transaction.
        fn finish(
            tx: &Transaction<'_>,
            batch: BatchId,
        ) -> impl Future<Output = pgq_core::Result<()>> + Send {
            pgq_core::finish_batch(tx, batch)
        }

        /// At a soft stop, on the queue's session.
        fn stopping(
            &self,
            _client: &Client,
            _config: &ConsumerConfig,
        ) -> impl Future<Output = ()> + Send {
            async {}
        }
    }

    /// What a mode takes a batch with: the session on the queue's database, the connection to
    /// [`Steps::target`] when the mode has one, and the settings.
    pub struct Take<'a> {
        pub(crate) client: &'a mut Client,
        pub(crate) target: Option<&'a mut Client>,
        pub(crate) config: &'a ConsumerConfig,
        pub(crate) consumer: &'a dyn Consumer,
    }

    /// A batch taken, with the transactions to work it in.
    pub(crate) type Taken<'a> = Option<(Batch, Option<Held<'a>>)>;

    /// The transactions a batch is worked in: on the queue's database (which finishes it),
    /// and for a remote consumer on the target, with the queue database's installation id.
    pub struct Held<'a> {
        pub(crate) queue: Transaction<'a>,
        pub(crate) target: Option<(Transaction<'a>, &'a InstallationId)>,
    }

    impl<'a> Held<'a> {
        /// Work and finish in one transaction on the queue's database.
        pub(crate) fn local(queue: Transaction<'a>) -> Self {
            Held {
                queue,
                target: None,
            }
        }

        pub(crate) fn work(&self) -> &Transaction<'a> {
            self.target.as_ref().map_or(&self.queue, |(tx, _)| tx)
        }

        /// Rolls back; `true` when every rollback reached the server.
        pub(crate) async fn rollback(self) -> bool {
            let target = match self.target {
                Some((tx, _)) => tx.rollback().await.is_ok(),
                None => true,
            };
            self.queue.rollback().await.is_ok() && target
        }

        /// Records the batch on the target and commits there, then finishes it on the queue's
        /// database and commits; rolls back what is open when either refuses.
        pub(crate) async fn finish<M: Steps>(
            self,
            config: &ConsumerConfig,
            batch: BatchId,
        ) -> Result<()> {
            let Held { queue, target } = self;
            if let Some((target, provider)) = target {
                let key = (&config.queue, &config.consumer);
                if let Err(err) =
                    pgq_core::ext::set_batch_done(&target, provider, key.0, key.1, batch).await
                {
                    let _ = target.rollback().await;
                    let _ = queue.rollback().await;
                    return Err(ConsumerError::refused(err));
                }
                target.commit().await.op("commit on the target")?;
            }
            if let Err(err) = M::finish(&queue, batch).await {
                let _ = queue.rollback().await;
                return Err(ConsumerError::refused(err));
            }
            queue.commit().await.op("commit")
        }
    }
}

/// The runner of every mode; use it as [`Runner`], [`CoopRunner`](crate::CoopRunner) or
/// [`RemoteRunner`](crate::RemoteRunner).
pub struct ConsumerRunner<M: Mode> {
    dsn: Dsn,
    config: ConsumerConfig,
    /// The name the session's lock is held under: the consumer's, or `group.subconsumer`.
    name: String,
    consumer: Arc<dyn Consumer>,
    session: Option<Session>,
    /// The connection to [`Steps::target`].
    target: Option<Client>,
    failures: Failures,
    metrics: Arc<ConsumerMetrics>,
    mode: M,
}

impl<M: Mode> std::fmt::Debug for ConsumerRunner<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerRunner")
            .field("queue", &self.config.queue)
            .field("consumer", &self.name)
            .field("connected", &self.session.is_some())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<M: Mode> ConsumerRunner<M> {
    /// Makes the runner and opens its session.
    pub(crate) async fn start(
        dsn: &Dsn,
        config: ConsumerConfig,
        name: String,
        consumer: Arc<dyn Consumer>,
        mode: M,
    ) -> Result<Self> {
        let mut runner = ConsumerRunner {
            dsn: dsn.clone(),
            metrics: Arc::new(ConsumerMetrics::new(config.queue.as_str(), &name)),
            config,
            name,
            consumer,
            session: None,
            target: None,
            failures: Failures::default(),
            mode,
        };
        runner.open().await?;
        Ok(runner)
    }

    async fn open(&mut self) -> Result<()> {
        if self.session.is_none() {
            let session = Session::open(&self.dsn, &self.config.queue, &self.name).await?;
            self.mode.opened(&session.client, &self.config).await?;
            self.session = Some(session);
        }
        // With the session open, not connected means no usable target connection.
        if let (Some(dsn), false) = (self.mode.target(), self.connected()) {
            let target = dsn.connect().await?;
            pgq_core::check(&target, &[Line::PgqExt]).await?;
            self.target = Some(target);
        }
        Ok(())
    }

    fn connected(&self) -> bool {
        let target = self.target.as_ref().is_some_and(|t| !t.is_closed());
        self.session.is_some() && (self.mode.target().is_none() || target)
    }

    fn abandon(&mut self) {
        if let Some(session) = self.session.take() {
            session.abandon(&self.dsn);
        }
        if let (Some(target), Some(dsn)) = (self.target.take(), self.mode.target()) {
            cancel_in_background(dsn, &target);
        }
    }

    /// The runner's counters; they stay readable while `run` consumes the runner.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// One step: takes the next batch, hands it to the consumer and finishes it, as the mode
    /// says. `Ok(None)` when there is no batch (wait for the ticker). A failed batch is rolled
    /// back and comes again; after [`ConsumerConfig::batch_failures_before_per_event`] failures
    /// it is processed event by event.
    ///
    /// # Errors
    ///
    /// Each rolled back: [`ConsumerError::Handler`], [`ConsumerError::UnreadEvents`];
    /// [`ConsumerError::ConnectionLost`] (no failure of the batch: reconnect and take it again);
    /// [`ConsumerError::FinishFailed`] (another session finished it first);
    /// [`ConsumerError::BatchTakenOver`] (a sibling sub-consumer took it);
    /// [`ConsumerError::BatchDoneElsewhere`] (a remote target has it recorded; found done next
    /// time). [`ConsumerError::Core`]: unknown queue or consumer, database errors.
    pub async fn process_next_batch(&mut self) -> Result<Option<BatchReport>> {
        if !self.connected() {
            self.open().await?;
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let policy = RetryPolicy::new(&self.config, session.failed_queue);
        let start = Instant::now();
        let (client, target, config) = (&mut session.client, self.target.as_mut(), &self.config);
        let Some((batch, held)) = self
            .mode
            .take(Take {
                client,
                target,
                config,
                consumer: &*self.consumer,
            })
            .await?
        else {
            return Ok(None);
        };
        let span = tracing::info_span!(
            "batch",
            queue = self.config.queue.as_str(),
            consumer = self.name.as_str(),
            batch_id = %batch.id,
            events = field::Empty,
            elapsed_ms = field::Empty
        );
        let per_event = self.failures.count(&batch) >= self.config.batch_failures_before_per_event;
        let (consumer, failures) = (&*self.consumer, &mut self.failures);
        let (metrics, config) = (&*self.metrics, &self.config);
        async move {
            let Some(held) = held else {
                tracing::info!("batch already done on the target: finished without redoing it");
                let mut report = BatchReport::new(&batch, Counts::default(), false, start);
                report.already_done = true;
                return Ok(Some(report));
            };
            let handle = BatchHandle::new(&held.queue, held.work(), batch.clone(), policy);
            let counts = match process(consumer, handle, per_event).await {
                Ok(counts) => counts,
                Err(err) => {
                    let rolled_back = held.rollback().await;
                    return Err(failures.settle(err, rolled_back, &batch));
                }
            };
            held.finish::<M>(config, batch.id).await?;
            *failures = Failures::default();
            let report = BatchReport::new(&batch, counts, per_event, start);
            metrics.record(&report);
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
            consumer = %self.config.consumer,
            subconsumer = field::Empty,
            db = field::Empty
        );
        if let Some((name, value)) = self.mode.span_field() {
            span.record(name, value.as_str());
        }
        self.run_loop(cancel).instrument(span).await
    }

    async fn run_loop(&mut self, cancel: CancellationToken) -> Result<()> {
        let config = self.config.clone();
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
        let mut observed_at: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                if let Some(session) = &self.session {
                    self.mode.stopping(&session.client, &self.config).await;
                }
                tracing::info!("consumer stopped");
                return Ok(());
            }
            if !self.connected() {
                match self.open().await {
                    Ok(()) => {
                        backoff.reset();
                        tracing::info!("reconnected");
                    }
                    Err(err) if err.is_fatal() => return Err(err),
                    Err(err) => {
                        let wait = backoff.next_wait();
                        tracing::warn!(error = %error_text(&err), ?wait, "reconnecting");
                        pause(wait, &cancel).await;
                    }
                }
                continue;
            }
            let result = tokio::select! {
                result = self.process_next_batch() => Some(result),
                () = &mut hard => None,
            };
            let Some(result) = result else {
                self.abandon();
                tracing::warn!("shutdown timeout expired: batch in hand rolled back");
                return Err(ConsumerError::HardStopped);
            };
            let wait = match result {
                Ok(found) => {
                    backoff.reset();
                    if observed_at.map_or(true, |at| at.elapsed() >= config.observe_period) {
                        observed_at = Some(Instant::now());
                        if let Some(session) = &self.session {
                            let (queue, consumer) = (&config.queue, &config.consumer);
                            self.metrics.observe(&session.client, queue, consumer).await;
                        }
                    }
                    if let (None, Some(session)) = (found, self.session.as_mut()) {
                        session
                            .wait_for_tick(&config.queue, config.poll_interval, &cancel)
                            .await;
                    }
                    continue;
                }
                Err(err) if err.is_connection_lost() => {
                    self.session = None;
                    self.target = None;
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %error_text(&err), ?wait, "connection lost");
                    wait
                }
                Err(err) if err.is_fatal() => return Err(err),
                Err(ConsumerError::Postponed { reason, wait, .. }) => {
                    tracing::debug!(reason, ?wait, "batch postponed");
                    wait
                }
                Err(err) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %error_text(&err), ?wait, "batch failed; retrying");
                    wait
                }
            };
            pause(wait, &cancel).await;
        }
    }
}

/// Takes the consumer's next batch on `client`: with [`ConsumerConfig::catch_up_events`] and
/// the consumer's leave ([`Consumer::may_span_ticks`], asked in `work`), first one that spans
/// ticks up to about that many events when so many wait; else the next tick's.
pub(crate) async fn next_batch(
    client: &impl GenericClient,
    work: &Transaction<'_>,
    config: &ConsumerConfig,
    consumer: &dyn Consumer,
) -> Result<Option<Batch>> {
    let (queue, name) = (&config.queue, &config.consumer);
    if let Some(events) = config.catch_up_events {
        let may = consumer.may_span_ticks(work).await;
        if may.op("asking whether a batch may span ticks")? {
            let grown = pgq_core::next_batch_custom(client, queue, name, None, Some(events), None);
            if let Some(batch) = grown.await? {
                return Ok(Some(batch));
            }
        }
    }
    Ok(pgq_core::next_batch(client, queue, name).await?)
}

/// The local mode: each batch's work and its `finish_batch` commit in one transaction on the
/// queue's database.
#[derive(Debug)]
pub struct Local;

impl Steps for Local {
    async fn take<'a>(&'a mut self, on: Take<'a>) -> Result<Taken<'a>> {
        let (tx, config) = (on.client.transaction().await.op("begin")?, on.config);
        let Some(batch) = next_batch(&tx, &tx, config, on.consumer).await? else {
            tx.commit().await.op("commit")?;
            return Ok(None);
        };
        Ok(Some((batch, Some(Held::local(tx)))))
    }
}

/// A consumer that does its work on the queue's database: each batch's work and its
/// `finish_batch` commit in one transaction, so each batch is processed exactly once. The crate
/// docs show it at work.
pub type Runner = ConsumerRunner<Local>;

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
        let name = config.consumer.to_string();
        Self::start(dsn, config, name, consumer, Local).await
    }
}
