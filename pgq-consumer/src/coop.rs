//! The cooperative mode (`pgq_coop`): [`CoopRunner`] and [`run_coop_group`].

use std::sync::Arc;
use std::time::Duration;

use pgq_core::coop::{self, OpenBatch};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{BatchId, ConsumerName, Dsn};
use tokio_util::sync::CancellationToken;

use crate::batch::error_text;
use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{ConsumerError, DbContext, Result};
use crate::runner::sealed::{Held, Steps, Take, Taken};
use crate::runner::ConsumerRunner;

/// The cooperative mode: one sub-consumer of a group.
#[derive(Debug)]
pub struct Coop {
    subconsumer: ConsumerName,
    dead_interval: Option<Duration>,
}

impl Steps for Coop {
    fn span_field(&self) -> Option<(&'static str, String)> {
        Some(("subconsumer", self.subconsumer.to_string()))
    }

    async fn opened(&mut self, client: &Client, config: &ConsumerConfig) -> Result<()> {
        if config.register {
            coop::register_subconsumer(client, &config.queue, &config.consumer, &self.subconsumer)
                .await?;
        }
        Ok(())
    }

    async fn take<'a>(&'a mut self, on: Take<'a>) -> Result<Taken<'a>> {
        let (queue, group, sub) = (&on.config.queue, &on.config.consumer, &self.subconsumer);
        let next = coop::next_batch(&*on.client, queue, group, sub, self.dead_interval);
        let Some(batch) = next.await? else {
            return Ok(None);
        };
        let tx = on.client.transaction().await.op("begin")?;
        if let Err(err) = coop::lock_batch(&tx, queue, group, sub, batch.id).await {
            let _ = tx.rollback().await;
            return Err(ConsumerError::refused(err));
        }
        Ok(Some((batch, Some(Held::local(tx)))))
    }

    fn finish(
        tx: &Transaction<'_>,
        batch: BatchId,
    ) -> impl std::future::Future<Output = pgq_core::Result<()>> + Send {
        coop::finish_batch(tx, batch)
    }

    async fn stopping(&self, client: &Client, config: &ConsumerConfig) {
        let (queue, group, sub) = (&config.queue, &config.consumer, &self.subconsumer);
        match coop::unregister_subconsumer(client, queue, group, sub, OpenBatch::Refuse).await {
            Ok(_) => tracing::info!("subconsumer unregistered"),
            Err(err) => tracing::info!(
                error = %error_text(&err),
                "subconsumer kept registered (batch open)"
            ),
        }
    }
}

/// One sub-consumer of a cooperative group (`pgq_coop`): the group's sub-consumers take its
/// batches one each, so several are processed at once, each whole, in one transaction.
/// [`ConsumerConfig::consumer`] names the group; the lock is on `group.subconsumer`.
///
/// Taking a batch moves the group's position, so it commits on its own. The processing
/// transaction first locks the sub-consumer's row (checking it still holds the batch): a
/// takeover of a silent sibling's batch skips locked rows, so a batch in work is never taken
/// over. A takeover before the lock is noticed there, and a late `pgq_coop.finish_batch` of a
/// taken-over batch fails (`PQS06`): the work rolls back, the taker processes the batch once.
/// A soft stop unregisters the sub-consumer unless it holds a batch (left to a sibling).
pub type CoopRunner = ConsumerRunner<Coop>;

impl CoopRunner {
    /// Opens the sub-consumer's dedicated connection with its lock and registers it (unless
    /// [`ConsumerConfig::register`] is off). With `dead_interval`, it takes over the open
    /// batch of a sibling silent for that long.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::ConsumerBusy`] when another runner runs this sub-consumer;
    /// [`ConsumerError::Core`] for an unknown queue or a failed connection.
    pub async fn connect(
        dsn: &Dsn,
        config: ConsumerConfig,
        subconsumer: ConsumerName,
        dead_interval: Option<Duration>,
        consumer: Arc<dyn Consumer>,
    ) -> Result<CoopRunner> {
        let name = format!("{}.{}", config.consumer, subconsumer);
        let mode = Coop {
            subconsumer,
            dead_interval,
        };
        Self::start(dsn, config, name, consumer, mode).await
    }
}

/// Runs a cooperative group in this process: one [`CoopRunner`] task per name in
/// `subconsumers`, all with the same consumer, until `cancel` fires.
///
/// # Errors
///
/// The first error of a sub-consumer (connecting or running); the others are stopped then.
/// [`ConsumerError::NoSubconsumers`] for an empty `subconsumers`.
///
/// # Panics
///
/// When the handler panics: the other sub-consumers are stopped first, then the panic goes on.
pub async fn run_coop_group(
    dsn: &Dsn,
    config: ConsumerConfig,
    subconsumers: Vec<ConsumerName>,
    dead_interval: Option<Duration>,
    consumer: Arc<dyn Consumer>,
    cancel: CancellationToken,
) -> Result<()> {
    let runners = connect_coop_group(dsn, config, subconsumers, dead_interval, consumer).await?;
    run_runners(runners, cancel).await
}

/// Connects one [`CoopRunner`] per name in `subconsumers`; refuses an empty list.
pub(crate) async fn connect_coop_group(
    dsn: &Dsn,
    config: ConsumerConfig,
    subconsumers: Vec<ConsumerName>,
    dead_interval: Option<Duration>,
    consumer: Arc<dyn Consumer>,
) -> Result<Vec<CoopRunner>> {
    if subconsumers.is_empty() {
        return Err(ConsumerError::NoSubconsumers {
            queue: config.queue.to_string(),
            group: config.consumer.to_string(),
        });
    }
    let mut runners = Vec::with_capacity(subconsumers.len());
    for sub in subconsumers {
        let consumer = Arc::clone(&consumer);
        runners.push(CoopRunner::connect(dsn, config.clone(), sub, dead_interval, consumer).await?);
    }
    Ok(runners)
}

/// Runs `runners` side by side until `cancel` fires; the first error stops the others.
pub(crate) async fn run_runners(runners: Vec<CoopRunner>, cancel: CancellationToken) -> Result<()> {
    let inner = cancel.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for runner in runners {
        tasks.spawn(runner.run(inner.clone()));
    }
    run_all(tasks, inner).await
}

/// Waits for every task; the first error cancels `inner`, which stops the others, and is
/// returned. A task that panicked (a handler's panic) stops the others the same way, and its
/// panic goes on in the caller once they have stopped.
pub(crate) async fn run_all(
    mut tasks: tokio::task::JoinSet<Result<()>>,
    inner: CancellationToken,
) -> Result<()> {
    let mut first_error = None;
    let mut panic = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                inner.cancel();
                first_error.get_or_insert(err);
            }
            Err(join) if join.is_panic() => {
                inner.cancel();
                panic.get_or_insert(join.into_panic());
            }
            Err(_) => {}
        }
    }
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
    first_error.map_or(Ok(()), Err)
}
