//! Two tickers on one queue at once (two daemons in a split brain, a `force_tick` beside the
//! daemon, pgqd beside ours): their ticks must still make batches in which every event comes
//! once. PGQ 3.5's own ticker does not hold this: run against the extension
//! (`PGQ_TEST_SCHEMA=extension`, with the skip below removed), the first test sees a few
//! transactions' events twice in every run of it. These tests skip there.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgq_core::QueueSetting;
use pgq_testkit::TestDb;

use crate::setup::{consumer, queue, setup};

fn on_extension() -> bool {
    std::env::var("PGQ_TEST_SCHEMA").is_ok_and(|v| v == "extension")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tickers_at_once_never_deliver_an_event_twice() -> anyhow::Result<()> {
    if on_extension() {
        return Ok(());
    }
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let (q, c) = (queue("busy"), consumer("reader"));
    pgq_core::create_queue(&client, &q).await?;
    pgq_core::set_queue_config(&client, &q, QueueSetting::TickerMaxCount(20)).await?;
    pgq_core::register_consumer(&client, &q, &c).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicI64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (mut producer, q, stop, produced) = (
            db.client().await?,
            q.clone(),
            Arc::clone(&stop),
            Arc::clone(&produced),
        );
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let tx = producer.transaction().await?;
                for _ in 0..3 {
                    pgq_core::insert_event(&tx, &q, "t", "e").await?;
                }
                tx.commit().await?;
                produced.fetch_add(3, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    for _ in 0..3 {
        let (ticker, q, stop) = (db.client().await?, q.clone(), Arc::clone(&stop));
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pgq_core::ticker(&ticker, &q).await?;
            }
            anyhow::Ok(())
        });
    }

    let reader = db.client().await?;
    let mut seen = BTreeSet::new();
    let mut twice = Vec::new();
    let mut drain = |events: Vec<pgq_core::Event>| {
        for e in events {
            if !seen.insert(e.id) {
                twice.push(e.id);
            }
        }
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        if let Some(batch) = pgq_core::next_batch(&reader, &q, &c).await? {
            drain(pgq_core::batch_events(&reader, batch.id).await?);
            pgq_core::finish_batch(&reader, batch.id).await?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    pgq_core::force_tick(&reader, &q).await?;
    pgq_core::ticker(&reader, &q).await?;
    while let Some(batch) = pgq_core::next_batch(&reader, &q, &c).await? {
        drain(pgq_core::batch_events(&reader, batch.id).await?);
        pgq_core::finish_batch(&reader, batch.id).await?;
    }
    assert!(
        twice.is_empty(),
        "{} events came twice: {twice:?}",
        twice.len()
    );
    assert_eq!(i64::try_from(seen.len())?, produced.load(Ordering::Relaxed));
    Ok(())
}

/// A second ticker of a queue waits for the first one's transaction, then decides on what it
/// committed.
#[tokio::test]
async fn a_second_ticker_waits_for_the_first() -> anyhow::Result<()> {
    if on_extension() {
        return Ok(());
    }
    let db = TestDb::new().await?;
    let Some(mut first) = setup(&db).await? else {
        return Ok(());
    };
    let q = queue("serial");
    pgq_core::create_queue(&first, &q).await?;
    pgq_core::set_queue_config(&first, &q, QueueSetting::TickerMaxCount(1)).await?;
    // No tick for age alone while the test runs, however slow the machine.
    let hour = Duration::from_secs(3600);
    pgq_core::set_queue_config(&first, &q, QueueSetting::TickerMaxLag(hour)).await?;
    pgq_core::set_queue_config(&first, &q, QueueSetting::TickerIdlePeriod(hour)).await?;
    pgq_core::insert_event(&first, &q, "t", "e").await?;
    let tx = first.transaction().await?;
    let ticked = pgq_core::ticker(&tx, &q).await?;
    assert!(ticked.is_some());

    let (second, q2) = (db.client().await?, q.clone());
    let pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let waiting = tokio::spawn(async move { pgq_core::ticker(&second, &q2).await });
    let watch = db.client().await?;
    let mut on_lock = false;
    for _ in 0..200 {
        on_lock = watch
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity \
                  WHERE pid = $1",
                &[&pid],
            )
            .await?
            .get(0);
        if on_lock {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(on_lock, "the second ticker did not wait on a lock");
    assert!(!waiting.is_finished());
    tx.commit().await?;
    // The first tick took the only new event: nothing is left to tick for.
    assert_eq!(waiting.await??, None);
    Ok(())
}

/// Two whole ticker passes at once (catch-up cuts, then every queue), over queues whose
/// backlogs need cuts: they wait for each other, neither deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_whole_passes_at_once_do_not_deadlock() -> anyhow::Result<()> {
    if on_extension() {
        return Ok(());
    }
    let db = TestDb::new().await?;
    let Some(client) = setup(&db).await? else {
        return Ok(());
    };
    let queues: Vec<_> = ["a", "b", "c"].map(queue).to_vec();
    for q in &queues {
        pgq_core::create_queue(&client, q).await?;
        pgq_core::set_queue_config(&client, q, QueueSetting::TickerMaxCount(1)).await?;
        pgq_core::set_queue_config(&client, q, QueueSetting::TickerMaxBatch(3)).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..2_usize {
        let (mut producer, queues, stop) = (db.client().await?, queues.clone(), Arc::clone(&stop));
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Each producer writes the queues in another order.
                let tx = producer.transaction().await?;
                for i in 0..queues.len() {
                    let q = &queues[(i + n) % queues.len()];
                    for _ in 0..4 {
                        pgq_core::insert_event(&tx, q, "t", "e").await?;
                    }
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    for _ in 0..2 {
        let (ticker, stop) = (db.client().await?, Arc::clone(&stop));
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pgq_core::maintenance::ticker_pass_with_catchup(&ticker).await?;
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
