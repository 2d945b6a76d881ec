//! Maintenance: table rotation waits for every consumer; retry events come back when due.

use std::time::Duration;

use anyhow::bail;
use pgq_core::tokio_postgres::Client;
use pgq_core::QueueName;
use pgq_testkit::{Deadline, TestDb};
use pgq_ticker::DatabaseTicker;

use crate::setup::{consumer, cur_table, dsn, extension, ours, queue_with, take_batch, Log};

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
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        backdate_switch(client, q).await?;
        ticker.maintain_once().await?;
        if cur_table(client, q).await? == table {
            return Ok(());
        }
        if deadline.passed() {
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

/// A database owner (no superuser) plants maintenance "hooks": a schema named londiste with
/// londiste3's periodic maintenance function, and a function of their own named in the
/// queue's queue_extra_maint. Each would make the owner superuser when the daemon calls it.
async fn plant_hooks(db: &TestDb, su: &Client) -> anyhow::Result<()> {
    const OWNER: &str = "pgqt_maint_owner";
    pgq_testkit::create_role(su, OWNER, "LOGIN").await?;
    su.batch_execute(&format!(
        "ALTER DATABASE {} OWNER TO {OWNER}",
        pgq_core::quote_ident(db.name())
    ))
    .await?;
    let owner = dsn(&db.dsn_as(OWNER))?.connect().await?;
    owner
        .batch_execute(
            "CREATE SCHEMA londiste;
             CREATE TABLE londiste.called (by_role name, fn text);
             GRANT INSERT ON londiste.called TO PUBLIC;
             CREATE FUNCTION londiste.periodic_maintenance() RETURNS integer
             LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO londiste.called VALUES (current_user, 'periodic_maintenance');
                 EXECUTE 'ALTER ROLE pgqt_maint_owner SUPERUSER';
                 RETURN 0;
             END $$;
             CREATE FUNCTION londiste.grab(q text) RETURNS integer LANGUAGE sql
             AS $$ INSERT INTO londiste.called VALUES (current_user, 'grab') RETURNING 0 $$;",
        )
        .await?;
    // queue_extra_maint is PGQ's list of functions to call per queue; a superuser set it (or,
    // on the original extension, any pgq_admin may).
    su.batch_execute("UPDATE pgq.queue SET queue_extra_maint = '{londiste.grab}'")
        .await?;
    Ok(())
}

async fn hooks_called(su: &Client) -> anyhow::Result<i64> {
    Ok(su
        .query_one("SELECT count(*) FROM londiste.called", &[])
        .await?
        .get(0))
}

async fn refuses_hooks(db: &TestDb, su: &Client) -> anyhow::Result<()> {
    queue_with(su, "q", &[]).await?;
    plant_hooks(db, su).await?;
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    let log = Log::default();
    let _capture = log.capture();
    let first = ticker.maintain_once().await?;
    let second = ticker.maintain_once().await?;
    assert_eq!(hooks_called(su).await?, 0);
    let superuser: bool = su
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'pgqt_maint_owner'",
            &[],
        )
        .await?
        .get(0);
    assert!(!superuser);
    assert_eq!(first.refused, second.refused, "refused every round");
    assert_eq!(
        log.count("refusing a maintenance operation"),
        usize::try_from(first.refused)?,
        "each refusal logged once: {}",
        log.text()
    );
    // The same hooks, once they belong to the owner of schema pgq, are called.
    su.batch_execute(
        "ALTER SCHEMA londiste OWNER TO CURRENT_USER;
         ALTER FUNCTION londiste.grab(text) OWNER TO CURRENT_USER;
         DROP FUNCTION londiste.periodic_maintenance();",
    )
    .await?;
    ticker.maintain_once().await?;
    assert_eq!(hooks_called(su).await?, 1);
    Ok(())
}

#[tokio::test]
async fn maintenance_calls_only_functions_of_the_pgq_owner() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let su = ours(&db).await?;
    refuses_hooks(&db, &su).await
}

/// The original extension's pgq.maint_operations lists the hooks unchecked: the daemon's own
/// check refuses them.
#[tokio::test]
async fn maintenance_calls_only_functions_of_the_pgq_owner_on_the_extension() -> anyhow::Result<()>
{
    let db = TestDb::new().await?;
    let Some(su) = extension(&db).await? else {
        return Ok(());
    };
    refuses_hooks(&db, &su).await
}
