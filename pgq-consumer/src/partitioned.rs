//! A consumer over a queue partitioned by key (`pgq_core::partition`): one [`Runner`] per
//! partition database, all in parallel, with one handler.
//!
//! Each partition's batches are processed exactly once and one after another, in `ev_id` order,
//! as by any [`Runner`]; a key's events all sit on one partition, where `insert_event_by_key`
//! made their id order their commit order, so the handler sees each key's events in commit
//! order. Different partitions run at the same time: the handler is called concurrently for
//! different partitions, never for two batches of one partition.
//!
//! Cooperative sub-consumers ([`crate::CoopRunner`]) inside a partition process batches of that
//! partition concurrently, so two events of one key in different batches can then be handled
//! out of order: use them only where per-key order does not matter, or for more partitions use
//! more logical partitions over more databases.

use std::sync::Arc;

use pgq_core::{Backoff, Dsn};
use tokio_util::sync::CancellationToken;

use crate::batch::error_text;
use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::coop::run_all;
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
pub async fn run_partitioned(
    partitions: &[Dsn],
    config: ConsumerConfig,
    consumer: Arc<dyn Consumer>,
    cancel: CancellationToken,
) -> Result<()> {
    let inner = cancel.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for dsn in partitions {
        let (dsn, config, consumer, cancel) = (
            dsn.clone(),
            config.clone(),
            Arc::clone(&consumer),
            inner.clone(),
        );
        tasks.spawn(async move {
            let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
            loop {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                match Runner::connect(&dsn, config.clone(), Arc::clone(&consumer)).await {
                    Ok(runner) => return runner.run(cancel).await,
                    Err(err) if err.is_fatal() => return Err(err),
                    Err(err) => {
                        let wait = backoff.next_wait();
                        tracing::warn!(partition = %dsn, error = %error_text(&err), ?wait, "partition unreachable");
                        pause(wait, &cancel).await;
                    }
                }
            }
        });
    }
    run_all(tasks, inner).await
}
