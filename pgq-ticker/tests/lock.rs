//! At most one ticker per database.

use std::time::Duration;

use pgq_core::maintenance::TICKER_LOCK_KEY;
use pgq_core::tokio_postgres::Client;
use pgq_testkit::TestDb;
use pgq_ticker::{DatabaseTicker, Databases, Ticker, TickerError};
use tokio_util::sync::CancellationToken;

use crate::setup::{dsn, fast_config, ours, queue_with, ticked, wait_for, Log};

/// The backend pids of sessions holding the ticker lock in this database.
async fn lock_holders(client: &Client) -> anyhow::Result<Vec<i32>> {
    Ok(client
        .query(
            "SELECT pid FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid = ($1::int8 >> 32)::oid AND objid = ($1::int8 & 4294967295)::oid",
            &[&TICKER_LOCK_KEY],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

#[tokio::test]
async fn a_second_ticker_stands_by_until_the_first_is_gone() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    queue_with(&client, "q", &[]).await?;
    let dsn = dsn(&db.dsn())?;

    let first = DatabaseTicker::connect(&dsn).await?;
    match DatabaseTicker::connect(&dsn).await {
        Err(TickerError::AlreadyTicked { db: name }) => assert_eq!(name, db.name()),
        other => panic!("expected AlreadyTicked, got {other:?}"),
    }
    let status = pgq_ticker::database_status(&client).await?;
    let holder = status.ticker.expect("a ticker holds the database");
    assert_eq!(holder.application_name, "pgq-ticker");
    assert_eq!(lock_holders(&client).await?, vec![holder.pid]);

    drop(first);
    wait_for("the lock to be free", Duration::from_secs(5), || async {
        Ok(lock_holders(&client).await?.is_empty())
    })
    .await?;
    let _second = DatabaseTicker::connect(&dsn).await?;
    Ok(())
}

#[tokio::test]
async fn two_daemons_on_one_database_never_tick_together() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    let q = queue_with(&client, "q", &[]).await?;
    let config = fast_config(Databases::List(vec![dsn(&db.dsn())?]))?;

    let first_stop = CancellationToken::new();
    let first = tokio::spawn(Ticker::new(config.clone()).run(first_stop.clone()));
    wait_for(
        "the first daemon to hold the lock",
        Duration::from_secs(10),
        || async { Ok(lock_holders(&client).await?.len() == 1) },
    )
    .await?;
    let first_pid = lock_holders(&client).await?[0];

    let log = Log::default();
    let _capture = log.capture();
    let second_stop = CancellationToken::new();
    let second = tokio::spawn(Ticker::new(config).run(second_stop.clone()));
    // The second daemon tries, fails and stands by; the first keeps ticking.
    wait_for(
        "the second daemon to stand by",
        Duration::from_secs(10),
        || async { Ok(log.count("standing by") == 1) },
    )
    .await?;
    assert_eq!(lock_holders(&client).await?, vec![first_pid]);
    ticked(&client, &q).await?;
    assert_eq!(lock_holders(&client).await?, vec![first_pid]);

    first_stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), first).await??;
    wait_for(
        "the second daemon to take over",
        Duration::from_secs(10),
        || async {
            let holders = lock_holders(&client).await?;
            Ok(holders.len() == 1 && holders[0] != first_pid)
        },
    )
    .await?;

    second_stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), second).await??;
    Ok(())
}
