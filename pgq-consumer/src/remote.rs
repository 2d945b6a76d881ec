//! Remote consumers: the work is done in another database, where the batch id is recorded
//! (`pgq_ext.set_batch_done`) in the same transaction as the work; the batch is finished on the
//! queue's database afterwards. A batch found done already (the process died between the two
//! commits) is finished without redoing the work, so each batch is applied once.
//!
//! The tracking is keyed by the queue database's installation id, the queue and the consumer,
//! and its row is locked in the target transaction before the check: a second worker of the
//! same consumer (a standby that took over after this one's queue connection dropped) waits
//! there until this one's work commits or rolls back, then finds the batch done or does it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgq_core::tokio_postgres::types::{ToSql, Type};
use pgq_core::tokio_postgres::Client;
use pgq_core::{Dsn, InstallationId, Line};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::batch::Counts;
use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{ConsumerError, DbContext, Result};
use crate::metrics::ConsumerMetrics;
use crate::runner::{
    batch_span, policy, process, record_done, register, run_loop, settle_failure, BatchReport,
    Failures, Step,
};
use crate::session::{cancel_in_background, Session};

// Parameters: the queue database's installation id, the queue, the consumer, the batch id.
// language=SQL
const LOCK_IS_DONE: &str =
    "SELECT pgq_ext.is_batch_done_for_update($1::pg_catalog.uuid, $2, $3, $4)";

// language=SQL
const SET_DONE: &str = "SELECT pgq_ext.set_batch_done($1::pg_catalog.uuid, $2, $3, $4)";

/// What `pgq_ext.set_batch_done` raises for a batch done already.
const DONE_ALREADY: &str = "PQX01";

/// A consumer whose work lands in a target database that has the `pgq_ext` line installed.
///
/// The batch is taken (and committed) on the queue's database first, so its id survives a
/// crash; then a transaction on the target database locks the tracking row of (the queue
/// database's installation id, queue, consumer) and checks the batch; the handler works in that
/// transaction, which also records the batch id; after that commits, the batch is finished on
/// the queue's database. Any number of workers of one consumer apply each batch once. Events the
/// handler hands back for a retry are recorded in the queue's transaction, which commits after
/// the target's: if the process dies between the two commits, the batch counts as done and
/// those hand-backs are lost (the rest of the batch is applied once).
pub struct RemoteRunner {
    dsn: Dsn,
    target_dsn: Dsn,
    config: ConsumerConfig,
    consumer: Arc<dyn Consumer>,
    session: Option<Session>,
    /// The queue database's installation id, read with each new session.
    provider_id: Option<InstallationId>,
    target: Option<Client>,
    failures: Failures,
    metrics: Arc<ConsumerMetrics>,
}

impl std::fmt::Debug for RemoteRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRunner")
            .field("queue", &self.config.queue)
            .field("consumer", &self.config.consumer)
            .field("target_db", &self.target_dsn.dbname())
            .finish_non_exhaustive()
    }
}

impl RemoteRunner {
    /// Connects to the queue's database (dedicated connection with the consumer's lock,
    /// LISTEN, registration, the installation id) and to the target database (checking its
    /// `pgq_ext` line).
    ///
    /// # Errors
    ///
    /// As for [`Runner::connect`](crate::Runner::connect); besides,
    /// [`pgq_core::Error::NoInstallationId`] when the queue's database has no pgq-rs line
    /// installed (only the original `pgq` extension), and [`pgq_core::Error::SchemaOutdated`]
    /// when the target's `pgq_ext` line is missing or older than this build's.
    pub async fn connect(
        dsn: &Dsn,
        target_dsn: &Dsn,
        config: ConsumerConfig,
        consumer: Arc<dyn Consumer>,
    ) -> Result<RemoteRunner> {
        let mut runner = RemoteRunner {
            dsn: dsn.clone(),
            target_dsn: target_dsn.clone(),
            config,
            consumer,
            session: None,
            provider_id: None,
            target: None,
            failures: Failures::default(),
            metrics: Arc::default(),
        };
        runner.open().await?;
        Ok(runner)
    }

    async fn open(&mut self) -> Result<()> {
        if self.session.is_none() {
            let session =
                Session::open(&self.dsn, &self.config.queue, self.config.consumer.as_str()).await?;
            register(&session.client, &self.config).await?;
            self.provider_id = Some(pgq_core::installation_id(&session.client).await?);
            self.session = Some(session);
        }
        if self.target.as_ref().map_or(true, Client::is_closed) {
            let target = self.target_dsn.connect().await?;
            pgq_core::check(&target, &[Line::PgqExt]).await?;
            self.target = Some(target);
        }
        Ok(())
    }

