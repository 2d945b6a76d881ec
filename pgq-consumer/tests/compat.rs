//! Against the original `pgq` extension, with our `pgq_coop` line on top.

use std::sync::Arc;
use std::time::Duration;

use pgq_consumer::{ConsumerError, CoopRunner, RemoteRunner, Runner, Typed};
use pgq_core::tokio_postgres::Client;
use pgq_core::{ConsumerName, Dsn, Line, QueueName};
use pgq_testkit::TestDb;

use crate::common::{config, count, create_applied, produce, produce_data, tick, Apply};

#[tokio::test]
async fn runners_work_on_the_original_extension() -> anyhow::Result<()> {
    let Some((db, mut client)) = with_the_extension().await? else {
        return Ok(());
    };
    pgq_core::install(&mut client, &[Line::Pgq, Line::PgqCoop, Line::PgqExt]).await?;
    let queue = QueueName::new(crate::common::QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    create_applied(&client).await?;
    let dsn = Dsn::parse(&db.dsn())?;

    let mut local =
        Runner::connect(&dsn, config(&queue, "local"), Arc::new(Apply::default())).await?;
    let mut cfg = config(&queue, "typed");
    cfg.event_retry_delay = Duration::from_secs(1);
    let mut typed = Runner::connect(&dsn, cfg, Arc::new(Typed(crate::local::Sum))).await?;
    let mut coop = CoopRunner::connect(
        &dsn,
        config(&queue, "group"),
        ConsumerName::new("s1")?,
        Some(Duration::from_secs(60)),
        Arc::new(Apply::default()),
    )
    .await?;
    produce(&client, 2, 5).await?;
    produce_data(&client, &[r#"{"n": 1}"#, "not json"]).await?;
    tick(&client).await?;

    assert_eq!(
        local.process_next_batch().await?.expect("a batch").events,
        12
    );
    assert_eq!(
        coop.process_next_batch().await?.expect("a batch").events,
        12
    );
    assert_eq!(
        count(&client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        12
    );
    // No failed-events table on the extension: events that do not decode (all but one) are
    // retried instead.
    let report = typed.process_next_batch().await?.expect("a batch");
    assert_eq!((report.failed, report.retried), (0, 11));
    assert_eq!(
        count(&client, "SELECT count(*) FROM pgq.retry_queue").await?,
        11
    );
    Ok(())
}

#[tokio::test]
async fn a_remote_runner_needs_the_providers_installation_id() -> anyhow::Result<()> {
    let Some((db, mut client)) = with_the_extension().await? else {
        return Ok(());
    };
    let queue = QueueName::new(crate::common::QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    let dsn = Dsn::parse(&db.dsn())?;
    let target = crate::remote::target().await?;
    let connect = || {
        RemoteRunner::connect(
            &dsn,
            &target.dsn,
            config(&queue, "remote"),
            Arc::new(Apply::default()),
        )
    };
    // The message (pgq-core's tests show it) says how to get one.
    match connect().await {
        Err(ConsumerError::Core(pgq_core::Error::NoInstallationId { db: name })) => {
            assert_eq!(name, db.name());
        }
        other => panic!("expected NoInstallationId, got {other:?}"),
    }
    // As the message says: a pgq-rs line next to the extension makes one.
    pgq_core::install(&mut client, &[Line::PgqExt]).await?;
    let mut runner = connect().await?;
    produce(&client, 1, 5).await?;
    tick(&client).await?;
    assert_eq!(
        runner.process_next_batch().await?.expect("a batch").events,
        5
    );
    assert_eq!(
        count(&target.client, "SELECT count(*) FROM applied").await?,
        5
    );
    Ok(())
}

/// A fresh database with the original pgq extension created, or `None` (the test skips) where
/// the server does not have it.
async fn with_the_extension() -> anyhow::Result<Option<(TestDb, Client)>> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        println!("SKIPPED: the original pgq extension is not installed on this server");
        return Ok(None);
    }
    pgq_testkit::create_reference_extension(&client).await?;
    Ok(Some((db, client)))
}
