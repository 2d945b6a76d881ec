//! Maintenance: table rotation waits for every consumer; retry events come back when due.

use std::time::Duration;

use anyhow::bail;
use pgq_core::tokio_postgres::Client;
use pgq_core::QueueName;
use pgq_testkit::TestDb;
use pgq_ticker::DatabaseTicker;
use tokio::time::Instant;

use crate::setup::{consumer, cur_table, dsn, ours, queue_with, take_batch};

/// Rows in one of the queue's event tables.
async fn rows_in(client: &Client, q: &QueueName, table: i32) -> anyhow::Result<i64> {
    let prefix: String = client
        .query_one(
            "SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = $1",
            &[&q.as_str()],
        )
        .await?
        .get(0);
    Ok(client
        .query_one(&format!("SELECT count(*) FROM ONLY {prefix}_{table}"), &[])
        .await?
        .get(0))
}

/// Makes the rotation period look passed.
async fn backdate_switch(client: &Client, q: &QueueName) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE pgq.queue SET queue_switch_time = now() - interval '1 day'
              WHERE queue_name = $1",
            &[&q.as_str()],
        )
        .await?;
    Ok(())
}

/// A new tick, and the named consumers take every batch there is.
async fn advance(client: &mut Client, q: &QueueName, consumers: &[&str]) -> anyhow::Result<()> {
    pgq_core::force_tick(&*client, q).await?;
    pgq_core::ticker(&*client, q).await?;
    for c in consumers {
        while take_batch(client, q, &consumer(c)).await?.is_some() {}
    }
    Ok(())
}

/// Maintenance rounds until the queue writes to `table`, moving both consumers between
/// rounds (another test's open transaction can hold a tick's xmin back for a while).
async fn rotate_to(
    ticker: &mut DatabaseTicker,
    client: &mut Client,
    q: &QueueName,
    table: i32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        backdate_switch(client, q).await?;
        ticker.maintain_once().await?;
        if cur_table(client, q).await? == table {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queue did not rotate to table {table}");
        }
        advance(client, q, &["fast", "slow"]).await?;
    }
}

#[tokio::test]
async fn a_table_is_truncated_only_after_every_consumer_passed_it() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let q = queue_with(&client, "rotating", &["fast", "slow"]).await?;
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;

    pgq_core::insert_event(&client, &q, "t", "in table 0").await?;
    advance(&mut client, &q, &["fast", "slow"]).await?;
    let table_0 = rows_in(&client, &q, 0).await?;
    assert!(table_0 > 0);
    rotate_to(&mut ticker, &mut client, &q, 1).await?;

    // `slow` stays on a tick from before the switch: no further rotation.
    pgq_core::insert_event(&client, &q, "t", "in table 1").await?;
    advance(&mut client, &q, &["fast"]).await?;
    for _ in 0..3 {
        backdate_switch(&client, &q).await?;
        ticker.maintain_once().await?;
        assert_eq!(cur_table(&client, &q).await?, 1);
    }

    advance(&mut client, &q, &["fast", "slow"]).await?;
    rotate_to(&mut ticker, &mut client, &q, 2).await?;
    assert_eq!(
        rows_in(&client, &q, 0).await?,
        table_0,
        "table 0 is not next yet"
    );

    // Table 0 is next, and `slow` has not passed the last switch: it keeps its rows.
    pgq_core::insert_event(&client, &q, "t", "in table 2").await?;
    advance(&mut client, &q, &["fast"]).await?;
    backdate_switch(&client, &q).await?;
    ticker.maintain_once().await?;
    assert_eq!(cur_table(&client, &q).await?, 2);
    assert_eq!(rows_in(&client, &q, 0).await?, table_0);

    advance(&mut client, &q, &["fast", "slow"]).await?;
    rotate_to(&mut ticker, &mut client, &q, 0).await?;
    assert_eq!(rows_in(&client, &q, 0).await?, 0, "table 0 truncated");
    assert_eq!(rows_in(&client, &q, 1).await?, 1);
    Ok(())
}

#[tokio::test]
async fn retry_events_come_back_when_due() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let q = queue_with(&client, "retrying", &["worker"]).await?;
    let worker = consumer("worker");
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;

    let id = pgq_core::insert_event(&client, &q, "t", "again").await?;
    ticker.tick_once().await?;
    let tx = client.transaction().await?;
    let batch = pgq_core::next_batch(&tx, &q, &worker)
        .await?
        .expect("a batch");
    assert!(pgq_core::event_retry(&tx, batch.id, id, Duration::from_secs(3600)).await?);
    pgq_core::finish_batch(&tx, batch.id).await?;
    tx.commit().await?;

    let report = ticker.maintain_once().await?;
    assert_eq!(report.retried, 0, "not due for an hour");
    client
        .execute(
            "UPDATE pgq.retry_queue SET ev_retry_after = now() - interval '1 second'",
            &[],
        )
        .await?;
    let report = ticker.maintain_once().await?;
    assert_eq!(report.retried, 1);
    assert_eq!(ticker.retry_once().await?, 0);

    pgq_core::force_tick(&client, &q).await?;
    ticker.tick_once().await?;
    let mut events = Vec::new();
    while let Some(batch) = take_batch(&mut client, &q, &worker).await? {
        events.extend(batch);
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].id, id);
    assert_eq!(events[0].retry, Some(1));
    Ok(())
}
