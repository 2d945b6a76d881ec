//! Cooperative consumers (`pgq_coop`): sub-consumers of one group take the group's batches
//! one each, so several batches are processed at once, each whole, in one transaction.
//!
//! `pgq_coop.next_batch` locks the group's row and moves the group's position, so it commits
//! on its own. The processing transaction first locks the sub-consumer's own subscription row
//! (and checks that it still holds the batch): a sibling's takeover of a silent
//! sub-consumer's batch skips locked rows, so a batch being processed is never taken over,
//! however long it runs. A batch taken over before the lock is noticed there, and a late
//! `pgq_coop.finish_batch` of a taken-over batch fails (SQLSTATE `PQS06`): either way the work
//! rolls back and the batch is processed once, by the taker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgq_core::tokio_postgres::types::Type;
use pgq_core::tokio_postgres::Row;
use pgq_core::{Batch, BatchId, ConsumerName, Dsn, TickId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{ConsumerError, DbContext, Result};
use crate::metrics::ConsumerMetrics;
use crate::runner::{
    batch_span, policy, process, record_done, run_loop, settle_failure, BatchReport, Failures, Step,
};
use crate::session::Session;

// language=SQL
const REGISTER: &str = "SELECT pgq_coop.register_subconsumer($1, $2, $3)";

// language=SQL
const NEXT_BATCH: &str = "\
SELECT batch_id, cur_tick_id, prev_tick_id, cur_tick_time, prev_tick_time, cur_tick_event_seq,
       prev_tick_event_seq
  FROM pgq_coop.next_batch_custom_info($1, $2, $3, NULL, NULL, NULL,
                                      pg_catalog.make_interval(secs => $4))";

// language=SQL
const LOCK_OWN: &str = "\
SELECT 1
  FROM pgq.subscription s
  JOIN pgq.consumer c ON c.co_id OPERATOR(pg_catalog.=) s.sub_consumer
  JOIN pgq.queue q ON q.queue_id OPERATOR(pg_catalog.=) s.sub_queue
 WHERE q.queue_name OPERATOR(pg_catalog.=) $1 AND c.co_name OPERATOR(pg_catalog.=) $2 AND s.sub_batch OPERATOR(pg_catalog.=) $3
   FOR UPDATE OF s";

// language=SQL
const FINISH: &str = "SELECT pgq_coop.finish_batch($1)";

// language=SQL
const UNREGISTER: &str = "SELECT pgq_coop.unregister_subconsumer($1, $2, $3, 0)";

/// SQLSTATE of `pgq_coop.finish_batch` for a batch taken over by a sibling.
const TAKEN_OVER: &str = "PQS06";

/// One sub-consumer of a cooperative group. [`ConsumerConfig::consumer`] names the group;
/// the sub-consumer's lock is on `group.subconsumer`, so two processes never run one
/// sub-consumer. See the module docs for how a batch is never processed twice.
pub struct CoopRunner {
    dsn: Dsn,
    config: ConsumerConfig,
    subconsumer: ConsumerName,
    full_name: String,
    dead_interval: Option<Duration>,
    consumer: Arc<dyn Consumer>,
    session: Option<Session>,
    failures: Failures,
    metrics: Arc<ConsumerMetrics>,
}

impl std::fmt::Debug for CoopRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoopRunner")
            .field("queue", &self.config.queue)
            .field("subconsumer", &self.full_name)
            .finish_non_exhaustive()
    }
}

impl CoopRunner {
    /// Opens the sub-consumer's dedicated connection with its lock and registers it
    /// (`pgq_coop.register_subconsumer`, unless [`ConsumerConfig::register`] is off). With
    /// `dead_interval`, the sub-consumer takes over the open batch of a sibling silent for
    /// that long.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::ConsumerBusy`] when another runner runs this sub-consumer;
    /// [`ConsumerError::Db`] (SQLSTATE `PQS02` for an unknown queue) or
    /// [`ConsumerError::Core`] otherwise.
    pub async fn connect(
        dsn: &Dsn,
        config: ConsumerConfig,
        subconsumer: ConsumerName,
        dead_interval: Option<Duration>,
        consumer: Arc<dyn Consumer>,
    ) -> Result<CoopRunner> {
        let full_name = format!("{}.{}", config.consumer, subconsumer);
        let mut runner = CoopRunner {
            dsn: dsn.clone(),
            config,
            subconsumer,
            full_name,
            dead_interval,
            consumer,
            session: None,
            failures: Failures::default(),
            metrics: Arc::default(),
        };
        runner.open().await?;
        Ok(runner)
    }

    async fn open(&mut self) -> Result<()> {
        let session = Session::open(&self.dsn, &self.config.queue, &self.full_name).await?;
        if self.config.register {
            self.call(&session.client, REGISTER, "register_subconsumer")
                .await?;
        }
        self.session = Some(session);
        Ok(())
    }

    /// Runs `sql` with (queue, group, sub-consumer) as its parameters.
    async fn call(
        &self,
        client: &pgq_core::tokio_postgres::Client,
        sql: &str,
        op: &'static str,
    ) -> Result<Row> {
        let (queue, group, sub) = (
            self.config.queue.as_str(),
            self.config.consumer.as_str(),
            self.subconsumer.as_str(),
        );
        client
            .query_typed_one(
                sql,
                &[
                    (&queue, Type::TEXT),
                    (&group, Type::TEXT),
                    (&sub, Type::TEXT),
                ],
            )
            .await
            .op(op)
    }

