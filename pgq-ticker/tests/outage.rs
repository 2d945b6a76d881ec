//! The ticker was down: when it comes back, its first pass cuts the backlog into batches of at
//! most ticker_max_batch events (plus the transactions straddling a cut) instead of one giant
//! batch, however long the gap was.

use std::collections::HashMap;

use pgq_core::{Dsn, QueueSetting};
use pgq_testkit::TestDb;
use pgq_ticker::DatabaseTicker;

use crate::setup::{consumer, dsn, ours, queue, take_batch};

const CAP: i32 = 200;

#[tokio::test]
async fn first_pass_after_an_outage_cuts_the_backlog() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let q = queue("outage");
    let c = consumer("c");
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::set_queue_config(&client, &q, QueueSetting::TickerMaxBatch(CAP)).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;

    // the daemon is down while 4 producers commit 1,000 transactions, one held open throughout
    let held = Dsn::parse(&db.dsn())?.connect().await?;
    held.batch_execute(
        "BEGIN; SELECT pgq.insert_event('outage', 'held', 'h', 'held', NULL, NULL, NULL);",
    )
    .await?;
    let committed = pgq_testkit::produce_concurrently(
        &db.dsn(),
        "outage",
        4,
        250,
        |p, t| (p * 13 + t * 5) % 9 + 1,
        |_, _| false,
    )
    .await?;

    // the daemon comes back: one pass
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    let report = ticker.tick_once().await?;
    assert!(report.catchup_ticks > 1, "catch-up ticks: {report:?}");
    // The rest, under the cap, waits for PGQ's rule (ticker_max_count or ticker_max_lag).
    pgq_core::force_tick(&client, &q).await?;
    ticker.tick_once().await?;

    let mut sizes = Vec::new();
    let mut batch_of: HashMap<String, usize> = HashMap::new();
    while let Some(events) = take_batch(&mut client, &q, &c).await? {
        for event in &events {
            let tag = event.extra1.clone().unwrap_or_default();
            let first = *batch_of.entry(tag.clone()).or_insert(sizes.len());
            assert_eq!(first, sizes.len(), "transaction {tag} split over batches");
        }
        sizes.push(events.len());
    }
    assert_eq!(
        sizes.iter().sum::<usize>(),
        committed,
        "every committed event once"
    );
    assert!(
        !batch_of.contains_key("held"),
        "the open transaction waits for a later batch"
    );
    let target = usize::try_from(CAP)?;
    // A cut takes the transactions whose last event is below it, whole: a batch may also hold
    // the earlier events of transactions that straddled the previous cut, at most one
    // transaction (9 events) per concurrent producer.
    let straddling = 4 * 9;
    assert!(
        sizes.iter().all(|&n| n <= target + straddling),
        "batch sizes: {sizes:?}"
    );
    assert!(sizes.len() >= committed / target, "batch sizes: {sizes:?}");
    held.batch_execute("ROLLBACK").await?;
    Ok(())
}
