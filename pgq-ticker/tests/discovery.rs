//! Discovery: every database of a (private) server that has PGQ, found while running.

use std::time::Duration;

use pgq_core::tokio_postgres::{Client, NoTls};
use pgq_core::{Line, QueueName};
use pgq_testkit::{Cluster, ClusterOptions};
use pgq_ticker::{Databases, Ticker};
use tokio_util::sync::CancellationToken;

use crate::setup::{dsn, fast_config, queue_with, ticked};

async fn connect(cluster: &Cluster, db: &str) -> anyhow::Result<Client> {
    let (client, connection) = pgq_core::tokio_postgres::connect(&cluster.dsn(db), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A new database with PGQ and a queue that ticks at the first event.
async fn database_with_queue(cluster: &Cluster, name: &str) -> anyhow::Result<(Client, QueueName)> {
    connect(cluster, "postgres")
        .await?
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut client = connect(cluster, name).await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    let q = queue_with(&client, "q", &[]).await?;
    Ok((client, q))
}

#[tokio::test]
async fn discovery_finds_databases_with_pgq_also_later_ones() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    connect(&cluster, "postgres")
        .await?
        .batch_execute("CREATE DATABASE plain")
        .await?;
    let (first, first_q) = database_with_queue(&cluster, "first").await?;

    let cancel = CancellationToken::new();
    let config = fast_config(Databases::Discover(dsn(&cluster.dsn("postgres"))?))?;
    let daemon = tokio::spawn(Ticker::new(config).run(cancel.clone()));
    ticked(&first, &first_q).await?;

    let (later, later_q) = database_with_queue(&cluster, "later").await?;
    ticked(&later, &later_q).await?;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), daemon).await??;
    Ok(())
}