    /// The runner's counters; they stay readable while `run` consumes the runner.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// One step: takes the group's next batch for this sub-consumer (committed on its own),
    /// then processes it and calls `pgq_coop.finish_batch` in one transaction that first locks
    /// the sub-consumer's row. `Ok(None)` when there is no batch.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::BatchTakenOver`] when a sibling took the batch (rolled back);
    /// otherwise as for [`Runner::process_next_batch`](crate::Runner::process_next_batch).
    pub async fn process_next_batch(&mut self) -> Result<Option<BatchReport>> {
        if self.session.is_none() {
            self.open().await?;
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let policy = policy(&self.config, session);
        let start = Instant::now();
        let dead = self.dead_interval.map(|d| d.as_secs_f64());
        let row = session
            .client
            .query_typed_one(
                NEXT_BATCH,
                &[
                    (&self.config.queue.as_str(), Type::TEXT),
                    (&self.config.consumer.as_str(), Type::TEXT),
                    (&self.subconsumer.as_str(), Type::TEXT),
                    (&dead, Type::FLOAT8),
                ],
            )
            .await
            .op("pgq_coop.next_batch")?;
        let Some(batch) = batch_from(&row)? else {
            return Ok(None);
        };
        let span = batch_span(self.config.queue.as_str(), &self.full_name, batch.id);
        let per_event = self.failures.count(&batch) >= self.config.batch_failures_before_per_event;
        let consumer = &*self.consumer;
        let failures = &mut self.failures;
        let metrics = &*self.metrics;
        let queue = self.config.queue.as_str();
        let full_name = self.full_name.as_str();
        async move {
            let tx = session.client.transaction().await.op("begin")?;
            let own = tx
                .query_typed_opt(
                    LOCK_OWN,
                    &[
                        (&queue, Type::TEXT),
                        (&full_name, Type::TEXT),
                        (&batch.id.0, Type::INT8),
                    ],
                )
                .await
                .op("locking the subconsumer")?;
            if own.is_none() {
                let _ = tx.rollback().await;
                return Err(ConsumerError::BatchTakenOver { batch_id: batch.id });
            }
            let counts = match process(consumer, &tx, &tx, &batch, policy, per_event).await {
                Ok(counts) => counts,
                Err(err) => {
                    let rolled_back = tx.rollback().await.is_ok();
                    return Err(settle_failure(err, rolled_back, failures, &batch));
                }
            };
            let finished = match tx
                .query_typed_one(FINISH, &[(&batch.id.0, Type::INT8)])
                .await
            {
                Ok(row) => row
                    .try_get::<_, Option<i32>>(0)
                    .op("pgq_coop.finish_batch")?,
                Err(err) if err.code().is_some_and(|c| c.code() == TAKEN_OVER) => {
                    let _ = tx.rollback().await;
                    return Err(ConsumerError::BatchTakenOver { batch_id: batch.id });
                }
                Err(source) => {
                    return Err(ConsumerError::Db {
                        op: "pgq_coop.finish_batch",
                        source,
                    })
                }
            };
            if finished != Some(1) {
                let _ = tx.rollback().await;
                return Err(ConsumerError::FinishFailed { batch_id: batch.id });
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

    /// Runs the sub-consumer until `cancel` fires, as [`Runner::run`](crate::Runner::run)
    /// does; on a soft stop it unregisters the sub-consumer if it holds no open batch (an open
    /// batch stays, for a sibling to take over).
    ///
    /// # Errors
    ///
    /// As for [`Runner::run`](crate::Runner::run).
    pub async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        let span = tracing::info_span!(
            "consumer",
            queue = %self.config.queue,
            consumer = %self.config.consumer,
            subconsumer = %self.subconsumer
        );
        run_loop(&mut self, cancel).instrument(span).await
    }
}

/// Reads a `next_batch_info` row; `None` when it names no batch.
fn batch_from(row: &Row) -> Result<Option<Batch>> {
    const OP: &str = "reading pgq_coop.next_batch";
    let Some(id) = row.try_get::<_, Option<i64>>(0).op(OP)? else {
        return Ok(None);
    };
    Ok(Some(Batch {
        id: BatchId(id),
        cur_tick: TickId(row.try_get(1).op(OP)?),
        prev_tick: TickId(row.try_get(2).op(OP)?),
        cur_tick_time: row.try_get(3).op(OP)?,
        prev_tick_time: row.try_get(4).op(OP)?,
        cur_tick_event_seq: row.try_get(5).op(OP)?,
        prev_tick_event_seq: row.try_get(6).op(OP)?,
    }))
}

impl Step for CoopRunner {
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

    async fn stopping(&mut self) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        match self
            .call(&session.client, UNREGISTER, "unregister_subconsumer")
            .await
        {
            Ok(_) => tracing::info!("subconsumer unregistered"),
            Err(err) => tracing::info!(
                error = %crate::batch::error_text(&err),
                "subconsumer kept registered (batch open)"
            ),
        }
    }
}

/// Runs a cooperative group in this process: one [`CoopRunner`] task per name in
/// `subconsumers`, all with the same consumer, until `cancel` fires.
///
/// # Errors
///
/// The first error of a sub-consumer (connecting or running); the others are stopped then.
pub async fn run_coop_group(
    dsn: &Dsn,
    config: ConsumerConfig,
    subconsumers: Vec<ConsumerName>,
    dead_interval: Option<Duration>,
    consumer: Arc<dyn Consumer>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut runners = Vec::with_capacity(subconsumers.len());
    for sub in subconsumers {
        runners.push(
            CoopRunner::connect(
                dsn,
                config.clone(),
                sub,
                dead_interval,
                Arc::clone(&consumer),
            )
            .await?,
        );
    }
    let inner = cancel.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for runner in runners {
        tasks.spawn(runner.run(inner.clone()));
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or(Ok(()));
        if let Err(err) = result {
            inner.cancel();
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}
