//! A consumer over a queue partitioned by key (`pgq_core::partition`): one [`Runner`] per
//! partition database, all in parallel, with one handler.
//!
//! Each partition's batches are processed exactly once and one after another, in `ev_id` order,
//! as by any [`Runner`]; a key's events all sit on one partition, where `insert_event_by_key`
//! made their id order their commit order, so the handler sees each key's events in commit
//! order. Different partitions run at the same time: the handler is called concurrently for
//! different partitions, never for two batches of one partition.
//!
//! [`run_partitioned_coop`] runs a cooperative group ([`crate::CoopRunner`]) on every partition
//! instead: it processes batches of one partition concurrently, so two events of one key in
//! different batches can then be handled out of order. Use it only where per-key order does not
//! matter; for more parallelism with key order, use more logical partitions over more databases.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgq_core::{Backoff, ConsumerName, Dsn};
use tokio_util::sync::CancellationToken;

use crate::batch::error_text;
use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::coop::{connect_coop_group, run_all, run_runners};
use crate::error::Result;
use crate::runner::Runner;
use crate::session::pause;

/// Runs `consumer` over every partition in `partitions` until `cancel` fires. A partition that
/// cannot be reached (at start or later) is retried with the config's backoff while the others
/// go on; its batches wait on the server and none is lost.
///
/// # Errors
///
/// The first error no retry can fix (an unknown queue or consumer on a partition); the other
/// partitions are stopped then.
///
/// # Panics
///
/// When the handler panics: the other partitions are stopped first, then the panic goes on.
pub async fn run_partitioned(
    partitions: &[Dsn],
    config: ConsumerConfig,
    consumer: Arc<dyn Consumer>,
    cancel: CancellationToken,
) -> Result<()> {
    each_partition(partitions, config, cancel, move |dsn, config, cancel| {
        let consumer = Arc::clone(&consumer);
        async move {
            let connect = || Runner::connect(&dsn, config.clone(), Arc::clone(&consumer));
            match keep_connecting(&dsn, &config, &cancel, connect).await? {
                Some(runner) => runner.run(cancel).await,
                None => Ok(()),
            }
        }
    })
    .await
}

/// Like [`run_partitioned`], with a cooperative group on every partition: the sub-consumers
/// `subconsumers` of group [`ConsumerConfig::consumer`] (see [`crate::CoopRunner`]) take that
/// partition's batches side by side, so a partition's batches are processed in parallel and
/// **two events of one key in different batches can be handled out of order**. Each batch is
/// still processed once, whole, in one transaction. Use it where per-key order does not
/// matter; where it does, use more logical partitions over more databases instead.
///
/// # Errors
///
/// As for [`run_partitioned`]; [`crate::ConsumerError::NoSubconsumers`] for an empty
/// `subconsumers`.
///
/// # Panics
///
/// As for [`run_partitioned`].
pub async fn run_partitioned_coop(
    partitions: &[Dsn],
    config: ConsumerConfig,
    subconsumers: Vec<ConsumerName>,
    dead_interval: Option<Duration>,
    consumer: Arc<dyn Consumer>,
    cancel: CancellationToken,
) -> Result<()> {
    each_partition(partitions, config, cancel, move |dsn, config, cancel| {
        let (consumer, subconsumers) = (Arc::clone(&consumer), subconsumers.clone());
        async move {
            let connect = || {
                let (config, consumer) = (config.clone(), Arc::clone(&consumer));
                connect_coop_group(&dsn, config, subconsumers.clone(), dead_interval, consumer)
            };
            match keep_connecting(&dsn, &config, &cancel, connect).await? {
                Some(runners) => run_runners(runners, cancel).await,
                None => Ok(()),
            }
        }
    })
    .await
}

/// Runs `consume` for every partition at once; the first error no retry can fix stops them
/// all and is returned.
async fn each_partition<F, Fut>(
    partitions: &[Dsn],
    config: ConsumerConfig,
    cancel: CancellationToken,
    consume: F,
) -> Result<()>
where
    F: Fn(Dsn, ConsumerConfig, CancellationToken) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let inner = cancel.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for dsn in partitions {
        tasks.spawn(consume(dsn.clone(), config.clone(), inner.clone()));
    }
    run_all(tasks, inner).await
}

/// Calls `connect` until it succeeds, backing off after each failure a retry can fix;
/// `None` when `cancel` fired first (also during an attempt).
async fn keep_connecting<T, F, Fut>(
    dsn: &Dsn,
    config: &ConsumerConfig,
    cancel: &CancellationToken,
    connect: F,
) -> Result<Option<T>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let attempt = tokio::select! {
            attempt = connect() => attempt,
            () = cancel.cancelled() => return Ok(None),
        };
        match attempt {
            Ok(connected) => return Ok(Some(connected)),
            Err(err) if err.is_fatal() => return Err(err),
            Err(err) => {
                let wait = backoff.next_wait();
                tracing::warn!(partition = %dsn, error = %error_text(&err), ?wait, "partition unreachable");
                pause(wait, cancel).await;
            }
        }
    }
}