    /// The runner's counters; they stay readable while `run` consumes the runner.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// One step: takes the next batch and locks its tracking row on the target; if the target
    /// has it recorded as done, only finishes it; else processes it in that target
    /// transaction, which records it, commits that, then finishes the batch on the queue's
    /// database. `Ok(None)` when there is no batch.
    ///
    /// # Errors
    ///
    /// As for [`Runner::process_next_batch`](crate::Runner::process_next_batch); besides,
    /// [`ConsumerError::BatchDoneElsewhere`] when the target refused to record the batch as
    /// done (rolled back; the batch stays open in the queue and is found done next time).
    pub async fn process_next_batch(&mut self) -> Result<Option<BatchReport>> {
        if self.session.is_none() || self.target.as_ref().map_or(true, Client::is_closed) {
            self.open().await?;
        }
        let (Some(session), Some(target), Some(provider_id)) = (
            self.session.as_mut(),
            self.target.as_mut(),
            self.provider_id.as_ref(),
        ) else {
            return Ok(None);
        };
        let policy = policy(&self.config, session);
        let start = Instant::now();
        let Some(batch) =
            pgq_core::next_batch(&session.client, &self.config.queue, &self.config.consumer)
                .await?
        else {
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
        let key = [
            provider_id.as_str(),
            self.config.queue.as_str(),
            self.config.consumer.as_str(),
        ];
        let batch_id = batch.id.0;
        let params = [
            (&key[0] as &(dyn ToSql + Sync), Type::TEXT),
            (&key[1], Type::TEXT),
            (&key[2], Type::TEXT),
            (&batch_id, Type::INT8),
        ];
        async move {
            let ttx = target.transaction().await.op("begin on the target")?;
            let done: bool = ttx
                .query_typed_one(LOCK_IS_DONE, &params)
                .await
                .op("pgq_ext.is_batch_done_for_update")?
                .try_get(0)
                .op("pgq_ext.is_batch_done_for_update")?;
            if done {
                ttx.rollback().await.op("rollback on the target")?;
                pgq_core::finish_batch(&session.client, batch.id).await?;
                let mut report = BatchReport::new(&batch, Counts::default(), false, start);
                report.already_done = true;
                tracing::info!("batch already done on the target: finished without redoing it");
                return Ok(Some(report));
            }
            let qtx = session.client.transaction().await.op("begin")?;
            let counts = match process(consumer, &qtx, &ttx, &batch, policy, per_event).await {
                Ok(counts) => counts,
                Err(err) => {
                    let target_ok = ttx.rollback().await.is_ok();
                    let queue_ok = qtx.rollback().await.is_ok();
                    let rolled_back = target_ok && queue_ok;
                    return Err(settle_failure(err, rolled_back, failures, &batch));
                }
            };
            if let Err(err) = ttx.query_typed_one(SET_DONE, &params).await {
                let _ = ttx.rollback().await;
                let _ = qtx.rollback().await;
                if err.code().is_some_and(|c| c.code() == DONE_ALREADY) {
                    return Err(ConsumerError::BatchDoneElsewhere { batch_id: batch.id });
                }
                return Err(ConsumerError::Db {
                    op: "pgq_ext.set_batch_done",
                    source: err,
                });
            }
            ttx.commit().await.op("commit on the target")?;
            match pgq_core::finish_batch(&qtx, batch.id).await {
                Ok(()) => {}
                Err(pgq_core::Error::BatchNotFound { batch_id }) => {
                    return Err(ConsumerError::FinishFailed { batch_id });
                }
                Err(err) => return Err(err.into()),
            }
            qtx.commit().await.op("commit")?;
            failures.clear();
            let report = BatchReport::new(&batch, counts, per_event, start);
            record_done(&report, metrics);
            Ok(Some(report))
        }
        .instrument(span)
        .await
    }

    /// Runs until `cancel` fires, as [`Runner::run`](crate::Runner::run) does.
    ///
    /// # Errors
    ///
    /// As for [`Runner::run`](crate::Runner::run).
    pub async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let span = tracing::info_span!(
            "consumer",
            queue = %self.config.queue,
            consumer = %self.config.consumer,
            db = %self.target_dsn.dbname()
        );
        run_loop(&mut self, cancel).instrument(span).await
    }
}

impl Step for RemoteRunner {
    fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    fn connected(&self) -> bool {
        self.session.is_some() && self.target.as_ref().is_some_and(|t| !t.is_closed())
    }

    fn disconnect(&mut self) {
        self.session = None;
        self.target = None;
    }

    fn abandon(&mut self) {
        if let Some(session) = self.session.take() {
            session.abandon(&self.dsn);
        }
        if let Some(target) = self.target.take() {
            cancel_in_background(&self.target_dsn, &target);
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
