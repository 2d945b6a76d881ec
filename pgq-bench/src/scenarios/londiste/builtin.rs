//! PostgreSQL's built-in logical replication between two databases of the bench's server:
//! a publication of the workload's tables and a subscription with `binary = true`.
//!
//! Both sides are filled with the same rows, so the subscription starts with `copy_data =
//! false`. Its slot is made beforehand by `pg_create_logical_replication_slot`: a subscription
//! that creates its slot on its own server waits for itself. The moment the subscriber has
//! everything the provider committed is told by a marker row the provider updates last, in a
//! transaction of its own: the apply worker applies transactions in commit order, so once it
//! shows the marker's value it has applied every earlier transaction.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pgq_core::{quote_ident, quote_literal, Dsn};

use super::paced::{self, Search};
use super::workload::Workload;
use crate::harness::Server;

/// How long a catch-up may take at most.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// The marker table, on both sides and in the publication.
pub(super) const MARKER: &str = "public.bench_marker";

// language=SQL
pub(super) const MARKER_DDL: &str = "\
CREATE TABLE public.bench_marker (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO public.bench_marker VALUES (1, 0)";

// language=SQL
const WAL_LEVEL: &str = "SELECT current_setting('wal_level')";

/// Whether the server can publish (`wal_level = logical`).
pub(super) async fn available(server: &Server) -> Result<bool> {
    let client = server.maintenance().connect().await?;
    let level: String = client.query_one(WAL_LEVEL, &[]).await?.get(0);
    Ok(level == "logical")
}

/// A publication and its subscription, which is disabled until [`Subscription::enable`].
pub(super) struct Subscription {
    pub(super) provider: Dsn,
    pub(super) subscriber: Dsn,
    slot: String,
    /// The count the marker was last set to.
    marker: i64,
}

impl Subscription {
    /// Fresh databases `<prefix>p<run>` and `<prefix>s<run>`, both filled with the workload's
    /// rows and the marker, and a disabled subscription of them.
    pub(super) async fn new(
        server: &Server,
        prefix: &str,
        run: u32,
        workload: Workload,
    ) -> Result<Subscription> {
        let provider = server.scratch_db(&format!("{prefix}p{run}")).await?;
        let subscriber = server.scratch_db(&format!("{prefix}s{run}")).await?;
        for dsn in [&provider, &subscriber] {
            workload.fill(dsn).await?;
            dsn.connect()
                .await?
                .batch_execute(MARKER_DDL)
                .await
                .context("creating the marker")?;
        }
        // The slot is named after the subscriber database, which is unique on the server.
        let slot = subscriber.dbname().to_owned();
        let tables = workload.tables().join(", ");
        let p = provider.connect().await?;
        p.batch_execute(&format!(
            "CREATE PUBLICATION bench_pub FOR TABLE {tables}, {MARKER}"
        ))
        .await
        .context("creating the publication")?;
        p.query(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .context("creating the replication slot")?;
        subscriber
            .connect()
            .await?
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION bench_sub CONNECTION {} PUBLICATION bench_pub
                   WITH (create_slot = false, slot_name = {}, copy_data = false,
                         enabled = false, binary = true)",
                quote_literal(&provider.conninfo()),
                quote_ident(&slot)
            ))
            .await
            .context("creating the subscription")?;
        Ok(Subscription {
            provider,
            subscriber,
            slot,
            marker: 0,
        })
    }

    /// Starts the apply worker.
    pub(super) async fn enable(&self) -> Result<()> {
        self.subscriber
            .connect()
            .await?
            .batch_execute("ALTER SUBSCRIPTION bench_sub ENABLE")
            .await
            .context("enabling the subscription")
    }

    /// Sets the marker on the provider, after everything committed so far.
    pub(super) async fn mark(&mut self) -> Result<()> {
        self.marker = self
            .provider
            .connect()
            .await?
            .query_one(
                "UPDATE public.bench_marker SET n = n + 1 WHERE id = 1 RETURNING n",
                &[],
            )
            .await
            .context("setting the marker")?
            .get(0);
        Ok(())
    }

    /// Waits until the subscriber shows the last marker: it has applied everything committed
    /// before it.
    pub(super) async fn caught_up(&self) -> Result<()> {
        let watch = self.subscriber.connect().await?;
        let started = Instant::now();
        loop {
            let n: i64 = watch
                .query_one("SELECT n FROM public.bench_marker WHERE id = 1", &[])
                .await?
                .get(0);
            if n >= self.marker {
                return Ok(());
            }
            ensure!(
                started.elapsed() < CATCH_UP_TIMEOUT,
                "the subscription did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drops the subscription and its slot, so the databases can be dropped.
    pub(super) async fn drop(self) -> Result<()> {
        self.subscriber
            .connect()
            .await?
            .batch_execute(
                "ALTER SUBSCRIPTION bench_sub DISABLE;
                 ALTER SUBSCRIPTION bench_sub SET (slot_name = NONE);
                 DROP SUBSCRIPTION bench_sub",
            )
            .await
            .context("dropping the subscription")?;
        // The walsender serving the slot ends shortly after the apply worker.
        let p = self.provider.connect().await?;
        let started = Instant::now();
        loop {
            match p
                .query("SELECT pg_drop_replication_slot($1)", &[&self.slot])
                .await
            {
                Ok(_) => return Ok(()),
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => bail!("dropping replication slot {}: {err}", self.slot),
            }
        }
    }
}

/// One run: the backlog written with the subscription disabled, then the time from enabling
/// it until it caught up.
pub(super) async fn run(server: &Server, run: u32, workload: Workload) -> Result<f64> {
    let mut sub = Subscription::new(server, &format!("b{}", workload.tag()), run, workload).await?;
    workload.write_backlog(&sub.provider, 0).await?;
    sub.mark().await?;
    let started = Instant::now();
    sub.enable().await?;
    sub.caught_up().await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        workload.digest(&sub.provider).await? == workload.digest(&sub.subscriber).await?,
        "built-in logical replication left the tables different"
    );
    sub.drop().await?;
    Ok(seconds)
}

/// The paced search ([`paced::search`]) against a subscription of `accounts` of `rows` rows,
/// enabled throughout.
pub(super) async fn paced(
    server: &Server,
    rows: u64,
    step: Duration,
    max_steps: usize,
) -> Result<Search> {
    let workload = Workload::Uniform { rows, updates: 0 };
    let sub = Subscription::new(server, "br", 0, workload).await?;
    sub.enable().await?;
    let found = paced::search(&sub.provider, &sub.subscriber, rows, step, max_steps).await;
    sub.drop().await?;
    found
}
