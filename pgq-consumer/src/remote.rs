//! The remote mode (`pgq_ext`): [`RemoteRunner`].

use std::sync::Arc;

use pgq_core::tokio_postgres::Client;
use pgq_core::{Dsn, InstallationId};

use crate::config::ConsumerConfig;
use crate::consumer::Consumer;
use crate::error::{DbContext, Result};
use crate::runner::next_batch;
use crate::runner::sealed::{Held, Steps, Take, Taken};
use crate::runner::ConsumerRunner;
use crate::session::register;

/// The remote mode: a target database with the `pgq_ext` line.
#[derive(Debug)]
pub struct Remote {
    target_dsn: Dsn,
    /// The queue database's installation id, read with each new session.
    provider_id: Option<InstallationId>,
}

impl Steps for Remote {
    fn span_field(&self) -> Option<(&'static str, String)> {
        Some(("db", self.target_dsn.dbname().to_owned()))
    }

    async fn opened(&mut self, client: &Client, config: &ConsumerConfig) -> Result<()> {
        register(client, config).await?;
        self.provider_id = Some(pgq_core::installation_id(client).await?);
        Ok(())
    }

    fn target(&self) -> Option<&Dsn> {
        Some(&self.target_dsn)
    }

    async fn take<'a>(&'a mut self, on: Take<'a>) -> Result<Taken<'a>> {
        let (client, config) = (on.client, on.config);
        let (Some(target), Some(provider)) = (on.target, self.provider_id.as_ref()) else {
            return Ok(None);
        };
        let (queue, consumer) = (&config.queue, &config.consumer);
        // Begun before the batch is taken: the consumer may lock what bounds the batch there.
        let ttx = target.transaction().await.op("begin on the target")?;
        let Some(batch) = next_batch(&*client, &ttx, config, on.consumer).await? else {
            ttx.rollback().await.op("rollback on the target")?;
            return Ok(None);
        };
        if pgq_core::ext::is_batch_done_for_update(&ttx, provider, queue, consumer, batch.id)
            .await?
        {
            ttx.rollback().await.op("rollback on the target")?;
            pgq_core::finish_batch(&*client, batch.id).await?;
            return Ok(Some((batch, None)));
        }
        let held = Held {
            queue: client.transaction().await.op("begin")?,
            target: Some((ttx, provider)),
        };
        Ok(Some((batch, Some(held))))
    }
}

/// A consumer whose work lands in a target database with the `pgq_ext` line.
///
/// The batch is taken (and committed) on the queue's database first, so its id survives a
/// crash; a target transaction then locks the tracking row of (the queue database's
/// installation id, queue, consumer): a batch recorded there is only finished (the process died
/// between the two commits); else the handler works in that transaction, which records the
/// batch, and after it commits the batch is finished on the queue's database. A second worker
/// of the consumer waits at that lock, then finds the batch done or does it: each batch is
/// applied once. Retry hand-backs commit with the finish, after the target: a death between the
/// two commits loses them (the rest of the batch is applied once).
pub type RemoteRunner = ConsumerRunner<Remote>;

impl RemoteRunner {
    /// Connects to the queue's database (the consumer's lock, LISTEN, registration, the
    /// installation id) and to the target database (checking its `pgq_ext` line).
    ///
    /// # Errors
    ///
    /// As for [`Runner::connect`](crate::Runner::connect); besides,
    /// [`pgq_core::Error::NoInstallationId`] when the queue's database has no pgq-rs line (only
    /// the original `pgq` extension), and [`pgq_core::Error::SchemaOutdated`] when the
    /// target's `pgq_ext` line is missing or older than this build's.
    pub async fn connect(
        dsn: &Dsn,
        target_dsn: &Dsn,
        config: ConsumerConfig,
        consumer: Arc<dyn Consumer>,
    ) -> Result<RemoteRunner> {
        let name = config.consumer.to_string();
        let mode = Remote {
            target_dsn: target_dsn.clone(),
            provider_id: None,
        };
        Self::start(dsn, config, name, consumer, mode).await
    }
}
