//! The runner's dedicated connection: it holds the consumer's advisory lock, LISTENs for ticks,
//! registers the consumer and runs the batch transactions.

use std::time::Duration;

use pgq_core::tokio_postgres::types::Type;
use pgq_core::tokio_postgres::{Client, Notification};
use pgq_core::{Dsn, QueueName};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::config::ConsumerConfig;
use crate::error::{ConsumerError, DbContext, Result};

// language=SQL
const TRY_LOCK: &str = "\
SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended(
           pg_catalog.format('pgq-rs consumer %s:%s/%s', pg_catalog.length($1), $1, $2), 0))";

/// A dedicated connection holding the lock of one (queue, consumer).
pub(crate) struct Session {
    pub(crate) client: Client,
    notifications: UnboundedReceiver<Notification>,
    pub(crate) failed_queue: bool,
}

impl Session {
    /// Connects, takes the lock and LISTENs.
    pub(crate) async fn open(dsn: &Dsn, queue: &QueueName, lock_name: &str) -> Result<Session> {
        let (client, notifications) = dsn.connect_with_notifications().await?;
        let row = client
            .query_typed_one(
                TRY_LOCK,
                &[(&queue.as_str(), Type::TEXT), (&lock_name, Type::TEXT)],
            )
            .await
            .op("pg_try_advisory_lock")?;
        if !row.try_get::<_, bool>(0).op("pg_try_advisory_lock")? {
            return Err(ConsumerError::ConsumerBusy {
                queue: queue.to_string(),
                consumer: lock_name.to_owned(),
            });
        }
        pgq_core::maintenance::listen_ticks(&client).await?;
        let failed_queue = pgq_core::failed::is_installed(&client).await?;
        Ok(Session {
            client,
            notifications,
            failed_queue,
        })
    }

    /// Gives the connection (made with `dsn`) up in the middle of a batch: asks the server to
    /// cancel the statement in flight and closes the connection, which rolls the batch's
    /// transaction back.
    pub(crate) fn abandon(self, dsn: &Dsn) {
        cancel_in_background(dsn, &self.client);
    }

    /// Waits until a tick of `queue` is announced, `timeout` passes, or `cancel` fires. A
    /// notification that arrived while the runner was busy ends the wait at once.
    pub(crate) async fn wait_for_tick(
        &mut self,
        queue: &QueueName,
        timeout: Duration,
        cancel: &CancellationToken,
    ) {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                n = self.notifications.recv() => match n {
                    Some(n) if n.payload() == queue.as_str() => return,
                    Some(_) => {}
                    None => {
                        // The connection ended: poll until the timeout shows the loss.
                        let left = deadline.deadline() - tokio::time::Instant::now();
                        return pause(left, cancel).await;
                    }
                },
                () = &mut deadline => return,
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// Sleeps for `wait` unless `cancel` fires first.
pub(crate) async fn pause(wait: Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = cancel.cancelled() => {}
    }
}

/// Registers the consumer as the settings say (at `register_at` only when new).
pub(crate) async fn register(client: &Client, config: &ConsumerConfig) -> Result<()> {
    let (queue, consumer) = (&config.queue, &config.consumer);
    match config.register_at {
        _ if !config.register => {}
        Some(tick) => {
            if !pgq_core::is_registered(client, queue, consumer).await? {
                pgq_core::register_consumer_at(client, queue, consumer, tick).await?;
            }
        }
        None => {
            pgq_core::register_consumer(client, queue, consumer).await?;
        }
    }
    Ok(())
}

/// Asks the server to cancel `client`'s running statement (best effort, in the background),
/// over a cancel connection with `dsn`'s TLS settings: a statement stuck on the server would
/// otherwise run on after its connection is dropped, holding the batch's locks.
pub(crate) fn cancel_in_background(dsn: &Dsn, client: &Client) {
    let token = client.cancel_token();
    let dsn = dsn.clone();
    tokio::spawn(async move {
        if let Err(err) = dsn.cancel_query(&token).await {
            tracing::warn!(error = %crate::batch::error_text(&err), "cancel request failed");
        }
    });
}
