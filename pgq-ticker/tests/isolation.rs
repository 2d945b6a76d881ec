//! One broken queue does not hold up the others: its ticks and its maintenance fail alone,
//! logged once per distinct error, and it is tried again at every pass.

use std::time::Duration;

use pgq_core::tokio_postgres::Client;
use pgq_core::QueueName;
use pgq_testkit::{Deadline, TestDb};
use pgq_ticker::DatabaseTicker;

use crate::setup::{
    consumer, cur_table, dsn, extension, listen_ticks, ours, queue_with, take_batch, tick_count,
    Log,
};

async fn text(client: &Client, sql: &str, queue: &QueueName) -> anyhow::Result<String> {
    Ok(client.query_one(sql, &[&queue.as_str()]).await?.get(0))
}

/// Breaks `b` for real, as a superuser could by mistake: its tick sequence (every tick fails)
/// and the event table rotation would empty next (rotation fails) are dropped.
async fn break_queue(client: &Client, b: &QueueName) -> anyhow::Result<()> {
    let tick_seq = text(
        client,
        "SELECT queue_tick_seq FROM pgq.queue WHERE queue_name = $1",
        b,
    )
    .await?;
    let next_table = text(
        client,
        "SELECT queue_data_pfx || '_' || (queue_cur_table + 1) % queue_ntables
           FROM pgq.queue WHERE queue_name = $1",
        b,
    )
    .await?;
    client
        .batch_execute(&format!(
            "DROP SEQUENCE {tick_seq}; DROP TABLE {next_table}"
        ))
        .await?;
    Ok(())
}

/// Three passes with `b` broken: `a` and `c` tick at every pass, `b` fails at every pass and
/// is logged once.
async fn passes_with_a_broken_queue(
    client: &mut Client,
    ticker: &mut DatabaseTicker,
    log: &Log,
    [a, b, c]: [&QueueName; 3],
) -> anyhow::Result<()> {
    for pass in 1..=3 {
        let before = [tick_count(client, a).await?, tick_count(client, c).await?];
        for q in [a, b, c] {
            pgq_core::insert_event(&*client, q, "t", &format!("pass {pass}")).await?;
        }
        let report = ticker.tick_once().await?;
        assert_eq!((report.queues, report.failed), (2, 1), "pass {pass}");
        assert_eq!(
            [tick_count(client, a).await?, tick_count(client, c).await?],
            [before[0] + 1, before[1] + 1],
            "pass {pass}: a and c ticked"
        );
        for q in [a, c] {
            let events = take_batch(client, q, &consumer("w"))
                .await?
                .expect("a batch");
            assert_eq!(events.len(), 1, "pass {pass}, queue {q}");
        }
    }
    assert_eq!(tick_count(client, b).await?, 2, "b never ticked");
    assert_eq!(
        log.count("cannot tick the queue"),
        1,
        "logged once for three failing passes: {}",
        log.text()
    );
    Ok(())
}

#[tokio::test]
async fn a_broken_queue_fails_alone_and_is_logged_once() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let a = queue_with(&client, "a", &["w"]).await?;
    let b = queue_with(&client, "b", &[]).await?;
    let c = queue_with(&client, "c", &["w"]).await?;
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    break_queue(&client, &b).await?;
    let log = Log::default();
    let _capture = log.capture();
    passes_with_a_broken_queue(&mut client, &mut ticker, &log, [&a, &b, &c]).await?;

    // Rotation: a and c switch tables, b's rotation fails (its next table is gone) alone.
    let backdate = "UPDATE pgq.queue SET queue_switch_time = now() - interval '1 day'";
    let deadline = Deadline::after(Duration::from_secs(30));
    while cur_table(&client, &a).await? == 0 || cur_table(&client, &c).await? == 0 {
        anyhow::ensure!(!deadline.passed(), "a and c did not rotate");
        client.execute(backdate, &[]).await?;
        let report = ticker.maintain_once().await?;
        assert!(report.failed <= 1, "only b's rotation may fail: {report:?}");
        for q in [&a, &c] {
            pgq_core::force_tick(&client, q).await?;
            pgq_core::ticker(&client, q).await?;
            while take_batch(&mut client, q, &consumer("w")).await?.is_some() {}
        }
    }
    for _ in 0..2 {
        client.execute(backdate, &[]).await?;
        let report = ticker.maintain_once().await?;
        assert_eq!(report.failed, 1, "b's rotation still fails: {report:?}");
    }
    assert_eq!(cur_table(&client, &b).await?, 0, "b cannot rotate");
    assert_eq!(
        log.count("maintenance operation failed; the others ran"),
        1,
        "b's rotation logged once for every failing round: {}",
        log.text()
    );

    // A different error is logged again; a repaired queue ticks again, and says so.
    let tick_seq = text(
        &client,
        "SELECT queue_tick_seq FROM pgq.queue WHERE queue_name = $1",
        &b,
    )
    .await?;
    client
        .batch_execute(&format!("CREATE SEQUENCE {tick_seq}"))
        .await?;
    pgq_core::insert_event(&client, &b, "t", "after the repair").await?;
    let report = ticker.tick_once().await?;
    assert_eq!(report.failed, 1, "the new sequence's first ids are taken");
    assert_eq!(log.count("cannot tick the queue"), 2, "a new error");
    client
        .batch_execute(&format!("SELECT setval('{tick_seq}', 1000)"))
        .await?;
    let report = ticker.tick_once().await?;
    assert_eq!(report.failed, 0);
    assert_eq!(tick_count(&client, &b).await?, 3, "b ticks again");
    assert_eq!(log.count("queue ticks again"), 1);
    Ok(())
}

/// The same on the original extension, whose ticks the ticker announces itself.
#[tokio::test]
async fn a_broken_queue_fails_alone_on_the_extension() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = extension(&db).await? else {
        return Ok(());
    };
    let a = queue_with(&client, "a", &["w"]).await?;
    let b = queue_with(&client, "b", &[]).await?;
    let c = queue_with(&client, "c", &["w"]).await?;
    let (_listener, mut announced) = listen_ticks(&db.dsn()).await?;
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    break_queue(&client, &b).await?;
    let log = Log::default();
    let _capture = log.capture();
    passes_with_a_broken_queue(&mut client, &mut ticker, &log, [&a, &b, &c]).await?;
    let mut payloads = Vec::new();
    while payloads.len() < 6 {
        let payload = tokio::time::timeout(Duration::from_secs(5), announced.recv()).await?;
        payloads.extend(payload);
    }
    payloads.sort();
    assert_eq!(payloads, ["a", "a", "a", "c", "c", "c"], "ticks announced");
    Ok(())
}
