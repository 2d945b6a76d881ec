//! The daemon survives a server restart and terminated connections.

use std::time::Duration;

use pgq_core::tokio_postgres::{Client, NoTls};
use pgq_core::{Line, QueueName};
use pgq_testkit::{Cluster, ClusterOptions};
use pgq_ticker::{Databases, Ticker};
use tokio_util::sync::CancellationToken;

use crate::setup::{dsn, fast_config, queue_with, tick_count, wait_for};

async fn connect(cluster: &Cluster, db: &str) -> anyhow::Result<Client> {
    let (client, connection) = pgq_core::tokio_postgres::connect(&cluster.dsn(db), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Inserts an event and waits until the daemon has ticked it.
async fn ticked(cluster: &Cluster, q: &QueueName, what: &str) -> anyhow::Result<()> {
    let client = connect(cluster, "app").await?;
    let before = tick_count(&client, q).await?;
    pgq_core::insert_event(&client, q, "t", what).await?;
    wait_for(what, Duration::from_secs(20), || async {
        Ok(tick_count(&client, q).await? > before)
    })
    .await
}

#[tokio::test]
async fn the_daemon_survives_a_restart_and_terminated_connections() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    connect(&cluster, "postgres")
        .await?
        .batch_execute("CREATE DATABASE app")
        .await?;
    let mut setup = connect(&cluster, "app").await?;
    pgq_core::install(&mut setup, &[Line::Pgq]).await?;
    let q = queue_with(&setup, "q", &["c"]).await?;
    drop(setup);

    let cancel = CancellationToken::new();
    let config = fast_config(Databases::List(vec![dsn(&cluster.dsn("app"))?]))?;
    let daemon = tokio::spawn(Ticker::new(config).run(cancel.clone()));
    ticked(&cluster, &q, "before the restart").await?;

    cluster.restart().await?;
    ticked(&cluster, &q, "after the restart").await?;

    let admin = connect(&cluster, "app").await?;
    let terminated: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
               FROM pg_stat_activity WHERE application_name = 'pgq-ticker'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(terminated, 1);
    ticked(&cluster, &q, "after pg_terminate_backend").await?;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), daemon).await??;
    Ok(())
}
